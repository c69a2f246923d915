// SPDX-License-Identifier: MIT
// The C API (vlapic.h) over the C++ client library and the channel front.
// Every entry point catches what the C++ layers throw and turns it into an
// error code plus a per-thread message: no exception crosses into C.
#include "client/c/vlapic.h"

#include "client/lib/vlapic_client.h"
#include "schema/channel/channel.h"

#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/vector.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <string>
#include <sys/eventfd.h>
#include <unistd.h>

using namespace vlapic;

namespace {

thread_local std::string lastError;

int fail(int code, const char* message) {
  lastError = message;
  return code;
}

int fromException(const kj::Exception& e) {
  lastError = e.getDescription().cStr();
  switch (e.getType()) {
    case kj::Exception::Type::DISCONNECTED: return VLAPIC_ERR_DISCONNECTED;
    case kj::Exception::Type::OVERLOADED: return VLAPIC_ERR_OVERLOADED;
    case kj::Exception::Type::UNIMPLEMENTED: return VLAPIC_ERR_UNIMPLEMENTED;
    case kj::Exception::Type::FAILED: return VLAPIC_ERR_FAILED;
  }
  return VLAPIC_ERR_FAILED;
}

// Runs `body` (returning an int) and maps whatever it throws.
template <typename Body>
int guarded(Body&& body) noexcept {
  try {
    return body();
  } catch (const kj::Exception& e) {
    return fromException(e);
  } catch (const std::exception& e) {
    lastError = e.what();
    return VLAPIC_ERR_FAILED;
  } catch (...) {
    lastError = "unknown C++ exception";
    return VLAPIC_ERR_FAILED;
  }
}

uint8_t toC(client::EventKind kind) { return static_cast<uint8_t>(kind); }
uint8_t toC(channel::EventKind kind) { return static_cast<uint8_t>(kind); }
static_assert(uint8_t(client::EventKind::TIMER) == VLAPIC_EVENT_TIMER);
static_assert(uint8_t(channel::EventKind::TIMER) == VLAPIC_EVENT_TIMER);
static_assert(uint8_t(channel::EventKind::EOI) == VLAPIC_EVENT_EOI);
static_assert(uint8_t(AccessStatus::IGNORED) == VLAPIC_ACCESS_IGNORED);
static_assert(uint8_t(AccessStatus::GP) == VLAPIC_ACCESS_GP);
static_assert(kKvmLapicStateSize == VLAPIC_KVM_LAPIC_STATE_SIZE);
static_assert(kIoApicPins == VLAPIC_IOAPIC_PINS);

// sizeof(struct vlapic_vm_config) in API version 1, which ended with
// x2apic_broadcast_quirk (64 on LP64): the I/O APIC fields were appended
// after it, starting with a uint64_t so that they begin exactly there.
constexpr size_t kConfigAlign = alignof(vlapic_vm_config);
constexpr uint32_t kVmConfigSizeV1 =
    (offsetof(vlapic_vm_config, x2apic_broadcast_quirk) + 1 + kConfigAlign - 1) / kConfigAlign * kConfigAlign;
static_assert(offsetof(vlapic_vm_config, ioapic_base) == kVmConfigSizeV1);

// The events of channel-less vCPUs, filled on the client thread and taken
// by any thread; `fd` (an eventfd) is readable while the queue is not empty.
struct EventQueue {
  kj::AutoCloseFd fd;
  kj::MutexGuarded<std::deque<vlapic_event>> queue;

  EventQueue() {
    int raw;
    KJ_SYSCALL(raw = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fd = kj::AutoCloseFd(raw);
  }

  void push(kj::ArrayPtr<const client::Event> events) {
    auto locked = queue.lockExclusive();
    bool wasEmpty = locked->empty();
    for (auto& e : events) locked->push_back({e.vcpu, toC(e.kind), e.vector, e.count});
    if (wasEmpty && !locked->empty()) {
      uint64_t one = 1;
      ssize_t n;
      do n = write(fd, &one, sizeof(one)); while (n < 0 && errno == EINTR);
    }
  }

  size_t take(vlapic_event* out, size_t max) {
    auto locked = queue.lockExclusive();
    size_t n = 0;
    while (n < max && !locked->empty()) {
      out[n++] = locked->front();
      locked->pop_front();
    }
    if (locked->empty()) {
      uint64_t value;
      ssize_t r;
      do r = read(fd, &value, sizeof(value)); while (r < 0 && errno == EINTR);
    }
    return n;
  }
};

// One connection per thread that opened vCPUs (kj allows one event loop per
// thread): shared by that thread's vCPUs, closed with the last of them.
struct ThreadConnection {
  kj::String socketPath;
  kj::Own<client::ThreadSession> session;
  uint32_t users = 0;
};
thread_local ThreadConnection* threadConnection = nullptr;

client::ThreadSession& acquireThreadSession(kj::StringPtr socketPath) {
  if (threadConnection == nullptr) {
    auto created = new ThreadConnection;
    KJ_ON_SCOPE_FAILURE(delete created);
    created->socketPath = kj::heapString(socketPath);
    created->session = client::ThreadSession::open(socketPath);
    threadConnection = created;
  }
  KJ_REQUIRE(threadConnection->socketPath == socketPath,
             "this thread already has vCPUs of another vlapicd open", threadConnection->socketPath,
             socketPath);
  threadConnection->users++;
  return *threadConnection->session;
}

void releaseThreadSession() {
  if (threadConnection != nullptr && --threadConnection->users == 0) {
    delete threadConnection;
    threadConnection = nullptr;
  }
}

}  // namespace

struct vlapic_client {
  kj::Own<client::Client> client;
};

struct vlapic_vm {
  kj::Own<EventQueue> events;   // outlives `vm`: its callback writes into it
  kj::Own<client::Vm> vm;
  uint64_t id = 0;
  uint32_t vcpuCount = 0;
  // Tickets one at a time (the library's Vm::ticket is not meant for
  // concurrent callers), fetched on the first open of each vCPU.
  kj::MutexGuarded<kj::Array<kj::Maybe<client::VcpuTicket>>> tickets;
};

struct vlapic_vcpu {
  uint32_t index = 0;
  kj::Own<client::VcpuHandle> handle;
  kj::Own<channel::ChannelFront> front;
  std::deque<vlapic_event> events;
  ~vlapic_vcpu() {
    // The channel and the handle go before the thread's connection.
    front = nullptr;
    handle = nullptr;
    releaseThreadSession();
  }
};

extern "C" {

const char* vlapic_last_error(void) { return lastError.c_str(); }

const char* vlapic_error_name(int error) {
  switch (error) {
    case VLAPIC_OK: return "VLAPIC_OK";
    case VLAPIC_ERR_INVALID: return "VLAPIC_ERR_INVALID";
    case VLAPIC_ERR_DISCONNECTED: return "VLAPIC_ERR_DISCONNECTED";
    case VLAPIC_ERR_FAILED: return "VLAPIC_ERR_FAILED";
    case VLAPIC_ERR_OVERLOADED: return "VLAPIC_ERR_OVERLOADED";
    case VLAPIC_ERR_UNIMPLEMENTED: return "VLAPIC_ERR_UNIMPLEMENTED";
    case VLAPIC_ERR_BUFFER: return "VLAPIC_ERR_BUFFER";
  }
  return "VLAPIC_ERR_UNKNOWN";
}

const char* vlapic_event_kind_name(int kind) {
  if (kind < 0 || kind > VLAPIC_EVENT_TIMER) return "unknown";
  return client::eventKindName(static_cast<client::EventKind>(kind)).cStr();
}

int vlapic_connect(const char* socketPath, vlapic_client** out) {
  if (out == nullptr) return fail(VLAPIC_ERR_INVALID, "out is NULL");
  *out = nullptr;
  return guarded([&]() -> int {
    auto path = socketPath != nullptr ? kj::heapString(socketPath) : client::defaultSocketPath();
    auto created = new vlapic_client;
    KJ_ON_SCOPE_FAILURE(delete created);
    created->client = client::Client::connect(path);
    *out = created;
    return VLAPIC_OK;
  });
}

void vlapic_disconnect(vlapic_client* client) {
  guarded([&]() { delete client; return VLAPIC_OK; });
}

void vlapic_vm_config_init(struct vlapic_vm_config* config) {
  if (config == nullptr) return;
  memset(config, 0, sizeof(*config));
  config->struct_size = sizeof(*config);
  config->vcpu_count = 1;
  config->lvt_entries = 6;
  config->x2apic_supported = true;
  config->tsc_deadline_supported = true;
  config->ioapic_present = true;
  config->ioapic_base = kIoApicDefaultBase;
  config->ioapic_version = kIoApicVersion11;
}

int vlapic_vm_create(vlapic_client* client, const struct vlapic_vm_config* config, vlapic_vm** out) {
  if (out == nullptr) return fail(VLAPIC_ERR_INVALID, "out is NULL");
  *out = nullptr;
  if (client == nullptr || config == nullptr) return fail(VLAPIC_ERR_INVALID, "client or config is NULL");
  // A front built against API version 1 passes the struct without the
  // I/O APIC fields: it gets their defaults, as before it had none to set.
  bool withIoApicFields = config->struct_size == sizeof(*config);
  if (!withIoApicFields && config->struct_size != kVmConfigSizeV1) {
    return fail(VLAPIC_ERR_INVALID, "config.struct_size is not sizeof(struct vlapic_vm_config): "
                                    "call vlapic_vm_config_init first");
  }
  if (config->vcpu_count == 0) return fail(VLAPIC_ERR_INVALID, "config.vcpu_count is 0");
  return guarded([&]() -> int {
    client::VmOptions options;
    options.vcpuCount = config->vcpu_count;
    if (config->apic_ids != nullptr) {
      options.apicIds = kj::heapArray<uint32_t>(config->apic_ids, config->vcpu_count);
    }
    options.bootVcpu = config->boot_vcpu;
    options.timerHz = config->timer_hz;
    options.tscHz = config->tsc_hz;
    options.lvtEntries = config->lvt_entries;
    options.eoiBroadcastSuppression = config->eoi_broadcast_suppression;
    options.x2apicSupported = config->x2apic_supported;
    options.tscDeadlineSupported = config->tsc_deadline_supported;
    options.strictReservedBits = config->strict_reserved_bits;
    options.bspLint0ExtInt = config->bsp_lint0_extint;
    options.x2apicBroadcastQuirk = config->x2apic_broadcast_quirk;
    if (config->name != nullptr) options.name = kj::heapString(config->name);
    if (withIoApicFields) {
      options.ioapic.present = config->ioapic_present;
      options.ioapic.base = config->ioapic_base;
      options.ioapic.id = config->ioapic_id;
      options.ioapic.version = config->ioapic_version;
    }

    auto created = new vlapic_vm;
    KJ_ON_SCOPE_FAILURE(delete created);
    created->events = kj::heap<EventQueue>();
    created->vcpuCount = config->vcpu_count;
    EventQueue& queue = *created->events;
    created->vm = client->client->createVm(kj::mv(options), [&queue](kj::ArrayPtr<const client::Event> events) {
      queue.push(events);
    });
    // Sized only once vlapicd accepted the vCPU count (its limit bounds it).
    created->tickets.getWithoutLock() =
        kj::heapArray<kj::Maybe<client::VcpuTicket>>(config->vcpu_count);
    created->id = created->vm->info().id;
    *out = created;
    return VLAPIC_OK;
  });
}

void vlapic_vm_destroy(vlapic_vm* vm) {
  guarded([&]() { delete vm; return VLAPIC_OK; });
}

uint32_t vlapic_vm_vcpu_count(const vlapic_vm* vm) { return vm == nullptr ? 0 : vm->vcpuCount; }
uint64_t vlapic_vm_id(const vlapic_vm* vm) { return vm == nullptr ? 0 : vm->id; }

int vlapic_vm_deliver_msi(vlapic_vm* vm, uint64_t address, uint32_t data) {
  if (vm == nullptr) return fail(VLAPIC_ERR_INVALID, "vm is NULL");
  return guarded([&]() -> int {
    vm->vm->deliverMsi({address, data});
    return VLAPIC_OK;
  });
}

int vlapic_vm_deliver_ioapic_entry(vlapic_vm* vm, uint64_t entry) {
  if (vm == nullptr) return fail(VLAPIC_ERR_INVALID, "vm is NULL");
  return guarded([&]() -> int {
    vm->vm->deliverIoApic(entry);
    return VLAPIC_OK;
  });
}

int vlapic_vm_set_lint(vlapic_vm* vm, uint32_t vcpu, uint8_t pin, bool level) {
  if (vm == nullptr) return fail(VLAPIC_ERR_INVALID, "vm is NULL");
  if (pin > 1) return fail(VLAPIC_ERR_INVALID, "pin is not 0 (LINT0) or 1 (LINT1)");
  return guarded([&]() -> int {
    vm->vm->setLint(vcpu, pin, level);
    return VLAPIC_OK;
  });
}

int vlapic_vm_set_irq_line(vlapic_vm* vm, uint32_t pin, bool level) {
  if (vm == nullptr) return fail(VLAPIC_ERR_INVALID, "vm is NULL");
  // Checked here too: the wire format's pin is 8 bits, so pin 256 would
  // otherwise arrive as pin 0.
  if (pin >= VLAPIC_IOAPIC_PINS) {
    return fail(VLAPIC_ERR_INVALID, kj::str("I/O APIC pin ", pin, " does not exist (pins are 0-23)").cStr());
  }
  return guarded([&]() -> int {
    vm->vm->setIrqLine(static_cast<uint8_t>(pin), level);
    return VLAPIC_OK;
  });
}

int vlapic_vm_set_irq_lines(vlapic_vm* vm, const struct vlapic_irq_line* lines, size_t count) {
  if (vm == nullptr || (lines == nullptr && count != 0)) return fail(VLAPIC_ERR_INVALID, "vm or lines is NULL");
  for (size_t i = 0; i < count; i++) {
    if (lines[i].pin >= VLAPIC_IOAPIC_PINS) {
      return fail(VLAPIC_ERR_INVALID, kj::str("lines[", i, "]: I/O APIC pin ", lines[i].pin,
                                              " does not exist (pins are 0-23)").cStr());
    }
  }
  return guarded([&]() -> int {
    auto converted = kj::heapArray<client::IrqLine>(count);
    for (size_t i = 0; i < count; i++) converted[i] = {lines[i].pin, lines[i].level};
    vm->vm->setIrqLines(converted);
    return VLAPIC_OK;
  });
}

int vlapic_vm_ioapic_status(vlapic_vm* vm, struct vlapic_ioapic_status* out) {
  if (vm == nullptr || out == nullptr) return fail(VLAPIC_ERR_INVALID, "vm or out is NULL");
  if (out->struct_size != sizeof(*out)) {
    return fail(VLAPIC_ERR_INVALID, "out->struct_size is not sizeof(struct vlapic_ioapic_status)");
  }
  return guarded([&]() -> int {
    client::IoApicStatus status = vm->vm->ioapic();
    memset(out, 0, sizeof(*out));
    out->struct_size = sizeof(*out);
    out->present = status.present;
    if (!status.present) return VLAPIC_OK;
    out->base = status.base;
    out->id = status.id;
    out->version = status.version;
    out->ioregsel = status.ioregsel;
    for (auto& pin: status.pins) {
      KJ_REQUIRE(pin.pin < VLAPIC_IOAPIC_PINS, "vlapicd reported an I/O APIC pin out of range", pin.pin);
      auto& p = out->pins[pin.pin];
      p.entry = pin.entry;
      p.level = pin.level;
      p.asserted = pin.asserted;
      p.pending_edge = pin.pendingEdge;
      p.assertions = pin.stats.assertions;
      p.messages = pin.stats.messages;
      p.eois = pin.stats.eois;
      p.redeliveries = pin.stats.redeliveries;
      p.coalesced = pin.stats.coalesced;
      if (pin.pin >= out->pin_count) out->pin_count = pin.pin + 1u;
    }
    return VLAPIC_OK;
  });
}

int vlapic_vm_event_fd(const vlapic_vm* vm) {
  if (vm == nullptr) return fail(VLAPIC_ERR_INVALID, "vm is NULL");
  return vm->events->fd.get();
}

int vlapic_vm_take_events(vlapic_vm* vm, struct vlapic_event* out, size_t max) {
  if (vm == nullptr || (out == nullptr && max != 0)) return fail(VLAPIC_ERR_INVALID, "vm or out is NULL");
  if (max > INT32_MAX) max = INT32_MAX;
  return guarded([&]() -> int { return static_cast<int>(vm->events->take(out, max)); });
}

int vlapic_vcpu_open(vlapic_vm* vm, uint32_t index, vlapic_vcpu** out) {
  if (out == nullptr) return fail(VLAPIC_ERR_INVALID, "out is NULL");
  *out = nullptr;
  if (vm == nullptr) return fail(VLAPIC_ERR_INVALID, "vm is NULL");
  if (index >= vm->vcpuCount) return fail(VLAPIC_ERR_INVALID, "vCPU index out of range");
  return guarded([&]() -> int {
    client::VcpuTicket ticket;
    {
      auto locked = vm->tickets.lockExclusive();
      auto& slot = (*locked)[index];
      if (slot == nullptr) slot = vm->vm->ticket(index);
      auto& from = KJ_ASSERT_NONNULL(slot);
      ticket.socketPath = kj::heapString(from.socketPath);
      ticket.index = from.index;
      ticket.token = kj::heapArray<kj::byte>(from.token);
    }
    auto& session = acquireThreadSession(ticket.socketPath);
    // From here the vcpu's destructor releases the session.
    auto created = new vlapic_vcpu;
    KJ_ON_SCOPE_FAILURE(delete created);
    created->index = index;
    created->handle = session.attachVcpu(ticket);
    created->front = channel::ChannelFront::connect(created->handle->openChannel());
    *out = created;
    return VLAPIC_OK;
  });
}

void vlapic_vcpu_close(vlapic_vcpu* vcpu) {
  guarded([&]() { delete vcpu; return VLAPIC_OK; });
}

uint32_t vlapic_vcpu_index(const vlapic_vcpu* vcpu) { return vcpu == nullptr ? 0 : vcpu->index; }

}  // extern "C"

namespace {

// One channel call: its reply's events (and any the server had no room for)
// go to the vCPU's queue.
int channelCall(vlapic_vcpu* vcpu, channel::Request request, unsigned flags, vlapic_result* out) {
  if (vcpu == nullptr || out == nullptr) return fail(VLAPIC_ERR_INVALID, "vcpu or out is NULL");
  if ((flags & ~VLAPIC_INJECT_IF_PENDING) != 0) return fail(VLAPIC_ERR_INVALID, "unknown flags");
  request.injectIfPending = (flags & VLAPIC_INJECT_IF_PENDING) != 0;
  return guarded([&]() -> int {
    auto take = [&](const channel::Reply& r) {
      KJ_REQUIRE(r.kind != channel::Reply::Kind::REJECTED, "vlapicd rejected the channel request",
                 channel::rejectionName(r.rejection));
      for (auto& e : r.events()) vcpu->events.push_back({vcpu->index, toC(e.kind), e.vector, e.count});
    };
    channel::Reply reply = vcpu->front->call(request);
    take(reply);
    // The reply had no room for every queued event: fetch the rest now, so
    // the caller sees one complete batch. The first reply's result stands.
    for (bool more = reply.moreEvents; more;) {
      channel::Reply next = vcpu->front->call(channel::Request::fetchEvents());
      take(next);
      reply.cr8 = next.cr8;
      more = next.moreEvents;
    }
    out->status = static_cast<uint8_t>(reply.status);
    out->reason = static_cast<uint8_t>(reply.reason);
    out->cr8 = reply.cr8;
    out->value = reply.value;
    out->inject = -1;
    KJ_IF_MAYBE(v, reply.inject) out->inject = *v;
    out->events = static_cast<uint32_t>(vcpu->events.size());
    return VLAPIC_OK;
  });
}

}  // namespace

extern "C" {

int vlapic_mmio_read(vlapic_vcpu* vcpu, uint64_t gpa, uint8_t size, unsigned flags, vlapic_result* out) {
  return channelCall(vcpu, channel::Request::mmioRead(gpa, size), flags, out);
}

int vlapic_mmio_write(vlapic_vcpu* vcpu, uint64_t gpa, uint8_t size, uint64_t value, unsigned flags,
                      vlapic_result* out) {
  return channelCall(vcpu, channel::Request::mmioWrite(gpa, size, value), flags, out);
}

int vlapic_msr_read(vlapic_vcpu* vcpu, uint32_t msr, unsigned flags, vlapic_result* out) {
  return channelCall(vcpu, channel::Request::msrRead(msr), flags, out);
}

int vlapic_msr_write(vlapic_vcpu* vcpu, uint32_t msr, uint64_t value, unsigned flags, vlapic_result* out) {
  return channelCall(vcpu, channel::Request::msrWrite(msr, value), flags, out);
}

int vlapic_acknowledge(vlapic_vcpu* vcpu, vlapic_result* out) {
  return channelCall(vcpu, channel::Request::acknowledge(), 0, out);
}

int vlapic_set_cr8(vlapic_vcpu* vcpu, uint8_t cr8, unsigned flags, vlapic_result* out) {
  if (cr8 > 15) return fail(VLAPIC_ERR_INVALID, "CR8 above 15 (bits 63:4 are reserved, SDM 10.8.6.1)");
  return channelCall(vcpu, channel::Request::setCr8(cr8), flags, out);
}

int vlapic_fetch_events(vlapic_vcpu* vcpu, unsigned flags, vlapic_result* out) {
  return channelCall(vcpu, channel::Request::fetchEvents(), flags, out);
}

int vlapic_vcpu_take_events(vlapic_vcpu* vcpu, struct vlapic_event* out, size_t max) {
  if (vcpu == nullptr || (out == nullptr && max != 0)) return fail(VLAPIC_ERR_INVALID, "vcpu or out is NULL");
  size_t n = 0;
  while (n < max && n < INT32_MAX && !vcpu->events.empty()) {
    out[n++] = vcpu->events.front();
    vcpu->events.pop_front();
  }
  return static_cast<int>(n);
}

bool vlapic_vcpu_attention_pending(const vlapic_vcpu* vcpu) {
  return vcpu != nullptr && vcpu->front->attentionPending();
}

int vlapic_vcpu_wait_attention(vlapic_vcpu* vcpu, int64_t timeoutNs) {
  if (vcpu == nullptr) return fail(VLAPIC_ERR_INVALID, "vcpu is NULL");
  return guarded([&]() -> int {
    kj::Maybe<uint64_t> timeout;
    if (timeoutNs >= 0) timeout = static_cast<uint64_t>(timeoutNs);
    return vcpu->front->waitForAttention(timeout) ? 1 : 0;
  });
}

int vlapic_vcpu_attention_fd(const vlapic_vcpu* vcpu) {
  if (vcpu == nullptr) return fail(VLAPIC_ERR_INVALID, "vcpu is NULL");
  return vcpu->front->attentionFd();
}

bool vlapic_vcpu_consume_attention(vlapic_vcpu* vcpu) {
  return vcpu != nullptr && vcpu->front->consumeAttentionNotification();
}

int vlapic_vcpu_save(vlapic_vcpu* vcpu, struct vlapic_lapic_state* out) {
  return vlapic_vcpu_save_layout(vcpu, true, out);
}

int vlapic_vcpu_save_layout(vlapic_vcpu* vcpu, bool x2apic_32bit_ids,
                            struct vlapic_lapic_state* out) {
  if (vcpu == nullptr || out == nullptr) return fail(VLAPIC_ERR_INVALID, "vcpu or out is NULL");
  return guarded([&]() -> int {
    client::VcpuState state = vcpu->handle->save(x2apic_32bit_ids ? client::X2apicIdLayout::THIRTY_TWO_BIT
                                                                   : client::X2apicIdLayout::LEGACY);
    KJ_REQUIRE(state.regs.size() == VLAPIC_KVM_LAPIC_STATE_SIZE, "vlapicd sent a register image of the wrong size");
    if (state.hidden.size() > VLAPIC_HIDDEN_MAX) {
      return fail(VLAPIC_ERR_BUFFER, "the hidden record is larger than VLAPIC_HIDDEN_MAX");
    }
    out->apic_base = state.apicBase;
    memcpy(out->regs, state.regs.begin(), VLAPIC_KVM_LAPIC_STATE_SIZE);
    out->x2apic_32bit_ids = state.x2apic32BitIds;
    out->hidden_size = static_cast<uint32_t>(state.hidden.size());
    memset(out->hidden, 0, sizeof(out->hidden));
    if (state.hidden.size() > 0) memcpy(out->hidden, state.hidden.begin(), state.hidden.size());
    return VLAPIC_OK;
  });
}

int vlapic_vcpu_restore(vlapic_vcpu* vcpu, const struct vlapic_lapic_state* in) {
  if (vcpu == nullptr || in == nullptr) return fail(VLAPIC_ERR_INVALID, "vcpu or state is NULL");
  if (in->hidden_size > VLAPIC_HIDDEN_MAX) return fail(VLAPIC_ERR_INVALID, "hidden_size above VLAPIC_HIDDEN_MAX");
  return guarded([&]() -> int {
    client::VcpuState state;
    state.index = vcpu->index;
    state.apicBase = in->apic_base;
    state.regs = kj::heapArray<kj::byte>(in->regs, VLAPIC_KVM_LAPIC_STATE_SIZE);
    state.x2apic32BitIds = in->x2apic_32bit_ids;
    state.hidden = kj::heapArray<kj::byte>(in->hidden, in->hidden_size);
    vcpu->handle->restore(state);
    return VLAPIC_OK;
  });
}

int vlapic_vm_save(vlapic_vm* vm, void** blob, size_t* size) {
  if (vm == nullptr || blob == nullptr || size == nullptr) return fail(VLAPIC_ERR_INVALID, "NULL argument");
  *blob = nullptr;
  *size = 0;
  return guarded([&]() -> int {
    auto bytes = client::encodeVmState(vm->vm->save());
    void* copy = malloc(bytes.size() == 0 ? 1 : bytes.size());
    if (copy == nullptr) return fail(VLAPIC_ERR_OVERLOADED, "out of memory");
    memcpy(copy, bytes.begin(), bytes.size());
    *blob = copy;
    *size = bytes.size();
    return VLAPIC_OK;
  });
}

int vlapic_vm_restore(vlapic_vm* vm, const void* blob, size_t size) {
  if (vm == nullptr || (blob == nullptr && size != 0)) return fail(VLAPIC_ERR_INVALID, "NULL argument");
  return guarded([&]() -> int {
    auto state = client::decodeVmState(kj::arrayPtr(static_cast<const kj::byte*>(blob), size));
    vm->vm->restore(state);
    return VLAPIC_OK;
  });
}

void vlapic_free(void* blob) { free(blob); }

}  // extern "C"
