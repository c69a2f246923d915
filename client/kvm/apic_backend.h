// The front's view of the LAPIC it does not own: every guest APIC access and
// every interrupt acknowledge goes through this interface, and the LAPIC
// tells the front what each vCPU must act on through ApicEventSink. The one
// implementation talks to vlapicd (vlapicd_backend.h); the interface exists so
// the KVM plumbing does not depend on the transport.
#pragma once

#include <kj/common.h>
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
  virtual void nmi(uint32_t vcpu) = 0;
  virtual void init(uint32_t vcpu) = 0;
  virtual void startup(uint32_t vcpu, uint8_t vector) = 0;
  // SMI, ExtINT, EOI broadcasts: nothing in this front consumes them (no
  // SMM, no legacy PIC, no I/O APIC); the sink counts them.
  virtual void unhandledEvent(uint32_t vcpu, kj::StringPtr what) = 0;
  // The LAPIC server went away: no vCPU can continue.
  virtual void backendLost(kj::StringPtr why) = 0;
};

// Synchronous per-vCPU calls, made from that vCPU's thread.
class ApicBackend {
public:
  virtual ~ApicBackend() noexcept(false) = default;

  // Called on a vCPU's thread before its first call / after its last one
  // (a backend may bind per-thread connections to the thread).
  virtual void openOnThisThread(uint32_t vcpu) = 0;
  virtual void closeOnThisThread(uint32_t vcpu) = 0;
  // False once the server is gone (polled while vCPUs may all be parked).
  virtual bool connected() const = 0;

  virtual ApicAccess mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size) = 0;
  virtual ApicAccess mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value) = 0;
  virtual ApicAccess msrRead(uint32_t vcpu, uint32_t msr) = 0;
  virtual ApicAccess msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value) = 0;
  virtual ApicAcknowledge acknowledge(uint32_t vcpu) = 0;
  // MOV to CR8 seen at an exit (kvm_run->cr8).
  virtual ApicInterruptState setCr8(uint32_t vcpu, uint8_t cr8) = 0;
  virtual kj::StringPtr name() const = 0;
};

}  // namespace vlapic::kvm
