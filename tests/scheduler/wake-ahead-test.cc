// SPDX-License-Identifier: MIT
// The client library's wake-ahead wait (client/lib/wake_ahead.h), on an
// injected clock: when a front sleeps, when it polls, how long, what it
// learns, and that every poll is bounded (an idle front never polls).
// Nothing here sleeps or reads the real clock.
#include "client/lib/wake_ahead.h"
#include "hal/hal.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>

namespace vlapic::client {
namespace {

using Action = WakeAheadPolicy::Plan::Action;

WakeAheadConfig testConfig() {
  WakeAheadConfig config;
  config.initialMarginNs = 60'000;
  config.maxMarginNs = 250'000;
  config.minPollAfterNs = 30'000;
  config.maxPollAfterNs = 300'000;
  config.contendedGapNs = 50'000;
  return config;
}

TEST_CASE("no armed timer: the wait blocks, it never polls", "[wake-ahead]") {
  WakeAheadPolicy policy(testConfig());
  auto plan = policy.plan(1'000'000, nullptr);
  CHECK(plan.action == Action::BLOCK);
}

TEST_CASE("a deadline ahead: sleep until deadline - margin, poll until deadline + poll window",
          "[wake-ahead]") {
  WakeAheadPolicy policy(testConfig());
  CHECK(policy.marginNs() == 60'000);
  CHECK(policy.pollAfterNs() == 30'000);
  auto plan = policy.plan(1'000'000, uint64_t(2'000'000));
  CHECK(plan.action == Action::SLEEP_THEN_POLL);
  CHECK(plan.wakeAtNs == 2'000'000 - 60'000);
  CHECK(plan.pollUntilNs == 2'000'000 + 30'000);
}

TEST_CASE("a deadline within the margin polls at once, one past its poll window blocks",
          "[wake-ahead]") {
  WakeAheadPolicy policy(testConfig());
  auto soon = policy.plan(1'000'000, uint64_t(1'000'000 + 10'000));
  CHECK(soon.action == Action::POLL);
  CHECK(soon.wakeAtNs == 1'000'000);
  auto justPast = policy.plan(1'000'000, uint64_t(1'000'000 - 10'000));
  CHECK(justPast.action == Action::POLL);
  CHECK(justPast.pollUntilNs == 1'000'000 - 10'000 + 30'000);
  auto longPast = policy.plan(1'000'000, uint64_t(1'000'000 - 30'000));
  CHECK(longPast.action == Action::BLOCK);
}

TEST_CASE("the margin learns 1.5x the wake-up lateness, within [0, max]", "[wake-ahead]") {
  WakeAheadPolicy policy(testConfig());
  for (int i = 0; i < 300; i++) policy.observeWakeUp(1'000'000, 1'000'000 + 80'000);
  CHECK(policy.marginNs() <= 120'000);
  CHECK(policy.marginNs() > 120'000 - 20);
  // One descheduled wake-up of 50 ms cannot push it past the limit.
  for (int i = 0; i < 300; i++) policy.observeWakeUp(1'000'000, 51'000'000);
  CHECK(policy.marginNs() <= 250'000);
  CHECK(policy.marginNs() > 250'000 - 20);
  // Wake-ups on time shrink it to nothing: no polling ahead.
  for (int i = 0; i < 600; i++) policy.observeWakeUp(1'000'000, 1'000'000);
  CHECK(policy.marginNs() < 20);
}

TEST_CASE("the poll past the deadline learns 2x the arrival lateness, within [min, max]",
          "[wake-ahead]") {
  WakeAheadPolicy policy(testConfig());
  for (int i = 0; i < 300; i++) policy.observeArrival(1'000'000, 1'000'000 + 50'000);
  CHECK(policy.pollAfterNs() <= 100'000);
  CHECK(policy.pollAfterNs() > 100'000 - 20);
  for (int i = 0; i < 300; i++) policy.observeArrival(1'000'000, 90'000'000);
  CHECK(policy.pollAfterNs() > 300'000 - 20);
  CHECK(policy.pollAfterNs() <= 300'000);
  // Events before the deadline (the server and the front raced) count as 0.
  for (int i = 0; i < 600; i++) policy.observeArrival(1'000'000, 900'000);
  CHECK(policy.pollAfterNs() == 30'000);
}

// A plain thread's wait on a ManualClock: sleeping advances the clock to the
// wake-up time (or to when something arrives), each poll costs `pollCostNs`.
struct FakeThread {
  hal::ManualClock clock{10'000'000};
  uint64_t pollCostNs = 1'000;
  kj::Maybe<uint64_t> eventAtNs;       // when the awaited events arrive
  uint64_t lateWakeNs = 0;             // how late a timed sleep ends
  uint64_t descheduleAtNs = UINT64_MAX;  // a poll at/after this loses the CPU for 1 ms
  uint32_t polls = 0, timedSleeps = 0, openSleeps = 0;

  bool arrivedNow() const {
    KJ_IF_MAYBE(at, eventAtNs) return clock.nowNs() >= *at;
    return false;
  }

  WakeAheadHooks hooks() {
    WakeAheadHooks h;
    h.nowNs = [this]() { return clock.nowNs(); };
    h.sleepUntil = [this](kj::Maybe<uint64_t> wakeAtNs) -> bool {
      KJ_IF_MAYBE(at, wakeAtNs) {
        ++timedSleeps;
        KJ_IF_MAYBE(event, eventAtNs) {
          if (*event <= *at) {
            clock.set(kj::max(clock.nowNs(), *event));
            return true;
          }
        }
        clock.set(*at + lateWakeNs);
        return false;
      }
      ++openSleeps;
      KJ_IF_MAYBE(event, eventAtNs) clock.set(kj::max(clock.nowNs(), *event));
      return eventAtNs != nullptr;
    };
    h.arrived = [this]() {
      ++polls;
      bool arrived = arrivedNow();
      if (clock.nowNs() >= descheduleAtNs) {
        clock.advance(1'000'000);
        descheduleAtNs = UINT64_MAX;
      } else {
        clock.advance(pollCostNs);
      }
      return arrived;
    };
    return h;
  }
};

// One wait of a FakeThread with a fresh policy.
struct Waiting {
  WakeAheadPolicy policy{testConfig()};
  WakeAheadStats stats;
  FakeThread thread;
  WakeAheadHooks hooks = thread.hooks();
  uint64_t in(uint64_t ns) const { return thread.clock.nowNs() + ns; }
  bool wait(kj::Maybe<uint64_t> deadline) { return waitAhead(policy, stats, deadline, hooks); }
};

TEST_CASE("waitAhead: sleeps until the wake-up time, then polls until the event", "[wake-ahead]") {
  Waiting w;
  uint64_t deadline = w.in(5'000'000);
  w.thread.eventAtNs = deadline + 8'000;   // the event's trip
  w.thread.lateWakeNs = 20'000;            // the timed sleep ends late
  CHECK(w.wait(deadline));
  CHECK(w.thread.timedSleeps == 1);
  CHECK(w.thread.openSleeps == 0);
  CHECK(w.stats.timedWakeUps == 1);
  CHECK(w.stats.pollHits == 1);
  CHECK(w.stats.pollMisses == 0);
  // Polled from deadline - 60 us + 20 us to the event: about 48 us.
  CHECK(w.stats.pollNs >= 47'000);
  CHECK(w.stats.pollNs <= 50'000);
  // Seen within one poll of its arrival.
  CHECK(w.thread.clock.nowNs() <= KJ_ASSERT_NONNULL(w.thread.eventAtNs) + w.thread.pollCostNs);
}

TEST_CASE("waitAhead: keepWarm runs once, at the timed wake-up, before polling", "[wake-ahead]") {
  Waiting w;
  uint64_t deadline = w.in(5'000'000);
  w.thread.eventAtNs = deadline + 5'000;
  uint32_t warmed = 0, pollsBeforeWarm = 0;
  w.hooks.keepWarm = kj::Function<void()>([&]() {
    ++warmed;
    pollsBeforeWarm = w.thread.polls;
    CHECK(w.thread.clock.nowNs() == deadline - 60'000);
  });
  CHECK(w.wait(deadline));
  CHECK(warmed == 1);
  CHECK(pollsBeforeWarm == 0);
  CHECK(w.stats.pollHits == 1);

  // Woken early by something else, or with a deadline already within the
  // margin: no timed wake-up, so nothing to warm.
  Waiting early;
  early.thread.eventAtNs = early.in(1'000);
  early.hooks.keepWarm = kj::Function<void()>([&]() { ++warmed; });
  CHECK(early.wait(early.in(5'000'000)));
  CHECK(early.wait(early.in(10'000)));
  CHECK(warmed == 1);
}

TEST_CASE("waitAhead: a poll that runs out sleeps until the event and learns it was late",
          "[wake-ahead]") {
  Waiting w;
  uint64_t deadline = w.in(1'000'000);
  w.thread.eventAtNs = deadline + 2'000'000;   // far later than any poll
  uint64_t pollAfterBefore = w.policy.pollAfterNs();
  CHECK(w.wait(deadline));
  CHECK(w.stats.pollMisses == 1);
  CHECK(w.thread.openSleeps == 1);
  // Bounded: it stopped polling within one poll of deadline + the window.
  CHECK(w.stats.pollNs <= w.policy.config().initialMarginNs + pollAfterBefore + w.thread.pollCostNs);
  CHECK(w.thread.polls <= (60'000 + 30'000) / w.thread.pollCostNs + 2);
  CHECK(w.policy.pollAfterNs() > pollAfterBefore);
}

TEST_CASE("waitAhead: an event that never comes costs one bounded poll, then a plain sleep",
          "[wake-ahead]") {
  Waiting w;   // no event at all (a masked timer, a stale hint)
  uint64_t deadline = w.in(1'000'000);
  CHECK(!w.wait(deadline));
  CHECK(w.stats.pollMisses == 1);
  CHECK(w.thread.openSleeps == 1);
  CHECK(w.thread.polls <= (60'000 + 30'000) / w.thread.pollCostNs + 2);
}

TEST_CASE("waitAhead: a descheduled poll stops polling at once (the CPU is wanted)",
          "[wake-ahead]") {
  Waiting w;
  uint64_t deadline = w.in(1'000'000);
  w.thread.eventAtNs = deadline + 200'000;
  w.thread.descheduleAtNs = deadline - 50'000;
  CHECK(w.wait(deadline));
  CHECK(w.stats.contended == 1);
  CHECK(w.stats.pollHits == 0);
  CHECK(w.thread.openSleeps == 1);
}

TEST_CASE("waitAhead: something else arriving during the sleep ends the wait unpolled",
          "[wake-ahead]") {
  Waiting w;
  uint64_t deadline = w.in(5'000'000);
  w.thread.eventAtNs = w.thread.clock.nowNs() + 1'000'000;   // e.g. an IPI, long before
  CHECK(w.wait(deadline));
  CHECK(w.thread.polls == 1);   // the caller's look at what arrived, no polling
  CHECK(w.stats.timedWakeUps == 0);
  CHECK(w.stats.pollNs == 0);
}

TEST_CASE("waitAhead: without a deadline it only sleeps", "[wake-ahead]") {
  Waiting w;
  w.thread.eventAtNs = w.thread.clock.nowNs() + 3'000'000;
  CHECK(w.wait(nullptr));
  CHECK(w.thread.openSleeps == 1);
  CHECK(w.thread.timedSleeps == 0);
  CHECK(w.stats.pollNs == 0);
}

TEST_CASE("TimerDeadlines: earliest of the vCPUs, a past deadline replaced is an arrival",
          "[wake-ahead]") {
  TimerDeadlines book(3);
  CHECK(book.earliest() == nullptr);
  book.note(0, uint64_t(5'000), 1'000);
  book.note(2, uint64_t(3'000), 1'000);
  book.note(7, uint64_t(1), 1'000);   // no such vCPU: ignored, it is a hint
  auto first = KJ_ASSERT_NONNULL(book.earliest());
  CHECK(first.vcpu == 2);
  CHECK(first.deadlineNs == 3'000);
  // Re-armed before it expired (an access reply): no arrival.
  book.note(2, uint64_t(4'000), 2'000);
  CHECK(book.takeArrivals().size() == 0);
  // The TIMER event after the deadline: it moves on, and that is an arrival.
  book.note(2, uint64_t(9'000), 4'100);
  auto arrivals = book.takeArrivals();
  REQUIRE(arrivals.size() == 1);
  CHECK(arrivals[0].deadlineNs == 4'000);
  CHECK(arrivals[0].arrivedNs == 4'100);
  CHECK(KJ_ASSERT_NONNULL(book.earliest()).vcpu == 0);
  // The same deadline again (a reply after the event) is nothing new.
  book.note(2, uint64_t(9'000), 9'500);
  CHECK(book.takeArrivals().size() == 0);
  book.forget(0);
  book.note(2, nullptr, 9'600);
  CHECK(book.earliest() == nullptr);
}

}  // namespace
}  // namespace vlapic::client
