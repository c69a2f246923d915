// SPDX-License-Identifier: MIT
// A KVM virtual machine whose LAPICs live outside KVM: one thread per vCPU,
// every xAPIC MMIO and x2APIC/APIC-base/TSC-deadline MSR access forwarded to
// an ApicBackend (vlapicd), interrupts injected as a user-space-irqchip VMM
// injects them, SMP start-up by INIT-SIPI as on real hardware. The I/O
// APIC is the backend's too: its MMIO window is forwarded like the LAPIC's,
// and the platform devices' IRQ wires (the UART's IRQ 4, pc-testdev's
// lines) go to its pins.
//
// For comparison only, the same machine can instead use KVM's in-kernel
// irqchip (KVM_CREATE_IRQCHIP): bench-kvm measures both in one program.
#pragma once

#include "client/kvm/apic_backend.h"
#include "client/kvm/boot.h"
#include "client/kvm/devices.h"
#include "client/kvm/kvm.h"
#include <kj/function.h>
#include <kj/mutex.h>
#include <kj/thread.h>
#include <kj/vector.h>
#include <atomic>

namespace vlapic::kvm {

enum class ApicLocation : uint8_t {
  SERVER,     // every APIC access goes to an ApicBackend (vlapicd)
  IN_KERNEL,  // KVM's own LAPIC (KVM_CREATE_IRQCHIP), for comparisons
};

struct MachineConfig {
  uint32_t vcpuCount = 1;
  uint64_t memoryBytes = 256ull << 20;
  bool x2apic = true;  // CPUID.1:ECX.x2APIC
  ApicLocation apic = ApicLocation::SERVER;
  bool trace = false;  // every exit and injection on stderr (--trace)
};

// How a run ended. Process exit statuses: the guest's own status
// ((v << 1) | 1, always odd) or one of the even statuses below.
struct MachineExit {
  enum class Kind : uint8_t {
    GUEST_EXIT,      // the guest wrote its status to the debug-exit port
    TRIPLE_FAULT,    // KVM_EXIT_SHUTDOWN
    UNHANDLED_EXIT,  // an exit reason or state this VMM does not handle
    BACKEND_LOST,    // vlapicd went away or failed a call
    TIMEOUT,         // --timeout elapsed
    INTERNAL_ERROR,  // a KVM ioctl failed
  };
  Kind kind = Kind::GUEST_EXIT;
  uint32_t guestValue = 0;  // GUEST_EXIT: the value written to port 0xF4
  kj::String message;

  int processStatus() const;
  MachineExit clone() const {
    MachineExit copy;
    copy.kind = kind;
    copy.guestValue = guestValue;
    copy.message = kj::str(message);
    return copy;
  }
};

constexpr int kStatusUsage = 2;
constexpr int kStatusNoKvm = 4;
constexpr int kStatusBackendLost = 6;
constexpr int kStatusTripleFault = 8;
constexpr int kStatusUnhandledExit = 10;
constexpr int kStatusTimeout = 12;
constexpr int kStatusInternalError = 14;

// APIC IDs of the vCPUs: vCPU i has initial APIC ID i (the VmConfig given
// to vlapicd leaves apicIds empty, which means the same).
inline uint32_t apicIdOf(uint32_t vcpu) { return vcpu; }

class Machine final : public ApicEventSink {
public:
  Machine(KvmSystem& kvm, const MachineConfig& config, kj::Function<void(char)> serialOutput);
  ~Machine() noexcept(false);
  KJ_DISALLOW_COPY(Machine);

  GuestMemory& memory() { return guestMemory; }
  const MachineConfig& config() const { return machineConfig; }
  // The guest TSC frequency KVM runs the vCPUs at; vlapicd is configured
  // with the same, and every vCPU's TSC reads CLOCK_MONOTONIC ns scaled by
  // it (offset 0), which is vlapicd's view of the guest TSC as well.
  uint64_t tscHz() const { return guestTscHz; }
  // The guest TSC as an offset from CLOCK_MONOTONIC: guest TSC = host ns *
  // tscHz / 1e9 + offset, the form vlapicd computes its guest TSC in
  // (server/core/timer.h GuestTsc), so TSC-deadline and the guest's own
  // clock agree once vlapicd is given this offset. Measured rather than
  // programmed: this project's nested KVM ignores guest TSC writes (the
  // guest reads the L1 TSC, ~84 ms off CLOCK_MONOTONIC's scale).
  int64_t measureGuestTscOffset();

  // Required before run() with ApicLocation::SERVER.
  void attachApic(ApicBackend& backend);
  // Multiboot protected-mode entry state for the boot vCPU (vCPU 0): the
  // Multiboot 0.6.96 section 3.2 values of multiboot.h plus the loader's EBX/EIP.
  void setBootState(const BootState& state);

  // Runs every vCPU until the guest exits, something fails or the timeout
  // elapses; returns how it ended. Call once.
  MachineExit run(kj::Maybe<uint64_t> timeoutMs);

  // Ends the run (first caller wins).
  void stop(MachineExit exit);

  // ApicEventSink: called by the backend's thread.
  void interruptDeliverable(uint32_t vcpu) override;
  void nmi(uint32_t vcpu, uint32_t count) override;
  void init(uint32_t vcpu) override;
  void startup(uint32_t vcpu, uint8_t vector) override;
  void unhandledEvent(uint32_t vcpu, kj::StringPtr what) override;
  void attention(uint32_t vcpu) override;
  void restored(uint32_t vcpu) override;
  void backendLost(kj::StringPtr why) override;

  struct Counters {
    std::atomic<uint64_t> exits{0}, apicAccesses{0}, injected{0}, nmis{0}, kicks{0}, halts{0},
        unhandledEvents{0}, pageReads{0};
    // MMIO in the server's I/O APIC window; I/O APIC input level changes.
    std::atomic<uint64_t> ioApicAccesses{0}, irqLineChanges{0};
  };
  const Counters& counters() const { return stats; }

private:
  class Vcpu;
  friend class Vcpu;

  KvmSystem& kvm;
  MachineConfig machineConfig;
  kj::AutoCloseFd vmFd;
  GuestMemory guestMemory;
  IoBus ioBus;
  uint64_t guestTscHz = 0;
  kj::Maybe<ApicBackend&> backend;
  kj::Vector<kj::Own<Vcpu>> vcpus;
  std::atomic<bool> stopping{false};
  kj::MutexGuarded<kj::Maybe<MachineExit>> outcome;
  Counters stats;

  void setUpVm();
  // A platform device's wire to I/O APIC input `pin` changed level (the
  // port bus's lock is held): to the backend's I/O APIC, or to KVM's with
  // the in-kernel irqchip.
  void driveIrqLine(uint8_t pin, bool level);
  kj::Array<kvm_cpuid_entry2> cpuidFor(uint32_t vcpu) const;
  Vcpu& vcpuAt(uint32_t index);
};

}  // namespace vlapic::kvm
