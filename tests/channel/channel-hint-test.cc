// SPDX-License-Identifier: MIT
// Hinted polls (ChannelServer::pollBetween): vlapicd knows when a vCPU's
// timer expires and keeps that vCPU's channel thread awake across it, so the
// front's fetch finds it polling instead of paying a cold wake-up. Observed
// through the server's stats counters, never through timing.
#include "tests/channel/test-support.h"
#include <catch2/catch.hpp>
#include <kj/thread.h>
#include <atomic>

namespace vlapic::channel {
namespace {

using test::eventually;
using test::expectedReply;
using test::requestNumber;

// Far enough that no test reaches it: the poll ends by other means.
constexpr uint64_t kLongNs = 60'000'000'000;

struct Hinted {
  // The adaptive policy: its window starts at 0, so an idle thread sleeps
  // at once, and whether a wait fed the window is visible in pollWindowNs.
  Hinted() {
    auto created = ChannelServer::create([](const Request& r) { return expectedReply(r); },
                                         [this]() { closedCalls++; });
    server = kj::mv(created.server);
    front = ChannelFront::connect(kj::mv(created.frontFd));
  }

  bool call(uint64_t i) {
    Request request = requestNumber(i);
    return front->call(request) == expectedReply(request);
  }
  // Asleep on the doorbell, with no request served since the last look.
  bool asleep() { return server->stats().asleep; }
  bool polling(uint64_t polls) {
    auto stats = server->stats();
    return stats.hintedPolls == polls && !stats.asleep;
  }

  std::atomic<int> closedCalls = 0;
  kj::Own<ChannelServer> server;
  kj::Own<ChannelFront> front;
};

TEST_CASE("channel hint: pollUntil wakes a sleeping server thread, which serves the next "
          "request from its poll without growing its window",
          "[hint]") {
  Hinted channel;
  REQUIRE(channel.call(1));
  REQUIRE(eventually([&]() { return channel.asleep(); }));
  uint64_t sleepsBefore = channel.server->stats().sleeps;
  // (The first call may have grown it already: it woke a sleeping thread.)
  uint64_t windowBefore = channel.server->stats().pollWindowNs;

  channel.server->pollUntil(monotonicNowNs() + kLongNs);
  REQUIRE(eventually([&]() { return channel.polling(1); }));
  CHECK(channel.server->stats().hintedWakeups == 1);

  REQUIRE(channel.call(2));
  auto stats = channel.server->stats();
  CHECK(stats.hintedRequests == 1);
  CHECK(stats.pollHits == 0);   // the hinted poll's catch is not the window's
  CHECK(stats.sleeps == sleepsBefore);
  // A request that came soon after a sleep would have grown the window
  // (PollWindow::onSlept: 0 to 10 us, or doubled); the hinted one leaves
  // it alone.
  CHECK(stats.pollWindowNs == windowBefore);

  channel.server->cancelPoll();
  CHECK(eventually([&]() { return channel.asleep(); }));
  CHECK(channel.server->stats().hintedPolls == 1);
}

TEST_CASE("channel hint: a poll from a later time starts then, and a request after its end "
          "goes the normal way",
          "[hint]") {
  Hinted channel;
  REQUIRE(eventually([&]() { return channel.asleep(); }));
  uint64_t from = monotonicNowNs() + 5'000'000;
  // 50 ms long, so that even a thread woken very late still finds it open.
  channel.server->pollBetween(from, from + 50'000'000);
  // The thread's timer wakes it at `from`; it polls to the end, then sleeps.
  REQUIRE(eventually([&]() {
    auto stats = channel.server->stats();
    return stats.hintedPolls == 1 && stats.asleep && monotonicNowNs() > from + 50'000'000;
  }));
  auto before = channel.server->stats();
  CHECK(before.hintedWakeups == 1);

  REQUIRE(channel.call(1));
  auto after = channel.server->stats();
  CHECK(after.hintedRequests == 0);
  CHECK(after.hintedPolls == 1);
  // (`requests` counts after the reply is out.)
  CHECK(eventually([&]() { return channel.server->stats().requests == before.requests + 1; }));
}

TEST_CASE("channel hint: the poll ends once the front fetched what attention announced",
          "[hint]") {
  Hinted channel;
  channel.server->pollUntil(monotonicNowNs() + kLongNs);
  REQUIRE(eventually([&]() { return channel.polling(1); }));
  // A request before anything was raised (the front's own early fetch):
  // served from the poll, which goes on.
  REQUIRE(channel.call(1));
  CHECK(channel.server->stats().hintedRequests == 1);

  channel.server->raiseAttention();   // the timer expired
  REQUIRE(channel.front->attentionPending());
  REQUIRE(channel.front->call(Request::fetchEvents()).kind == Reply::Kind::DONE);
  CHECK(channel.server->stats().hintedRequests == 2);
  // Its work done, the thread sleeps long before the hint's end.
  CHECK(eventually([&]() { return channel.asleep(); }));
  CHECK(channel.server->stats().hintedPolls == 1);
}

TEST_CASE("channel hint: a hint given during a poll leaves that poll running", "[hint]") {
  Hinted channel;
  channel.server->pollUntil(monotonicNowNs() + kLongNs);
  REQUIRE(eventually([&]() { return channel.polling(1); }));
  // A periodic timer's next period, set at the expiry: not due yet.
  uint64_t next = monotonicNowNs() + 2 * kLongNs;
  channel.server->pollBetween(next, next + 1'000'000);
  REQUIRE(channel.call(1));
  auto stats = channel.server->stats();
  CHECK(stats.hintedRequests == 1);   // the first poll still ran
  CHECK(stats.hintedPolls == 1);
  // Withdrawn, nothing is left to poll for.
  channel.server->cancelPoll();
  CHECK(eventually([&]() { return channel.asleep(); }));
}

TEST_CASE("channel hint: a front hanging up during a hinted poll is still seen", "[hint]") {
  Hinted channel;
  channel.server->pollUntil(monotonicNowNs() + kLongNs);
  REQUIRE(eventually([&]() { return channel.polling(1); }));
  channel.front = nullptr;   // closes the front's end of the doorbell
  CHECK(eventually([&]() { return channel.closedCalls.load() == 1; }));
  CHECK(channel.server->stats().closed);
}

TEST_CASE("channel hint: a hint needs an end time", "[hint]") {
  Hinted channel;
  CHECK_THROWS_WITH(channel.server->pollBetween(1, 0), Catch::Contains("end time"));
}

TEST_CASE("channel caller: serveOnCaller serves requests on the calling thread, each once, "
          "while the channel thread sleeps",
          "[hint]") {
  Hinted channel;
  REQUIRE(eventually([&]() { return channel.asleep(); }));
  uint64_t before = channel.server->stats().requests;
  // Nothing comes: the poll ends at its time without serving.
  CHECK_FALSE(channel.server->serveOnCaller(monotonicNowNs() + 1'000'000));

  // A front thread calling back to back; this thread polls for its
  // requests meanwhile. Whichever side serves a request, it is served once
  // and answered right.
  constexpr uint64_t kCalls = 300;
  std::atomic<bool> done = false;
  std::atomic<uint64_t> wrong = 0;
  uint64_t servedHere = 0;
  {
    kj::Thread front([&]() {
      KJ_DEFER(done = true);
      for (uint64_t i = 0; i < kCalls; i++) {
        if (!channel.call(i)) wrong++;
      }
    });
    while (!done) {
      if (channel.server->serveOnCaller(monotonicNowNs() + 200'000)) servedHere++;
    }
  }
  CHECK(wrong == 0);
  // (`requests` counts after the reply is out.)
  CHECK(eventually([&]() { return channel.server->stats().requests == before + kCalls; }));
  CHECK(channel.server->stats().callerRequests == servedHere);
  CHECK(servedHere >= 1);
  // The channel thread still serves once nobody else polls.
  CHECK(channel.call(kCalls));
  CHECK(eventually([&]() { return channel.server->stats().requests == before + kCalls + 1; }));
  CHECK(channel.server->stats().callerRequests == servedHere);
}

TEST_CASE("channel caller: serveOnCaller backs off after polls that served nothing",
          "[hint]") {
  // A front that does not fetch after an expiry (its vCPU busy in guest
  // code, or hostile) must not cost the caller a poll at every expiry: each
  // miss in a row doubles the calls skipped, up to kMaxCallerBackoff.
  Hinted channel;
  REQUIRE(eventually([&]() { return channel.asleep(); }));
  // A call whose end time has passed before it looks at the clock (this
  // thread descheduled between monotonicNowNs() and the call, as happens
  // on a loaded CI machine under a sanitizer) neither polls nor skips, and
  // changes no back-off state; repeat it then, so each pollOnce() is one
  // poll or one skip.
  auto pollOnce = [&]() {
    for (;;) {
      auto before = channel.server->stats();
      bool served = channel.server->serveOnCaller(monotonicNowNs() + 200'000);
      auto after = channel.server->stats();
      if (after.callerPolls != before.callerPolls || after.callerSkipped != before.callerSkipped) {
        return served;
      }
    }
  };
  uint64_t expectedSkipped = 0;
  for (uint32_t backoff = 1; backoff <= ChannelServer::kMaxCallerBackoff; backoff *= 2) {
    uint64_t polls = channel.server->stats().callerPolls;
    CHECK_FALSE(pollOnce());  // polls, misses
    CHECK(channel.server->stats().callerPolls == polls + 1);
    for (uint32_t i = 0; i < backoff; i++) CHECK_FALSE(pollOnce());  // skipped
    expectedSkipped += backoff;
    CHECK(channel.server->stats().callerPolls == polls + 1);
    CHECK(channel.server->stats().callerSkipped == expectedSkipped);
  }
  // At the cap it stays there.
  CHECK_FALSE(pollOnce());
  for (uint32_t i = 0; i < ChannelServer::kMaxCallerBackoff; i++) CHECK_FALSE(pollOnce());
  CHECK(channel.server->stats().callerSkipped ==
        expectedSkipped + ChannelServer::kMaxCallerBackoff);
  // The channel thread serves meanwhile, untouched by the back-off.
  CHECK(channel.call(1));
}

}  // namespace
}  // namespace vlapic::channel
