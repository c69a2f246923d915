// SPDX-License-Identifier: MIT
// libFuzzer harness for per-VM delivery (server/vm/vm.h): IPIs, MSIs, I/O
// APIC entries and raw messages routed among a VM's LAPICs while the guest
// reshapes the routing (APIC modes, IDs, LDR, DFR, SVR, TPR, EOI).
//
// The input is a VM configuration followed by operations. Two VMs run the
// same operations in lockstep, one resolving destinations through the
// per-VM destination map and one by scanning every vCPU; after every
// operation the harness checks:
// - both VMs gave the same result and hold the same IRR, ISR, TMR and event
//   queues (the map is only a faster way to the same answer);
// - a message that goes to one processor (lowest priority, or the MSI
//   redirection hint: SDM 11.6.2.4 and 11.11.1) is accepted by at most one
//   vCPU, whatever its destination names, except KVM's "phys broadcast and
//   lowest prio" case (xAPIC-format physical 0xFF), which is fixed to all.
// A violation prints what broke and aborts: libFuzzer records the input.
//
// Built only in the clang configuration (tests/fuzz/run.sh).

#include "server/vm/vm.h"
#include "schema/model/registers.h"
#include "hal/hal.h"

#include "tests/fuzz/invariant.h"
#include "tests/fuzz/trace.h"

#include <fuzzer/FuzzedDataProvider.h>
#include <kj/debug.h>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace vlapic {
namespace {

constexpr uint64_t kApicBase = 0xFEE00000;

using fuzz::violated;

// The harness's own statement of the one-processor rule, independent of
// vm.cc's: which messages are accepted by at most one vCPU.
bool goesToOne(const InterruptMessage& m, bool redirectionHint) {
  switch (m.deliveryMode) {
    case DeliveryMode::LOWEST_PRIORITY: {
      bool xapicPhysicalBroadcast = m.shorthand == Shorthand::NONE && !m.logicalDestination &&
                                    !m.x2apicFormat && m.destination == 0xFF;
      return redirectionHint || !xapicPhysicalBroadcast;
    }
    case DeliveryMode::FIXED:
    case DeliveryMode::NMI:
    case DeliveryMode::SMI:
      return redirectionHint;
    default:
      return false;
  }
}

// What a vCPU shows of the interrupts it accepted.
struct Acceptance {
  uint32_t irr[8], isr[8], tmr[8];
  uint64_t nmis = 0, smis = 0, others = 0;

  static Acceptance of(const Vm& vm, uint32_t v) {
    Acceptance a;
    const Lapic& lapic = vm.lapic(v);
    for (uint16_t i = 0; i < 8; i++) {
      a.irr[i] = lapic.readRegister(Reg(uint16_t(Reg::IRR0) + i));
      a.isr[i] = lapic.readRegister(Reg(uint16_t(Reg::ISR0) + i));
      a.tmr[i] = lapic.readRegister(Reg(uint16_t(Reg::TMR0) + i));
    }
    for (auto& e : vm.peekEvents(v)) {
      if (e.kind == VcpuEvent::Kind::NMI) {
        a.nmis += e.count;
      } else if (e.kind == VcpuEvent::Kind::SMI) {
        a.smis++;
      } else if (e.kind != VcpuEvent::Kind::VECTOR_DELIVERABLE) {
        a.others++;
      }
    }
    return a;
  }
  bool irrBit(uint8_t vector) const { return (irr[vector / 32] >> (vector % 32)) & 1; }
};

class Harness {
public:
  explicit Harness(FuzzedDataProvider& in) : in(in), hal(hal::newHostMemoryHal(clock)) {}

  void run() {
    VmConfig config;
    config.vcpuCount = in.ConsumeIntegralInRange<uint32_t>(1, 9);
    if (in.ConsumeBool()) {
      // Sparse IDs, 255 and above included (an x2APIC VM with > 255 vCPUs).
      static constexpr uint32_t kIds[] = {0, 1, 2, 3, 7, 8, 15, 16, 0xFE, 0xFF,
                                          0x100, 300, 0x7FFE, 0x10000, 0x123456};
      auto ids = kj::heapArrayBuilder<uint32_t>(config.vcpuCount);
      for (uint32_t i = 0; i < config.vcpuCount; i++) {
        uint32_t id;
        bool fresh;
        do {
          id = kIds[in.ConsumeIntegralInRange<size_t>(0, kj::size(kIds) - 1)];
          fresh = true;
          for (uint32_t j = 0; j < i; j++) fresh = fresh && ids[j] != id;
          if (in.remaining_bytes() == 0 && !fresh) id = 0x200000 + i, fresh = true;
        } while (!fresh);
        ids.add(id);
      }
      config.apicIds = ids.finish();
    }
    config.lowestPriority = LowestPriorityPolicy(in.ConsumeIntegralInRange<int>(0, 2));
    config.x2apicBroadcastQuirk = in.ConsumeBool();
    if (validateVmConfig(config) != nullptr) return;
    VmConfig scanned = copyConfig(config);
    scanned.destinationMap = false;
    mapped = kj::heap<Vm>(*hal, config);
    scanning = kj::heap<Vm>(*hal, scanned);
    TRACE("vm: %u vCPUs, policy %d, quirk %d\n", config.vcpuCount, int(config.lowestPriority),
          int(config.x2apicBroadcastQuirk));
    for (step = 0; in.remaining_bytes() > 0 && step < 2000; step++) {
      operate();
      compare();
    }
  }

private:
  FuzzedDataProvider& in;
  hal::ManualClock clock;
  kj::Own<hal::Hal> hal;  // declared before the VMs: their pages go first
  kj::Own<Vm> mapped, scanning;
  unsigned step = 0;

  static VmConfig copyConfig(const VmConfig& config) {
    VmConfig copy;
    copy.vcpuCount = config.vcpuCount;
    copy.apicIds = kj::heapArray<uint32_t>(config.apicIds.asPtr());
    copy.lowestPriority = config.lowestPriority;
    copy.x2apicBroadcastQuirk = config.x2apicBroadcastQuirk;
    return copy;
  }

  uint32_t someVcpu() { return in.ConsumeIntegralInRange<uint32_t>(0, mapped->vcpuCount() - 1); }

  uint32_t someDestination() {
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: return 0xFF;
      case 1: return 0xFFFFFFFF;
      case 2: return in.ConsumeIntegral<uint8_t>();
      case 3: return mapped->initialApicId(someVcpu());
      case 4: return in.ConsumeIntegralInRange<uint32_t>(0, 0xFFFF);
      default: return in.ConsumeIntegral<uint32_t>();
    }
  }

  bool x2apic(uint32_t v) const { return mapped->lapic(v).mode() == ApicMode::X2APIC; }

  // The same guest write to both VMs, as the guest would make it.
  void guestWrite(uint32_t v, Reg reg, uint64_t value) {
    for (Vm* vm : {mapped.get(), scanning.get()}) {
      if (x2apic(v)) {
        vm->msrWrite(v, regMsr(reg), value);
      } else {
        vm->mmioWrite(v, kApicBase + regOffset(reg), 4, value);
      }
    }
  }

  void operate() {
    uint32_t v = someVcpu();
    switch (in.ConsumeIntegralInRange<int>(0, 12)) {
      case 0: {  // APIC mode: xAPIC, x2APIC, disabled (legal or not)
        uint64_t base = mapped->lapic(v).apicBase() & ~uint64_t(0xC00);
        uint64_t bits = uint64_t(in.ConsumeIntegralInRange<int>(0, 3)) << 10;
        TRACE("%u: vCPU %u APIC base mode bits 0x%llx\n", step, v, (unsigned long long)bits);
        for (Vm* vm : {mapped.get(), scanning.get()}) vm->msrWrite(v, kMsrApicBase, base | bits);
        break;
      }
      case 1: guestWrite(v, Reg::SVR, in.ConsumeBool() ? 0x1FF : 0xFF); break;
      case 2: guestWrite(v, Reg::TPR, in.ConsumeIntegral<uint8_t>()); break;
      case 3: guestWrite(v, Reg::LDR, uint32_t(in.ConsumeIntegral<uint8_t>()) << 24); break;
      case 4: guestWrite(v, Reg::DFR, in.ConsumeBool() ? 0xFFFFFFFF : 0x0FFFFFFF); break;
      case 5: guestWrite(v, Reg::ID, uint32_t(in.ConsumeIntegral<uint8_t>()) << 24); break;
      case 6: {  // acknowledge, maybe EOI
        TRACE("%u: vCPU %u acknowledge\n", step, v);
        for (Vm* vm : {mapped.get(), scanning.get()}) vm->acknowledge(v);
        if (in.ConsumeBool()) guestWrite(v, Reg::EOI, 0);
        break;
      }
      case 7: {  // drain the event queues
        for (Vm* vm : {mapped.get(), scanning.get()}) vm->takeEvents(v);
        break;
      }
      case 8: {  // an IPI, any shape
        InterruptMessage m = someMessage();
        m.shorthand = Shorthand(in.ConsumeIntegralInRange<int>(0, 3));
        m.x2apicFormat = in.ConsumeBool();
        TRACE("%u: vCPU %u sendIpi vector 0x%x mode %d logical %d shorthand %d dest 0x%x x2 %d\n",
              step, v, m.vector, int(m.deliveryMode), int(m.logicalDestination),
              int(m.shorthand), m.destination, int(m.x2apicFormat));
        deliver(m, false, [&](Vm& vm) { return vm.sendIpi(v, m); });
        break;
      }
      case 9: {  // an MSI
        uint32_t destination = someDestination();
        bool logical = in.ConsumeBool(), hint = in.ConsumeBool();
        uint64_t address = kApicBase | (uint64_t(destination & 0xFF) << 12) |
                           (uint64_t((destination >> 8) & 0x7F) << 5) | (uint64_t(hint) << 3) |
                           (uint64_t(logical) << 2);
        if (in.ConsumeBool()) address |= uint64_t(destination & 0xFFFFFF00) << 32;
        uint32_t data = in.ConsumeIntegral<uint16_t>();
        TRACE("%u: MSI 0x%llx data 0x%x\n", step, (unsigned long long)address, data);
        KJ_IF_MAYBE(msi, decodeMsi(address, data)) {
          InterruptMessage m = msi->message;
          deliver(m, msi->redirectionHint,
                  [&](Vm& vm) { return vm.deliverMsi(address, data); });
        }
        break;
      }
      case 10: {  // an I/O APIC entry
        uint32_t destination = someDestination();
        uint64_t entry = uint64_t(in.ConsumeIntegral<uint16_t>()) |  // never masked (bit 16)
                         (uint64_t(destination & 0xFF) << 56) |
                         (uint64_t((destination >> 8) & 0x7F) << 49);
        TRACE("%u: I/O APIC entry 0x%llx\n", step, (unsigned long long)entry);
        InterruptMessage m = decodeRedirectionEntry(entry).message;
        deliver(m, false, [&](Vm& vm) { return vm.deliverIoApic(entry); });
        break;
      }
      case 11: {  // the VM's own I/O APIC: the guest's MMIO, or a device's pin
        if (in.ConsumeBool()) {
          // Any offset and size in the window, the register slots favoured.
          static constexpr uint64_t kOffsets[] = {kIoRegSel, kIoWin, kIoEoi, 0x04, 0x14, 0x20};
          uint64_t offset = in.ConsumeBool()
              ? kOffsets[in.ConsumeIntegralInRange<size_t>(0, kj::size(kOffsets) - 1)]
              : in.ConsumeIntegralInRange<uint64_t>(0, kIoApicWindowSize - 1);
          static constexpr uint8_t kSizes[] = {1, 2, 4, 8, 3};
          uint8_t size = kSizes[in.ConsumeIntegralInRange<size_t>(0, kj::size(kSizes) - 1)];
          bool write = in.ConsumeBool();
          // IOREGSEL values near the redirection table, IOWIN values any.
          uint64_t value = in.ConsumeBool() ? in.ConsumeIntegralInRange<uint32_t>(0, 0x40)
                                            : in.ConsumeIntegral<uint32_t>();
          TRACE("%u: vCPU %u I/O APIC %s +0x%llx size %u value 0x%llx\n", step, v,
                write ? "write" : "read", (unsigned long long)offset, size,
                (unsigned long long)value);
          uint64_t gpa = kIoApicDefaultBase + offset;
          AccessResult a = write ? mapped->mmioWrite(v, gpa, size, value)
                                 : mapped->mmioRead(v, gpa, size);
          AccessResult b = write ? scanning->mmioWrite(v, gpa, size, value)
                                 : scanning->mmioRead(v, gpa, size);
          EXPECT_EQ(uint32_t(a.status), uint32_t(b.status), "map and scan: same I/O APIC access");
          EXPECT_EQ(a.value, b.value, "map and scan: same I/O APIC read");
        } else {
          uint32_t pin = in.ConsumeIntegralInRange<uint32_t>(0, kIoApicPins - 1);
          bool level = in.ConsumeBool();
          TRACE("%u: I/O APIC pin %u -> %d\n", step, pin, int(level));
          for (Vm* vm : {mapped.get(), scanning.get()}) vm->setIrqLine(pin, level);
        }
        checkIoApic();
        break;
      }
      default: {  // a raw message without a sender
        InterruptMessage m = someMessage();
        m.x2apicFormat = in.ConsumeBool();
        TRACE("%u: deliverMessage vector 0x%x mode %d logical %d dest 0x%x x2 %d\n", step,
              m.vector, int(m.deliveryMode), int(m.logicalDestination), m.destination,
              int(m.x2apicFormat));
        deliver(m, false, [&](Vm& vm) { return vm.deliverMessage(m); });
        break;
      }
    }
  }

  InterruptMessage someMessage() {
    InterruptMessage m;
    m.vector = in.ConsumeIntegralInRange<uint8_t>(16, 255);
    m.deliveryMode = DeliveryMode(in.ConsumeIntegralInRange<int>(0, 7));
    if (in.ConsumeBool()) m.deliveryMode = DeliveryMode::LOWEST_PRIORITY;
    m.logicalDestination = in.ConsumeBool();
    m.destination = someDestination();
    m.trigger = in.ConsumeBool() ? TriggerMode::LEVEL : TriggerMode::EDGE;
    m.levelAssert = !in.ConsumeBool() || m.trigger == TriggerMode::EDGE;
    return m;
  }

  template <typename Send>
  void deliver(const InterruptMessage& m, bool redirectionHint, Send&& send) {
    uint32_t n = mapped->vcpuCount();
    std::vector<Acceptance> before;
    for (uint32_t v = 0; v < n; v++) before.push_back(Acceptance::of(*mapped, v));
    DeliveryResult a = send(*mapped);
    DeliveryResult b = send(*scanning);
    EXPECT_EQ(uint32_t(a.status), uint32_t(b.status), "map and scan: same delivery status");
    EXPECT_EQ(a.targetCount, b.targetCount, "map and scan: same target count");
    if (!goesToOne(m, redirectionHint) || a.status != DeliveryStatus::DELIVERED) return;
    EXPECT_EQ(a.targetCount, 1, "a lowest-priority message is accepted by one vCPU");
    uint32_t acceptors = 0;
    for (uint32_t v = 0; v < n; v++) {
      Acceptance after = Acceptance::of(*mapped, v);
      bool accepted = after.nmis != before[v].nmis || after.smis != before[v].smis ||
                      (!before[v].irrBit(m.vector) && after.irrBit(m.vector));
      if (accepted) acceptors++;
    }
    if (acceptors > 1) violated(step, "a lowest-priority message is accepted by at most one vCPU",
                                acceptors, 1);
  }

  // The device's own state stays one it would accept back, and survives
  // a save/restore round trip unchanged.
  void checkIoApic() {
    IoApicState state = mapped->ioapic().save();
    if (mapped->ioapic().validate(state) != nullptr) {
      violated(step, "the I/O APIC's saved state is one its restore accepts", 1, 0);
    }
    for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
      uint64_t entry = state.redirection[pin];
      if ((entry & rte::kRemoteIrr) && !(entry & rte::kLevelTriggered)) {
        violated(step, "remote IRR only on a level-triggered entry", pin, 0);
      }
    }
    EXPECT_EQ(uint32_t(state == scanning->ioapic().save()), 1u,
              "map and scan: same I/O APIC state");
  }

  void compare() {
    for (uint32_t v = 0; v < mapped->vcpuCount(); v++) {
      Acceptance a = Acceptance::of(*mapped, v), b = Acceptance::of(*scanning, v);
      for (int i = 0; i < 8; i++) {
        EXPECT_EQ(a.irr[i], b.irr[i], "map and scan: same IRR");
        EXPECT_EQ(a.isr[i], b.isr[i], "map and scan: same ISR");
        EXPECT_EQ(a.tmr[i], b.tmr[i], "map and scan: same TMR");
      }
      EXPECT_EQ(a.nmis, b.nmis, "map and scan: same NMIs queued");
      EXPECT_EQ(a.smis, b.smis, "map and scan: same SMIs queued");
      EXPECT_EQ(a.others, b.others, "map and scan: same other events queued");
      EXPECT_EQ(uint32_t(mapped->runState(v)), uint32_t(scanning->runState(v)),
                "map and scan: same run state");
    }
  }
};

}  // namespace
}  // namespace vlapic

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  vlapic::Harness harness(in);
  harness.run();
  return 0;
}
