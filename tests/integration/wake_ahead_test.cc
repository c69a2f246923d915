// SPDX-License-Identifier: MIT
// Waking ahead of timer deadlines over the real vlapicd: the deadline hint
// travels in access replies, interrupt states and TIMER events (schema
// `timerDeadlineNs`), the client library keeps each VM's TimerDeadlines from
// them, and a WakeAheadWaiter waits for the expiry with it. What is checked
// is values and order, never speed: a reply the front received before the
// deadline must not show the timer's vector (the guest never sees its timer
// early, SDM 11.5.4), and the expiry's events come at or after it.
#include "client/lib/vlapic_client.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/xapic_addresses.h"
#include <catch2/catch.hpp>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <sys/wait.h>

namespace vlapic {
namespace {

using namespace client;
using testing::DaemonProcess;
using namespace testing;   // xapic_addresses.h

constexpr uint8_t kVector = 0x40;
constexpr uint32_t kDivideBy1 = 0xB;
constexpr uint32_t kTscDeadlineMode = 2u << 17;
constexpr uint32_t kMsrTscDeadline = 0x6E0;

struct Received {
  Event event;
  uint64_t atNs;
};

// A front on a kj loop (client::Connection) with one VM whose events are
// stamped when they arrive, and a WakeAheadWaiter on the same loop.
struct LoopFront {
  explicit LoopFront(uint32_t vcpus)
      : daemon(VLAPICD_PATH),
        io(kj::setupAsyncIo()),
        connection(Connection::connect(*io.lowLevelProvider, daemon.socketPath())),
        waiter(io.unixEventPort) {
    VmOptions options;
    options.vcpuCount = vcpus;
    options.tscHz = 1'000'000'000;   // guest TSC = host ns + offset
    options.name = kj::str("wake-ahead");
    vm = connection->createVm(kj::mv(options), [this](kj::ArrayPtr<const Event> batch) {
      uint64_t now = monotonicNowNs();
      for (auto& event: batch) received.add(Received{event, now});
      KJ_IF_MAYBE(f, onEvent) (*f)->fulfill();
      onEvent = nullptr;
    }).wait(io.waitScope);
  }
  ~LoopFront() noexcept(false) {
    vm = nullptr;
    connection = nullptr;
    int status = daemon.stop();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }

  // Resolves at the next batch.
  kj::Promise<void> nextBatch() {
    auto paf = kj::newPromiseAndFulfiller<void>();
    onEvent = kj::mv(paf.fulfiller);
    return kj::mv(paf.promise);
  }
  // Waits, waking ahead of the VM's known deadlines, until `done()` holds.
  template <typename Done>
  void waitUntil(Done&& done) {
    while (!done()) waiter.wait(nextBatch(), io.waitScope, vm->timerDeadlines());
  }
  size_t count(uint32_t vcpu, EventKind kind) const {
    size_t n = 0;
    for (auto& r: received) n += r.event.vcpu == vcpu && r.event.kind == kind;
    return n;
  }

  DaemonProcess daemon;
  kj::AsyncIoContext io;
  kj::Own<Connection> connection;
  WakeAheadWaiter waiter;
  kj::Own<AsyncVm> vm;
  kj::Vector<Received> received;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> onEvent;
};

AccessOutcome write(AsyncVcpu& vcpu, kj::WaitScope& ws, uint64_t gpa, uint32_t value) {
  auto outcome = vcpu.mmioWrite(gpa, 4, value).wait(ws);
  REQUIRE(outcome.status == AccessStatus::OK);
  return outcome;
}

// APIC software-enabled, timer at divide 1 (1 ns a count), LVT Timer `lvt`.
void setUpTimer(AsyncVcpu& vcpu, kj::WaitScope& ws, uint32_t lvt) {
  write(vcpu, ws, kSvr, 0x1FF);
  write(vcpu, ws, kDivide, kDivideBy1);
  write(vcpu, ws, kLvtTimer, lvt);
}

TEST_CASE("one-shot: the write's reply carries the deadline, the vector is never deliverable "
          "before it (SDM 11.5.4)", "[integration][wake-ahead]") {
  LoopFront front(1);
  auto& ws = front.io.waitScope;
  auto vcpu = front.vm->vcpu(0);
  setUpTimer(*vcpu, ws, kVector);   // one-shot
  CHECK(front.vm->timerDeadlines().deadline(0) == nullptr);

  uint64_t sentNs = monotonicNowNs();
  auto armed = write(*vcpu, ws, kInitialCount, 3'000'000);   // 3 ms at 1 GHz, divide 1
  CHECK(armed.timerChanged);
  uint64_t deadline = KJ_ASSERT_NONNULL(armed.timerDeadlineNs);
  CHECK(deadline >= sentNs + 3'000'000);
  // The library noted it for the waiter.
  CHECK(front.vm->timerDeadlines().deadline(0) == kj::Maybe<uint64_t>(deadline));

  // Every state the front received before the deadline: no timer vector,
  // and the same deadline.
  uint64_t repliesBefore = 0;
  for (;;) {
    auto state = vcpu->interruptState().wait(ws);
    uint64_t receivedNs = monotonicNowNs();
    if (receivedNs >= deadline) break;
    ++repliesBefore;
    CHECK(state.pendingVector == nullptr);
    CHECK(state.timerDeadlineNs == kj::Maybe<uint64_t>(deadline));
  }
  INFO("interrupt states received before the deadline: " << repliesBefore);

  front.waitUntil([&]() { return front.count(0, EventKind::DELIVERABLE) >= 1; });
  // TIMER first (it raised the vector), then DELIVERABLE; neither before the
  // deadline; a one-shot timer has no next deadline.
  REQUIRE(front.received.size() >= 2);
  CHECK(front.received[0].event.kind == EventKind::TIMER);
  CHECK(front.received[0].event.timerDeadlineNs == nullptr);
  CHECK(front.received[1].event.kind == EventKind::DELIVERABLE);
  CHECK(front.received[1].event.vector == kVector);
  for (auto& r: front.received) CHECK(r.atNs >= deadline);
  CHECK(front.vm->timerDeadlines().deadline(0) == nullptr);

  auto ack = vcpu->acknowledge().wait(ws);
  CHECK(ack.vector == kj::Maybe<uint8_t>(kVector));
  CHECK(ack.state.timerDeadlineNs == nullptr);
}

TEST_CASE("periodic: each TIMER event carries the next period's deadline, on the grid",
          "[integration][wake-ahead]") {
  LoopFront front(1);
  auto& ws = front.io.waitScope;
  auto vcpu = front.vm->vcpu(0);
  setUpTimer(*vcpu, ws, kVector | kTimerPeriodic);
  constexpr uint64_t kPeriod = 1'000'000;
  uint64_t first = KJ_ASSERT_NONNULL(write(*vcpu, ws, kInitialCount, kPeriod).timerDeadlineNs);

  front.waitUntil([&]() { return front.count(0, EventKind::TIMER) >= 5; });
  uint64_t periods = 0;
  for (auto& r: front.received) {
    if (r.event.kind != EventKind::TIMER) continue;
    periods += r.event.count;
    // This event covers periods up to `periods`: it came no earlier than
    // the last one's deadline, and names the next.
    CHECK(r.atNs >= first + (periods - 1) * kPeriod);
    uint64_t next = KJ_ASSERT_NONNULL(r.event.timerDeadlineNs);
    CHECK(next >= first + periods * kPeriod);
    CHECK((next - first) % kPeriod == 0);
  }
  auto stopped = write(*vcpu, ws, kInitialCount, 0);
  CHECK(stopped.timerDeadlineNs == nullptr);
  CHECK(front.vm->timerDeadlines().deadline(0) == nullptr);
}

TEST_CASE("TSC-deadline: the reply's deadline is the written TSC on the host clock, the waiter "
          "returns with the expiry, not before", "[integration][wake-ahead]") {
  LoopFront front(2);
  auto& ws = front.io.waitScope;
  auto vcpu = front.vm->vcpu(1);
  setUpTimer(*vcpu, ws, kVector | kTscDeadlineMode);
  int64_t offset = front.vm->save().wait(ws).tscOffset;

  // Far enough ahead that the write reaches vlapicd before it even on a
  // loaded CI machine (a deadline already past fires at once and leaves no
  // hint to check).
  uint64_t deadline = monotonicNowNs() + 50'000'000;
  auto armed = vcpu->msrWrite(kMsrTscDeadline, deadline + uint64_t(offset)).wait(ws);
  REQUIRE(armed.status == AccessStatus::OK);
  // Guest TSC at 1 GHz: TSC = host ns + offset, so the hint is exact.
  CHECK(armed.timerDeadlineNs == kj::Maybe<uint64_t>(deadline));
  auto earliest = KJ_ASSERT_NONNULL(front.vm->timerDeadlines().earliest());
  CHECK(earliest.vcpu == 1);
  CHECK(earliest.deadlineNs == deadline);

  front.waitUntil([&]() { return front.count(1, EventKind::DELIVERABLE) >= 1; });
  CHECK(monotonicNowNs() >= deadline);
  for (auto& r: front.received) {
    CHECK(r.event.vcpu == 1);
    CHECK(r.atNs >= deadline);
  }
  // The TSC-deadline timer disarms once it fires (SDM 11.5.4.1).
  auto msr = vcpu->msrRead(kMsrTscDeadline).wait(ws);
  CHECK(msr.value == 0);
  CHECK(msr.timerDeadlineNs == nullptr);
}

// Keeps `inFlight` acknowledge calls outstanding on one vCPU, so vlapicd's
// socket never runs dry, until `stop()` holds or `limit` calls were made.
struct RequestStream {
  AsyncVcpu& vcpu;
  kj::Function<bool()> stop;
  uint64_t limit;
  uint64_t sent = 0, answered = 0;
  bool stoppedByLimit = false;

  kj::Promise<void> run(uint32_t inFlight) {
    auto lanes = kj::heapArrayBuilder<kj::Promise<void>>(inFlight);
    for (uint32_t i = 0; i < inFlight; i++) lanes.add(lane());
    return kj::joinPromises(lanes.finish());
  }
  kj::Promise<void> lane() {
    if (stop()) return kj::READY_NOW;
    if (sent >= limit) {
      stoppedByLimit = true;
      return kj::READY_NOW;
    }
    ++sent;
    return vcpu.acknowledge().then([this](Acknowledged) {
      ++answered;
      return lane();
    });
  }
};

TEST_CASE("timer events are posted while a front streams requests without pause",
          "[integration][wake-ahead][starvation]") {
  // vlapicd serves RPCs, timers and events on one kj loop. kj looks at its
  // fds (epoll) only when it has nothing else to run, and a socket that
  // always holds the next request never lets it run out: the timerfd's
  // expiry went unnoticed until the stream paused, so TIMER events trailed
  // by as long as the stream lasted (the main job saw ~150 ms).
  LoopFront front(2);
  auto& ws = front.io.waitScope;
  auto timed = front.vm->vcpu(0);
  auto streamed = front.vm->vcpu(1);
  setUpTimer(*timed, ws, kVector | kTimerPeriodic);
  write(*timed, ws, kInitialCount, 1'000'000);   // every 1 ms

  // 20000 acknowledges take far longer than the 3 ms three periods need,
  // however fast the host: the stream ends by the limit only if the timer's
  // events could not get out while it ran.
  RequestStream stream{*streamed, [&]() { return front.count(0, EventKind::TIMER) >= 3; }, 20'000};
  stream.run(256).wait(ws);
  INFO("acknowledges answered while streaming: " << stream.answered);
  CHECK(!stream.stoppedByLimit);
  CHECK(front.count(0, EventKind::TIMER) >= 3);
  write(*timed, ws, kInitialCount, 0);
}

}  // namespace
}  // namespace vlapic
