// SPDX-License-Identifier: MIT
// The channel between two processes, as vlapicd and a front use it (the fd
// travels over a Unix socket), and against a hostile front that writes
// whatever it likes into the shared memory and the doorbell.
#include "tests/channel/test-support.h"
#include <catch2/catch.hpp>
#include <kj/thread.h>
#include <atomic>
#include <dirent.h>
#include <fcntl.h>
#include <random>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace vlapic::channel {
namespace {

using test::eventually;
using test::expectedReply;
using test::RawFront;
using test::receiveFd;
using test::requestNumber;
using test::sendFd;

// A child process running `body` (its return value is the exit status). The
// test process is single-threaded whenever it forks: every ChannelServer of
// an earlier test has been destroyed and its thread joined.
class Child {
public:
  template <typename Body>
  explicit Child(Body&& body) {
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int status = 99;
      kj::runCatchingExceptions([&]() { status = body(); });
      _exit(status);
    }
  }
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  int wait() {
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void kill9() {
    kill(pid, SIGKILL);
    wait();
  }
  pid_t id() const { return pid; }

private:
  pid_t pid = -1;
};

struct Transport {
  Transport() {
    int pair[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    parent = kj::AutoCloseFd(pair[0]);
    child = kj::AutoCloseFd(pair[1]);
  }
  kj::AutoCloseFd parent, child;
};

size_t openFdCount() {
  size_t count = 0;
  DIR* dir = opendir("/proc/self/fd");
  while (auto* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') count++;
  }
  closedir(dir);
  return count;
}

TEST_CASE("channel: two processes: many calls round-trip in order under each policy", "[process]") {
  for (auto policy: {PollPolicy::adaptivePolicy(), PollPolicy::sleepPolicy()}) {
    Transport transport;
    constexpr uint64_t kCalls = 5000;
    Child front([&]() {
      ChannelFront::Options options;
      options.poll = policy;
      auto channel = ChannelFront::connect(receiveFd(transport.child), options);
      for (uint64_t i = 0; i < kCalls; i++) {
        Request request = requestNumber(i);
        if (!(channel->call(request) == expectedReply(request))) return 1;
      }
      return 0;
    });
    std::atomic<int> closed = 0;
    ChannelServer::Options options;
    options.poll = policy;
    auto created = ChannelServer::create([](const Request& r) { return expectedReply(r); },
                                         [&]() { closed++; }, options);
    sendFd(transport.parent, created.frontFd);
    created.frontFd = nullptr;  // as vlapicd must, once the fd is sent
    CHECK(front.wait() == 0);
    CHECK(created.server->stats().requests == kCalls);
    // The front process exited: the server hears the hang-up.
    CHECK(eventually([&]() { return closed.load() == 1; }));
  }
}

TEST_CASE("channel: a front killed mid-call: the server survives and reports the hang-up", "[process]") {
  Transport transport;
  Child front([&]() {
    auto channel = ChannelFront::connect(receiveFd(transport.child));
    channel->call(Request::msrRead(0x830));
    return 0;
  });
  std::atomic<bool> inHandler = false, release = false;
  std::atomic<int> closed = 0;
  auto created = ChannelServer::create(
      [&](const Request& r) {
        inHandler = true;
        while (!release) sched_yield();
        return expectedReply(r);
      },
      [&]() { closed++; });
  sendFd(transport.parent, created.frontFd);
  created.frontFd = nullptr;
  REQUIRE(eventually([&]() { return inHandler.load(); }));
  front.kill9();
  release = true;  // the reply goes to shared memory nobody reads: harmless
  CHECK(eventually([&]() { return closed.load() == 1; }));
  CHECK(created.server->stats().requests == 1);
}

TEST_CASE("channel: vlapicd killed mid-call: the front's call fails with DISCONNECTED", "[process]") {
  Transport transport;
  Child server([&]() {
    auto created = ChannelServer::create(
        [](const Request& r) {
          if (r.operation == Operation::MSR_READ && r.msr == 0xDEAD) _exit(0);  // dies mid-call
          return expectedReply(r);
        },
        []() {});
    sendFd(transport.child, created.frontFd);
    created.frontFd = nullptr;
    char byte;
    (void)read(transport.child, &byte, 1);  // until the parent closes the transport
    return 0;
  });
  for (auto policy: {PollPolicy::adaptivePolicy()}) {
    ChannelFront::Options options;
    options.poll = policy;
    auto channel = ChannelFront::connect(receiveFd(transport.parent), options);
    Request request = Request::mmioRead(0xFEE00030, 4);
    CHECK(channel->call(request) == expectedReply(request));
    KJ_IF_MAYBE(exception,
                kj::runCatchingExceptions([&]() { channel->call(Request::msrRead(0xDEAD)); })) {
      CHECK(exception->getType() == kj::Exception::Type::DISCONNECTED);
    } else {
      FAIL("a call into a dead server did not fail");
    }
  }
  CHECK(server.wait() == 0);
}

// ---- A hostile front (in this process, talking to the memory directly) ----

struct HostileSetup {
  HostileSetup() {
    auto created = ChannelServer::create([](const Request& r) { return expectedReply(r); },
                                         [this]() { closed++; });
    server = kj::mv(created.server);
    raw = kj::heap<RawFront>(kj::mv(created.frontFd));
  }
  std::atomic<int> closed = 0;
  kj::Own<ChannelServer> server;
  kj::Own<RawFront> raw;
};

TEST_CASE("channel: hostile front: sizes out of range are rejected before any copy", "[hostile]") {
  HostileSetup setup;
  uint32_t seq = 0;
  auto rejection = [&](uint32_t bytes) {
    Reply reply = setup.raw->publishAndWait(++seq, bytes);
    REQUIRE(reply.kind == Reply::Kind::REJECTED);
    return reply.rejection;
  };
  CHECK(rejection(kRequestSlotBytes + 8) == Rejection::OVERSIZED);
  CHECK(rejection(0xFFFFFFF8) == Rejection::OVERSIZED);
  CHECK(rejection(0) == Rejection::MALFORMED);
  CHECK(rejection(13) == Rejection::MALFORMED);
  memset(setup.raw->shared().requestSlot, 0xA5, kRequestSlotBytes);
  CHECK(rejection(kRequestSlotBytes) == Rejection::MALFORMED);
  CHECK(setup.server->stats().rejected == 5);
  // A proper request afterwards is served normally.
  Request request = Request::msrRead(0x802);
  size_t bytes = encodeRequest(request, kj::arrayPtr(setup.raw->shared().requestSlot,
                                                     kRequestSlotBytes));
  CHECK(setup.raw->publishAndWait(++seq, bytes) == expectedReply(request));
}

TEST_CASE("channel: hostile front: sequence numbers that jump get one reply per change", "[hostile]") {
  HostileSetup setup;
  Request request = Request::mmioRead(0xFEE00020, 4);
  size_t bytes =
      encodeRequest(request, kj::arrayPtr(setup.raw->shared().requestSlot, kRequestSlotBytes));
  for (uint32_t seq: {7u, 0xFFFFFFFFu, 0u, 12345u, 3u}) {
    CHECK(setup.raw->publishAndWait(seq, bytes) == expectedReply(request));
  }
  CHECK(setup.server->stats().requests == 5);
  // Rewriting the same number is no new request: nothing more is served.
  setup.raw->shared().requestSeq.store(3);
  ringDoorbell(setup.raw->doorbellFd());
  CHECK(eventually([&]() { return setup.server->stats().asleep; }));
  CHECK(setup.server->stats().requests == 5);
}

TEST_CASE("channel: hostile front: the memory is sealed, it cannot be shrunk under the server",
          "[hostile]") {
  HostileSetup setup;
  CHECK(ftruncate(setup.raw->memoryFd(), 0) == -1);
  CHECK(errno == EPERM);
  CHECK(fcntl(setup.raw->memoryFd(), F_ADD_SEALS, F_SEAL_WRITE) == -1);
}

TEST_CASE("channel: hostile front: a doorbell flood with attached fds is drained and the fds dropped",
          "[hostile]") {
  HostileSetup setup;
  size_t fdsBefore = openFdCount();
  int flooded = 0;
  for (int i = 0; i < 2000; i++) {
    int dup = ::dup(0);
    sendFd(setup.raw->doorbellFd(), dup);  // blocks while the server drains
    close(dup);
    flooded++;
  }
  REQUIRE(flooded == 2000);
  // The server keeps serving, and none of those fds stayed open anywhere.
  Request request = Request::setCr8(9);
  size_t bytes =
      encodeRequest(request, kj::arrayPtr(setup.raw->shared().requestSlot, kRequestSlotBytes));
  CHECK(setup.raw->publishAndWait(1, bytes) == expectedReply(request));
  CHECK(eventually([&]() { return setup.server->stats().asleep; }));
  CHECK(openFdCount() == fdsBefore);
}

TEST_CASE("channel: hostile front process: scribbling on everything, then dying, hurts nobody else",
          "[hostile][process]") {
  Transport transport;
  Child hostile([&]() {
    RawFront raw(receiveFd(transport.child));
    std::mt19937_64 random(42);
    auto& shared = raw.shared();
    uint64_t deadline = monotonicNowNs() + 300'000'000;
    while (monotonicNowNs() < deadline) {
      for (auto& b: shared.requestSlot) b = kj::byte(random());
      shared.requestBytes.store(static_cast<uint32_t>(random() % (2 * kRequestSlotBytes)));
      shared.requestSeq.store(static_cast<uint32_t>(random()));
      // Words that belong to the server are only hints: scribble them too.
      shared.serverSleeping.store(static_cast<uint32_t>(random()));
      shared.replySeq.store(static_cast<uint32_t>(random()));
      shared.replyBytes.store(static_cast<uint32_t>(random()));
      if (random() % 16 == 0) ringDoorbell(raw.doorbellFd());
    }
    return 0;
  });
  std::atomic<int> closed = 0;
  auto hostileChannel = ChannelServer::create([](const Request& r) { return expectedReply(r); },
                                              [&]() { closed++; });
  sendFd(transport.parent, hostileChannel.frontFd);
  hostileChannel.frontFd = nullptr;

  // Meanwhile a well-behaved front on another channel of this server.
  auto good = ChannelServer::create([](const Request& r) { return expectedReply(r); }, []() {});
  auto front = ChannelFront::connect(kj::mv(good.frontFd));
  for (uint64_t i = 0; i < 3000; i++) {
    Request request = requestNumber(i);
    REQUIRE(front->call(request) == expectedReply(request));
  }
  CHECK(hostile.wait() == 0);
  CHECK(eventually([&]() { return closed.load() == 1; }));
  auto stats = hostileChannel.server->stats();
  CHECK(stats.requests > 0);
  CHECK(stats.handlerFailures == 0);
  // Destroying the server of a hostile channel does not hang either.
  hostileChannel.server = nullptr;
}

}  // namespace
}  // namespace vlapic::channel
