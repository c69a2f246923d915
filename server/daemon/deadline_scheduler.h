// SPDX-License-Identifier: MIT
// Real timers for the LAPIC timers of every VM the server hosts: one timerfd
// (CLOCK_MONOTONIC, absolute, nanosecond resolution) watched by the kj event
// loop, in front of an ordered queue of per-vCPU deadlines.
//
// Why not kj::Timer: kj 0.9's event port rounds its epoll timeout to whole
// milliseconds, far above the timer bench target (median lateness < 50 us).
// A timerfd wakes epoll at the requested nanosecond.
//
// Waking up is not free: on a busy or nested host the loop runs some 100 us
// after the timerfd expires. So, like KVM's lapic_timer_advance_ns, the
// timerfd is armed early by an advance margin learned from the measured
// wake-up lateness, and a wake-up before the deadline spins on the clock for
// the rest of the margin. An expiry never runs before its deadline: the
// guest must never see its timer early.
#pragma once

#include <kj/async-unix.h>
#include <kj/function.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <kj/vector.h>
#include <cstdint>
#include <map>

namespace vlapic::daemon {

// How early to arm the timerfd, learned from how late wake-ups come: 1.5x
// an exponential moving average of the wake-up lateness (gain 1/8), within
// [0, maxNs]. Each sample is clamped too, so one descheduled wake-up cannot
// set the margin (and the spinning) far above what is typical. Why 1.5x:
// on a nested host the lateness is widely spread (measured here: p10 29,
// p50 52, p75 81, p90 99 us), and a margin of the average leaves half the
// wake-ups late, each expiry then late by the difference; 1.5x covers
// about nine in ten, for some 40 us of spinning per expiry. A value type;
// the scheduler feeds it.
class TimerAdvance {
public:
  struct Config {
    uint64_t initialNs = 20'000;   // the first margin
    uint64_t maxNs = 200'000;   // 0: no advance, never spin
  };
  TimerAdvance() : TimerAdvance(Config()) {}
  explicit TimerAdvance(Config config);

  // A wake-up came `latenessNs` after the time the timerfd was armed for.
  void observe(uint64_t latenessNs);
  uint64_t marginNs() const { return kj::min(lateness + (lateness + 1) / 2, maxNs); }

private:
  uint64_t maxNs;
  uint64_t lateness;   // the average, in ns
};

class DeadlineScheduler {
public:
  // Deadlines are CLOCK_MONOTONIC nanoseconds (hal::MonotonicClock).
  explicit DeadlineScheduler(kj::UnixEventPort& eventPort,
                             TimerAdvance::Config advanceConfig = TimerAdvance::Config());
  ~DeadlineScheduler() noexcept(false);
  KJ_DISALLOW_COPY(DeadlineScheduler);

  // One armable deadline (one per vCPU). Disarms itself when destroyed, so
  // releasing a VM cancels its timers.
  class Slot {
  public:
    Slot(DeadlineScheduler& scheduler, kj::Function<void()> onExpiry);
    ~Slot() noexcept(false);
    KJ_DISALLOW_COPY(Slot);

    // Arm at `deadlineNs`, move, or disarm (nullptr). A deadline already
    // past fires on the next loop turn.
    void set(kj::Maybe<uint64_t> deadlineNs);
    bool armed() const { return position != nullptr; }
    kj::Maybe<uint64_t> deadline() const;

  private:
    friend class DeadlineScheduler;
    DeadlineScheduler& scheduler;
    kj::Function<void()> onExpiry;
    kj::Maybe<std::multimap<uint64_t, Slot*>::iterator> position;
  };

  size_t armedCount() const { return queue.size(); }
  uint64_t expiriesFired() const { return fired; }
  uint64_t advanceNs() const { return advance.marginNs(); }
  // Wake-ups that came before the head deadline and spun up to it.
  uint64_t spins() const { return spinCount; }
  // Timerfd wake-ups whose lateness fed the advance margin (armed while
  // still ahead; a deadline already past when armed measures nothing).
  uint64_t wakeupsMeasured() const { return measuredCount; }

private:
  kj::AutoCloseFd timerFd;   // closed after `observer` unregisters it
  kj::UnixEventPort::FdObserver observer;
  std::multimap<uint64_t, Slot*> queue;
  uint64_t programmedNs = 0;   // what the timerfd is set to (0: disarmed)
  // Whether programmedNs was still ahead when armed: only then does the
  // wake-up's lateness measure the wake-up (a time already past fires at
  // once, late by however long ago it was).
  bool programmedAhead = false;
  TimerAdvance advance;
  uint64_t fired = 0;
  uint64_t spinCount = 0;
  uint64_t measuredCount = 0;
  // While runDue() calls expiry callbacks: the slots still to run, so that a
  // slot destroyed by a callback (its VM released) is skipped.
  kj::Maybe<kj::Vector<Slot*>*> dueScratch;
  kj::Promise<void> watcher;

  kj::Promise<void> watch();
  void runDue(uint64_t now);
  void reprogram();
};

}  // namespace vlapic::daemon
