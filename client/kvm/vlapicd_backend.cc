// SPDX-License-Identifier: MIT
#include "client/kvm/vlapicd_backend.h"

#include <kj/debug.h>
#include <cerrno>
#include <ctime>
#include <utility>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace vlapic::kvm {

namespace {

// The part of an access result both transports carry alike.
ApicAccess accessResult(AccessStatus status, AccessReason reason, uint64_t value) {
  ApicAccess access;
  switch (status) {
    case AccessStatus::OK: access.kind = ApicAccess::Kind::VALUE; break;
    case AccessStatus::GP: access.kind = ApicAccess::Kind::GP; break;
    case AccessStatus::IGNORED: access.kind = ApicAccess::Kind::IGNORED; break;
  }
  access.value = value;
  access.reason = accessReasonName(reason);
  return access;
}

ApicAccess fromOutcome(const client::AccessOutcome& outcome) {
  ApicAccess access = accessResult(outcome.status, outcome.reason, outcome.value);
  access.interruptPending = outcome.pendingVector != nullptr;
  return access;
}

ApicInterruptState fromState(const client::InterruptState& state) {
  ApicInterruptState result;
  result.interruptPending = state.pendingVector != nullptr;
  result.tpr = state.tpr;
  return result;
}

// The channel's event kinds are the Vm layer's, as are the client's.
client::EventKind fromChannelKind(channel::EventKind kind) {
  switch (kind) {
    case channel::EventKind::DELIVERABLE: return client::EventKind::DELIVERABLE;
    case channel::EventKind::NMI: return client::EventKind::NMI;
    case channel::EventKind::SMI: return client::EventKind::SMI;
    case channel::EventKind::INIT: return client::EventKind::INIT;
    case channel::EventKind::SIPI: return client::EventKind::SIPI;
    case channel::EventKind::EXTINT: return client::EventKind::EXTINT;
    case channel::EventKind::EOI: return client::EventKind::EOI;
    case channel::EventKind::TIMER: return client::EventKind::TIMER;
  }
  KJ_FAIL_REQUIRE("unknown channel event kind", uint8_t(kind));
}

uint64_t monotonicNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

}  // namespace

// Watches one channel's attention eventfd while its vCPU runs the guest or
// is parked, and tells the sink, which kicks the vCPU thread; that thread
// then fetches the events itself (fetchEvents). A thread blocked in poll()
// costs no CPU, so an idle vCPU stays free.
class VlapicdBackend::AttentionWatcher {
public:
  AttentionWatcher(channel::ChannelFront& front, ApicEventSink& sink, uint32_t vcpu)
      : front(front), sink(sink), vcpu(vcpu), stopFd(eventfd(0, EFD_CLOEXEC)) {
    KJ_REQUIRE(stopFd.get() >= 0, "eventfd failed", strerror(errno));
    thread = kj::heap<kj::Thread>([this]() { watch(); });
  }
  ~AttentionWatcher() noexcept(false) {
    uint64_t one = 1;
    KJ_SYSCALL(write(stopFd.get(), &one, sizeof(one)));
    thread = nullptr;  // joins
  }
  KJ_DISALLOW_COPY(AttentionWatcher);

private:
  channel::ChannelFront& front;
  ApicEventSink& sink;
  uint32_t vcpu;
  kj::AutoCloseFd stopFd;
  kj::Own<kj::Thread> thread;

  void watch() {
    pollfd fds[2] = {{front.attentionFd(), POLLIN, 0}, {stopFd.get(), POLLIN, 0}};
    for (;;) {
      int n = poll(fds, 2, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        KJ_FAIL_SYSCALL("poll", errno);
      }
      if (fds[1].revents != 0) return;
      if (fds[0].revents != 0 && front.consumeAttentionNotification()) sink.attention(vcpu);
    }
  }
};

VlapicdBackend::VlapicdBackend(kj::StringPtr socketPath, const VlapicdVmSettings& settingsIn,
                               ApicEventSink& sink)
    : sink(sink) {
  settings.vcpuCount = settingsIn.vcpuCount;
  settings.tscHz = settingsIn.tscHz;
  settings.x2apic = settingsIn.x2apic;
  settings.name = kj::str(settingsIn.name);
  settings.transport = settingsIn.transport;
  settings.pageReads = settingsIn.pageReads && settingsIn.transport == ApicTransport::CHANNEL;
  settings.ioapic = settingsIn.ioapic;
  settings.ioapicVersion = settingsIn.ioapicVersion;
  links = kj::heapArray<kj::Maybe<kj::Own<VcpuLink>>>(settings.vcpuCount);
  auto hints = kj::heapArrayBuilder<kj::MutexGuarded<TimerHint>>(settings.vcpuCount);
  for (uint32_t i = 0; i < settings.vcpuCount; i++) hints.add();
  timerHints = hints.finish();
  haltPolling = kj::heapArray<HaltPolling>(settings.vcpuCount);
  auto isrs = kj::heapArrayBuilder<kj::MutexGuarded<VectorSet>>(settings.vcpuCount);
  for (uint32_t i = 0; i < settings.vcpuCount; i++) isrs.add();
  inService = isrs.finish();
  publish(connect(socketPath));
}

kj::Array<client::VcpuTicket> VlapicdBackend::connect(kj::StringPtr socketPath) {
  auto newControl = client::Client::connect(socketPath);
  client::VmOptions options;
  options.vcpuCount = settings.vcpuCount;
  options.tscHz = settings.tscHz;
  options.x2apicSupported = settings.x2apic;
  options.tscDeadlineSupported = true;
  options.name = kj::str(settings.name);
  options.ioapic.present = settings.ioapic;
  options.ioapic.base = kIoApicDefaultBase;
  options.ioapic.version = settings.ioapicVersion;
  auto newVm = newControl->createVm(kj::mv(options), [this](kj::ArrayPtr<const client::Event> events) {
    onEvents(events);
  });
  // Tickets are fetched here, one at a time, rather than concurrently from
  // the vCPU threads: the library's Vm::ticket() reads its temporary vCPU
  // object after releasing it, which concurrent callers turn into a crash.
  auto builder = kj::heapArrayBuilder<client::VcpuTicket>(settings.vcpuCount);
  for (uint32_t i = 0; i < settings.vcpuCount; i++) {
    auto ticket = newVm->ticket(i);
    // The token names the vCPU; the socket and index are ours anyway.
    ticket.socketPath = kj::str(socketPath);
    ticket.index = i;
    builder.add(kj::mv(ticket));
  }
  control = kj::mv(newControl);
  vm = kj::mv(newVm);
  return builder.finish();
}

void VlapicdBackend::publish(kj::Array<client::VcpuTicket> tickets) {
  auto locked = server.lockExclusive();
  locked->tickets = kj::mv(tickets);
  locked->generation++;
  locked->lost = false;
}

VlapicdBackend::~VlapicdBackend() noexcept(false) {}

void VlapicdBackend::setGuestTscOffset(int64_t offset) {
  // VmConfig has no offset field; a VM-wide save/restore that keeps the
  // saved offset (resumeTscAtSaved = false) sets it.
  auto state = vm->save();
  state.tscOffset = offset;
  vm->restore(state, false);
}

void VlapicdBackend::enableRecovery(kj::Function<kj::String()> restartServer,
                                    uint64_t snapshotIntervalMs) {
  Recovery r;
  r.restartServer = kj::mv(restartServer);
  r.snapshotIntervalNs = snapshotIntervalMs * 1'000'000;
  recovery = kj::mv(r);
  snapshot();
}

void VlapicdBackend::snapshot() {
  auto& r = KJ_REQUIRE_NONNULL(recovery, "snapshots are kept for recovery only");
  // One VM-wide cut: vlapicd saves every vCPU under the VM's lock.
  uint64_t activityBefore = activity.load();
  r.lastSnapshot = vm->save();
  r.lastSnapshotNs = monotonicNowNs();
  r.activityAtSnapshot = activityBefore;
}

uint32_t VlapicdBackend::recoveries() const {
  KJ_IF_MAYBE(r, recovery) return r->count;
  return 0;
}

bool VlapicdBackend::keepAlive() {
  bool lost = !control->connected() || server.lockShared()->lost;
  KJ_IF_MAYBE(r, recovery) {
    if (lost) {
      KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() { recover(); })) {
        KJ_LOG(ERROR, "cannot recover from vlapicd's loss", exception->getDescription());
        server.lockExclusive()->failed = true;
        return false;
      }
      return true;
    }
    // Nothing called and nothing delivered since the last snapshot: the
    // LAPICs' architectural state is what it saved. (A masked timer that
    // expires meanwhile moves only its own phase, which a restore re-arms
    // from the saved deadline.)
    bool moved = activity.load() != r->activityAtSnapshot;
    if (moved && monotonicNowNs() - r->lastSnapshotNs >= r->snapshotIntervalNs) {
      // A save that fails because vlapicd just died is retried as a
      // recovery at the next call.
      kj::runCatchingExceptions([&]() { snapshot(); });
    }
    return true;
  }
  return !lost;
}

void VlapicdBackend::recover() {
  auto& r = KJ_ASSERT_NONNULL(recovery);
  auto& state = KJ_REQUIRE_NONNULL(r.lastSnapshot, "no snapshot to recover from");
  // Device wires wait (setIrqLine blocks here) until the new VM has them.
  auto wires = irqLevels.lockExclusive();
  // The dead server's VM went with it; releasing it can only fail.
  kj::runCatchingExceptions([&]() { vm = nullptr; });
  kj::runCatchingExceptions([&]() { control = nullptr; });
  auto socket = r.restartServer();
  // A new vlapicd may create its socket a moment before it accepts.
  kj::Array<client::VcpuTicket> tickets;
  for (int attempt = 0;; attempt++) {
    auto failure = kj::runCatchingExceptions([&]() { tickets = connect(socket); });
    if (failure == nullptr) break;
    if (attempt >= 100) kj::throwFatalException(kj::mv(KJ_ASSERT_NONNULL(failure)));
    usleep(20'000);
  }
  // vCPU threads waiting in awaitRecovery() stay on the dead server until
  // publish() below, after the restore: a call retried earlier would reach
  // the new VM in its power-on state and be undone by the restore, while
  // its effect on the front stays. kvm-survive-vlapicd-kill-rpc caught one:
  // an EOI retried there cleared the front's in-service record after this
  // function had copied it into the snapshot, so the restore left the
  // vector in service for good and its whole priority class blocked (the
  // guest's timer ticks or IPIs stopped).
  // In service is what the guest has been given and not yet EOIed, now.
  for (auto& saved : state.vcpus) {
    if (saved.index >= inService.size()) continue;
    KvmLapicStateView view(saved.regs, layoutFor(saved.mode(), saved.x2apic32BitIds));
    view.setIsr(*inService[saved.index].lockShared());
  }
  // Keep the saved TSC offset (resumeTscAtSaved = false): the guest TSC is
  // still host time scaled plus that offset, so deadlines keep their meaning.
  vm->restore(state, false);
  reapplyIrqLines(state);
  publish(kj::mv(tickets));
  r.count++;
  KJ_LOG(WARNING, "vlapicd was lost; restored every vCPU from the last snapshot on a new vlapicd",
         socket);
  // Each vCPU reopens its link on its own thread at its next call; parked
  // ones are woken so that they do it now and fetch their events.
  for (uint32_t i = 0; i < settings.vcpuCount; i++) {
    timerMayHaveMoved(i);
    sink.restored(i);
  }
}

bool VlapicdBackend::awaitRecovery(uint64_t lostGeneration) {
  if (recovery == nullptr) return false;
  auto locked = server.lockExclusive();
  if (locked->generation == lostGeneration) locked->lost = true;
  locked.wait([&](const Server& s) { return s.generation != lostGeneration || s.failed; },
              10 * kj::SECONDS);
  return !locked->failed && locked->generation != lostGeneration;
}

kj::Maybe<uint64_t> VlapicdBackend::ioApicBase() const {
  if (!settings.ioapic) return nullptr;
  return kIoApicDefaultBase;
}

bool VlapicdBackend::inIoApicWindow(uint64_t gpa) const {
  return settings.ioapic && gpa >= kIoApicDefaultBase && gpa - kIoApicDefaultBase < kIoApicWindowSize;
}

void VlapicdBackend::setIrqLine(uint8_t pin, bool level) {
  KJ_REQUIRE(settings.ioapic, "this VM has no I/O APIC in vlapicd");
  KJ_REQUIRE(pin < kIoApicPins, "no such I/O APIC pin", pin);
  activity.fetch_add(1, std::memory_order_relaxed);
  auto locked = irqLevels.lockExclusive();
  uint32_t bit = 1u << pin;
  locked->levels = level ? locked->levels | bit : locked->levels & ~bit;
  // Over the control connection (Vm.setIrqLine): the device is the VM's,
  // not a vCPU's. With the channel, the interrupt it sends reaches the
  // target vCPU as attention on its channel like an IPI.
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() { vm->setIrqLine(pin, level); })) {
    if (exception->getType() == kj::Exception::Type::DISCONNECTED && recovery != nullptr) {
      // The recovery sets the level on the new server (reapplyIrqLines);
      // the control thread notices the loss itself (keepAlive).
      server.lockExclusive()->lost = true;
      return;
    }
    sink.backendLost(exception->getDescription());
    kj::throwFatalException(kj::mv(*exception));
  }
}

void VlapicdBackend::reapplyIrqLines(const client::VmState& restored) {
  // Called with irqLevels locked by recover(). The snapshot holds the
  // wires as they were at the snapshot; the devices' levels now are the
  // truth. (An edge raised and delivered after the snapshot is delivered
  // again: the interrupt the guest took then is not in the snapshot either.)
  uint32_t now = irqLevels.getAlreadyLockedExclusive().levels;
  uint32_t then = 0;
  KJ_IF_MAYBE(ioapic, restored.ioapic) then = ioapic->pinLevels;
  for (uint8_t pin = 0; pin < kIoApicPins; pin++) {
    uint32_t bit = 1u << pin;
    if ((now ^ then) & bit) vm->setIrqLine(pin, (now & bit) != 0);
  }
}

void VlapicdBackend::injected(uint32_t vcpu, kj::Maybe<uint8_t> vector) {
  KJ_IF_MAYBE(v, vector) inService[vcpu].lockExclusive()->set(*v, true);
}

void VlapicdBackend::eoiWritten(uint32_t vcpu, const ApicAccess& access) {
  if (access.kind == ApicAccess::Kind::GP) return;
  KJ_REQUIRE(vcpu < inService.size(), "no such vCPU", vcpu);
  auto locked = inService[vcpu].lockExclusive();
  KJ_IF_MAYBE(highest, locked->highest()) locked->set(*highest, false);
}

void VlapicdBackend::deliver(uint32_t vcpu, client::EventKind kind, uint8_t vector,
                             uint32_t count) {
  activity.fetch_add(1, std::memory_order_relaxed);
  // INIT resets the LAPIC: nothing is in service any more.
  if (kind == client::EventKind::INIT && vcpu < inService.size()) {
    *inService[vcpu].lockExclusive() = VectorSet();
    noteTimer(vcpu, nullptr);
  }
  switch (kind) {
    case client::EventKind::DELIVERABLE: sink.interruptDeliverable(vcpu); break;
    case client::EventKind::NMI: sink.nmi(vcpu, count); break;
    case client::EventKind::INIT: sink.init(vcpu); break;
    case client::EventKind::SIPI: sink.startup(vcpu, vector); break;
    case client::EventKind::TIMER:
      // The timer's interrupt, if any, arrives as its own DELIVERABLE.
      break;
    case client::EventKind::SMI:
    case client::EventKind::EXTINT:
    case client::EventKind::EOI:
      sink.unhandledEvent(vcpu, client::eventKindName(kind));
      break;
  }
}

void VlapicdBackend::onEvents(kj::ArrayPtr<const client::Event> events) {
  for (auto& event : events) {
    // A TIMER event names the timer's next deadline (periodic) or none.
    if (event.kind == client::EventKind::TIMER) noteTimer(event.vcpu, event.timerDeadlineNs);
    deliver(event.vcpu, event.kind, event.vector, event.count);
  }
}

void VlapicdBackend::deliverFromChannel(uint32_t vcpu, const channel::Event& event) {
  // (The reply it came in named the timer's next deadline.)
  deliver(vcpu, fromChannelKind(event.kind), event.vector, event.count);
}

void VlapicdBackend::afterChannelReply(uint32_t vcpu, const channel::Reply& reply) {
  // Every reply says when this vCPU's timer expires next: no Vcpu.info
  // round trip before a halt, and the vCPU thread can kick itself then.
  noteTimer(vcpu, reply.timerDeadlineNs);
  // The request raised these vCPUs' attention (an IPI it sent): kick their
  // threads from here rather than wait for their watchers to wake up (one
  // cross-thread wake-up instead of two). The watchers still see the raise
  // and kick again; the second kick finds nothing and costs one exit.
  for (uint32_t other : reply.notified()) {
    if (other != vcpu && other < settings.vcpuCount) sink.attention(other);
  }
}

ApicAccess VlapicdBackend::rpcAccess(uint32_t vcpu, const client::AccessOutcome& outcome) {
  noteTimer(vcpu, outcome.timerDeadlineNs);
  return fromOutcome(outcome);
}

void VlapicdBackend::noteTimer(uint32_t vcpu, kj::Maybe<uint64_t> deadlineNs) {
  if (vcpu >= timerHints.size()) return;
  auto locked = timerHints[vcpu].lockExclusive();
  locked->deadlineNs = deadlineNs;
  locked->stale = false;
}

void VlapicdBackend::timerMayHaveMoved(uint32_t vcpu) {
  if (vcpu >= timerHints.size()) return;
  timerHints[vcpu].lockExclusive()->stale = true;
}

kj::Maybe<uint64_t> VlapicdBackend::knownTimerDeadline(uint32_t vcpu) {
  if (settings.transport != ApicTransport::CHANNEL || vcpu >= timerHints.size()) return nullptr;
  auto locked = timerHints[vcpu].lockShared();
  if (locked->stale) return nullptr;
  return locked->deadlineNs;
}

bool VlapicdBackend::dueTimerUnfetched(uint32_t vcpu) {
  if (vcpu >= timerHints.size()) return false;
  auto locked = timerHints[vcpu].lockShared();
  if (locked->stale) return false;
  KJ_IF_MAYBE(deadline, locked->deadlineNs) {
    return *deadline <= monotonicNowNs() && locked->fetchedFor != *deadline;
  }
  return false;
}

bool VlapicdBackend::takeDueTimer(uint32_t vcpu) {
  if (!dueTimerUnfetched(vcpu)) return false;
  // Once per deadline: the fetch's reply names the next one. (Only this
  // vCPU's thread takes it.)
  auto locked = timerHints[vcpu].lockExclusive();
  KJ_IF_MAYBE(deadline, locked->deadlineNs) locked->fetchedFor = *deadline;
  return true;
}

kj::Maybe<uint64_t> VlapicdBackend::timerDeadline(uint32_t vcpu) {
  KJ_REQUIRE(vcpu < timerHints.size(), "no such vCPU", vcpu);
  {
    auto locked = timerHints[vcpu].lockShared();
    if (!locked->stale) return locked->deadlineNs;
  }
  // One round trip on this vCPU's own connection, at a halt after the
  // timer may have moved (never while the guest runs).
  auto info = call(vcpu, [&](VcpuLink& l) { return l.handle->info(); });
  noteTimer(vcpu, info.timerDeadlineNs);
  return info.timerDeadlineNs;
}

void VlapicdBackend::waitWhileHalted(uint32_t vcpu, HaltWait& wait) {
  auto deadline = timerDeadline(vcpu);
  auto& polling = haltPolling[vcpu];
  client::WakeAheadHooks hooks;
  hooks.nowNs = []() { return monotonicNowNs(); };
  hooks.sleepUntil = [&wait](kj::Maybe<uint64_t> wakeAtNs) { return wait.sleepUntil(wakeAtNs); };
  hooks.arrived = [&]() {
    // The channel's attention flag is one shared load, and is raised by
    // vlapicd itself: polling it skips the watcher thread's wake-up too.
    KJ_IF_MAYBE(l, links[vcpu]) {
      KJ_IF_MAYBE(front, (*l)->channel) {
        if ((*front)->attentionPending()) return true;
        // At the deadline the fetch fires the timer itself (vlapicd's
        // handler): end the wait now rather than when vlapicd's own timer
        // raises attention.
        if (dueTimerUnfetched(vcpu)) return true;
      }
    }
    return wait.posted();
  };
  if (settings.transport == ApicTransport::CHANNEL) {
    // vlapicd's channel thread sleeps on its doorbell too: one request at
    // the wake-up time has it awake, inside its poll window, when the
    // expiry's FETCH_EVENTS comes (and collects anything queued already).
    hooks.keepWarm = kj::Function<void()>([this, vcpu]() {
      callChannel(vcpu, channel::Request::fetchEvents());
    });
  }
  client::waitAhead(polling.policy, polling.stats, deadline, hooks);
}

void VlapicdBackend::openOnThisThread(uint32_t vcpu) {
  // The link opens inside call(), so a lost server here is recovered from
  // (or reported) like one lost at any later call.
  call(vcpu, [](VcpuLink&) {});
}

void VlapicdBackend::openLink(uint32_t vcpu, uint64_t generation) {
  // A thread has one client event loop at a time: the old link goes first.
  links[vcpu] = nullptr;
  client::VcpuTicket ticket;
  {
    auto locked = server.lockShared();
    auto& from = locked->tickets[vcpu];
    ticket.socketPath = kj::str(from.socketPath);
    ticket.index = from.index;
    ticket.token = kj::heapArray<kj::byte>(from.token);
  }
  auto created = kj::heap<VcpuLink>();
  created->generation = generation;
  created->handle = client::openVcpu(ticket);
  if (settings.transport == ApicTransport::CHANNEL) {
    if (settings.pageReads) {
      // Only a server with the shared-memory HAL can map the page; any
      // other answers with an error and every read uses the channel.
      KJ_IF_MAYBE(page, kj::runCatchingExceptions([&]() {
        created->page = created->handle->mapVirtualApicPage();
      })) {
        (void)page;
        created->page = nullptr;
      }
      KJ_IF_MAYBE(page, created->page) {
        created->pageReader = VirtualApicPageReader((*page)->bytes(), client::VmOptions().lvtEntries);
      }
    }
    // From here on this vCPU's events come through its channel only.
    auto& front = *created->channel.emplace(
        channel::ChannelFront::connect(created->handle->openChannel()));
    created->watcher = kj::heap<AttentionWatcher>(front, sink, vcpu);
    // Events queued before the channel existed were raised as attention.
    if (front.attentionPending()) serveChannel(vcpu, *created, channel::Request::fetchEvents());
  }
  links[vcpu] = kj::mv(created);
}

void VlapicdBackend::closeOnThisThread(uint32_t vcpu) {
  KJ_REQUIRE(vcpu < links.size());
  links[vcpu] = nullptr;
}

bool VlapicdBackend::pageMapped(uint32_t vcpu) const {
  KJ_REQUIRE(vcpu < links.size());
  KJ_IF_MAYBE(l, links[vcpu]) return (*l)->pageReader != nullptr;
  return false;
}

VlapicdBackend::VcpuLink& VlapicdBackend::link(uint32_t vcpu, uint64_t generation) {
  KJ_REQUIRE(vcpu < links.size(), "no such vCPU", vcpu);
  KJ_IF_MAYBE(l, links[vcpu]) {
    if ((*l)->generation == generation) return **l;
  }
  openLink(vcpu, generation);
  return *KJ_ASSERT_NONNULL(links[vcpu]);
}

template <typename Func>
auto VlapicdBackend::call(uint32_t vcpu, Func&& func) -> decltype(func(std::declval<VcpuLink&>())) {
  activity.fetch_add(1, std::memory_order_relaxed);
  for (;;) {
    uint64_t generation = server.lockShared()->generation;
    try {
      return func(link(vcpu, generation));
    } catch (kj::Exception& exception) {
      // vlapicd went away: with recovery, wait for the new one and retry
      // this call there (the old server's effects since the snapshot are
      // gone, so the call is not applied twice). Otherwise, or if the
      // server refused a request this front should never make, no vCPU can
      // continue.
      if (exception.getType() == kj::Exception::Type::DISCONNECTED && awaitRecovery(generation)) {
        continue;
      }
      sink.backendLost(exception.getDescription());
      throw;
    }
  }
}

channel::Reply VlapicdBackend::serveChannel(uint32_t vcpu, VcpuLink& l, const channel::Request& request) {
  auto& front = *KJ_ASSERT_NONNULL(l.channel);
  auto reply = front.call(request);
  KJ_REQUIRE(reply.kind != channel::Reply::Kind::REJECTED,
             "vlapicd rejected a channel request", channel::rejectionName(reply.rejection));
  afterChannelReply(vcpu, reply);
  for (auto& event : reply.events()) deliverFromChannel(vcpu, event);
  // A reply holds a whole event queue; more only if events kept coming.
  while (reply.moreEvents) {
    auto more = front.call(channel::Request::fetchEvents());
    KJ_REQUIRE(more.kind != channel::Reply::Kind::REJECTED,
               "vlapicd rejected a channel request", channel::rejectionName(more.rejection));
    afterChannelReply(vcpu, more);
    for (auto& event : more.events()) deliverFromChannel(vcpu, event);
    reply.moreEvents = more.moreEvents;
  }
  return reply;
}

channel::Reply VlapicdBackend::callChannel(uint32_t vcpu, const channel::Request& request) {
  return call(vcpu, [&](VcpuLink& l) { return serveChannel(vcpu, l, request); });
}

ApicAccess VlapicdBackend::channelAccess(uint32_t vcpu, channel::Request request, bool canInject) {
  request.injectIfPending = canInject;
  auto reply = callChannel(vcpu, request);
  ApicAccess access = accessResult(reply.status, reply.reason, reply.value);
  access.inject = reply.inject;
  injected(vcpu, reply.inject);
  // Whether a vector is still deliverable arrived as a DELIVERABLE event,
  // already handed to the sink.
  return access;
}

ApicAccess VlapicdBackend::mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size, bool canInject) {
  if (settings.transport == ApicTransport::CHANNEL) {
    return channelAccess(vcpu, channel::Request::mmioRead(gpa, size), canInject);
  }
  return call(vcpu, [&](VcpuLink& l) { return rpcAccess(vcpu, l.handle->mmioRead(gpa, size)); });
}

ApicAccess VlapicdBackend::mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value,
                                     bool canInject) {
  ApicAccess access;
  if (settings.transport == ApicTransport::CHANNEL) {
    access = channelAccess(vcpu, channel::Request::mmioWrite(gpa, size, value), canInject);
  } else {
    access = call(vcpu, [&](VcpuLink& l) { return rpcAccess(vcpu, l.handle->mmioWrite(gpa, size, value)); });
  }
  // The window is 4 KiB aligned: the offset is the address's low bits.
  // The front sends the I/O APIC's window here too, where offset 0xB0 is
  // no register. (A guest that relocates its xAPIC window onto the I/O
  // APIC's, which then wins, has its MMIO EOIs missed by this record: its
  // recovery would leave those vectors in service.)
  if ((gpa & 0xFF0) == regOffset(Reg::EOI) && !inIoApicWindow(gpa)) eoiWritten(vcpu, access);
  return access;
}

ApicAccess VlapicdBackend::msrRead(uint32_t vcpu, uint32_t msr, bool canInject) {
  if (settings.transport == ApicTransport::CHANNEL) {
    return channelAccess(vcpu, channel::Request::msrRead(msr), canInject);
  }
  return call(vcpu, [&](VcpuLink& l) { return rpcAccess(vcpu, l.handle->msrRead(msr)); });
}

ApicAccess VlapicdBackend::msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value, bool canInject) {
  ApicAccess access;
  if (settings.transport == ApicTransport::CHANNEL) {
    access = channelAccess(vcpu, channel::Request::msrWrite(msr, value), canInject);
  } else {
    access = call(vcpu, [&](VcpuLink& l) { return rpcAccess(vcpu, l.handle->msrWrite(msr, value)); });
  }
  if (msr == regMsr(Reg::EOI)) eoiWritten(vcpu, access);
  return access;
}

kj::Maybe<uint64_t> VlapicdBackend::mmioReadFromPage(uint32_t vcpu, uint64_t offset, uint8_t size) {
  // Through call(): after a recovery the old page is stale, the link reopens.
  return call(vcpu, [&](VcpuLink& l) -> kj::Maybe<uint64_t> {
    KJ_IF_MAYBE(reader, l.pageReader) return reader->mmioRead(offset, size);
    return nullptr;
  });
}

kj::Maybe<uint64_t> VlapicdBackend::msrReadFromPage(uint32_t vcpu, uint32_t msr) {
  return call(vcpu, [&](VcpuLink& l) -> kj::Maybe<uint64_t> {
    KJ_IF_MAYBE(reader, l.pageReader) return reader->msrRead(msr);
    return nullptr;
  });
}

void VlapicdBackend::fetchEvents(uint32_t vcpu) {
  call(vcpu, [&](VcpuLink& l) {
    KJ_IF_MAYBE(front, l.channel) {
      // One shared-memory load when nothing is queued. A timer due by now
      // is fired by this fetch itself (vlapicd's handler), so a vCPU thread
      // that kicked itself at the deadline need not wait for the server's
      // own timer and attention.
      if ((*front)->attentionPending() || takeDueTimer(vcpu)) {
        serveChannel(vcpu, l, channel::Request::fetchEvents());
      }
    }
  });
}

ApicAcknowledge VlapicdBackend::acknowledge(uint32_t vcpu) {
  if (settings.transport == ApicTransport::CHANNEL) {
    auto reply = callChannel(vcpu, channel::Request::acknowledge());
    injected(vcpu, reply.inject);
    ApicAcknowledge result;
    result.vector = reply.inject;
    result.after.tpr = reply.cr8 << 4;
    return result;
  }
  return call(vcpu, [&](VcpuLink& l) {
    auto acked = l.handle->acknowledge();
    noteTimer(vcpu, acked.state.timerDeadlineNs);
    injected(vcpu, acked.vector);
    ApicAcknowledge result;
    result.vector = acked.vector;
    result.after = fromState(acked.state);
    return result;
  });
}

ApicInterruptState VlapicdBackend::setCr8(uint32_t vcpu, uint8_t cr8) {
  if (settings.transport == ApicTransport::CHANNEL) {
    auto reply = callChannel(vcpu, channel::Request::setCr8(cr8));
    ApicInterruptState state;
    state.tpr = reply.cr8 << 4;
    return state;
  }
  return call(vcpu, [&](VcpuLink& l) {
    auto state = l.handle->setCr8(cr8);
    noteTimer(vcpu, state.timerDeadlineNs);
    return fromState(state);
  });
}

}  // namespace vlapic::kvm
