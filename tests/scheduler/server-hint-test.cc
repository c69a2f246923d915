// SPDX-License-Identifier: MIT
// A channel vCPU's timer expiry and the front's fetch right after it: the
// loop thread polls for that fetch itself (server.cc's timerFired,
// channel::ChannelServer::serveOnCaller), and with channelThreadTimerPolls
// the channel thread polls across the expiry too (syncTimer,
// ChannelServer::pollBetween). In process: a daemon::Server on this thread's kj event loop, a front over an
// in-memory capability pipe, the vCPU's channel driven from this thread.
// Observed through Server::counters(), not through timing.
#include "schema/channel/channel.h"
#include "server/daemon/server.h"
#include "schema/vlapic.capnp.h"
#include "tests/integration/xapic_addresses.h"

#include <capnp/rpc-twoparty.h>
#include <catch2/catch.hpp>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/thread.h>
#include <atomic>
#include <chrono>
#include <sched.h>
#include <unistd.h>

namespace vlapic {
namespace {

using channel::ChannelFront;
using channel::Request;
using namespace testing;   // xapic_addresses.h

constexpr uint32_t kTimerVector = 0xEC;

class NullSink final: public proto::EventSink::Server {
protected:
  kj::Promise<void> deliver(DeliverContext) override { return kj::READY_NOW; }
};

// One server, one front, one VM of one vCPU with its channel open.
struct InProcess {
  explicit InProcess(bool channelThreadTimerPolls)
      : io(kj::setupAsyncIo()),
        server(io.unixEventPort, options(channelThreadTimerPolls)),
        pipe(io.provider->newCapabilityPipe()),
        client(frontEnd(), 4),
        vm(createVm()),
        vcpu(vcpuZero()),
        front(openChannel()) {}

  static daemon::ServerOptions options(bool channelThreadTimerPolls) {
    daemon::ServerOptions options;
    options.channelThreadTimerPolls = channelThreadTimerPolls;
    return options;
  }
  // Hands the server its end of the pipe; returns the front's.
  kj::AsyncCapabilityStream& frontEnd() {
    server.accept(kj::mv(pipe.ends[0]));
    return *pipe.ends[1];
  }
  proto::Vm::Client createVm() {
    auto request = client.bootstrap().castAs<proto::Service>().createVmRequest();
    request.initConfig().setVcpuCount(1);   // 1 GHz timer input clock (default)
    request.setSink(kj::heap<NullSink>());
    return request.send().wait(io.waitScope).getVm();
  }
  proto::Vcpu::Client vcpuZero() {
    auto request = vm.vcpuRequest();
    request.setIndex(0);
    return request.send().wait(io.waitScope).getVcpu();
  }
  kj::Own<ChannelFront> openChannel() {
    auto channel = vcpu.openChannelRequest().send().wait(io.waitScope).getChannel();
    int fd = KJ_ASSERT_NONNULL(channel.getFd().wait(io.waitScope));
    int copy = dup(fd);
    KJ_ASSERT(copy >= 0);
    return ChannelFront::connect(kj::AutoCloseFd(copy));
  }

  void write(uint64_t gpa, uint32_t value) {
    auto reply = front->call(Request::mmioWrite(gpa, 4, value));
    KJ_ASSERT(reply.kind == channel::Reply::Kind::ACCESS && reply.status == AccessStatus::OK);
  }
  void enableApic(uint32_t lvtTimerMode) {
    write(kSvr, 0x100 | 0xFF);
    write(kDivide, 0xB);   // divide by 1
    write(kLvtTimer, kTimerVector | lvtTimerMode);
  }

  // Runs the loop (which takes up the channel thread's work: timer moves)
  // until `done`, for at most ~5 s.
  template <typename Done>
  bool runUntil(Done&& done) {
    for (int turn = 0; turn < 5000; turn++) {
      if (done()) return true;
      io.provider->getTimer().afterDelay(1 * kj::MILLISECONDS).wait(io.waitScope);
    }
    return done();
  }

  kj::AsyncIoContext io;
  daemon::Server server;
  kj::CapabilityPipe pipe;
  capnp::TwoPartyClient client;
  proto::Vm::Client vm;
  proto::Vcpu::Client vcpu;
  kj::Own<ChannelFront> front;
};

TEST_CASE("with channelThreadTimerPolls, vlapicd hints a channel vCPU's armed timer to its "
          "channel thread, which polls across the expiries",
          "[hint]") {
  InProcess daemon(true);
  daemon.enableApic(kTimerPeriodic);
  // Nothing armed: no hint, no polling (an idle VM costs nothing).
  REQUIRE(daemon.runUntil([]() { return true; }));
  CHECK(daemon.server.counters().channelHintsGiven == 0);

  // A 1 ms periodic timer: one hint per period (each new deadline).
  daemon.write(kInitialCount, 1'000'000);
  REQUIRE(daemon.runUntil([&]() { return daemon.server.counters().channelHintsGiven >= 1; }));
  // The channel thread polls across expiries: its own timer wakes it ahead
  // of each. (A wake-up later than the poll's end, lead + 150 us, misses
  // one, as a loaded host sometimes does; not all of them.)
  REQUIRE(daemon.runUntil([&]() {
    auto c = daemon.server.counters();
    return c.totalTimerExpiries >= 20 && c.channelHintedPolls >= 1;
  }));
  auto counters = daemon.server.counters();
  // One per new deadline: the arming, then each period's re-arm (a late
  // expiry merges periods, so fewer than the expiries).
  CHECK(counters.channelHintsGiven >= 2);
  CHECK(counters.channelHintedPolls >= 1);
  CHECK(counters.channelHintedPolls <= counters.channelHintsGiven);

  // Stopped (initial count 0): no more hints; the expiries stop.
  daemon.write(kInitialCount, 0);
  REQUIRE(daemon.runUntil([&]() { return daemon.server.counters().armedTimers == 0; }));
  uint64_t given = daemon.server.counters().channelHintsGiven;
  REQUIRE(daemon.runUntil([]() { return true; }));
  CHECK(daemon.server.counters().channelHintsGiven == given);
}

TEST_CASE("vlapicd's loop serves the front's fetch after one-shot expiries itself, and its "
          "counters outlive the VM",
          "[hint]") {
  InProcess daemon(false);   // the default: no channel thread hints
  daemon.enableApic(0);   // one-shot
  // The vCPU's thread: one-shot expiries, each fetched as soon as attention
  // shows (polling, as a halted vCPU that woke ahead), while this thread
  // runs vlapicd's loop, until the loop served a fetch itself. (Most are;
  // a fetch later than the loop's poll, 50 us, goes to the channel thread.)
  std::atomic<bool> stop = false;
  std::atomic<bool> done = false;
  std::atomic<int> expiries = 0, missed = 0;
  {
    kj::Thread vcpuThread([&]() {
      KJ_DEFER(done = true);
      while (!stop) {
        daemon.write(kInitialCount, 1'000'000);
        // Bounded: 5 s.
        auto giveUp = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (!daemon.front->attentionPending() && std::chrono::steady_clock::now() < giveUp) {
          sched_yield();
        }
        if (!daemon.front->attentionPending()) missed++;
        daemon.front->call(Request::fetchEvents());
        while (daemon.front->call(Request::acknowledge()).inject != nullptr) {
          daemon.write(kEoi, 0);
        }
        expiries++;
      }
    });
    bool caught = daemon.runUntil([&]() {
      auto c = daemon.server.counters();
      return done || (expiries >= 20 && c.channelLoopRequests >= 1);
    });
    stop = true;
    REQUIRE(daemon.runUntil([&]() { return done.load(); }));
    CHECK(caught);
  }
  CHECK(missed == 0);
  auto counters = daemon.server.counters();
  // The loop polls once after each expiry (or skips it, backing off after
  // a poll its front's fetch came too late for); no channel thread hints.
  CHECK(counters.channelLoopPolls + counters.channelLoopSkipped == uint64_t(expiries));
  CHECK(counters.channelLoopRequests >= 1);
  CHECK(counters.channelLoopRequests <= counters.channelLoopPolls);
  CHECK(counters.channelHintsGiven == 0);
  CHECK(counters.channelHintedPolls == 0);

  // Released VMs keep their part of the counts.
  daemon.front = nullptr;
  daemon.vcpu = nullptr;
  daemon.vm = nullptr;
  REQUIRE(daemon.runUntil([&]() { return daemon.server.counters().vms == 0; }));
  auto after = daemon.server.counters();
  CHECK(after.channelLoopPolls == counters.channelLoopPolls);
  CHECK(after.channelLoopRequests == counters.channelLoopRequests);
  CHECK(after.channelLoopSkipped == counters.channelLoopSkipped);
}

}  // namespace
}  // namespace vlapic
