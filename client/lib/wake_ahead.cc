// SPDX-License-Identifier: MIT
#include "wake_ahead.h"

#include <kj/debug.h>
#include <cerrno>
#include <ctime>
#include <sched.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace vlapic::client {

namespace {

// Between two polls: let any other runnable task on this CPU go first. The
// one that matters is the server's thread waking for this very expiry: the
// scheduler often queues it on the CPU where it last ran, which may be the
// one this thread spins on, and a plain spin would keep it waiting for the
// rest of a time slice (measured here: server wake-ups 250-400 us late
// instead of ~60 us while the front spun with pause).
void cpuRelax() { sched_yield(); }

// margin += (sample - margin) / 8, each sample clamped to `limit`: one
// descheduled wake-up cannot set the margin far above what is typical.
uint64_t movingAverage(uint64_t average, uint64_t sample, uint64_t limit) {
  int64_t clamped = int64_t(kj::min(sample, limit));
  return uint64_t(int64_t(average) + (clamped - int64_t(average)) / 8);
}

}  // namespace

uint64_t monotonicNowNs() {
  struct timespec ts;
  KJ_SYSCALL(clock_gettime(CLOCK_MONOTONIC, &ts));
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

// ---------------------------------------------------------------------------
// WakeAheadPolicy

WakeAheadPolicy::WakeAheadPolicy(WakeAheadConfig config)
    : settings(config),
      // The margin is 1.5 x the lateness: start from the configured margin.
      wakeLatenessNs(kj::min(config.initialMarginNs, config.maxMarginNs) * 2 / 3),
      arrivalLatenessNs(config.minPollAfterNs / 2) {}

uint64_t WakeAheadPolicy::marginNs() const {
  return kj::min(wakeLatenessNs + wakeLatenessNs / 2, settings.maxMarginNs);
}

uint64_t WakeAheadPolicy::pollAfterNs() const {
  return kj::max(settings.minPollAfterNs, kj::min(2 * arrivalLatenessNs, settings.maxPollAfterNs));
}

WakeAheadPolicy::Plan WakeAheadPolicy::plan(uint64_t nowNs, kj::Maybe<uint64_t> deadlineNs) const {
  Plan result;
  KJ_IF_MAYBE(deadline, deadlineNs) {
    uint64_t pollUntil = *deadline + pollAfterNs();
    // So far past that its event should have come: nothing to poll for.
    if (nowNs >= pollUntil) return result;
    uint64_t margin = marginNs();
    uint64_t wakeAt = *deadline > margin ? *deadline - margin : 0;
    result.action = nowNs >= wakeAt ? Plan::Action::POLL : Plan::Action::SLEEP_THEN_POLL;
    result.wakeAtNs = kj::max(wakeAt, nowNs);
    result.pollUntilNs = pollUntil;
  }
  return result;
}

void WakeAheadPolicy::observeWakeUp(uint64_t wakeAtNs, uint64_t nowNs) {
  uint64_t lateness = nowNs > wakeAtNs ? nowNs - wakeAtNs : 0;
  // The margin is 1.5 x this average, so its limit is 2/3 of the margin's.
  wakeLatenessNs = movingAverage(wakeLatenessNs, lateness, settings.maxMarginNs * 2 / 3);
}

void WakeAheadPolicy::observeArrival(uint64_t deadlineNs, uint64_t nowNs) {
  uint64_t lateness = nowNs > deadlineNs ? nowNs - deadlineNs : 0;
  arrivalLatenessNs = movingAverage(arrivalLatenessNs, lateness, settings.maxPollAfterNs / 2);
}

// ---------------------------------------------------------------------------
// TimerDeadlines

TimerDeadlines::TimerDeadlines(uint32_t vcpuCount)
    : deadlines(kj::heapArray<kj::Maybe<uint64_t>>(vcpuCount)) {
  for (auto& d: deadlines) d = nullptr;
}

void TimerDeadlines::note(uint32_t vcpu, kj::Maybe<uint64_t> deadlineNs, uint64_t nowNs) {
  if (vcpu >= deadlines.size()) return;   // not ours to check: a hint only
  auto& known = deadlines[vcpu];
  KJ_IF_MAYBE(old, known) {
    if (deadlineNs == kj::Maybe<uint64_t>(*old)) return;
    // A deadline already past gives way: its expiry is what told us.
    if (*old <= nowNs) arrivals.add(Arrival{*old, nowNs});
  }
  known = deadlineNs;
  if (deadlineNs != nullptr) {
    KJ_IF_MAYBE(f, changed) {
      (*f)->fulfill();
      changed = nullptr;
    }
  }
}

void TimerDeadlines::forget(uint32_t vcpu) {
  if (vcpu < deadlines.size()) deadlines[vcpu] = nullptr;
}

kj::Maybe<uint64_t> TimerDeadlines::deadline(uint32_t vcpu) const {
  if (vcpu >= deadlines.size()) return nullptr;
  return deadlines[vcpu];
}

kj::Maybe<TimerDeadlines::Earliest> TimerDeadlines::earliest() const {
  kj::Maybe<Earliest> best;
  for (uint32_t v = 0; v < deadlines.size(); v++) {
    KJ_IF_MAYBE(d, deadlines[v]) {
      KJ_IF_MAYBE(b, best) {
        if (*d >= b->deadlineNs) continue;
      }
      best = Earliest{v, *d};
    }
  }
  return best;
}

kj::Array<TimerDeadlines::Arrival> TimerDeadlines::takeArrivals() {
  auto taken = arrivals.releaseAsArray();
  arrivals = kj::Vector<Arrival>();
  return taken;
}

kj::Promise<void> TimerDeadlines::whenChanged() {
  auto paf = kj::newPromiseAndFulfiller<void>();
  changed = kj::mv(paf.fulfiller);
  return kj::mv(paf.promise);
}

// ---------------------------------------------------------------------------
// WakeAheadWaiter

namespace {
kj::AutoCloseFd newTimerFd() {
  int fd;
  KJ_SYSCALL(fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  return kj::AutoCloseFd(fd);
}
}  // namespace

WakeAheadWaiter::WakeAheadWaiter(kj::UnixEventPort& eventPort, WakeAheadConfig config)
    : timerFd(newTimerFd()),
      observer(eventPort, timerFd, kj::UnixEventPort::FdObserver::OBSERVE_READ),
      learned(config) {}

WakeAheadWaiter::~WakeAheadWaiter() noexcept(false) {}

void WakeAheadWaiter::setTimer(uint64_t atNs) {
  // Absolute; 0 disarms (and discards an expiration not read yet).
  struct itimerspec spec = {};
  spec.it_value.tv_sec = atNs / 1'000'000'000ull;
  spec.it_value.tv_nsec = atNs % 1'000'000'000ull;
  KJ_SYSCALL(timerfd_settime(timerFd, TFD_TIMER_ABSTIME, &spec, nullptr));
}

void WakeAheadWaiter::learnArrivals(TimerDeadlines& deadlines) {
  for (auto& arrival: deadlines.takeArrivals()) {
    learned.observeArrival(arrival.deadlineNs, arrival.arrivedNs);
  }
}

bool WakeAheadWaiter::poll(kj::ForkedPromise<void>& done, kj::WaitScope& waitScope,
                           TimerDeadlines& deadlines, uint32_t vcpu, uint64_t deadlineNs,
                           uint64_t pollUntilNs) {
  uint64_t start = monotonicNowNs();
  uint64_t last = start;
  KJ_DEFER(counters.pollNs += monotonicNowNs() - start);
  for (;;) {
    // Runs whatever is ready and polls epoll without blocking: a reply or
    // an event on any connection of this loop is read now.
    if (done.addBranch().poll(waitScope)) return true;
    // The expiry's events moved this vCPU's deadline on.
    if (deadlines.deadline(vcpu) != kj::Maybe<uint64_t>(deadlineNs)) {
      ++counters.pollHits;
      return false;
    }
    uint64_t now = monotonicNowNs();
    if (now - last > learned.config().contendedGapNs) {
      ++counters.contended;
      deadlines.forget(vcpu);
      return false;
    }
    if (now >= pollUntilNs) {
      ++counters.pollMisses;
      // Sleep until the event wakes the loop; it still arrives, later.
      deadlines.forget(vcpu);
      return false;
    }
    last = now;
    cpuRelax();
  }
}

void WakeAheadWaiter::wait(kj::Promise<void> doneParam, kj::WaitScope& waitScope,
                           TimerDeadlines& deadlines) {
  auto done = doneParam.fork();
  for (;;) {
    learnArrivals(deadlines);
    uint64_t now = monotonicNowNs();
    // The earliest known deadline (armed = false: none).
    bool armed = false;
    uint64_t deadline = 0;
    uint32_t vcpu = 0;
    KJ_IF_MAYBE(e, deadlines.earliest()) {
      armed = true;
      deadline = e->deadlineNs;
      vcpu = e->vcpu;
    }
    auto plan = learned.plan(now, armed ? kj::Maybe<uint64_t>(deadline) : nullptr);
    using Action = WakeAheadPolicy::Plan::Action;
    if (plan.action == Action::BLOCK) {
      // A deadline past its poll window: its event is late or never comes
      // (a masked timer, a state restored under it); stop waiting for it.
      if (armed) deadlines.forget(vcpu);
      if (deadlines.earliest() != nullptr) continue;
      // Nothing armed: block until done or until a deadline is armed.
      auto branch = done.addBranch().then([]() { return true; });
      if (branch.exclusiveJoin(deadlines.whenChanged().then([]() { return false; }))
              .wait(waitScope)) {
        return;
      }
      continue;
    }
    if (plan.action == Action::SLEEP_THEN_POLL) {
      setTimer(plan.wakeAtNs);
      enum class Woke { DONE, TIMER, CHANGED };
      auto woke = done.addBranch().then([]() { return Woke::DONE; })
          .exclusiveJoin(observer.whenBecomesReadable().then([]() { return Woke::TIMER; }))
          .exclusiveJoin(deadlines.whenChanged().then([]() { return Woke::CHANGED; }))
          .wait(waitScope);
      uint64_t expirations;
      // Drain (non-blocking) and disarm: the next sleep starts clean.
      (void)!read(timerFd, &expirations, sizeof(expirations));
      setTimer(0);
      if (woke == Woke::DONE) return;
      if (woke == Woke::CHANGED) continue;
      ++counters.timedWakeUps;
      learned.observeWakeUp(plan.wakeAtNs, monotonicNowNs());
      // Events may have come in the same turn; plan again with them.
      learnArrivals(deadlines);
      KJ_IF_MAYBE(e, deadlines.earliest()) {
        if (e->vcpu != vcpu || e->deadlineNs != deadline) continue;
      } else {
        continue;
      }
    }
    if (poll(done, waitScope, deadlines, vcpu, deadline, plan.pollUntilNs)) {
      return;
    }
  }
}

// ---------------------------------------------------------------------------
// A plain thread's wait

bool waitAhead(WakeAheadPolicy& policy, WakeAheadStats& stats, kj::Maybe<uint64_t> deadlineNs,
               WakeAheadHooks& hooks) {
  using Action = WakeAheadPolicy::Plan::Action;
  uint64_t now = hooks.nowNs();
  auto plan = policy.plan(now, deadlineNs);
  if (plan.action == Action::BLOCK) return hooks.sleepUntil(nullptr) && hooks.arrived();
  uint64_t deadline = KJ_ASSERT_NONNULL(deadlineNs);
  if (plan.action == Action::SLEEP_THEN_POLL) {
    if (hooks.sleepUntil(plan.wakeAtNs)) {
      // Woken before the wake-up time by something: the caller looks.
      return hooks.arrived();
    }
    now = hooks.nowNs();
    ++stats.timedWakeUps;
    policy.observeWakeUp(plan.wakeAtNs, now);
    KJ_IF_MAYBE(warm, hooks.keepWarm) {
      (*warm)();
      now = hooks.nowNs();
    }
  }
  uint64_t start = now, last = now;
  for (;;) {
    if (hooks.arrived()) {
      ++stats.pollHits;
      policy.observeArrival(deadline, now);
      stats.pollNs += now - start;
      return true;
    }
    now = hooks.nowNs();
    if (now - last > policy.config().contendedGapNs) {
      ++stats.contended;
      break;
    }
    if (now >= plan.pollUntilNs) {
      ++stats.pollMisses;
      break;
    }
    last = now;
    cpuRelax();
  }
  stats.pollNs += now - start;
  // The event comes later than the poll lasted: sleep until it does, and
  // learn how late it was (the next poll lasts longer, up to its limit).
  bool woke = hooks.sleepUntil(nullptr);
  bool arrived = woke && hooks.arrived();
  if (arrived) policy.observeArrival(deadline, hooks.nowNs());
  return arrived;
}

}  // namespace vlapic::client
