// SPDX-License-Identifier: MIT
// EOI: the LAPICs' EOI broadcast (SDM Vol. 3A 11.8.5) and the version 0x20
// directed-EOI register clear remote IRR of level entries (82093AA datasheet
// 3.2.4 bit 14; KVM's kvm_ioapic_update_eoi_one).
#include "ioapic-test-util.h"

namespace vlapic::test {
namespace {

// Pin `pin` level-triggered on `vector`, asserted and delivered once.
void deliverLevel(TestIoApic& t, uint32_t pin, uint8_t vector) {
  t.writeEntry(pin, levelEntry(vector));
  t->setPinLevel(pin, true);
  REQUIRE(t.remoteIrr(pin));
}

TEST_CASE("82093AA 3.2.4: an EOI of a still-asserted level pin re-delivers it",
          "[ioapic][eoi]") {
  TestIoApic t;
  deliverLevel(t, 3, 0x33);
  t->eoiBroadcast(0x33);
  CHECK(t.sink.vectors() == Vectors{0x33, 0x33});
  CHECK(t.remoteIrr(3));
  auto& stats = t->pinStats(3);
  CHECK(stats.eois == 1);
  CHECK(stats.redeliveries == 1);
  CHECK(stats.messages == 2);
}

TEST_CASE("82093AA 3.2.4: an EOI after the level pin de-asserted clears remote IRR and sends "
          "nothing",
          "[ioapic][eoi]") {
  TestIoApic t;
  deliverLevel(t, 3, 0x33);
  t->setPinLevel(3, false);
  t->eoiBroadcast(0x33);
  CHECK(t.sink.vectors() == Vectors{0x33});
  CHECK_FALSE(t.remoteIrr(3));
  CHECK(t->pinStats(3).eois == 1);
  CHECK(t->pinStats(3).redeliveries == 0);
  // The next assertion sends again.
  t->setPinLevel(3, true);
  CHECK(t.sink.vectors() == Vectors{0x33, 0x33});
}

TEST_CASE("KVM: an EOI of another vector leaves remote IRR set", "[ioapic][eoi]") {
  TestIoApic t;
  deliverLevel(t, 3, 0x33);
  t->eoiBroadcast(0x34);
  t->eoiBroadcast(0x00);
  CHECK(t.remoteIrr(3));
  CHECK(t.sink.vectors() == Vectors{0x33});
  CHECK(t->pinStats(3).eois == 0);
}

TEST_CASE("KVM: an EOI clears remote IRR of every level entry on that vector", "[ioapic][eoi]") {
  TestIoApic t;
  deliverLevel(t, 1, 0x50);
  deliverLevel(t, 2, 0x50);
  deliverLevel(t, 8, 0x51);
  t->setPinLevel(1, false);
  t->eoiBroadcast(0x50);
  CHECK_FALSE(t.remoteIrr(1));
  CHECK(t.remoteIrr(2));  // re-delivered: still asserted
  CHECK(t.remoteIrr(8));
  CHECK(t.sink.vectors() == Vectors{0x50, 0x50, 0x51, 0x50});
  CHECK(t->pinStats(1).eois == 1);
  CHECK(t->pinStats(2).eois == 1);
  CHECK(t->pinStats(8).eois == 0);
}

TEST_CASE("KVM: an EOI of a masked, still-asserted level pin clears remote IRR and waits for "
          "unmask",
          "[ioapic][eoi]") {
  TestIoApic t;
  deliverLevel(t, 4, 0x44);
  t.writeIndirect(kIoApicRedirectionIndex + 8, uint32_t(levelEntry(0x44, true)));
  t->eoiBroadcast(0x44);
  CHECK_FALSE(t.remoteIrr(4));
  CHECK(t.sink.vectors() == Vectors{0x44});
  t.writeIndirect(kIoApicRedirectionIndex + 8, uint32_t(levelEntry(0x44)));
  CHECK(t.sink.vectors() == Vectors{0x44, 0x44});
  CHECK(t->pinStats(4).redeliveries == 1);
}

TEST_CASE("an EOI broadcast does not touch edge entries on the vector", "[ioapic][eoi]") {
  TestIoApic t;
  t.writeEntry(5, edgeEntry(0x55));
  t->setPinLevel(5, true);
  t->eoiBroadcast(0x55);
  CHECK(t.sink.vectors() == Vectors{0x55});
  CHECK(t->pinStats(5).eois == 0);
}

TEST_CASE("version 0x20: a write of the EOI register is a directed EOI of its low 8 bits",
          "[ioapic][eoi]") {
  TestIoApic t(configWith(kIoApicVersion20));
  deliverLevel(t, 6, 0x66);
  deliverLevel(t, 7, 0x67);
  t->setPinLevel(6, false);
  // Bits above 7 are not part of the vector.
  CHECK(t.write(kIoEoi, 0xFFFFFF00 | 0x66).status == AccessStatus::OK);
  CHECK_FALSE(t.remoteIrr(6));
  CHECK(t.remoteIrr(7));
  CHECK(t.write(kIoEoi, 0x67).status == AccessStatus::OK);
  CHECK(t.sink.vectors() == Vectors{0x66, 0x67, 0x67});
  CHECK(t->pinStats(7).eois == 1);
  CHECK(t->pinStats(7).redeliveries == 1);
}

TEST_CASE("version 0x11: a write at 0x40 is no EOI", "[ioapic][eoi]") {
  TestIoApic t(configWith(kIoApicVersion11));
  deliverLevel(t, 6, 0x66);
  t->setPinLevel(6, false);
  t.write(kIoEoi, 0x66);
  CHECK(t.remoteIrr(6));
  CHECK(t->pinStats(6).eois == 0);
}

}  // namespace
}  // namespace vlapic::test
