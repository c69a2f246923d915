// SPDX-License-Identifier: MIT
// Value types shared by every layer: the core (per-vCPU state machine), the
// per-VM delivery layer, the transport, and the fronts through the client
// library (part of the register model, schema/model). No capnp types, no I/O.
#pragma once

#include <kj/common.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic {

// The most vCPUs one VM may have, a limit of the protocol: vlapicd refuses
// more, and the client library refuses them before it sizes anything per
// vCPU.
constexpr uint32_t kMaxVcpusPerVm = 4096;

// IA32_APIC_BASE states (SDM "Local APIC State After It Has Been Disabled",
// "x2APIC State Transitions").
enum class ApicMode : uint8_t { DISABLED, XAPIC, X2APIC };

// ICR / LVT / MSI delivery mode field, bits 10:8.
enum class DeliveryMode : uint8_t {
  FIXED = 0,
  LOWEST_PRIORITY = 1,
  SMI = 2,
  RESERVED_3 = 3,
  NMI = 4,
  INIT = 5,
  STARTUP = 6,
  EXTINT = 7,
};

// ICR bits 19:18.
enum class Shorthand : uint8_t {
  NONE = 0,
  SELF = 1,
  ALL_INCLUDING_SELF = 2,
  ALL_EXCLUDING_SELF = 3,
};

enum class TriggerMode : uint8_t { EDGE = 0, LEVEL = 1 };

// LVT Timer bits 18:17. RESERVED (11b): an initial count is kept but the
// timer never starts counting in it, as KVM's (a count already running when
// the mode is set runs out as one-shot).
enum class TimerMode : uint8_t { ONE_SHOT = 0, PERIODIC = 1, TSC_DEADLINE = 2, RESERVED = 3 };

// An interrupt message on the virtual APIC bus: an IPI decoded from an ICR
// write, an MSI, or an I/O APIC redirection entry. The per-VM layer routes it.
struct InterruptMessage {
  uint8_t vector = 0;
  DeliveryMode deliveryMode = DeliveryMode::FIXED;
  bool logicalDestination = false;  // ICR bit 11
  Shorthand shorthand = Shorthand::NONE;
  // xAPIC-format messages carry an 8-bit destination (broadcast 0xFF);
  // x2APIC-format ones a 32-bit destination (broadcast 0xFFFFFFFF).
  uint32_t destination = 0;
  bool x2apicFormat = false;
  bool levelAssert = true;  // ICR bit 14
  TriggerMode trigger = TriggerMode::EDGE;
  // For IPIs: the index of the sending vCPU within its VM (shorthands need
  // it); the core leaves it 0 and the per-VM layer fills it in.
  uint32_t sourceVcpu = 0;
};

// What a guest access turned into. A guest's bad access is a result the front
// acts on, never an exception.
enum class AccessStatus : uint8_t {
  OK,       // value holds what a read returns; a write took effect
  GP,       // inject #GP into the guest (MSR accesses only)
  IGNORED,  // no fault: a read returns `value`, a write was dropped
};

enum class AccessReason : uint8_t {
  NONE,
  RESERVED_REGISTER,      // offset or MSR names no register
  READ_ONLY_REGISTER,     // write to a read-only register
  WRITE_ONLY_REGISTER,    // read of a write-only register
  NOT_IN_MODE,            // register absent in the current mode (e.g. DFR in x2APIC)
  BAD_SIZE_OR_ALIGNMENT,  // MMIO access that is not an accepted size/alignment
  NOT_DECODING,           // MMIO while the APIC is disabled or in x2APIC mode
  OUTSIDE_WINDOW,         // MMIO address outside [base, base + 4 KiB)
  RESERVED_BITS,          // reserved bits set (#GP, or masked and reported)
  ILLEGAL_TRANSITION,     // IA32_APIC_BASE transition the SDM forbids
  APIC_DISABLED,          // x2APIC MSR while the APIC is not in x2APIC mode
  NON_ZERO_WRITE,         // x2APIC EOI/ESR written with a non-zero value
  TIMER_MODE,             // TSC-deadline MSR outside TSC-deadline mode, or
                          // initial count in TSC-deadline mode
};

kj::StringPtr accessReasonName(AccessReason reason);

struct AccessResult {
  AccessStatus status = AccessStatus::OK;
  AccessReason reason = AccessReason::NONE;
  uint64_t value = 0;

  // Side effects the caller must act on.
  // An ICR write whose message the per-VM layer must route. A fixed IPI to
  // SELF (shorthand or x2APIC SELF IPI) is delivered locally by the core and
  // does not appear here; everything else (including "all including self")
  // does.
  kj::Maybe<InterruptMessage> ipi;
  // EOI of a level-triggered vector to broadcast to I/O APICs (not produced
  // when SVR bit 12 suppresses it).
  kj::Maybe<uint8_t> eoiBroadcast;
  // The timer's deadline may have moved: re-read Lapic::timerDeadlineNs().
  bool timerChanged = false;

  static AccessResult ok(uint64_t value = 0) {
    AccessResult r;
    r.value = value;
    return r;
  }
  static AccessResult gp(AccessReason reason) {
    AccessResult r;
    r.status = AccessStatus::GP;
    r.reason = reason;
    return r;
  }
  static AccessResult ignored(AccessReason reason, uint64_t value = 0) {
    AccessResult r;
    r.status = AccessStatus::IGNORED;
    r.reason = reason;
    r.value = value;
    return r;
  }
};

// MSR numbers the core answers besides 0x800-0x8FF.
constexpr uint32_t kMsrApicBase = 0x1B;
constexpr uint32_t kMsrTscDeadline = 0x6E0;
constexpr uint32_t kMsrX2apicFirst = 0x800;
constexpr uint32_t kMsrX2apicLast = 0x8FF;

constexpr uint64_t kDefaultApicBase = 0xFEE00000;
constexpr uint64_t kApicBaseBsp = 1u << 8;
constexpr uint64_t kApicBaseExtd = 1u << 10;
constexpr uint64_t kApicBaseEnable = 1u << 11;

}  // namespace vlapic
