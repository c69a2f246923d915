// SPDX-License-Identifier: MIT
// The message an entry sends (82093AA datasheet 3.2.4: vector, delivery
// mode, destination mode, trigger; the extended destination ID in bits
// 55:49 as Linux and KVM use it for APIC IDs above 255).
#include "ioapic-test-util.h"

namespace vlapic::test {
namespace {

InterruptMessage sendFrom(const EntryFields& fields) {
  TestIoApic t;
  t.writeEntry(0, makeEntry(fields));
  t->setPinLevel(0, true);
  REQUIRE(t.sink.messages.size() == 1);
  return t.sink.messages[0];
}

TEST_CASE("82093AA 3.2.4 bits 10:8: every delivery mode reaches the message",
          "[ioapic][message]") {
  for (DeliveryMode mode: {DeliveryMode::FIXED, DeliveryMode::LOWEST_PRIORITY, DeliveryMode::SMI,
                           DeliveryMode::NMI, DeliveryMode::INIT, DeliveryMode::EXTINT}) {
    INFO("mode " << int(mode));
    auto m = sendFrom({.vector = 0x61, .destination = 2, .mode = mode});
    CHECK(m.deliveryMode == mode);
    CHECK(m.vector == 0x61);
    CHECK(m.destination == 2);
    CHECK_FALSE(m.logicalDestination);
    CHECK(m.levelAssert);
    CHECK(m.trigger == TriggerMode::EDGE);
    CHECK_FALSE(m.x2apicFormat);
    CHECK(m.shorthand == Shorthand::NONE);
  }
}

TEST_CASE("82093AA 3.2.4 bit 11: physical and logical destination mode", "[ioapic][message]") {
  CHECK_FALSE(sendFrom({.vector = 0x62, .destination = 0x0F}).logicalDestination);
  auto m = sendFrom({.vector = 0x62, .destination = 0x0F, .logical = true});
  CHECK(m.logicalDestination);
  CHECK(m.destination == 0x0F);
}

TEST_CASE("82093AA 3.2.4 bits 63:56 and KVM bits 55:49: the destination's bits 7:0 and 14:8",
          "[ioapic][message]") {
  CHECK(sendFrom({.vector = 0x63, .destination = 0xFF}).destination == 0xFF);
  CHECK(sendFrom({.vector = 0x63, .destination = 0x5A5A}).destination == 0x5A5A);
  CHECK(sendFrom({.vector = 0x63, .destination = 0x7FFF}).destination == 0x7FFF);
  // Bits 48:17 are reserved and not part of the destination.
  auto decoded = decodeRedirectionEntry((0x12ull << 56) | (0xFFFFull << 33) | 0x63);
  CHECK(decoded.message.destination == 0x12);
  CHECK(decoded.message.vector == 0x63);
}

TEST_CASE("82093AA 3.2.4 bit 15: a level entry's message is level-triggered",
          "[ioapic][message]") {
  auto m = sendFrom({.vector = 0x64, .destination = 1, .trigger = TriggerMode::LEVEL});
  CHECK(m.trigger == TriggerMode::LEVEL);
  CHECK(m.levelAssert);
}

TEST_CASE("decodeRedirectionEntry: bit 16 is the mask and nothing else", "[ioapic][message]") {
  auto masked = decodeRedirectionEntry(makeEntry({.vector = 0x65, .masked = true}));
  CHECK(masked.masked);
  CHECK(masked.message.vector == 0x65);
  CHECK_FALSE(decodeRedirectionEntry(makeEntry({.vector = 0x65})).masked);
}

}  // namespace
}  // namespace vlapic::test
