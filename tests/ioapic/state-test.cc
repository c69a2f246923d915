// SPDX-License-Identifier: MIT
// Reset, configuration, save/validate/restore (82093AA datasheet 3.2.4:
// entries reset masked; KVM's KVM_GET/SET_IRQCHIP for what a restore
// re-injects).
#include "ioapic-test-util.h"
#include <kj/exception.h>

namespace vlapic::test {
namespace {

bool sameState(const IoApicState& a, const IoApicState& b) {
  if (a.id != b.id || a.ioregsel != b.ioregsel || a.pinLevels != b.pinLevels ||
      a.pendingEdges != b.pendingEdges) {
    return false;
  }
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    if (a.redirection[pin] != b.redirection[pin]) return false;
  }
  return true;
}

kj::String refusal(const TestIoApic& t, const IoApicState& state) {
  KJ_IF_MAYBE(reason, t.ioapic.validate(state)) { return kj::mv(*reason); }
  return kj::str("accepted");
}

bool contains(const kj::String& text, const char* part) {
  return std::string(text.cStr()).find(part) != std::string::npos;
}

TEST_CASE("validateIoApicConfig: base 4 KiB aligned below 2^52, version 0x11 or 0x20, ID <= 15",
          "[ioapic][state]") {
  CHECK(validateIoApicConfig(IoApicConfig()) == nullptr);
  CHECK(validateIoApicConfig(configWith(kIoApicVersion20, 15)) == nullptr);
  IoApicConfig config;
  config.base = (1ull << 52) - kIoApicWindowSize;
  CHECK(validateIoApicConfig(config) == nullptr);
  config.base = 1ull << 52;
  CHECK(validateIoApicConfig(config) != nullptr);
  config.base = kIoApicDefaultBase + 0x800;
  CHECK(validateIoApicConfig(config) != nullptr);
  for (uint8_t version: {0x00, 0x10, 0x12, 0x21, 0xFF}) {
    INFO("version " << int(version));
    CHECK(validateIoApicConfig(configWith(version)) != nullptr);
  }
  CHECK(validateIoApicConfig(configWith(kIoApicVersion11, 16)) != nullptr);
  CHECK_THROWS_AS(TestIoApic(configWith(0x12)), kj::Exception);
}

TEST_CASE("a device at another base decodes its own window", "[ioapic][state]") {
  IoApicConfig config;
  config.base = 0xFEC01000;
  TestIoApic t(config);
  CHECK(t->windowContains(0xFEC01010));
  CHECK_FALSE(t->windowContains(kIoApicDefaultBase + 0x10));
  CHECK(t->mmioRead(0xFEC01000, 4).status == AccessStatus::OK);
}

TEST_CASE("82093AA 3.2.4: reset masks every entry, lowers the wires and reloads the ID",
          "[ioapic][state]") {
  TestIoApic t(configWith(kIoApicVersion11, 9));
  t.writeIndirect(kIoApicIdIndex, 0x02000000);
  t.writeEntry(0, levelEntry(0x20));
  t.writeEntry(1, edgeEntry(0x21, true));
  t->setPinLevel(0, true);
  t->setPinLevel(1, true);
  t->reset();
  auto s = t->save();
  CHECK(s.id == 9);
  CHECK(s.ioregsel == 0);
  CHECK(s.pinLevels == 0);
  CHECK(s.pendingEdges == 0);
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) CHECK(s.redirection[pin] == rte::kResetValue);
  // Stats survive a reset: they are for operators.
  CHECK(t->pinStats(0).messages == 1);
  CHECK(t->pinStats(1).assertions == 1);
  CHECK(t.sink.vectors() == Vectors{0x20});
}

TEST_CASE("save/restore: the state round-trips into another device", "[ioapic][state]") {
  TestIoApic a(configWith(kIoApicVersion20, 4));
  a.writeIndirect(kIoApicIdIndex, 0x07000000);
  a.writeEntry(0, levelEntry(0x20));
  a->setPinLevel(0, true);  // remote IRR set
  a.writeEntry(1, edgeEntry(0x21, true));
  a->setPinLevel(1, true);  // pending edge
  a.writeEntry(2, makeEntry({.vector = 0x22, .destination = 0x1234, .logical = true}));
  a->setPinLevel(3, true);  // an edge entry after reset, masked: pending too
  a.write(kIoRegSel, 0x15);
  auto saved = a->save();
  CHECK(saved.id == 7);
  CHECK(saved.ioregsel == 0x15);
  CHECK(saved.pinLevels == 0b1011);
  CHECK(saved.pendingEdges == 0b1010);
  CHECK(saved.redirection[0] == (levelEntry(0x20) | rte::kRemoteIrr));

  TestIoApic b(configWith(kIoApicVersion20));
  REQUIRE(b->validate(saved) == nullptr);
  b->restore(saved);
  CHECK(sameState(b->save(), saved));
  // Nothing was deliverable: remote IRR holds pin 0, pins 1 and 3 are masked.
  CHECK(b.sink.messages.empty());
  CHECK(b.read(kIoWin).value == (saved.redirection[2] >> 32));
  CHECK(b->pinAsserted(3));
  // The restored device behaves as the saved one: the EOI re-delivers pin 0.
  b->eoiBroadcast(0x20);
  CHECK(b.sink.vectors() == Vectors{0x20});
}

TEST_CASE("KVM_SET_IRQCHIP: restore re-injects, in pin order, what was pending",
          "[ioapic][state]") {
  TestIoApic t;
  IoApicState s;
  for (auto& entry: s.redirection) entry = rte::kResetValue;
  s.redirection[2] = levelEntry(0x42);                        // asserted, IRR clear: sent
  s.redirection[5] = edgeEntry(0x45);                         // pending edge: sent
  s.redirection[7] = levelEntry(0x47) | rte::kRemoteIrr;      // IRR set: waits for EOI
  s.redirection[8] = levelEntry(0x48, true);                  // masked: kept
  s.redirection[9] = edgeEntry(0x49, true);                   // masked edge: stays pending
  s.redirection[10] = levelEntry(0x4A);                       // de-asserted: nothing
  s.redirection[11] = levelEntry(0x4B, false, true);          // active-low, wire low: sent
  s.pinLevels = (1u << 2) | (1u << 5) | (1u << 7) | (1u << 8) | (1u << 9);
  s.pendingEdges = (1u << 5) | (1u << 9);
  REQUIRE(t->validate(s) == nullptr);
  t->restore(s);
  CHECK(t.sink.vectors() == Vectors{0x42, 0x45, 0x4B});
  auto now = t->save();
  CHECK(now.pendingEdges == (1u << 9));
  CHECK(t.remoteIrr(2));
  CHECK(t.remoteIrr(7));
  CHECK(t.remoteIrr(11));
  CHECK_FALSE(t.remoteIrr(8));
}

TEST_CASE("restore normalises delivery status to 0", "[ioapic][state]") {
  TestIoApic t;
  IoApicState s = t->save();
  s.redirection[3] = edgeEntry(0x33, true) | rte::kDeliveryStatus;
  REQUIRE(t->validate(s) == nullptr);
  t->restore(s);
  CHECK(t->redirectionEntry(3) == edgeEntry(0x33, true));
}

TEST_CASE("validate refuses wires and pending edges of pins above 23", "[ioapic][state]") {
  TestIoApic t;
  IoApicState s = t->save();
  s.pinLevels = 1u << 24;
  CHECK(contains(refusal(t, s), "pinLevels"));
  s.pinLevels = 0;
  s.pendingEdges = 1u << 31;
  CHECK(contains(refusal(t, s), "pendingEdges"));
  CHECK_THROWS_AS(t->restore(s), kj::Exception);
}

TEST_CASE("validate refuses an ID above 15", "[ioapic][state]") {
  TestIoApic t;
  IoApicState s = t->save();
  s.id = 16;
  CHECK(contains(refusal(t, s), "ID 16"));
  s.id = 15;
  CHECK(t->validate(s) == nullptr);
}

TEST_CASE("validate refuses remote IRR on an edge entry, naming the pin", "[ioapic][state]") {
  TestIoApic t;
  IoApicState s = t->save();
  s.redirection[17] = edgeEntry(0x30) | rte::kRemoteIrr;
  auto reason = refusal(t, s);
  CHECK(contains(reason, "pin 17"));
  CHECK(contains(reason, "remote IRR"));
  s.redirection[17] = levelEntry(0x30) | rte::kRemoteIrr;
  CHECK(t->validate(s) == nullptr);
}

TEST_CASE("validate refuses a pending edge on a level entry, naming the pin", "[ioapic][state]") {
  TestIoApic t;
  IoApicState s = t->save();
  s.redirection[23] = levelEntry(0x30);
  s.pendingEdges = 1u << 23;
  auto reason = refusal(t, s);
  CHECK(contains(reason, "pin 23"));
  CHECK(contains(reason, "pending edge"));
  s.redirection[23] = edgeEntry(0x30);
  CHECK(t->validate(s) == nullptr);
}

TEST_CASE("an entry switched from edge to level drops its pending edge so save validates",
          "[ioapic][state]") {
  TestIoApic t;
  t.writeEntry(6, edgeEntry(0x36, true));
  t->setPinLevel(6, true);
  REQUIRE(t->save().pendingEdges == (1u << 6));
  t.writeEntry(6, levelEntry(0x36, true));
  CHECK(t->save().pendingEdges == 0);
  CHECK(t->validate(t->save()) == nullptr);
}

}  // namespace
}  // namespace vlapic::test
