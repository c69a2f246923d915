// SPDX-License-Identifier: MIT
// Pins: edge and level triggering, masking, polarity (82093AA datasheet
// 3.2.4 "I/O Redirection Table Registers"; KVM's ioapic_set_irq where the
// datasheet leaves a choice).
#include "ioapic-test-util.h"
#include <kj/exception.h>

namespace vlapic::test {
namespace {

TEST_CASE("82093AA 3.2.4: an edge pin sends on the rising edge only", "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(4, edgeEntry(0x24));
  t->setPinLevel(4, true);
  CHECK(t.sink.vectors() == Vectors{0x24});
  CHECK(t->pinLevel(4));
  CHECK(t->pinAsserted(4));
  // Holding the wire high, and letting it fall, send nothing.
  t->setPinLevel(4, true);
  t->setPinLevel(4, false);
  t->setPinLevel(4, false);
  CHECK(t.sink.vectors() == Vectors{0x24});
  t->setPinLevel(4, true);
  CHECK(t.sink.vectors() == Vectors{0x24, 0x24});
  // Edge entries never take remote IRR.
  CHECK_FALSE(t.remoteIrr(4));
  auto& stats = t->pinStats(4);
  CHECK(stats.assertions == 2);
  CHECK(stats.messages == 2);
  CHECK(stats.coalesced == 0);
  CHECK(stats.redeliveries == 0);
}

TEST_CASE("82093AA 3.2.4: a pin after reset is masked and sends nothing", "[ioapic][pins]") {
  TestIoApic t;
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) t.pulse(pin);
  CHECK(t.sink.messages.empty());
  CHECK(t->save().pendingEdges == 0);
}

TEST_CASE("KVM irr: a masked edge is kept pending and sent on unmask", "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(5, edgeEntry(0x25, true));
  t->setPinLevel(5, true);
  CHECK(t.sink.messages.empty());
  CHECK(t->save().pendingEdges == (1u << 5));
  t.writeEntry(5, edgeEntry(0x25));
  CHECK(t.sink.vectors() == Vectors{0x25});
  CHECK(t->save().pendingEdges == 0);
  // Sent once: a second unmask write sends nothing more.
  t.writeEntry(5, edgeEntry(0x25));
  CHECK(t.sink.vectors() == Vectors{0x25});
  CHECK(t->pinStats(5).messages == 1);
}

TEST_CASE("KVM irr: a masked edge's pending bit clears when the wire de-asserts",
          "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(6, edgeEntry(0x26, true));
  t.pulse(6);
  CHECK(t->save().pendingEdges == 0);
  t.writeEntry(6, edgeEntry(0x26));
  CHECK(t.sink.messages.empty());
}

TEST_CASE("KVM: an edge that finds the previous one still pending is coalesced",
          "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(7, edgeEntry(0x27, true));
  t->setPinLevel(7, true);
  // A polarity flip leaves the pin de-asserted with the edge still pending
  // (an entry write is no wire change), so the next assertion meets it.
  t.writeEntry(7, makeEntry({.vector = 0x27, .activeLow = true, .masked = true}));
  CHECK_FALSE(t->pinAsserted(7));
  CHECK(t->save().pendingEdges == (1u << 7));
  t->setPinLevel(7, false);  // asserts the active-low pin
  CHECK(t->pinStats(7).coalesced == 1);
  CHECK(t->pinStats(7).assertions == 2);
  t.writeEntry(7, makeEntry({.vector = 0x27, .activeLow = true}));
  CHECK(t.sink.vectors() == Vectors{0x27});
}

TEST_CASE("82093AA 3.2.4: a level pin sends once and sets remote IRR until EOI",
          "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(9, levelEntry(0x29));
  t->setPinLevel(9, true);
  CHECK(t.sink.vectors() == Vectors{0x29});
  CHECK(t.sink.messages[0].trigger == TriggerMode::LEVEL);
  CHECK(t.remoteIrr(9));
  CHECK(t.readEntry(9) == (levelEntry(0x29) | rte::kRemoteIrr));
  // Asserting again while remote IRR is set is coalesced into the message in
  // service.
  t->setPinLevel(9, true);
  CHECK(t.sink.vectors() == Vectors{0x29});
  CHECK(t->pinStats(9).coalesced == 1);
  // De-asserting sends nothing and leaves remote IRR for the EOI.
  t->setPinLevel(9, false);
  CHECK(t.remoteIrr(9));
  CHECK(t.sink.vectors() == Vectors{0x29});
  CHECK(t->pinStats(9).assertions == 1);
  CHECK(t->pinStats(9).messages == 1);
}

TEST_CASE("KVM ioapic_set_irq: every level assert call that finds remote IRR set is coalesced",
          "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(10, levelEntry(0x2A));
  t->setPinLevel(10, true);
  // KVM services a level pin on each assert call, not only on a wire
  // change: each one that meets remote IRR is a coalesced interrupt.
  t->setPinLevel(10, true);
  t->setPinLevel(10, true);
  CHECK(t.sink.vectors() == Vectors{0x2A});
  CHECK(t->pinStats(10).coalesced == 2);
  CHECK(t->pinStats(10).assertions == 1);
  // Masked, with remote IRR clear, an assert is neither sent nor coalesced.
  t.writeEntry(10, edgeEntry(0x2A, true));
  t.writeEntry(10, levelEntry(0x2A, true));
  CHECK_FALSE(t.remoteIrr(10));
  t->setPinLevel(10, true);
  CHECK(t.sink.vectors() == Vectors{0x2A});
  CHECK(t->pinStats(10).coalesced == 2);
}

TEST_CASE("82093AA 3.2.4: unmasking a level pin that is asserted sends it", "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(11, levelEntry(0x2B, true));
  t->setPinLevel(11, true);
  CHECK(t.sink.messages.empty());
  CHECK_FALSE(t.remoteIrr(11));
  t.writeEntry(11, levelEntry(0x2B));
  CHECK(t.sink.vectors() == Vectors{0x2B});
  CHECK(t.remoteIrr(11));
  CHECK(t->pinStats(11).redeliveries == 1);
  // Masked again and unmasked with remote IRR still set: nothing until the
  // EOI.
  t.writeEntry(11, levelEntry(0x2B, true));
  t.writeEntry(11, levelEntry(0x2B));
  CHECK(t.sink.vectors() == Vectors{0x2B});
}

TEST_CASE("82093AA 3.2.4: unmasking a level pin that has de-asserted sends nothing",
          "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(12, levelEntry(0x2C, true));
  t.pulse(12);
  t.writeEntry(12, levelEntry(0x2C));
  CHECK(t.sink.messages.empty());
  CHECK_FALSE(t.remoteIrr(12));
}

TEST_CASE("82093AA 3.2.4 bit 13: an active-low pin is asserted by a low wire",
          "[ioapic][pins]") {
  TestIoApic t;
  // After reset the wire is low: an active-low level pin is asserted as soon
  // as it is unmasked.
  t.writeEntry(13, levelEntry(0x2D, false, true));
  CHECK_FALSE(t->pinLevel(13));
  CHECK(t->pinAsserted(13));
  CHECK(t.sink.vectors() == Vectors{0x2D});
  // The device drives the wire high: de-asserted, nothing sent.
  t->setPinLevel(13, true);
  CHECK_FALSE(t->pinAsserted(13));
  CHECK(t.sink.vectors() == Vectors{0x2D});

  // An active-low edge pin sends on the falling wire.
  t.writeEntry(14, makeEntry({.vector = 0x2E, .activeLow = true}));
  t->setPinLevel(14, true);
  CHECK(t.sink.vectors() == Vectors{0x2D});
  t->setPinLevel(14, false);
  CHECK(t.sink.vectors() == Vectors{0x2D, 0x2E});
}

TEST_CASE("82093AA 3.2.4 bit 13: a polarity write that asserts a level pin sends it",
          "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(15, levelEntry(0x2F));
  CHECK(t.sink.messages.empty());  // wire low, active-high
  t.writeEntry(15, levelEntry(0x2F, false, true));
  CHECK(t.sink.vectors() == Vectors{0x2F});
  CHECK(t.remoteIrr(15));
  CHECK(t->pinStats(15).redeliveries == 0);
}

TEST_CASE("KVM: a polarity write is no edge for an edge pin", "[ioapic][pins]") {
  TestIoApic t;
  t.writeEntry(16, edgeEntry(0x30));
  t.writeEntry(16, makeEntry({.vector = 0x30, .activeLow = true}));
  CHECK(t->pinAsserted(16));
  CHECK(t.sink.messages.empty());
  CHECK(t->save().pendingEdges == 0);
}

TEST_CASE("an out-of-range pin is a caller error", "[ioapic][pins]") {
  TestIoApic t;
  CHECK_THROWS_AS(t->setPinLevel(kIoApicPins, true), kj::Exception);
  CHECK_THROWS_AS(t->pinLevel(kIoApicPins), kj::Exception);
  CHECK_THROWS_AS(t->pinStats(kIoApicPins), kj::Exception);
  CHECK_THROWS_AS(t->redirectionEntry(kIoApicPins), kj::Exception);
}

}  // namespace
}  // namespace vlapic::test
