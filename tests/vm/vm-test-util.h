// SPDX-License-Identifier: MIT
// Helpers for the per-VM delivery tests: a VM on a ManualClock, and guest
// accesses spelled the way a guest issues them (MMIO in xAPIC mode, MSRs in
// x2APIC mode), so every test drives the VM through its real entry points.
#pragma once

#include "server/vm/vm.h"
#include "schema/model/registers.h"
#include "hal/hal.h"
#include <catch2/catch.hpp>
#include <kj/debug.h>
#include <vector>

namespace vlapic::test {

constexpr uint64_t kApicBase = 0xFEE00000;

inline uint32_t icrLow(uint8_t vector, DeliveryMode mode, bool logical = false,
                       Shorthand shorthand = Shorthand::NONE, bool levelAssert = true,
                       TriggerMode trigger = TriggerMode::EDGE) {
  return uint32_t(vector) | (uint32_t(mode) << 8) | (uint32_t(logical) << 11) |
         (uint32_t(levelAssert) << 14) | (uint32_t(trigger) << 15) |
         (uint32_t(shorthand) << 18);
}

// Recorded listener callbacks, in order.
struct RecordingListener final : public VmEventListener {
  std::vector<uint32_t> pending;
  std::vector<uint32_t> timers;
  void eventsPending(uint32_t vcpu) override { pending.push_back(vcpu); }
  void timerChanged(uint32_t vcpu) override { timers.push_back(vcpu); }
};

inline VmConfig makeConfig(uint32_t vcpus, std::vector<uint32_t> ids = {}) {
  VmConfig config;
  config.vcpuCount = vcpus;
  if (!ids.empty()) {
    config.apicIds = kj::heapArray<uint32_t>(ids.data(), ids.size());
  }
  return config;
}

class TestVm {
public:
  explicit TestVm(const VmConfig& config)
      : hal(hal::newHostMemoryHal(clock)), vm(kj::heap<Vm>(*hal, config)) {
    vm->setListener(listener);
  }
  explicit TestVm(uint32_t vcpus, std::vector<uint32_t> ids = {})
      : TestVm(makeConfig(vcpus, kj::mv(ids))) {}

  hal::ManualClock clock;
  kj::Own<hal::Hal> hal;
  kj::Own<Vm> vm;
  RecordingListener listener;

  Vm& operator*() { return *vm; }
  Vm* operator->() { return vm.get(); }

  bool x2apic(uint32_t v) { return vm->lapic(v).mode() == ApicMode::X2APIC; }

  // A register write the way the guest would do it in the current mode.
  AccessResult write(uint32_t v, Reg reg, uint64_t value) {
    if (x2apic(v)) return vm->msrWrite(v, regMsr(reg), value);
    return vm->mmioWrite(v, kApicBase + regOffset(reg), 4, value);
  }
  uint64_t read(uint32_t v, Reg reg) {
    auto r = x2apic(v) ? vm->msrRead(v, regMsr(reg))
                       : vm->mmioRead(v, kApicBase + regOffset(reg), 4);
    REQUIRE(r.status == AccessStatus::OK);
    return r.value;
  }

  // Application processors wait for SIPI after power-on (SDM 8.4.1); start
  // them the way firmware would, so tests begin with every vCPU running.
  void startAps() {
    for (uint32_t v = 0; v < vm->vcpuCount(); v++) {
      if (vm->runState(v) == RunState::WAIT_FOR_SIPI) vm->startup(v, 0x10);
      REQUIRE(vm->runState(v) == RunState::RUNNING);
    }
    drainAll();
  }

  void enable(uint32_t v) { REQUIRE(write(v, Reg::SVR, 0x1FF).status == AccessStatus::OK); }
  void enableAll() {
    for (uint32_t v = 0; v < vm->vcpuCount(); v++) enable(v);
  }
  void toX2apic(uint32_t v) {
    uint64_t base = vm->msrRead(v, kMsrApicBase).value;
    REQUIRE(vm->msrWrite(v, kMsrApicBase, base | kApicBaseExtd).status == AccessStatus::OK);
    REQUIRE(x2apic(v));
  }
  void allToX2apic() {
    for (uint32_t v = 0; v < vm->vcpuCount(); v++) toX2apic(v);
  }
  void hardwareDisable(uint32_t v) {
    uint64_t base = vm->msrRead(v, kMsrApicBase).value;
    REQUIRE(vm->msrWrite(v, kMsrApicBase, base & ~(kApicBaseEnable | kApicBaseExtd)).status ==
            AccessStatus::OK);
  }

  // Sends an IPI through the ICR. xAPIC: ICR high (destination 31:24) then
  // ICR low; x2APIC: one 64-bit write to MSR 0x830.
  AccessResult sendIcr(uint32_t from, uint32_t low, uint32_t destination) {
    if (x2apic(from)) {
      return vm->msrWrite(from, regMsr(Reg::ICR_LOW), (uint64_t(destination) << 32) | low);
    }
    auto high = vm->mmioWrite(from, kApicBase + regOffset(Reg::ICR_HIGH), 4,
                              uint64_t(destination) << 24);
    REQUIRE(high.status == AccessStatus::OK);
    return vm->mmioWrite(from, kApicBase + regOffset(Reg::ICR_LOW), 4, low);
  }

  bool bitIn(uint32_t v, Reg first, uint8_t vector) {
    uint32_t word = vm->lapic(v).readRegister(Reg(uint16_t(first) + vector / 32));
    return (word >> (vector % 32)) & 1;
  }
  bool irr(uint32_t v, uint8_t vector) { return bitIn(v, Reg::IRR0, vector); }
  bool isr(uint32_t v, uint8_t vector) { return bitIn(v, Reg::ISR0, vector); }
  bool tmr(uint32_t v, uint8_t vector) { return bitIn(v, Reg::TMR0, vector); }
  bool anyIrr(uint32_t v) {
    for (uint16_t i = 0; i < 8; i++) {
      if (vm->lapic(v).readRegister(Reg(uint16_t(Reg::IRR0) + i)) != 0) return true;
    }
    return false;
  }

  // ESR as the guest reads it (SDM "Error Handling": write, then read).
  uint32_t esr(uint32_t v) {
    REQUIRE(write(v, Reg::ESR, 0).status == AccessStatus::OK);
    return uint32_t(read(v, Reg::ESR));
  }

  std::vector<VcpuEvent> take(uint32_t v) {
    auto events = vm->takeEvents(v);
    return std::vector<VcpuEvent>(events.begin(), events.end());
  }
  void drainAll() {
    for (uint32_t v = 0; v < vm->vcpuCount(); v++) vm->takeEvents(v);
  }
  // The vCPUs whose queues hold an event of `kind`.
  std::vector<uint32_t> withEvent(VcpuEvent::Kind kind) {
    std::vector<uint32_t> out;
    for (uint32_t v = 0; v < vm->vcpuCount(); v++) {
      for (auto& e : vm->peekEvents(v)) {
        if (e.kind == kind) {
          out.push_back(v);
          break;
        }
      }
    }
    return out;
  }
  std::vector<uint32_t> withIrr(uint8_t vector) {
    std::vector<uint32_t> out;
    for (uint32_t v = 0; v < vm->vcpuCount(); v++) {
      if (irr(v, vector)) out.push_back(v);
    }
    return out;
  }
  // Acknowledge and EOI everything pending on v.
  void serviceAll(uint32_t v) {
    while (vm->acknowledge(v) != nullptr) {
      REQUIRE(write(v, Reg::EOI, 0).status == AccessStatus::OK);
    }
  }
};

inline VcpuEvent event(VcpuEvent::Kind kind, uint8_t vector = 0, uint32_t count = 1) {
  return VcpuEvent{kind, vector, count};
}

inline std::vector<uint32_t> ids(std::initializer_list<uint32_t> list) { return list; }

}  // namespace vlapic::test

namespace Catch {
template <>
struct StringMaker<vlapic::VcpuEvent> {
  static std::string convert(const vlapic::VcpuEvent& e) {
    return std::string(vlapic::vcpuEventKindName(e.kind).cStr()) + "(" +
           std::to_string(e.vector) + " x" + std::to_string(e.count) + ")";
  }
};
}  // namespace Catch
