// SPDX-License-Identifier: MIT
// A VM: the set of vCPUs whose local APICs talk to each other and to the
// outside (SDM Vol. 3A, APIC chapter: "Issuing Interprocessor Interrupts",
// "Message Signalled Interrupts", "Local Vector Table", "MP Initialization").
//
// Vm owns one Lapic per vCPU and the VM's GuestTsc. It wraps every per-vCPU
// operation of the core and turns the side effects the core cannot handle
// alone (IPIs, EOI broadcasts, LINT pins, INIT/SIPI, timer expiries) into
// routing and into per-vCPU events the front acts on.
//
// Pure: no I/O, no threads, no capnp types. Not thread-safe: one Vm lives on
// one thread (the server's event loop). The transport learns about new events
// and moved timer deadlines through VmEventListener, without polling.
#pragma once

#include "server/core/lapic.h"
#include "server/core/timer.h"
#include "server/ioapic/ioapic.h"
#include "schema/model/types.h"
#include "hal/hal.h"
#include <kj/array.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>
#include <cstdint>

namespace vlapic {

// How one target is picked for a lowest-priority message among the matching
// hardware- and software-enabled LAPICs. The SDM leaves the choice
// model-specific ("Lowest Priority Delivery Mode"); see server/vm/README.md.
enum class LowestPriorityPolicy : uint8_t {
  // Default: lowest PPR wins; ties are broken by a fair rotation (the first
  // tied candidate after the VM's previous lowest-priority winner, in vCPU
  // index order, wrapping). Deterministic.
  PRIORITY_THEN_ROTATION,
  // Ignore PPR: plain round robin over the candidates, as above.
  ROTATION,
  // Linux KVM's choice: the (vector mod candidates)-th candidate in vCPU
  // index order; ignores PPR.
  VECTOR_HASH,
};

// Most vCPUs a VM may have (the protocol's limit, schema/model/types.h).
constexpr uint32_t kMaxVcpus = kMaxVcpusPerVm;

struct VmConfig {
  uint32_t vcpuCount = 1;
  // The initial APIC ID of each vCPU (x2APIC: the 32-bit ID; xAPIC mode uses
  // its low 8 bits as ID[31:24]). Empty: vCPU i gets ID i. Otherwise exactly
  // vcpuCount distinct IDs, none 0xFFFFFFFF (the x2APIC broadcast); without
  // x2APIC support every ID must be below 0xFF (the xAPIC broadcast).
  kj::Array<uint32_t> apicIds;
  // The boot vCPU: its IA32_APIC_BASE has the BSP bit, and INIT leaves it
  // running instead of waiting for SIPI.
  uint32_t bootVcpu = 0;
  LapicConfig lapic;
  // Guest TSC frequency and its initial offset (GuestTsc: tsc = ns * hz / 1e9
  // + offset).
  uint64_t tscHz = 2'000'000'000;
  int64_t tscOffset = 0;
  LowestPriorityPolicy lowestPriority = LowestPriorityPolicy::PRIORITY_THEN_ROTATION;
  // Use the per-VM destination map (O(1) physical and x2APIC-cluster
  // lookups). false: resolve every destination by scanning all vCPUs; only
  // useful to compare the two in tests and benchmarks.
  bool destinationMap = true;
  // KVM's x2APIC broadcast quirk: whether an MSI or I/O APIC destination of
  // 0xFF (extended ID bits 0) broadcasts to x2APIC-mode LAPICs too. KVM has
  // it on unless the VMM enables KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK,
  // which QEMU does together with 32-bit IDs and which a guest with more
  // than 255 vCPUs needs: then 0xFF names x2APIC ID 255 (Linux's encoding
  // of it with the virtual extended destination ID). Off by default, as a
  // VMM that uses 32-bit IDs (our default layout) runs KVM.
  bool x2apicBroadcastQuirk = false;
  // The VM's I/O APIC (server/ioapic): on by default at 0xFEC00000, as on a
  // PC. Its MMIO window is served by mmioRead/mmioWrite, its pins by
  // setIrqLine, its EOIs come from the LAPICs' EOI broadcasts. present =
  // false leaves the I/O APIC to the front (deliverIoApic, EOI events).
  IoApicConfig ioapic;
};

// Why a VmConfig is unusable, or nullptr if it is fine. Vm's constructor
// requires a valid config; a transport calls this first to reply with the
// reason.
kj::Maybe<kj::String> validateVmConfig(const VmConfig& config);

// Something the front must act on for one vCPU, in order per vCPU.
struct VcpuEvent {
  enum class Kind : uint8_t {
    // State, not a message: `vector` is what acknowledge() will return now
    // (request an interrupt window, then acknowledge and inject). Only the
    // latest is queued; it is withdrawn from the queue when nothing is
    // deliverable any more.
    VECTOR_DELIVERABLE,
    // `count` NMIs arrived (merged into one entry, never dropped: the front
    // injects them one at a time and knows when the guest can latch one).
    NMI,
    SMI,       // enter SMM (one pending SMI latched: coalesced)
    // INIT: the LAPIC has been reset already (keeping ID and base); reset
    // the vCPU's registers. An AP then waits for SIPI, the boot vCPU runs
    // from the reset vector. Supersedes queued INIT, SIPI, NMI and SMI
    // events (the reset discards a pending NMI/SMI, as KVM's does).
    INIT,
    SIPI,      // start the waiting AP at CS = vector << 8, IP = 0
    EXTINT,    // the legacy PIC has an interrupt: run its acknowledge cycle
    EOI,       // level-triggered `vector` EOIed: for the I/O APIC (remote IRR)
    TIMER_EXPIRED,  // `count` timer expiries (its vector, if any, is in IRR)
  };
  Kind kind = Kind::VECTOR_DELIVERABLE;
  uint8_t vector = 0;  // VECTOR_DELIVERABLE, SIPI, EOI
  // TIMER_EXPIRED: expiries merged into this event. NMI: NMIs merged into
  // this event. EOI: EOIs of `vector`
  // merged into this event (see server/vm/README.md for why that is exact).
  // 1 for every other kind.
  uint32_t count = 1;

  bool operator==(const VcpuEvent& other) const = default;
};

kj::StringPtr vcpuEventKindName(VcpuEvent::Kind kind);

// The most events one vCPU's queue can hold: one each of VECTOR_DELIVERABLE,
// NMI, SMI, INIT, SIPI, EXTINT, TIMER_EXPIRED, and one EOI per vector.
constexpr uint32_t kMaxQueuedEventsPerVcpu = 7 + 256;

// Implemented by the transport. Called synchronously from inside the Vm
// operation that caused it: schedule work, do not call back into mutating Vm
// operations (takeEvents() and the const queries are fine).
class VmEventListener {
public:
  virtual ~VmEventListener() noexcept(false) = default;
  // vcpu's event queue went from empty to non-empty.
  virtual void eventsPending(uint32_t vcpu) = 0;
  // vcpu's timerDeadlineNs() changed (armed, moved or disarmed).
  virtual void timerChanged(uint32_t vcpu) = 0;
};

// What became of one interrupt message delivered into the VM.
enum class DeliveryStatus : uint8_t {
  DELIVERED,        // reached targetCount (>= 1) vCPUs
  NO_TARGET,        // no enabled LAPIC matched the destination
  DROPPED,          // architecturally discarded: level-triggered with level
                    // de-asserted (incl. INIT de-assert), a masked I/O APIC
                    // entry, a reserved delivery mode. (An illegal vector
                    // 0-15 is DELIVERED: each receiver sets ESR bit 6.)
  NOT_AN_INTERRUPT, // MSI address outside 0xFEExxxxx, or a shorthand on a
                    // message that has no sender
};

kj::StringPtr deliveryStatusName(DeliveryStatus status);

struct DeliveryResult {
  DeliveryStatus status = DeliveryStatus::NO_TARGET;
  uint32_t targetCount = 0;
};

// Architectural MSI decoding (SDM "Message Signalled Interrupts"), exposed for
// the transport and tests. Address: 31:20 = 0xFEE, 19:12 destination ID,
// 11:5 extended destination ID (destination bits 14:8, as Linux and KVM use
// it without interrupt remapping), 3 redirection hint, 2 destination mode.
// Data: 7:0 vector, 10:8 delivery mode, 14 level, 15 trigger mode.
struct DecodedMsi {
  InterruptMessage message;   // xAPIC-format, destination up to 15 bits
  bool redirectionHint = false;  // RH: arbitrate lowest priority among targets
};
kj::Maybe<DecodedMsi> decodeMsi(uint64_t address, uint32_t data);

// decodeRedirectionEntry (I/O APIC entries) is in server/ioapic/ioapic.h.

struct VmStats {
  uint64_t ipisRouted = 0;        // ICR messages routed to other vCPUs
  uint64_t externalMessages = 0;  // MSIs, I/O APIC entries, deliverMessage()
  uint64_t messagesDropped = 0;   // DeliveryStatus::DROPPED
  uint64_t messagesWithoutTarget = 0;
  uint64_t lowestPriorityArbitrations = 0;
  uint64_t destinationMapRebuilds = 0;
  uint64_t destinationScans = 0;  // lookups that had to scan every vCPU
  uint64_t eventsQueued = 0;
  uint64_t eventsCoalesced = 0;   // merged into or replacing a queued event
  // LAPIC timer expiries queued as TIMER_EXPIRED, from onTimer() and from
  // accesses or restores that collected one.
  uint64_t timerExpiries = 0;
  uint64_t ioapicMessages = 0;    // messages the VM's own I/O APIC sent
};

// A whole VM's state: every vCPU's LAPIC, the guest TSC, the events the front
// has not taken yet, and the lowest-priority rotation.
struct VmSnapshot {
  int64_t tscOffset = 0;       // GuestTsc offset at save time
  uint64_t tscAtSave = 0;      // guest TSC value at save time
  uint32_t lowestPriorityCursor = 0;
  kj::Array<LapicSnapshot> vcpus;
  kj::Array<kj::Array<VcpuEvent>> queuedEvents;  // per vCPU, in queue order
  // The VM's I/O APIC; nullptr for a VM without one, and in snapshots saved
  // before vlapicd had one (restoring those leaves the I/O APIC as it is).
  kj::Maybe<IoApicState> ioapic;
};

// How restoreVm() sets the guest TSC.
enum class TscRestore : uint8_t {
  KEEP_OFFSET,       // same host clock (a restarted server): the saved offset
  RESUME_AT_SAVED,   // another host or a paused VM: the TSC continues from
                     // tscAtSave, as if no time had passed
};

class Vm {
public:
  // Requires validateVmConfig(config) == nullptr.
  Vm(hal::Hal& hal, const VmConfig& config);
  ~Vm() noexcept(false);
  KJ_DISALLOW_COPY(Vm);

  void setListener(kj::Maybe<VmEventListener&> listener);

  // ---- Identity ----
  uint32_t vcpuCount() const;
  uint32_t bootVcpu() const;
  uint32_t initialApicId(uint32_t vcpu) const;
  // The vCPU configured with this initial APIC ID, or nullptr.
  kj::Maybe<uint32_t> vcpuWithInitialApicId(uint32_t apicId) const;
  const Lapic& lapic(uint32_t vcpu) const;  // queries: page, stats, state
  const GuestTsc& tsc() const;
  GuestTsc& tsc();
  const VmStats& stats() const;
  bool hasIoApic() const;
  const IoApic& ioapic() const;  // requires hasIoApic()

  // ---- Per-vCPU guest accesses (wrap Lapic's; the side effects in the
  // returned AccessResult have already been routed and turned into events) --
  // MMIO in the I/O APIC's window goes to the I/O APIC, unless the vCPU's
  // own LAPIC decodes the address (the LAPIC wins, as in KVM).
  AccessResult mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size);
  AccessResult mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value);
  AccessResult msrRead(uint32_t vcpu, uint32_t msr);
  AccessResult msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value);

  // The front injects: the vector to inject now (IRR -> ISR), or nullptr.
  kj::Maybe<uint8_t> acknowledge(uint32_t vcpu);
  kj::Maybe<uint8_t> pendingVector(uint32_t vcpu) const;
  void setCr8(uint32_t vcpu, uint8_t cr8);
  RunState runState(uint32_t vcpu) const;

  // ---- Timer ----
  kj::Maybe<uint64_t> timerDeadlineNs(uint32_t vcpu) const;
  // Process expiries due by now; returns how many (also queued as
  // TIMER_EXPIRED when non-zero).
  uint32_t onTimer(uint32_t vcpu);

  // ---- Interrupt messages into the VM ----
  // An MSI write (address, data) from a device.
  DeliveryResult deliverMsi(uint64_t address, uint32_t data);
  // The I/O APIC sends the message of this redirection entry.
  DeliveryResult deliverIoApic(uint64_t redirectionEntry);
  // The VM's I/O APIC's input pin `pin` (< kIoApicPins) is driven to
  // `level` (the wire's electrical level; see IoApic::setPinLevel).
  // Requires hasIoApic().
  void setIrqLine(uint32_t pin, bool level);
  // Any message without a sending vCPU (shorthands are NOT_AN_INTERRUPT).
  DeliveryResult deliverMessage(const InterruptMessage& message);
  // Routes `message` as an IPI from vcpu (sourceVcpu is set from `vcpu`):
  // shorthands allowed. No sender-side checks: an ICR write goes through
  // mmioWrite/msrWrite, where the core sets "send illegal vector" and sends
  // nothing for vectors 0-15; here receivers of such a vector set "receive
  // illegal vector". Used by tests and by fronts that model ICR themselves.
  DeliveryResult sendIpi(uint32_t vcpu, const InterruptMessage& message);

  // ---- Local interrupt pins and LVT sources ----
  // LINT0/LINT1 of one vCPU changed level. While the LAPIC is hardware-
  // disabled the pins act as INTR (ExtINT) and NMI (SDM "Local APIC
  // State After It Has Been Disabled").
  void setLint(uint32_t vcpu, unsigned pin, bool level);
  // The virtual-wire PIC: its INTR (or NMI line) drives this pin on every
  // vCPU, as on a PC; each LVT decides what it means.
  void setLintAll(unsigned pin, bool level);
  void signalLvt(uint32_t vcpu, LvtSource source);

  // ---- INIT / SIPI / RESET (also reachable through IPIs) ----
  void init(uint32_t vcpu);           // as an INIT message to this vCPU
  void startup(uint32_t vcpu, uint8_t vector);  // as a SIPI to this vCPU
  void reset(uint32_t vcpu);          // power-on RESET of one LAPIC

  // ---- Events ----
  bool hasEvents(uint32_t vcpu) const;
  kj::ArrayPtr<const VcpuEvent> peekEvents(uint32_t vcpu) const;
  // Drain vcpu's queue, oldest first.
  kj::Vector<VcpuEvent> takeEvents(uint32_t vcpu);

  // ---- Save / restore ----
  // x2apic32BitIds = false writes KVM's legacy x2APIC ID layout.
  LapicSnapshot saveVcpu(uint32_t vcpu, bool x2apic32BitIds = true) const;
  // On error returns the reason and leaves the vCPU unchanged.
  kj::Maybe<kj::String> restoreVcpu(uint32_t vcpu, const LapicSnapshot& snapshot);
  VmSnapshot saveVm(bool x2apic32BitIds = true) const;
  // All or nothing: on error returns the reason and leaves the VM unchanged.
  kj::Maybe<kj::String> restoreVm(const VmSnapshot& snapshot,
                                  TscRestore tscRestore = TscRestore::KEEP_OFFSET);

  // ---- Introspection (tests, benchmarks, dumps) ----
  // The vCPUs a message would reach, before lowest-priority arbitration, in
  // vCPU index order. `source` is the sender for IPIs (shorthands).
  kj::Array<uint32_t> resolveDestination(const InterruptMessage& message,
                                         kj::Maybe<uint32_t> source) const;

private:
  struct Impl;
  kj::Own<Impl> impl;
};

}  // namespace vlapic
