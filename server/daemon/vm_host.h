// SPDX-License-Identifier: MIT
// One hosted VM (VmHost): the Vm, its real timers, its event pump to the
// front with flow control, its vCPUs' tickets and shared-memory channels;
// and the lease (VmLease) that keeps it alive while its creator holds any
// capability to it. Internal to server/daemon.
#pragma once

#include "server_state.h"
#include "proto_convert.h"
#include "front_account.h"
#include "schema/channel/channel.h"
#include "schema/vlapic.capnp.h"
#include "server/vm/vm.h"
#include "hal/hal.h"

#include <kj/async.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <kj/vector.h>

#include <deque>
#include <mutex>
#include <sys/random.h>
#include <thread>

namespace vlapic::daemon {

inline uint64_t monotonicNowNs() { return hal::MonotonicClock().nowNs(); }

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


// A hosted vCPU's counters and identity, in their wire forms.
void fillVcpuStats(proto::VcpuStats::Builder out, const VmHost& host, uint32_t vcpu);
void fillVcpuInfo(proto::VcpuInfo::Builder out, const VmHost& host, uint32_t vcpu);

}  // namespace vlapic::daemon
