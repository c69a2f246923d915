// SPDX-License-Identifier: MIT
// The LAPIC timer (SDM Vol. 3A, 11.5.4 "APIC Timer") as exact integer
// arithmetic on an injected clock.
//
// Units: a count at divide d lasts d / timerHz seconds = d * 1e9 / timerHz ns.
// Keeping time in sub-ticks of 1/timerHz ns makes that exactly d * 1e9
// sub-ticks for any input frequency, so the periodic grid is exact and never
// drifts. Products such as count * divide * 1e9 or remaining * initialCount
// exceed 64 bits; they are done in 128 bits, and the two-period ratios of a
// rescale in a 256-bit intermediate (mulDiv below).

#include "timer.h"

#include <kj/debug.h>
#include <limits>

namespace vlapic {

namespace {

using u128 = unsigned __int128;
using i128 = __int128;

constexpr uint64_t kNsPerSecond = 1'000'000'000;
constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();
constexpr uint32_t kMaxU32 = std::numeric_limits<uint32_t>::max();
constexpr u128 kMaxU128 = ~u128(0);

enum class Rounding { DOWN, UP };

// a * b / c exactly, with a 256-bit intermediate product; saturates at
// 2^128 - 1 (never reached for the timer's magnitudes, which stay below
// 2^100).
u128 mulDiv(u128 a, u128 b, u128 c, Rounding rounding) {
  KJ_IREQUIRE(c != 0);
  constexpr u128 kLow64 = ~uint64_t(0);
  // Schoolbook product of two 2-limb numbers into (hi, lo).
  u128 a0 = a & kLow64, a1 = a >> 64, b0 = b & kLow64, b1 = b >> 64;
  u128 p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  u128 middle = (p00 >> 64) + (p01 & kLow64) + (p10 & kLow64);
  u128 lo = (p00 & kLow64) | (middle << 64);
  u128 hi = p11 + (p01 >> 64) + (p10 >> 64) + (middle >> 64);

  if (hi == 0) {
    u128 q = lo / c;
    if (rounding == Rounding::UP && lo % c != 0) ++q;
    return q;
  }
  if (hi >= c) return kMaxU128;  // quotient needs more than 128 bits

  // Restoring long division of (hi, lo) by c; hi < c keeps the remainder
  // below c at every step, and `carry` catches the bit shifted out of it.
  u128 remainder = hi, quotient = 0;
  for (int bit = 127; bit >= 0; --bit) {
    bool carry = (remainder >> 127) != 0;
    remainder = (remainder << 1) | ((lo >> bit) & 1);
    quotient <<= 1;
    if (carry || remainder >= c) {
      remainder -= c;  // wraps correctly when carry is set
      quotient |= 1;
    }
  }
  if (rounding == Rounding::UP && remainder != 0 && quotient != kMaxU128) ++quotient;
  return quotient;
}

uint64_t saturateU64(u128 value) { return value > kMaxU64 ? kMaxU64 : uint64_t(value); }
uint32_t saturateU32(u128 value) { return value > kMaxU32 ? kMaxU32 : uint32_t(value); }

uint32_t addSaturating(uint32_t a, u128 b) { return saturateU32(u128(a) + b); }

// A span of sub-ticks (1/timerHz ns) as a snapshot carries it: whole ns
// rounded up, and the shortfall the rounding added (0 <= shortfall <
// timerHz). A span too long for 64-bit ns saturates with no shortfall (only
// a timerHz of a few Hz reaches that).
struct NsWithShortfall {
  uint64_t ns = 0;
  uint64_t shortfall = 0;
};

NsWithShortfall splitSubTicks(u128 subTicks, uint64_t timerHz) {
  NsWithShortfall out;
  out.ns = saturateU64(mulDiv(subTicks, 1, timerHz, Rounding::UP));
  u128 rounded = u128(out.ns) * timerHz;
  if (rounded >= subTicks && rounded - subTicks < timerHz) {
    out.shortfall = uint64_t(rounded - subTicks);
  }
  return out;
}

// The inverse; the caller has checked shortfallValid().
u128 joinSubTicks(uint64_t ns, uint64_t shortfall, uint64_t timerHz) {
  return u128(ns) * timerHz - shortfall;
}

bool shortfallValid(uint64_t ns, uint64_t shortfall, uint64_t timerHz) {
  // The rounding takes off less than one ns, and never more than the whole.
  return shortfall < timerHz && u128(shortfall) <= u128(ns) * timerHz;
}

}  // namespace

// ---------------------------------------------------------------------------
// GuestTsc

uint64_t GuestTsc::atNs(uint64_t hostNs) const {
  // hostNs * tscHz < 2^128; the TSC itself wraps modulo 2^64 like hardware.
  uint64_t scaled = uint64_t(u128(hostNs) * tscHz / kNsPerSecond);
  return scaled + uint64_t(offset);
}

uint64_t GuestTsc::nsAt(uint64_t tscValue) const {
  KJ_REQUIRE(tscHz != 0, "guest TSC frequency must be non-zero");
  // Smallest ns with floor(ns * tscHz / 1e9) + offset >= tscValue.
  i128 target = i128(tscValue) - i128(offset);
  if (target <= 0) return 0;
  return saturateU64(mulDiv(u128(target), kNsPerSecond, tscHz, Rounding::UP));
}

void GuestTsc::setNow(uint64_t tscValue) {
  uint64_t scaled = uint64_t(u128(clock.nowNs()) * tscHz / kNsPerSecond);
  offset = int64_t(tscValue - scaled);  // modulo 2^64, as atNs adds it back
}

// ---------------------------------------------------------------------------
// ApicTimer

ApicTimer::ApicTimer(const GuestTsc& tsc, const TimerConfig& config)
    : tsc(tsc), config(config) {
  KJ_REQUIRE(config.timerHz != 0, "timer input frequency must be non-zero");
}

uint32_t ApicTimer::divideValue(uint32_t dcr) {
  // SDM 11.5.4, Figure 11-10: the divide value is 2^(((bit3:bit1:bit0) + 1)
  // mod 8), so 111 divides by 1.
  uint32_t code = ((dcr >> 1) & 0b100) | (dcr & 0b11);
  return 1u << ((code + 1) & 7);
}

ApicTimer::SubTicks ApicTimer::nowSubTicks() const {
  return SubTicks(tsc.hostClock().nowNs()) * config.timerHz;
}

ApicTimer::SubTicks ApicTimer::effectivePeriod(TimerMode mode, uint32_t count,
                                               uint32_t dcr) const {
  // count * divide * 1e9 < 2^32 * 2^7 * 2^30: 128 bits are plenty.
  SubTicks period = countLength(count, dcr);
  if (mode == TimerMode::PERIODIC && count != 0) {
    // KVM's minimum period: a periodic timer faster than this would let a
    // guest flood the host with expiries. Only periodic mode is clamped.
    SubTicks minimum = SubTicks(config.minPeriodNs) * config.timerHz;
    if (period < minimum) period = minimum;
  }
  return period;
}

ApicTimer::Remaining ApicTimer::remainingAt(const State& s, SubTicks now) {
  if (!s.countdownArmed) return {};
  if (now < s.deadline) return {s.deadline - now, s.phase};
  if (s.mode != TimerMode::PERIODIC) return {0, s.phase};
  // Periodic and late: the count reloaded at each grid point since.
  return {s.period - (now - s.deadline) % s.period, s.period};
}

uint64_t ApicTimer::tscDeadlineNs(const State& s) const {
  // Computed from the guest TSC each time, so a later change of the TSC
  // offset (restore, migration) moves the host deadline with it.
  return tsc.nsAt(s.tscDeadline);
}

void ApicTimer::catchUp(State& s, uint64_t nowNs) const {
  uint32_t due = 0;
  uint64_t dueSinceNs = 0;
  if (s.mode == TimerMode::TSC_DEADLINE) {
    if (s.tscDeadline != 0) {
      uint64_t deadlineNs = tscDeadlineNs(s);
      if (nowNs >= deadlineNs) {
        due = 1;
        dueSinceNs = deadlineNs;
        s.tscDeadline = 0;  // the MSR reads 0 once the deadline has fired
      }
    }
  } else if (s.countdownArmed) {
    SubTicks now = SubTicks(nowNs) * config.timerHz;
    if (now >= s.deadline) {
      dueSinceNs = saturateU64(mulDiv(s.deadline, 1, config.timerHz, Rounding::UP));
      if (s.mode == TimerMode::PERIODIC) {
        // Every grid point up to now is one expiry; they coalesce into one
        // interrupt and the next deadline stays on the original grid
        // (deadline + k * period), never "now + period".
        SubTicks periodsDue = (now - s.deadline) / s.period + 1;
        s.deadline += periodsDue * s.period;
        s.phase = s.period;  // reloaded: a full count runs now
        due = saturateU32(periodsDue);
      } else {
        due = 1;
        s.countdownArmed = false;  // current count reads 0 from now on
      }
    }
  }
  if (due != 0) {
    if (s.pendingExpiries == 0) s.pendingSinceNs = dueSinceNs;
    s.pendingExpiries = addSaturating(s.pendingExpiries, due);
  }
}

void ApicTimer::setMode(TimerMode newMode) {
  if (newMode == state.mode) return;  // every LVT Timer write lands here
  catchUp(state, tsc.hostClock().nowNs());

  bool intoOrOutOfDeadline =
      (newMode == TimerMode::TSC_DEADLINE) != (state.mode == TimerMode::TSC_DEADLINE);
  if (intoOrOutOfDeadline) {
    // The SDM (11.5.4.1) says a mode change disarms; KVM, which guests are
    // tested against, disarms only across the TSC-deadline boundary, and
    // zeroes the initial count and the deadline then.
    state.countdownArmed = false;
    state.initialCount = 0;
    state.phase = 0;
    state.period = 0;
    state.tscDeadline = 0;
  } else if (state.initialCount != 0) {
    // One-shot <-> periodic: the running count continues to its deadline at
    // its rate and the current count is not reloaded (KVM); only the length
    // of later reloads changes, by the minimum-period clamp.
    state.period = effectivePeriod(newMode, state.initialCount, state.divideConfig);
  }
  state.mode = newMode;
}

void ApicTimer::writeInitialCount(uint32_t count) {
  // SDM 11.5.4.1: in TSC-deadline mode writes to the initial-count register
  // are ignored.
  if (state.mode == TimerMode::TSC_DEADLINE) return;
  uint64_t nowNs = tsc.hostClock().nowNs();
  catchUp(state, nowNs);
  state.initialCount = count;
  if (count == 0) {
    // Writing 0 stops the timer (SDM 11.5.4).
    state.countdownArmed = false;
    state.phase = 0;
    state.period = 0;
    return;
  }
  // Mode 11b is reserved: KVM keeps the count but never starts the timer.
  if (state.mode == TimerMode::RESERVED) {
    state.countdownArmed = false;
    state.phase = 0;
    state.period = 0;
    return;
  }
  // Any other write (re)starts the count from the new initial count.
  state.period = effectivePeriod(state.mode, count, state.divideConfig);
  state.phase = state.period;
  state.deadline = SubTicks(nowNs) * config.timerHz + state.phase;
  state.countdownArmed = true;
}

void ApicTimer::writeDivideConfig(uint32_t dcr) {
  uint64_t nowNs = tsc.hostClock().nowNs();
  catchUp(state, nowNs);
  uint32_t newDcr = dcr & 0b1011;
  if (newDcr != state.divideConfig && state.initialCount != 0) {
    SubTicks newPeriod = effectivePeriod(state.mode, state.initialCount, newDcr);
    if (state.countdownArmed) {
      // The count keeps its value and continues at the new rate: the time
      // left scales with the length of the running count.
      SubTicks newPhase =
          state.phase == state.period
              ? newPeriod
              : mulDiv(state.phase, divideValue(newDcr), divideValue(state.divideConfig),
                       Rounding::UP);
      SubTicks now = SubTicks(nowNs) * config.timerHz;
      SubTicks remaining = state.deadline - now;  // catchUp: deadline > now
      state.deadline = now + mulDiv(remaining, newPhase, state.phase, Rounding::UP);
      state.phase = newPhase;
    }
    state.period = newPeriod;
  }
  state.divideConfig = newDcr;
}

void ApicTimer::writeTscDeadline(uint64_t tscValue) {
  // KVM ignores IA32_TSC_DEADLINE writes outside TSC-deadline mode (the SDM
  // says they have no effect on the timer then).
  if (state.mode != TimerMode::TSC_DEADLINE) return;
  // A deadline that fell due before this write still delivers its interrupt.
  catchUp(state, tsc.hostClock().nowNs());
  // 0 disarms; anything else (re)arms, a value already past is due at once.
  state.tscDeadline = tscValue;
}

kj::Maybe<ApicTimer::Remaining> ApicTimer::runningCount() const {
  if (state.mode == TimerMode::TSC_DEADLINE) return nullptr;  // SDM 11.5.4.1
  if (!state.countdownArmed || state.initialCount == 0) return nullptr;
  Remaining remaining = remainingAt(state, nowSubTicks());
  if (remaining.left == 0) return nullptr;
  return remaining;
}

uint32_t ApicTimer::currentCount() const {
  KJ_IF_MAYBE(running, runningCount()) {
    Remaining& remaining = *running;
    // The count runs from the initial count down to 0 over its length; it
    // reads the initial count during the first tick and reaches 0 exactly
    // at the expiry, as a hardware down-counter does. A clamped periodic
    // timer counts proportionally slower over its longer period.
    return saturateU32(
        mulDiv(remaining.left, state.initialCount, remaining.countLength, Rounding::UP));
  }
  return 0;
}

uint32_t ApicTimer::kvmCurrentCount() const {
  KJ_IF_MAYBE(remaining, runningCount()) {
    // The time left in whole counts at the divide's rate, rounded up, as
    // KVM saves TMCCT: above the initial count while a clamped periodic
    // count runs, equal to currentCount() for a full unclamped count.
    return saturateU32(
        mulDiv(remaining->left, 1, countLength(1, state.divideConfig), Rounding::UP));
  }
  return 0;
}

ApicTimer::SubTicks ApicTimer::countLength(uint32_t counts, uint32_t dcr) {
  return SubTicks(counts) * divideValue(dcr) * kNsPerSecond;
}

uint64_t ApicTimer::readTscDeadline() const {
  if (state.mode != TimerMode::TSC_DEADLINE || state.tscDeadline == 0) return 0;
  // Fired in real time (even if expire() has not collected it yet).
  if (tsc.hostClock().nowNs() >= tscDeadlineNs(state)) return 0;
  return state.tscDeadline;
}

TimerMode ApicTimer::mode() const { return state.mode; }

bool ApicTimer::armed() const {
  return state.mode == TimerMode::TSC_DEADLINE ? state.tscDeadline != 0
                                               : state.countdownArmed;
}

kj::Maybe<uint64_t> ApicTimer::deadlineNs() const {
  if (state.pendingExpiries != 0) return state.pendingSinceNs;  // due already
  if (state.mode == TimerMode::TSC_DEADLINE) {
    if (state.tscDeadline == 0) return nullptr;
    return tscDeadlineNs(state);
  }
  if (!state.countdownArmed) return nullptr;
  // Rounded up: the host timer must never fire before the count is at 0.
  return saturateU64(mulDiv(state.deadline, 1, config.timerHz, Rounding::UP));
}

bool ApicTimer::expiryDue() const {
  if (state.pendingExpiries != 0) return true;
  KJ_IF_MAYBE(deadline, deadlineNs()) {
    return tsc.hostClock().nowNs() >= *deadline;
  }
  return false;
}

uint32_t ApicTimer::expire() {
  catchUp(state, tsc.hostClock().nowNs());
  uint32_t expiries = state.pendingExpiries;
  state.pendingExpiries = 0;
  state.pendingSinceNs = 0;
  return expiries;
}

void ApicTimer::reset() {
  // SDM 11.4.7 / 11.5.4: after RESET or INIT the LVT Timer is masked
  // one-shot, the counts and DCR are 0; nothing stays pending.
  state = State();
}

uint32_t ApicTimer::initialCount() const { return state.initialCount; }

uint32_t ApicTimer::divideConfig() const { return state.divideConfig; }

TimerSnapshot ApicTimer::save() const {
  // Save the state as it is at this instant: expiries already due count as
  // pending, a periodic timer's remaining time is taken on its grid.
  uint64_t nowNs = tsc.hostClock().nowNs();
  State s = state;
  catchUp(s, nowNs);

  TimerSnapshot snapshot;
  snapshot.mode = s.mode;
  snapshot.divideConfig = s.divideConfig;
  snapshot.initialCount = s.initialCount;
  snapshot.pendingExpiries = s.pendingExpiries;
  if (s.mode == TimerMode::TSC_DEADLINE) {
    snapshot.armed = s.tscDeadline != 0;
    snapshot.tscDeadline = s.tscDeadline;  // guest TSC terms: host-independent
  } else if (s.countdownArmed) {
    snapshot.armed = true;
    Remaining remaining = remainingAt(s, SubTicks(nowNs) * config.timerHz);
    NsWithShortfall left = splitSubTicks(remaining.left, config.timerHz);
    snapshot.remainingNs = left.ns;
    snapshot.remainingShortfall = left.shortfall;
    // The running count's length too, so the current count reads back the
    // same even when a mode switch left it other than a full period.
    NsWithShortfall length = splitSubTicks(remaining.countLength, config.timerHz);
    snapshot.countLengthNs = length.ns;
    snapshot.countLengthShortfall = length.shortfall;
  }
  return snapshot;
}

kj::Maybe<kj::StringPtr> ApicTimer::checkSnapshot(const TimerSnapshot& snapshot) const {
  switch (snapshot.mode) {
    case TimerMode::ONE_SHOT:
    case TimerMode::PERIODIC:
    case TimerMode::TSC_DEADLINE:
    case TimerMode::RESERVED:
      break;
    default:
      return kj::StringPtr("timer mode out of range");
  }
  if ((snapshot.divideConfig & ~0b1011u) != 0) {
    return kj::StringPtr("divide configuration has reserved bits set");
  }
  if (snapshot.mode == TimerMode::TSC_DEADLINE) {
    if (snapshot.armed != (snapshot.tscDeadline != 0)) {
      return kj::StringPtr("TSC-deadline armed flag disagrees with the deadline");
    }
    if (snapshot.remainingNs != 0 || snapshot.remainingShortfall != 0) {
      return kj::StringPtr("TSC-deadline timer with a countdown remaining");
    }
    return nullptr;
  }
  if (!shortfallValid(snapshot.remainingNs, snapshot.remainingShortfall, config.timerHz)) {
    return kj::StringPtr("remaining-time shortfall not below one ns of the remaining time");
  }
  if (!shortfallValid(snapshot.countLengthNs, snapshot.countLengthShortfall, config.timerHz)) {
    return kj::StringPtr("count-length shortfall not below one ns of the count length");
  }
  if (snapshot.tscDeadline != 0) {
    return kj::StringPtr("TSC deadline set outside TSC-deadline mode");
  }
  if (!snapshot.armed) {
    if (snapshot.remainingNs != 0) return kj::StringPtr("stopped timer with time remaining");
    if (snapshot.countLengthNs != 0) return kj::StringPtr("stopped timer with a running count");
    return nullptr;
  }
  if (snapshot.initialCount == 0) {
    return kj::StringPtr("armed countdown with an initial count of 0");
  }
  SubTicks remaining =
      joinSubTicks(snapshot.remainingNs, snapshot.remainingShortfall, config.timerHz);
  SubTicks longest = longestCount(snapshot.initialCount, snapshot.divideConfig);
  if (snapshot.countLengthNs == 0) {
    // Older records carry no length; their whole ns are rounded up.
    if (remaining >= longest + config.timerHz) {
      return kj::StringPtr("remaining time longer than the longest count");
    }
    return nullptr;
  }
  SubTicks length =
      joinSubTicks(snapshot.countLengthNs, snapshot.countLengthShortfall, config.timerHz);
  if (length > longest) {
    return kj::StringPtr("running count longer than its initial count and divide allow");
  }
  if (remaining > length) {
    return kj::StringPtr("remaining time longer than the running count");
  }
  return nullptr;
}

ApicTimer::SubTicks ApicTimer::longestCount(uint32_t count, uint32_t dcr) const {
  // The longest count an initial count and divide can run. A count is a
  // full period (periodic ones clamped to the minimum period), or, after a
  // one-shot <-> periodic switch kept a clamped count running, the minimum
  // period m clamped at divide d0 and rescaled by divide changes since
  // (writeDivideConfig). Each rescale is by a power of two and rounds up,
  // so at divide d it is ceil(m * dmin / d0) * d / dmin, dmin being the
  // smallest divide on the way: at most m * d / d0 + d / dmin, which stays
  // within m * d + d for any d0 >= 1.
  SubTicks fullPeriod = effectivePeriod(TimerMode::PERIODIC, count, dcr);
  if (config.minPeriodNs == 0) return fullPeriod;
  SubTicks divide = divideValue(dcr);
  SubTicks rescaledClamp = SubTicks(config.minPeriodNs) * config.timerHz * divide + divide;
  return kj::max(fullPeriod, rescaledClamp);
}

void ApicTimer::restore(const TimerSnapshot& snapshot) {
  KJ_IF_MAYBE(reason, checkSnapshot(snapshot)) {
    // The core validates before it changes anything; reaching this is a bug
    // in the caller, not a guest's doing.
    KJ_FAIL_REQUIRE("invalid timer snapshot", *reason);
  }
  State s;
  s.mode = snapshot.mode;
  s.divideConfig = snapshot.divideConfig;
  s.initialCount = snapshot.initialCount;
  s.pendingExpiries = snapshot.pendingExpiries;
  uint64_t nowNs = tsc.hostClock().nowNs();
  s.pendingSinceNs = nowNs;
  if (s.mode == TimerMode::TSC_DEADLINE) {
    s.tscDeadline = snapshot.tscDeadline;  // a deadline now past fires at once
  } else if (snapshot.armed) {
    s.countdownArmed = true;
    s.period = effectivePeriod(s.mode, s.initialCount, s.divideConfig);
    // Continue with the remaining time; a periodic timer then keeps its grid
    // of full periods from that deadline on. The running count keeps the
    // length it was saved with; a record without one (older versions, KVM's
    // layout) takes a full period, or the remaining time if longer.
    SubTicks remaining =
        joinSubTicks(snapshot.remainingNs, snapshot.remainingShortfall, config.timerHz);
    s.phase = snapshot.countLengthNs != 0
                  ? joinSubTicks(snapshot.countLengthNs, snapshot.countLengthShortfall,
                                 config.timerHz)
                  : kj::max(s.period, remaining);
    s.deadline = SubTicks(nowNs) * config.timerHz + remaining;
  }
  state = s;
}

TimerSnapshot ApicTimer::snapshotFromCounts(TimerMode mode, uint32_t dcr,
                                            uint32_t initialCount,
                                            uint32_t currentCount) const {
  TimerSnapshot snapshot;
  snapshot.mode = mode;
  snapshot.divideConfig = dcr & 0b1011;
  snapshot.initialCount = initialCount;
  if (mode == TimerMode::TSC_DEADLINE || initialCount == 0) return snapshot;

  // Mode 11b is reserved: KVM never starts the timer in it on restore.
  if (mode == TimerMode::RESERVED) return snapshot;

  snapshot.armed = true;
  SubTicks period = effectivePeriod(mode, initialCount, snapshot.divideConfig);
  SubTicks remaining;
  if (currentCount == 0) {
    // KVM: periodic restarts with a full period; one-shot fires at once.
    remaining = mode == TimerMode::PERIODIC ? period : 0;
  } else {
    // KVM's current count is the time left in counts at the divide's rate,
    // so a periodic timer clamped to the minimum period saves a count above
    // its initial count; a count beyond the period (only a foreign image
    // has one) is a full period.
    remaining = kj::min(countLength(currentCount, snapshot.divideConfig), period);
  }
  // Round down to whole ns so the snapshot never exceeds the period.
  snapshot.remainingNs = saturateU64(remaining / config.timerHz);
  return snapshot;
}

}  // namespace vlapic
