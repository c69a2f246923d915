// SPDX-License-Identifier: MIT
// The VM's own I/O APIC (server/ioapic) inside the per-VM layer: its MMIO
// window on every vCPU's access path, its messages on the VM's one routing
// path, and the LAPICs' EOI broadcasts back to it (SDM Vol. 3A 11.8.5
// "Signaling Interrupt Servicing Completion", 82093AA datasheet 3.2.4).
// The device's own register and pin rules are tests/ioapic's.
#include "vm-test-util.h"

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

constexpr uint64_t kIoApicBase = kIoApicDefaultBase;

uint64_t entry(uint8_t vector, uint32_t destination, DeliveryMode mode = DeliveryMode::FIXED,
               TriggerMode trigger = TriggerMode::EDGE, bool logical = false, bool masked = false) {
  return vector | (uint64_t(mode) << rte::kDeliveryModeShift) |
         (logical ? rte::kLogicalDestination : 0) |
         (trigger == TriggerMode::LEVEL ? rte::kLevelTriggered : 0) | (masked ? rte::kMasked : 0) |
         (uint64_t(destination & 0xFF) << rte::kDestinationShift) |
         (uint64_t((destination >> 8) & 0x7F) << rte::kExtendedDestinationShift);
}

// The guest's indirect access, from vCPU `v`: IOREGSEL, then IOWIN.
void ioWrite(TestVm& vm, uint32_t index, uint32_t value, uint32_t v = 0) {
  REQUIRE(vm->mmioWrite(v, kIoApicBase + kIoRegSel, 4, index).status == AccessStatus::OK);
  REQUIRE(vm->mmioWrite(v, kIoApicBase + kIoWin, 4, value).status == AccessStatus::OK);
}
uint32_t ioRead(TestVm& vm, uint32_t index, uint32_t v = 0) {
  REQUIRE(vm->mmioWrite(v, kIoApicBase + kIoRegSel, 4, index).status == AccessStatus::OK);
  auto r = vm->mmioRead(v, kIoApicBase + kIoWin, 4);
  REQUIRE(r.status == AccessStatus::OK);
  return uint32_t(r.value);
}
void program(TestVm& vm, uint32_t pin, uint64_t value) {
  // High dword first, as Linux does, so the entry is never live half-written.
  ioWrite(vm, kIoApicRedirectionIndex + 2 * pin + 1, uint32_t(value >> 32));
  ioWrite(vm, kIoApicRedirectionIndex + 2 * pin, uint32_t(value));
}
bool remoteIrr(TestVm& vm, uint32_t pin) {
  return ioRead(vm, kIoApicRedirectionIndex + 2 * pin) & rte::kRemoteIrr;
}

TEST_CASE("I/O APIC: the VM decodes its window at 0xFEC00000 on every vCPU's access path",
          "[ioapic]") {
  TestVm vm(2);
  CHECK(vm->hasIoApic());
  // IOREGSEL written through vCPU 0, IOWIN read through vCPU 1: one device.
  REQUIRE(vm->mmioWrite(0, kIoApicBase + kIoRegSel, 4, kIoApicVersionIndex).status ==
          AccessStatus::OK);
  auto version = vm->mmioRead(1, kIoApicBase + kIoWin, 4);
  CHECK(version.status == AccessStatus::OK);
  CHECK(version.value == ((kIoApicPins - 1) << 16 | kIoApicVersion11));
  // The access counts as no LAPIC register access of either vCPU.
  CHECK(vm->lapic(1).stats().reads == 0);
}

TEST_CASE("I/O APIC: a vCPU whose LAPIC is relocated onto the window reaches its LAPIC (KVM)",
          "[ioapic]") {
  TestVm vm(2);
  uint64_t base = vm->msrRead(0, kMsrApicBase).value;
  REQUIRE(vm->msrWrite(0, kMsrApicBase, (base & 0xFFF) | kIoApicBase).status == AccessStatus::OK);
  // vCPU 0: the LAPIC's version register at offset 0x30.
  auto lapicVersion = vm->mmioRead(0, kIoApicBase + 0x30, 4);
  CHECK(lapicVersion.status == AccessStatus::OK);
  CHECK((lapicVersion.value & 0xFF) == 0x14);
  // vCPU 1 still sees the I/O APIC.
  CHECK(ioRead(vm, kIoApicVersionIndex, 1) == ((kIoApicPins - 1) << 16 | kIoApicVersion11));
}

TEST_CASE("I/O APIC: a VM configured without one leaves the window undecoded", "[ioapic]") {
  auto config = makeConfig(1);
  config.ioapic.present = false;
  TestVm vm(config);
  CHECK_FALSE(vm->hasIoApic());
  auto r = vm->mmioRead(0, kIoApicBase + kIoWin, 4);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.reason == AccessReason::OUTSIDE_WINDOW);
  VmSnapshot snapshot = vm->saveVm();
  CHECK(snapshot.ioapic == nullptr);
}

TEST_CASE("I/O APIC config: a window that is not 4 KiB aligned or a bad version is refused",
          "[ioapic]") {
  auto config = makeConfig(1);
  config.ioapic.base = kIoApicBase + 0x10;
  CHECK(validateVmConfig(config) != nullptr);
  config.ioapic.base = kIoApicBase;
  config.ioapic.version = 0x12;
  CHECK(validateVmConfig(config) != nullptr);
  config.ioapic.version = kIoApicVersion20;
  CHECK(validateVmConfig(config) == nullptr);
  // Absent: its fields are not judged.
  config.ioapic.present = false;
  config.ioapic.version = 0x12;
  CHECK(validateVmConfig(config) == nullptr);
}

TEST_CASE("SDM 11.8.5: a level pin's remote IRR lasts until the LAPIC's EOI broadcast, "
          "which re-sends a still-asserted pin", "[ioapic]") {
  TestVm vm(2);
  vm.startAps();
  vm.enableAll();
  program(vm, 5, entry(0x45, 1, DeliveryMode::FIXED, TriggerMode::LEVEL));
  vm->setIrqLine(5, true);
  CHECK(vm.withIrr(0x45) == ids({1}));
  CHECK(vm.tmr(1, 0x45));
  CHECK(remoteIrr(vm, 5));
  // Asserting again while remote IRR is set sends nothing new.
  CHECK(vm->acknowledge(1) == uint8_t(0x45));
  vm->setIrqLine(5, true);
  CHECK_FALSE(vm.irr(1, 0x45));
  vm.drainAll();

  // EOI with the pin still asserted: the front hears of the EOI, remote IRR
  // clears and the device sends again at once.
  REQUIRE(vm.write(1, Reg::EOI, 0).status == AccessStatus::OK);
  auto events = vm.take(1);
  CHECK(std::count(events.begin(), events.end(), event(Kind::EOI, 0x45)) == 1);
  CHECK(vm.irr(1, 0x45));
  CHECK(remoteIrr(vm, 5));
  CHECK(vm->ioapic().pinStats(5).redeliveries == 1);

  // Lowered before the EOI: nothing more.
  vm->setIrqLine(5, false);
  CHECK(vm->acknowledge(1) == uint8_t(0x45));
  REQUIRE(vm.write(1, Reg::EOI, 0).status == AccessStatus::OK);
  CHECK_FALSE(vm.irr(1, 0x45));
  CHECK_FALSE(remoteIrr(vm, 5));
  CHECK(vm->ioapic().pinStats(5).messages == 2);
}

TEST_CASE("SDM 11.8.5: an edge pin's EOI touches no remote IRR and sends nothing", "[ioapic]") {
  TestVm vm(1);
  vm.enableAll();
  program(vm, 3, entry(0x33, 0));
  vm->setIrqLine(3, true);
  CHECK(vm->acknowledge(0) == uint8_t(0x33));
  REQUIRE(vm.write(0, Reg::EOI, 0).status == AccessStatus::OK);
  CHECK_FALSE(vm.irr(0, 0x33));
  CHECK_FALSE(remoteIrr(vm, 3));
  // Still high: no new edge.
  vm->setIrqLine(3, true);
  CHECK_FALSE(vm.irr(0, 0x33));
  // Low, then high: the next edge.
  vm->setIrqLine(3, false);
  vm->setIrqLine(3, true);
  CHECK(vm.irr(0, 0x33));
}

TEST_CASE("SDM 11.8.5: with SVR bit 12 (directed EOI) the LAPIC does not broadcast, the I/O "
          "APIC's EOI register (version 0x20) clears remote IRR", "[ioapic]") {
  auto config = makeConfig(1);
  config.lapic.eoiBroadcastSuppression = true;
  config.ioapic.version = kIoApicVersion20;
  TestVm vm(config);
  REQUIRE(vm.write(0, Reg::SVR, 0x11FF).status == AccessStatus::OK);
  program(vm, 9, entry(0x59, 0, DeliveryMode::FIXED, TriggerMode::LEVEL));
  vm->setIrqLine(9, true);
  CHECK(vm->acknowledge(0) == uint8_t(0x59));
  vm.drainAll();
  REQUIRE(vm.write(0, Reg::EOI, 0).status == AccessStatus::OK);
  CHECK(vm.take(0).empty());  // no EOI event: nothing was broadcast
  CHECK(remoteIrr(vm, 9));
  CHECK_FALSE(vm.irr(0, 0x59));
  // The guest's directed EOI to the I/O APIC: cleared, and re-sent because
  // the pin is still asserted.
  REQUIRE(vm->mmioWrite(0, kIoApicBase + kIoEoi, 4, 0x59).status == AccessStatus::OK);
  CHECK(vm.irr(0, 0x59));
  CHECK(remoteIrr(vm, 9));
}

TEST_CASE("82093AA: every delivery mode of an entry reaches the LAPICs through the VM's "
          "routing", "[ioapic]") {
  TestVm vm(4);
  vm.startAps();
  vm.enableAll();
  SECTION("NMI") {
    program(vm, 1, entry(0, 2, DeliveryMode::NMI));
    vm->setIrqLine(1, true);
    CHECK(vm.withEvent(Kind::NMI) == ids({2}));
  }
  SECTION("SMI") {
    program(vm, 1, entry(0, 3, DeliveryMode::SMI));
    vm->setIrqLine(1, true);
    CHECK(vm.withEvent(Kind::SMI) == ids({3}));
  }
  SECTION("INIT") {
    program(vm, 1, entry(0, 1, DeliveryMode::INIT));
    vm->setIrqLine(1, true);
    CHECK(vm.withEvent(Kind::INIT) == ids({1}));
  }
  SECTION("ExtINT") {
    program(vm, 1, entry(0, 0, DeliveryMode::EXTINT));
    vm->setIrqLine(1, true);
    CHECK(vm.withEvent(Kind::EXTINT) == ids({0}));
  }
  SECTION("fixed, logical flat: every named vCPU") {
    for (uint32_t v = 0; v < 4; v++) {
      REQUIRE(vm.write(v, Reg::LDR, uint64_t(1u << v) << 24).status == AccessStatus::OK);
    }
    program(vm, 1, entry(0x61, 0x05, DeliveryMode::FIXED, TriggerMode::EDGE, true));
    vm->setIrqLine(1, true);
    CHECK(vm.withIrr(0x61) == ids({0, 2}));
    CHECK(vm->stats().ioapicMessages == 1);
  }
  SECTION("lowest priority, logical 0xFF: exactly one vCPU (SDM 11.6.2.4)") {
    for (uint32_t v = 0; v < 4; v++) {
      REQUIRE(vm.write(v, Reg::LDR, uint64_t(1u << v) << 24).status == AccessStatus::OK);
    }
    program(vm, 1, entry(0x62, 0xFF, DeliveryMode::LOWEST_PRIORITY, TriggerMode::EDGE, true));
    vm->setIrqLine(1, true);
    CHECK(vm.withIrr(0x62).size() == 1);
  }
  SECTION("masked: nothing") {
    program(vm, 1, entry(0x63, 0, DeliveryMode::FIXED, TriggerMode::EDGE, false, true));
    vm->setIrqLine(1, true);
    CHECK(vm.withIrr(0x63).empty());
    CHECK(vm->stats().ioapicMessages == 0);
  }
}

TEST_CASE("82093AA + KVM: the extended destination ID reaches APIC IDs above 255, and 0xFF "
          "names x2APIC ID 255 alone", "[ioapic]") {
  TestVm vm(3, {0, 255, 300});
  vm.startAps();
  vm.allToX2apic();
  vm.enableAll();
  program(vm, 2, entry(0x72, 300));
  vm->setIrqLine(2, true);
  CHECK(vm.withIrr(0x72) == ids({2}));
  program(vm, 3, entry(0x73, 0xFF));
  vm->setIrqLine(3, true);
  CHECK(vm.withIrr(0x73) == ids({1}));
}

TEST_CASE("I/O APIC: a VM's save carries the device and restore brings it back exactly",
          "[ioapic]") {
  TestVm vm(2);
  vm.startAps();
  vm.enableAll();
  ioWrite(vm, kIoApicIdIndex, 7u << 24);
  program(vm, 4, entry(0x44, 1, DeliveryMode::FIXED, TriggerMode::LEVEL));
  program(vm, 6, entry(0x46, 0, DeliveryMode::FIXED, TriggerMode::EDGE, false, true));
  vm->setIrqLine(4, true);   // remote IRR set, in vCPU 1's IRR
  vm->setIrqLine(6, true);   // masked edge: pending
  VmSnapshot saved = vm->saveVm();
  KJ_IF_MAYBE(state, saved.ioapic) {
    CHECK(state->id == 7);
    CHECK((state->redirection[4] & rte::kRemoteIrr) != 0);
    CHECK(state->pendingEdges == (1u << 6));
    CHECK(state->pinLevels == ((1u << 4) | (1u << 6)));
  } else {
    FAIL("no I/O APIC in the snapshot");
  }

  TestVm other(2);
  REQUIRE(other->restoreVm(saved) == nullptr);
  KJ_IF_MAYBE(state, saved.ioapic) CHECK(other->ioapic().save() == *state);
  CHECK(other.irr(1, 0x44));
  // The pending edge is sent when the guest unmasks the entry.
  program(other, 6, entry(0x46, 0));
  CHECK(other.irr(0, 0x46));
}

TEST_CASE("I/O APIC: restore re-sends an asserted, unmasked level pin with remote IRR clear "
          "(as KVM_SET_IRQCHIP)", "[ioapic]") {
  TestVm vm(1);
  vm.enableAll();
  VmSnapshot saved = vm->saveVm();
  KJ_IF_MAYBE(state, saved.ioapic) {
    state->redirection[8] = entry(0x58, 0, DeliveryMode::FIXED, TriggerMode::LEVEL);
    state->pinLevels = 1u << 8;
  }
  REQUIRE(vm->restoreVm(saved) == nullptr);
  CHECK(vm.irr(0, 0x58));
  CHECK(remoteIrr(vm, 8));
}

TEST_CASE("I/O APIC: restore refuses a state the device refuses, or one for a VM without an "
          "I/O APIC, and changes nothing", "[ioapic]") {
  TestVm vm(1);
  vm.enableAll();
  program(vm, 2, entry(0x52, 0));
  VmSnapshot good = vm->saveVm();
  IoApicState before = vm->ioapic().save();

  VmSnapshot bad = vm->saveVm();
  KJ_IF_MAYBE(state, bad.ioapic) {
    state->redirection[2] |= rte::kRemoteIrr;   // remote IRR on an edge entry
    state->redirection[3] = 0;                  // would change pin 3 if applied
  }
  auto problem = vm->restoreVm(bad);
  REQUIRE(problem != nullptr);
  KJ_IF_MAYBE(p, problem) CHECK(kj::StringPtr(*p).startsWith("I/O APIC"));
  CHECK(vm->ioapic().save() == before);

  auto config = makeConfig(1);
  config.ioapic.present = false;
  TestVm without(config);
  CHECK(without->restoreVm(good) != nullptr);

  // A snapshot without an I/O APIC (a VM without one, or an older vlapicd)
  // restores the LAPICs and leaves the device as it is.
  VmSnapshot lapicsOnly = without->saveVm();
  REQUIRE(vm->restoreVm(lapicsOnly) == nullptr);
  CHECK(vm->ioapic().save() == before);
}

}  // namespace
}  // namespace vlapic::test
