// SPDX-License-Identifier: MIT
// One vCPU's local APIC: a pure state machine over the architectural 4 KiB
// virtual-APIC page (SDM Vol. 3A, APIC chapter). It does no I/O and knows no
// transport: guest accesses come in through one read/write path, and side
// effects it cannot handle alone (IPIs to route, EOIs to broadcast, timer
// deadlines to arm) come out in AccessResult or through the queries below.
#pragma once

#include "schema/model/types.h"
#include "timer.h"
#include "schema/model/registers.h"
#include "hal/hal.h"
#include <kj/array.h>
#include <kj/string.h>

namespace vlapic {

// Per-VM options that shape each LAPIC.
struct LapicConfig {
  uint8_t lvtEntries = 6;             // 6, or 7 with LVT CMCI
  bool x2apicSupported = true;        // CPUID.1:ECX.x2APIC; else EXTD is reserved (#GP)
  bool tscDeadlineSupported = true;   // CPUID.1:ECX.TSC_DEADLINE; else LVT Timer bit 18 reserved
  // Version bit 24: the guest may set SVR bit 12 to suppress EOI broadcasts.
  bool eoiBroadcastSuppression = false;
  // #GP on every reserved x2APIC bit (SDM, Xen) instead of KVM's masking.
  bool strictReservedBits = false;
  // KVM leaves the boot vCPU's LVT LINT0 as ExtINT (0x700) after reset/INIT,
  // as PC firmware does.
  bool bspLint0ExtInt = false;
  uint8_t maxPhysAddrBits = 46;       // IA32_APIC_BASE bits >= this are reserved
  TimerConfig timer;
};

enum class RunState : uint8_t {
  RUNNING,        // executing (or halted: halting is the front's business)
  WAIT_FOR_SIPI,  // an AP after INIT
};

// What a local interrupt source (LINT pin, LVT Thermal/PMC/CMCI, timer)
// turned into, per its LVT entry.
struct LocalInterrupt {
  enum class Kind : uint8_t {
    NONE,           // masked, edge not seen, level already latched, ...
    FIXED,          // `vector` was accepted into IRR
    NMI, SMI, INIT, EXTINT,  // an event for the vCPU (ExtINT: ask the PIC)
  };
  Kind kind = Kind::NONE;
  uint8_t vector = 0;
};

enum class LvtSource : uint8_t { THERMAL, PMC, CMCI };

struct LapicStats {
  uint64_t reads = 0, writes = 0;
  uint64_t gpFaults = 0, ignoredAccesses = 0;
  uint64_t accepted = 0, acknowledged = 0, eois = 0;
  uint64_t ipisSent = 0, timerExpiries = 0;
  uint64_t perRegisterAccesses[64] = {};  // indexed by Reg (offset >> 4)
};

// The state a vCPU's LAPIC is saved as: KVM's 1 KiB kvm_lapic_state layout,
// IA32_APIC_BASE, and a small versioned record of what the page does not hold
// (timer phase, TSC deadline, ESR accumulator, run state, LINT levels, ...).
struct LapicSnapshot {
  uint64_t apicBase = 0;
  kj::byte regs[1024] = {};        // kvm_lapic_state.regs
  bool x2apic32BitIds = true;      // KVM_X2APIC_API_USE_32BIT_IDS layout
  kj::Array<kj::byte> hidden;      // versioned hidden-state record
};

class Lapic {
public:
  Lapic(hal::Hal& hal, const GuestTsc& tsc, const LapicConfig& config,
        uint32_t initialApicId, bool bsp);
  ~Lapic() noexcept(false);
  KJ_DISALLOW_COPY(Lapic);  // kj 0.9: also disables moves

  // ---- Guest accesses: MMIO and MSR meet in one read/write path ----
  // gpa: guest-physical address; decoded against the current APIC base.
  AccessResult mmioRead(uint64_t gpa, uint8_t size);
  AccessResult mmioWrite(uint64_t gpa, uint8_t size, uint64_t value);
  // msr: 0x800-0x8FF, IA32_APIC_BASE (0x1B) or IA32_TSC_DEADLINE (0x6E0);
  // any other MSR is #GP.
  AccessResult msrRead(uint32_t msr);
  AccessResult msrWrite(uint32_t msr, uint64_t value);
  // Whether gpa falls in the 4 KiB window at the current base, and whether
  // the window decodes (xAPIC mode) at all.
  bool mmioWindowContains(uint64_t gpa) const;
  bool mmioDecoding() const;

  // ---- Identity and mode (for routing) ----
  ApicMode mode() const;
  uint64_t apicBase() const;
  bool isBsp() const;
  uint32_t apicId() const;          // xAPIC: ID[31:24]; x2APIC: 32-bit ID
  uint32_t initialApicId() const;
  uint32_t ldr() const;             // raw LDR register
  uint32_t dfr() const;             // raw DFR register
  bool hardwareEnabled() const;     // IA32_APIC_BASE.EN
  bool softwareEnabled() const;     // SVR bit 8
  // Changes whenever apicId(), ldr(), dfr() or mode() change, so the per-VM
  // destination map knows when to rebuild.
  uint64_t routingGeneration() const;

  // ---- Interrupts (SDM "Interrupt Acceptance for Fixed Interrupts") ----
  // Accept a fixed or lowest-priority interrupt. Illegal vectors (0-15) set
  // ESR bit 6 and are discarded; a software-disabled APIC discards fixed
  // interrupts, a hardware-disabled one everything. Level-triggered sets the
  // vector's TMR bit, edge clears it. Returns whether the vector is now in
  // IRR.
  bool acceptInterrupt(uint8_t vector, TriggerMode trigger);
  // The vector the front should inject next: the highest IRR vector whose
  // priority class beats PPR, or nullptr.
  kj::Maybe<uint8_t> pendingVector() const;
  // The front injects: move pendingVector() from IRR to ISR, update PPR and
  // return it; nullptr if nothing is deliverable any more.
  kj::Maybe<uint8_t> acknowledge();
  uint8_t tpr() const;
  uint8_t ppr() const;
  uint8_t cr8() const;              // TPR[7:4]
  void setCr8(uint8_t cr8);         // MOV to CR8: TPR = (cr8 & 0xF) << 4

  // ---- Local interrupt sources (LVT) ----
  // A LINT pin changed level (pin 0 or 1). Edge-triggered entries fire on a
  // rising edge; level-triggered fixed entries latch remote IRR until EOI
  // (and deliver again then if the pin is still asserted); ExtINT reports
  // EXTINT whenever the pin is asserted (always level-sensitive). `level` is
  // "asserted": the polarity bit is stored but, as in KVM, the front's device
  // model has already resolved the wiring. With the APIC hardware-disabled
  // the pins act as INTR (LINT0 -> EXTINT) and NMI (LINT1 -> NMI) (SDM
  // 11.4.3).
  LocalInterrupt setLint(unsigned pin, bool level);
  LocalInterrupt signalLvt(LvtSource source);
  // Current pin levels, for save/restore and dumps.
  bool lintLevel(unsigned pin) const;

  // ---- INIT, SIPI, RESET (SDM "MP Initialization Protocol") ----
  void reset();        // power-on RESET: IA32_APIC_BASE back to default too
  // INIT: registers to their INIT state keeping the APIC ID and APIC base;
  // an AP then waits for SIPI, the BSP stays running.
  void init();
  RunState runState() const;
  // A SIPI: if the vCPU waits for one, it runs and the vector is returned
  // (start at CS = vector << 8, IP = 0); otherwise it is dropped (nullptr).
  kj::Maybe<uint8_t> startup(uint8_t vector);

  // ---- Timer ----
  // Host-ns deadline at which the server must call onTimer(), or nullptr.
  kj::Maybe<uint64_t> timerDeadlineNs() const;
  // Process any expiry due by the clock's now. Returns the number of
  // expiries (coalesced into at most one interrupt); the vector is accepted
  // into IRR unless LVT Timer is masked.
  uint32_t onTimer();
  const ApicTimer& timer() const;

  // ---- Save / restore ----
  LapicSnapshot save() const;  // 32-bit x2APIC IDs (KVM_X2APIC_API_USE_32BIT_IDS)
  // The same with the ID layout chosen: without 32-bit IDs an x2APIC-mode
  // image carries the ID in bits 31:24, as KVM's legacy format does.
  LapicSnapshot save(bool x2apic32BitIds) const;
  // Validates everything first: on error returns the reason and leaves the
  // vCPU unchanged.
  kj::Maybe<kj::String> restore(const LapicSnapshot& snapshot);

  // ---- The page and accounting ----
  // The architectural virtual-APIC page: always exactly what a guest (or an
  // APIC-virtualising CPU) would read at each offset.
  const hal::Page& page() const;
  const LapicStats& stats() const;
  // Raw page value, no side effects. TIMER_CURRENT_COUNT is computed at read
  // time and reads 0 in the page (use timer().currentCount()).
  uint32_t readRegister(Reg reg) const;

private:
  // Implementation state: owned by lapic.cc's author.
  struct Impl;
  kj::Own<Impl> impl;
};

}  // namespace vlapic
