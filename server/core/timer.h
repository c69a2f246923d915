// SPDX-License-Identifier: MIT
// The LAPIC timer as pure arithmetic on an injected clock (SDM Vol. 3A,
// "APIC Timer"). No I/O: the server asks deadlineNs() and arms a real timer;
// tests advance a ManualClock.
#pragma once

#include "schema/model/types.h"
#include "hal/hal.h"
#include <cstdint>

namespace vlapic {

// The guest's TSC, derived from the HAL clock: tsc = nowNs * tscHz / 1e9 +
// offset. One per VM, shared by its vCPUs; the offset keeps the guest TSC
// continuous across save/restore and migration.
class GuestTsc {
public:
  GuestTsc(const hal::Clock& clock, uint64_t tscHz, int64_t offset = 0)
      : clock(clock), tscHz(tscHz), offset(offset) {}

  uint64_t now() const { return atNs(clock.nowNs()); }
  uint64_t atNs(uint64_t hostNs) const;
  // The host time at which the guest TSC reaches `tsc` (rounded up; a TSC
  // value already past maps to a time <= now).
  uint64_t nsAt(uint64_t tsc) const;

  uint64_t frequencyHz() const { return tscHz; }
  int64_t getOffset() const { return offset; }
  void setOffset(int64_t newOffset) { offset = newOffset; }
  // Make the guest TSC read `tsc` at this instant (restore, migration).
  void setNow(uint64_t tsc);
  const hal::Clock& hostClock() const { return clock; }

private:
  const hal::Clock& clock;
  uint64_t tscHz;
  int64_t offset;
};

// TimerMode (LVT Timer bits 18:17) is a register field: schema/model/types.h.

struct TimerConfig {
  // Timer input clock before the divider. KVM ticks at 1 GHz (1 ns a tick).
  uint64_t timerHz = 1'000'000'000;
  // Periodic timers with a shorter period are clamped to this (KVM: 200 us
  // for guests without special rights) so a guest cannot storm the host.
  uint64_t minPeriodNs = 200'000;
};

// Everything the timer needs to resume after restore, in guest terms where
// possible so it survives a different host clock.
struct TimerSnapshot {
  TimerMode mode = TimerMode::ONE_SHOT;
  uint32_t divideConfig = 0;   // DCR register value
  uint32_t initialCount = 0;
  bool armed = false;
  uint64_t remainingNs = 0;    // one-shot/periodic: time to the next expiry
  uint64_t tscDeadline = 0;    // TSC-deadline: armed deadline (0 = disarmed)
  // Expiries that were due at save time but not yet collected by expire()
  // (the restored timer reports them at once, so no interrupt is lost).
  uint32_t pendingExpiries = 0;
  // ---- Additions beyond the first contract ----
  // remainingNs is rounded up to whole ns; with an input clock that does not
  // divide 1 GHz that loses part of a tick, and the restored count would read
  // one tick off. The exact time left is remainingNs * timerHz -
  // remainingShortfall sub-ticks (1/timerHz ns), 0 <= shortfall < timerHz.
  // 0 (older snapshots, KVM-layout restores) takes remainingNs as exact.
  uint64_t remainingShortfall = 0;
  // The length of the count now running (initial count down to 0), in the
  // same terms: countLengthNs * timerHz - countLengthShortfall sub-ticks. It
  // differs from a full period only after a one-shot <-> periodic switch
  // moved the minimum-period clamp (the running count keeps its length, as
  // KVM keeps its deadline) and divide changes scaled it; the current count
  // reads back from it. 0 (older snapshots, KVM-layout restores) means a full
  // period, or the remaining time if that is longer.
  uint64_t countLengthNs = 0;
  uint64_t countLengthShortfall = 0;
};

class ApicTimer {
public:
  ApicTimer(const GuestTsc& tsc, const TimerConfig& config);
  KJ_DISALLOW_COPY(ApicTimer);  // kj 0.9: also disables moves (no implicit move members)

  // Inputs from register writes (the core has already applied the register's
  // writable mask and stored the value in the page).
  void setMode(TimerMode mode);          // on every LVT Timer write
  void writeInitialCount(uint32_t count);  // ignored in TSC-deadline mode
  void writeDivideConfig(uint32_t dcr);
  void writeTscDeadline(uint64_t tsc);   // ignored outside TSC-deadline mode

  // Outputs.
  // Computed from the clock now: the initial count during the first tick,
  // 0 exactly at expiry (as a hardware down-counter), 0 when stopped.
  uint32_t currentCount() const;
  uint64_t readTscDeadline() const;      // 0 outside TSC-deadline mode / once fired
  TimerMode mode() const;
  bool armed() const;
  // Host ns of the next expiry, or nullptr when nothing is armed. Rounded up
  // to whole ns, so a host timer set to it never fires before the count is
  // 0. An expiry that fell due while the timer was reprogrammed (and that
  // expire() has not collected yet) makes this the past time it fell due.
  kj::Maybe<uint64_t> deadlineNs() const;

  // Called whenever the clock may have passed deadlineNs(). Returns the
  // number of expiries since the last call (0: none due). A periodic timer
  // that was handled late by several periods coalesces them into one
  // interrupt and stays on its original grid (as KVM does); the count says
  // how many were merged. One-shot and TSC-deadline timers disarm.
  uint32_t expire();

  // RESET/INIT state: one-shot, stopped, DCR 0.
  void reset();

  TimerSnapshot save() const;
  void restore(const TimerSnapshot& snapshot);

  // ---- Additions beyond the first contract ----
  // Whether an expiry is due by the clock's now (expire() would return
  // non-zero). After a WRMSR to IA32_TSC_DEADLINE with a deadline already
  // past, the core calls expire() when this is true so the interrupt is
  // pending before the write's exit returns.
  bool expiryDue() const;
  // The initial count as the timer holds it. Switching into or out of
  // TSC-deadline mode zeroes it (KVM zeroes TMICT then); the core mirrors it
  // into the page after setMode().
  uint32_t initialCount() const;
  uint32_t divideConfig() const;          // DCR bits 3,1,0
  // DCR (bits 3,1,0) -> divide value: 000->2 ... 110->128, 111->1.
  static uint32_t divideValue(uint32_t dcr);
  // A reason the snapshot cannot be restored (mode out of range, reserved
  // DCR bits, an armed countdown with initial count 0, a running count longer
  // than its initial count and divide allow, remaining time longer than the
  // running count), or nullptr if restore() would accept it.
  kj::Maybe<kj::StringPtr> checkSnapshot(const TimerSnapshot& snapshot) const;
  // The snapshot KVM's kvm_lapic_state implies when it carries no hidden
  // state: the timer restarts from the saved current count, a current count
  // of 0 restarts a periodic timer with a full period and fires a one-shot
  // with a non-zero initial count at once. In TSC-deadline mode the deadline
  // is restored separately (writeTscDeadline after setMode).
  // A current count is taken as the time left in counts at the divide's
  // rate (KVM's meaning), at most one period; in mode 11b nothing is armed.
  TimerSnapshot snapshotFromCounts(TimerMode mode, uint32_t dcr, uint32_t initialCount,
                                   uint32_t currentCount) const;
  // The current count as KVM's KVM_GET_LAPIC writes it into an image: the
  // time left in counts at the divide's rate. It equals currentCount() for
  // a full unclamped count; while a periodic count clamped to the minimum
  // period runs it is above the initial count (as KVM's is).
  uint32_t kvmCurrentCount() const;

private:
  // Time inside the timer is kept in "sub-ticks" of 1/timerHz ns, so that one
  // count at divide d is exactly d * 1e9 sub-ticks whatever the input clock
  // frequency: periodic deadlines advance on an exact grid and never drift.
  using SubTicks = unsigned __int128;

  struct State {
    TimerMode mode = TimerMode::ONE_SHOT;
    uint32_t divideConfig = 0;
    uint32_t initialCount = 0;
    bool countdownArmed = false;   // one-shot/periodic counting down
    SubTicks deadline = 0;         // absolute end of the running count
    // Length of the count now running (initial count down to 0), and of each
    // count reloaded after it. They differ only after a one-shot <-> periodic
    // switch moved the minimum-period clamp: the running count keeps its
    // rate and deadline (KVM), the new length applies from the next reload.
    SubTicks phase = 0;
    SubTicks period = 0;
    uint64_t tscDeadline = 0;      // TSC-deadline mode: 0 = disarmed
    uint32_t pendingExpiries = 0;  // due before a reprogramming, not collected
    uint64_t pendingSinceNs = 0;   // when the first of them fell due
  };

  const GuestTsc& tsc;
  TimerConfig config;
  State state;

  SubTicks nowSubTicks() const;
  SubTicks effectivePeriod(TimerMode mode, uint32_t count, uint32_t dcr) const;
  // The length of `counts` counts at `dcr`'s divide, unclamped.
  static SubTicks countLength(uint32_t counts, uint32_t dcr);
  // The longest running count `count` at `dcr` can have (checkSnapshot).
  SubTicks longestCount(uint32_t count, uint32_t dcr) const;
  // Time left to the next expiry at `now` on the countdown's grid (a
  // periodic timer that is late reloads on its grid; a one-shot past its
  // deadline has 0 left), and the length of the count it belongs to.
  struct Remaining {
    SubTicks left = 0;
    SubTicks countLength = 0;
  };
  static Remaining remainingAt(const State& s, SubTicks now);
  // The countdown running now with time left, or nullptr (stopped, expired,
  // TSC-deadline mode): what both current-count readings start from.
  kj::Maybe<Remaining> runningCount() const;
  // Move every expiry due by `now` into pendingExpiries, advancing a
  // periodic timer on its grid and disarming one-shot and TSC-deadline ones.
  void catchUp(State& s, uint64_t nowNs) const;
  uint64_t tscDeadlineNs(const State& s) const;
};

}  // namespace vlapic
