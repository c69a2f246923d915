// SPDX-License-Identifier: MIT
// The front's view of the LAPIC it does not own: every guest APIC access and
// every interrupt acknowledge goes through this interface, and the LAPIC
// tells the front what each vCPU must act on through ApicEventSink. The
// same server may own the VM's I/O APIC: its MMIO window goes through the
// same mmioRead/mmioWrite calls and its input pins through setIrqLine. The
// one implementation talks to vlapicd (vlapicd_backend.h); the interface
// exists so the KVM plumbing does not depend on the transport.
#pragma once

#include <kj/common.h>
#include <kj/function.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::kvm {

// What one guest access turned into (schema AccessResult, transport-free).
struct ApicAccess {
  enum class Kind : uint8_t {
    VALUE,    // took effect; `value` is what a read returns
    GP,       // inject #GP (MSR accesses)
    IGNORED,  // no fault: write dropped, read returns `value`
  };
  Kind kind = Kind::VALUE;
  uint64_t value = 0;
  kj::StringPtr reason;  // why #GP/ignored ("" otherwise)
  // After the access, a vector beats PPR (e.g. an EOI uncovered one, a
  // self IPI was accepted): the front opens an interrupt window at once.
  bool interruptPending = false;
  // The server already acknowledged this vector (IRR -> ISR) in the same
  // call, because the front said the vCPU can take it after this exit:
  // inject it now (the channel's "inject vector V now").
  kj::Maybe<uint8_t> inject;
};

// Interrupt state after an acknowledge or a CR8 sync.
struct ApicInterruptState {
  bool interruptPending = false;
  uint8_t tpr = 0;
};

struct ApicAcknowledge {
  kj::Maybe<uint8_t> vector;  // inject this now; nullptr: nothing beats PPR any more
  ApicInterruptState after;
};

// Called by the backend, from its own thread, in per-vCPU order.
class ApicEventSink {
public:
  virtual ~ApicEventSink() noexcept(false) = default;
  virtual void interruptDeliverable(uint32_t vcpu) = 0;
  // `count` NMIs were sent to the vCPU (counted by the server, never
  // dropped: the front decides which the guest latches, nmi_gate.h).
  virtual void nmi(uint32_t vcpu, uint32_t count) = 0;
  virtual void init(uint32_t vcpu) = 0;
  virtual void startup(uint32_t vcpu, uint8_t vector) = 0;
  // SMI, ExtINT, EOI broadcasts: nothing in this front consumes them (no
  // SMM, no legacy PIC; the I/O APIC, when there is one, is the server's
  // and gets its EOIs there); the sink counts them.
  virtual void unhandledEvent(uint32_t vcpu, kj::StringPtr what) = 0;
  // The server queued events for this vCPU that only the vCPU's own thread
  // can fetch (ApicBackend::fetchEvents): kick it out of KVM_RUN or HLT.
  virtual void attention(uint32_t vcpu) = 0;
  // The server's state for this vCPU was restored from a snapshot (after
  // vlapicd was lost): what the front caches from it (IA32_APIC_BASE) must
  // be read again, and what the guest changed since (CR8) pushed again.
  virtual void restored(uint32_t vcpu) = 0;
  // The LAPIC server went away: no vCPU can continue.
  virtual void backendLost(kj::StringPtr why) = 0;
};

// How a halted vCPU's thread sleeps, for ApicBackend::waitWhileHalted.
struct HaltWait {
  // Blocks until something is posted that ends the halt (true), or until
  // `wakeAtNs` (host CLOCK_MONOTONIC) passes (false); nullptr: no limit.
  kj::Function<bool(kj::Maybe<uint64_t> wakeAtNs)> sleepUntil;
  // Whether something that ends the halt was posted, without blocking.
  kj::Function<bool()> posted;
};

// Synchronous per-vCPU calls, made from that vCPU's thread.
class ApicBackend {
public:
  virtual ~ApicBackend() noexcept(false) = default;

  // Called on a vCPU's thread before its first call / after its last one
  // (a backend may bind per-thread connections to the thread).
  virtual void openOnThisThread(uint32_t vcpu) = 0;
  virtual void closeOnThisThread(uint32_t vcpu) = 0;
  // Called every few tens of milliseconds from the machine's control thread
  // (while vCPUs may all be parked): periodic work such as snapshots, and
  // recovery from a lost server. False once the server is gone for good.
  virtual bool keepAlive() = 0;

  // `canInject`: the vCPU can take an external interrupt right after this
  // exit (ready_for_interrupt_injection and IF=1); a backend may then
  // acknowledge the pending vector in the same call (ApicAccess::inject).
  virtual ApicAccess mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size, bool canInject) = 0;
  virtual ApicAccess mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value,
                               bool canInject) = 0;
  virtual ApicAccess msrRead(uint32_t vcpu, uint32_t msr, bool canInject) = 0;
  virtual ApicAccess msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value, bool canInject) = 0;
  // A read served without asking the server, from the vCPU's virtual-APIC
  // page mapped read-only (APIC-register virtualisation in software), or
  // nullptr when this register must be computed by the server or no page
  // is mapped. MMIO reads use the xAPIC layout, MSR reads the x2APIC one;
  // the caller checks the vCPU is in that mode.
  virtual kj::Maybe<uint64_t> mmioReadFromPage(uint32_t vcpu, uint64_t offset, uint8_t size) = 0;
  virtual kj::Maybe<uint64_t> msrReadFromPage(uint32_t vcpu, uint32_t msr) = 0;
  // The base of the server's I/O APIC's 4 KiB MMIO window, or nullptr when
  // the server has no I/O APIC for this VM. Guest accesses in the window
  // (that the vCPU's own xAPIC window does not claim) go to mmioRead and
  // mmioWrite with their guest-physical address; the server routes by it.
  virtual kj::Maybe<uint64_t> ioApicBase() const = 0;
  // A device drives the I/O APIC's input `pin` (< 24) to `level`, the
  // wire's electrical level. Called from any vCPU thread, serialised by
  // the caller, only when the level changes. Requires ioApicBase().
  virtual void setIrqLine(uint8_t pin, bool level) = 0;
  // Delivers to the sink, on this thread, the events the server queued for
  // this vCPU since the last call (a no-op for a backend whose events all
  // arrive by the sink's own thread).
  virtual void fetchEvents(uint32_t vcpu) = 0;
  virtual ApicAcknowledge acknowledge(uint32_t vcpu) = 0;
  // MOV to CR8 seen at an exit (kvm_run->cr8).
  virtual ApicInterruptState setCr8(uint32_t vcpu, uint8_t cr8) = 0;
  // The vCPU halted and nothing wakes it yet: wait until something may
  // have (the caller fetches events and looks again). A backend that knows
  // when the vCPU's timer expires sleeps only until shortly before and
  // then polls for the expiry, boundedly (halt polling ahead of the
  // timer, client/lib/wake_ahead.h); otherwise it just sleeps.
  virtual void waitWhileHalted(uint32_t vcpu, HaltWait& wait) = 0;
  // When the vCPU's LAPIC timer expires next, if the backend knows it
  // without asking the server and a fetchEvents() at that time collects the
  // expiry itself; nullptr otherwise. A running vCPU's thread kicks itself
  // out of KVM_RUN then (the in-kernel LAPIC's hrtimer does the same).
  virtual kj::Maybe<uint64_t> knownTimerDeadline(uint32_t vcpu) {
    (void)vcpu;
    return nullptr;
  }
  virtual kj::StringPtr name() const = 0;
};

}  // namespace vlapic::kvm
