// SPDX-License-Identifier: MIT
#include "vlapic_client.h"

#include "schema/socket_path.h"
#include "schema/ioapic_wire.h"
#include "schema/vlapic.capnp.h"

#include <capnp/message.h>
#include <capnp/rpc-twoparty.h>
#include <capnp/serialize-packed.h>
#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/thread.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace vlapic::client {

kj::String defaultSocketPath() { return vlapic::defaultSocketPath(); }
kj::String adminSocketPathFor(kj::StringPtr frontSocketPath) {
  return vlapic::adminSocketPathFor(frontSocketPath);
}

kj::StringPtr eventKindName(EventKind kind) {
  switch (kind) {
    case EventKind::DELIVERABLE: return "deliverable";
    case EventKind::NMI: return "NMI";
    case EventKind::SMI: return "SMI";
    case EventKind::INIT: return "INIT";
    case EventKind::SIPI: return "SIPI";
    case EventKind::EXTINT: return "ExtINT";
    case EventKind::EOI: return "EOI";
    case EventKind::TIMER: return "timer";
  }
  return "unknown";
}

namespace {

// Saved state files and VM-wide saves can be large (4096 vCPUs).
constexpr uint64_t kMaxMessageWords = 64 * 1024 * 1024 / 8;

capnp::ReaderOptions readerOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kMaxMessageWords;
  return options;
}

[[noreturn]] void throwUnreachable(kj::StringPtr path, int error) {
  kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED,
      kj::str("cannot reach vlapicd at ", path, ": ", strerror(error),
              " (is vlapicd running? start it with: vlapicd --socket ", path, ")")));
}

int connectUnixSocket(kj::StringPtr path) {
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  KJ_REQUIRE(path.size() < sizeof(address.sun_path), "socket path too long", path);
  memcpy(address.sun_path, path.cStr(), path.size() + 1);
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd owned(fd);
  int result;
  do {
    result = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  } while (result < 0 && errno == EINTR);
  if (result < 0) throwUnreachable(path, errno);
  KJ_SYSCALL(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK));
  return owned.release();
}

// ---------------------------------------------------------------------------
// Conversions between the schema and the library's value types.

static_assert(uint16_t(proto::AccessReason::TIMER_MODE) == uint16_t(AccessReason::TIMER_MODE));
static_assert(uint16_t(proto::ApicMode::X2APIC) == uint16_t(ApicMode::X2APIC));

AccessReason fromProto(proto::AccessReason reason) { return AccessReason(uint16_t(reason)); }
ApicMode fromProto(proto::ApicMode mode) { return ApicMode(uint16_t(mode)); }
RunState fromProto(proto::RunState state) {
  return state == proto::RunState::WAIT_FOR_SIPI ? RunState::WAIT_FOR_SIPI : RunState::RUNNING;
}

AccessOutcome fromProto(proto::AccessResult::Reader in) {
  AccessOutcome out;
  switch (in.which()) {
    case proto::AccessResult::VALUE:
      out.status = AccessStatus::OK;
      out.value = in.getValue();
      break;
    case proto::AccessResult::GP:
      out.status = AccessStatus::GP;
      out.reason = fromProto(in.getGp());
      break;
    case proto::AccessResult::IGNORED:
      out.status = AccessStatus::IGNORED;
      out.reason = fromProto(in.getIgnored().getReason());
      out.value = in.getIgnored().getValue();
      break;
    default:
      KJ_FAIL_REQUIRE("unknown access result kind from vlapicd", uint16_t(in.which()));
  }
  out.ipiSent = in.getIpiSent();
  if (in.getEoiBroadcast()) out.eoiBroadcast = in.getEoiVector();
  out.timerChanged = in.getTimerChanged();
  if (in.getInterruptPending()) out.pendingVector = in.getPendingVector();
  if (in.getTimerDeadlineNs() != 0) out.timerDeadlineNs = in.getTimerDeadlineNs();
  return out;
}

InterruptState fromProto(proto::InterruptState::Reader in) {
  InterruptState out;
  if (in.getInterruptPending()) out.pendingVector = in.getPendingVector();
  out.tpr = in.getTpr();
  out.ppr = in.getPpr();
  out.cr8 = in.getCr8();
  out.runState = fromProto(in.getRunState());
  out.apicMode = fromProto(in.getApicMode());
  out.apicId = in.getApicId();
  if (in.getTimerDeadlineNs() != 0) out.timerDeadlineNs = in.getTimerDeadlineNs();
  return out;
}

Event fromProto(proto::Event::Reader in) {
  Event out;
  out.vcpu = in.getVcpu();
  out.count = in.getCount();
  switch (in.which()) {
    case proto::Event::DELIVERABLE: out.kind = EventKind::DELIVERABLE; out.vector = in.getDeliverable(); break;
    case proto::Event::NMI: out.kind = EventKind::NMI; break;
    case proto::Event::SMI: out.kind = EventKind::SMI; break;
    case proto::Event::INIT: out.kind = EventKind::INIT; break;
    case proto::Event::SIPI: out.kind = EventKind::SIPI; out.vector = in.getSipi(); break;
    case proto::Event::EXTINT: out.kind = EventKind::EXTINT; break;
    case proto::Event::EOI: out.kind = EventKind::EOI; out.vector = in.getEoi(); break;
    case proto::Event::TIMER:
      out.kind = EventKind::TIMER;
      if (in.getTimerDeadlineNs() != 0) out.timerDeadlineNs = in.getTimerDeadlineNs();
      break;
    default: KJ_FAIL_REQUIRE("unknown event kind from vlapicd", uint16_t(in.which()));
  }
  return out;
}

void toProto(proto::Event::Builder out, const Event& in) {
  out.setVcpu(in.vcpu);
  out.setCount(in.count);
  switch (in.kind) {
    case EventKind::DELIVERABLE: out.setDeliverable(in.vector); return;
    case EventKind::NMI: out.setNmi(); return;
    case EventKind::SMI: out.setSmi(); return;
    case EventKind::INIT: out.setInit(); return;
    case EventKind::SIPI: out.setSipi(in.vector); return;
    case EventKind::EXTINT: out.setExtint(); return;
    case EventKind::EOI: out.setEoi(in.vector); return;
    case EventKind::TIMER: out.setTimer(); return;
  }
}

VcpuState fromProto(proto::VcpuState::Reader in) {
  VcpuState out;
  out.index = in.getIndex();
  out.apicBase = in.getApicBase();
  out.regs = kj::heapArray<kj::byte>(in.getRegs());
  out.x2apic32BitIds = in.getX2apic32BitIds();
  out.hidden = kj::heapArray<kj::byte>(in.getHidden());
  return out;
}

void toProto(proto::VcpuState::Builder out, const VcpuState& in) {
  out.setIndex(in.index);
  out.setApicBase(in.apicBase);
  out.setRegs(in.regs);
  out.setX2apic32BitIds(in.x2apic32BitIds);
  out.setHidden(in.hidden);
}

VmState fromProto(proto::VmState::Reader in) {
  VmState out;
  auto vcpus = kj::heapArrayBuilder<VcpuState>(in.getVcpus().size());
  for (auto vcpu: in.getVcpus()) vcpus.add(fromProto(vcpu));
  out.vcpus = vcpus.finish();
  out.tscOffset = in.getTscOffset();
  out.tscAtSave = in.getTscAtSave();
  out.lowestPriorityCursor = in.getLowestPriorityCursor();
  auto queues = kj::heapArrayBuilder<kj::Array<Event>>(in.getQueuedEvents().size());
  for (auto queue: in.getQueuedEvents()) {
    auto events = kj::heapArrayBuilder<Event>(queue.size());
    for (auto event: queue) events.add(fromProto(event));
    queues.add(events.finish());
  }
  out.queuedEvents = queues.finish();
  if (in.hasIoapic()) out.ioapic = ioApicStateFromProto(in.getIoapic());
  return out;
}

void toProto(proto::VmState::Builder out, const VmState& in) {
  auto vcpus = out.initVcpus(in.vcpus.size());
  for (uint32_t i = 0; i < in.vcpus.size(); i++) toProto(vcpus[i], in.vcpus[i]);
  out.setTscOffset(in.tscOffset);
  out.setTscAtSave(in.tscAtSave);
  out.setLowestPriorityCursor(in.lowestPriorityCursor);
  auto queues = out.initQueuedEvents(in.queuedEvents.size());
  for (uint32_t v = 0; v < in.queuedEvents.size(); v++) {
    auto events = queues.init(v, in.queuedEvents[v].size());
    for (uint32_t i = 0; i < events.size(); i++) toProto(events[i], in.queuedEvents[v][i]);
  }
  KJ_IF_MAYBE(ioapic, in.ioapic) fillIoApicState(out.initIoapic(), *ioapic);
}

IoApicStatus fromProto(proto::IoApicStatus::Reader in) {
  IoApicStatus out;
  out.present = in.getPresent();
  out.base = in.getBase();
  out.id = in.getId();
  out.version = in.getVersion();
  out.ioregsel = in.getIoregsel();
  auto pins = kj::heapArrayBuilder<IoApicPinStatus>(in.getPins().size());
  for (auto pin: in.getPins()) {
    IoApicPinStatus p;
    p.pin = pin.getPin();
    p.entry = pin.getEntry();
    p.level = pin.getLevel();
    p.asserted = pin.getAsserted();
    p.pendingEdge = pin.getPendingEdge();
    p.stats.assertions = pin.getAssertions();
    p.stats.messages = pin.getMessages();
    p.stats.eois = pin.getEois();
    p.stats.redeliveries = pin.getRedeliveries();
    p.stats.coalesced = pin.getCoalesced();
    pins.add(p);
  }
  out.pins = pins.finish();
  return out;
}

PageInfo fromProto(proto::PageInfo::Reader in) {
  PageInfo out;
  out.address = in.getAddress();
  out.shared = in.getShared();
  out.fdOffset = in.getFdOffset();
  return out;
}

VcpuStats fromProto(proto::VcpuStats::Reader in) {
  VcpuStats out;
  out.index = in.getIndex();
  out.reads = in.getReads();
  out.writes = in.getWrites();
  out.gpFaults = in.getGpFaults();
  out.ignoredAccesses = in.getIgnoredAccesses();
  out.accepted = in.getAccepted();
  out.acknowledged = in.getAcknowledged();
  out.eois = in.getEois();
  out.ipisSent = in.getIpisSent();
  out.timerExpiries = in.getTimerExpiries();
  out.eventsPosted = in.getEventsPosted();
  auto counts = kj::heapArrayBuilder<RegisterCount>(in.getPerRegister().size());
  for (auto count: in.getPerRegister()) {
    counts.add(RegisterCount{Reg(count.getOffset() >> 4), count.getCount()});
  }
  out.perRegister = counts.finish();
  return out;
}

VmStats fromProto(proto::VmStats::Reader in) {
  VmStats out;
  auto vcpus = kj::heapArrayBuilder<VcpuStats>(in.getVcpus().size());
  for (auto vcpu: in.getVcpus()) vcpus.add(fromProto(vcpu));
  out.vcpus = vcpus.finish();
  out.eventsPosted = in.getEventsPosted();
  out.batchesPosted = in.getBatchesPosted();
  out.eventsCoalesced = in.getEventsCoalesced();
  out.timerExpiries = in.getTimerExpiries();
  out.msisDelivered = in.getMsisDelivered();
  return out;
}

VcpuInfo fromProto(proto::VcpuInfo::Reader in) {
  VcpuInfo out;
  out.index = in.getIndex();
  out.apicId = in.getApicId();
  out.initialApicId = in.getInitialApicId();
  out.bsp = in.getBsp();
  out.apicMode = fromProto(in.getApicMode());
  out.runState = fromProto(in.getRunState());
  if (in.getTimerArmed()) out.timerDeadlineNs = in.getTimerDeadlineNs();
  out.channelOpen = in.getChannelOpen();
  return out;
}

VmInfo fromProto(proto::VmInfo::Reader in) {
  VmInfo out;
  out.id = in.getId();
  out.name = kj::heapString(in.getName());
  out.vcpuCount = in.getVcpuCount();
  out.owner = in.getOwner();
  out.createdNs = in.getCreatedNs();
  out.eventsQueued = in.getEventsQueued();
  out.batchesInFlight = in.getBatchesInFlight();
  return out;
}

ServerStatus fromProto(proto::ServerStatus::Reader in) {
  ServerStatus out;
  out.version = kj::heapString(in.getVersion());
  out.hal = kj::heapString(in.getHal());
  out.uptimeNs = in.getUptimeNs();
  out.connections = in.getConnections();
  out.vms = in.getVms();
  out.vcpus = in.getVcpus();
  out.pagesInUse = in.getPagesInUse();
  out.armedTimers = in.getArmedTimers();
  out.totalEventsPosted = in.getTotalEventsPosted();
  out.totalTimerExpiries = in.getTotalTimerExpiries();
  out.pid = in.getPid();
  out.channelLoopPolls = in.getChannelLoopPolls();
  out.channelLoopRequests = in.getChannelLoopRequests();
  out.channelLoopSkipped = in.getChannelLoopSkipped();
  out.channelTimerPolls = in.getChannelTimerPolls();
  out.channelHintsGiven = in.getChannelHintsGiven();
  out.channelHintedPolls = in.getChannelHintedPolls();
  out.channelHintedWakeups = in.getChannelHintedWakeups();
  out.channelHintedRequests = in.getChannelHintedRequests();
  out.channelRequestTimerFires = in.getChannelRequestTimerFires();
  return out;
}

template <typename T, typename ListReader>
kj::Array<T> listFromProto(ListReader list) {
  auto builder = kj::heapArrayBuilder<T>(list.size());
  for (auto item: list) builder.add(fromProto(item));
  return builder.finish();
}

// ---------------------------------------------------------------------------
// Promise-based implementation

// A VM's TimerDeadlines, shared by its AsyncVm, its vCPU handles and its
// event sink (all on the loop of the connection that created it).
class SharedDeadlines final: public kj::Refcounted {
public:
  explicit SharedDeadlines(uint32_t vcpus): book(vcpus) {}
  TimerDeadlines book;
};

// A VM's event callback, shared by its EventSinkImpl and the VM's handle.
// The sink is a capability vlapicd holds, so it lives until vlapicd's
// release of it arrives (a round trip after the front dropped its Vm, or the
// connection's end), and batches already on the wire still reach it after
// the Vm is gone. The callback is the front's, capturing state the front
// frees once its Vm is destroyed (the C API's queue, a test's log), so it
// must end with the Vm, not with the sink: the handle's CallbackLease
// destroys it and batches after that are dropped.
class SharedCallback final: public kj::Refcounted {
public:
  explicit SharedCallback(EventCallback callback): callback(kj::mv(callback)) {}
  kj::Maybe<EventCallback> callback;   // nullptr once the Vm is gone
};

// Held by the VM's handle (first by createVm's continuation, so a VM whose
// creation is cancelled ends its callback too). Destroyed on the loop that
// runs the sink, so no lock: the callback is either called or gone.
class CallbackLease {
public:
  explicit CallbackLease(kj::Own<SharedCallback> shared): shared(kj::mv(shared)) {}
  CallbackLease(CallbackLease&&) = default;
  CallbackLease& operator=(CallbackLease&&) = delete;
  ~CallbackLease() noexcept(false) {
    if (shared.get() != nullptr) shared->callback = nullptr;
  }

private:
  kj::Own<SharedCallback> shared;
};

class EventSinkImpl final: public proto::EventSink::Server {
public:
  EventSinkImpl(kj::Own<SharedCallback> callback, kj::Own<SharedDeadlines> deadlines)
      : callback(kj::mv(callback)), deadlines(kj::mv(deadlines)) {}

  kj::Promise<void> deliver(DeliverContext context) override {
    auto list = context.getParams().getEvents();
    auto events = kj::heapArrayBuilder<Event>(list.size());
    for (auto event: list) events.add(fromProto(event));
    auto batch = events.finish();
    // The expiry has arrived: its vCPU's deadline moves on (a periodic
    // timer's next period) or goes (one-shot, INIT's reset).
    uint64_t now = monotonicNowNs();
    for (auto& event: batch) {
      if (event.kind == EventKind::TIMER) {
        deadlines->book.note(event.vcpu, event.timerDeadlineNs, now);
      } else if (event.kind == EventKind::INIT) {
        deadlines->book.note(event.vcpu, nullptr, now);
      }
    }
    KJ_IF_MAYBE(c, callback->callback) {
      // Out of the slot for the call: a callback that drops its own VM's
      // handle (a Connection user's may) ends after returning, not inside.
      // Back (if still armed) even when it throws.
      EventCallback running = kj::mv(*c);
      KJ_DEFER(KJ_IF_MAYBE(still, callback->callback) *still = kj::mv(running));
      running(batch);
    }
    return kj::READY_NOW;
  }

private:
  kj::Own<SharedCallback> callback;
  kj::Own<SharedDeadlines> deadlines;
};

class AsyncVcpuImpl final: public AsyncVcpu {
public:
  // `deadlines`: the VM's book this handle keeps up to date (nullptr for a
  // handle attached from a ticket, whose VM lives on another connection).
  AsyncVcpuImpl(proto::Vcpu::Client cap, uint32_t index, kj::StringPtr socketPath,
                kj::Maybe<kj::Own<SharedDeadlines>> deadlines = nullptr)
      : cap(kj::mv(cap)), vcpuIndex(index), socketPath(socketPath),
        deadlines(kj::mv(deadlines)) {}

  uint32_t index() const override { return vcpuIndex; }

  kj::Promise<AccessOutcome> mmioRead(uint64_t gpa, uint8_t size) override {
    auto request = cap.mmioReadRequest(capnp::MessageSize{4, 0});
    request.setAddress(gpa);
    request.setSize(size);
    return request.send().then([n = noter()](auto response) { return n(fromProto(response.getResult())); });
  }

  kj::Promise<AccessOutcome> mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) override {
    auto request = cap.mmioWriteRequest(capnp::MessageSize{5, 0});
    request.setAddress(gpa);
    request.setSize(size);
    request.setValue(value);
    return request.send().then([n = noter()](auto response) { return n(fromProto(response.getResult())); });
  }

  kj::Promise<AccessOutcome> msrRead(uint32_t msr) override {
    auto request = cap.msrReadRequest(capnp::MessageSize{4, 0});
    request.setMsr(msr);
    return request.send().then([n = noter()](auto response) { return n(fromProto(response.getResult())); });
  }

  kj::Promise<AccessOutcome> msrWrite(uint32_t msr, uint64_t value) override {
    auto request = cap.msrWriteRequest(capnp::MessageSize{4, 0});
    request.setMsr(msr);
    request.setValue(value);
    return request.send().then([n = noter()](auto response) { return n(fromProto(response.getResult())); });
  }

  kj::Promise<Acknowledged> acknowledge() override {
    return cap.acknowledgeRequest().send().then([n = noter()](auto response) {
      Acknowledged out;
      if (response.getDelivered()) out.vector = response.getVector();
      out.state = n(fromProto(response.getState()));
      return out;
    });
  }

  kj::Promise<InterruptState> interruptState() override {
    return cap.interruptStateRequest().send().then(
        [n = noter()](auto response) { return n(fromProto(response.getState())); });
  }

  kj::Promise<InterruptState> setCr8(uint8_t cr8) override {
    auto request = cap.setCr8Request();
    request.setCr8(cr8);
    return request.send().then([n = noter()](auto response) { return n(fromProto(response.getState())); });
  }

  kj::Promise<StartupResult> startup(uint8_t vector) override {
    auto request = cap.startupRequest();
    request.setVector(vector);
    return request.send().then([](auto response) {
      return StartupResult{response.getStarted(), fromProto(response.getState())};
    });
  }

  kj::Promise<VcpuState> save(X2apicIdLayout layout) override {
    auto request = cap.saveRequest();
    request.setLegacyX2apicIds(layout == X2apicIdLayout::LEGACY);
    return request.send().then([](auto response) { return fromProto(response.getState()); });
  }

  kj::Promise<void> restore(const VcpuState& state) override {
    auto request = cap.restoreRequest();
    toProto(request.initState(), state);
    return request.send().ignoreResult();
  }

  kj::Promise<Pages> pages() override {
    return cap.pagesRequest().send().then([](auto response) {
      return Pages{fromProto(response.getVirtualApic()), fromProto(response.getApicAccess())};
    });
  }

  kj::Promise<kj::Own<MappedPage>> mapVirtualApicPage() override {
    auto page = cap.virtualApicPageRequest().send().getPage();
    return page.infoRequest().send().then([page](auto response) mutable {
      auto info = fromProto(response.getInfo());
      KJ_REQUIRE(info.shared, "the virtual-APIC page is not shareable: run vlapicd with --hal shared");
      return page.getFd().then([page, info](kj::Maybe<int> fd) mutable -> kj::Own<MappedPage> {
        int received = KJ_REQUIRE_NONNULL(fd, "vlapicd sent the page without its fd");
        // The fd belongs to the capability: keep our own duplicate.
        int mine;
        KJ_SYSCALL(mine = fcntl(received, F_DUPFD_CLOEXEC, 0));
        return kj::heap<MappedPage>(mine, info.fdOffset);
      });
    });
  }

  kj::Promise<VcpuStats> stats() override {
    return cap.statsRequest().send().then([](auto response) { return fromProto(response.getStats()); });
  }

  kj::Promise<VcpuInfo> info() override {
    return cap.infoRequest().send().then([](auto response) { return fromProto(response.getInfo()); });
  }

  kj::Promise<VcpuTicket> ticket() override {
    // The handle may be gone before the reply (a temporary): capture values.
    return cap.ticketRequest().send().then(
        [path = kj::heapString(socketPath), index = vcpuIndex](auto response) mutable {
          VcpuTicket out;
          out.socketPath = kj::mv(path);
          out.index = index;
          out.token = kj::heapArray<kj::byte>(response.getTicket());
          return out;
        });
  }

  kj::Promise<kj::AutoCloseFd> openChannel() override {
    auto channel = cap.openChannelRequest().send().getChannel();
    return channel.getFd().then([channel](kj::Maybe<int> fd) mutable {
      int received = KJ_REQUIRE_NONNULL(fd, "vlapicd sent the channel without its fd");
      // The capability owns the received fd; the channel needs a copy that
      // outlives it (the server sees the front hang up when it is closed).
      int mine;
      KJ_SYSCALL(mine = fcntl(received, F_DUPFD_CLOEXEC, 0));
      return kj::AutoCloseFd(mine);
    });
  }

private:
  proto::Vcpu::Client cap;
  uint32_t vcpuIndex;
  kj::StringPtr socketPath;   // owned by the Connection
  kj::Maybe<kj::Own<SharedDeadlines>> deadlines;

  // Every reply says when the timer expires next: keep the VM's book. The
  // handle may be gone before the reply (a temporary), so the continuation
  // holds its own reference.
  struct Noter {
    mutable kj::Maybe<kj::Own<SharedDeadlines>> deadlines;
    uint32_t vcpu;
    template <typename Result>
    Result operator()(Result result) const {
      KJ_IF_MAYBE(d, deadlines) (*d)->book.note(vcpu, result.timerDeadlineNs, monotonicNowNs());
      return result;
    }
  };
  Noter noter() {
    kj::Maybe<kj::Own<SharedDeadlines>> ref;
    KJ_IF_MAYBE(d, deadlines) ref = kj::addRef(**d);
    return Noter{kj::mv(ref), vcpuIndex};
  }
};

class AsyncVmImpl final: public AsyncVm {
public:
  // `callback`: the lease on the event callback of a VM this connection
  // created (nullptr for one the operator opened, which has none here).
  AsyncVmImpl(proto::Vm::Client cap, uint32_t vcpus, kj::StringPtr socketPath,
              kj::Own<SharedDeadlines> deadlines, kj::Maybe<CallbackLease> callback = nullptr)
      : cap(kj::mv(cap)), vcpus(vcpus), socketPath(socketPath), deadlines(kj::mv(deadlines)),
        callback(kj::mv(callback)) {}

  uint32_t vcpuCount() const override { return vcpus; }

  kj::Own<AsyncVcpu> vcpu(uint32_t index) override {
    auto request = cap.vcpuRequest();
    request.setIndex(index);
    return kj::heap<AsyncVcpuImpl>(request.send().getVcpu(), index, socketPath,
                                   kj::addRef(*deadlines));
  }

  kj::Promise<kj::Array<VcpuInfo>> listVcpus() override {
    return cap.listVcpusRequest().send().then(
        [](auto response) { return listFromProto<VcpuInfo>(response.getVcpus()); });
  }

  kj::Promise<void> deliverMsi(MsiMessage msi) override {
    auto request = cap.deliverMsiRequest();
    auto out = request.initMsi();
    out.setAddress(msi.address);
    out.setData(msi.data);
    return request.send().ignoreResult();
  }

  kj::Promise<void> deliverIoApic(uint64_t redirectionEntry) override {
    auto request = cap.deliverIoApicRequest();
    request.setEntry(redirectionEntry);
    return request.send().ignoreResult();
  }

  kj::Promise<void> setLint(uint32_t vcpu, uint8_t pin, bool level) override {
    auto request = cap.setLintRequest();
    request.setVcpu(vcpu);
    request.setPin(pin);
    request.setLevel(level);
    return request.send().ignoreResult();
  }

  kj::Promise<void> setIrqLine(uint8_t pin, bool level) override {
    auto request = cap.setIrqLineRequest();
    request.setPin(pin);
    request.setLevel(level);
    return request.send().ignoreResult();
  }

  kj::Promise<void> setIrqLines(kj::ArrayPtr<const IrqLine> lines) override {
    auto request = cap.setIrqLinesRequest();
    auto out = request.initLines(lines.size());
    for (uint32_t i = 0; i < lines.size(); i++) {
      out[i].setPin(lines[i].pin);
      out[i].setLevel(lines[i].level);
    }
    return request.send().ignoreResult();
  }

  kj::Promise<IoApicStatus> ioapic() override {
    return cap.ioapicRequest().send().then(
        [](auto response) { return fromProto(response.getStatus()); });
  }

  kj::Promise<VmState> save(X2apicIdLayout layout) override {
    auto request = cap.saveRequest();
    request.setLegacyX2apicIds(layout == X2apicIdLayout::LEGACY);
    return request.send().then([](auto response) { return fromProto(response.getState()); });
  }

  kj::Promise<void> restore(const VmState& state, bool resumeTscAtSaved) override {
    auto request = cap.restoreRequest();
    toProto(request.initState(), state);
    request.setResumeTscAtSaved(resumeTscAtSaved);
    return request.send().ignoreResult();
  }

  kj::Promise<VmStats> stats() override {
    return cap.statsRequest().send().then([](auto response) { return fromProto(response.getStats()); });
  }

  kj::Promise<VmInfo> info() override {
    return cap.infoRequest().send().then([](auto response) { return fromProto(response.getInfo()); });
  }

  kj::Promise<PageInfo> apicAccessPage() override {
    return cap.apicAccessPageRequest().send().then(
        [](auto response) { return fromProto(response.getInfo()); });
  }

  kj::Promise<void> release() override {
    return cap.releaseRequest().send().ignoreResult();
  }

  TimerDeadlines& timerDeadlines() override { return deadlines->book; }

private:
  proto::Vm::Client cap;
  uint32_t vcpus;
  kj::StringPtr socketPath;
  kj::Own<SharedDeadlines> deadlines;
  kj::Maybe<CallbackLease> callback;
};

class AsyncAdminImpl final: public AsyncAdmin {
public:
  AsyncAdminImpl(proto::Admin::Client cap, kj::StringPtr socketPath)
      : cap(kj::mv(cap)), socketPath(socketPath) {}

  kj::Promise<ServerStatus> status() override {
    return cap.statusRequest().send().then([](auto response) { return fromProto(response.getStatus()); });
  }

  kj::Promise<kj::Array<VmInfo>> listVms() override {
    return cap.listVmsRequest().send().then([](auto response) { return listFromProto<VmInfo>(response.getVms()); });
  }

  kj::Own<AsyncVm> openVm(uint64_t id, uint32_t vcpuCount) override {
    auto request = cap.openVmRequest();
    request.setId(id);
    return kj::heap<AsyncVmImpl>(request.send().getVm(), vcpuCount, socketPath,
                                 kj::refcounted<SharedDeadlines>(vcpuCount));
  }

private:
  proto::Admin::Client cap;
  kj::StringPtr socketPath;
};

class ConnectionImpl final: public Connection {
public:
  ConnectionImpl(kj::LowLevelAsyncIoProvider& io, kj::StringPtr path)
      : path(kj::heapString(path)),
        stream(io.wrapUnixSocketFd(connectUnixSocket(path),
                                   kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP)),
        // Up to 4 fds per message: the server passes page memfds.
        network(*stream, 4, capnp::rpc::twoparty::Side::CLIENT, readerOptions()),
        rpc(capnp::makeRpcClient(network)),
        service(bootstrap()),
        disconnected(network.onDisconnect().fork()) {}

  kj::StringPtr socketPath() const override { return path; }

  kj::Promise<uint64_t> echo(uint64_t value) override {
    auto request = service.echoRequest(capnp::MessageSize{4, 0});
    request.setValue(value);
    return request.send().then([](auto response) { return response.getValue(); });
  }

  kj::Promise<ServerStatus> status() override {
    return service.statusRequest().send().then(
        [](auto response) { return fromProto(response.getStatus()); });
  }

  kj::Promise<kj::Own<AsyncVm>> createVm(VmOptions options, EventCallback onEvents) override {
    // Checked here as well as in vlapicd: the per-vCPU timer book below is
    // sized before the server answers.
    KJ_REQUIRE(options.vcpuCount >= 1 && options.vcpuCount <= kMaxVcpusPerVm,
               "VmOptions.vcpuCount out of range", options.vcpuCount, kMaxVcpusPerVm);
    auto request = service.createVmRequest();
    auto config = request.initConfig();
    config.setVcpuCount(options.vcpuCount);
    config.setApicIds(kj::arrayPtr(options.apicIds.begin(), options.apicIds.size()));
    config.setBootVcpu(options.bootVcpu);
    config.setTimerHz(options.timerHz);
    config.setTscHz(options.tscHz);
    config.setLvtEntries(options.lvtEntries);
    config.setEoiBroadcastSuppression(options.eoiBroadcastSuppression);
    config.setX2apicSupported(options.x2apicSupported);
    config.setTscDeadlineSupported(options.tscDeadlineSupported);
    config.setStrictReservedBits(options.strictReservedBits);
    config.setMinTimerPeriodNs(options.minTimerPeriodNs);
    config.setBspLint0ExtInt(options.bspLint0ExtInt);
    config.setX2apicBroadcastQuirk(options.x2apicBroadcastQuirk);
    auto ioapic = config.initIoapic();
    ioapic.setAbsent(!options.ioapic.present);
    ioapic.setBase(options.ioapic.base);
    ioapic.setId(options.ioapic.id);
    ioapic.setVersion(options.ioapic.version);
    config.setName(options.name);
    config.setMaxBatchesInFlight(options.maxBatchesInFlight);
    config.setMaxEventsPerBatch(options.maxEventsPerBatch);
    auto deadlines = kj::refcounted<SharedDeadlines>(options.vcpuCount);
    auto callback = kj::refcounted<SharedCallback>(kj::mv(onEvents));
    request.setSink(kj::heap<EventSinkImpl>(kj::addRef(*callback), kj::addRef(*deadlines)));
    uint32_t vcpus = options.vcpuCount;
    return request.send().then(
        [this, vcpus, deadlines = kj::mv(deadlines), lease = CallbackLease(kj::mv(callback))](
            auto response) mutable -> kj::Own<AsyncVm> {
      return kj::heap<AsyncVmImpl>(response.getVm(), vcpus, path, kj::mv(deadlines), kj::mv(lease));
    });
  }

  kj::Promise<kj::Own<AsyncVcpu>> attachVcpu(const VcpuTicket& ticket) override {
    auto request = service.attachVcpuRequest();
    request.setTicket(ticket.token);
    uint32_t index = ticket.index;
    return request.send().then([this, index](auto response) -> kj::Own<AsyncVcpu> {
      return kj::heap<AsyncVcpuImpl>(response.getVcpu(), index, path);
    });
  }

  kj::Own<AsyncAdmin> admin() override {
    return kj::heap<AsyncAdminImpl>(service.adminRequest().send().getAdmin(), path);
  }

  kj::Promise<void> onDisconnect() override { return disconnected.addBranch(); }

private:
  kj::String path;
  kj::Own<kj::AsyncCapabilityStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
  proto::Service::Client service;
  kj::ForkedPromise<void> disconnected;

  proto::Service::Client bootstrap() {
    capnp::word scratch[4];
    memset(scratch, 0, sizeof(scratch));
    capnp::MallocMessageBuilder message(scratch);
    auto vatId = message.getRoot<capnp::rpc::twoparty::VatId>();
    vatId.setSide(capnp::rpc::twoparty::Side::SERVER);
    return rpc.bootstrap(vatId).castAs<proto::Service>();
  }
};

// ---------------------------------------------------------------------------
// Synchronous implementation

class ThreadSessionImpl final: public ThreadSession {
public:
  explicit ThreadSessionImpl(kj::StringPtr path)
      : io(kj::setupAsyncIo()), conn(Connection::connect(*io.lowLevelProvider, path)) {}

  kj::Own<VcpuHandle> attachVcpu(const VcpuTicket& ticket) override;

  uint64_t echo(uint64_t value) override { return conn->echo(value).wait(io.waitScope); }
  ServerStatus status() override { return conn->status().wait(io.waitScope); }
  Connection& connection() override { return *conn; }
  kj::WaitScope& waitScope() override { return io.waitScope; }

private:
  kj::AsyncIoContext io;
  kj::Own<Connection> conn;
};

class VcpuHandleImpl final: public VcpuHandle {
public:
  VcpuHandleImpl(kj::Maybe<kj::Own<ThreadSession>> owned, ThreadSession& session,
                 kj::Own<AsyncVcpu> vcpu)
      : owned(kj::mv(owned)), session(session), vcpu(kj::mv(vcpu)) {}

  uint32_t index() const override { return vcpu->index(); }
  AccessOutcome mmioRead(uint64_t gpa, uint8_t size) override { return wait(vcpu->mmioRead(gpa, size)); }
  AccessOutcome mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) override {
    return wait(vcpu->mmioWrite(gpa, size, value));
  }
  AccessOutcome msrRead(uint32_t msr) override { return wait(vcpu->msrRead(msr)); }
  AccessOutcome msrWrite(uint32_t msr, uint64_t value) override { return wait(vcpu->msrWrite(msr, value)); }
  Acknowledged acknowledge() override { return wait(vcpu->acknowledge()); }
  InterruptState interruptState() override { return wait(vcpu->interruptState()); }
  InterruptState setCr8(uint8_t cr8) override { return wait(vcpu->setCr8(cr8)); }
  StartupResult startup(uint8_t vector) override { return wait(vcpu->startup(vector)); }
  VcpuState save(X2apicIdLayout layout) override { return wait(vcpu->save(layout)); }
  void restore(const VcpuState& state) override { vcpu->restore(state).wait(session.waitScope()); }
  AsyncVcpu::Pages pages() override { return wait(vcpu->pages()); }
  kj::Own<MappedPage> mapVirtualApicPage() override { return wait(vcpu->mapVirtualApicPage()); }
  VcpuStats stats() override { return wait(vcpu->stats()); }
  VcpuInfo info() override { return wait(vcpu->info()); }
  kj::AutoCloseFd openChannel() override { return wait(vcpu->openChannel()); }
  AsyncVcpu& async() override { return *vcpu; }
  kj::WaitScope& waitScope() override { return session.waitScope(); }

private:
  kj::Maybe<kj::Own<ThreadSession>> owned;   // declared first: destroyed last
  ThreadSession& session;
  kj::Own<AsyncVcpu> vcpu;

  template <typename T>
  T wait(kj::Promise<T>&& promise) { return promise.wait(session.waitScope()); }
};

kj::Own<VcpuHandle> ThreadSessionImpl::attachVcpu(const VcpuTicket& ticket) {
  auto vcpu = conn->attachVcpu(ticket).wait(io.waitScope);
  return kj::heap<VcpuHandleImpl>(nullptr, *this, kj::mv(vcpu));
}

// The client thread's state, published to callers once it is running.
struct ClientThreadState {
  bool ready = false;
  bool connected = false;
  kj::Maybe<const kj::Executor&> executor;
  kj::Maybe<kj::Exception> startError;
};

class VmSyncImpl final: public Vm {
public:
  VmSyncImpl(const kj::Executor& executor, kj::Own<AsyncVm> vm)
      : executor(executor), vm(kj::mv(vm)), vcpus(this->vm->vcpuCount()) {}

  ~VmSyncImpl() noexcept(false) {
    // The capability lives on the client thread: drop it there.
    executor.executeSync([this]() { vm = nullptr; });
  }

  uint32_t vcpuCount() const override { return vcpus; }
  VcpuTicket ticket(uint32_t index) override {
    KJ_REQUIRE(index < vcpus, "vCPU index out of range", index, vcpus);
    return executor.executeSync([&]() { return vm->vcpu(index)->ticket(); });
  }
  kj::Array<VcpuInfo> listVcpus() override { return executor.executeSync([&]() { return vm->listVcpus(); }); }
  void deliverMsi(MsiMessage msi) override { executor.executeSync([&]() { return vm->deliverMsi(msi); }); }
  void deliverIoApic(uint64_t entry) override {
    executor.executeSync([&]() { return vm->deliverIoApic(entry); });
  }
  void setLint(uint32_t vcpu, uint8_t pin, bool level) override {
    executor.executeSync([&]() { return vm->setLint(vcpu, pin, level); });
  }
  void setIrqLine(uint8_t pin, bool level) override {
    executor.executeSync([&]() { return vm->setIrqLine(pin, level); });
  }
  void setIrqLines(kj::ArrayPtr<const IrqLine> lines) override {
    executor.executeSync([&]() { return vm->setIrqLines(lines); });
  }
  IoApicStatus ioapic() override { return executor.executeSync([&]() { return vm->ioapic(); }); }
  VmState save(X2apicIdLayout layout) override {
    return executor.executeSync([&]() { return vm->save(layout); });
  }
  void restore(const VmState& state, bool resumeTscAtSaved) override {
    executor.executeSync([&]() { return vm->restore(state, resumeTscAtSaved); });
  }
  VmStats stats() override { return executor.executeSync([&]() { return vm->stats(); }); }
  VmInfo info() override { return executor.executeSync([&]() { return vm->info(); }); }
  PageInfo apicAccessPage() override { return executor.executeSync([&]() { return vm->apicAccessPage(); }); }
  void release() override { executor.executeSync([&]() { return vm->release(); }); }

private:
  const kj::Executor& executor;
  kj::Own<AsyncVm> vm;
  uint32_t vcpus;
};

class ClientImpl final: public Client {
public:
  explicit ClientImpl(kj::StringPtr path)
      : path(kj::heapString(path)),
        thread([this]() { run(); }) {
    kj::Maybe<kj::Exception> error = state.when(
        [](const ClientThreadState& s) { return s.ready; },
        [this](ClientThreadState& s) -> kj::Maybe<kj::Exception> {
          executor = s.executor;
          return kj::mv(s.startError);
        });
    // On error the thread has already finished; its destructor joins it.
    KJ_IF_MAYBE(e, error) kj::throwFatalException(kj::mv(*e));
  }

  ~ClientImpl() noexcept(false) {
    KJ_IF_MAYBE(e, executor) {
      e->executeSync([this]() { KJ_ASSERT_NONNULL(stop)->fulfill(); });
    }
    // kj::Thread's destructor joins.
  }

  kj::StringPtr socketPath() const override { return path; }

  kj::Own<Vm> createVm(VmOptions options, EventCallback onEvents) override {
    auto& e = KJ_ASSERT_NONNULL(executor);
    auto vm = e.executeSync([&]() { return connection().createVm(kj::mv(options), kj::mv(onEvents)); });
    return kj::heap<VmSyncImpl>(e, kj::mv(vm));
  }

  uint64_t echo(uint64_t value) override {
    return KJ_ASSERT_NONNULL(executor).executeSync([&]() { return connection().echo(value); });
  }

  ServerStatus status() override {
    return KJ_ASSERT_NONNULL(executor).executeSync([&]() { return connection().status(); });
  }

  kj::Array<VmInfo> listVms() override {
    return KJ_ASSERT_NONNULL(executor).executeSync([&]() {
      auto admin = connection().admin();
      auto promise = admin->listVms();
      return promise.attach(kj::mv(admin));
    });
  }

  bool connected() const override { return state.lockShared()->connected; }

private:
  kj::String path;
  kj::MutexGuarded<ClientThreadState> state;
  kj::Maybe<const kj::Executor&> executor;
  // Client-thread objects, touched only on that thread.
  kj::Maybe<Connection&> conn;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> stop;
  kj::Thread thread;   // last: started once everything above exists

  Connection& connection() { return KJ_REQUIRE_NONNULL(conn, "client thread not running"); }

  void run() {
    kj::Maybe<kj::Exception> error = kj::runCatchingExceptions([&]() {
      auto io = kj::setupAsyncIo();
      auto connection = Connection::connect(*io.lowLevelProvider, path);
      auto paf = kj::newPromiseAndFulfiller<void>();
      conn = *connection;
      stop = kj::mv(paf.fulfiller);
      auto watch = connection->onDisconnect()
          .then([]() {}, [](kj::Exception&&) {})
          .then([this]() { state.lockExclusive()->connected = false; })
          .eagerlyEvaluate(nullptr);
      {
        auto lock = state.lockExclusive();
        lock->connected = true;
        lock->executor = kj::getCurrentThreadExecutor();
        lock->ready = true;
      }
      paf.promise.wait(io.waitScope);
      conn = nullptr;
    });
    KJ_IF_MAYBE(e, error) {
      auto lock = state.lockExclusive();
      if (!lock->ready) {
        lock->startError = kj::mv(*e);
        lock->ready = true;
      } else {
        KJ_LOG(ERROR, "vlapic client thread failed", *e);
      }
    }
  }
};

}  // namespace

// ---------------------------------------------------------------------------

ApicMode VcpuState::mode() const {
  return ApicBaseValue(apicBase).mode();
}

ConstKvmLapicStateView VcpuState::view() const {
  KJ_REQUIRE(regs.size() == kKvmLapicStateSize, "VcpuState.regs is not a kvm_lapic_state", regs.size());
  return ConstKvmLapicStateView(regs, layoutFor(mode(), x2apic32BitIds));
}

kj::Array<kj::byte> encodeVmState(const VmState& state) {
  capnp::MallocMessageBuilder message;
  toProto(message.initRoot<proto::VmState>(), state);
  kj::VectorOutputStream output;
  capnp::writePackedMessage(output, message);
  return kj::heapArray<kj::byte>(output.getArray());
}

VmState decodeVmState(kj::ArrayPtr<const kj::byte> bytes) {
  kj::ArrayInputStream input(bytes);
  capnp::PackedMessageReader reader(input, readerOptions());
  return fromProto(reader.getRoot<proto::VmState>());
}

MappedPage::MappedPage(int fd, uint64_t offset): fd(fd) {
  void* p = mmap(nullptr, hal::kPageSize, PROT_READ, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) {
    int error = errno;
    close(fd);
    KJ_FAIL_SYSCALL("mmap(virtual-APIC page)", error);
  }
  mapping = static_cast<const kj::byte*>(p);
}

MappedPage::~MappedPage() noexcept(false) {
  munmap(const_cast<kj::byte*>(mapping), hal::kPageSize);
  close(fd);
}

kj::ArrayPtr<const kj::byte> MappedPage::bytes() const { return {mapping, hal::kPageSize}; }

ConstPageView MappedPage::view(RegisterLayout layout) const { return ConstPageView(bytes(), layout); }

kj::Own<Connection> Connection::connect(kj::LowLevelAsyncIoProvider& io, kj::StringPtr socketPath) {
  return kj::heap<ConnectionImpl>(io, socketPath);
}

kj::Own<ThreadSession> ThreadSession::open(kj::StringPtr socketPath) {
  return kj::heap<ThreadSessionImpl>(socketPath);
}

kj::Own<VcpuHandle> openVcpu(const VcpuTicket& ticket) {
  auto session = ThreadSession::open(ticket.socketPath);
  auto& ref = *session;
  auto vcpu = ref.connection().attachVcpu(ticket).wait(ref.waitScope());
  return kj::heap<VcpuHandleImpl>(kj::mv(session), ref, kj::mv(vcpu));
}

kj::Own<Client> Client::connect(kj::StringPtr socketPath) {
  return kj::heap<ClientImpl>(socketPath);
}

}  // namespace vlapic::client
