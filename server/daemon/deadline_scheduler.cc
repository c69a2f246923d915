// SPDX-License-Identifier: MIT
#include "deadline_scheduler.h"

#include <kj/debug.h>
#include <kj/vector.h>
#include <cerrno>
#include <ctime>
#include <sys/timerfd.h>
#include <unistd.h>

namespace vlapic::daemon {

namespace {

uint64_t monotonicNowNs() {
  struct timespec ts;
  KJ_SYSCALL(clock_gettime(CLOCK_MONOTONIC, &ts));
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

kj::AutoCloseFd newTimerFd() {
  int fd;
  KJ_SYSCALL(fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  return kj::AutoCloseFd(fd);
}

}  // namespace

TimerAdvance::TimerAdvance(Config config)
    : maxNs(config.maxNs),
      // The margin is 1.5x the average: start from the configured margin.
      lateness(kj::min(config.initialNs, config.maxNs) * 2 / 3) {}

void TimerAdvance::observe(uint64_t latenessNs) {
  // average += (sample - average) / 8: a convex step, so it stays within
  // [0, maxNs] (and the margin within [0, maxNs] by its clamp).
  int64_t sample = int64_t(kj::min(latenessNs, maxNs));
  lateness = uint64_t(int64_t(lateness) + (sample - int64_t(lateness)) / 8);
}

DeadlineScheduler::DeadlineScheduler(kj::UnixEventPort& eventPort,
                                     TimerAdvance::Config advanceConfig)
    : timerFd(newTimerFd()),
      observer(eventPort, timerFd, kj::UnixEventPort::FdObserver::OBSERVE_READ),
      advance(advanceConfig),
      watcher(watch().eagerlyEvaluate([](kj::Exception&& e) {
        KJ_LOG(ERROR, "timer watcher failed; LAPIC timers stop firing", e);
      })) {}

DeadlineScheduler::~DeadlineScheduler() noexcept(false) {
  watcher = nullptr;
  for (auto& entry: queue) entry.second->position = nullptr;
}

kj::Promise<void> DeadlineScheduler::watch() {
  return observer.whenBecomesReadable().then([this]() {
    // Edge-triggered observer: drain the expiration counter first.
    uint64_t expirations;
    ssize_t n;
    do {
      n = read(timerFd, &expirations, sizeof(expirations));
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN) KJ_FAIL_SYSCALL("read(timerfd)", errno);
    uint64_t now = monotonicNowNs();
    // The margin the timerfd was armed with bounds the spin below.
    uint64_t armedMargin = advance.marginNs();
    // A timerfd never expires early, so now >= programmedNs here; a read
    // without expirations means the timerfd was re-armed since it became
    // readable, and says nothing about wake-up lateness.
    if (n == sizeof(expirations) && programmedAhead && now >= programmedNs) {
      advance.observe(now - programmedNs);
      measuredCount++;
    }
    programmedNs = 0;
    programmedAhead = false;
    // Woken within the margin before the head deadline: spin on the clock
    // up to it (at most the margin, some 100 us), so it fires on time and
    // never before.
    if (!queue.empty()) {
      uint64_t head = queue.begin()->first;
      if (head > now && head - now <= armedMargin) {
        ++spinCount;
        while (now < head) {
#if defined(__x86_64__) || defined(__i386__)
          __builtin_ia32_pause();   // spare the sibling hyperthread
#endif
          now = monotonicNowNs();
        }
      }
    }
    runDue(now);
    return watch();
  });
}

void DeadlineScheduler::runDue(uint64_t now) {
  // Take the due slots out first: a callback re-arms its own slot (periodic
  // timers) and may release whole VMs, which destroys other slots.
  kj::Vector<Slot*> due;
  while (!queue.empty() && queue.begin()->first <= now) {
    Slot* slot = queue.begin()->second;
    queue.erase(queue.begin());
    slot->position = nullptr;
    due.add(slot);
  }
  for (size_t i = 0; i < due.size(); i++) {
    Slot* slot = due[i];
    if (slot == nullptr) continue;
    ++fired;
    // A callback can destroy slots that are still in `due`; Slot's
    // destructor nulls them through `dueScratch`.
    dueScratch = &due;
    slot->onExpiry();
    dueScratch = nullptr;
  }
  reprogram();
}

void DeadlineScheduler::reprogram() {
  // Armed `margin` before the head deadline; a time already past (a
  // deadline within the margin) fires at once and the wake-up spins.
  uint64_t next = 0;
  if (!queue.empty()) {
    uint64_t deadline = queue.begin()->first;
    uint64_t margin = advance.marginNs();
    next = kj::max(deadline > margin ? deadline - margin : uint64_t(0), uint64_t(1));
  }
  if (next == programmedNs) return;
  struct itimerspec spec = {};
  spec.it_value.tv_sec = next / 1'000'000'000ull;
  spec.it_value.tv_nsec = next % 1'000'000'000ull;
  KJ_SYSCALL(timerfd_settime(timerFd, TFD_TIMER_ABSTIME, &spec, nullptr));
  programmedNs = next;
  programmedAhead = next != 0 && next > monotonicNowNs();
}

DeadlineScheduler::Slot::Slot(DeadlineScheduler& scheduler, kj::Function<void()> onExpiry)
    : scheduler(scheduler), onExpiry(kj::mv(onExpiry)) {}

DeadlineScheduler::Slot::~Slot() noexcept(false) {
  KJ_IF_MAYBE(it, position) {
    scheduler.queue.erase(*it);
    position = nullptr;
    scheduler.reprogram();
  }
  KJ_IF_MAYBE(due, scheduler.dueScratch) {
    for (auto& slot: **due) {
      if (slot == this) slot = nullptr;
    }
  }
}

void DeadlineScheduler::Slot::set(kj::Maybe<uint64_t> deadlineNs) {
  KJ_IF_MAYBE(it, position) {
    KJ_IF_MAYBE(d, deadlineNs) {
      if ((*it)->first == *d) return;
    }
    scheduler.queue.erase(*it);
    position = nullptr;
  }
  KJ_IF_MAYBE(d, deadlineNs) {
    position = scheduler.queue.emplace(*d, this);
  }
  scheduler.reprogram();
}

kj::Maybe<uint64_t> DeadlineScheduler::Slot::deadline() const {
  KJ_IF_MAYBE(it, position) return (*it)->first;
  return nullptr;
}

}  // namespace vlapic::daemon
