// SPDX-License-Identifier: MIT
// Waking ahead of a known timer deadline: halt polling for a front.
//
// A LAPIC timer's expiry reaches a front as events (TIMER, then DELIVERABLE)
// that vlapicd posts at the exact deadline. What the front's thread costs on
// top is its own wake-up: a thread blocked in epoll or on a condition
// variable takes some 50-60 us to run again on a nested host, more than the
// whole trip of the event. But the front knows when the expiry is due
// (vlapicd reports each vCPU's next deadline in every access reply,
// interrupt state and TIMER event: schema `timerDeadlineNs`), so it can do
// what KVM does for a halted vCPU (halt polling) with the timer advance in
// front of it: sleep only until the deadline minus a wake-up margin, then
// poll for the event, briefly, and sleep for good if it does not come.
//
//  * `WakeAheadPolicy`: the arithmetic, on times passed in (unit-tested on
//    an injected clock). The margin is learned from how late this thread's
//    timed sleeps end; the poll past the deadline from how late the events
//    arrived; both are clamped, and a poll that finds its CPU taken by
//    another task stops at once (as KVM stops halt polling when other tasks
//    are runnable), so nothing spins unbounded and an idle VM (no armed
//    timer) never polls.
//  * `TimerDeadlines`: each vCPU's next deadline, as the client library
//    learns it from replies and events (AsyncVm::timerDeadlines()).
//  * `WakeAheadWaiter`: for fronts on a kj event loop (client::Connection):
//    runs the loop until a promise resolves, sleeping until the earliest
//    deadline's wake-up time and polling the connection (non-blocking
//    epoll) around it.
//  * `waitAhead()`: the same wait for a plain thread (a halted vCPU thread of
//    vlapic-kvm), given how to sleep and how to poll.
//
// The guest can never see an interrupt early through any of this: the
// deadline is only a hint for when to be awake; the expiry is vlapicd's.
#pragma once

#include <kj/async-unix.h>
#include <kj/function.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <kj/vector.h>
#include <cstdint>

namespace vlapic::client {

struct WakeAheadConfig {
  // Wake this long before a deadline at first; then learned.
  uint64_t initialMarginNs = 60'000;
  // At most this early: the margin is spent polling.
  uint64_t maxMarginNs = 250'000;
  // Poll past the deadline at least this long (the event's trip), ...
  uint64_t minPollAfterNs = 30'000;
  // ... and never longer: then the wait sleeps until the event wakes it.
  uint64_t maxPollAfterNs = 300'000;
  // Two polls this far apart mean the thread was descheduled: the CPU is
  // wanted by another task, so stop polling and sleep.
  uint64_t contendedGapNs = 50'000;
};

// Counters of a waiter (what the wake-ahead cost and caught).
struct WakeAheadStats {
  uint64_t timedWakeUps = 0;   // sleeps ended by the wake-ahead timer
  uint64_t pollHits = 0;       // awaited events that arrived while polling
  uint64_t pollMisses = 0;     // polls that ran out (the event came later)
  uint64_t contended = 0;      // polls stopped because the CPU was taken
  uint64_t pollNs = 0;         // time spent polling in all
};

class WakeAheadPolicy {
public:
  WakeAheadPolicy() : WakeAheadPolicy(WakeAheadConfig()) {}
  explicit WakeAheadPolicy(WakeAheadConfig config);

  // What to do at `nowNs` for an expiry due at `deadlineNs`: block (no
  // deadline, or one so far past that its event should have come), poll
  // now, or sleep until `wakeAtNs` first. Polling lasts until `pollUntilNs`.
  struct Plan {
    enum class Action : uint8_t { BLOCK, POLL, SLEEP_THEN_POLL };
    Action action = Action::BLOCK;
    uint64_t wakeAtNs = 0;
    uint64_t pollUntilNs = 0;
  };
  Plan plan(uint64_t nowNs, kj::Maybe<uint64_t> deadlineNs) const;

  // A timed sleep armed for `wakeAtNs` ended at `nowNs` (a timer cannot end
  // it early; an earlier end for another reason is not a sample).
  void observeWakeUp(uint64_t wakeAtNs, uint64_t nowNs);
  // The awaited expiry's event arrived at `nowNs` for a deadline at
  // `deadlineNs` (before it, when the server and this thread raced: 0).
  void observeArrival(uint64_t deadlineNs, uint64_t nowNs);

  // Wake this long before a deadline: 1.5 x the learned wake-up lateness
  // (its average would leave half the wake-ups late), within [0, max].
  uint64_t marginNs() const;
  // Poll past a deadline: 2 x the learned arrival lateness, within
  // [minPollAfterNs, maxPollAfterNs].
  uint64_t pollAfterNs() const;
  const WakeAheadConfig& config() const { return settings; }

private:
  WakeAheadConfig settings;
  uint64_t wakeLatenessNs;     // EMA, gain 1/8
  uint64_t arrivalLatenessNs;  // EMA, gain 1/8
};

// Each vCPU's next timer deadline (host CLOCK_MONOTONIC ns) as far as the
// front knows it; what a WakeAheadWaiter wakes ahead of. The client library
// keeps the one of each AsyncVm up to date: every access reply, interrupt
// state and acknowledge of its vCPUs, and every TIMER and INIT event. Used
// on the thread of the loop that owns the VM.
class TimerDeadlines {
public:
  explicit TimerDeadlines(uint32_t vcpuCount);
  KJ_DISALLOW_COPY(TimerDeadlines);

  // vCPU `vcpu`'s timer now expires at `deadlineNs` (nullptr: disarmed), as
  // learned at `nowNs`. A known deadline already past is replaced: its
  // expiry's events have arrived (that is how a TIMER event's next deadline
  // gets here), which is an arrival to learn from.
  void note(uint32_t vcpu, kj::Maybe<uint64_t> deadlineNs, uint64_t nowNs);
  // The vCPU's expiry was not seen in time: stop waking ahead of it.
  void forget(uint32_t vcpu);

  kj::Maybe<uint64_t> deadline(uint32_t vcpu) const;
  struct Earliest { uint32_t vcpu; uint64_t deadlineNs; };
  kj::Maybe<Earliest> earliest() const;

  // Arrivals (deadline, when its events came) since the last call.
  struct Arrival { uint64_t deadlineNs, arrivedNs; };
  kj::Array<Arrival> takeArrivals();
  // Resolves at the next note() that arms or moves a deadline (a waiter
  // asleep until an older wake-up time must plan again).
  kj::Promise<void> whenChanged();

private:
  kj::Array<kj::Maybe<uint64_t>> deadlines;
  kj::Vector<Arrival> arrivals;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> changed;
};

// Runs a kj event loop until a promise resolves, waking ahead of the
// earliest deadline in a TimerDeadlines: the loop blocks in epoll as usual
// until then (plus a timerfd at the wake-up time), then polls (the loop's
// non-blocking epoll, so replies and events are read as they come) until
// that vCPU's expiry arrives or the poll runs out.
class WakeAheadWaiter {
public:
  WakeAheadWaiter(kj::UnixEventPort& eventPort, WakeAheadConfig config = WakeAheadConfig());
  ~WakeAheadWaiter() noexcept(false);
  KJ_DISALLOW_COPY(WakeAheadWaiter);

  // In place of `done.wait(waitScope)`.
  void wait(kj::Promise<void> done, kj::WaitScope& waitScope, TimerDeadlines& deadlines);

  const WakeAheadPolicy& policy() const { return learned; }
  WakeAheadStats stats() const { return counters; }

private:
  kj::AutoCloseFd timerFd;   // closed after `observer` unregisters it
  kj::UnixEventPort::FdObserver observer;
  WakeAheadPolicy learned;
  WakeAheadStats counters;

  void learnArrivals(TimerDeadlines& deadlines);
  // Polls until `done` is ready (true), or the poll for `vcpu`'s deadline
  // ends (false).
  bool poll(kj::ForkedPromise<void>& done, kj::WaitScope& waitScope, TimerDeadlines& deadlines,
            uint32_t vcpu, uint64_t deadlineNs, uint64_t pollUntilNs);
  void setTimer(uint64_t atNs);
};

// A plain thread's wait for an expiry due at `deadlineNs` (vlapic-kvm's
// halted vCPU). `sleepUntil(wakeAtNs)` blocks until something arrives (true)
// or until the time (false); `sleepUntil(nullptr)` blocks until something
// arrives. `arrived()` says, without blocking, whether the awaited events
// are there. Returns when they are (true), or when `sleepUntil` came back
// true for another reason (the caller looks at what arrived and waits
// again). Polling ends by `pollUntilNs`, or at a descheduled poll; then it
// sleeps with no time limit. `keepWarm`, if set, runs once when the timed
// sleep ends, before polling: a front whose events come through a server
// thread that sleeps too (the shared-memory channel's) wakes it now with a
// request, so that it is awake, in its own poll window, for the expiry.
// (Repeating the request while polling gained nothing measurable here:
// that window collapses to 0 on a contended host, whatever the front does.)
struct WakeAheadHooks {
  kj::Function<uint64_t()> nowNs;
  kj::Function<bool(kj::Maybe<uint64_t> wakeAtNs)> sleepUntil;
  kj::Function<bool()> arrived;
  kj::Maybe<kj::Function<void()>> keepWarm;
};
bool waitAhead(WakeAheadPolicy& policy, WakeAheadStats& stats, kj::Maybe<uint64_t> deadlineNs,
               WakeAheadHooks& hooks);

uint64_t monotonicNowNs();

}  // namespace vlapic::client
