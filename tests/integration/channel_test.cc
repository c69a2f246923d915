// SPDX-License-Identifier: MIT
// The exit fast path wired into vlapicd: a vCPU's shared-memory channel,
// opened through its capability (Vcpu.openChannel), serves the same Vm as
// the RPC methods and carries that vCPU's events instead of the EventSink.
// The channel itself (protocol, polling, hostile bytes) is tested in
// tests/channel; here: the daemon's side of it.
#include "client/lib/vlapic_client.h"
#include "schema/channel/channel.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/xapic_addresses.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>
#include <kj/mutex.h>

#include <chrono>
#include <ctime>
#include <sched.h>
#include <thread>

namespace vlapic {
namespace {

using namespace client;
using channel::ChannelFront;
using channel::Request;

using namespace testing;   // xapic_addresses.h

// These tests are about the daemon's channel logic, so vlapicd runs
// unconfined here; whether the seccomp filter admits a channel's system calls
// (memfd_create, socketpair, a thread) is the confinement tests' question.
const kj::StringPtr kUnconfined[] = {"--no-sandbox"};

// Events the VM's EventSink received (on the client thread).
struct SinkLog {
  kj::MutexGuarded<kj::Vector<Event>> events;

  EventCallback callback() {
    return [this](kj::ArrayPtr<const Event> batch) {
      auto lock = events.lockExclusive();
      for (auto& e: batch) lock->add(e);
    };
  }
  bool waitForVcpu(uint32_t vcpu) {
    return events.when(
        [vcpu](const kj::Vector<Event>& e) {
          for (auto& event: e) if (event.vcpu == vcpu) return true;
          return false;
        },
        [vcpu](kj::Vector<Event>& e) {
          for (auto& event: e) if (event.vcpu == vcpu) return true;
          return false;
        },
        10 * kj::SECONDS);
  }
  size_t countFor(uint32_t vcpu) {
    size_t n = 0;
    for (auto& e: *events.lockShared()) n += e.vcpu == vcpu;
    return n;
  }
};

// An unconfined vlapicd, a front (Client) with one VM, and a vCPU session
// on the test thread.
struct Served {
  explicit Served(uint32_t vcpus, kj::ArrayPtr<const kj::StringPtr> daemonArgs = kUnconfined)
      : daemon(VLAPICD_PATH, daemonArgs),
        front(Client::connect(daemon.socketPath())),
        operatorView(Client::connect(adminSocketPathFor(daemon.socketPath()))),
        vm(front->createVm(vmOptions(vcpus), sink.callback())),
        session(ThreadSession::open(daemon.socketPath())) {}

  static VmOptions vmOptions(uint32_t vcpus) {
    VmOptions options;
    options.vcpuCount = vcpus;
    return options;
  }
  kj::Own<VcpuHandle> vcpu(uint32_t index) { return session->attachVcpu(vm->ticket(index)); }

  testing::DaemonProcess daemon;
  kj::Own<Client> front;
  kj::Own<Client> operatorView;   // server-wide counters (the operator socket)
  SinkLog sink;
  kj::Own<client::Vm> vm;
  kj::Own<ThreadSession> session;
};

bool carriesEvent(const channel::Reply& reply, channel::EventKind kind) {
  for (auto& event: reply.events()) {
    if (event.kind == kind) return true;
  }
  return false;
}

// Fetches events through the channel until one of `kind` arrives (10 s).
kj::Maybe<channel::Event> awaitChannelEvent(ChannelFront& front, channel::EventKind kind,
                                            bool injectIfPending, kj::Maybe<uint8_t>& injected) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    front.waitForAttention(uint64_t(100'000'000));
    auto request = Request::fetchEvents();
    request.injectIfPending = injectIfPending;
    auto reply = front.call(request);
    KJ_IF_MAYBE(v, reply.inject) injected = *v;
    for (auto& event: reply.events()) {
      if (event.kind == kind) return event;
    }
  }
  return nullptr;
}

TEST_CASE("a vCPU's channel serves the same LAPIC as its RPC methods", "[integration][channel]") {
  Served served(2);
  auto vcpu = served.vcpu(1);
  auto channel = ChannelFront::connect(vcpu->openChannel());

  REQUIRE(vcpu->mmioWrite(kTpr, 4, 0x30).status == AccessStatus::OK);
  auto read = channel->call(Request::mmioRead(kTpr, 4));
  CHECK(read.kind == channel::Reply::Kind::ACCESS);
  CHECK(read.status == AccessStatus::OK);
  CHECK(read.value == 0x30);
  CHECK(read.cr8 == 3);   // CR8 = TPR[7:4]

  CHECK(channel->call(Request::mmioWrite(kTpr, 4, 0x50)).status == AccessStatus::OK);
  CHECK(vcpu->mmioRead(kTpr, 4).value == 0x50);
  // SDM "x2APIC Register Address Space": x2APIC MSRs outside x2APIC mode #GP.
  CHECK(channel->call(Request::msrRead(0x808)).status == AccessStatus::GP);
  CHECK(channel->call(Request::setCr8(2)).cr8 == 2);
  CHECK(vcpu->mmioRead(kTpr, 4).value == 0x20);

  // One channel per vCPU at a time.
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { vcpu->openChannel(); })) {
    CHECK(strstr(e->getDescription().cStr(), "already has an open channel") != nullptr);
  } else {
    FAIL("a second channel was opened");
  }
}

TEST_CASE("a channel carries its vCPU's events instead of the EventSink, until it closes",
          "[integration][channel]") {
  Served served(3);
  auto& sink = served.sink;
  auto sender = served.vcpu(0);
  auto target = served.vcpu(1);
  auto observer = served.vcpu(2);
  REQUIRE(sender->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  REQUIRE(target->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  REQUIRE(observer->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  REQUIRE(sender->mmioWrite(kIcrHigh, 4, 1u << 24).status == AccessStatus::OK);

  auto channel = ChannelFront::connect(target->openChannel());

  // A fixed IPI from vCPU 0 (RPC) to vCPU 1: the event is on the channel;
  // with injectIfPending the reply already acknowledged the vector.
  REQUIRE(sender->mmioWrite(kIcrLow, 4, 0x61 | kIcrAssert).ipiSent);
  kj::Maybe<uint8_t> injected;
  auto deliverable = awaitChannelEvent(*channel, channel::EventKind::DELIVERABLE, true, injected);
  REQUIRE(deliverable != nullptr);
  CHECK(KJ_ASSERT_NONNULL(deliverable).vector == 0x61);
  CHECK(injected == uint8_t(0x61));
  CHECK(channel->call(Request::mmioWrite(kEoi, 4, 0)).status == AccessStatus::OK);

  // vCPU 1's periodic timer, programmed through the channel (its deadline
  // reaches the event loop from the channel thread): expiries arrive on the
  // channel, without any request from the front but the wait.
  CHECK(channel->call(Request::mmioWrite(kDivide, 4, 0xB)).status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kLvtTimer, 4, 0x40 | kTimerPeriodic)).status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kInitialCount, 4, 1'000'000)).status == AccessStatus::OK);
  injected = nullptr;
  auto timer = awaitChannelEvent(*channel, channel::EventKind::TIMER, false, injected);
  REQUIRE(timer != nullptr);
  CHECK(channel->call(Request::mmioWrite(kInitialCount, 4, 0)).status == AccessStatus::OK);

  // vCPU 1 (channel thread) sends an IPI to vCPU 2: its event reaches the
  // EventSink from the channel thread's operation.
  CHECK(channel->call(Request::mmioWrite(kIcrHigh, 4, 2u << 24)).status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kIcrLow, 4, 0x72 | kIcrAssert)).status == AccessStatus::OK);
  REQUIRE(sink.waitForVcpu(2));

  // Nothing of vCPU 1 went to the EventSink while its channel was open.
  CHECK(sink.countFor(1) == 0);

  // The front closes the channel; once vlapicd has seen it (asynchronously,
  // through the doorbell's hang-up), vCPU 1's events go to the EventSink.
  CHECK(target->info().channelOpen);
  channel = nullptr;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (target->info().channelOpen && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(!target->info().channelOpen);
  REQUIRE(sender->mmioWrite(kIcrLow, 4, 0x62 | kIcrAssert).ipiSent);
  REQUIRE(sink.waitForVcpu(1));
  // And the vCPU can have a channel again.
  auto again = ChannelFront::connect(target->openChannel());
  CHECK(again->call(Request::mmioRead(kTpr, 4)).status == AccessStatus::OK);
}

TEST_CASE("a front that closes its channel can open the next one at once", "[integration][channel]") {
  // vlapicd learns of a hang-up asynchronously (the channel thread sees it
  // at its next wake-up, then posts it to the loop); an open that comes
  // first must not be refused, and the late notice must not close the new
  // channel.
  Served served(2);
  auto vcpu = served.vcpu(0);
  auto sender = served.vcpu(1);
  REQUIRE(vcpu->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  REQUIRE(sender->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  kj::Own<ChannelFront> channel;
  for (uint32_t round = 0; round < 100; round++) {
    channel = nullptr;   // closes the previous channel's fd, if any
    channel = ChannelFront::connect(vcpu->openChannel());
    auto reply = channel->call(Request::mmioWrite(kTpr, 4, round % 16 << 4));
    REQUIRE(reply.status == AccessStatus::OK);
  }
  // Every late hang-up notice has reached the loop by now.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(vcpu->info().channelOpen);
  CHECK(channel->call(Request::mmioRead(kTpr, 4)).value == (99 % 16 << 4));
  // The last channel still carries this vCPU's events; none go to the sink.
  REQUIRE(sender->mmioWrite(kIcrHigh, 4, 0).status == AccessStatus::OK);
  REQUIRE(sender->mmioWrite(kIcrLow, 4, 0x61 | kIcrAssert).ipiSent);
  kj::Maybe<uint8_t> injected;
  CHECK(awaitChannelEvent(*channel, channel::EventKind::DELIVERABLE, false, injected) != nullptr);
  CHECK(served.sink.countFor(0) == 0);
  // A second open while this one is held is still refused.
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { vcpu->openChannel(); })) {
    CHECK(strstr(e->getDescription().cStr(), "already has an open channel") != nullptr);
  } else {
    FAIL("a second channel was opened while the first is held");
  }
}

// Arms one-shot 200 us timers (vector 0x40) on `channel`'s vCPU one after
// another and fetches each expiry as a halted vCPU that woke ahead does,
// polling for attention, until `enough(expiries)` holds (checked after at
// least 20) or 20 s passed. Returns the expiries.
template <typename Enough>
uint64_t fetchTimerExpiries(ChannelFront& channel, Enough&& enough) {
  CHECK(channel.call(Request::mmioWrite(kSvr, 4, 0x1FF)).status == AccessStatus::OK);
  CHECK(channel.call(Request::mmioWrite(kDivide, 4, 0xB)).status == AccessStatus::OK);
  CHECK(channel.call(Request::mmioWrite(kLvtTimer, 4, 0x40)).status == AccessStatus::OK);
  uint64_t expiries = 0;
  auto giveUp = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < giveUp) {
    auto armed = channel.call(Request::mmioWrite(kInitialCount, 4, 200'000));
    CHECK(armed.status == AccessStatus::OK);
    kj::Maybe<uint8_t> injected;
    if (carriesEvent(armed, channel::EventKind::DELIVERABLE)) {
      // The channel thread was descheduled for 200 us between arming and
      // replying (seen under ASan on a loaded host): the write's reply
      // carries the expiry. Take the vector as the next fetch would.
      auto fetch = Request::fetchEvents();
      fetch.injectIfPending = true;
      injected = channel.call(fetch).inject;
    } else {
      // Poll for attention, so the fetch follows the expiry at once
      // (bounded: awaitChannelEvent sleeps).
      auto spinUntil = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      while (!channel.attentionPending() && std::chrono::steady_clock::now() < spinUntil) {
        sched_yield();
      }
      REQUIRE(awaitChannelEvent(channel, channel::EventKind::DELIVERABLE, true, injected) !=
              nullptr);
    }
    CHECK(injected == uint8_t(0x40));
    CHECK(channel.call(Request::mmioWrite(kEoi, 4, 0)).status == AccessStatus::OK);
    ++expiries;
    if (expiries >= 20 && enough(expiries)) break;
  }
  return expiries;
}

TEST_CASE("vlapicd's status counts the loop's polls for the fetch after each channel timer "
          "expiry, served or skipped",
          "[integration][channel]") {
  // After a channel vCPU's timer expiry vlapicd's loop polls that channel
  // for the front's fetch (server/daemon README, "Channels and timers"):
  // every expiry is either polled for or skipped by the back-off, and a
  // front that fetches as soon as attention shows gets some served there.
  Served served(1);
  auto vcpu = served.vcpu(0);
  auto channel = ChannelFront::connect(vcpu->openChannel());
  auto before = served.operatorView->status();
  // Until the loop served one (most are on a quiet host), at least 20.
  uint64_t expiries = fetchTimerExpiries(*channel, [&](uint64_t) {
    return served.operatorView->status().channelLoopRequests > before.channelLoopRequests;
  });
  auto after = served.operatorView->status();
  CHECK(after.totalTimerExpiries - before.totalTimerExpiries == expiries);
  // An expiry a channel request found due and fired itself (the channel
  // thread descheduled past the deadline, seen under ASan on a loaded
  // host) never reached the loop: neither polled for nor skipped there.
  CHECK((after.channelLoopPolls - before.channelLoopPolls) +
            (after.channelLoopSkipped - before.channelLoopSkipped) +
            (after.channelRequestTimerFires - before.channelRequestTimerFires) ==
        expiries);
  CHECK(after.channelLoopRequests > before.channelLoopRequests);
  CHECK(after.channelLoopRequests - before.channelLoopRequests <=
        after.channelLoopPolls - before.channelLoopPolls);
  // Off by default: no channel-thread polls across the deadlines.
  CHECK_FALSE(after.channelTimerPolls);
  CHECK(after.channelHintsGiven == 0);
  CHECK(after.channelHintedPolls == 0);
}

TEST_CASE("vlapicd --channel-timer-polls: the channel thread polls across each channel timer "
          "expiry, and the status counts it",
          "[integration][channel]") {
  // Each new deadline of a channel vCPU gives its channel thread a hinted
  // poll from just before the deadline (server/daemon README, "Optional:
  // the channel thread polls across the deadline").
  const kj::StringPtr withTimerPolls[] = {"--no-sandbox", "--channel-timer-polls"};
  Served served(1, withTimerPolls);
  auto vcpu = served.vcpu(0);
  auto channel = ChannelFront::connect(vcpu->openChannel());
  auto before = served.operatorView->status();
  CHECK(before.channelTimerPolls);
  uint64_t expiries = fetchTimerExpiries(*channel, [&](uint64_t) {
    return served.operatorView->status().channelHintedPolls > before.channelHintedPolls;
  });
  auto after = served.operatorView->status();
  CHECK(after.totalTimerExpiries - before.totalTimerExpiries == expiries);
  // One hint per deadline armed (each initial-count write), a poll for
  // some of them (a hint the front's fetch or the next write overtakes
  // never starts), each poll woke the thread at most once.
  CHECK(after.channelHintsGiven - before.channelHintsGiven >= expiries);
  CHECK(after.channelHintedPolls > before.channelHintedPolls);
  CHECK(after.channelHintedPolls - before.channelHintedPolls <=
        after.channelHintsGiven - before.channelHintsGiven);
  CHECK(after.channelHintedWakeups - before.channelHintedWakeups <=
        after.channelHintedPolls - before.channelHintedPolls);
}

uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

bool names(const channel::Reply& reply, std::initializer_list<uint32_t> vcpus) {
  auto notified = reply.notified();
  if (notified.size() != vcpus.size()) return false;
  size_t i = 0;
  for (uint32_t v: vcpus) {
    if (notified[i++] != v) return false;
  }
  return true;
}

TEST_CASE("a channel reply names the other channel vCPUs its request notified (issue 17: the "
          "sender's front kicks the target itself)",
          "[integration][channel]") {
  Served served(3);
  auto v0 = served.vcpu(0);
  auto v1 = served.vcpu(1);
  auto v2 = served.vcpu(2);   // no channel: its events go to the EventSink
  for (auto* v: {v0.get(), v1.get(), v2.get()}) {
    REQUIRE(v->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  }
  auto sender = ChannelFront::connect(v0->openChannel());
  auto target = ChannelFront::connect(v1->openChannel());

  // A fixed IPI to vCPU 1: the ICR write's own reply names it.
  CHECK(sender->call(Request::mmioWrite(kIcrHigh, 4, 1u << 24)).notified().size() == 0);
  auto sent = sender->call(Request::mmioWrite(kIcrLow, 4, 0x61 | kIcrAssert));
  CHECK(sent.status == AccessStatus::OK);
  CHECK(names(sent, {1}));
  CHECK(target->attentionPending());
  // Its queue is non-empty now: a second IPI is not news to its thread.
  CHECK(names(sender->call(Request::mmioWrite(kIcrLow, 4, 0x62 | kIcrAssert)), {}));
  auto fetch = Request::fetchEvents();
  fetch.injectIfPending = true;
  CHECK(target->call(fetch).inject == uint8_t(0x62));
  CHECK(target->call(Request::mmioWrite(kEoi, 4, 0)).status == AccessStatus::OK);
  CHECK(target->call(fetch).inject == uint8_t(0x61));
  CHECK(target->call(Request::mmioWrite(kEoi, 4, 0)).status == AccessStatus::OK);

  // To vCPU 2, which has no channel: not named (its events travel by RPC).
  CHECK(sender->call(Request::mmioWrite(kIcrHigh, 4, 2u << 24)).status == AccessStatus::OK);
  CHECK(names(sender->call(Request::mmioWrite(kIcrLow, 4, 0x63 | kIcrAssert)), {}));
  REQUIRE(served.sink.waitForVcpu(2));

  // A self IPI is the requester's own business: in its reply's events, not
  // in the notified list.
  auto self = sender->call(Request::mmioWrite(kIcrLow, 4, 0x64 | kIcrAssert | (1u << 18)));
  CHECK(names(self, {}));
  CHECK(carriesEvent(self, channel::EventKind::DELIVERABLE));

  // All excluding self reaches vCPUs 1 and 2: only 1 has a channel.
  auto all = sender->call(Request::mmioWrite(kIcrLow, 4, 0x65 | kIcrAssert | kIcrAllExcludingSelf));
  CHECK(names(all, {1}));
}

TEST_CASE("every channel reply carries the vCPU's timer deadline (issue 17: the front needs no "
          "other call to sleep or kick itself until it)",
          "[integration][channel]") {
  Served served(1);
  auto vcpu = served.vcpu(0);
  auto channel = ChannelFront::connect(vcpu->openChannel());
  CHECK(channel->call(Request::mmioWrite(kSvr, 4, 0x1FF)).timerDeadlineNs == nullptr);
  CHECK(channel->call(Request::mmioWrite(kDivide, 4, 0xB)).status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kLvtTimer, 4, 0x40)).status == AccessStatus::OK);
  auto armed = channel->call(Request::mmioWrite(kInitialCount, 4, 500'000'000));
  auto deadline = KJ_ASSERT_NONNULL(armed.timerDeadlineNs);
  CHECK(vcpu->info().timerDeadlineNs == deadline);
  // Any later reply, a fetch included, says the same.
  CHECK(channel->call(Request::fetchEvents()).timerDeadlineNs == deadline);
  CHECK(channel->call(Request::mmioWrite(kInitialCount, 4, 0)).timerDeadlineNs == nullptr);
}

TEST_CASE("an already-expired TSC deadline is injected by the WRMSR's own channel reply "
          "(SDM 11.5.4.1: a deadline in the past fires at once)",
          "[integration][channel]") {
  Served served(1);
  auto vcpu = served.vcpu(0);
  auto channel = ChannelFront::connect(vcpu->openChannel());
  CHECK(channel->call(Request::mmioWrite(kSvr, 4, 0x1FF)).status == AccessStatus::OK);
  // LVT Timer mode 10b: TSC-deadline, vector 0x55.
  CHECK(channel->call(Request::mmioWrite(kLvtTimer, 4, 0x55 | (2u << 17))).status == AccessStatus::OK);
  for (int i = 0; i < 20; i++) {
    auto write = Request::msrWrite(0x6E0, 1);   // TSC 1: long past
    write.injectIfPending = true;
    auto reply = channel->call(write);
    CHECK(reply.status == AccessStatus::OK);
    CHECK(reply.inject == uint8_t(0x55));
    CHECK(reply.timerDeadlineNs == nullptr);   // fired: disarmed
    CHECK(channel->call(Request::mmioWrite(kEoi, 4, 0)).status == AccessStatus::OK);
  }
}

TEST_CASE("a channel request that finds its vCPU's timer due fires it and injects it in the same "
          "reply, ahead of vlapicd's own timer (issue 17)",
          "[integration][channel]") {
  Served served(1);
  auto vcpu = served.vcpu(0);
  auto channel = ChannelFront::connect(vcpu->openChannel());
  CHECK(channel->call(Request::mmioWrite(kSvr, 4, 0x1FF)).status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kDivide, 4, 0xB)).status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kLvtTimer, 4, 0x40)).status == AccessStatus::OK);
  auto before = served.operatorView->status();
  // The front fetches in a loop across each deadline, as a vCPU thread
  // kicking itself at the deadline does. The loop's timer also fires at
  // it, so either may take an expiry; over many rounds requests take some
  // (the loop's wake-up is late by tens of microseconds here).
  uint64_t rounds = 0;
  auto giveUp = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < giveUp) {
    auto armed = channel->call(Request::mmioWrite(kInitialCount, 4, 2'000'000));   // 2 ms
    uint64_t deadline = KJ_ASSERT_NONNULL(armed.timerDeadlineNs);
    while (monotonicNs() + 20'000 < deadline) std::this_thread::sleep_for(std::chrono::microseconds(50));
    kj::Maybe<uint8_t> injected;
    auto fetch = Request::fetchEvents();
    fetch.injectIfPending = true;
    while (injected == nullptr && std::chrono::steady_clock::now() < giveUp) {
      injected = channel->call(fetch).inject;
    }
    CHECK(injected == uint8_t(0x40));
    CHECK(channel->call(Request::mmioWrite(kEoi, 4, 0)).status == AccessStatus::OK);
    ++rounds;
    if (rounds >= 10 && served.operatorView->status().channelRequestTimerFires > before.channelRequestTimerFires) {
      break;
    }
  }
  auto after = served.operatorView->status();
  INFO("rounds " << rounds);
  CHECK(after.channelRequestTimerFires > before.channelRequestTimerFires);
  CHECK(after.totalTimerExpiries - before.totalTimerExpiries == rounds);
}

TEST_CASE("releasing a VM with open channels ends them, the front sees DISCONNECTED",
          "[integration][channel]") {
  Served served(2);
  auto vcpu = served.vcpu(0);
  auto channel = ChannelFront::connect(vcpu->openChannel());
  CHECK(channel->call(Request::mmioRead(kTpr, 4)).status == AccessStatus::OK);
  served.vm->release();
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { channel->call(Request::mmioRead(kTpr, 4)); })) {
    CHECK(e->getType() == kj::Exception::Type::DISCONNECTED);
  } else {
    FAIL("a released VM's channel answered");
  }
  CHECK(served.operatorView->status().vms == 0);
  CHECK(served.daemon.running());
}

}  // namespace
}  // namespace vlapic
