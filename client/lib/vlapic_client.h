// SPDX-License-Identifier: MIT
// The vlapic client library: what a hypervisor front links against to drive
// vlapicd (schema/vlapic.capnp) without touching Cap'n Proto types.
//
// Threading model (a front's vCPU threads are plain threads, not kj event
// loops):
//
//  * `Connection` is the promise-based API for code that already runs a kj
//    event loop (kj::setupAsyncIo()): every call returns a kj::Promise and
//    event callbacks run on that loop.
//
//  * `Client` is the front's control connection: it owns a background thread
//    running its own kj event loop with one connection to vlapicd. Its
//    methods are synchronous and may be called from any thread (they hop to
//    the client thread with kj::Executor). Event callbacks of VMs it created
//    run on the client thread, so they must be short and thread-safe (e.g.
//    queue the event for the vCPU thread and kick it).
//
//  * `VcpuHandle` is what a vCPU thread uses on its hot path: it owns its own
//    event loop and its own connection to vlapicd, bound to the thread that
//    created it, so a synchronous call is a plain socket round trip on the
//    calling thread, with no cross-thread wake-up. It is opened from a
//    `VcpuTicket` (an unguessable bearer token the server issues for one
//    vCPU): get tickets from `Vm::ticket()` anywhere, open the handle on the
//    vCPU thread. A thread that drives several vCPUs opens a `ThreadSession`
//    once and attaches all of them through it.
//
// Errors: a guest's bad access is a result (AccessOutcome::status GP or
// IGNORED), never an exception. Logistic failures (server absent, connection
// lost, VM released, out-of-range index, malformed state) throw kj::Exception
// from synchronous calls and reject promises; `kj::Exception::getType()` is
// DISCONNECTED when the server went away.
#pragma once

#include "schema/model/ioapic.h"
#include "schema/model/types.h"
#include "schema/model/regview.h"   // typed register views, re-exported
#include "client/lib/wake_ahead.h"   // waking ahead of timer deadlines
#include <kj/async.h>
#include <kj/async-io.h>
#include <kj/array.h>
#include <kj/function.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::client {

// ---------------------------------------------------------------------------
// Value types

// The default socket: $XDG_RUNTIME_DIR/vlapic/vlapicd.sock if XDG_RUNTIME_DIR
// is set, else /run/vlapic/vlapicd.sock. vlapicd uses the same rule.
kj::String defaultSocketPath();
// The operator socket beside a front socket (schema/socket_path.h): where
// Connection::admin() is served; on a front socket admin() is refused.
kj::String adminSocketPathFor(kj::StringPtr frontSocketPath);

struct VmOptions {
  uint32_t vcpuCount = 1;
  // Initial APIC ID per vCPU; empty: vCPU i gets ID i.
  kj::Array<uint32_t> apicIds;
  uint32_t bootVcpu = 0;
  uint64_t timerHz = 0;             // 0: server default (1 GHz)
  uint64_t tscHz = 0;               // 0: server default
  uint8_t lvtEntries = 6;           // 6 or 7 (CMCI)
  bool eoiBroadcastSuppression = false;
  bool x2apicSupported = true;
  bool tscDeadlineSupported = true;
  bool strictReservedBits = false;
  bool bspLint0ExtInt = false;
  // MSI/I/O APIC destination 0xFF broadcasts to x2APIC-mode LAPICs too
  // (KVM's quirk); off: it names x2APIC ID 255.
  bool x2apicBroadcastQuirk = false;
  // The VM's I/O APIC in vlapicd (schema IoApicConfig): present by
  // default at 0xFEC00000 with 24 pins; its MMIO window goes through the
  // vCPUs' mmioRead/mmioWrite (and channels), its pins through setIrqLine.
  struct IoApic {
    bool present = true;
    uint64_t base = 0;              // 0: 0xFEC00000
    uint8_t id = 0;                 // 0-15
    uint8_t version = 0;            // 0x11 or 0x20 (EOI register); 0: 0x11
  } ioapic;
  uint64_t minTimerPeriodNs = 0;    // 0: server default (200 us)
  kj::String name;
  uint32_t maxBatchesInFlight = 0;  // 0: server default
  uint32_t maxEventsPerBatch = 0;   // 0: server default
};

// What one guest access turned into (schema AccessResult).
struct AccessOutcome {
  AccessStatus status = AccessStatus::OK;
  AccessReason reason = AccessReason::NONE;
  uint64_t value = 0;               // OK read / IGNORED read value
  bool ipiSent = false;
  kj::Maybe<uint8_t> eoiBroadcast;  // level-triggered EOI vector, if any
  bool timerChanged = false;
  kj::Maybe<uint8_t> pendingVector; // deliverable after the access
  // When this vCPU's timer expires next, after the access (host
  // CLOCK_MONOTONIC ns); nullptr: not armed. See wake_ahead.h.
  kj::Maybe<uint64_t> timerDeadlineNs;
};

enum class RunState : uint8_t { RUNNING, WAIT_FOR_SIPI };

struct InterruptState {
  kj::Maybe<uint8_t> pendingVector;
  uint8_t tpr = 0, ppr = 0, cr8 = 0;
  RunState runState = RunState::RUNNING;
  ApicMode apicMode = ApicMode::XAPIC;
  uint32_t apicId = 0;
  kj::Maybe<uint64_t> timerDeadlineNs;   // next timer expiry, as AccessOutcome's
};

struct Acknowledged {
  kj::Maybe<uint8_t> vector;        // the vector to inject now, if any
  InterruptState state;             // state afterwards
};

struct StartupResult {
  bool started = false;
  InterruptState state;
};

enum class EventKind : uint8_t { DELIVERABLE, NMI, SMI, INIT, SIPI, EXTINT, EOI, TIMER };
kj::StringPtr eventKindName(EventKind kind);

struct Event {
  uint32_t vcpu = 0;
  EventKind kind = EventKind::DELIVERABLE;
  uint8_t vector = 0;               // DELIVERABLE, SIPI, EOI
  uint32_t count = 1;               // TIMER/EOI: merged occurrences
  // TIMER: when the timer expires next (a periodic timer's next period),
  // as the batch left vlapicd; nullptr: not armed (and for other kinds).
  kj::Maybe<uint64_t> timerDeadlineNs;
};

// Called with each batch, in order per vCPU. Runs on the thread whose event
// loop owns the VM's connection (the Client thread, or the Connection's
// loop). Returning acknowledges the batch for flow control. The callback is
// destroyed with its VM's handle (Vm, AsyncVm) and never called after it,
// so it may capture state that only outlives the handle; batches still in
// flight then are dropped.
using EventCallback = kj::Function<void(kj::ArrayPtr<const Event> events)>;

// How an x2APIC vCPU's ID is written into a saved kvm_lapic_state: the
// 32-bit ID (KVM_X2APIC_API_USE_32BIT_IDS, the default), or KVM's legacy
// layout without that API (the ID's low 8 bits in bits 31:24).
enum class X2apicIdLayout { THIRTY_TWO_BIT, LEGACY };

// A saved vCPU: KVM's 1 KiB kvm_lapic_state, IA32_APIC_BASE and the hidden
// record. View the registers with `view()` (regview.h).
struct VcpuState {
  uint32_t index = 0;
  uint64_t apicBase = 0;
  kj::Array<kj::byte> regs;         // exactly kKvmLapicStateSize bytes
  bool x2apic32BitIds = true;
  kj::Array<kj::byte> hidden;

  ApicMode mode() const;            // from apicBase
  ConstKvmLapicStateView view() const;
};

struct VmState {
  kj::Array<VcpuState> vcpus;
  int64_t tscOffset = 0;
  uint64_t tscAtSave = 0;
  uint32_t lowestPriorityCursor = 0;
  kj::Array<kj::Array<Event>> queuedEvents;   // per vCPU, oldest first
  kj::Maybe<IoApicState> ioapic;              // nullptr: the VM has none
};

// Portable file form of saved state (vlapicctl save/restore): a Cap'n Proto
// message (schema VmState) in packed encoding.
kj::Array<kj::byte> encodeVmState(const VmState& state);
VmState decodeVmState(kj::ArrayPtr<const kj::byte> bytes);   // throws on malformed input

struct PageInfo {
  uint64_t address = 0;
  bool shared = false;
  uint64_t fdOffset = 0;
};

// A page mapped read-only from the server's shared-memory HAL.
class MappedPage {
public:
  MappedPage(int fd, uint64_t offset);  // takes ownership of fd; maps 4 KiB
  ~MappedPage() noexcept(false);
  KJ_DISALLOW_COPY(MappedPage);
  kj::ArrayPtr<const kj::byte> bytes() const;
  ConstPageView view(RegisterLayout layout) const;

private:
  int fd;
  const kj::byte* mapping;
};

struct RegisterCount {
  Reg reg;
  uint64_t count = 0;
};

struct VcpuStats {
  uint32_t index = 0;
  uint64_t reads = 0, writes = 0, gpFaults = 0, ignoredAccesses = 0;
  uint64_t accepted = 0, acknowledged = 0, eois = 0, ipisSent = 0;
  uint64_t timerExpiries = 0, eventsPosted = 0;
  kj::Array<RegisterCount> perRegister;   // non-zero only
};

struct VmStats {
  kj::Array<VcpuStats> vcpus;
  uint64_t eventsPosted = 0, batchesPosted = 0, eventsCoalesced = 0;
  uint64_t timerExpiries = 0, msisDelivered = 0;
};

// One I/O APIC input pin's wire level (Vm.setIrqLines).
struct IrqLine {
  uint8_t pin = 0;       // 0-23
  bool level = false;    // electrical: high = true
};

// The VM's I/O APIC as vlapicd reports it (schema IoApicStatus).
struct IoApicPinStatus {
  uint8_t pin = 0;
  uint64_t entry = 0;               // redirection entry, as the guest reads it
  bool level = false, asserted = false, pendingEdge = false;
  IoApicPinStats stats;
};
struct IoApicStatus {
  bool present = false;             // false: the VM has no I/O APIC
  uint64_t base = 0;
  uint8_t id = 0, version = 0, ioregsel = 0;
  kj::Array<IoApicPinStatus> pins;
};

struct VcpuInfo {
  uint32_t index = 0;
  uint32_t apicId = 0, initialApicId = 0;
  bool bsp = false;
  ApicMode apicMode = ApicMode::XAPIC;
  RunState runState = RunState::RUNNING;
  kj::Maybe<uint64_t> timerDeadlineNs;
  bool channelOpen = false;         // its events go through its channel
};

struct VmInfo {
  uint64_t id = 0;
  kj::String name;
  uint32_t vcpuCount = 0;
  uint64_t owner = 0;               // connection id of the creator
  uint64_t createdNs = 0;
  uint64_t eventsQueued = 0;
  uint32_t batchesInFlight = 0;
};

struct ServerStatus {
  kj::String version, hal;
  uint64_t uptimeNs = 0;
  uint32_t connections = 0, vms = 0, vcpus = 0;
  uint64_t pagesInUse = 0;
  uint32_t armedTimers = 0;
  uint64_t totalEventsPosted = 0, totalTimerExpiries = 0;
  uint32_t pid = 0;
  // Fetches after timer expiries that vlapicd's loop polled for, served,
  // and skipped (schema ServerStatus).
  uint64_t channelLoopPolls = 0, channelLoopRequests = 0, channelLoopSkipped = 0;
  // The channel threads' own polls across timer expiries (vlapicd
  // --channel-timer-polls): on or off, hints given, polls, the polls that
  // woke the thread, requests served from them.
  bool channelTimerPolls = false;
  uint64_t channelHintsGiven = 0, channelHintedPolls = 0, channelHintedWakeups = 0,
           channelHintedRequests = 0;
  // Timer expiries fired by channel requests that found the timer due.
  uint64_t channelRequestTimerFires = 0;
};

// An unguessable token naming one vCPU of a live VM (Vcpu.ticket in the
// schema). A value: copy it to the vCPU thread.
struct VcpuTicket {
  kj::String socketPath;
  uint32_t index = 0;
  kj::Array<kj::byte> token;
};

// MSI address/data in the architectural format.
struct MsiMessage {
  uint64_t address = 0;
  uint32_t data = 0;
};

// ---------------------------------------------------------------------------
// Promise-based API (for code on a kj event loop)

class AsyncVcpu {
public:
  virtual ~AsyncVcpu() noexcept(false) = default;
  virtual uint32_t index() const = 0;

  virtual kj::Promise<AccessOutcome> mmioRead(uint64_t gpa, uint8_t size) = 0;
  virtual kj::Promise<AccessOutcome> mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) = 0;
  virtual kj::Promise<AccessOutcome> msrRead(uint32_t msr) = 0;
  virtual kj::Promise<AccessOutcome> msrWrite(uint32_t msr, uint64_t value) = 0;
  virtual kj::Promise<Acknowledged> acknowledge() = 0;
  virtual kj::Promise<InterruptState> interruptState() = 0;
  virtual kj::Promise<InterruptState> setCr8(uint8_t cr8) = 0;
  virtual kj::Promise<StartupResult> startup(uint8_t vector) = 0;
  virtual kj::Promise<VcpuState> save(X2apicIdLayout layout = X2apicIdLayout::THIRTY_TWO_BIT) = 0;
  virtual kj::Promise<void> restore(const VcpuState& state) = 0;
  struct Pages { PageInfo virtualApic, apicAccess; };
  virtual kj::Promise<Pages> pages() = 0;
  // With --hal shared: the virtual-APIC page mapped read-only. Rejects when
  // the server's HAL has no fds.
  virtual kj::Promise<kj::Own<MappedPage>> mapVirtualApicPage() = 0;
  virtual kj::Promise<VcpuStats> stats() = 0;
  virtual kj::Promise<VcpuInfo> info() = 0;
  virtual kj::Promise<VcpuTicket> ticket() = 0;
  // Opens this vCPU's shared-memory channel (the exit fast path): returns the
  // fd to hand to vlapic::channel::ChannelFront::connect (schema/channel).
  // From then on this vCPU's events arrive through the channel, not through
  // the VM's event callback, until the front closes the channel.
  virtual kj::Promise<kj::AutoCloseFd> openChannel() = 0;
};

class AsyncVm {
public:
  virtual ~AsyncVm() noexcept(false) = default;
  virtual uint32_t vcpuCount() const = 0;
  // Handles are pipelined: usable at once, no round trip.
  virtual kj::Own<AsyncVcpu> vcpu(uint32_t index) = 0;
  virtual kj::Promise<kj::Array<VcpuInfo>> listVcpus() = 0;
  virtual kj::Promise<void> deliverMsi(MsiMessage msi) = 0;
  virtual kj::Promise<void> deliverIoApic(uint64_t redirectionEntry) = 0;
  static constexpr uint32_t kAllVcpus = 0xFFFFFFFF;
  virtual kj::Promise<void> setLint(uint32_t vcpu, uint8_t pin, bool level) = 0;
  // The VM's I/O APIC pins (schema Vm.setIrqLine / setIrqLines).
  virtual kj::Promise<void> setIrqLine(uint8_t pin, bool level) = 0;
  virtual kj::Promise<void> setIrqLines(kj::ArrayPtr<const IrqLine> lines) = 0;
  virtual kj::Promise<IoApicStatus> ioapic() = 0;
  virtual kj::Promise<VmState> save(X2apicIdLayout layout = X2apicIdLayout::THIRTY_TWO_BIT) = 0;
  virtual kj::Promise<void> restore(const VmState& state, bool resumeTscAtSaved = false) = 0;
  virtual kj::Promise<VmStats> stats() = 0;
  virtual kj::Promise<VmInfo> info() = 0;
  virtual kj::Promise<PageInfo> apicAccessPage() = 0;
  virtual kj::Promise<void> release() = 0;
  // Each vCPU's next timer deadline, kept up to date by the library from
  // the replies of this VM's vCPU handles (vcpu() above) and its TIMER and
  // INIT events: what a WakeAheadWaiter on this loop wakes ahead of.
  virtual TimerDeadlines& timerDeadlines() = 0;
};

class AsyncAdmin {
public:
  virtual ~AsyncAdmin() noexcept(false) = default;
  virtual kj::Promise<ServerStatus> status() = 0;
  virtual kj::Promise<kj::Array<VmInfo>> listVms() = 0;
  // Operator access to any VM by id (does not keep it alive).
  virtual kj::Own<AsyncVm> openVm(uint64_t id, uint32_t vcpuCount) = 0;
};

class Connection {
public:
  virtual ~Connection() noexcept(false) = default;

  // Connects on the calling thread's event loop (kj::setupAsyncIo()'s
  // lowLevelProvider). Throws kj::Exception (DISCONNECTED) with a clear
  // message ("cannot reach vlapicd at PATH ...") when nobody listens.
  static kj::Own<Connection> connect(kj::LowLevelAsyncIoProvider& io, kj::StringPtr socketPath);

  virtual kj::StringPtr socketPath() const = 0;
  virtual kj::Promise<uint64_t> echo(uint64_t value) = 0;
  virtual kj::Promise<ServerStatus> status() = 0;
  virtual kj::Promise<kj::Own<AsyncVm>> createVm(VmOptions options, EventCallback onEvents) = 0;
  virtual kj::Promise<kj::Own<AsyncVcpu>> attachVcpu(const VcpuTicket& ticket) = 0;
  virtual kj::Own<AsyncAdmin> admin() = 0;
  // Resolves (or rejects) when the connection to vlapicd is lost.
  virtual kj::Promise<void> onDisconnect() = 0;
};

// ---------------------------------------------------------------------------
// Synchronous API (for plain threads)

// Synchronous vCPU calls on the thread that opened the handle.
class VcpuHandle {
public:
  virtual ~VcpuHandle() noexcept(false) = default;
  virtual uint32_t index() const = 0;

  virtual AccessOutcome mmioRead(uint64_t gpa, uint8_t size) = 0;
  virtual AccessOutcome mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) = 0;
  virtual AccessOutcome msrRead(uint32_t msr) = 0;
  virtual AccessOutcome msrWrite(uint32_t msr, uint64_t value) = 0;
  virtual Acknowledged acknowledge() = 0;
  virtual InterruptState interruptState() = 0;
  virtual InterruptState setCr8(uint8_t cr8) = 0;
  virtual StartupResult startup(uint8_t vector) = 0;
  virtual VcpuState save(X2apicIdLayout layout = X2apicIdLayout::THIRTY_TWO_BIT) = 0;
  virtual void restore(const VcpuState& state) = 0;
  virtual AsyncVcpu::Pages pages() = 0;
  virtual kj::Own<MappedPage> mapVirtualApicPage() = 0;
  virtual VcpuStats stats() = 0;
  virtual VcpuInfo info() = 0;
  virtual kj::AutoCloseFd openChannel() = 0;   // see AsyncVcpu::openChannel

  // The promise-based handle on the same connection, for a thread that
  // wants to pipeline (e.g. many writes, then wait for all).
  virtual AsyncVcpu& async() = 0;
  virtual kj::WaitScope& waitScope() = 0;
};

// One event loop and one connection owned by the calling thread. Opening a
// VcpuHandle through it makes the thread the handle's thread. Not
// thread-safe: use it only on the thread that constructed it. A thread can
// have only one (kj allows one event loop per thread), and not at all on a
// thread that already runs a kj event loop: use Connection there.
class ThreadSession {
public:
  virtual ~ThreadSession() noexcept(false) = default;
  // Throws kj::Exception with a clear message when the server is absent.
  static kj::Own<ThreadSession> open(kj::StringPtr socketPath);

  virtual kj::Own<VcpuHandle> attachVcpu(const VcpuTicket& ticket) = 0;
  virtual uint64_t echo(uint64_t value) = 0;
  virtual ServerStatus status() = 0;
  virtual Connection& connection() = 0;
  virtual kj::WaitScope& waitScope() = 0;
};

// Open a vCPU handle on the calling thread with its own session.
kj::Own<VcpuHandle> openVcpu(const VcpuTicket& ticket);

// A VM owned through a Client; methods are synchronous and thread-safe.
// Destroy it before its Client (its capability lives on the client thread).
class Vm {
public:
  virtual ~Vm() noexcept(false) = default;   // releases the VM
  virtual uint32_t vcpuCount() const = 0;
  virtual VcpuTicket ticket(uint32_t index) = 0;
  virtual kj::Array<VcpuInfo> listVcpus() = 0;
  virtual void deliverMsi(MsiMessage msi) = 0;
  virtual void deliverIoApic(uint64_t redirectionEntry) = 0;
  virtual void setLint(uint32_t vcpu, uint8_t pin, bool level) = 0;
  virtual void setIrqLine(uint8_t pin, bool level) = 0;
  virtual void setIrqLines(kj::ArrayPtr<const IrqLine> lines) = 0;
  virtual IoApicStatus ioapic() = 0;
  virtual VmState save(X2apicIdLayout layout = X2apicIdLayout::THIRTY_TWO_BIT) = 0;
  virtual void restore(const VmState& state, bool resumeTscAtSaved = false) = 0;
  virtual VmStats stats() = 0;
  virtual VmInfo info() = 0;
  virtual PageInfo apicAccessPage() = 0;
  virtual void release() = 0;
};

// The front's control connection with its own event thread.
class Client {
public:
  virtual ~Client() noexcept(false) = default;   // disconnects, joins the thread
  // Throws kj::Exception with a clear message when the server is absent.
  static kj::Own<Client> connect(kj::StringPtr socketPath);

  virtual kj::StringPtr socketPath() const = 0;
  // `onEvents` runs on the client thread.
  virtual kj::Own<Vm> createVm(VmOptions options, EventCallback onEvents) = 0;
  virtual uint64_t echo(uint64_t value) = 0;
  virtual ServerStatus status() = 0;
  virtual kj::Array<VmInfo> listVms() = 0;          // admin right
  // Whether the connection is still up (false once vlapicd went away).
  virtual bool connected() const = 0;
};

}  // namespace vlapic::client
