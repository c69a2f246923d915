// SPDX-License-Identifier: MIT
// The LINT0/LINT1 pins as inputs (SDM Vol. 3A, 11.5.1 "Local Vector
// Table"; MP specification "virtual wire mode"): ExtINT from the legacy PIC,
// NMI, level-triggered fixed interrupts with remote IRR, and the pins of a
// hardware-disabled APIC (11.4.3).
#include "vm-test-util.h"

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

constexpr uint32_t kLvtExtInt = 0x700;
constexpr uint32_t kLvtNmi = 0x400;
constexpr uint32_t kLvtMasked = 1u << 16;
constexpr uint32_t kLvtLevel = 1u << 15;
constexpr uint32_t kLvtRemoteIrr = 1u << 14;

TEST_CASE("virtual wire: the PIC's INTR on every LINT0 reaches only the vCPU with LINT0 = ExtINT",
          "[lint]") {
  TestVm vm(4);
  vm.enableAll();
  vm.write(0, Reg::LVT_LINT0, kLvtExtInt);
  vm.drainAll();
  vm->setLintAll(0, true);
  CHECK(vm.withEvent(Kind::EXTINT) == ids({0}));
  CHECK(vm.take(0) == std::vector<VcpuEvent>{event(Kind::EXTINT)});
  for (uint32_t v = 1; v < 4; v++) CHECK_FALSE(vm.anyIrr(v));
  vm->setLintAll(0, false);
  CHECK(vm.take(0).empty());
  // The next PIC interrupt is a new request.
  vm->setLintAll(0, true);
  CHECK(vm.take(0) == std::vector<VcpuEvent>{event(Kind::EXTINT)});
}

TEST_CASE("bspLint0ExtInt: the boot vCPU's LINT0 is ExtINT after reset, as KVM sets it",
          "[lint]") {
  VmConfig config = makeConfig(2);
  config.lapic.bspLint0ExtInt = true;
  config.bootVcpu = 1;
  TestVm vm(config);
  vm.enableAll();
  vm.drainAll();
  vm->setLintAll(0, true);
  CHECK(vm.withEvent(Kind::EXTINT) == ids({1}));
}

TEST_CASE("LINT1 as NMI fires on the rising edge", "[lint]") {
  TestVm vm(2);
  vm.enableAll();
  vm.write(1, Reg::LVT_LINT1, kLvtNmi);
  vm.drainAll();
  vm->setLint(1, 1, true);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::NMI)});
  vm->setLint(1, 1, true);  // no edge
  CHECK(vm.take(1).empty());
  vm->setLint(1, 1, false);
  vm->setLint(1, 1, true);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::NMI)});
  CHECK(vm.take(0).empty());
}

TEST_CASE("masked LINT entries deliver nothing", "[lint]") {
  TestVm vm(1);
  vm.enableAll();
  vm.write(0, Reg::LVT_LINT0, kLvtExtInt | kLvtMasked);
  vm.write(0, Reg::LVT_LINT1, kLvtNmi | kLvtMasked);
  vm.drainAll();
  vm->setLint(0, 0, true);
  vm->setLint(0, 1, true);
  CHECK(vm.take(0).empty());
}

TEST_CASE("level-triggered fixed LINT0: remote IRR holds further requests until EOI",
          "[lint]") {
  TestVm vm(1);
  vm.enableAll();
  vm.write(0, Reg::LVT_LINT0, 0x45 | kLvtLevel);
  vm.drainAll();
  vm->setLint(0, 0, true);
  CHECK(vm.irr(0, 0x45));
  CHECK(vm.tmr(0, 0x45));
  CHECK((vm.read(0, Reg::LVT_LINT0) & kLvtRemoteIrr) != 0);
  CHECK(vm.take(0) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x45)});
  REQUIRE(vm->acknowledge(0) == uint8_t(0x45));
  vm->setLint(0, 0, false);
  vm->setLint(0, 0, true);  // latched: no second request while remote IRR is set
  CHECK_FALSE(vm.irr(0, 0x45));

  SECTION("the line still asserted at EOI requests again") {
    vm.write(0, Reg::EOI, 0);
    CHECK(vm.irr(0, 0x45));
    CHECK((vm.read(0, Reg::LVT_LINT0) & kLvtRemoteIrr) != 0);
    // The Vm announces the re-delivered vector.
    auto events = vm.take(0);
    CHECK(std::find(events.begin(), events.end(), event(Kind::VECTOR_DELIVERABLE, 0x45)) !=
          events.end());
  }
  SECTION("the line de-asserted before EOI: remote IRR clears, nothing pending") {
    vm->setLint(0, 0, false);
    vm.write(0, Reg::EOI, 0);
    CHECK_FALSE(vm.irr(0, 0x45));
    CHECK((vm.read(0, Reg::LVT_LINT0) & kLvtRemoteIrr) == 0);
  }
}

TEST_CASE("a software-disabled LAPIC's LINT pins are masked (11.4.7.2)", "[lint]") {
  TestVm vm(1);
  // Not software-enabled: every LVT reads masked and stays so.
  vm.write(0, Reg::LVT_LINT1, kLvtNmi);
  vm->setLint(0, 1, true);
  CHECK(vm.take(0).empty());
}

TEST_CASE("hardware-disabled APIC: LINT0 is INTR (ExtINT) and LINT1 is NMI (11.4.3)",
          "[lint]") {
  TestVm vm(2);
  vm.hardwareDisable(1);
  vm.drainAll();
  vm->setLint(1, 0, true);
  vm->setLint(1, 1, true);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::EXTINT), event(Kind::NMI)});
  vm->setLint(1, 1, true);
  CHECK(vm.take(1).empty());
}

TEST_CASE("LINT1 with INIT delivery mode resets the vCPU like an INIT IPI (11.5.1)",
          "[lint][init]") {
  TestVm vm(2);
  vm.enableAll();
  vm.startAps();
  vm.write(1, Reg::LVT_LINT1, 0x500);
  vm->setLint(1, 1, true);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::INIT)});
  CHECK(vm->runState(1) == RunState::WAIT_FOR_SIPI);
  CHECK_FALSE(vm->lapic(1).softwareEnabled());
}

TEST_CASE("thermal, PMC and CMCI LVT sources: fixed vector, SMI or NMI per entry (11.5.1)",
          "[lint]") {
  VmConfig config = makeConfig(1);
  config.lapic.lvtEntries = 7;
  TestVm vm(config);
  vm.enableAll();
  vm.write(0, Reg::LVT_THERMAL, 0x200);  // SMI
  vm.write(0, Reg::LVT_PMC, 0x400);      // NMI
  vm.write(0, Reg::LVT_CMCI, 0x66);      // fixed
  vm.drainAll();
  vm->signalLvt(0, LvtSource::THERMAL);
  vm->signalLvt(0, LvtSource::PMC);
  vm->signalLvt(0, LvtSource::CMCI);
  CHECK(vm.take(0) == std::vector<VcpuEvent>{event(Kind::SMI), event(Kind::NMI),
                                             event(Kind::VECTOR_DELIVERABLE, 0x66)});
}

}  // namespace
}  // namespace vlapic::test
