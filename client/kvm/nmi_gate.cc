// SPDX-License-Identifier: MIT
#include "client/kvm/nmi_gate.h"

namespace vlapic::kvm {

NmiDecision NmiGate::beforeEntry(const KvmNmiState& kvm) {
  NmiDecision decision;
  bool inFlight = kvm.injected || kvm.pending;
  if (!inFlight) givenToKvm = false;
  if (inFlight) {
    if (kvm.masked) {
      // The handler runs and one NMI is latched behind it already: the
      // rest collapse into that one (SDM 6.7.1).
      stats.collapsed += held;
      held = 0;
    } else if (held > 1) {
      // One is about to be delivered; once it is, one more can latch.
      stats.collapsed += held - 1;
      held = 1;
    }
  } else if (held > 0) {
    decision.injectNow = true;
    givenToKvm = true;
    stats.injected++;
    held--;
    // Inside the handler the one given now is the latched one; otherwise
    // it is delivered at this entry and at most one more can latch.
    uint32_t keep = kvm.masked ? 0 : 1;
    if (held > keep) {
      stats.collapsed += held - keep;
      held = keep;
    }
    inFlight = true;
  }
  decision.needExitSoon = inFlight || held > 0;
  // An NMI KVM is about to deliver (not blocked) goes before any interrupt.
  decision.holdInterrupts = inFlight && !kvm.masked;
  return decision;
}

}  // namespace vlapic::kvm
