// SPDX-License-Identifier: MIT
// The channel between two threads of one process: round trips under each
// polling policy, ordering, events and attention, handler failures, a peer
// going away on either side, and an idle server costing no CPU.
#include "tests/channel/test-support.h"
#include <catch2/catch.hpp>
#include <kj/mutex.h>
#include <kj/thread.h>
#include <kj/vector.h>
#include <atomic>
#include <ctime>
#include <poll.h>
#include <sys/socket.h>

namespace vlapic::channel {
namespace {

using test::eventually;
using test::expectedReply;
using test::requestNumber;

struct Pair {
  explicit Pair(PollPolicy policy,
                ChannelServer::Handler handler = [](const Request& r) { return expectedReply(r); }) {
    ChannelServer::Options options;
    options.poll = policy;
    auto created = ChannelServer::create(kj::mv(handler), [this]() { closedCalls++; }, options);
    server = kj::mv(created.server);
    ChannelFront::Options frontOptions;
    frontOptions.poll = policy;
    front = ChannelFront::connect(kj::mv(created.frontFd), frontOptions);
  }
  std::atomic<int> closedCalls = 0;
  kj::Own<ChannelServer> server;
  kj::Own<ChannelFront> front;
};

uint64_t policyCalls(const PollPolicy& policy) {
  // The busy policy spins on both threads; keep it short on a shared
  // two-core machine.
  return policy.maxNs == UINT64_MAX ? 2000 : 5000;
}

TEST_CASE("channel: round trips return the handler's reply under every polling policy", "[thread]") {
  for (auto policy: {PollPolicy::adaptivePolicy(), PollPolicy::sleepPolicy(),
                     PollPolicy::busyPolicy()}) {
    Pair pair(policy);
    uint64_t calls = policyCalls(policy);
    for (uint64_t i = 0; i < calls; i++) {
      Request request = requestNumber(i);
      Reply reply = pair.front->call(request);
      if (!(reply == expectedReply(request))) {
        FAIL("call " << i << " got the wrong reply");
      }
    }
    auto stats = pair.server->stats();
    CHECK(stats.requests == calls);
    CHECK(stats.rejected == 0);
    CHECK(pair.front->stats().calls == calls);
    if (policy.maxNs == 0) {
      // Nobody spun: every wait went the sleeping (doorbell) way.
      CHECK(pair.front->stats().pollHits == 0);
      CHECK(stats.pollHits == 0);
      CHECK(pair.front->stats().sleeps > 0);
    }
  }
}

TEST_CASE("channel: each reply answers its own request, in order, values included", "[thread]") {
  // The handler numbers requests itself: replies must come back 1, 2, 3...
  uint64_t served = 0;
  Pair pair(PollPolicy::adaptivePolicy(), [&served](const Request& request) {
    Reply reply = Reply::access(AccessResult::ok(++served));
    reply.cr8 = static_cast<uint8_t>(request.value & 15);
    return reply;
  });
  for (uint64_t i = 1; i <= 3000; i++) {
    Reply reply = pair.front->call(Request::mmioWrite(0xFEE00080, 4, i));
    REQUIRE(reply.value == i);
    REQUIRE(reply.cr8 == (i & 15));
  }
}

TEST_CASE("channel: a reply carries the injection and the queued events of that exit", "[thread]") {
  Pair pair(PollPolicy::adaptivePolicy(), [](const Request& request) {
    Reply reply = Reply::access(AccessResult::ok());
    if (request.injectIfPending) reply.inject = uint8_t(0x31);
    reply.addEvent(Event{EventKind::EOI, 0x22, 2});
    reply.addEvent(Event{EventKind::SIPI, 0x9A, 1});
    return reply;
  });
  Request request = Request::msrWrite(0x80B, 0);  // x2APIC EOI
  Reply plain = pair.front->call(request);
  CHECK(plain.inject == nullptr);
  request.injectIfPending = true;
  Reply reply = pair.front->call(request);
  CHECK(reply.inject == uint8_t(0x31));
  REQUIRE(reply.events().size() == 2);
  CHECK(reply.events()[0] == Event{EventKind::EOI, 0x22, 2});
  CHECK(reply.events()[1] == Event{EventKind::SIPI, 0x9A, 1});
}

TEST_CASE("channel: attention: raised by the server, seen by the front, cleared by its next call",
          "[thread]") {
  Pair pair(PollPolicy::adaptivePolicy());
  CHECK_FALSE(pair.front->attentionPending());
  CHECK_FALSE(pair.front->waitForAttention(uint64_t(1'000'000)));  // times out
  pair.server->raiseAttention();
  CHECK(pair.front->attentionPending());
  CHECK(pair.front->waitForAttention(uint64_t(1'000'000)));
  pair.front->call(Request::fetchEvents());
  CHECK_FALSE(pair.front->attentionPending());
}

TEST_CASE("channel: attention eventfd: readable on each clear-to-raised edge, for kicking a vCPU",
          "[thread]") {
  Pair pair(PollPolicy::adaptivePolicy());
  auto readable = [&]() {
    struct pollfd pfd = {pair.front->attentionFd(), POLLIN, 0};
    return poll(&pfd, 1, 0) == 1;
  };
  CHECK_FALSE(readable());
  CHECK_FALSE(pair.front->consumeAttentionNotification());
  pair.server->raiseAttention();
  CHECK(readable());
  CHECK(pair.front->consumeAttentionNotification());
  CHECK_FALSE(readable());
  // Raised again before the front fetched: it knows already, no new edge.
  pair.server->raiseAttention();
  CHECK_FALSE(readable());
  // The call clears attention; the next raise is a new edge.
  pair.front->call(Request::fetchEvents());
  pair.server->raiseAttention();
  CHECK(readable());
}

TEST_CASE("channel: attention wakes a front parked with no timeout (a halted vCPU)", "[thread]") {
  Pair pair(PollPolicy::sleepPolicy());
  std::atomic<bool> woke = false;
  {
    kj::Thread vcpu([&]() {
      if (pair.front->waitForAttention(nullptr)) woke = true;
    });
    // Raise only once the front sleeps, so the doorbell path is what wakes it.
    REQUIRE(eventually([&]() { return pair.front->stats().sleeps > 0; }));
    pair.server->raiseAttention();
  }
  CHECK(woke);
}

TEST_CASE("channel: many channels at once each get their own replies, then all sleep",
          "[thread]") {
  // One VM's worth of vCPUs, each front on its own thread, all handlers
  // sharing one mutex-guarded counter as the Vm lock would be shared.
  constexpr size_t kChannels = 12;
  constexpr uint64_t kCalls = 300;
  kj::MutexGuarded<uint64_t> vmLock(0);
  kj::Vector<kj::Own<Pair>> pairs;
  for (size_t c = 0; c < kChannels; c++) {
    pairs.add(kj::heap<Pair>(PollPolicy::adaptivePolicy(), [&vmLock, c](const Request& request) {
      ++*vmLock.lockExclusive();
      Reply reply = expectedReply(request);
      reply.cr8 = static_cast<uint8_t>(c);  // which channel answered
      return reply;
    }));
  }
  std::atomic<uint64_t> wrong = 0;
  {
    kj::Vector<kj::Own<kj::Thread>> vcpus;
    for (size_t c = 0; c < kChannels; c++) {
      vcpus.add(kj::heap<kj::Thread>([&, c]() {
        for (uint64_t i = 0; i < kCalls; i++) {
          Request request = requestNumber(i * kChannels + c);
          if (request.operation == Operation::SET_CR8) request = Request::fetchEvents();
          Reply expected = expectedReply(request);
          expected.cr8 = static_cast<uint8_t>(c);
          if (!(pairs[c]->front->call(request) == expected)) wrong++;
        }
      }));
    }
  }
  CHECK(wrong == 0);
  CHECK(*vmLock.lockExclusive() == kChannels * kCalls);
  for (auto& pair: pairs) {
    CHECK(eventually([&]() { return pair->server->stats().asleep; }));
  }
}

TEST_CASE("channel: a handler that throws yields HANDLER_FAILED and the channel keeps serving",
          "[thread]") {
  Pair pair(PollPolicy::adaptivePolicy(), [](const Request& request) -> Reply {
    KJ_REQUIRE(request.operation != Operation::MSR_READ, "test handler refuses MSR reads");
    return expectedReply(request);
  });
  Reply failed = pair.front->call(Request::msrRead(0x802));
  CHECK(failed.kind == Reply::Kind::REJECTED);
  CHECK(failed.rejection == Rejection::HANDLER_FAILED);
  Request next = Request::mmioRead(0xFEE00020, 4);
  CHECK(pair.front->call(next) == expectedReply(next));
  CHECK(pair.server->stats().handlerFailures == 1);
}

TEST_CASE("channel: a handler reply the front would reject is a HANDLER_FAILED instead",
          "[thread]") {
  Pair pair(PollPolicy::adaptivePolicy(), [](const Request&) {
    Reply reply = Reply::done();
    reply.cr8 = 16;  // CR8 is 4 bits (SDM 10.8.6.1)
    return reply;
  });
  Reply reply = pair.front->call(Request::fetchEvents());
  CHECK(reply.kind == Reply::Kind::REJECTED);
  CHECK(reply.rejection == Rejection::HANDLER_FAILED);
}

TEST_CASE("channel: the server learns of the front hanging up and calls onClosed once", "[thread]") {
  Pair pair(PollPolicy::adaptivePolicy());
  pair.front->call(Request::fetchEvents());
  pair.front = nullptr;  // closes the front's fd and mapping
  CHECK(eventually([&]() { return pair.closedCalls.load() == 1; }));
  CHECK(pair.server->stats().closed);
}

TEST_CASE("channel: a busy-polling server notices the hang-up too", "[thread]") {
  Pair pair(PollPolicy::busyPolicy());
  pair.front->call(Request::fetchEvents());
  pair.front = nullptr;
  CHECK(eventually([&]() { return pair.closedCalls.load() == 1; }));
}

TEST_CASE("channel: a spin that finds its CPU contended still reports a peer that hung up",
          "[thread]") {
  // A hinted poll spins again at once after each CONTENDED result: on a
  // loaded host every spin could end contended before its 1 ms hang-up
  // check, and the hang-up would go unseen until the hint's end (a
  // ChannelServer test once timed out that way under ASan and load).
  int pair[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0);
  kj::AutoCloseFd mine(pair[0]);
  kj::AutoCloseFd peer(pair[1]);
  // Each round takes longer than kContendedGapNs: as if descheduled.
  auto slowRound = []() {
    timespec pauseFor = {0, long(2 * kContendedGapNs)};
    nanosleep(&pauseFor, nullptr);
    return false;
  };
  CHECK(spinFor(1'000'000'000, monotonicNowNs(), mine.get(), slowRound) == SpinResult::CONTENDED);
  peer = nullptr;
  CHECK(spinFor(1'000'000'000, monotonicNowNs(), mine.get(), slowRound) == SpinResult::HUNG_UP);
}

TEST_CASE("channel: a front waiting for a reply gets DISCONNECTED when the server goes away",
          "[thread]") {
  for (auto policy: {PollPolicy::sleepPolicy(), PollPolicy::busyPolicy()}) {
    std::atomic<bool> inHandler = false, release = false;
    ChannelServer::Options options;
    options.poll = policy;
    auto created = ChannelServer::create(
        [&](const Request&) {
          inHandler = true;
          while (!release) sched_yield();
          return Reply::done();
        },
        []() {}, options);
    ChannelFront::Options frontOptions;
    frontOptions.poll = policy;
    auto front = ChannelFront::connect(kj::mv(created.frontFd), frontOptions);
    kj::Maybe<kj::Exception> failure;
    {
      kj::Thread vcpu([&]() {
        failure = kj::runCatchingExceptions([&]() { front->call(Request::acknowledge()); });
      });
      REQUIRE(eventually([&]() { return inHandler.load(); }));
      // The server object is destroyed mid-call: its thread finishes the
      // request it is in (so the reply may still arrive), then the socket
      // closes. Either way the front must not hang.
      release = true;
      created.server = nullptr;
    }
    // The reply may have won the race; a second call must then fail.
    if (failure == nullptr) {
      failure = kj::runCatchingExceptions([&]() { front->call(Request::acknowledge()); });
    }
    KJ_IF_MAYBE(exception, failure) {
      CHECK(exception->getType() == kj::Exception::Type::DISCONNECTED);
    } else {
      FAIL("a call to a destroyed server did not fail");
    }
  }
}

TEST_CASE("channel: a reply timeout ends a wait on a stalled server", "[thread]") {
  std::atomic<bool> release = false;
  auto created = ChannelServer::create(
      [&](const Request&) {
        while (!release) sched_yield();
        return Reply::done();
      },
      []() {});
  ChannelFront::Options options;
  options.replyTimeoutNs = 20'000'000;
  auto front = ChannelFront::connect(kj::mv(created.frontFd), options);
  KJ_IF_MAYBE(exception,
              kj::runCatchingExceptions([&]() { front->call(Request::acknowledge()); })) {
    CHECK(exception->getType() == kj::Exception::Type::DISCONNECTED);
  } else {
    FAIL("a stalled call did not time out");
  }
  release = true;
  // The late reply is ignored: the next call gets its own.
  CHECK(front->call(Request::fetchEvents()).kind == Reply::Kind::DONE);
}

TEST_CASE("channel: connect refuses an fd that is not a channel", "[thread]") {
  int pair[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0);
  kj::AutoCloseFd keep(pair[0]);
  CHECK_THROWS(ChannelFront::connect(kj::AutoCloseFd(pair[1])));
}

TEST_CASE("channel: an idle channel costs no CPU: the server thread sleeps on its doorbell",
          "[thread][idle]") {
  // This one measures real time by nature: CPU used by the server thread
  // over 300 ms of idleness after a burst of calls grew its poll window.
  Pair pair(PollPolicy::adaptivePolicy());
  for (uint64_t i = 0; i < 2000; i++) pair.front->call(requestNumber(i));
  // The window (at most 200 us) runs out and the thread goes to sleep.
  REQUIRE(eventually([&]() { return pair.server->stats().asleep; }));
  uint64_t before = pair.server->stats().threadCpuNs;
  struct timespec idle = {0, 300'000'000};
  nanosleep(&idle, nullptr);
  auto after = pair.server->stats();
  CHECK(after.asleep);
  // Under 1% of the 300 ms, with room for scheduler noise.
  CHECK(after.threadCpuNs - before < 3'000'000);
  // And it still answers at once when woken.
  CHECK(pair.front->call(Request::fetchEvents()).kind == Reply::Kind::DONE);
}

}  // namespace
}  // namespace vlapic::channel
