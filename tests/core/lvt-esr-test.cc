// SPDX-License-Identifier: MIT
// The local vector table and error handling (SDM Vol. 3A 11.5.1 "Local
// Vector Table", 11.5.2 "Valid Interrupt Vectors", 11.5.3 "Error Handling",
// 11.4.3 "Enabling or Disabling the Local APIC").
#include "fixture.h"

namespace vlapic::test {
namespace {

using Kind = LocalInterrupt::Kind;

TEST_CASE("SDM 11.5.3: ESR errors accumulate until a write latches them") {
  Env env;
  auto lapic = enabledLapic(env);
  // Send an illegal vector (fixed, vector 5): not sent, ESR bit 5.
  AccessResult r = mmioWrite(*lapic, Reg::ICR_LOW, 0x00040005);
  CHECK(r.ipi == nullptr);
  CHECK(mmioRead(*lapic, Reg::ESR) == 0);  // not visible before a write
  // Receive an illegal vector: discarded, ESR bit 6.
  CHECK(!lapic->acceptInterrupt(7, TriggerMode::EDGE));
  CHECK(mmioRead(*lapic, Reg::IRR0) == 0);
  CHECK(latchEsr(*lapic) == 0x60);
  CHECK(mmioRead(*lapic, Reg::ESR) == 0x60);  // reads are stable
  CHECK(latchEsr(*lapic) == 0);               // the write cleared the accumulator
}

TEST_CASE("SDM 11.5.3: ESR bit 7 for an access to a reserved xAPIC register") {
  Env env;
  auto lapic = enabledLapic(env);
  lapic->mmioRead(kBase + 0x40, 4);
  CHECK(latchEsr(*lapic) == 0x80);
  lapic->mmioWrite(kBase + 0x3F0, 4, 0x40);  // SELF IPI does not exist in xAPIC mode
  CHECK(latchEsr(*lapic) == 0x80);
  // Only reserved registers: a bad size on a real one is no error.
  lapic->mmioRead(kBase + 0x84, 4);
  CHECK(latchEsr(*lapic) == 0);
}

TEST_CASE("SDM 11.5.3: LVT Error raises its vector for each new error, if unmasked") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::LVT_ERROR, 0xE0);
  lapic->acceptInterrupt(3, TriggerMode::EDGE);  // receive illegal vector
  CHECK(inIrr(*lapic, 0xE0));
  CHECK(maybeVector(lapic->acknowledge()) == 0xE0);
  mmioWrite(*lapic, Reg::EOI, 0);
  // The same error again before the ESR write: already pending, no interrupt.
  lapic->acceptInterrupt(3, TriggerMode::EDGE);
  CHECK(!inIrr(*lapic, 0xE0));
  // A different error is new.
  mmioWrite(*lapic, Reg::ICR_LOW, 0x00040001);
  CHECK(inIrr(*lapic, 0xE0));
  lapic->acknowledge();
  mmioWrite(*lapic, Reg::EOI, 0);
  // After the write re-arms it, the first error raises the interrupt again.
  CHECK(latchEsr(*lapic) == 0x60);
  lapic->acceptInterrupt(3, TriggerMode::EDGE);
  CHECK(inIrr(*lapic, 0xE0));

  // Masked: errors are logged, no interrupt.
  auto masked = enabledLapic(env);
  masked->acceptInterrupt(3, TriggerMode::EDGE);
  CHECK(masked->pendingVector() == nullptr);
  CHECK(latchEsr(*masked) == 0x40);
}

TEST_CASE("SDM 11.5.3: an illegal LVT Error vector logs its own error once") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::LVT_ERROR, 0x02);
  mmioWrite(*lapic, Reg::ICR_LOW, 0x00040001);  // send illegal -> error vector 2 is illegal too
  CHECK(mmioRead(*lapic, Reg::IRR0) == 0);
  CHECK(latchEsr(*lapic) == 0x60);
}

TEST_CASE("SDM 11.12.1.2: x2APIC ESR must be written with 0") {
  Env env;
  auto lapic = enabledLapic(env);
  enterX2apic(*lapic);
  lapic->acceptInterrupt(1, TriggerMode::EDGE);
  AccessResult r = lapic->msrWrite(regMsr(Reg::ESR), 0x40);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::NON_ZERO_WRITE);
  CHECK(latchEsr(*lapic) == 0x40);
}

TEST_CASE("SDM 11.4.8: 6 LVT entries, or 7 with LVT CMCI") {
  Env env;
  auto six = enabledLapic(env);
  AccessResult r = six->mmioRead(kBase + 0x2F0, 4);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.reason == AccessReason::RESERVED_REGISTER);
  CHECK(six->signalLvt(LvtSource::CMCI).kind == Kind::NONE);
  enterX2apic(*six);
  CHECK(six->msrRead(0x82F).status == AccessStatus::GP);

  LapicConfig config;
  config.lvtEntries = 7;
  auto seven = enabledLapic(env, config);
  CHECK(mmioRead(*seven, Reg::LVT_CMCI) == 0x10000);
  mmioWrite(*seven, Reg::LVT_CMCI, 0x4A);
  LocalInterrupt out = seven->signalLvt(LvtSource::CMCI);
  CHECK(out.kind == Kind::FIXED);
  CHECK(out.vector == 0x4A);
  CHECK(inIrr(*seven, 0x4A));
}

TEST_CASE("SDM 11.5.1: thermal and PMC entries deliver fixed, NMI and SMI, PMC masks itself") {
  Env env;
  auto lapic = enabledLapic(env);
  CHECK(lapic->signalLvt(LvtSource::THERMAL).kind == Kind::NONE);  // masked at reset
  mmioWrite(*lapic, Reg::LVT_THERMAL, 0x400);  // NMI
  CHECK(lapic->signalLvt(LvtSource::THERMAL).kind == Kind::NMI);
  mmioWrite(*lapic, Reg::LVT_THERMAL, 0x200);  // SMI
  CHECK(lapic->signalLvt(LvtSource::THERMAL).kind == Kind::SMI);
  mmioWrite(*lapic, Reg::LVT_THERMAL, 0x500);  // INIT: not supported for thermal
  CHECK(lapic->signalLvt(LvtSource::THERMAL).kind == Kind::NONE);
  mmioWrite(*lapic, Reg::LVT_THERMAL, 0x700);  // ExtINT: not supported either
  CHECK(lapic->signalLvt(LvtSource::THERMAL).kind == Kind::NONE);

  mmioWrite(*lapic, Reg::LVT_PMC, 0xF1);
  LocalInterrupt out = lapic->signalLvt(LvtSource::PMC);
  CHECK(out.kind == Kind::FIXED);
  CHECK(out.vector == 0xF1);
  CHECK(mmioRead(*lapic, Reg::LVT_PMC) == 0x100F1);
  CHECK(lapic->signalLvt(LvtSource::PMC).kind == Kind::NONE);

  // A fixed LVT with an illegal vector: received illegal vector, nothing accepted.
  mmioWrite(*lapic, Reg::LVT_THERMAL, 0x05);
  CHECK(lapic->signalLvt(LvtSource::THERMAL).kind == Kind::NONE);
  CHECK(latchEsr(*lapic) == 0x40);
}

TEST_CASE("SDM 11.5.1: edge-triggered fixed LINT fires on each rising edge") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::LVT_LINT0, 0x41);
  LocalInterrupt out = lapic->setLint(0, true);
  CHECK(out.kind == Kind::FIXED);
  CHECK(out.vector == 0x41);
  CHECK(inIrr(*lapic, 0x41));
  CHECK(!inTmr(*lapic, 0x41));
  CHECK(lapic->lintLevel(0));
  CHECK(lapic->setLint(0, true).kind == Kind::NONE);  // no new edge
  CHECK(lapic->setLint(0, false).kind == Kind::NONE);
  lapic->acknowledge();
  CHECK(lapic->setLint(0, true).kind == Kind::FIXED);
}

TEST_CASE("SDM 11.5.1: level-triggered fixed LINT latches remote IRR until EOI") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::LVT_LINT0, 0x8000 | 0x52);  // level, fixed, vector 0x52
  LocalInterrupt out = lapic->setLint(0, true);
  CHECK(out.kind == Kind::FIXED);
  CHECK(inTmr(*lapic, 0x52));
  CHECK(mmioRead(*lapic, Reg::LVT_LINT0) == (0x8000 | 0x4000 | 0x52));
  // Remote IRR is read-only for the guest.
  mmioWrite(*lapic, Reg::LVT_LINT0, 0x8000 | 0x52);
  CHECK((mmioRead(*lapic, Reg::LVT_LINT0) & 0x4000) != 0);

  CHECK(maybeVector(lapic->acknowledge()) == 0x52);
  CHECK(lapic->setLint(0, true).kind == Kind::NONE);  // still latched
  // EOI clears remote IRR; the pin is still asserted, so it delivers again.
  AccessResult r = mmioWrite(*lapic, Reg::EOI, 0);
  CHECK(r.eoiBroadcast != nullptr);
  CHECK(inIrr(*lapic, 0x52));
  CHECK((mmioRead(*lapic, Reg::LVT_LINT0) & 0x4000) != 0);
  // Deasserted by the time of the next EOI: remote IRR clears and stays clear.
  lapic->acknowledge();
  lapic->setLint(0, false);
  mmioWrite(*lapic, Reg::EOI, 0);
  CHECK((mmioRead(*lapic, Reg::LVT_LINT0) & 0x4000) == 0);
  CHECK(!inIrr(*lapic, 0x52));
}

TEST_CASE("SDM 11.5.1: an asserted level-triggered LINT delivers when unmasked") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::LVT_LINT1, 0x18000 | 0x66);  // masked, level
  CHECK(lapic->setLint(1, true).kind == Kind::NONE);
  CHECK(!inIrr(*lapic, 0x66));
  mmioWrite(*lapic, Reg::LVT_LINT1, 0x8000 | 0x66);
  CHECK(inIrr(*lapic, 0x66));
}

TEST_CASE("SDM 11.5.1: LINT as NMI, SMI, INIT (edge) and ExtINT (level, virtual wire)") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::LVT_LINT1, 0x400);
  CHECK(lapic->setLint(1, true).kind == Kind::NMI);
  CHECK(lapic->setLint(1, true).kind == Kind::NONE);
  lapic->setLint(1, false);
  mmioWrite(*lapic, Reg::LVT_LINT1, 0x200);
  CHECK(lapic->setLint(1, true).kind == Kind::SMI);
  lapic->setLint(1, false);
  mmioWrite(*lapic, Reg::LVT_LINT1, 0x500);
  CHECK(lapic->setLint(1, true).kind == Kind::INIT);

  mmioWrite(*lapic, Reg::LVT_LINT0, 0x700);
  CHECK(lapic->setLint(0, true).kind == Kind::EXTINT);
  CHECK(lapic->setLint(0, true).kind == Kind::EXTINT);  // level: while asserted
  CHECK(lapic->setLint(0, false).kind == Kind::NONE);
  mmioWrite(*lapic, Reg::LVT_LINT0, 0x10700);  // masked
  CHECK(lapic->setLint(0, true).kind == Kind::NONE);
  CHECK(mmioRead(*lapic, Reg::IRR0) == 0);
}

TEST_CASE("SDM 11.4.3: with the APIC hardware-disabled LINT0 is INTR and LINT1 is NMI") {
  Env env;
  auto lapic = enabledLapic(env);
  msrWrite(*lapic, kMsrApicBase, kBase);
  CHECK(lapic->setLint(0, true).kind == Kind::EXTINT);
  CHECK(lapic->setLint(1, true).kind == Kind::NMI);
  CHECK(lapic->setLint(1, true).kind == Kind::NONE);
  CHECK(lapic->signalLvt(LvtSource::THERMAL).kind == Kind::NONE);
}

}  // namespace
}  // namespace vlapic::test
