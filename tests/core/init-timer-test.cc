// SPDX-License-Identifier: MIT
// INIT, SIPI and RESET (SDM Vol. 3A 11.4.7.1 "Local APIC State After
// Power-Up or Reset", 11.4.7.3 "Local APIC State After an INIT Reset", 9.4
// "Multiple-Processor (MP) Initialization") and the core's side of the timer
// (SDM 11.5.4 "APIC Timer": register writes reach the timer, expiries reach
// IRR).
#include "fixture.h"

namespace vlapic::test {
namespace {

TEST_CASE("SDM 9.4: after RESET the boot vCPU runs and an AP waits for SIPI") {
  Env env;
  auto bsp = env.make({}, 0, true);
  auto ap = env.make({}, 1, false);
  CHECK(bsp->runState() == RunState::RUNNING);
  CHECK(ap->runState() == RunState::WAIT_FOR_SIPI);
  CHECK(bsp->startup(0x9A) == nullptr);  // a running vCPU drops SIPI
  CHECK(maybeVector(ap->startup(0x9A)) == 0x9A);
  CHECK(ap->runState() == RunState::RUNNING);
  CHECK(ap->startup(0x9B) == nullptr);
}

TEST_CASE("SDM 11.4.7.3: INIT resets registers but keeps APIC ID and IA32_APIC_BASE") {
  Env env;
  auto lapic = env.make({}, 2, false);
  lapic->startup(0x10);
  msrWrite(*lapic, kMsrApicBase, 0xFED00000 | kApicBaseEnable);
  softwareEnable(*lapic);
  mmioWrite(*lapic, Reg::ID, 0x0A000000);
  mmioWrite(*lapic, Reg::TPR, 0x20);
  mmioWrite(*lapic, Reg::LDR, 0x01000000);
  mmioWrite(*lapic, Reg::DFR, 0x0FFFFFFF);
  mmioWrite(*lapic, Reg::LVT_LINT0, 0x700);
  mmioWrite(*lapic, Reg::LVT_TIMER, 0x20030);
  mmioWrite(*lapic, Reg::TIMER_DIVIDE_CONFIG, 0xB);
  mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 1000000);
  mmioWrite(*lapic, Reg::ICR_HIGH, 0x01000000);
  lapic->acceptInterrupt(0x90, TriggerMode::LEVEL);
  lapic->acknowledge();
  lapic->acceptInterrupt(0xA0, TriggerMode::EDGE);
  lapic->acceptInterrupt(1, TriggerMode::EDGE);  // an error in the accumulator
  uint64_t generation = lapic->routingGeneration();

  lapic->init();
  CHECK(lapic->runState() == RunState::WAIT_FOR_SIPI);
  CHECK(lapic->apicBase() == (0xFED00000 | kApicBaseEnable));
  CHECK(mmioRead(*lapic, Reg::ID) == 0x0A000000);
  CHECK(mmioRead(*lapic, Reg::LDR) == 0);
  CHECK(mmioRead(*lapic, Reg::DFR) == 0xFFFFFFFF);
  CHECK(mmioRead(*lapic, Reg::SVR) == 0xFF);
  CHECK(mmioRead(*lapic, Reg::TPR) == 0);
  CHECK(mmioRead(*lapic, Reg::PPR) == 0);
  CHECK(mmioRead(*lapic, Reg::ICR_HIGH) == 0);
  for (Reg lvt : {Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC, Reg::LVT_LINT0,
                  Reg::LVT_LINT1, Reg::LVT_ERROR}) {
    CHECK(mmioRead(*lapic, lvt) == 0x10000);
  }
  CHECK(mmioRead(*lapic, Reg::TIMER_INITIAL_COUNT) == 0);
  CHECK(mmioRead(*lapic, Reg::TIMER_CURRENT_COUNT) == 0);
  CHECK(mmioRead(*lapic, Reg::TIMER_DIVIDE_CONFIG) == 0);
  CHECK(lapic->timerDeadlineNs() == nullptr);
  for (unsigned i = 0; i < 8; ++i) {
    CHECK(lapic->readRegister(Reg(uint16_t(Reg::ISR0) + i)) == 0);
    CHECK(lapic->readRegister(Reg(uint16_t(Reg::TMR0) + i)) == 0);
    CHECK(lapic->readRegister(Reg(uint16_t(Reg::IRR0) + i)) == 0);
  }
  CHECK(latchEsr(*lapic) == 0);
  CHECK(lapic->routingGeneration() != generation);
  CHECK(maybeVector(lapic->startup(0x10)) == 0x10);
}

TEST_CASE("SDM 11.4.7.3: INIT in x2APIC mode keeps the x2APIC ID and LDR, the BSP keeps running") {
  Env env;
  auto lapic = env.make({}, 0x21, true);
  enterX2apic(*lapic);
  lapic->init();
  CHECK(lapic->mode() == ApicMode::X2APIC);
  CHECK(lapic->runState() == RunState::RUNNING);
  CHECK(msrRead(*lapic, 0x802) == 0x21);
  CHECK(msrRead(*lapic, 0x80D) == ((0x2u << 16) | 0x2));
  CHECK(msrRead(*lapic, 0x80F) == 0xFF);
}

TEST_CASE("KVM: the boot vCPU's LINT0 is ExtINT after RESET and INIT when configured") {
  Env env;
  LapicConfig config;
  config.bspLint0ExtInt = true;
  auto bsp = env.make(config, 0, true);
  auto ap = env.make(config, 1, false);
  CHECK(bsp->readRegister(Reg::LVT_LINT0) == 0x700);
  CHECK(ap->readRegister(Reg::LVT_LINT0) == 0x10000);
  mmioWrite(*bsp, Reg::LVT_LINT0, 0x10000);
  bsp->init();
  CHECK(bsp->readRegister(Reg::LVT_LINT0) == 0x700);
  CHECK(env.make({}, 0, true)->readRegister(Reg::LVT_LINT0) == 0x10000);
}

TEST_CASE("SDM 11.4.7.1: RESET also restores IA32_APIC_BASE and the initial ID") {
  Env env;
  auto lapic = env.make({}, 4, true);
  enterX2apic(*lapic);
  msrWrite(*lapic, regMsr(Reg::TPR), 0x30);
  lapic->reset();
  CHECK(lapic->apicBase() == 0xFEE00900);
  CHECK(lapic->mode() == ApicMode::XAPIC);
  CHECK(mmioRead(*lapic, Reg::ID) == 0x04000000);
  CHECK(mmioRead(*lapic, Reg::LDR) == 0);
  CHECK(lapic->tpr() == 0);
}

// ---- Timer integration ----

kj::Own<Lapic> timerLapic(Env& env, uint32_t lvtTimer) {
  auto lapic = env.make();
  softwareEnable(*lapic);
  mmioWrite(*lapic, Reg::TIMER_DIVIDE_CONFIG, 0xB);  // divide by 1: 1 ns per count
  AccessResult r = mmioWrite(*lapic, Reg::LVT_TIMER, lvtTimer);
  CHECK(r.timerChanged);
  return lapic;
}

TEST_CASE("SDM 11.5.4: a one-shot count runs down, reads back, and raises the LVT vector") {
  Env env;
  auto lapic = timerLapic(env, 0x30);
  AccessResult r = mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 1000);
  CHECK(r.timerChanged);
  uint64_t start = env.clock.nowNs();
  REQUIRE(lapic->timerDeadlineNs() != nullptr);
  KJ_IF_MAYBE(deadline, lapic->timerDeadlineNs()) { CHECK(*deadline == start + 1000); }
  env.clock.advance(400);
  CHECK(mmioRead(*lapic, Reg::TIMER_CURRENT_COUNT) == 600);
  CHECK(lapic->onTimer() == 0);
  env.clock.advance(600);
  CHECK(lapic->onTimer() == 1);
  CHECK(inIrr(*lapic, 0x30));
  CHECK(!inTmr(*lapic, 0x30));
  CHECK(mmioRead(*lapic, Reg::TIMER_CURRENT_COUNT) == 0);
  CHECK(lapic->timerDeadlineNs() == nullptr);
  CHECK(lapic->stats().timerExpiries == 1);
}

TEST_CASE("SDM 11.5.4: a masked timer expires without raising its vector") {
  Env env;
  auto lapic = timerLapic(env, 0x10030);
  mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 100);
  env.clock.advance(100);
  CHECK(lapic->onTimer() == 1);
  CHECK(!inIrr(*lapic, 0x30));
  CHECK(lapic->stats().timerExpiries == 1);
}

TEST_CASE("SDM 11.5.4: periodic expiries handled late coalesce into one interrupt") {
  Env env;
  auto lapic = timerLapic(env, 0x20031);
  mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 500000);  // 500 us
  env.clock.advance(3 * 500000 + 10);
  CHECK(lapic->onTimer() == 3);
  CHECK(inIrr(*lapic, 0x31));
  CHECK(maybeVector(lapic->acknowledge()) == 0x31);
  CHECK(lapic->acknowledge() == nullptr);
  CHECK(lapic->timerDeadlineNs() != nullptr);  // still running
}

TEST_CASE("SDM 11.5.4.1: a TSC deadline already past is pending when the WRMSR returns") {
  Env env;
  auto lapic = timerLapic(env, 0x40032);
  enterX2apic(*lapic);
  AccessResult r = msrWrite(*lapic, kMsrTscDeadline, env.tsc.now() - 1);
  CHECK(r.timerChanged);
  CHECK(inIrr(*lapic, 0x32));
  CHECK(msrRead(*lapic, kMsrTscDeadline) == 0);

  lapic->acknowledge();
  uint64_t deadline = env.tsc.now() + 2000;  // 1 us at 2 GHz
  msrWrite(*lapic, kMsrTscDeadline, deadline);
  CHECK(msrRead(*lapic, kMsrTscDeadline) == deadline);
  CHECK(!inIrr(*lapic, 0x32));
  env.clock.advance(1000);
  CHECK(lapic->onTimer() == 1);
  CHECK(inIrr(*lapic, 0x32));
  CHECK(msrRead(*lapic, kMsrTscDeadline) == 0);
}

TEST_CASE("SDM 11.5.4.1: TSC-deadline MSR writes are ignored outside TSC-deadline mode, "
          "initial-count writes inside it") {
  Env env;
  auto lapic = timerLapic(env, 0x30);
  AccessResult r = lapic->msrWrite(kMsrTscDeadline, env.tsc.now() + 100);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.reason == AccessReason::TIMER_MODE);
  CHECK(msrRead(*lapic, kMsrTscDeadline) == 0);

  mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 5000);
  // Into TSC-deadline mode: the count is disarmed and TMICT reads 0 (KVM).
  mmioWrite(*lapic, Reg::LVT_TIMER, 0x40030);
  CHECK(mmioRead(*lapic, Reg::TIMER_INITIAL_COUNT) == 0);
  CHECK(lapic->timerDeadlineNs() == nullptr);
  r = lapic->mmioWrite(kBase + regOffset(Reg::TIMER_INITIAL_COUNT), 4, 5000);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.reason == AccessReason::TIMER_MODE);
  CHECK(mmioRead(*lapic, Reg::TIMER_INITIAL_COUNT) == 0);
  CHECK(mmioRead(*lapic, Reg::TIMER_CURRENT_COUNT) == 0);
}

TEST_CASE("KVM: with the APIC hardware-disabled, IA32_TSC_DEADLINE writes are ignored and "
          "it reads 0") {
  Env env;
  auto lapic = timerLapic(env, 0x40032);
  uint64_t base = lapic->apicBase();
  msrWrite(*lapic, kMsrApicBase, base & ~kApicBaseEnable);
  REQUIRE(lapic->mode() == ApicMode::DISABLED);
  AccessResult r = lapic->msrWrite(kMsrTscDeadline, env.tsc.now() + 100000);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.reason == AccessReason::APIC_DISABLED);
  CHECK(lapic->timerDeadlineNs() == nullptr);
  r = lapic->msrRead(kMsrTscDeadline);
  CHECK(r.status == AccessStatus::OK);
  CHECK(r.value == 0);
  // A deadline already past does not fire either.
  lapic->msrWrite(kMsrTscDeadline, env.tsc.now() - 1);
  env.clock.advance(1'000'000);
  CHECK(lapic->onTimer() == 0);
  CHECK(lapic->stats().timerExpiries == 0);
}

TEST_CASE("KVM: LVT timer mode 11b (reserved) never starts the timer") {
  Env env;
  auto lapic = timerLapic(env, 0x60033);  // bits 18:17 = 11
  CHECK((mmioRead(*lapic, Reg::LVT_TIMER) >> 17 & 3) == 3);
  AccessResult r = mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 1000);
  CHECK(r.status == AccessStatus::OK);
  CHECK(mmioRead(*lapic, Reg::TIMER_INITIAL_COUNT) == 1000);  // kept, as KVM's TMICT
  CHECK(lapic->timerDeadlineNs() == nullptr);
  CHECK(mmioRead(*lapic, Reg::TIMER_CURRENT_COUNT) == 0);
  env.clock.advance(1'000'000);
  CHECK(lapic->onTimer() == 0);
  CHECK(!inIrr(*lapic, 0x33));
  // Leaving the mode does not start it either: a count starts at a write of
  // the initial-count register.
  mmioWrite(*lapic, Reg::LVT_TIMER, 0x33);
  CHECK(lapic->timerDeadlineNs() == nullptr);
  mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 1000);
  env.clock.advance(1000);
  CHECK(lapic->onTimer() == 1);
  CHECK(inIrr(*lapic, 0x33));
}

TEST_CASE("SDM 11.5.4: a divide change mid-count reaches the timer") {
  Env env;
  auto lapic = timerLapic(env, 0x30);
  mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 1000);
  env.clock.advance(500);
  AccessResult r = mmioWrite(*lapic, Reg::TIMER_DIVIDE_CONFIG, 0x0);  // divide by 2
  CHECK(r.timerChanged);
  CHECK(mmioRead(*lapic, Reg::TIMER_CURRENT_COUNT) == 500);
  env.clock.advance(999);
  CHECK(lapic->onTimer() == 0);
  env.clock.advance(1);
  CHECK(lapic->onTimer() == 1);
}

}  // namespace
}  // namespace vlapic::test
