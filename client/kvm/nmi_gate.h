// SPDX-License-Identifier: MIT
// Exact NMI delivery for a front whose LAPIC lives outside KVM.
//
// The architecture (SDM Vol. 3A 6.7.1, "Handling Multiple NMIs"): while the
// processor handles an NMI, NMIs are blocked until the next IRET; one NMI
// that arrives meanwhile is latched and taken after that IRET, and any more
// collapse into it. So two NMIs sent together are taken twice, and any
// number sent while the handler runs are taken once more. NMIs are never
// taken in an STI or MOV SS shadow (KVM enforces that on injection).
//
// vlapicd counts the NMIs sent to a vCPU (server/vm, VcpuEvent::NMI.count)
// and cannot see whether the guest is in its handler; KVM can
// (KVM_GET_VCPU_EVENTS: nmi.injected, nmi.pending, nmi.masked). KVM itself
// holds at most one NMI being delivered plus one pending, so handing it
// several KVM_NMI calls at once loses some, and on our nested host a pending
// NMI is not injected at the IRET that unblocks it (no NMI-window exit)
// but at the next exit. This gate holds the NMIs the server reported and
// gives KVM one at a time, only once KVM shows the previous one taken.
// Pure logic: the caller does the ioctls.
#pragma once

#include <cstdint>

namespace vlapic::kvm {

// KVM's NMI state of one vCPU at an exit (struct kvm_vcpu_events.nmi).
struct KvmNmiState {
  bool injected = false;  // being delivered by the current entry
  bool pending = false;   // queued in KVM, not yet delivered
  bool masked = false;    // the guest is in its NMI handler (blocked until IRET)
};

struct NmiDecision {
  bool injectNow = false;  // call KVM_NMI once before this entry
  // An NMI is on its way into the guest or latched behind its handler: the
  // vCPU needs an exit soon after the handler's IRET so KVM injects it
  // there (kick at a short interval, as for an interrupt window).
  bool needExitSoon = false;
  // An external interrupt must not go in ahead of an NMI about to be
  // delivered (NMIs have priority over INTR, SDM 6.9).
  bool holdInterrupts = false;
};

class NmiGate {
public:
  // The server reported `count` more NMIs for this vCPU.
  void arrived(uint32_t count) {
    held = count > kMaxHeld - held ? kMaxHeld : held + count;
    stats.arrived += count;
  }
  // INIT discards a pending NMI (as KVM's vCPU reset does).
  void reset() { held = 0; }

  // Whether the caller must read KVM's NMI state before deciding: only
  // when an NMI is held or one given to KVM may still be in flight.
  bool needsKvmState() const { return held > 0 || givenToKvm; }

  // Before an entry, with KVM's state as of the last exit.
  NmiDecision beforeEntry(const KvmNmiState& kvm);

  uint32_t heldCount() const { return held; }

  struct Stats {
    uint64_t arrived = 0;
    uint64_t injected = 0;   // KVM_NMI calls
    uint64_t collapsed = 0;  // arrived while one was already latched behind the handler
  };
  const Stats& counters() const { return stats; }

private:
  static constexpr uint32_t kMaxHeld = 1u << 30;
  uint32_t held = 0;
  bool givenToKvm = false;  // an NMI went to KVM and may not be taken yet
  Stats stats;
};

}  // namespace vlapic::kvm
