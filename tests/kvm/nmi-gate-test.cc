// SPDX-License-Identifier: MIT
// The front's NMI gate (client/kvm/nmi_gate.h) against the architecture's
// rules for multiple NMIs (SDM Vol. 3A 6.7.1), with KVM's NMI state as the
// exits would report it: no KVM needed.
#include "client/kvm/nmi_gate.h"

#include <catch2/catch.hpp>

namespace vlapic::kvm {
namespace {

KvmNmiState idle() { return {}; }
KvmNmiState pendingIn(bool masked) {
  KvmNmiState s;
  s.pending = true;
  s.masked = masked;
  return s;
}
KvmNmiState inHandler() {
  KvmNmiState s;
  s.masked = true;
  return s;
}

TEST_CASE("NMI gate: nothing held, nothing to do", "[nmi]") {
  NmiGate gate;
  CHECK_FALSE(gate.needsKvmState());
  auto d = gate.beforeEntry(idle());
  CHECK_FALSE(d.injectNow);
  CHECK_FALSE(d.needExitSoon);
  CHECK_FALSE(d.holdInterrupts);
}

TEST_CASE("NMI gate: two NMIs sent together are taken exactly twice, one KVM_NMI per entry "
          "(SDM 6.7.1: one handled, one latched)",
          "[nmi]") {
  NmiGate gate;
  gate.arrived(2);
  REQUIRE(gate.needsKvmState());
  auto first = gate.beforeEntry(idle());
  CHECK(first.injectNow);
  CHECK(first.holdInterrupts);  // the NMI goes before any interrupt
  CHECK(first.needExitSoon);
  // The next exit: KVM has not delivered it yet (still pending): wait.
  auto waiting = gate.beforeEntry(pendingIn(false));
  CHECK_FALSE(waiting.injectNow);
  CHECK(gate.heldCount() == 1);
  // Delivered: the handler runs (masked); the second is given to KVM to latch.
  auto second = gate.beforeEntry(inHandler());
  CHECK(second.injectNow);
  CHECK(second.needExitSoon);          // KVM injects it at an exit after the IRET
  CHECK_FALSE(second.holdInterrupts);  // blocked NMIs do not hold interrupts
  // Taken after the IRET: nothing left.
  auto done = gate.beforeEntry(inHandler());
  CHECK_FALSE(done.injectNow);
  auto after = gate.beforeEntry(idle());
  CHECK_FALSE(after.injectNow);
  CHECK_FALSE(after.needExitSoon);
  CHECK(gate.counters().injected == 2);
  CHECK(gate.counters().collapsed == 0);
}

TEST_CASE("NMI gate: NMIs sent while the handler runs collapse into one pending NMI (SDM 6.7.1)",
          "[nmi]") {
  NmiGate gate;
  gate.arrived(1);
  CHECK(gate.beforeEntry(idle()).injectNow);
  // In the handler: five more arrive over several exits.
  gate.arrived(3);
  CHECK(gate.beforeEntry(inHandler()).injectNow);  // the latched one
  gate.arrived(2);
  auto d = gate.beforeEntry(pendingIn(true));      // latch full: collapse
  CHECK_FALSE(d.injectNow);
  CHECK(gate.heldCount() == 0);
  // After the IRET KVM delivered the latched one; the guest is in its
  // handler again; nothing more is owed.
  CHECK_FALSE(gate.beforeEntry(inHandler()).injectNow);
  CHECK_FALSE(gate.beforeEntry(idle()).injectNow);
  CHECK(gate.counters().injected == 2);
  CHECK(gate.counters().collapsed == 4);
}

TEST_CASE("NMI gate: many NMIs at once outside the handler become two (one taken, one latched)",
          "[nmi]") {
  NmiGate gate;
  gate.arrived(7);
  CHECK(gate.beforeEntry(idle()).injectNow);
  CHECK(gate.heldCount() == 1);
  CHECK(gate.beforeEntry(inHandler()).injectNow);
  CHECK(gate.heldCount() == 0);
  CHECK(gate.counters().injected == 2);
  CHECK(gate.counters().collapsed == 5);
}

TEST_CASE("NMI gate: never two KVM_NMI calls while one is still in flight", "[nmi]") {
  NmiGate gate;
  gate.arrived(2);
  CHECK(gate.beforeEntry(idle()).injectNow);
  KvmNmiState injected;
  injected.injected = true;
  for (int i = 0; i < 5; i++) CHECK_FALSE(gate.beforeEntry(injected).injectNow);
  CHECK(gate.heldCount() == 1);
}

TEST_CASE("NMI gate: INIT discards held NMIs (KVM's vCPU reset)", "[nmi]") {
  NmiGate gate;
  gate.arrived(3);
  gate.reset();
  CHECK_FALSE(gate.beforeEntry(idle()).injectNow);
}

}  // namespace
}  // namespace vlapic::kvm
