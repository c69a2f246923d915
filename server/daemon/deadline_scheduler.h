// Real timers for the LAPIC timers of every VM the server hosts: one timerfd
// (CLOCK_MONOTONIC, absolute, nanosecond resolution) watched by the kj event
// loop, in front of an ordered queue of per-vCPU deadlines.
//
// Why not kj::Timer: kj 0.9's event port rounds its epoll timeout to whole
// milliseconds, far above the timer bench target (median lateness < 50 us).
// A timerfd wakes epoll at the requested nanosecond.
#pragma once

#include <kj/async-unix.h>
#include <kj/function.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <kj/vector.h>
#include <cstdint>
#include <map>

namespace vlapic::daemon {

class DeadlineScheduler {
public:
  // Deadlines are CLOCK_MONOTONIC nanoseconds (hal::MonotonicClock).
  explicit DeadlineScheduler(kj::UnixEventPort& eventPort);
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

private:
  kj::AutoCloseFd timerFd;   // closed after `observer` unregisters it
  kj::UnixEventPort::FdObserver observer;
  std::multimap<uint64_t, Slot*> queue;
  uint64_t programmedNs = 0;   // what the timerfd is set to (0: disarmed)
  uint64_t fired = 0;
  // While runDue() calls expiry callbacks: the slots still to run, so that a
  // slot destroyed by a callback (its VM released) is skipped.
  kj::Maybe<kj::Vector<Slot*>*> dueScratch;
  kj::Promise<void> watcher;

  kj::Promise<void> watch();
  void runDue();
  void reprogram();
};

}  // namespace vlapic::daemon
