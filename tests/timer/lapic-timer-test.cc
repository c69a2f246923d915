// SPDX-License-Identifier: MIT
// The LAPIC timer driven through the register path of a whole Lapic (SDM
// Vol. 3A, 11.5.4 "APIC Timer", 11.5.4.1 "TSC-Deadline Mode", 11.5.1 "Local
// Vector Table"): LVT Timer, initial/current count and DCR by MMIO and by
// x2APIC MSR, IA32_TSC_DEADLINE (MSR 0x6E0), and what an expiry does to IRR.
// Time comes from a ManualClock advanced by hand.

#include "server/core/lapic.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>

namespace vlapic {
namespace {

constexpr uint64_t kStart = 1'000'000'000;
constexpr uint64_t kTscHz = 1'000'000'000;  // guest TSC = host ns + offset

constexpr uint64_t kMmio = kDefaultApicBase;
constexpr uint64_t kSvrAddr = kMmio + regOffset(Reg::SVR);
constexpr uint64_t kLvtTimerAddr = kMmio + regOffset(Reg::LVT_TIMER);
constexpr uint64_t kInitialCountAddr = kMmio + regOffset(Reg::TIMER_INITIAL_COUNT);
constexpr uint64_t kCurrentCountAddr = kMmio + regOffset(Reg::TIMER_CURRENT_COUNT);
constexpr uint64_t kDivideAddr = kMmio + regOffset(Reg::TIMER_DIVIDE_CONFIG);

constexpr uint32_t kMasked = 1u << 16;
constexpr uint32_t kOneShot = 0u << 17, kPeriodic = 1u << 17, kTscDeadline = 2u << 17;
constexpr uint32_t kDivideBy1 = 0xB;
constexpr uint8_t kVector = 0xEC;

// One vCPU on a hand-driven clock.
struct Vcpu {
  explicit Vcpu(LapicConfig config = LapicConfig(), uint64_t startNs = kStart)
      : clock(startNs), hal(hal::newHostMemoryHal(clock)), tsc(clock, kTscHz),
        lapic(kj::heap<Lapic>(*hal, tsc, config, 0, true)) {
    // Software-enable the APIC: while SVR bit 8 is 0 every LVT stays masked.
    write(kSvrAddr, 0x1FF);
    write(kDivideAddr, kDivideBy1);
  }
  ~Vcpu() noexcept(false) { lapic = nullptr; }  // pages go back before the HAL

  AccessResult write(uint64_t gpa, uint32_t value) {
    AccessResult result = lapic->mmioWrite(gpa, 4, value);
    REQUIRE(result.status != AccessStatus::GP);
    return result;
  }
  uint32_t read(uint64_t gpa) {
    AccessResult result = lapic->mmioRead(gpa, 4);
    REQUIRE(result.status == AccessStatus::OK);
    return uint32_t(result.value);
  }
  bool inIrr(uint8_t vector) const {
    return lapic->readRegister(Reg(uint16_t(Reg::IRR0) + vector / 32)) & (1u << (vector % 32));
  }
  bool inTmr(uint8_t vector) const {
    return lapic->readRegister(Reg(uint16_t(Reg::TMR0) + vector / 32)) & (1u << (vector % 32));
  }
  uint64_t deadline() const {
    KJ_IF_MAYBE(d, lapic->timerDeadlineNs()) return *d;
    FAIL("no timer deadline");
    return 0;
  }
  // What the server does when its real timer for this vCPU fires.
  uint32_t fireAt(uint64_t ns) {
    clock.set(ns);
    return lapic->onTimer();
  }

  hal::ManualClock clock;
  kj::Own<hal::Hal> hal;
  GuestTsc tsc;
  kj::Own<Lapic> lapic;
};

TEST_CASE("APIC Timer via MMIO: one-shot expiry accepts the LVT Timer vector into IRR",
          "[lapic-timer][one-shot]") {
  Vcpu v;
  AccessResult lvt = v.write(kLvtTimerAddr, kVector | kOneShot);
  CHECK(lvt.timerChanged);
  AccessResult start = v.write(kInitialCountAddr, 10'000);
  CHECK(start.timerChanged);
  CHECK(v.read(kInitialCountAddr) == 10'000);
  CHECK(v.read(kCurrentCountAddr) == 10'000);
  CHECK(v.deadline() == kStart + 10'000);

  v.clock.advance(4'000);
  CHECK(v.read(kCurrentCountAddr) == 6'000);  // computed at read time
  CHECK(v.lapic->onTimer() == 0);
  CHECK_FALSE(v.inIrr(kVector));

  CHECK(v.fireAt(kStart + 10'000) == 1);
  CHECK(v.inIrr(kVector));
  CHECK(v.lapic->pendingVector() == kj::Maybe<uint8_t>(kVector));
  CHECK(v.read(kCurrentCountAddr) == 0);
  CHECK(v.read(kInitialCountAddr) == 10'000);
  CHECK(v.lapic->timerDeadlineNs() == nullptr);
  CHECK(v.lapic->stats().timerExpiries == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.1): the timer interrupt is edge-triggered",
          "[lapic-timer][one-shot]") {
  Vcpu v;
  // Leave a stale level-triggered TMR bit for the vector: an edge-triggered
  // acceptance must clear it (SDM 11.5.1: the timer LVT has no trigger bit,
  // its interrupts are edge-triggered).
  CHECK(v.lapic->acceptInterrupt(kVector, TriggerMode::LEVEL));
  CHECK(v.inTmr(kVector));
  CHECK(v.lapic->acknowledge() == kj::Maybe<uint8_t>(kVector));
  v.write(kMmio + regOffset(Reg::EOI), 0);
  CHECK_FALSE(v.inIrr(kVector));

  v.write(kLvtTimerAddr, kVector | kOneShot);
  v.write(kInitialCountAddr, 100);
  CHECK(v.fireAt(kStart + 100) == 1);
  CHECK(v.inIrr(kVector));
  CHECK_FALSE(v.inTmr(kVector));
}

TEST_CASE("APIC Timer (SDM 11.5.1): a masked timer runs and expires without its vector",
          "[lapic-timer][masked]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kPeriodic | kMasked);
  v.write(kInitialCountAddr, 1'000'000);
  CHECK(v.deadline() == kStart + 1'000'000);
  v.clock.advance(250'000);
  CHECK(v.read(kCurrentCountAddr) == 750'000);  // counting while masked
  CHECK(v.fireAt(kStart + 1'000'000) == 1);
  CHECK_FALSE(v.inIrr(kVector));
  CHECK(v.lapic->pendingVector() == nullptr);
  CHECK(v.lapic->stats().timerExpiries == 1);
  CHECK(v.deadline() == kStart + 2'000'000);  // and keeps its period

  // Unmasking lets the next expiry through.
  v.write(kLvtTimerAddr, kVector | kPeriodic);
  CHECK(v.fireAt(kStart + 2'000'000) == 1);
  CHECK(v.inIrr(kVector));
}

TEST_CASE("APIC Timer (SDM 11.4.7.2): with the APIC software-disabled the timer is masked",
          "[lapic-timer][masked]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kOneShot);
  v.write(kSvrAddr, 0xFF);  // SVR bit 8 clear: every LVT entry masks itself
  CHECK(v.lapic->readRegister(Reg::LVT_TIMER) & kMasked);
  v.write(kLvtTimerAddr, kVector | kOneShot);  // unmasking is refused
  CHECK(v.lapic->readRegister(Reg::LVT_TIMER) & kMasked);
  v.write(kInitialCountAddr, 500);
  CHECK(v.fireAt(kStart + 500) == 1);
  CHECK_FALSE(v.inIrr(kVector));
}

TEST_CASE("APIC Timer via MMIO: periodic reloads, raises one interrupt per expiry, coalesces",
          "[lapic-timer][periodic]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kPeriodic);
  v.write(kInitialCountAddr, 1'000'000);
  CHECK(v.fireAt(kStart + 1'000'000) == 1);
  CHECK(v.inIrr(kVector));
  CHECK(v.lapic->acknowledge() == kj::Maybe<uint8_t>(kVector));
  v.write(kMmio + regOffset(Reg::EOI), 0);
  CHECK(v.read(kCurrentCountAddr) == 1'000'000);

  // Handled 3.5 periods late: one interrupt for the three merged expiries,
  // and the next deadline stays on the grid.
  CHECK(v.fireAt(kStart + 4'500'000) == 3);
  CHECK(v.inIrr(kVector));
  CHECK(v.lapic->acknowledge() == kj::Maybe<uint8_t>(kVector));
  CHECK(v.lapic->pendingVector() == nullptr);
  CHECK(v.deadline() == kStart + 5'000'000);
  CHECK(v.read(kCurrentCountAddr) == 500'000);
}

TEST_CASE("APIC Timer via MMIO: DCR and mode changes reach the timer", "[lapic-timer][dcr][mode]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kOneShot);
  v.write(kDivideAddr, 0x0);  // divide by 2
  v.write(kInitialCountAddr, 1000);
  v.clock.advance(500);
  CHECK(v.read(kCurrentCountAddr) == 750);
  AccessResult dcr = v.write(kDivideAddr, 0x2);  // divide by 8 mid-count
  CHECK(dcr.timerChanged);
  CHECK(v.read(kDivideAddr) == 0x2);
  CHECK(v.read(kCurrentCountAddr) == 750);
  CHECK(v.deadline() == kStart + 500 + 6000);

  // One-shot -> periodic keeps the running count and its deadline (KVM).
  v.write(kLvtTimerAddr, kVector | kPeriodic);
  CHECK(v.read(kCurrentCountAddr) == 750);
  CHECK(v.deadline() == kStart + 6500);
  CHECK(v.fireAt(kStart + 6500) == 1);
  CHECK(v.read(kCurrentCountAddr) == 1000);  // reloaded: periodic now
  // The clamp applies to the reloaded periods: 8 us asked, 200 us given.
  CHECK(v.deadline() == kStart + 6500 + 200'000);
}

TEST_CASE("APIC Timer via MMIO: entering TSC-deadline mode disarms and zeroes TMICT",
          "[lapic-timer][mode][tsc-deadline]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kPeriodic);
  v.write(kInitialCountAddr, 1'000'000);
  v.write(kLvtTimerAddr, kVector | kTscDeadline);
  CHECK(v.read(kInitialCountAddr) == 0);
  CHECK(v.read(kCurrentCountAddr) == 0);
  CHECK(v.lapic->timerDeadlineNs() == nullptr);

  // Initial-count writes are ignored in TSC-deadline mode.
  AccessResult ignored = v.write(kInitialCountAddr, 5000);
  CHECK(ignored.status == AccessStatus::IGNORED);
  CHECK(ignored.reason == AccessReason::TIMER_MODE);
  CHECK(v.read(kInitialCountAddr) == 0);
  CHECK(v.lapic->timerDeadlineNs() == nullptr);
  CHECK(v.fireAt(kStart + 10'000'000) == 0);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): IA32_TSC_DEADLINE arms, fires, reads 0 after",
          "[lapic-timer][tsc-deadline]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kTscDeadline);
  uint64_t deadline = v.tsc.now() + 50'000;
  AccessResult arm = v.lapic->msrWrite(kMsrTscDeadline, deadline);
  CHECK(arm.status == AccessStatus::OK);
  CHECK(arm.timerChanged);
  CHECK(v.lapic->msrRead(kMsrTscDeadline).value == deadline);
  CHECK(v.deadline() == kStart + 50'000);
  CHECK(v.read(kCurrentCountAddr) == 0);

  CHECK(v.fireAt(kStart + 49'999) == 0);
  CHECK(v.fireAt(kStart + 50'000) == 1);
  CHECK(v.inIrr(kVector));
  CHECK(v.lapic->msrRead(kMsrTscDeadline).value == 0);
  CHECK(v.lapic->timerDeadlineNs() == nullptr);

  // Re-arm, then disarm with 0.
  v.lapic->msrWrite(kMsrTscDeadline, v.tsc.now() + 1000);
  CHECK(v.lapic->msrRead(kMsrTscDeadline).value == v.tsc.now() + 1000);
  v.lapic->msrWrite(kMsrTscDeadline, 0);
  CHECK(v.lapic->msrRead(kMsrTscDeadline).value == 0);
  CHECK(v.lapic->timerDeadlineNs() == nullptr);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): a past TSC deadline is pending when the WRMSR returns",
          "[lapic-timer][tsc-deadline]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kTscDeadline);
  v.clock.advance(1'000);
  AccessResult arm = v.lapic->msrWrite(kMsrTscDeadline, v.tsc.now() - 500);
  CHECK(arm.status == AccessStatus::OK);
  // No onTimer() call: the write itself delivered the expiry.
  CHECK(v.inIrr(kVector));
  CHECK(v.lapic->pendingVector() == kj::Maybe<uint8_t>(kVector));
  CHECK(v.lapic->msrRead(kMsrTscDeadline).value == 0);
  CHECK(v.lapic->timerDeadlineNs() == nullptr);
  CHECK(v.lapic->stats().timerExpiries == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): IA32_TSC_DEADLINE outside TSC-deadline mode",
          "[lapic-timer][tsc-deadline]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kOneShot);
  AccessResult write = v.lapic->msrWrite(kMsrTscDeadline, v.tsc.now() + 100);
  CHECK(write.status == AccessStatus::IGNORED);  // no #GP, no effect
  CHECK(write.reason == AccessReason::TIMER_MODE);
  AccessResult read = v.lapic->msrRead(kMsrTscDeadline);
  CHECK(read.status == AccessStatus::OK);
  CHECK(read.value == 0);
  CHECK(v.lapic->timerDeadlineNs() == nullptr);
  CHECK(v.fireAt(kStart + 1'000'000) == 0);

  SECTION("without CPUID's TSC-deadline bit the MSR does not exist") {
    LapicConfig config;
    config.tscDeadlineSupported = false;
    Vcpu plain(config);
    CHECK(plain.lapic->msrRead(kMsrTscDeadline).status == AccessStatus::GP);
    CHECK(plain.lapic->msrWrite(kMsrTscDeadline, 5).status == AccessStatus::GP);
  }
}

TEST_CASE("APIC Timer via x2APIC MSRs: LVT Timer, counts and DCR", "[lapic-timer][x2apic]") {
  Vcpu v;
  REQUIRE(v.lapic->msrWrite(kMsrApicBase, kDefaultApicBase | kApicBaseEnable |
                                              kApicBaseExtd | (1u << 8)).status ==
          AccessStatus::OK);
  REQUIRE(v.lapic->mode() == ApicMode::X2APIC);
  CHECK(v.lapic->msrWrite(regMsr(Reg::LVT_TIMER), kVector | kOneShot).status == AccessStatus::OK);
  CHECK(v.lapic->msrWrite(regMsr(Reg::TIMER_DIVIDE_CONFIG), 0xA).status == AccessStatus::OK);
  CHECK(v.lapic->msrWrite(regMsr(Reg::TIMER_INITIAL_COUNT), 100).status == AccessStatus::OK);
  CHECK(v.deadline() == kStart + 100 * 128);
  v.clock.advance(128 * 40);
  CHECK(v.lapic->msrRead(regMsr(Reg::TIMER_CURRENT_COUNT)).value == 60);
  // The current count is read-only: WRMSR to it raises #GP in x2APIC mode.
  CHECK(v.lapic->msrWrite(regMsr(Reg::TIMER_CURRENT_COUNT), 1).status == AccessStatus::GP);
  CHECK(v.fireAt(kStart + 100 * 128) == 1);
  CHECK(v.inIrr(kVector));
}

TEST_CASE("APIC Timer: INIT stops the timer", "[lapic-timer][reset]") {
  Vcpu v;
  v.write(kLvtTimerAddr, kVector | kPeriodic);
  v.write(kInitialCountAddr, 1'000'000);
  v.lapic->init();
  CHECK(v.lapic->timerDeadlineNs() == nullptr);
  CHECK(v.lapic->readRegister(Reg::LVT_TIMER) & kMasked);  // LVT masked after INIT
  CHECK(v.lapic->readRegister(Reg::TIMER_INITIAL_COUNT) == 0);
  CHECK(v.fireAt(kStart + 5'000'000) == 0);
}

TEST_CASE("APIC Timer: a restored vCPU continues its count", "[lapic-timer][save-restore]") {
  Vcpu source;
  source.write(kLvtTimerAddr, kVector | kOneShot);
  source.write(kInitialCountAddr, 1'000'000);
  source.clock.advance(400'000);
  LapicSnapshot snapshot = source.lapic->save();

  SECTION("with the hidden-state record") {
    Vcpu destination(LapicConfig(), 50'000'000'000);
    auto problem = destination.lapic->restore(snapshot);
    REQUIRE(problem == nullptr);
    CHECK(destination.read(kCurrentCountAddr) == 600'000);
    CHECK(destination.read(kInitialCountAddr) == 1'000'000);
    CHECK(destination.deadline() == 50'000'000'000 + 600'000);
    CHECK(destination.fireAt(50'000'000'000 + 600'000) == 1);
    CHECK(destination.inIrr(kVector));
  }
  SECTION("from KVM's layout alone (the saved current count)") {
    snapshot.hidden = nullptr;
    Vcpu destination(LapicConfig(), 50'000'000'000);
    auto problem = destination.lapic->restore(snapshot);
    REQUIRE(problem == nullptr);
    CHECK(destination.read(kCurrentCountAddr) == 600'000);
    CHECK(destination.deadline() == 50'000'000'000 + 600'000);
  }
}

TEST_CASE("APIC Timer: a restored vCPU keeps its TSC deadline", "[lapic-timer][save-restore]") {
  Vcpu source;
  source.write(kLvtTimerAddr, kVector | kTscDeadline);
  uint64_t deadline = source.tsc.now() + 300'000;
  source.lapic->msrWrite(kMsrTscDeadline, deadline);
  source.clock.advance(100'000);
  uint64_t tscAtSave = source.tsc.now();
  LapicSnapshot snapshot = source.lapic->save();

  Vcpu destination(LapicConfig(), 7'000'000'000);
  destination.tsc.setNow(tscAtSave);  // the VM's TSC continues across the move
  REQUIRE(destination.lapic->restore(snapshot) == nullptr);
  CHECK(destination.lapic->msrRead(kMsrTscDeadline).value == deadline);
  CHECK(destination.deadline() == 7'000'000'000 + 200'000);
  CHECK(destination.fireAt(7'000'000'000 + 200'000) == 1);
  CHECK(destination.inIrr(kVector));
  CHECK(destination.lapic->msrRead(kMsrTscDeadline).value == 0);
}

TEST_CASE("APIC Timer: an expiry due at save time is delivered once after restore",
          "[lapic-timer][save-restore]") {
  Vcpu source;
  source.write(kLvtTimerAddr, kVector | kOneShot);
  source.write(kInitialCountAddr, 1000);
  source.clock.advance(5000);  // expired; the server has not run onTimer yet
  LapicSnapshot snapshot = source.lapic->save();

  Vcpu destination;
  REQUIRE(destination.lapic->restore(snapshot) == nullptr);
  CHECK(destination.inIrr(kVector));
  CHECK(destination.lapic->onTimer() == 0);
  CHECK(destination.lapic->stats().timerExpiries == 1);
}

}  // namespace
}  // namespace vlapic
