// SPDX-License-Identifier: MIT
// The LAPIC timer on a virtual clock: SDM Vol. 3A, 11.5.4 "APIC Timer" and
// 11.5.4.1 "TSC-Deadline Mode", with KVM's choices where the SDM leaves one
// (mode switches, minimum period, coalescing of late periodic expiries).
// Every case advances a ManualClock by hand: no sleeps, no real time.

#include "server/core/timer.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>

namespace vlapic {
namespace {

using u128 = unsigned __int128;

constexpr uint64_t kStart = 1'000'000'000;  // ManualClock's default start
constexpr uint64_t kTscHz = 2'000'000'000;

// DCR encodings (bits 3,1,0) and their divide values, SDM Figure 11-10.
struct DivideCase {
  uint32_t dcr;
  uint32_t divide;
};
constexpr DivideCase kDivides[] = {
    {0x0, 2},  {0x1, 4},  {0x2, 8},   {0x3, 16},
    {0x8, 32}, {0x9, 64}, {0xA, 128}, {0xB, 1},
};
constexpr uint32_t kDcrDivideBy1 = 0xB;
constexpr uint32_t kDcrDivideBy2 = 0x0;
constexpr uint32_t kDcrDivideBy8 = 0x2;
constexpr uint32_t kDcrDivideBy128 = 0xA;

// A vCPU's timer on a hand-driven clock.
struct Rig {
  explicit Rig(TimerConfig config = TimerConfig(), uint64_t tscHz = kTscHz)
      : tsc(clock, tscHz), timer(tsc, config) {}
  hal::ManualClock clock{kStart};
  GuestTsc tsc;
  ApicTimer timer;
};

TimerConfig noMinimumPeriod() {
  TimerConfig config;
  config.minPeriodNs = 0;
  return config;
}

uint64_t deadlineOf(const ApicTimer& timer) {
  KJ_IF_MAYBE(deadline, timer.deadlineNs()) {
    return *deadline;
  }
  FAIL("timer has no deadline");
  return 0;
}

// A stopped timer: nothing armed, counts and the TSC deadline read 0, and no
// expiry comes however long the clock runs.
void checkStaysQuiet(Rig& rig, uint64_t waitNs = 100'000'000) {
  CHECK_FALSE(rig.timer.armed());
  CHECK(rig.timer.currentCount() == 0);
  CHECK(rig.timer.readTscDeadline() == 0);
  CHECK(rig.timer.deadlineNs() == nullptr);
  rig.clock.advance(waitNs);
  CHECK_FALSE(rig.timer.expiryDue());
  CHECK(rig.timer.expire() == 0);
}

// ---------------------------------------------------------------------------
// Divide configuration

TEST_CASE("APIC Timer (SDM 11.5.4): DCR bits 3,1,0 select all eight divide values",
          "[timer][dcr]") {
  for (auto c : kDivides) {
    INFO("dcr " << c.dcr);
    CHECK(ApicTimer::divideValue(c.dcr) == c.divide);
    // Bit 2 is reserved and does not take part in the encoding.
    CHECK(ApicTimer::divideValue(c.dcr | 0x4) == c.divide);
  }
}

TEST_CASE("APIC Timer (SDM 11.5.4): the count decrements at the input clock / divide",
          "[timer][dcr][one-shot]") {
  for (auto c : kDivides) {
    INFO("divide " << c.divide);
    Rig rig;
    rig.timer.writeDivideConfig(c.dcr);
    CHECK(rig.timer.divideConfig() == c.dcr);
    rig.timer.writeInitialCount(1000);
    CHECK(deadlineOf(rig.timer) == kStart + 1000ull * c.divide);
    rig.clock.advance(10ull * c.divide);
    CHECK(rig.timer.currentCount() == 990);
    rig.clock.advance(990ull * c.divide - 1);
    CHECK(rig.timer.currentCount() == 1);
    CHECK(rig.timer.expire() == 0);
    rig.clock.advance(1);
    CHECK(rig.timer.currentCount() == 0);
    CHECK(rig.timer.expire() == 1);
  }
}

TEST_CASE("APIC Timer: a slower input clock gives longer counts", "[timer][config]") {
  TimerConfig config;
  config.timerHz = 25'000'000;  // a 25 MHz bus clock: 40 ns a tick
  Rig rig(config);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(100);
  CHECK(deadlineOf(rig.timer) == kStart + 4000);
  rig.clock.advance(400);
  CHECK(rig.timer.currentCount() == 90);
}

// ---------------------------------------------------------------------------
// One-shot

TEST_CASE("APIC Timer (SDM 11.5.4): one-shot counts down once, expires once and stays 0",
          "[timer][one-shot]") {
  Rig rig;
  CHECK(rig.timer.mode() == TimerMode::ONE_SHOT);
  CHECK(rig.timer.currentCount() == 0);  // stopped after reset
  CHECK(rig.timer.deadlineNs() == nullptr);

  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(5000);
  CHECK(rig.timer.armed());
  CHECK(rig.timer.initialCount() == 5000);
  CHECK(rig.timer.currentCount() == 5000);
  rig.clock.advance(1);
  CHECK(rig.timer.currentCount() == 4999);
  rig.clock.advance(2999);
  CHECK(rig.timer.currentCount() == 2000);
  CHECK_FALSE(rig.timer.expiryDue());
  CHECK(rig.timer.expire() == 0);

  rig.clock.advance(2000);
  CHECK(rig.timer.expiryDue());
  CHECK(rig.timer.currentCount() == 0);  // 0 at expiry even before expire()
  CHECK(rig.timer.expire() == 1);
  CHECK_FALSE(rig.timer.armed());
  CHECK(rig.timer.deadlineNs() == nullptr);
  CHECK(rig.timer.currentCount() == 0);
  CHECK(rig.timer.initialCount() == 5000);  // TMICT keeps its value

  rig.clock.advance(1'000'000'000);
  CHECK(rig.timer.currentCount() == 0);
  CHECK(rig.timer.expire() == 0);  // no second expiry
}

TEST_CASE("APIC Timer: the count reads the initial count for its whole first tick",
          "[timer][one-shot]") {
  // A hardware down-counter decrements at the end of each tick and reaches 0
  // exactly when it fires.
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy128);
  rig.timer.writeInitialCount(10);
  rig.clock.advance(127);
  CHECK(rig.timer.currentCount() == 10);
  rig.clock.advance(1);
  CHECK(rig.timer.currentCount() == 9);
  rig.clock.advance(128 * 9 - 1);
  CHECK(rig.timer.currentCount() == 1);
  CHECK(rig.timer.expire() == 0);
  rig.clock.advance(1);
  CHECK(rig.timer.currentCount() == 0);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.4): writing the initial count restarts the count",
          "[timer][one-shot]") {
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(1000);
  rig.clock.advance(600);
  CHECK(rig.timer.currentCount() == 400);
  rig.timer.writeInitialCount(1000);
  CHECK(rig.timer.currentCount() == 1000);
  CHECK(deadlineOf(rig.timer) == kStart + 1600);
  rig.clock.advance(999);
  CHECK(rig.timer.expire() == 0);
  rig.timer.writeInitialCount(50);  // a shorter count restarts too
  CHECK(deadlineOf(rig.timer) == kStart + 1599 + 50);
  rig.clock.advance(50);
  CHECK(rig.timer.expire() == 1);
  // After expiry, a new initial count arms it again.
  rig.timer.writeInitialCount(7);
  CHECK(rig.timer.currentCount() == 7);
  rig.clock.advance(7);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.4): writing 0 to the initial count stops the timer",
          "[timer][one-shot][periodic]") {
  for (TimerMode mode : {TimerMode::ONE_SHOT, TimerMode::PERIODIC}) {
    INFO("mode " << int(mode));
    Rig rig;
    rig.timer.setMode(mode);
    rig.timer.writeInitialCount(1'000'000);
    rig.clock.advance(1000);
    rig.timer.writeInitialCount(0);
    checkStaysQuiet(rig);
  }
}

TEST_CASE("APIC Timer: an expiry due before a reprogramming is still delivered",
          "[timer][one-shot]") {
  // The server fires at the deadline, but a register write may be processed
  // first: the interrupt that was due must not be lost.
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(100);
  rig.clock.advance(150);
  rig.timer.writeInitialCount(300);   // restarts; the old expiry is pending
  CHECK(rig.timer.expiryDue());
  CHECK(deadlineOf(rig.timer) == kStart + 100);  // report the old due time
  CHECK(rig.timer.currentCount() == 300);
  CHECK(rig.timer.expire() == 1);
  CHECK(deadlineOf(rig.timer) == kStart + 150 + 300);
  rig.clock.advance(300);
  CHECK(rig.timer.expire() == 1);
}

// ---------------------------------------------------------------------------
// Periodic

TEST_CASE("APIC Timer (SDM 11.5.4): periodic reloads the initial count at each expiry",
          "[timer][periodic]") {
  Rig rig;
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy8);
  rig.timer.writeInitialCount(100'000);  // 800 us
  rig.clock.advance(800'000);
  CHECK(rig.timer.currentCount() == 100'000);  // reloaded, before expire() too
  CHECK(rig.timer.expire() == 1);
  CHECK(rig.timer.armed());
  CHECK(rig.timer.currentCount() == 100'000);
  rig.clock.advance(8);
  CHECK(rig.timer.currentCount() == 99'999);
  CHECK(deadlineOf(rig.timer) == kStart + 1'600'000);
}

TEST_CASE("APIC Timer: periodic never drifts, each period from the previous deadline",
          "[timer][periodic][drift]") {
  // Expiries handled late by a varying amount (as a loaded host does) must
  // not shift the grid: the Nth deadline is exactly start + N * period.
  Rig rig;
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  const uint64_t period = 1'000'003;  // ~1 ms, odd on purpose
  rig.timer.writeInitialCount(period);
  uint64_t lateness = 1;
  for (uint64_t n = 1; n <= 20'000; ++n) {
    uint64_t due = kStart + n * period;
    REQUIRE(deadlineOf(rig.timer) == due);
    lateness = (lateness * 7919 + 13) % 400'000;  // up to 40% of a period late
    rig.clock.set(due + lateness);
    REQUIRE(rig.timer.expire() == 1);
  }
  CHECK(deadlineOf(rig.timer) == kStart + 20'001 * period);
}

TEST_CASE("APIC Timer: periodic with a period of fractional ns does not drift",
          "[timer][periodic][drift]") {
  // At a 3 GHz input clock and divide 1 a count lasts 1/3 ns: 1'000'001
  // counts last 333'333.67 ns. Rounding each period to whole ns would drift
  // by up to 1 ns a period (3 ppm here); the grid must stay exact.
  TimerConfig config;
  config.timerHz = 3'000'000'000;
  config.minPeriodNs = 0;
  Rig rig(config);
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(1'000'001);
  for (uint64_t n = 1; n <= 30'000; ++n) {
    // Deadline N is start + N * 1'000'001 / 3 ns, rounded up (never early).
    uint64_t due = kStart + (n * 1'000'001 + 2) / 3;
    REQUIRE(deadlineOf(rig.timer) == due);
    rig.clock.set(due);
    REQUIRE(rig.timer.expire() == 1);
  }
}

TEST_CASE("APIC Timer: late periodic expiries coalesce and stay on the original grid",
          "[timer][periodic][coalesce]") {
  Rig rig;
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  const uint64_t period = 1'000'000;
  rig.timer.writeInitialCount(period);

  // The host handles it 5.5 periods late: deadlines 1..5 have passed.
  rig.clock.set(kStart + 5 * period + period / 2);
  CHECK(rig.timer.currentCount() == period / 2);  // on the grid already
  CHECK(rig.timer.expire() == 5);                 // one interrupt, 5 merged
  CHECK(deadlineOf(rig.timer) == kStart + 6 * period);
  CHECK(rig.timer.currentCount() == period / 2);
  CHECK(rig.timer.expire() == 0);

  // Exactly on a grid point: that deadline counts.
  rig.clock.set(kStart + 9 * period);
  CHECK(rig.timer.expire() == 4);
  CHECK(deadlineOf(rig.timer) == kStart + 10 * period);

  // A very long stall (a suspended host) saturates instead of wrapping.
  rig.clock.set(kStart + 10 * period + (uint64_t(1) << 32) * period + 17);
  CHECK(rig.timer.expire() == 0xFFFFFFFFu);
  CHECK(deadlineOf(rig.timer) == kStart + 11 * period + (uint64_t(1) << 32) * period);
}

TEST_CASE("APIC Timer: periodic timers are clamped to the minimum period",
          "[timer][periodic][min-period]") {
  SECTION("KVM's default of 200 us") {
    Rig rig;
    rig.timer.setMode(TimerMode::PERIODIC);
    rig.timer.writeDivideConfig(kDcrDivideBy1);
    rig.timer.writeInitialCount(1000);  // 1 us asked for
    CHECK(deadlineOf(rig.timer) == kStart + 200'000);
    // The count still runs from the initial count to 0, over the longer period.
    CHECK(rig.timer.currentCount() == 1000);
    rig.clock.advance(100'000);
    CHECK(rig.timer.currentCount() == 500);
    rig.clock.advance(100'000);
    CHECK(rig.timer.expire() == 1);
    CHECK(deadlineOf(rig.timer) == kStart + 400'000);
    // A storm is impossible: 1 ms holds at most 5 expiries.
    rig.clock.set(kStart + 1'000'000);
    CHECK(rig.timer.expire() == 4);
  }
  SECTION("configurable") {
    TimerConfig config;
    config.minPeriodNs = 50'000;
    Rig rig(config);
    rig.timer.setMode(TimerMode::PERIODIC);
    rig.timer.writeDivideConfig(kDcrDivideBy1);
    rig.timer.writeInitialCount(1000);
    CHECK(deadlineOf(rig.timer) == kStart + 50'000);
    rig.timer.writeInitialCount(50'000);  // exactly the minimum: unchanged
    CHECK(deadlineOf(rig.timer) == kStart + 50'000);
    rig.timer.writeInitialCount(60'000);
    CHECK(deadlineOf(rig.timer) == kStart + 60'000);
  }
  SECTION("0 disables the clamp") {
    Rig rig(noMinimumPeriod());
    rig.timer.setMode(TimerMode::PERIODIC);
    rig.timer.writeDivideConfig(kDcrDivideBy1);
    rig.timer.writeInitialCount(1000);
    CHECK(deadlineOf(rig.timer) == kStart + 1000);
  }
  SECTION("one-shot is never clamped") {
    Rig rig;
    rig.timer.writeDivideConfig(kDcrDivideBy1);
    rig.timer.writeInitialCount(1000);
    CHECK(deadlineOf(rig.timer) == kStart + 1000);
  }
}

// ---------------------------------------------------------------------------
// Divide change while counting

TEST_CASE("APIC Timer: a DCR write mid-count keeps the count and rescales the time left",
          "[timer][dcr]") {
  SECTION("one-shot, slower") {
    Rig rig;
    rig.timer.writeDivideConfig(kDcrDivideBy2);
    rig.timer.writeInitialCount(1000);  // 2000 ns
    rig.clock.advance(500);
    CHECK(rig.timer.currentCount() == 750);
    rig.timer.writeDivideConfig(kDcrDivideBy8);
    CHECK(rig.timer.currentCount() == 750);
    CHECK(deadlineOf(rig.timer) == kStart + 500 + 750 * 8);
    rig.clock.advance(8);
    CHECK(rig.timer.currentCount() == 749);
    rig.clock.set(kStart + 500 + 6000 - 1);
    CHECK(rig.timer.expire() == 0);
    rig.clock.advance(1);
    CHECK(rig.timer.expire() == 1);
  }
  SECTION("periodic, faster: later periods use the new divide") {
    Rig rig(noMinimumPeriod());
    rig.timer.setMode(TimerMode::PERIODIC);
    rig.timer.writeDivideConfig(kDcrDivideBy128);
    rig.timer.writeInitialCount(1000);  // 128 us
    rig.clock.advance(128 * 400);
    CHECK(rig.timer.currentCount() == 600);
    rig.timer.writeDivideConfig(kDcrDivideBy1);
    CHECK(rig.timer.currentCount() == 600);
    uint64_t next = kStart + 128 * 400 + 600;
    CHECK(deadlineOf(rig.timer) == next);
    rig.clock.set(next);
    CHECK(rig.timer.expire() == 1);
    CHECK(deadlineOf(rig.timer) == next + 1000);
  }
  SECTION("while stopped, the new divide applies to the next count") {
    Rig rig;
    rig.timer.writeDivideConfig(kDcrDivideBy128);
    CHECK(rig.timer.deadlineNs() == nullptr);
    rig.timer.writeInitialCount(3);
    CHECK(deadlineOf(rig.timer) == kStart + 3 * 128);
  }
  SECTION("the same divide written again changes nothing") {
    Rig rig;
    rig.timer.writeDivideConfig(kDcrDivideBy8);
    rig.timer.writeInitialCount(1000);
    rig.clock.advance(3);
    rig.timer.writeDivideConfig(kDcrDivideBy8 | 0x4);  // reserved bit 2 dropped
    CHECK(rig.timer.divideConfig() == kDcrDivideBy8);
    CHECK(deadlineOf(rig.timer) == kStart + 8000);
  }
}

// ---------------------------------------------------------------------------
// Mode switches (KVM's behaviour; the SDM says any change disarms)

TEST_CASE("APIC Timer: one-shot to periodic keeps the running count", "[timer][mode]") {
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(1'000'000);
  rig.clock.advance(300'000);
  rig.timer.setMode(TimerMode::PERIODIC);
  CHECK(rig.timer.mode() == TimerMode::PERIODIC);
  CHECK(rig.timer.currentCount() == 700'000);  // not reloaded
  CHECK(deadlineOf(rig.timer) == kStart + 1'000'000);
  rig.clock.set(kStart + 1'000'000);
  CHECK(rig.timer.expire() == 1);
  CHECK(rig.timer.currentCount() == 1'000'000);  // now it reloads
  CHECK(deadlineOf(rig.timer) == kStart + 2'000'000);
}

TEST_CASE("APIC Timer: periodic to one-shot finishes the current count, then stops",
          "[timer][mode]") {
  Rig rig;
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(1'000'000);
  rig.clock.advance(2'400'000);
  CHECK(rig.timer.expire() == 2);
  rig.timer.setMode(TimerMode::ONE_SHOT);
  CHECK(rig.timer.currentCount() == 600'000);
  rig.clock.set(kStart + 3'000'000);
  CHECK(rig.timer.expire() == 1);
  CHECK_FALSE(rig.timer.armed());
  CHECK(rig.timer.currentCount() == 0);
  rig.clock.advance(5'000'000);
  CHECK(rig.timer.expire() == 0);
}

TEST_CASE("APIC Timer: an expired one-shot switched to periodic stays at 0",
          "[timer][mode]") {
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(1000);
  rig.clock.advance(1000);
  CHECK(rig.timer.expire() == 1);
  rig.timer.setMode(TimerMode::PERIODIC);
  CHECK(rig.timer.currentCount() == 0);
  CHECK(rig.timer.deadlineNs() == nullptr);
  rig.clock.advance(10'000'000);
  CHECK(rig.timer.expire() == 0);

  SECTION("also when the expiry was not collected before the switch") {
    rig.timer.setMode(TimerMode::ONE_SHOT);
    rig.timer.writeInitialCount(1000);
    rig.clock.advance(1500);
    rig.timer.setMode(TimerMode::PERIODIC);
    CHECK(rig.timer.currentCount() == 0);
    CHECK(rig.timer.expire() == 1);  // the one-shot's own expiry, once
    rig.clock.advance(10'000'000);
    CHECK(rig.timer.expire() == 0);
  }
}

TEST_CASE("APIC Timer: a mode switch keeps the running count's rate, the clamp applies "
          "from the next period", "[timer][mode][min-period]") {
  // A 10 us one-shot, half done, becomes periodic under a 200 us minimum:
  // the running count ends when it would have (KVM), later periods are
  // clamped.
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(10'000);
  rig.clock.advance(5'000);
  rig.timer.setMode(TimerMode::PERIODIC);
  CHECK(rig.timer.currentCount() == 5'000);
  CHECK(deadlineOf(rig.timer) == kStart + 10'000);
  rig.clock.advance(2'500);
  CHECK(rig.timer.currentCount() == 2'500);
  rig.clock.set(kStart + 10'000);
  CHECK(rig.timer.expire() == 1);
  CHECK(rig.timer.currentCount() == 10'000);
  CHECK(deadlineOf(rig.timer) == kStart + 210'000);

  // And back: the clamped count now running keeps its rate to its end.
  rig.clock.advance(50'000);
  CHECK(rig.timer.currentCount() == 7'500);
  rig.timer.setMode(TimerMode::ONE_SHOT);
  CHECK(rig.timer.currentCount() == 7'500);
  CHECK(deadlineOf(rig.timer) == kStart + 210'000);
  rig.clock.set(kStart + 210'000);
  CHECK(rig.timer.expire() == 1);
  CHECK_FALSE(rig.timer.armed());
}

TEST_CASE("APIC Timer: a divide change after a mode switch rescales the running count",
          "[timer][mode][dcr][min-period]") {
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(10'000);
  rig.clock.advance(5'000);
  rig.timer.setMode(TimerMode::PERIODIC);  // running count: 10 us long
  rig.timer.writeDivideConfig(kDcrDivideBy2);
  CHECK(rig.timer.currentCount() == 5'000);
  CHECK(deadlineOf(rig.timer) == kStart + 5'000 + 10'000);  // 5000 counts at 2 ns
  rig.clock.advance(2);
  CHECK(rig.timer.currentCount() == 4'999);
  rig.clock.set(kStart + 15'000);
  CHECK(rig.timer.expire() == 1);
  CHECK(deadlineOf(rig.timer) == kStart + 15'000 + 200'000);  // 20 us, clamped
}

// A periodic timer of 1000 counts at divide 1 (1 us asked, clamped to the
// 200 us minimum), switched to one-shot a quarter into its count: the
// running count keeps its 200 us length (KVM), a one-shot period is 1 us.
void switchClampedCountToOneShot(Rig& rig) {
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(1'000);
  rig.clock.advance(50'000);
  rig.timer.setMode(TimerMode::ONE_SHOT);
}

TEST_CASE("APIC Timer: save/restore right after a mode switch keeps the deadline",
          "[timer][mode][save-restore]") {
  // A clamped periodic count (1 us asked, 200 us run) switched to one-shot
  // runs longer than the one-shot period; the snapshot still restores its
  // deadline exactly.
  Rig source;
  switchClampedCountToOneShot(source);
  CHECK(source.timer.currentCount() == 750);
  TimerSnapshot snapshot = source.timer.save();
  CHECK(snapshot.remainingNs == 150'000);
  CHECK(source.timer.checkSnapshot(snapshot) == nullptr);

  Rig destination;
  destination.timer.restore(snapshot);
  CHECK(deadlineOf(destination.timer) == kStart + 150'000);
  // The snapshot carries the running count's length (200 us, not the 1 us
  // one-shot period), so the count reads back at the same rate.
  CHECK(snapshot.countLengthNs == 200'000);
  CHECK(destination.timer.currentCount() == 750);
  destination.clock.advance(100'000);
  CHECK(destination.timer.currentCount() == 250);
  destination.clock.set(kStart + 150'000);
  CHECK(destination.timer.expire() == 1);
  CHECK_FALSE(destination.timer.armed());
}

TEST_CASE("APIC Timer: save/restore after a mode switch and a divide change keeps the count",
          "[timer][mode][dcr][min-period][save-restore]") {
  // Fuzz finding restore-remaining-exceeds-period: a clamped periodic count
  // (1000 counts asked at divide 1, 200 us run) switched to one-shot, then
  // rescaled to divide 128 (SDM 11.5.4: the count continues at the new
  // rate). The time left is then 128 times the rest of the clamped count,
  // longer than any full period of 1000 counts at divide 128 (128 us), and
  // the snapshot must still restore, with the same count and deadline.
  Rig source;
  switchClampedCountToOneShot(source);
  source.timer.writeDivideConfig(kDcrDivideBy128);
  CHECK(source.timer.currentCount() == 750);
  CHECK(deadlineOf(source.timer) == kStart + 50'000 + 128 * 150'000);
  TimerSnapshot snapshot = source.timer.save();
  CHECK(snapshot.remainingNs == 128 * 150'000);
  CHECK(snapshot.countLengthNs == 128 * 200'000);
  REQUIRE(source.timer.checkSnapshot(snapshot) == nullptr);

  Rig destination;
  destination.clock.set(kStart + 50'000);
  destination.timer.restore(snapshot);
  CHECK(destination.timer.currentCount() == 750);
  CHECK(deadlineOf(destination.timer) == deadlineOf(source.timer));
  for (uint64_t step : {1ull, 25'600ull, 1'000'000ull, 18'173'399ull}) {
    source.clock.advance(step);
    destination.clock.advance(step);
    CHECK(destination.timer.currentCount() == source.timer.currentCount());
  }
  destination.clock.set(deadlineOf(source.timer));
  CHECK(destination.timer.expire() == 1);
  CHECK_FALSE(destination.timer.armed());

  // A running count longer than even the rescaled clamp allows is refused.
  TimerSnapshot tooLong = snapshot;
  tooLong.countLengthNs = 128 * 200'000 + 1;
  CHECK(source.timer.checkSnapshot(tooLong) != nullptr);
  // So is time left beyond the running count.
  TimerSnapshot beyond = snapshot;
  beyond.remainingNs = snapshot.countLengthNs + 1;
  CHECK(source.timer.checkSnapshot(beyond) != nullptr);
}

TEST_CASE("APIC Timer: switching into TSC-deadline mode disarms and zeroes the count",
          "[timer][mode][tsc-deadline]") {
  for (TimerMode from : {TimerMode::ONE_SHOT, TimerMode::PERIODIC}) {
    INFO("from mode " << int(from));
    Rig rig;
    rig.timer.setMode(from);
    rig.timer.writeInitialCount(1'000'000);
    rig.clock.advance(1000);
    rig.timer.setMode(TimerMode::TSC_DEADLINE);
    CHECK(rig.timer.initialCount() == 0);  // KVM zeroes TMICT
    checkStaysQuiet(rig);
  }
}

TEST_CASE("APIC Timer: switching out of TSC-deadline mode disarms the deadline",
          "[timer][mode][tsc-deadline]") {
  for (TimerMode to : {TimerMode::ONE_SHOT, TimerMode::PERIODIC}) {
    INFO("to mode " << int(to));
    Rig rig;
    rig.timer.setMode(TimerMode::TSC_DEADLINE);
    rig.timer.writeTscDeadline(rig.tsc.now() + 10'000);
    CHECK(rig.timer.armed());
    rig.timer.setMode(to);
    checkStaysQuiet(rig);
    // Back in TSC-deadline mode, the old deadline stays gone.
    rig.timer.setMode(TimerMode::TSC_DEADLINE);
    CHECK(rig.timer.readTscDeadline() == 0);
    CHECK(rig.timer.deadlineNs() == nullptr);
  }
}

TEST_CASE("APIC Timer: rewriting the same mode changes nothing", "[timer][mode]") {
  // Every LVT Timer write (mask, vector) reaches setMode.
  Rig rig;
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(300'000);
  rig.clock.advance(1234);
  rig.timer.setMode(TimerMode::PERIODIC);
  CHECK(rig.timer.currentCount() == 300'000 - 1234);
  CHECK(deadlineOf(rig.timer) == kStart + 300'000);

  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  rig.timer.writeTscDeadline(rig.tsc.now() + 500);
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  CHECK(rig.timer.readTscDeadline() == rig.tsc.now() + 500);
}

// ---------------------------------------------------------------------------
// TSC-deadline mode (SDM 11.5.4.1)

TEST_CASE("APIC Timer (SDM 11.5.4.1): TSC-deadline arms at an absolute guest TSC",
          "[timer][tsc-deadline]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  CHECK_FALSE(rig.timer.armed());
  uint64_t deadline = rig.tsc.now() + 2'000'001;  // 2 GHz TSC: 1000000.5 ns
  rig.timer.writeTscDeadline(deadline);
  CHECK(rig.timer.armed());
  CHECK(rig.timer.readTscDeadline() == deadline);
  CHECK(deadlineOf(rig.timer) == kStart + 1'000'001);  // rounded up, never early
  CHECK(rig.timer.currentCount() == 0);                // count reads 0 in this mode

  rig.clock.set(kStart + 1'000'000);
  CHECK(rig.tsc.now() < deadline);
  CHECK_FALSE(rig.timer.expiryDue());
  CHECK(rig.timer.expire() == 0);
  CHECK(rig.timer.readTscDeadline() == deadline);

  rig.clock.advance(1);
  CHECK(rig.tsc.now() >= deadline);
  CHECK(rig.timer.readTscDeadline() == 0);  // fired
  CHECK(rig.timer.expire() == 1);
  checkStaysQuiet(rig);  // one expiry per deadline
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): re-arming replaces the TSC deadline",
          "[timer][tsc-deadline]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  uint64_t t0 = rig.tsc.now();
  rig.timer.writeTscDeadline(t0 + 10'000);
  rig.timer.writeTscDeadline(t0 + 2'000);  // earlier
  CHECK(rig.timer.readTscDeadline() == t0 + 2'000);
  CHECK(deadlineOf(rig.timer) == kStart + 1'000);
  rig.timer.writeTscDeadline(t0 + 40'000);  // later
  CHECK(deadlineOf(rig.timer) == kStart + 20'000);
  rig.clock.advance(19'999);
  CHECK(rig.timer.expire() == 0);
  rig.clock.advance(1);
  CHECK(rig.timer.expire() == 1);  // exactly one, for the last deadline
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): writing 0 disarms the TSC deadline",
          "[timer][tsc-deadline]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  rig.timer.writeTscDeadline(rig.tsc.now() + 1000);
  rig.timer.writeTscDeadline(0);
  checkStaysQuiet(rig);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): a TSC deadline already past fires at once",
          "[timer][tsc-deadline]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  rig.clock.advance(5'000);
  uint64_t past = rig.tsc.now() - 1;
  rig.timer.writeTscDeadline(past);
  // Due with no time passing: the core collects it before the WRMSR returns.
  CHECK(rig.timer.expiryDue());
  CHECK(deadlineOf(rig.timer) <= rig.clock.nowNs());
  CHECK(rig.timer.readTscDeadline() == 0);
  CHECK(rig.timer.expire() == 1);
  CHECK(rig.timer.expire() == 0);

  // "Now" exactly is due too, and so is a deadline of 1 (long past).
  rig.timer.writeTscDeadline(rig.tsc.now());
  CHECK(rig.timer.expire() == 1);
  rig.timer.writeTscDeadline(1);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): a deadline that fell due before a re-arm still fires",
          "[timer][tsc-deadline]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  uint64_t t0 = rig.tsc.now();
  rig.timer.writeTscDeadline(t0 + 100);
  rig.clock.advance(60);  // 120 ticks: due, not yet collected
  rig.timer.writeTscDeadline(t0 + 1'000);
  CHECK(rig.timer.expire() == 1);  // the first deadline's interrupt
  CHECK(rig.timer.readTscDeadline() == t0 + 1'000);
  rig.clock.set(kStart + 500);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): IA32_TSC_DEADLINE is ignored outside its mode",
          "[timer][tsc-deadline]") {
  for (TimerMode mode : {TimerMode::ONE_SHOT, TimerMode::PERIODIC}) {
    INFO("mode " << int(mode));
    Rig rig;
    rig.timer.setMode(mode);
    rig.timer.writeTscDeadline(rig.tsc.now() + 1000);
    checkStaysQuiet(rig, 0);
    // Entering the mode afterwards does not resurrect the ignored write.
    rig.timer.setMode(TimerMode::TSC_DEADLINE);
    checkStaysQuiet(rig);
  }
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): initial-count writes are ignored in TSC-deadline mode",
          "[timer][tsc-deadline]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  uint64_t deadline = rig.tsc.now() + 4'000;
  rig.timer.writeTscDeadline(deadline);
  rig.timer.writeInitialCount(10);
  CHECK(rig.timer.initialCount() == 0);
  CHECK(rig.timer.currentCount() == 0);
  CHECK(rig.timer.readTscDeadline() == deadline);
  rig.clock.advance(10);
  CHECK(rig.timer.expire() == 0);  // no countdown started
  rig.clock.advance(1'990);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer: a TSC deadline follows a later change of the guest TSC offset",
          "[timer][tsc-deadline][tsc]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  uint64_t deadline = rig.tsc.now() + 20'000;  // 10 us ahead
  rig.timer.writeTscDeadline(deadline);
  CHECK(deadlineOf(rig.timer) == kStart + 10'000);
  // The VMM moves the guest TSC forward by 4 us worth of ticks.
  rig.tsc.setOffset(rig.tsc.getOffset() + 8'000);
  CHECK(deadlineOf(rig.timer) == kStart + 6'000);
  rig.clock.advance(6'000);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): the DCR has no effect in TSC-deadline mode",
          "[timer][tsc-deadline][dcr]") {
  Rig rig;
  rig.timer.setMode(TimerMode::TSC_DEADLINE);
  uint64_t deadline = rig.tsc.now() + 6'000;
  rig.timer.writeTscDeadline(deadline);
  rig.timer.writeDivideConfig(kDcrDivideBy128);
  CHECK(rig.timer.divideConfig() == kDcrDivideBy128);  // stored for later
  CHECK(rig.timer.readTscDeadline() == deadline);
  CHECK(deadlineOf(rig.timer) == kStart + 3'000);
  rig.clock.advance(3'000);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer (SDM 11.5.4.1): a TSC deadline beyond host time stays armed, never fires",
          "[timer][tsc-deadline][overflow]") {
  // At 1 kHz the TSC needs 2^64 / 1000 s to reach 2^64 - 1: more ns than a
  // uint64_t holds. The deadline saturates rather than wrapping into the past.
  hal::ManualClock clock(kStart);
  GuestTsc slowTsc(clock, 1'000);
  ApicTimer timer(slowTsc, TimerConfig());
  timer.setMode(TimerMode::TSC_DEADLINE);
  timer.writeTscDeadline(~uint64_t(0));
  CHECK(timer.armed());
  CHECK(timer.readTscDeadline() == ~uint64_t(0));
  CHECK(deadlineOf(timer) == ~uint64_t(0));
  clock.set(uint64_t(1) << 63);
  CHECK(timer.expire() == 0);
}

// ---------------------------------------------------------------------------
// Large counts: 128-bit arithmetic

TEST_CASE("APIC Timer: the longest count at divide 128 is exact", "[timer][overflow]") {
  // 0xFFFFFFFF * 128 * 1e9 needs 70 bits.
  Rig rig;
  rig.timer.writeDivideConfig(kDcrDivideBy128);
  rig.timer.writeInitialCount(0xFFFFFFFF);
  const uint64_t total = 0xFFFFFFFFull * 128;  // ~550 s
  CHECK(deadlineOf(rig.timer) == kStart + total);
  rig.clock.advance(128 * 1000);
  CHECK(rig.timer.currentCount() == 0xFFFFFFFFu - 1000);
  rig.clock.set(kStart + total - 1);
  CHECK(rig.timer.currentCount() == 1);
  CHECK(rig.timer.expire() == 0);
  rig.clock.advance(1);
  CHECK(rig.timer.expire() == 1);
}

TEST_CASE("APIC Timer: an input clock that does not divide 1 GHz stays exact",
          "[timer][overflow][config]") {
  TimerConfig config;
  config.timerHz = 999'999'937;  // prime: no common factor with 1e9
  Rig rig(config);
  rig.timer.writeDivideConfig(kDcrDivideBy128);
  rig.timer.writeInitialCount(0xFFFFFFFF);
  u128 periodScaled = u128(0xFFFFFFFF) * 128 * 1'000'000'000;
  uint64_t expected = kStart + uint64_t((periodScaled + config.timerHz - 1) / config.timerHz);
  CHECK(deadlineOf(rig.timer) == expected);
  rig.clock.set(expected - 1);
  CHECK(rig.timer.currentCount() == 1);
  CHECK(rig.timer.expire() == 0);
  rig.clock.set(expected);
  CHECK(rig.timer.currentCount() == 0);
  CHECK(rig.timer.expire() == 1);
}

// ---------------------------------------------------------------------------
// RESET / INIT

TEST_CASE("APIC Timer: reset returns to one-shot, stopped, DCR 0", "[timer][reset]") {
  Rig rig;
  rig.timer.setMode(TimerMode::PERIODIC);
  rig.timer.writeDivideConfig(kDcrDivideBy1);
  rig.timer.writeInitialCount(300'000);
  rig.clock.advance(900'000);  // three expiries pending, uncollected
  rig.timer.reset();
  CHECK(rig.timer.mode() == TimerMode::ONE_SHOT);
  CHECK(rig.timer.divideConfig() == 0);
  CHECK(rig.timer.initialCount() == 0);
  checkStaysQuiet(rig, 0);
  CHECK(ApicTimer::divideValue(rig.timer.divideConfig()) == 2);
}

// ---------------------------------------------------------------------------
// Save / restore

TEST_CASE("APIC Timer: save/restore continues a one-shot with its remaining count",
          "[timer][save-restore]") {
  Rig source;
  source.timer.writeDivideConfig(kDcrDivideBy8);
  source.timer.writeInitialCount(100'000);  // 800 us
  source.clock.advance(300'000);
  CHECK(source.timer.currentCount() == 62'500);
  TimerSnapshot snapshot = source.timer.save();
  CHECK(snapshot.mode == TimerMode::ONE_SHOT);
  CHECK(snapshot.armed);
  CHECK(snapshot.remainingNs == 500'000);
  CHECK(snapshot.initialCount == 100'000);
  CHECK(snapshot.divideConfig == kDcrDivideBy8);

  Rig destination;
  destination.clock.set(77'000'000'000);  // another host, another clock
  CHECK(destination.timer.checkSnapshot(snapshot) == nullptr);
  destination.timer.restore(snapshot);
  CHECK(destination.timer.currentCount() == 62'500);
  CHECK(destination.timer.initialCount() == 100'000);
  CHECK(destination.timer.divideConfig() == kDcrDivideBy8);
  CHECK(deadlineOf(destination.timer) == 77'000'000'000 + 500'000);
  destination.clock.advance(499'999);
  CHECK(destination.timer.expire() == 0);
  destination.clock.advance(1);
  CHECK(destination.timer.expire() == 1);
  CHECK(destination.timer.currentCount() == 0);
}

// Restores source's save() on a rig whose clock reads another time, then
// checks at each later offset that both timers read the same current count,
// expire together and keep the same time to their deadlines. Runs source's
// clock on: each call needs a freshly armed source.
void checkRestoreIsIdentity(Rig& source, const TimerConfig& config) {
  source.timer.expire();  // due expiries restore as due "now": collect them first
  TimerSnapshot snapshot = source.timer.save();
  CHECK(snapshot.remainingShortfall < config.timerHz);
  Rig copy(config);
  copy.clock.set(55'000'000'000);  // another host: a different clock phase
  REQUIRE(copy.timer.checkSnapshot(snapshot) == nullptr);
  copy.timer.restore(snapshot);
  uint64_t sourceStart = source.clock.nowNs(), copyStart = copy.clock.nowNs();
  for (uint64_t offset : {uint64_t(0), uint64_t(1), uint64_t(333'333'333), uint64_t(1'000'000'000),
                          uint64_t(3'000'000'001)}) {
    source.clock.set(sourceStart + offset);
    copy.clock.set(copyStart + offset);
    CHECK(copy.timer.currentCount() == source.timer.currentCount());
    CHECK(copy.timer.expire() == source.timer.expire());
    CHECK(copy.timer.armed() == source.timer.armed());
    if (source.timer.armed() && copy.timer.armed()) {
      CHECK(deadlineOf(copy.timer) - copyStart == deadlineOf(source.timer) - sourceStart);
    }
  }
}

TEST_CASE("APIC Timer: save/restore keeps the current count exactly at 3 Hz input clock",
          "[timer][save-restore][config]") {
  // A tick lasts 1/3 s, a fraction no whole number of ns holds: the snapshot
  // carries the part of a ns that remainingNs rounded up (SDM 11.5.4: the
  // count must resume where it was, not a tick higher).
  TimerConfig config = noMinimumPeriod();
  config.timerHz = 3;
  for (TimerMode mode : {TimerMode::ONE_SHOT, TimerMode::PERIODIC}) {
    // At 1 s the count is exactly 997 with 997e9 sub-ticks left; 997e9 / 3
    // rounds up by 2/3 ns, which alone would read back as 998.
    for (uint64_t elapsed : {uint64_t(0), uint64_t(1), uint64_t(333'333'333),
                             uint64_t(333'333'334), uint64_t(999'999'999),
                             uint64_t(1'000'000'000), uint64_t(1'000'000'001),
                             uint64_t(2'000'000'000), uint64_t(7'000'000'000)}) {
      Rig source(config);
      source.timer.setMode(mode);
      source.timer.writeDivideConfig(kDcrDivideBy1);
      source.timer.writeInitialCount(1000);  // 333.33... s
      source.clock.set(kStart + elapsed);
      CHECK(source.timer.currentCount() == uint32_t(1000 - (3 * elapsed) / 1'000'000'000));
      checkRestoreIsIdentity(source, config);
    }
  }
}

TEST_CASE("APIC Timer: save/restore keeps the current count exactly at a prime input clock",
          "[timer][save-restore][config][periodic]") {
  TimerConfig config = noMinimumPeriod();
  config.timerHz = 999'999'937;  // prime: no common factor with 1e9
  for (uint32_t dcr : {kDcrDivideBy1, kDcrDivideBy128}) {
    for (uint64_t elapsed = 0; elapsed < 2'000'000; elapsed += 9'973) {
      Rig source(config);
      source.timer.setMode(TimerMode::PERIODIC);
      source.timer.writeDivideConfig(dcr);
      source.timer.writeInitialCount(7'777);
      source.clock.set(kStart + elapsed);
      checkRestoreIsIdentity(source, config);
    }
  }
}

TEST_CASE("APIC Timer: save/restore continues a periodic timer on its phase",
          "[timer][save-restore][periodic]") {
  Rig source;
  source.timer.setMode(TimerMode::PERIODIC);
  source.timer.writeDivideConfig(kDcrDivideBy1);
  source.timer.writeInitialCount(1'000'000);
  source.clock.advance(3'250'000);  // 3 expiries not yet collected
  TimerSnapshot snapshot = source.timer.save();
  CHECK(snapshot.remainingNs == 750'000);
  CHECK(snapshot.pendingExpiries == 3);
  // save() does not change the live timer.
  CHECK(source.timer.expire() == 3);

  Rig destination;
  destination.timer.restore(snapshot);
  CHECK(destination.timer.expire() == 3);  // nothing lost across the move
  CHECK(destination.timer.mode() == TimerMode::PERIODIC);
  CHECK(destination.timer.currentCount() == 750'000);
  uint64_t first = kStart + 750'000;
  CHECK(deadlineOf(destination.timer) == first);
  for (uint64_t n = 0; n < 100; ++n) {
    destination.clock.set(first + n * 1'000'000);
    REQUIRE(destination.timer.expire() == 1);
  }
  CHECK(deadlineOf(destination.timer) == first + 100 * 1'000'000);
}

TEST_CASE("APIC Timer: save/restore keeps the same TSC deadline", "[timer][save-restore][tsc-deadline]") {
  Rig source;
  source.timer.setMode(TimerMode::TSC_DEADLINE);
  uint64_t deadline = source.tsc.now() + 1'000'000;
  source.clock.advance(100'000);  // 200'000 ticks gone, 800'000 to go
  source.timer.writeTscDeadline(deadline);
  TimerSnapshot snapshot = source.timer.save();
  CHECK(snapshot.mode == TimerMode::TSC_DEADLINE);
  CHECK(snapshot.armed);
  CHECK(snapshot.tscDeadline == deadline);
  uint64_t tscAtSave = source.tsc.now();

  // Migration: the destination continues the guest TSC from where it was.
  Rig destination;
  destination.clock.set(9'000'000'000'000);
  destination.tsc.setNow(tscAtSave);
  destination.timer.restore(snapshot);
  CHECK(destination.timer.readTscDeadline() == deadline);
  CHECK(deadlineOf(destination.timer) == 9'000'000'000'000 + 400'000);
  destination.clock.advance(399'999);
  CHECK(destination.timer.expire() == 0);
  destination.clock.advance(1);
  CHECK(destination.timer.expire() == 1);
  CHECK(destination.timer.readTscDeadline() == 0);
}

TEST_CASE("APIC Timer: a snapshot taken after expiry restores the expiry, once",
          "[timer][save-restore]") {
  SECTION("one-shot due, not collected") {
    Rig source;
    source.timer.writeDivideConfig(kDcrDivideBy1);
    source.timer.writeInitialCount(100);
    source.clock.advance(200);
    TimerSnapshot snapshot = source.timer.save();
    CHECK_FALSE(snapshot.armed);
    CHECK(snapshot.pendingExpiries == 1);
    Rig destination;
    destination.timer.restore(snapshot);
    CHECK(destination.timer.expiryDue());
    CHECK(destination.timer.currentCount() == 0);
    CHECK(destination.timer.expire() == 1);
    destination.clock.advance(1'000'000);
    CHECK(destination.timer.expire() == 0);
  }
  SECTION("TSC deadline due, not collected") {
    Rig source;
    source.timer.setMode(TimerMode::TSC_DEADLINE);
    source.timer.writeTscDeadline(source.tsc.now() + 10);
    source.clock.advance(100);
    TimerSnapshot snapshot = source.timer.save();
    CHECK(snapshot.tscDeadline == 0);
    CHECK(snapshot.pendingExpiries == 1);
    Rig destination;
    destination.timer.restore(snapshot);
    CHECK(destination.timer.readTscDeadline() == 0);
    CHECK(destination.timer.expire() == 1);
    CHECK(destination.timer.expire() == 0);
  }
  SECTION("stopped") {
    Rig source;
    source.timer.writeInitialCount(0);
    TimerSnapshot snapshot = source.timer.save();
    CHECK_FALSE(snapshot.armed);
    CHECK(snapshot.pendingExpiries == 0);
    Rig destination;
    destination.timer.setMode(TimerMode::PERIODIC);
    destination.timer.writeInitialCount(5000);
    destination.timer.restore(snapshot);
    CHECK(destination.timer.mode() == TimerMode::ONE_SHOT);
    CHECK_FALSE(destination.timer.armed());
    destination.clock.advance(1'000'000);
    CHECK(destination.timer.expire() == 0);
  }
}

TEST_CASE("APIC Timer: checkSnapshot rejects inconsistent snapshots with a reason",
          "[timer][save-restore]") {
  Rig rig;
  auto rejects = [&](const TimerSnapshot& snapshot) {
    return rig.timer.checkSnapshot(snapshot) != nullptr;
  };
  TimerSnapshot good;
  good.mode = TimerMode::PERIODIC;
  good.divideConfig = kDcrDivideBy1;
  good.initialCount = 1'000'000;
  good.armed = true;
  good.remainingNs = 1'000'000;
  CHECK_FALSE(rejects(good));

  TimerSnapshot s = good;
  s.mode = TimerMode(4);
  CHECK(rejects(s));
  s = good;
  s.divideConfig = 0x4;
  CHECK(rejects(s));
  s = good;
  s.initialCount = 0;
  CHECK(rejects(s));
  s = good;
  s.remainingNs = 1'000'001;  // longer than a period
  CHECK(rejects(s));
  s = good;
  s.tscDeadline = 5;
  CHECK(rejects(s));
  s = good;
  s.armed = false;  // stopped, yet time remaining
  CHECK(rejects(s));

  TimerSnapshot deadline;
  deadline.mode = TimerMode::TSC_DEADLINE;
  deadline.armed = true;
  deadline.tscDeadline = 12345;
  CHECK_FALSE(rejects(deadline));
  s = deadline;
  s.tscDeadline = 0;
  CHECK(rejects(s));
  s = deadline;
  s.remainingNs = 10;
  CHECK(rejects(s));

  // The live timer is untouched by a rejected check, and restore refuses.
  rig.timer.writeInitialCount(100);
  s = good;
  s.divideConfig = 0x10;
  CHECK_THROWS(rig.timer.restore(s));
  CHECK(rig.timer.initialCount() == 100);
  CHECK(rig.timer.armed());
}

TEST_CASE("APIC Timer: snapshotFromCounts restarts from KVM's saved current count",
          "[timer][save-restore][kvm]") {
  Rig rig;
  SECTION("a running count continues") {
    TimerSnapshot s = rig.timer.snapshotFromCounts(TimerMode::ONE_SHOT, kDcrDivideBy8,
                                                   1000, 250);
    CHECK(s.armed);
    CHECK(s.remainingNs == 2000);
    rig.timer.restore(s);
    CHECK(rig.timer.currentCount() == 250);
    rig.clock.advance(2000);
    CHECK(rig.timer.expire() == 1);
  }
  SECTION("periodic with current count 0 restarts with a full period") {
    TimerSnapshot s = rig.timer.snapshotFromCounts(TimerMode::PERIODIC, kDcrDivideBy1,
                                                   500'000, 0);
    CHECK(s.remainingNs == 500'000);
    rig.timer.restore(s);
    CHECK(rig.timer.currentCount() == 500'000);
    CHECK(rig.timer.expire() == 0);
  }
  SECTION("one-shot with current count 0 and a non-zero initial count fires once") {
    TimerSnapshot s = rig.timer.snapshotFromCounts(TimerMode::ONE_SHOT, kDcrDivideBy1,
                                                   500, 0);
    CHECK(s.armed);
    CHECK(s.remainingNs == 0);
    rig.timer.restore(s);
    CHECK(rig.timer.expiryDue());
    CHECK(rig.timer.expire() == 1);
    rig.clock.advance(10'000);
    CHECK(rig.timer.expire() == 0);
  }
  SECTION("initial count 0 is stopped; TSC-deadline carries no countdown") {
    CHECK_FALSE(rig.timer.snapshotFromCounts(TimerMode::PERIODIC, 0, 0, 0).armed);
    TimerSnapshot s = rig.timer.snapshotFromCounts(TimerMode::TSC_DEADLINE, 0, 100, 50);
    CHECK_FALSE(s.armed);
    CHECK(rig.timer.checkSnapshot(s) == nullptr);
  }
  SECTION("a current count above the initial count is taken as a full count") {
    TimerSnapshot s = rig.timer.snapshotFromCounts(TimerMode::ONE_SHOT, kDcrDivideBy1,
                                                   100, 5000);
    CHECK(s.remainingNs == 100);
    CHECK(rig.timer.checkSnapshot(s) == nullptr);
  }
}

}  // namespace
}  // namespace vlapic
