// The LAPIC timer as pure arithmetic on an injected clock (SDM Vol. 3A,
// "APIC Timer"). No I/O: the server asks deadlineNs() and arms a real timer;
// tests advance a ManualClock.
#pragma once

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

enum class TimerMode : uint8_t { ONE_SHOT = 0, PERIODIC = 1, TSC_DEADLINE = 2 };

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
};

class ApicTimer {
public:
  ApicTimer(const GuestTsc& tsc, const TimerConfig& config);
  KJ_DISALLOW_COPY_AND_MOVE(ApicTimer);

  // Inputs from register writes (the core has already applied the register's
  // writable mask and stored the value in the page).
  void setMode(TimerMode mode);          // on every LVT Timer write
  void writeInitialCount(uint32_t count);  // ignored in TSC-deadline mode
  void writeDivideConfig(uint32_t dcr);
  void writeTscDeadline(uint64_t tsc);   // ignored outside TSC-deadline mode

  // Outputs.
  uint32_t currentCount() const;         // computed from the clock now
  uint64_t readTscDeadline() const;      // 0 outside TSC-deadline mode / once fired
  TimerMode mode() const;
  bool armed() const;
  // Host ns of the next expiry, or nullptr when nothing is armed.
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

private:
  const GuestTsc& tsc;
  TimerConfig config;
  // Implementation state: owned by timer.cc.
  TimerMode currentMode = TimerMode::ONE_SHOT;
  uint32_t divideConfig = 0;
  uint32_t initialCount = 0;
  bool isArmed = false;
  uint64_t startNs = 0;       // when the current period began
  uint64_t periodNs = 0;      // length of one full count at the current divide
  uint64_t nextDeadlineNs = 0;
  uint64_t tscDeadline = 0;
};

}  // namespace vlapic
