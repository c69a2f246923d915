// SPDX-License-Identifier: MIT
#include "server.h"

#include "deadline_scheduler.h"
#include "front_account.h"
#include "ioapic_proto.h"
#include "reply_backpressure.h"
#include "schema/channel/channel.h"
#include "schema/vlapic.capnp.h"
#include "server/vm/vm.h"
#include "hal/hal.h"

#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <kj/map.h>
#include <kj/vector.h>

#include <cerrno>
#include <deque>
#include <map>
#include <set>
#include <mutex>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <thread>
#include <unistd.h>

#ifndef VLAPIC_VERSION
#define VLAPIC_VERSION "unknown"
#endif

namespace vlapic::daemon {

// Inside the capability classes `Server` names capnp's server base class.
using ServerState = Server::Impl;

namespace {

// The enums of the schema mirror the core's one for one (same order).
static_assert(uint16_t(proto::AccessReason::TIMER_MODE) == uint16_t(AccessReason::TIMER_MODE));
static_assert(uint16_t(proto::ApicMode::X2APIC) == uint16_t(ApicMode::X2APIC));
// The channel's event kinds are the Vm layer's, one for one.
static_assert(uint8_t(channel::EventKind::TIMER) == uint8_t(VcpuEvent::Kind::TIMER_EXPIRED));
static_assert(uint8_t(channel::EventKind::DELIVERABLE) == uint8_t(VcpuEvent::Kind::VECTOR_DELIVERABLE));

proto::AccessReason toProto(AccessReason reason) { return proto::AccessReason(uint16_t(reason)); }
proto::ApicMode toProto(ApicMode mode) { return proto::ApicMode(uint16_t(mode)); }
proto::RunState toProto(RunState state) {
  return state == RunState::WAIT_FOR_SIPI ? proto::RunState::WAIT_FOR_SIPI : proto::RunState::RUNNING;
}

void fillEvent(proto::Event::Builder out, uint32_t vcpu, const VcpuEvent& event) {
  out.setVcpu(vcpu);
  out.setCount(event.count);
  switch (event.kind) {
    case VcpuEvent::Kind::VECTOR_DELIVERABLE: out.setDeliverable(event.vector); return;
    case VcpuEvent::Kind::NMI: out.setNmi(); return;
    case VcpuEvent::Kind::SMI: out.setSmi(); return;
    case VcpuEvent::Kind::INIT: out.setInit(); return;
    case VcpuEvent::Kind::SIPI: out.setSipi(event.vector); return;
    case VcpuEvent::Kind::EXTINT: out.setExtint(); return;
    case VcpuEvent::Kind::EOI: out.setEoi(event.vector); return;
    case VcpuEvent::Kind::TIMER_EXPIRED: out.setTimer(); return;
  }
  KJ_UNREACHABLE;
}

VcpuEvent eventFromProto(proto::Event::Reader in) {
  VcpuEvent event;
  event.count = in.getCount();
  switch (in.which()) {
    case proto::Event::DELIVERABLE:
      event.kind = VcpuEvent::Kind::VECTOR_DELIVERABLE; event.vector = in.getDeliverable(); break;
    case proto::Event::NMI: event.kind = VcpuEvent::Kind::NMI; break;
    case proto::Event::SMI: event.kind = VcpuEvent::Kind::SMI; break;
    case proto::Event::INIT: event.kind = VcpuEvent::Kind::INIT; break;
    case proto::Event::SIPI: event.kind = VcpuEvent::Kind::SIPI; event.vector = in.getSipi(); break;
    case proto::Event::EXTINT: event.kind = VcpuEvent::Kind::EXTINT; break;
    case proto::Event::EOI: event.kind = VcpuEvent::Kind::EOI; event.vector = in.getEoi(); break;
    case proto::Event::TIMER: event.kind = VcpuEvent::Kind::TIMER_EXPIRED; break;
    default: KJ_FAIL_REQUIRE("unknown event kind in saved state", uint16_t(in.which()));
  }
  return event;
}

void fillSnapshot(proto::VcpuState::Builder out, uint32_t index, const LapicSnapshot& snapshot) {
  out.setIndex(index);
  out.setApicBase(snapshot.apicBase);
  out.setRegs(kj::arrayPtr(snapshot.regs, sizeof(snapshot.regs)));
  out.setX2apic32BitIds(snapshot.x2apic32BitIds);
  out.setHidden(snapshot.hidden);
}

// Malformed input is the front's error: an error reply, nothing changed.
LapicSnapshot snapshotFromProto(proto::VcpuState::Reader in) {
  LapicSnapshot snapshot;
  auto regs = in.getRegs();
  KJ_REQUIRE(regs.size() == sizeof(snapshot.regs),
             "VcpuState.regs must be exactly one kvm_lapic_state (1024 bytes)", regs.size());
  memcpy(snapshot.regs, regs.begin(), regs.size());
  snapshot.apicBase = in.getApicBase();
  snapshot.x2apic32BitIds = in.getX2apic32BitIds();
  snapshot.hidden = kj::heapArray<kj::byte>(in.getHidden());
  return snapshot;
}

uint64_t monotonicNowNs() { return hal::MonotonicClock().nowNs(); }

// A vCPU with a channel and an armed timer gets its channel thread polling
// across the expiry (channel::ChannelServer::pollBetween), so the front's
// FETCH_EVENTS right after it finds the thread awake instead of paying a
// cold wake-up (~40-50 us on this nested host; the thread's adaptive window
// is 0 on a contended host, see schema/channel/README.md).
//
// The poll starts at the deadline minus the scheduler's advance margin plus
// kChannelPollExtraLeadNs: the margin is learned from how late this host
// wakes a thread sleeping on a timerfd, which is what the channel thread
// does too, and the extra lead covers the spread the margin leaves (the
// margin covers ~9 in 10 of the loop's wake-ups, and a channel thread
// woken a little late misses the fetch entirely). See README.md for the
// leads measured.
constexpr uint64_t kChannelPollExtraLeadNs = 20'000;
// The poll ends once the front has fetched the expiry's events (the
// channel ends it itself) or this long after the deadline, whichever comes
// first. It bounds the CPU a front that does not fetch at once costs
// (its vCPU in the guest, kicked through the attention eventfd, or no
// front waiting at all): a halted front waking ahead fetches within some
// 10-30 us of the deadline, a kicked vCPU within ~100 us.
constexpr uint64_t kChannelPollTailNs = 150'000;
// After a channel vCPU's timer expiry the loop thread itself polls for the
// front's fetch this long (channel::ChannelServer::serveOnCaller) and
// serves it: the loop is awake anyway, so the fetch costs no wake-up. It
// holds up every other VM's work on the loop for at most this long per
// such expiry, so it is short: a halted front polling the attention flag
// fetches within ~10-20 us (bench-timer's "flag seen" median 7-14 us); a
// front that is later (a vCPU in the guest, kicked) costs the full 50 us
// and then wakes the channel thread as before.
constexpr uint64_t kLoopServeTailNs = 50'000;

// What the hinted polls did, summed over channels (ServerCounters).
struct ChannelHintCounters {
  uint64_t given = 0;   // hints vlapicd gave (one per new deadline)
  uint64_t polls = 0, wakeups = 0, requests = 0;
  uint64_t loopPolls = 0, loopRequests = 0;   // serveOnCaller on the loop
  uint64_t loopSkipped = 0;                    // ... skipped by its back-off

  void add(const channel::ServerStats& stats) {
    polls += stats.hintedPolls;
    wakeups += stats.hintedWakeups;
    requests += stats.hintedRequests;
    loopPolls += stats.callerPolls;
    loopRequests += stats.callerRequests;
    loopSkipped += stats.callerSkipped;
  }
  void addVm(const ChannelHintCounters& vm) {
    given += vm.given;
    polls += vm.polls;
    wakeups += vm.wakeups;
    requests += vm.requests;
    loopPolls += vm.loopPolls;
    loopRequests += vm.loopRequests;
    loopSkipped += vm.loopSkipped;
  }
};

// First-segment hint for replies (they grow as needed). Always explicit:
// capnp's defaulted hint trips g++'s -Wmaybe-uninitialized in sanitizer
// builds.
constexpr capnp::MessageSize kReplySize{256, 1};

class VmHost;
class VmLease;

}  // namespace

// ---------------------------------------------------------------------------

struct Server::Impl final: private kj::TaskSet::ErrorHandler {
  Impl(kj::UnixEventPort& eventPort, ServerOptions options);
  ~Impl() noexcept(false);

  ServerOptions options;
  hal::MonotonicClock clock;
  kj::Own<hal::Hal> hal;
  // The APIC-access page: one per server object (seed 000), through the HAL.
  kj::Own<hal::Page> apicAccessPage;
  DeadlineScheduler scheduler;
  uint64_t startNs;

  uint64_t nextVmId = 1;
  uint64_t nextConnectionId = 1;
  std::map<uint64_t, kj::Own<VmHost>> vms;
  struct TicketTarget { uint64_t vmId; uint32_t index; };
  kj::HashMap<kj::String, TicketTarget> tickets;   // hex token -> vCPU

  struct Connection;
  std::map<uint64_t, kj::Own<Connection>> connections;
  std::map<uid_t, uint32_t> connectionsPerUid;   // front connections only
  ServerWideUsage serverWide;
  uint64_t refusedConnections = 0;

  uint64_t totalEventsPosted = 0;
  // Added to by the loop and by channel threads (a due timer a request
  // fires, serveChannel), under different VMs' locks.
  std::atomic<uint64_t> totalTimerExpiries{0};
  std::atomic<uint64_t> timerExpiriesFiredByRequests{0};   // of those, by serveChannel
  ChannelHintCounters retiredChannelHints;   // of released VMs

  // Live leases: the RPC system may drop capabilities after the server is
  // gone (it defers some teardown), so leases must know whether it is.
  std::set<VmLease*> leases;

  // Work channel threads hand to the loop: VMs with noted work, and
  // channels whose front hung up. Any thread adds and then writes `wakeFd`;
  // the loop drains.
  struct ClosedChannel { uint64_t vmId; uint32_t vcpu; uint64_t generation; };
  struct CrossThreadQueue {
    std::set<uint64_t> vms;
    kj::Vector<ClosedChannel> closedChannels;
  };
  kj::MutexGuarded<CrossThreadQueue> crossThread;
  kj::AutoCloseFd wakeFd;   // eventfd; closed after `wakeObserver` unregisters it
  kj::UnixEventPort::FdObserver wakeObserver;

  kj::TaskSet tasks;

  void wakeLoop(uint64_t vmId);          // any thread
  void channelClosed(uint64_t vmId, uint32_t vcpu, uint64_t generation);   // any thread
  kj::Promise<void> takeCrossThreadWork();

  kj::Maybe<VmHost&> findVm(uint64_t id);
  VmHost& requireVm(uint64_t id);
  void releaseVm(uint64_t id);
  void accept(kj::Own<kj::AsyncCapabilityStream> stream, Authority authority);
  ServerCounters counters() const;
  void fillStatus(proto::ServerStatus::Builder out) const;
  void fillFrontStatus(proto::ServerStatus::Builder out, const FrontAccount& account) const;
  void fillVmInfo(proto::VmInfo::Builder out, const VmHost& host) const;

  void taskFailed(kj::Exception&& exception) override {
    KJ_LOG(ERROR, "server task failed", exception);
  }
};

namespace {

// Keeps a VM alive: held by every capability its creator got (Vm, Vcpu,
// redeemed tickets). When the last one goes (the front dropped them or
// disconnected), the VM and everything it owns is released.
class VmLease final: public kj::Refcounted {
public:
  VmLease(ServerState& server, uint64_t vmId): server(server), vmId(vmId) {
    server.leases.insert(this);
  }
  ~VmLease() noexcept(false) {
    KJ_IF_MAYBE(s, server) {
      s->leases.erase(this);
      s->releaseVm(vmId);
    }
  }
  // The server is going away before the RPC system dropped this lease.
  void serverGone() { server = nullptr; }

private:
  kj::Maybe<ServerState&> server;
  uint64_t vmId;
};

// One hosted VM: the Vm, its real timers, its event pump to the front, and
// the shared-memory channels of its vCPUs.
//
// Threads: everything runs on the event loop except channel requests, which
// each vCPU's channel thread serves (schema/channel/README.md). The Vm layer
// is single-threaded, so every Vm operation holds `vmMutex`, on the loop as
// on a channel thread. Listener callbacks run inside Vm operations (under
// the lock) on whichever thread made them: on the loop they act directly; on
// a channel thread they only note the work and wake the loop (ServerState's
// LoopWaker), which takes it up under the lock. Lock order: vmMutex, then
// `crossThread`'s mutex; the loop never waits for a channel thread while it
// holds vmMutex (channels are destroyed outside the lock).
class VmHost final: public VmEventListener, private kj::TaskSet::ErrorHandler {
public:
  // `account` has been charged for this VM; the VM refunds it when it goes.
  VmHost(ServerState& server, uint64_t id, kj::Own<FrontAccount> account, kj::String name,
         const VmConfig& config, proto::EventSink::Client sink,
         uint32_t maxBatchesInFlight, uint32_t maxEventsPerBatch)
      : server(server), id(id), owner(account->owner()), account(kj::mv(account)),
        name(kj::mv(name)),
        createdNs(monotonicNowNs()), vm(*server.hal, config), sink(kj::mv(sink)),
        maxBatchesInFlight(maxBatchesInFlight), maxEventsPerBatch(maxEventsPerBatch),
        loopThread(std::this_thread::get_id()),
        dirty(kj::heapArray<bool>(config.vcpuCount)),
        eventsPostedPerVcpu(kj::heapArray<uint64_t>(config.vcpuCount)),
        ticketKeys(kj::heapArray<kj::Maybe<kj::String>>(config.vcpuCount)),
        channels(kj::heapArray<kj::Maybe<kj::Own<channel::ChannelServer>>>(config.vcpuCount)),
        channelGenerations(kj::heapArray<uint64_t>(config.vcpuCount)),
        hintedDeadlines(kj::heapArray<uint64_t>(config.vcpuCount)),
        tasks(*this) {
    for (auto& d: dirty) d = false;
    for (auto& n: eventsPostedPerVcpu) n = 0;
    for (auto& g: channelGenerations) g = 0;
    for (auto& h: hintedDeadlines) h = 0;
    auto builder = kj::heapArrayBuilder<kj::Own<DeadlineScheduler::Slot>>(config.vcpuCount);
    for (uint32_t v = 0; v < config.vcpuCount; v++) {
      builder.add(kj::heap<DeadlineScheduler::Slot>(server.scheduler, [this, v]() { timerFired(v); }));
    }
    timers = builder.finish();
    auto guard = lock();
    vm.setListener(*this);
    resyncAll();
  }

  ~VmHost() noexcept(false) {
    // Channel threads first (each finishes its request and joins), without
    // the lock: a request in progress needs it to finish.
    for (auto& channel: channels) {
      kj::Maybe<kj::Own<channel::ChannelServer>> closing;
      {
        auto guard = lock();
        closing = kj::mv(channel);
        channel = nullptr;
      }
      if (closing != nullptr) account->refundChannel();
    }
    vm.setListener(nullptr);
    for (auto& key: ticketKeys) {
      KJ_IF_MAYBE(k, key) server.tickets.erase(*k);
    }
    account->refundVm(vm.vcpuCount());
  }

  // Every Vm operation holds this.
  [[nodiscard]] std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(vmMutex); }

  // After operations that may move any vCPU's timer or queue events without
  // going through the listener (restore): bring timers and the pump in line.
  // On the loop, with the lock held.
  void resyncAll() {
    for (uint32_t v = 0; v < vm.vcpuCount(); v++) {
      syncTimer(v);
      if (vm.hasEvents(v)) eventsPending(v);
    }
  }

  // The vCPU's timer slot follows the Vm's deadline, and so does its
  // channel's hinted poll. On the loop, with the lock held.
  void syncTimer(uint32_t vcpu) {
    kj::Maybe<uint64_t> deadline = vm.timerDeadlineNs(vcpu);
    timers[vcpu]->set(deadline);
    if (!server.options.channelThreadTimerPolls) return;
    KJ_IF_MAYBE(channel, channels[vcpu]) {
      uint64_t& hinted = hintedDeadlines[vcpu];
      KJ_IF_MAYBE(d, deadline) {
        if (*d == hinted) return;
        uint64_t lead = server.scheduler.advanceNs() + kChannelPollExtraLeadNs;
        (*channel)->pollBetween(*d > lead ? *d - lead : 0, *d + kChannelPollTailNs);
        hinted = *d;
        ++channelHintsGiven;
      } else if (hinted > monotonicNowNs()) {
        // Stopped before it expired. (After an expiry, whose one-shot timer
        // is now disarmed, the poll is still wanted: it ends by itself.)
        (*channel)->cancelPoll();
        hinted = 0;
      }
    }
  }

  // ---- VmEventListener: inside a Vm operation, with the lock held ----

  void eventsPending(uint32_t vcpu) override {
    KJ_IF_MAYBE(channel, channels[vcpu]) {
      // The vCPU's events go through its channel only: one order.
      (*channel)->raiseAttention();
      // Raised by another vCPU's channel request (an IPI it sent): that
      // reply names this vCPU, so the front kicks its thread directly
      // instead of waiting for its attention watcher to wake.
      KJ_IF_MAYBE(requester, servingChannelOf) {
        if (*requester != vcpu) notifiedByRequest.add(vcpu);
      }
    } else if (onLoopThread()) {
      markDirty(vcpu);
    } else {
      crossThread.lockExclusive()->events.insert(vcpu);
      server.wakeLoop(id);
    }
  }

  void timerChanged(uint32_t vcpu) override {
    if (onLoopThread()) {
      syncTimer(vcpu);
    } else {
      crossThread.lockExclusive()->timers.insert(vcpu);
      server.wakeLoop(id);
    }
  }

  // ---- Work noted by channel threads, taken up on the loop ----

  void takeCrossThreadWork() {
    CrossThreadWork work;
    {
      auto locked = crossThread.lockExclusive();
      work = kj::mv(*locked);
      *locked = CrossThreadWork();
    }
    if (work.events.empty() && work.timers.empty()) return;
    {
      auto guard = lock();
      for (uint32_t v: work.timers) syncTimer(v);
      for (uint32_t v: work.events) {
        if (channels[v] == nullptr && vm.hasEvents(v)) markDirty(v);
      }
    }
  }

  // ---- Channels ----

  kj::AutoCloseFd openChannel(uint32_t vcpu) {
    // A front that closed its channel and asks for a new one at once can get
    // here before the hang-up has: the channel thread notices it at its next
    // wake-up and only then posts it to this loop. The old channel is gone
    // for the front either way, so retire it now instead of refusing the
    // open; the late notice then finds a newer generation and is dropped.
    kj::Maybe<uint64_t> hungUpGeneration;
    {
      auto guard = lock();
      KJ_IF_MAYBE(existing, channels[vcpu]) {
        if ((*existing)->frontHungUp()) hungUpGeneration = channelGenerations[vcpu];
      }
    }
    KJ_IF_MAYBE(g, hungUpGeneration) closeChannel(vcpu, *g);
    uint64_t generation;
    {
      auto guard = lock();
      KJ_REQUIRE(channels[vcpu] == nullptr, "this vCPU already has an open channel", vcpu);
    }
    // Each channel is a server thread: charged to the VM's creator.
    account->chargeChannel();
    KJ_ON_SCOPE_FAILURE(account->refundChannel());
    {
      auto guard = lock();
      generation = ++channelGenerations[vcpu];
    }
    auto created = channel::ChannelServer::create(
        [this, vcpu](const channel::Request& request) { return serveChannel(vcpu, request); },
        [&server = server, vmId = id, vcpu, generation]() {
          server.channelClosed(vmId, vcpu, generation);
        });
    auto guard = lock();
    auto& channel = *created.server;
    channels[vcpu] = kj::mv(created.server);
    // Events queued before the channel existed travel through it now.
    if (vm.hasEvents(vcpu)) channel.raiseAttention();
    hintedDeadlines[vcpu] = 0;
    syncTimer(vcpu);   // an armed timer gets its hint
    return kj::mv(created.frontFd);
  }

  // On the loop: the front closed the channel `generation` of `vcpu`.
  void closeChannel(uint32_t vcpu, uint64_t generation) {
    kj::Maybe<kj::Own<channel::ChannelServer>> closing;
    {
      auto guard = lock();
      if (channelGenerations[vcpu] != generation) return;
      closing = kj::mv(channels[vcpu]);
      channels[vcpu] = nullptr;
      KJ_IF_MAYBE(c, closing) retireChannelStats((*c)->stats());
      // What the front did not fetch goes to the EventSink again.
      if (vm.hasEvents(vcpu)) markDirty(vcpu);
    }
    if (closing != nullptr) account->refundChannel();
    closing = nullptr;   // joins the channel thread, outside the lock
  }

  // ---- Introspection (callers hold the lock) ----

  kj::StringPtr ticketFor(uint32_t vcpu) {
    KJ_IF_MAYBE(k, ticketKeys[vcpu]) return *k;
    kj::byte token[16];
    size_t got = 0;
    while (got < sizeof(token)) {
      ssize_t n = getrandom(token + got, sizeof(token) - got, 0);
      if (n < 0) {
        KJ_ASSERT(errno == EINTR, "getrandom failed", errno);
        continue;
      }
      got += n;
    }
    kj::String key = kj::encodeHex(kj::arrayPtr(token, sizeof(token)));
    server.tickets.insert(kj::str(key), ServerState::TicketTarget{id, vcpu});
    ticketKeys[vcpu] = kj::mv(key);
    return KJ_ASSERT_NONNULL(ticketKeys[vcpu]);
  }

  uint64_t eventsQueued() const {
    uint64_t n = 0;
    for (uint32_t v = 0; v < vm.vcpuCount(); v++) n += vm.peekEvents(v).size();
    return n;
  }
  uint64_t eventsPostedFor(uint32_t vcpu) const { return eventsPostedPerVcpu[vcpu]; }
  bool hasChannel(uint32_t vcpu) const { return channels[vcpu] != nullptr; }
  // The hinted polls of this VM's channels, closed ones included. On the
  // loop (which alone opens and closes channels).
  ChannelHintCounters channelHints() const {
    ChannelHintCounters sum = closedChannelHints;
    sum.given = channelHintsGiven;
    for (auto& channel: channels) {
      KJ_IF_MAYBE(c, channel) sum.add((*c)->stats());
    }
    return sum;
  }
  const DeadlineScheduler::Slot& timer(uint32_t vcpu) const { return *timers[vcpu]; }

  ServerState& server;
  const uint64_t id;
  const uint64_t owner;   // the creating connection's id
  kj::Own<FrontAccount> account;
  const kj::String name;
  const uint64_t createdNs;
  Vm vm;
  proto::EventSink::Client sink;
  const uint32_t maxBatchesInFlight;
  const uint32_t maxEventsPerBatch;
  kj::Maybe<VmLease&> lease;   // the creator's lease (it outlives us, or releases us)

  uint32_t batchesInFlight = 0;
  uint64_t eventsPosted = 0;
  uint64_t batchesPosted = 0;
  uint64_t msisDelivered = 0;
  bool sinkGone = false;

private:
  struct CrossThreadWork {
    std::set<uint32_t> events;   // vCPUs whose queue became non-empty
    std::set<uint32_t> timers;   // vCPUs whose deadline moved
  };

  std::mutex vmMutex;
  const std::thread::id loopThread;
  kj::MutexGuarded<CrossThreadWork> crossThread;
  kj::Array<bool> dirty;                 // vCPU is in dirtyOrder
  std::deque<uint32_t> dirtyOrder;       // vCPUs with queued events, oldest first
  kj::Array<uint64_t> eventsPostedPerVcpu;
  kj::Array<kj::Maybe<kj::String>> ticketKeys;
  kj::Array<kj::Maybe<kj::Own<channel::ChannelServer>>> channels;
  kj::Array<uint64_t> channelGenerations;
  // The deadline each channel's hinted poll was last given for (0: none).
  kj::Array<uint64_t> hintedDeadlines;
  uint64_t channelHintsGiven = 0;
  ChannelHintCounters closedChannelHints;
  kj::Array<kj::Own<DeadlineScheduler::Slot>> timers;
  bool flushScheduled = false;
  uint64_t coalescedReported = 0;   // Vm's eventsCoalesced at the last batch
  // While a channel request of this vCPU runs (under the VM lock): the
  // other vCPUs whose attention it raised, for its reply.
  kj::Maybe<uint32_t> servingChannelOf;
  kj::Vector<uint32_t> notifiedByRequest;
  kj::TaskSet tasks;   // last: cancelled first on destruction

  bool onLoopThread() const { return std::this_thread::get_id() == loopThread; }

  void retireChannelStats(const channel::ServerStats& stats) { closedChannelHints.add(stats); }

  void markDirty(uint32_t vcpu) {
    if (!dirty[vcpu]) {
      dirty[vcpu] = true;
      dirtyOrder.push_back(vcpu);
    }
    scheduleFlush();
  }

  // A channel request, on the channel's thread (README's handler).
  channel::Reply serveChannel(uint32_t vcpu, const channel::Request& request) {
    auto guard = lock();
    servingChannelOf = vcpu;
    notifiedByRequest.clear();
    KJ_DEFER(servingChannelOf = nullptr);
    // A timer already due is fired here, before the access: a front that
    // woke or kicked itself at the deadline (it knows it from every reply)
    // gets the expiry and, with injectIfPending, the injection in this one
    // call, without waiting for the loop's timer wake-up and its
    // attention round trip. The loop's slot follows through the listener.
    KJ_IF_MAYBE(deadline, vm.timerDeadlineNs(vcpu)) {
      if (*deadline <= monotonicNowNs()) {
        uint32_t expiries = vm.onTimer(vcpu);
        server.totalTimerExpiries += expiries;
        server.timerExpiriesFiredByRequests += expiries;
      }
    }
    channel::Reply reply;
    switch (request.operation) {
      case channel::Operation::MMIO_READ:
        reply = channel::Reply::access(vm.mmioRead(vcpu, request.gpa, request.size));
        break;
      case channel::Operation::MMIO_WRITE:
        reply = channel::Reply::access(vm.mmioWrite(vcpu, request.gpa, request.size, request.value));
        break;
      case channel::Operation::MSR_READ:
        reply = channel::Reply::access(vm.msrRead(vcpu, request.msr));
        break;
      case channel::Operation::MSR_WRITE:
        reply = channel::Reply::access(vm.msrWrite(vcpu, request.msr, request.value));
        break;
      case channel::Operation::ACKNOWLEDGE:
        reply.inject = vm.acknowledge(vcpu);
        break;
      case channel::Operation::SET_CR8:
        vm.setCr8(vcpu, request.cr8);
        break;
      case channel::Operation::FETCH_EVENTS:
        break;
    }
    // The exit's reply carries the injection: no second round trip.
    if (request.injectIfPending && request.operation != channel::Operation::ACKNOWLEDGE) {
      reply.inject = vm.acknowledge(vcpu);
    }
    reply.cr8 = vm.lapic(vcpu).cr8();
    // Acknowledge first, then take the events: a whole queue always fits.
    auto events = vm.takeEvents(vcpu);
    for (auto& event: events) {
      KJ_ASSERT(reply.addEvent({channel::EventKind(uint8_t(event.kind)), event.vector, event.count}));
    }
    eventsPostedPerVcpu[vcpu] += events.size();
    reply.timerDeadlineNs = vm.timerDeadlineNs(vcpu);
    for (uint32_t other: notifiedByRequest) {
      if (!reply.addNotified(other)) break;  // the rest: their watchers
    }
    return reply;
  }

  void timerFired(uint32_t vcpu) {
    {
      auto guard = lock();
      uint32_t expiries = vm.onTimer(vcpu);
      server.totalTimerExpiries += expiries;
      // onTimer re-arms periodic timers; keep the slot in step even if the
      // deadline did not move.
      syncTimer(vcpu);
    }
    // Post now rather than on a later turn: timer lateness is what the
    // front measures. (onTimer's listener call has just scheduled a flush
    // for the next turn, behind whatever the loop has queued: requests
    // streaming in, other VMs' work. That one then finds nothing left, or
    // what flow control held back.)
    flush();
    // The loop is awake now and the front is about to fetch (a halted
    // vCPU polling its attention flag does so within ~10 us): serve that
    // fetch here rather than make it wake the channel thread, which a
    // contended host leaves asleep (README.md, "Channels and timers").
    // Outside the VM lock: the handler takes it.
    KJ_IF_MAYBE(channel, channels[vcpu]) {
      (*channel)->serveOnCaller(monotonicNowNs() + kLoopServeTailNs);
    }
  }

  void scheduleFlush() {
    if (flushScheduled || batchesInFlight >= maxBatchesInFlight || sinkGone) return;
    flushScheduled = true;
    // Flush once the current operation (which may queue more events, e.g. a
    // broadcast IPI) has finished, so they travel in one batch.
    tasks.add(kj::evalLater([this]() {
      flushScheduled = false;
      flush();
    }));
  }

  void flush() {
    if (batchesInFlight >= maxBatchesInFlight || sinkGone || dirtyOrder.empty()) return;

    // Collect whole per-vCPU queues, oldest vCPU first, up to the batch size.
    struct Taken {
      uint32_t vcpu;
      kj::Vector<VcpuEvent> events;
      // The next expiry as the batch leaves: a TIMER event's hint for the
      // front's wake-ahead wait (a periodic timer's next period).
      kj::Maybe<uint64_t> timerDeadlineNs;
    };
    kj::Vector<Taken> taken;
    size_t total = 0;
    {
      auto guard = lock();
      while (!dirtyOrder.empty()) {
        uint32_t v = dirtyOrder.front();
        size_t n = channels[v] == nullptr ? vm.peekEvents(v).size() : 0;
        if (total > 0 && total + n > maxEventsPerBatch) break;
        dirtyOrder.pop_front();
        dirty[v] = false;
        if (n == 0) continue;   // withdrawn "deliverable", or the vCPU has a channel
        auto events = vm.takeEvents(v);
        total += events.size();
        eventsPostedPerVcpu[v] += events.size();
        taken.add(Taken{v, kj::mv(events), vm.timerDeadlineNs(v)});
      }
    }
    if (total == 0) return;

    auto request = sink.deliverRequest(capnp::MessageSize{total * 4 + 8, 0});
    auto list = request.initEvents(total);
    size_t i = 0;
    for (auto& entry: taken) {
      for (auto& event: entry.events) {
        auto out = list[i++];
        fillEvent(out, entry.vcpu, event);
        KJ_IF_MAYBE(deadline, entry.timerDeadlineNs) {
          if (event.kind == VcpuEvent::Kind::TIMER_EXPIRED) out.setTimerDeadlineNs(*deadline);
        }
      }
    }
    {
      auto guard = lock();
      uint64_t coalesced = vm.stats().eventsCoalesced;
      request.setDroppedCoalesced(coalesced - coalescedReported);
      coalescedReported = coalesced;
    }
    eventsPosted += total;
    server.totalEventsPosted += total;
    ++batchesPosted;
    ++batchesInFlight;
    tasks.add(request.send().then(
        [this](auto&&) {
          --batchesInFlight;
          if (!dirtyOrder.empty()) scheduleFlush();
        },
        [this](kj::Exception&& e) {
          --batchesInFlight;
          if (e.getType() == kj::Exception::Type::DISCONNECTED) {
            // The front is gone; its capabilities will drop and release us.
            sinkGone = true;
          } else {
            KJ_LOG(WARNING, "event sink rejected a batch; its events are lost", id, e);
            if (!dirtyOrder.empty()) scheduleFlush();
          }
        }));
  }

  void taskFailed(kj::Exception&& exception) override {
    KJ_LOG(ERROR, "VM task failed", id, exception);
  }
};

// ---------------------------------------------------------------------------
// Capabilities

void fillInterruptState(proto::InterruptState::Builder out, const Vm& vm, uint32_t vcpu) {
  const Lapic& lapic = vm.lapic(vcpu);
  KJ_IF_MAYBE(vector, vm.pendingVector(vcpu)) {
    out.setInterruptPending(true);
    out.setPendingVector(*vector);
  }
  out.setTpr(lapic.tpr());
  out.setPpr(lapic.ppr());
  out.setCr8(lapic.cr8());
  out.setRunState(toProto(vm.runState(vcpu)));
  out.setApicMode(toProto(lapic.mode()));
  out.setApicId(lapic.apicId());
  KJ_IF_MAYBE(deadline, vm.timerDeadlineNs(vcpu)) out.setTimerDeadlineNs(*deadline);
}

void fillAccess(proto::AccessResult::Builder out, const AccessResult& result, const Vm& vm,
                uint32_t vcpu) {
  switch (result.status) {
    case AccessStatus::OK: out.setValue(result.value); break;
    case AccessStatus::GP: out.setGp(toProto(result.reason)); break;
    case AccessStatus::IGNORED: {
      auto ignored = out.initIgnored();
      ignored.setReason(toProto(result.reason));
      ignored.setValue(result.value);
      break;
    }
  }
  out.setIpiSent(result.ipi != nullptr);
  KJ_IF_MAYBE(vector, result.eoiBroadcast) {
    out.setEoiBroadcast(true);
    out.setEoiVector(*vector);
  }
  out.setTimerChanged(result.timerChanged);
  KJ_IF_MAYBE(vector, vm.pendingVector(vcpu)) {
    out.setInterruptPending(true);
    out.setPendingVector(*vector);
  }
  KJ_IF_MAYBE(deadline, vm.timerDeadlineNs(vcpu)) out.setTimerDeadlineNs(*deadline);
}

void fillPageInfo(proto::PageInfo::Builder out, const hal::Page& page) {
  out.setAddress(page.physAddr());
  out.setShared(page.fd() != nullptr);
  out.setFdOffset(page.fdOffset());
}

void fillVcpuStats(proto::VcpuStats::Builder out, const VmHost& host, uint32_t vcpu) {
  const LapicStats& s = host.vm.lapic(vcpu).stats();
  out.setIndex(vcpu);
  out.setReads(s.reads);
  out.setWrites(s.writes);
  out.setGpFaults(s.gpFaults);
  out.setIgnoredAccesses(s.ignoredAccesses);
  out.setAccepted(s.accepted);
  out.setAcknowledged(s.acknowledged);
  out.setEois(s.eois);
  out.setIpisSent(s.ipisSent);
  out.setTimerExpiries(s.timerExpiries);
  out.setEventsPosted(host.eventsPostedFor(vcpu));
  uint32_t nonZero = 0;
  for (uint64_t count: s.perRegisterAccesses) nonZero += count != 0;
  auto list = out.initPerRegister(nonZero);
  uint32_t i = 0;
  for (uint32_t reg = 0; reg < kj::size(s.perRegisterAccesses); reg++) {
    if (s.perRegisterAccesses[reg] == 0) continue;
    list[i].setOffset(reg << 4);
    list[i].setCount(s.perRegisterAccesses[reg]);
    ++i;
  }
}

void fillVcpuInfo(proto::VcpuInfo::Builder out, const VmHost& host, uint32_t vcpu) {
  const Lapic& lapic = host.vm.lapic(vcpu);
  out.setIndex(vcpu);
  out.setApicId(lapic.apicId());
  out.setInitialApicId(lapic.initialApicId());
  out.setBsp(lapic.isBsp());
  out.setApicMode(toProto(lapic.mode()));
  out.setRunState(toProto(host.vm.runState(vcpu)));
  KJ_IF_MAYBE(deadline, host.timer(vcpu).deadline()) {
    out.setTimerArmed(true);
    out.setTimerDeadlineNs(*deadline);
  }
  out.setChannelOpen(host.hasChannel(vcpu));
}

// A mappable page: the fd travels with the capability (SCM_RIGHTS).
class PageImpl final: public proto::Page::Server {
public:
  // vcpu == nullptr: the server's APIC-access page.
  PageImpl(ServerState& server, uint64_t vmId, kj::Maybe<uint32_t> vcpu)
      : server(server), vmId(vmId), vcpu(vcpu) {}

  kj::Maybe<int> getFd() override {
    KJ_IF_MAYBE(page, find()) return page->fd();
    return nullptr;
  }

  kj::Promise<void> info(InfoContext context) override {
    KJ_IF_MAYBE(page, find()) {
      fillPageInfo(context.getResults(kReplySize).initInfo(), *page);
      return kj::READY_NOW;
    }
    KJ_FAIL_REQUIRE("VM released", vmId);
  }

private:
  ServerState& server;
  uint64_t vmId;
  kj::Maybe<uint32_t> vcpu;

  kj::Maybe<const hal::Page&> find() {
    KJ_IF_MAYBE(host, server.findVm(vmId)) {
      KJ_IF_MAYBE(v, vcpu) return host->vm.lapic(*v).page();
      return *server.apicAccessPage;
    }
    return nullptr;
  }
};

// Carries the front's end of a channel's doorbell socket. Once the front has
// its own duplicate and drops this capability, ours closes, so the channel
// thread sees the front hang up when the front closes its end.
class VcpuChannelImpl final: public proto::VcpuChannel::Server {
public:
  explicit VcpuChannelImpl(kj::AutoCloseFd fd): fd(kj::mv(fd)) {}
  kj::Maybe<int> getFd() override { return fd.get(); }

private:
  kj::AutoCloseFd fd;
};

class VcpuImpl final: public proto::Vcpu::Server {
public:
  VcpuImpl(ServerState& server, uint64_t vmId, uint32_t index, kj::Maybe<kj::Own<VmLease>> lease)
      : server(server), vmId(vmId), index(index), lease(kj::mv(lease)) {}

  kj::Promise<void> mmioRead(MmioReadContext context) override {
    auto params = context.getParams();
    uint8_t size = requireSize(params.getSize());
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.mmioRead(index, params.getAddress(), size);
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> mmioWrite(MmioWriteContext context) override {
    auto params = context.getParams();
    uint8_t size = requireSize(params.getSize());
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.mmioWrite(index, params.getAddress(), size, params.getValue());
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> msrRead(MsrReadContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.msrRead(index, context.getParams().getMsr());
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> msrWrite(MsrWriteContext context) override {
    auto params = context.getParams();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.msrWrite(index, params.getMsr(), params.getValue());
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> acknowledge(AcknowledgeContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto results = context.getResults(kResultSize);
    KJ_IF_MAYBE(vector, host.vm.acknowledge(index)) {
      results.setDelivered(true);
      results.setVector(*vector);
    }
    fillInterruptState(results.initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> interruptState(InterruptStateContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillInterruptState(context.getResults(kResultSize).initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> setCr8(SetCr8Context context) override {
    uint8_t cr8 = context.getParams().getCr8();
    KJ_REQUIRE(cr8 <= 0xF, "CR8 holds 4 bits", cr8);
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    host.vm.setCr8(index, cr8);
    fillInterruptState(context.getResults(kResultSize).initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> startup(StartupContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    bool waiting = host.vm.runState(index) == RunState::WAIT_FOR_SIPI;
    host.vm.startup(index, context.getParams().getVector());
    auto results = context.getResults(kResultSize);
    results.setStarted(waiting && host.vm.runState(index) == RunState::RUNNING);
    fillInterruptState(results.initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> save(SaveContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    bool x2apic32BitIds = !context.getParams().getLegacyX2apicIds();
    fillSnapshot(context.getResults(kReplySize).initState(), index,
                 host.vm.saveVcpu(index, x2apic32BitIds));
    return kj::READY_NOW;
  }

  kj::Promise<void> restore(RestoreContext context) override {
    auto snapshot = snapshotFromProto(context.getParams().getState());
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_IF_MAYBE(reason, host.vm.restoreVcpu(index, snapshot)) {
      KJ_FAIL_REQUIRE("invalid vCPU state", *reason);
    }
    host.resyncAll();
    return kj::READY_NOW;
  }

  kj::Promise<void> pages(PagesContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto results = context.getResults(kReplySize);
    fillPageInfo(results.initVirtualApic(), host.vm.lapic(index).page());
    fillPageInfo(results.initApicAccess(), *server.apicAccessPage);
    return kj::READY_NOW;
  }

  kj::Promise<void> virtualApicPage(VirtualApicPageContext context) override {
    server.requireVm(vmId);
    context.getResults(kReplySize).setPage(kj::heap<PageImpl>(server, vmId, index));
    return kj::READY_NOW;
  }

  kj::Promise<void> stats(StatsContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillVcpuStats(context.getResults(kReplySize).initStats(), host, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> info(InfoContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillVcpuInfo(context.getResults(kReplySize).initInfo(), host, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> ticket(TicketContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_REQUIRE(lease != nullptr, "only the VM's creator can issue tickets");
    auto key = host.ticketFor(index);
    context.getResults(kReplySize).setTicket(kj::decodeHex(key));
    return kj::READY_NOW;
  }

  kj::Promise<void> openChannel(OpenChannelContext context) override {
    auto& host = server.requireVm(vmId);
    context.getResults(kReplySize).setChannel(kj::heap<VcpuChannelImpl>(host.openChannel(index)));
    return kj::READY_NOW;
  }

private:
  // Every result of these methods fits in one small segment.
  static constexpr capnp::MessageSize kResultSize{16, 0};

  ServerState& server;
  uint64_t vmId;
  uint32_t index;
  kj::Maybe<kj::Own<VmLease>> lease;

  static uint8_t requireSize(uint8_t size) {
    KJ_REQUIRE(size == 1 || size == 2 || size == 4 || size == 8,
               "MMIO access size must be 1, 2, 4 or 8 bytes", size);
    return size;
  }
};

class VmImpl final: public proto::Vm::Server {
public:
  VmImpl(ServerState& server, uint64_t vmId, kj::Maybe<kj::Own<VmLease>> lease)
      : server(server), vmId(vmId), lease(kj::mv(lease)) {}

  kj::Promise<void> vcpu(VcpuContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    uint32_t index = context.getParams().getIndex();
    KJ_REQUIRE(index < host.vm.vcpuCount(), "vCPU index out of range", index, host.vm.vcpuCount());
    context.getResults(kReplySize).setVcpu(kj::heap<VcpuImpl>(server, vmId, index, addLease()));
    return kj::READY_NOW;
  }

  kj::Promise<void> listVcpus(ListVcpusContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto list = context.getResults(kReplySize).initVcpus(host.vm.vcpuCount());
    for (uint32_t v = 0; v < host.vm.vcpuCount(); v++) fillVcpuInfo(list[v], host, v);
    return kj::READY_NOW;
  }

  kj::Promise<void> deliverMsi(DeliverMsiContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto msi = context.getParams().getMsi();
    auto result = host.vm.deliverMsi(msi.getAddress(), msi.getData());
    if (result.status == DeliveryStatus::DELIVERED) ++host.msisDelivered;
    return kj::READY_NOW;
  }

  kj::Promise<void> deliverIoApic(DeliverIoApicContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    host.vm.deliverIoApic(context.getParams().getEntry());
    return kj::READY_NOW;
  }

  kj::Promise<void> setIrqLine(SetIrqLineContext context) override {
    auto params = context.getParams();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    requireIoApicPin(host.vm, params.getPin());
    host.vm.setIrqLine(params.getPin(), params.getLevel());
    return kj::READY_NOW;
  }

  kj::Promise<void> setIrqLines(SetIrqLinesContext context) override {
    auto lines = context.getParams().getLines();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_REQUIRE(lines.size() <= kMaxIrqLinesPerCall, "too many lines in one setIrqLines call",
               lines.size(), kMaxIrqLinesPerCall);
    // All checked before any is applied: a bad call changes nothing.
    for (auto line: lines) requireIoApicPin(host.vm, line.getPin());
    for (auto line: lines) host.vm.setIrqLine(line.getPin(), line.getLevel());
    return kj::READY_NOW;
  }

  kj::Promise<void> ioapic(IoapicContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillIoApicStatus(context.getResults(kReplySize).initStatus(), host.vm);
    return kj::READY_NOW;
  }

  kj::Promise<void> setLint(SetLintContext context) override {
    auto params = context.getParams();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_REQUIRE(params.getPin() <= 1, "LINT pin must be 0 or 1", params.getPin());
    if (params.getVcpu() == 0xFFFFFFFF) {
      host.vm.setLintAll(params.getPin(), params.getLevel());
    } else {
      KJ_REQUIRE(params.getVcpu() < host.vm.vcpuCount(), "vCPU index out of range", params.getVcpu());
      host.vm.setLint(params.getVcpu(), params.getPin(), params.getLevel());
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> save(SaveContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    VmSnapshot snapshot = host.vm.saveVm(!context.getParams().getLegacyX2apicIds());
    auto out = context.getResults(kReplySize).initState();
    auto vcpus = out.initVcpus(snapshot.vcpus.size());
    for (uint32_t v = 0; v < snapshot.vcpus.size(); v++) fillSnapshot(vcpus[v], v, snapshot.vcpus[v]);
    out.setTscOffset(snapshot.tscOffset);
    out.setTscAtSave(snapshot.tscAtSave);
    out.setLowestPriorityCursor(snapshot.lowestPriorityCursor);
    auto queues = out.initQueuedEvents(snapshot.queuedEvents.size());
    for (uint32_t v = 0; v < snapshot.queuedEvents.size(); v++) {
      auto events = queues.init(v, snapshot.queuedEvents[v].size());
      for (uint32_t i = 0; i < events.size(); i++) fillEvent(events[i], v, snapshot.queuedEvents[v][i]);
    }
    KJ_IF_MAYBE(ioapic, snapshot.ioapic) fillIoApicState(out.initIoapic(), *ioapic);
    return kj::READY_NOW;
  }

  kj::Promise<void> restore(RestoreContext context) override {
    auto params = context.getParams();
    auto in = params.getState();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto vcpus = in.getVcpus();
    KJ_REQUIRE(vcpus.size() == host.vm.vcpuCount(), "VmState has a different vCPU count",
               vcpus.size(), host.vm.vcpuCount());
    auto queues = in.getQueuedEvents();
    KJ_REQUIRE(queues.size() == 0 || queues.size() == vcpus.size(),
               "VmState.queuedEvents must have one list per vCPU", queues.size());
    VmSnapshot snapshot;
    snapshot.tscOffset = in.getTscOffset();
    snapshot.tscAtSave = in.getTscAtSave();
    snapshot.lowestPriorityCursor = in.getLowestPriorityCursor();
    auto builder = kj::heapArrayBuilder<LapicSnapshot>(vcpus.size());
    for (auto vcpu: vcpus) builder.add(snapshotFromProto(vcpu));
    snapshot.vcpus = builder.finish();
    auto queueBuilder = kj::heapArrayBuilder<kj::Array<VcpuEvent>>(vcpus.size());
    for (uint32_t v = 0; v < vcpus.size(); v++) {
      if (queues.size() == 0) {
        queueBuilder.add(nullptr);
        continue;
      }
      auto events = queues[v];
      KJ_REQUIRE(events.size() <= kMaxQueuedEventsPerVcpu, "too many queued events", v, events.size());
      auto eventBuilder = kj::heapArrayBuilder<VcpuEvent>(events.size());
      for (auto event: events) eventBuilder.add(eventFromProto(event));
      queueBuilder.add(eventBuilder.finish());
    }
    snapshot.queuedEvents = queueBuilder.finish();
    if (in.hasIoapic()) snapshot.ioapic = ioApicStateFromProto(in.getIoapic());
    auto mode = params.getResumeTscAtSaved() ? TscRestore::RESUME_AT_SAVED : TscRestore::KEEP_OFFSET;
    KJ_IF_MAYBE(reason, host.vm.restoreVm(snapshot, mode)) {
      KJ_FAIL_REQUIRE("invalid VM state", *reason);
    }
    host.resyncAll();
    return kj::READY_NOW;
  }

  kj::Promise<void> stats(StatsContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto out = context.getResults(kReplySize).initStats();
    auto list = out.initVcpus(host.vm.vcpuCount());
    for (uint32_t v = 0; v < host.vm.vcpuCount(); v++) fillVcpuStats(list[v], host, v);
    out.setEventsPosted(host.eventsPosted);
    out.setBatchesPosted(host.batchesPosted);
    out.setEventsCoalesced(host.vm.stats().eventsCoalesced);
    // The VM layer counts every expiry, also those collected inside a
    // register access or a restore, not only the ones timerFired() sees.
    out.setTimerExpiries(host.vm.stats().timerExpiries);
    out.setMsisDelivered(host.msisDelivered);
    return kj::READY_NOW;
  }

  kj::Promise<void> info(InfoContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    server.fillVmInfo(context.getResults(kReplySize).initInfo(), host);
    return kj::READY_NOW;
  }

  kj::Promise<void> apicAccessPage(ApicAccessPageContext context) override {
    server.requireVm(vmId);
    auto results = context.getResults(kReplySize);
    fillPageInfo(results.initInfo(), *server.apicAccessPage);
    results.setPage(kj::heap<PageImpl>(server, vmId, nullptr));
    return kj::READY_NOW;
  }

  kj::Promise<void> release(ReleaseContext) override {
    server.requireVm(vmId);
    server.releaseVm(vmId);
    return kj::READY_NOW;
  }

private:
  ServerState& server;
  uint64_t vmId;
  kj::Maybe<kj::Own<VmLease>> lease;   // nullptr: an operator's (admin) handle

  kj::Maybe<kj::Own<VmLease>> addLease() {
    KJ_IF_MAYBE(l, lease) return kj::addRef(**l);
    return nullptr;
  }
};

class AdminImpl final: public proto::Admin::Server {
public:
  explicit AdminImpl(ServerState& server): server(server) {}

  kj::Promise<void> status(StatusContext context) override {
    server.fillStatus(context.getResults(kReplySize).initStatus());
    return kj::READY_NOW;
  }

  kj::Promise<void> listVms(ListVmsContext context) override {
    auto list = context.getResults(kReplySize).initVms(server.vms.size());
    uint32_t i = 0;
    for (auto& entry: server.vms) {
      auto guard = entry.second->lock();
      server.fillVmInfo(list[i++], *entry.second);
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> openVm(OpenVmContext context) override {
    uint64_t id = context.getParams().getId();
    if (server.findVm(id) == nullptr) KJ_FAIL_REQUIRE("no VM with this id", id);
    context.getResults(kReplySize).setVm(kj::heap<VmImpl>(server, id, nullptr));
    return kj::READY_NOW;
  }

private:
  ServerState& server;
};

// The bootstrap of one connection. What it may do is decided here and only
// here: every connection may create VMs (charged to its own account) and
// redeem tickets; only a connection accepted on the operator socket gets
// Admin, the one capability that names VMs by id.
class ServiceImpl final: public proto::Service::Server {
public:
  ServiceImpl(ServerState& server, Authority authority, kj::Own<FrontAccount> account)
      : server(server), authority(authority), account(kj::mv(account)) {}

  kj::Promise<void> echo(EchoContext context) override {
    context.getResults(capnp::MessageSize{4, 0}).setValue(context.getParams().getValue());
    return kj::READY_NOW;
  }

  kj::Promise<void> createVm(CreateVmContext context) override {
    auto params = context.getParams();
    auto in = params.getConfig();
    const auto& options = server.options;
    if (server.vms.size() >= options.maxVms) {
      kj::throwFatalException(KJ_EXCEPTION(OVERLOADED, "vlapicd holds its most VMs (--max-vms)",
                                           options.maxVms));
    }
    KJ_REQUIRE(in.getVcpuCount() >= 1 && in.getVcpuCount() <= options.maxVcpusPerVm,
               "VmConfig.vcpuCount out of range", in.getVcpuCount(), options.maxVcpusPerVm);

    VmConfig config;
    config.vcpuCount = in.getVcpuCount();
    auto ids = in.getApicIds();
    KJ_REQUIRE(ids.size() == 0 || ids.size() == config.vcpuCount,
               "VmConfig.apicIds must be empty or have one ID per vCPU", ids.size());
    auto idBuilder = kj::heapArrayBuilder<uint32_t>(ids.size());
    for (uint32_t id: ids) idBuilder.add(id);
    config.apicIds = idBuilder.finish();
    config.bootVcpu = in.getBootVcpu();
    if (in.getLvtEntries() != 0) config.lapic.lvtEntries = in.getLvtEntries();
    config.lapic.x2apicSupported = in.getX2apicSupported();
    config.lapic.tscDeadlineSupported = in.getTscDeadlineSupported();
    config.lapic.eoiBroadcastSuppression = in.getEoiBroadcastSuppression();
    config.lapic.strictReservedBits = in.getStrictReservedBits();
    config.lapic.bspLint0ExtInt = in.getBspLint0ExtInt();
    config.x2apicBroadcastQuirk = in.getX2apicBroadcastQuirk();
    if (in.hasIoapic()) config.ioapic = ioApicConfigFromProto(in.getIoapic());
    if (in.getTimerHz() != 0) config.lapic.timer.timerHz = in.getTimerHz();
    if (in.getMinTimerPeriodNs() != 0) config.lapic.timer.minPeriodNs = in.getMinTimerPeriodNs();
    if (in.getTscHz() != 0) config.tscHz = in.getTscHz();
    KJ_IF_MAYBE(reason, validateVmConfig(config)) {
      KJ_FAIL_REQUIRE("invalid VmConfig", *reason);
    }

    uint32_t batches = in.getMaxBatchesInFlight() != 0 ? in.getMaxBatchesInFlight()
                                                       : options.defaultBatchesInFlight;
    uint32_t perBatch = in.getMaxEventsPerBatch() != 0 ? in.getMaxEventsPerBatch()
                                                       : options.defaultEventsPerBatch;
    KJ_REQUIRE(batches <= 1024, "VmConfig.maxBatchesInFlight too large", batches);
    // A batch always holds at least one vCPU's whole queue.
    perBatch = kj::max(perBatch, kMaxQueuedEventsPerVcpu);

    account->chargeVm(config.vcpuCount, server.clock.nowNs());
    bool hostOwnsCharge = false;   // once the VmHost exists, it refunds
    KJ_ON_SCOPE_FAILURE(if (!hostOwnsCharge) account->refundVm(config.vcpuCount));
    uint64_t id = server.nextVmId++;
    auto host = kj::heap<VmHost>(server, id, kj::addRef(*account), kj::heapString(in.getName()),
                                 config, params.getSink(), batches, perBatch);
    hostOwnsCharge = true;
    uint64_t connectionId = account->owner();
    auto lease = kj::refcounted<VmLease>(server, id);
    host->lease = *lease;
    server.vms.emplace(id, kj::mv(host));
    KJ_LOG(INFO, "VM created", id, connectionId, config.vcpuCount);
    context.getResults(kReplySize).setVm(kj::heap<VmImpl>(server, id, kj::mv(lease)));
    return kj::READY_NOW;
  }

  kj::Promise<void> attachVcpu(AttachVcpuContext context) override {
    auto token = context.getParams().getTicket();
    KJ_REQUIRE(token.size() == 16, "malformed vCPU ticket", token.size());
    auto key = kj::encodeHex(token);
    auto& target = KJ_REQUIRE_NONNULL(server.tickets.find(key), "unknown or expired vCPU ticket");
    auto& host = server.requireVm(target.vmId);
    auto& lease = KJ_ASSERT_NONNULL(host.lease);
    context.getResults(kReplySize).setVcpu(
        kj::heap<VcpuImpl>(server, target.vmId, target.index, kj::addRef(lease)));
    return kj::READY_NOW;
  }

  kj::Promise<void> admin(AdminContext context) override {
    if (authority != Authority::OPERATOR) {
      kj::throwFatalException(KJ_EXCEPTION(FAILED,
          "permission denied: operator authority (Service.admin) is served only on "
          "vlapicd's operator socket (--admin-socket), not on the front socket"));
    }
    context.getResults(kReplySize).setAdmin(kj::heap<AdminImpl>(server));
    return kj::READY_NOW;
  }

  kj::Promise<void> status(StatusContext context) override {
    auto out = context.getResults(kReplySize).initStatus();
    if (authority == Authority::OPERATOR) {
      server.fillStatus(out);
    } else {
      server.fillFrontStatus(out, *account);
    }
    return kj::READY_NOW;
  }

private:
  ServerState& server;
  Authority authority;
  kj::Own<FrontAccount> account;
};

}  // namespace

// ---------------------------------------------------------------------------

// One front's RPC session.
struct Server::Impl::Connection {
  Connection(ServerState& server, uint64_t id, Authority authority, kj::Maybe<uid_t> peerUid,
             kj::Own<kj::AsyncCapabilityStream> streamParam)
      : id(id), authority(authority), peerUid(peerUid),
        account(kj::refcounted<FrontAccount>(id, server.options.frontLimits, server.serverWide)),
        stream(kj::heap<ReplyBackpressureStream>(kj::mv(streamParam),
            [this, limit = server.options.maxReplyBacklogBytes]() {
              return network.getCurrentQueueSize() > limit;
            })),
        // Fronts have no reason to send fds, but capnp sends fds (the page
        // memfds) only on a network that accepts some; one per message
        // bounds what a hostile front can push (dropped with its message).
        network(*stream, 1, capnp::rpc::twoparty::Side::SERVER, readerOptions(server.options)),
        rpc(capnp::makeRpcServer(network,
                                 kj::heap<ServiceImpl>(server, authority, kj::addRef(*account)))) {
    // Calls whose replies are not yet sent: past this many words of their
    // parameters the RPC system stops reading this connection (the front
    // waits; nobody else notices).
    rpc.setFlowLimit(server.options.maxCallWordsInFlight);
  }

  static capnp::ReaderOptions readerOptions(const ServerOptions& options) {
    capnp::ReaderOptions result;
    result.traversalLimitInWords = options.maxMessageWords;
    result.nestingLimit = 16;
    return result;
  }

  uint64_t id;
  Authority authority;
  kj::Maybe<uid_t> peerUid;   // SO_PEERCRED, when the stream has one
  kj::Own<FrontAccount> account;
  kj::Own<kj::AsyncCapabilityStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
};

namespace {
kj::AutoCloseFd newEventFd() {
  int fd;
  KJ_SYSCALL(fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  return kj::AutoCloseFd(fd);
}
}  // namespace

Server::Impl::Impl(kj::UnixEventPort& eventPort, ServerOptions options)
    : options(options),
      hal(options.hal == HalKind::SHARED ? hal::newSharedMemoryHal(clock)
                                         : hal::newHostMemoryHal(clock)),
      apicAccessPage(hal->allocatePage()),
      scheduler(eventPort),
      startNs(clock.nowNs()),
      wakeFd(newEventFd()),
      wakeObserver(eventPort, wakeFd, kj::UnixEventPort::FdObserver::OBSERVE_READ),
      tasks(*this) {
  serverWide.maxChannels = options.maxChannels;
  tasks.add(takeCrossThreadWork());
}

void Server::Impl::wakeLoop(uint64_t vmId) {
  crossThread.lockExclusive()->vms.insert(vmId);
  uint64_t one = 1;
  // Non-blocking; a full counter means a wake-up is pending anyway.
  (void)!write(wakeFd, &one, sizeof(one));
}

void Server::Impl::channelClosed(uint64_t vmId, uint32_t vcpu, uint64_t generation) {
  crossThread.lockExclusive()->closedChannels.add(ClosedChannel{vmId, vcpu, generation});
  uint64_t one = 1;
  (void)!write(wakeFd, &one, sizeof(one));
}

kj::Promise<void> Server::Impl::takeCrossThreadWork() {
  return wakeObserver.whenBecomesReadable().then([this]() {
    uint64_t count;
    while (read(wakeFd, &count, sizeof(count)) > 0) {}   // edge-triggered: drain
    CrossThreadQueue queue;
    {
      auto locked = crossThread.lockExclusive();
      queue = kj::mv(*locked);
      *locked = CrossThreadQueue();
    }
    for (uint64_t id: queue.vms) {
      KJ_IF_MAYBE(host, findVm(id)) host->takeCrossThreadWork();
    }
    for (auto& closed: queue.closedChannels) {
      KJ_IF_MAYBE(host, findVm(closed.vmId)) host->closeChannel(closed.vcpu, closed.generation);
    }
    return takeCrossThreadWork();
  });
}

Server::Impl::~Impl() noexcept(false) {
  // Connections first (they drop the leases, releasing every VM), then
  // whatever VMs admin handles saw, then the HAL's pages.
  connections.clear();
  for (auto lease: leases) lease->serverGone();
  vms.clear();
}

kj::Maybe<VmHost&> Server::Impl::findVm(uint64_t id) {
  auto it = vms.find(id);
  if (it == vms.end()) return nullptr;
  return *it->second;
}

VmHost& Server::Impl::requireVm(uint64_t id) {
  KJ_IF_MAYBE(host, findVm(id)) return *host;
  KJ_FAIL_REQUIRE("VM released", id);
}

void Server::Impl::releaseVm(uint64_t id) {
  auto it = vms.find(id);
  if (it == vms.end()) return;
  // Move it out before destroying: its destructor touches `tickets`.
  kj::Own<VmHost> host = kj::mv(it->second);
  vms.erase(it);
  retiredChannelHints.addVm(host->channelHints());
  KJ_LOG(INFO, "VM released", id);
  host = nullptr;
}

namespace {
kj::Maybe<uid_t> peerUid(kj::AsyncCapabilityStream& stream) {
  struct ucred credentials = {};
  uint length = sizeof(credentials);
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    stream.getsockopt(SOL_SOCKET, SO_PEERCRED, &credentials, &length);
  })) {
    return nullptr;   // not a Unix socket (tests' in-memory pipes)
  }
  return credentials.uid;
}
}  // namespace

void Server::Impl::accept(kj::Own<kj::AsyncCapabilityStream> stream, Authority authority) {
  kj::Maybe<uid_t> uid = peerUid(*stream);
  if (authority == Authority::FRONT) {
    // Refused at once (the front sees its connection closed and the log
    // says why), never accepted and left to starve: a host's connection
    // slots are shared, so no one uid may take all of them.
    uint32_t fronts = 0;
    for (auto& entry: connections) fronts += entry.second->authority == Authority::FRONT;
    uint32_t ofUid = 0;
    KJ_IF_MAYBE(u, uid) {
      auto it = connectionsPerUid.find(*u);
      if (it != connectionsPerUid.end()) ofUid = it->second;
    }
    if (fronts >= options.maxConnections || ofUid >= options.maxConnectionsPerUid) {
      refusedConnections++;
      KJ_LOG(WARNING, "front connection refused: connection limit reached", fronts,
             options.maxConnections, ofUid, options.maxConnectionsPerUid);
      return;   // dropping the stream closes it
    }
    KJ_IF_MAYBE(u, uid) connectionsPerUid[*u]++;
  }
  uint64_t id = nextConnectionId++;
  auto connection = kj::heap<Connection>(*this, id, authority, uid, kj::mv(stream));
  auto disconnected = connection->network.onDisconnect();
  connections.emplace(id, kj::mv(connection));
  KJ_LOG(INFO, authority == Authority::OPERATOR ? "operator connected" : "front connected", id);
  tasks.add(disconnected.then([this, id]() {
    // Dropping the RPC system drops every capability the front held, which
    // releases its VMs. Do it on a fresh turn, outside the network's own
    // callbacks.
    return kj::evalLater([this, id]() {
      auto it = connections.find(id);
      if (it == connections.end()) return;
      if (it->second->authority == Authority::FRONT) {
        KJ_IF_MAYBE(u, it->second->peerUid) {
          auto count = connectionsPerUid.find(*u);
          if (count != connectionsPerUid.end() && --count->second == 0) {
            connectionsPerUid.erase(count);
          }
        }
      }
      connections.erase(it);
      KJ_LOG(INFO, "connection closed", id);
    });
  }));
}

ServerCounters Server::Impl::counters() const {
  ServerCounters c;
  c.connections = connections.size();
  c.refusedConnections = refusedConnections;
  c.channels = serverWide.channels;
  c.vms = vms.size();
  for (auto& entry: vms) c.vcpus += entry.second->vm.vcpuCount();
  c.pagesInUse = hal->pagesInUse();
  c.armedTimers = scheduler.armedCount();
  c.totalEventsPosted = totalEventsPosted;
  c.totalTimerExpiries = totalTimerExpiries;
  c.channelRequestTimerFires = timerExpiriesFiredByRequests;
  ChannelHintCounters hints = retiredChannelHints;
  for (auto& entry: vms) hints.addVm(entry.second->channelHints());
  c.channelHintsGiven = hints.given;
  c.channelHintedPolls = hints.polls;
  c.channelHintedWakeups = hints.wakeups;
  c.channelHintedRequests = hints.requests;
  c.channelLoopPolls = hints.loopPolls;
  c.channelLoopRequests = hints.loopRequests;
  c.channelLoopSkipped = hints.loopSkipped;
  return c;
}

void Server::Impl::fillStatus(proto::ServerStatus::Builder out) const {
  auto c = counters();
  out.setVersion(VLAPIC_VERSION);
  out.setHal(hal->name());
  out.setUptimeNs(clock.nowNs() - startNs);
  out.setConnections(c.connections);
  out.setVms(c.vms);
  out.setVcpus(c.vcpus);
  out.setPagesInUse(c.pagesInUse);
  out.setArmedTimers(c.armedTimers);
  out.setTotalEventsPosted(c.totalEventsPosted);
  out.setTotalTimerExpiries(c.totalTimerExpiries);
  out.setPid(getpid());
  out.setChannelLoopPolls(c.channelLoopPolls);
  out.setChannelLoopRequests(c.channelLoopRequests);
  out.setChannelLoopSkipped(c.channelLoopSkipped);
  out.setChannelTimerPolls(options.channelThreadTimerPolls);
  out.setChannelHintsGiven(c.channelHintsGiven);
  out.setChannelHintedPolls(c.channelHintedPolls);
  out.setChannelHintedWakeups(c.channelHintedWakeups);
  out.setChannelHintedRequests(c.channelHintedRequests);
  out.setChannelRequestTimerFires(c.channelRequestTimerFires);
}

void Server::Impl::fillFrontStatus(proto::ServerStatus::Builder out,
                                   const FrontAccount& account) const {
  // A front learns about the server only what concerns it: no counts of
  // other fronts' connections, VMs or traffic.
  out.setVersion(VLAPIC_VERSION);
  out.setHal(hal->name());
  out.setUptimeNs(clock.nowNs() - startNs);
  out.setConnections(1);
  out.setVms(account.vmCount());
  out.setVcpus(account.vcpuCount());
  out.setPagesInUse(account.vcpuCount());
  out.setChannelTimerPolls(options.channelThreadTimerPolls);
}

void Server::Impl::fillVmInfo(proto::VmInfo::Builder out, const VmHost& host) const {
  out.setId(host.id);
  out.setName(host.name);
  out.setVcpuCount(host.vm.vcpuCount());
  out.setOwner(host.owner);
  out.setCreatedNs(host.createdNs);
  out.setEventsQueued(host.eventsQueued());
  out.setBatchesInFlight(host.batchesInFlight);
}

// ---------------------------------------------------------------------------

Server::Server(kj::UnixEventPort& eventPort, ServerOptions options)
    : impl(kj::heap<Impl>(eventPort, options)) {}

Server::~Server() noexcept(false) {}

void Server::accept(kj::Own<kj::AsyncCapabilityStream> connection, Authority authority) {
  impl->accept(kj::mv(connection), authority);
}

kj::Promise<void> Server::listen(kj::ConnectionReceiver& listener, Authority authority) {
  return listener.accept().then([this, &listener, authority](kj::Own<kj::AsyncIoStream>&& stream) {
    // kj's Unix sockets are capability streams (as TwoPartyServer assumes).
    impl->accept(stream.downcast<kj::AsyncCapabilityStream>(), authority);
    return listen(listener, authority);
  });
}

ServerCounters Server::counters() const { return impl->counters(); }

kj::StringPtr Server::halName() const { return impl->hal->name(); }

}  // namespace vlapic::daemon
