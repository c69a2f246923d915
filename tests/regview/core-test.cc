// SPDX-License-Identifier: MIT
// The typed views against the real core: the page a Lapic keeps and the
// kvm_lapic_state it saves read back through regview.h exactly as the
// register accesses see them, in xAPIC and both x2APIC layouts; and a
// snapshot edited through the view restores (the seed's use case: configure
// LINT0 as ExtINT and LINT1 as NMI without computing offsets).
#include "schema/model/dump.h"
#include "server/core/lapic.h"
#include <catch2/catch.hpp>

using namespace vlapic;

namespace {

struct Fixture {
  hal::ManualClock clock;
  kj::Own<hal::Hal> hal = hal::newHostMemoryHal(clock);
  GuestTsc tsc{clock, 2'000'000'000};
  LapicConfig config;
  Lapic lapic{*hal, tsc, config, /*initialApicId=*/1, /*bsp=*/false};
};

RegisterLayout snapshotLayout(const LapicSnapshot& snapshot) {
  return layoutFor(ApicBaseValue(snapshot.apicBase).mode(), snapshot.x2apic32BitIds);
}

}  // namespace

TEST_CASE("core: the page view reads what readRegister reads, for every register", "[regview][core]") {
  Fixture f;
  ConstPageView view(f.lapic.page(), RegisterLayout::XAPIC);
  for (const RegisterInfo& info: registerTable()) {
    INFO(info.name.cStr());
    CHECK(view.raw(info.reg) == f.lapic.readRegister(info.reg));
  }
  // The reset state (SDM "Power-up and reset state"), by field name.
  CHECK(view.id() == 1);
  CHECK(view.version().lvtEntries() == 6);
  CHECK(view.dfr().flat());
  CHECK(view.svr().spuriousVector() == 0xFF);
  CHECK_FALSE(view.svr().apicEnabled());
  CHECK(view.lvt(Reg::LVT_TIMER).masked());
  CHECK(view.lvt(Reg::LVT_ERROR).masked());
}

TEST_CASE("core: guest writes show up in the typed page view", "[regview][core]") {
  Fixture f;
  const uint64_t base = kDefaultApicBase;
  REQUIRE(f.lapic.mmioWrite(base + 0x0F0, 4, SvrValue().setSpuriousVector(0xFF).setApicEnabled(true).raw())
              .status == AccessStatus::OK);
  REQUIRE(f.lapic.mmioWrite(base + 0x320, 4,
                            LvtValue().setVector(0x30).setTimerMode(TimerMode::PERIODIC).raw())
              .status == AccessStatus::OK);
  REQUIRE(f.lapic.mmioWrite(base + 0x080, 4, PriorityValue().setPriorityClass(2).raw()).status
          == AccessStatus::OK);
  REQUIRE(f.lapic.acceptInterrupt(0x51, TriggerMode::LEVEL));

  ConstPageView view(f.lapic.page(), RegisterLayout::XAPIC);
  CHECK(view.svr().apicEnabled());
  CHECK(view.lvt(Reg::LVT_TIMER).vector() == 0x30);
  CHECK(view.lvt(Reg::LVT_TIMER).timerMode() == TimerMode::PERIODIC);
  CHECK(view.tpr().priorityClass() == 2);
  CHECK(view.inIrr(0x51));
  CHECK(view.inTmr(0x51));
  CHECK_FALSE(view.inIsr(0x51));
  CHECK(dumpRegister(registerInfo(Reg::LVT_TIMER), view.raw(Reg::LVT_TIMER))
        == "LVT Timer: vector 0x30, mode periodic");
}

TEST_CASE("core: saved kvm_lapic_state in xAPIC, x2APIC 32-bit-ID and legacy layouts", "[regview][core][kvm][x2apic]") {
  Fixture f;
  {
    LapicSnapshot snapshot = f.lapic.save();
    REQUIRE(snapshotLayout(snapshot) == RegisterLayout::XAPIC);
    ConstKvmLapicStateView view(kj::arrayPtr(snapshot.regs, kKvmLapicStateSize), RegisterLayout::XAPIC);
    CHECK(view.id() == 1);
    CHECK(view.raw(Reg::ID) == 0x01000000);  // KVM_GET_LAPIC after vCPU creation
  }

  // Enter x2APIC (SDM "x2APIC State Transitions": xAPIC -> x2APIC).
  REQUIRE(f.lapic.msrWrite(kMsrApicBase, kDefaultApicBase | kApicBaseEnable | kApicBaseExtd).status
          == AccessStatus::OK);
  IcrValue icr = IcrValue().setVector(0x40).setLevelAssert(true).setX2apicDestination(0x00000345);
  REQUIRE(f.lapic.msrWrite(regMsr(Reg::ICR_LOW), icr.raw()).status == AccessStatus::OK);

  LapicSnapshot wide = f.lapic.save(true);
  REQUIRE(snapshotLayout(wide) == RegisterLayout::X2APIC);
  ConstKvmLapicStateView x2(kj::arrayPtr(wide.regs, kKvmLapicStateSize), RegisterLayout::X2APIC);
  CHECK(x2.id() == 1);
  CHECK(x2.ldr() == LdrValue::forX2apicId(1));
  CHECK(x2.icr().vector() == 0x40);
  CHECK(x2.icr().x2apicDestination() == 0x345);  // 0x310 holds ICR[63:32]
  CHECK(x2.icrMessage().destination == 0x345);

  LapicSnapshot legacy = f.lapic.save(false);
  REQUIRE(snapshotLayout(legacy) == RegisterLayout::X2APIC_LEGACY_ID);
  ConstKvmLapicStateView old(kj::arrayPtr(legacy.regs, kKvmLapicStateSize), RegisterLayout::X2APIC_LEGACY_ID);
  CHECK(old.id() == 1);
  CHECK(old.raw(Reg::ID) == 0x01000000);

  // The live page in x2APIC mode has the X2APIC layout too.
  ConstPageView page(f.lapic.page(), RegisterLayout::X2APIC);
  CHECK(page.id() == 1);
  CHECK(page.icr() == x2.icr());
}

TEST_CASE("core: a snapshot edited through the typed view restores (LINT0 ExtINT, LINT1 NMI)", "[regview][core][kvm]") {
  Fixture f;
  LapicSnapshot snapshot = f.lapic.save();
  KvmLapicStateView view(kj::arrayPtr(snapshot.regs, kKvmLapicStateSize), snapshotLayout(snapshot));
  view.setLvt(Reg::LVT_LINT0, LvtValue().setDeliveryMode(DeliveryMode::EXTINT));
  view.setLvt(Reg::LVT_LINT1, LvtValue().setDeliveryMode(DeliveryMode::NMI));
  view.setSvr(view.svr().setApicEnabled(true));
  KJ_IF_MAYBE(error, f.lapic.restore(snapshot)) {
    FAIL("restore rejected the edited snapshot: " << error->cStr());
  }
  CHECK(LvtValue(f.lapic.readRegister(Reg::LVT_LINT0)).deliveryMode() == DeliveryMode::EXTINT);
  CHECK_FALSE(LvtValue(f.lapic.readRegister(Reg::LVT_LINT0)).masked());
  CHECK(LvtValue(f.lapic.readRegister(Reg::LVT_LINT1)).deliveryMode() == DeliveryMode::NMI);
  CHECK(f.lapic.softwareEnabled());
  // LINT1 as NMI now turns a rising edge into an NMI (SDM "Local Vector Table").
  CHECK(f.lapic.setLint(1, true).kind == LocalInterrupt::Kind::NMI);
}
