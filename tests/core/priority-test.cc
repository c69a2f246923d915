// SPDX-License-Identifier: MIT
// Priorities, acceptance, acknowledge and EOI (SDM Vol. 3A 11.8.3
// "Interrupt Handling", 11.8.3.1 "Task and Processor Priorities", 11.8.4
// "Interrupt Acceptance for Fixed Interrupts", 11.8.5 "Signaling Interrupt
// Servicing Completion", 11.8.6 "Task Priority in IA-32e Mode", 11.4.7.2
// "Local APIC State After It Has Been Software Disabled").
#include "fixture.h"

namespace vlapic::test {
namespace {

TEST_CASE("SDM 11.8.3.1: PPR is TPR or the in-service class, whichever is higher") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::TPR, 0x35);
  CHECK(mmioRead(*lapic, Reg::PPR) == 0x35);
  REQUIRE(lapic->acceptInterrupt(0x41, TriggerMode::EDGE));
  CHECK(maybeVector(lapic->acknowledge()) == 0x41);
  CHECK(mmioRead(*lapic, Reg::PPR) == 0x40);  // ISRV class wins, subclass 0
  mmioWrite(*lapic, Reg::TPR, 0x45);
  CHECK(mmioRead(*lapic, Reg::PPR) == 0x45);  // equal class: TPR (with subclass)
  mmioWrite(*lapic, Reg::TPR, 0x4F);
  CHECK(lapic->ppr() == 0x4F);
  mmioWrite(*lapic, Reg::EOI, 0);
  mmioWrite(*lapic, Reg::TPR, 0);
  CHECK(lapic->ppr() == 0);
}

TEST_CASE("SDM 11.8.6.1: CR8 is TPR[7:4] both ways") {
  Env env;
  auto lapic = enabledLapic(env);
  lapic->setCr8(0x5);
  CHECK(mmioRead(*lapic, Reg::TPR) == 0x50);
  CHECK(lapic->ppr() == 0x50);
  lapic->setCr8(0x1F);  // only CR8[3:0] exists
  CHECK(lapic->tpr() == 0xF0);
  mmioWrite(*lapic, Reg::TPR, 0x7C);
  CHECK(lapic->cr8() == 0x7);
}

TEST_CASE("SDM 11.8.3.1: a vector is deliverable only when its class is above PPR's") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::TPR, 0x40);
  lapic->acceptInterrupt(0x45, TriggerMode::EDGE);
  CHECK(lapic->pendingVector() == nullptr);  // same class: blocked
  CHECK(lapic->acknowledge() == nullptr);
  CHECK(inIrr(*lapic, 0x45));
  lapic->setCr8(0x3);
  CHECK(maybeVector(lapic->pendingVector()) == 0x45);
  lapic->acceptInterrupt(0x46, TriggerMode::EDGE);
  CHECK(maybeVector(lapic->pendingVector()) == 0x46);  // highest IRR bit first
}

TEST_CASE("SDM 11.8.4: acceptance sets IRR, TMR records the trigger mode") {
  Env env;
  auto lapic = enabledLapic(env);
  CHECK(lapic->acceptInterrupt(0x80, TriggerMode::LEVEL));
  CHECK(inIrr(*lapic, 0x80));
  CHECK(inTmr(*lapic, 0x80));
  CHECK(mmioRead(*lapic, Reg(uint16_t(Reg::IRR0) + 4)) == 1u);
  CHECK(mmioRead(*lapic, Reg(uint16_t(Reg::TMR0) + 4)) == 1u);
  lapic->acknowledge();
  mmioWrite(*lapic, Reg::EOI, 0);
  CHECK(lapic->acceptInterrupt(0x80, TriggerMode::EDGE));
  CHECK(!inTmr(*lapic, 0x80));
  // Accepting a vector already pending keeps one IRR bit (interrupts merge).
  CHECK(lapic->acceptInterrupt(0x80, TriggerMode::EDGE));
  CHECK(maybeVector(lapic->acknowledge()) == 0x80);
  CHECK(lapic->acknowledge() == nullptr);
  CHECK(lapic->stats().accepted == 3);
}

TEST_CASE("SDM 11.8.3/11.8.5: nested vectors are acknowledged and retired in priority order") {
  Env env;
  auto lapic = enabledLapic(env);
  lapic->acceptInterrupt(0x30, TriggerMode::EDGE);
  CHECK(maybeVector(lapic->acknowledge()) == 0x30);
  CHECK(lapic->ppr() == 0x30);

  // A higher class interrupts the handler of 0x30.
  lapic->acceptInterrupt(0x50, TriggerMode::EDGE);
  lapic->acceptInterrupt(0x38, TriggerMode::EDGE);  // same class as 0x30: waits
  CHECK(maybeVector(lapic->acknowledge()) == 0x50);
  CHECK(lapic->ppr() == 0x50);
  lapic->acceptInterrupt(0x40, TriggerMode::EDGE);  // below 0x50: waits
  CHECK(lapic->pendingVector() == nullptr);
  CHECK(inIsr(*lapic, 0x30));
  CHECK(inIsr(*lapic, 0x50));

  // EOI retires the highest in-service vector (0x50), then 0x40 preempts 0x30.
  mmioWrite(*lapic, Reg::EOI, 0);
  CHECK(!inIsr(*lapic, 0x50));
  CHECK(lapic->ppr() == 0x30);
  CHECK(maybeVector(lapic->acknowledge()) == 0x40);
  mmioWrite(*lapic, Reg::EOI, 0);  // retires 0x40
  CHECK(inIsr(*lapic, 0x30));
  CHECK(lapic->pendingVector() == nullptr);  // 0x38 still blocked by 0x30
  mmioWrite(*lapic, Reg::EOI, 0);  // retires 0x30
  CHECK(lapic->ppr() == 0);
  CHECK(maybeVector(lapic->acknowledge()) == 0x38);
  mmioWrite(*lapic, Reg::EOI, 0);
  CHECK(lapic->ppr() == 0);
  // EOI with nothing in service changes nothing.
  AccessResult r = mmioWrite(*lapic, Reg::EOI, 0);
  CHECK(r.eoiBroadcast == nullptr);
  CHECK(lapic->stats().eois == 4);
}

TEST_CASE("SDM 11.8.5: EOI of a level-triggered vector is broadcast, of an edge one is not") {
  Env env;
  auto lapic = enabledLapic(env);
  lapic->acceptInterrupt(0x61, TriggerMode::LEVEL);
  CHECK(maybeVector(lapic->acknowledge()) == 0x61);
  lapic->acceptInterrupt(0x71, TriggerMode::EDGE);  // nests above 0x61
  CHECK(maybeVector(lapic->acknowledge()) == 0x71);
  AccessResult r = mmioWrite(*lapic, Reg::EOI, 0);  // 0x71, edge
  CHECK(r.eoiBroadcast == nullptr);
  r = mmioWrite(*lapic, Reg::EOI, 0xDEAD);  // 0x61, level; value ignored in xAPIC mode
  KJ_IF_MAYBE(v, r.eoiBroadcast) {
    CHECK(*v == 0x61);
  } else {
    FAIL("no EOI broadcast");
  }
}

TEST_CASE("SDM 11.8.5: SVR bit 12 suppresses the EOI broadcast only when Version bit 24 is set") {
  Env env;
  LapicConfig config;
  config.eoiBroadcastSuppression = true;
  auto lapic = enabledLapic(env, config);
  mmioWrite(*lapic, Reg::SVR, 0x11FF);
  CHECK(mmioRead(*lapic, Reg::SVR) == 0x11FF);
  lapic->acceptInterrupt(0x61, TriggerMode::LEVEL);
  lapic->acknowledge();
  AccessResult r = mmioWrite(*lapic, Reg::EOI, 0);
  CHECK(r.eoiBroadcast == nullptr);
  CHECK(!inIsr(*lapic, 0x61));

  // Without Version bit 24 the bit is not writable, so nothing is suppressed.
  auto plain = enabledLapic(env);
  mmioWrite(*plain, Reg::SVR, 0x11FF);
  CHECK(mmioRead(*plain, Reg::SVR) == 0x1FF);
  plain->acceptInterrupt(0x61, TriggerMode::LEVEL);
  plain->acknowledge();
  CHECK(mmioWrite(*plain, Reg::EOI, 0).eoiBroadcast != nullptr);
}

TEST_CASE("KVM: an x2APIC EOI write ignores its value (the default)") {
  Env env;
  auto lapic = env.make();
  enterX2apic(*lapic);
  softwareEnable(*lapic);
  lapic->acceptInterrupt(0x40, TriggerMode::EDGE);
  lapic->acknowledge();
  AccessResult r = lapic->msrWrite(regMsr(Reg::EOI), 1);
  CHECK(r.status == AccessStatus::OK);
  CHECK(!inIsr(*lapic, 0x40));
  // The ESR keeps the SDM's rule in both modes, as KVM does.
  r = lapic->msrWrite(regMsr(Reg::ESR), 1);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::NON_ZERO_WRITE);
}

TEST_CASE("SDM 11.12.1.2: with the strict option an x2APIC EOI must be written with 0") {
  Env env;
  auto lapic = strictX2apicLapic(env);
  softwareEnable(*lapic);
  lapic->acceptInterrupt(0x40, TriggerMode::EDGE);
  lapic->acknowledge();
  AccessResult r = lapic->msrWrite(regMsr(Reg::EOI), 1);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::NON_ZERO_WRITE);
  CHECK(inIsr(*lapic, 0x40));
  msrWrite(*lapic, regMsr(Reg::EOI), 0);
  CHECK(!inIsr(*lapic, 0x40));
}

TEST_CASE("SDM 11.4.7.2: a software-disabled APIC masks all LVTs, refuses fixed interrupts, "
          "keeps IRR and ISR") {
  Env env;
  LapicConfig config;
  config.lvtEntries = 7;
  auto lapic = enabledLapic(env, config);
  for (Reg lvt : {Reg::LVT_CMCI, Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC, Reg::LVT_LINT0,
                  Reg::LVT_LINT1, Reg::LVT_ERROR}) {
    mmioWrite(*lapic, lvt, 0x40);
  }
  lapic->acceptInterrupt(0x50, TriggerMode::EDGE);
  lapic->acknowledge();
  lapic->acceptInterrupt(0x60, TriggerMode::EDGE);

  uint64_t generation = lapic->routingGeneration();
  mmioWrite(*lapic, Reg::SVR, 0xFF);
  CHECK(!lapic->softwareEnabled());
  CHECK(lapic->routingGeneration() != generation);
  for (Reg lvt : {Reg::LVT_CMCI, Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC, Reg::LVT_LINT0,
                  Reg::LVT_LINT1, Reg::LVT_ERROR}) {
    INFO(registerInfo(lvt).name.cStr());
    CHECK(mmioRead(*lapic, lvt) == 0x10040);
    // The mask cannot be cleared while software-disabled.
    mmioWrite(*lapic, lvt, 0x41);
    CHECK(mmioRead(*lapic, lvt) == 0x10041);
  }
  CHECK(inIsr(*lapic, 0x50));
  CHECK(inIrr(*lapic, 0x60));
  CHECK(!lapic->acceptInterrupt(0x70, TriggerMode::EDGE));
  CHECK(!inIrr(*lapic, 0x70));
  // Pending interrupts stay deliverable to the CPU (held in IRR/ISR).
  CHECK(maybeVector(lapic->pendingVector()) == 0x60);

  // Re-enabling does not unmask.
  mmioWrite(*lapic, Reg::SVR, 0x1FF);
  CHECK(mmioRead(*lapic, Reg::LVT_TIMER) == 0x10041);
  CHECK(lapic->acceptInterrupt(0x70, TriggerMode::EDGE));
}

TEST_CASE("SDM 11.8.3: a hardware-disabled APIC delivers nothing") {
  Env env;
  auto lapic = enabledLapic(env);
  lapic->acceptInterrupt(0x60, TriggerMode::EDGE);
  msrWrite(*lapic, kMsrApicBase, kBase);
  CHECK(lapic->pendingVector() == nullptr);
  CHECK(lapic->acknowledge() == nullptr);
  msrWrite(*lapic, kMsrApicBase, kEnabled);
  CHECK(maybeVector(lapic->pendingVector()) == 0x60);
}

TEST_CASE("APR reads 0 (KVM) and PPR is read-only") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::TPR, 0x80);
  CHECK(mmioRead(*lapic, Reg::APR) == 0);
  CHECK(lapic->mmioWrite(kBase + regOffset(Reg::PPR), 4, 0).status == AccessStatus::IGNORED);
  CHECK(lapic->ppr() == 0x80);
}

}  // namespace
}  // namespace vlapic::test
