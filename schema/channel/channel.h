// SPDX-License-Identifier: MIT
// The per-vCPU shared-memory call/reply channel between a front and vlapicd
// (issue 7's exit fast path). One channel serves one vCPU: the front writes a
// request into a slot of a shared memfd, the server runs it and writes the
// reply (access result, an interrupt to inject now, CR8, queued events) into
// a second slot -- a synchronous call like seL4's IPC, with no socket and no
// RPC machinery on the path while both sides are awake.
//
// Wake-ups: each side busy-polls the shared sequence words for a bounded,
// adaptive window (KVM halt-polling's rule, see PollWindow) and then sleeps
// on a doorbell: a SOCK_SEQPACKET socket pair whose peer end is the only fd a
// front receives. The same socket reports the peer's death (POLLHUP) while
// sleeping, so an idle channel costs no CPU and a dead peer is an error, never
// a hang. README.md in this folder explains the wiring into vlapicd and
// vlapic-kvm.
#pragma once

#include "schema/model/types.h"
#include <kj/common.h>
#include <kj/function.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <cstdint>

namespace vlapic::channel {

// ---------------------------------------------------------------------------
// Requests and replies: value types, independent of the wire encoding.

enum class Operation : uint8_t {
  MMIO_READ,     // gpa, size
  MMIO_WRITE,    // gpa, size, value
  MSR_READ,      // msr
  MSR_WRITE,     // msr, value
  ACKNOWLEDGE,   // take the vector to inject now (Lapic::acknowledge)
  SET_CR8,       // cr8: MOV to CR8 (Lapic::setCr8)
  FETCH_EVENTS,  // nothing but the events queued for this vCPU
};

struct Request {
  Operation operation = Operation::FETCH_EVENTS;
  uint64_t gpa = 0;
  uint8_t size = 0;
  uint32_t msr = 0;
  uint64_t value = 0;
  uint8_t cr8 = 0;  // 0-15; CR8 bits 63:4 are reserved (SDM 10.8.6.1)
  // The vCPU can take an external interrupt right after this exit (KVM:
  // ready_for_interrupt_injection and RFLAGS.IF): the server may acknowledge
  // the pending vector in the same call and return it in Reply::inject.
  bool injectIfPending = false;

  static Request mmioRead(uint64_t gpa, uint8_t size);
  static Request mmioWrite(uint64_t gpa, uint8_t size, uint64_t value);
  static Request msrRead(uint32_t msr);
  static Request msrWrite(uint32_t msr, uint64_t value);
  static Request acknowledge();
  static Request setCr8(uint8_t cr8);
  static Request fetchEvents();

  bool operator==(const Request&) const = default;
};

// The kinds of the Vm layer's VcpuEvent (server/vm/vm.h), one to one.
enum class EventKind : uint8_t {
  DELIVERABLE,  // `vector` beats PPR: open an interrupt window, acknowledge
  NMI,
  SMI,
  INIT,         // the LAPIC was reset by INIT
  SIPI,         // start at CS = vector << 8, IP = 0
  EXTINT,       // ask the legacy PIC for the vector
  EOI,          // level-triggered `vector` EOIed: for the I/O APIC
  TIMER,        // the LAPIC timer expired `count` times
};

struct Event {
  EventKind kind = EventKind::NMI;
  uint8_t vector = 0;  // DELIVERABLE, SIPI, EOI
  uint32_t count = 1;  // TIMER, EOI: merged occurrences; 1 otherwise
  bool operator==(const Event&) const = default;
};

// Why a request never reached the LAPIC. The transport's own results; a
// guest's bad access is an AccessStatus instead.
enum class Rejection : uint8_t {
  MALFORMED,        // not a valid message, or a field out of range
  OVERSIZED,        // declared size larger than the slot
  UNKNOWN_REQUEST,  // a request kind this server does not know
  HANDLER_FAILED,   // the server threw while serving a well-formed request
};

kj::StringPtr rejectionName(Rejection rejection);

// Events per reply: enough for a whole Vm event queue (server/vm/vm.h's
// kMaxQueuedEventsPerVcpu = 7 + 256), so draining it always fits; beyond
// that `moreEvents` asks the front to send FETCH_EVENTS.
constexpr size_t kMaxEventsPerReply = 7 + 256 + 25;
// Other vCPUs a reply can name as notified (Reply::addNotified).
constexpr size_t kMaxNotifiedPerReply = 16;

struct Reply {
  enum class Kind : uint8_t { ACCESS, DONE, REJECTED };
  Kind kind = Kind::DONE;
  // ACCESS: the LAPIC's AccessResult as the front needs it (the side effects
  // -- IPIs to route, EOI broadcasts -- stay in the server).
  AccessStatus status = AccessStatus::OK;
  AccessReason reason = AccessReason::NONE;
  uint64_t value = 0;
  Rejection rejection = Rejection::MALFORMED;  // REJECTED
  kj::Maybe<uint8_t> inject;  // acknowledged: inject this vector now
  uint8_t cr8 = 0;            // TPR[7:4] after the call, for kvm_run->cr8
  bool moreEvents = false;
  // When this vCPU's timer expires next (host CLOCK_MONOTONIC ns), nullptr
  // when not armed.
  kj::Maybe<uint64_t> timerDeadlineNs;

  static Reply access(const AccessResult& result);
  static Reply done();
  static Reply rejected(Rejection why);

  // Appends an event; when the reply is full, sets moreEvents and returns
  // false (the event must stay queued in the server).
  bool addEvent(Event event);
  kj::ArrayPtr<const Event> events() const { return kj::arrayPtr(eventSlots, eventCount); }
  // Notes another vCPU whose attention this request raised; beyond
  // kMaxNotifiedPerReply returns false and the rest are left to the front's
  // attention watchers.
  bool addNotified(uint32_t vcpu);
  kj::ArrayPtr<const uint32_t> notified() const { return kj::arrayPtr(notifiedSlots, notifiedCount); }

  bool operator==(const Reply& other) const;

private:
  uint16_t eventCount = 0;
  uint16_t notifiedCount = 0;
  Event eventSlots[kMaxEventsPerReply];
  uint32_t notifiedSlots[kMaxNotifiedPerReply];
};

// ---------------------------------------------------------------------------
// Adaptive polling (the rule of KVM's halt-polling): after an event, a waiter
// spins for `currentNs()` before it sleeps. A wait that the spin covered
// leaves the window alone. A wait that had to sleep grows the window
// (doubling, from `startNs`) if it ended within `maxNs` -- a longer spin
// would have caught it -- and shrinks it (halving, to zero below `startNs`)
// if it lasted longer than `maxNs`, since then spinning only burns CPU. A
// spin that finds its CPU contended (see spinFor in shared-layout.h) drops
// the window to zero, as KVM stops polling when other tasks are runnable.
struct PollPolicy {
  uint64_t initialNs = 0;
  uint64_t startNs = 10'000;
  uint64_t maxNs = 200'000;
  bool adaptive = true;

  // The default: adaptive, 10 us to 200 us (KVM's halt_poll_ns defaults).
  static PollPolicy adaptivePolicy() { return {}; }
  // Spin forever: the lowest latency, a whole core per waiting side.
  static PollPolicy busyPolicy() { return {UINT64_MAX, 0, UINT64_MAX, false}; }
  // Never spin: every wait sleeps on the doorbell.
  static PollPolicy sleepPolicy() { return {0, 0, 0, false}; }
};

class PollWindow {
public:
  explicit PollWindow(PollPolicy policy) : policy(policy), window(policy.initialNs) {}
  uint64_t currentNs() const { return window; }
  // A spin caught what it waited for: the CPU is free, so a later
  // contention starts from the shortest hold-off again.
  void onPollHit() { nextHoldoff = kMinContendedHoldoff; }
  void onSlept(uint64_t waitedNs);
  // The spin saw other work run on its CPU: spinning is counterproductive
  // now. Stop spinning, and do not grow again for the next `holdoff` waits.
  // A failed probe costs a switch away (possibly a whole time slice of the
  // other task), so each contention in a row doubles the hold-off, from 64
  // up to 8192 waits: on a host that stays busy, probing becomes rare.
  static constexpr uint32_t kMinContendedHoldoff = 64;
  static constexpr uint32_t kMaxContendedHoldoff = 8192;
  void onContended() {
    if (!policy.adaptive) return;
    window = 0;
    holdoff = nextHoldoff;
    if (nextHoldoff < kMaxContendedHoldoff) nextHoldoff *= 2;
  }

private:
  PollPolicy policy;
  uint64_t window;
  uint32_t holdoff = 0;
  uint32_t nextHoldoff = kMinContendedHoldoff;
};

// ---------------------------------------------------------------------------
// The server side of one vCPU's channel: a thread that waits for requests,
// hands each to the handler and writes its reply.

struct ServerStats {
  uint64_t requests = 0;     // replies written, rejections included
  uint64_t rejected = 0;     // requests that never reached the handler
  uint64_t handlerFailures = 0;
  uint64_t pollHits = 0;     // requests that arrived while spinning
  uint64_t contended = 0;    // spins abandoned because the CPU was contended
  uint64_t sleeps = 0;       // times the thread slept on the doorbell
  uint64_t pollWindowNs = 0;
  uint64_t threadCpuNs = 0;  // CPU time of the channel thread so far
  // Hinted polls (pollBetween): polls that began, how many of them woke the
  // thread from its sleep to begin, requests served from them, and spins
  // within them that found the CPU contended (the hinted poll yields and
  // goes on: it is bounded by its end time, not by the window).
  uint64_t hintedPolls = 0;
  uint64_t hintedWakeups = 0;
  uint64_t hintedRequests = 0;
  uint64_t hintedContended = 0;
  // serveOnCaller(): polls made, requests served by them, calls skipped by
  // its back-off after polls that served nothing.
  uint64_t callerPolls = 0;
  uint64_t callerRequests = 0;
  uint64_t callerSkipped = 0;
  bool asleep = false;       // the thread is blocked on the doorbell now
  bool closed = false;       // the front hung up
};

class ChannelServer {
public:
  // Runs on the channel's own thread, one request at a time (never two at
  // once for one channel; different channels' handlers run concurrently).
  // The Vm layer is single-threaded, so the handler must take the VM's lock
  // or hop onto the event loop (kj::Executor::executeSync); see README.md
  // for what each costs. A handler that throws yields HANDLER_FAILED.
  using Handler = kj::Function<Reply(const Request&)>;
  // Called once on the channel thread when the front hangs up (its process
  // died or closed the fd). It must not destroy the ChannelServer itself
  // (the destructor joins that thread): post the clean-up elsewhere.
  using OnClosed = kj::Function<void()>;

  struct Options {
    PollPolicy poll = PollPolicy::adaptivePolicy();
  };

  // Creates the shared memory and the doorbell, starts the channel thread,
  // and returns the server together with the one fd the front needs (pass it
  // over the capnp socket, then close it: while the server process holds a
  // copy it cannot see the front hang up).
  struct Created {
    kj::Own<ChannelServer> server;
    kj::AutoCloseFd frontFd;
  };
  static Created create(Handler handler, OnClosed onClosed, Options options);
  static Created create(Handler handler, OnClosed onClosed) {
    return create(kj::mv(handler), kj::mv(onClosed), Options());
  }

  // Stops the thread (a request being served completes first) and unmaps.
  ~ChannelServer() noexcept(false);
  KJ_DISALLOW_COPY(ChannelServer);

  // Events are queued for this vCPU: flag it in shared memory and wake the
  // front if it sleeps in waitForAttention(). Any thread may call it.
  void raiseAttention();

  // A request is expected around a known time (vlapicd knows when this
  // vCPU's LAPIC timer expires, and a halted front fetches the events right
  // after): from `fromNs` the channel thread polls for requests until
  // `untilNs` (CLOCK_MONOTONIC ns), whatever its adaptive window and its
  // contended hold-off say, then goes back to them. If it sleeps at
  // `fromNs`, a timer in its poll set wakes it then (a `fromNs` already past
  // wakes it at once), so the front's request finds it awake instead of
  // paying a cold wake-up. The poll also ends early, once it has served a
  // request that came after attention was raised since `fromNs`: the front
  // has fetched what the poll waited for. Requests served from it (and its
  // wake-up) do not feed the PollWindow: they measure the hint, not the
  // front's pace between requests, and a hit would reset the contended
  // hold-off, a grown window would spin at every later wait. One hint at
  // a time: a call replaces the one before. Any thread may call these.
  void pollBetween(uint64_t fromNs, uint64_t untilNs);
  void pollUntil(uint64_t untilNs) { pollBetween(0, untilNs); }
  // Withdraws the hint (a poll in progress ends at its next check).
  void cancelPoll();

  // Polls for the front's next request on the calling thread until
  // `untilNs` (CLOCK_MONOTONIC ns) and serves it there if it comes: for a
  // thread that is awake anyway when a request is due (vlapicd's loop
  // thread right after it raised a timer's attention), so that the request
  // pays no wake-up of the channel thread at all. Gives up early if its CPU
  // is contended (as any spin here). Requests stay one at a time: the
  // channel thread and a caller serve under one lock, and a sleeping
  // channel thread that the front rang for a request served here goes
  // back to sleep without learning from that wait. Returns whether it
  // served one. After a poll that served nothing, the next calls return at
  // once (1, 2, 4 ... up to kMaxCallerBackoff calls, reset by a served
  // request), so a front that does not fetch promptly cannot make the
  // caller spin at every expiry. Meant for one caller thread (vlapicd's
  // loop) besides the channel thread; the handler runs on the caller's.
  static constexpr uint32_t kMaxCallerBackoff = 256;
  bool serveOnCaller(uint64_t untilNs);

  ServerStats stats() const;

  // The front has hung up: the channel thread saw it, or the doorbell shows
  // it now (the thread notices only at its next wake-up, so a front that
  // closes its end and at once asks for a new channel can get there first).
  // Any thread may call it.
  bool frontHungUp() const;

  struct Impl;
  explicit ChannelServer(kj::Own<Impl> impl);

private:
  kj::Own<Impl> impl;
};

// ---------------------------------------------------------------------------
// The front side of one vCPU's channel; used by that vCPU's thread only.

struct FrontStats {
  uint64_t calls = 0;
  uint64_t pollHits = 0;  // replies that arrived while spinning
  uint64_t contended = 0; // spins abandoned because the CPU was contended
  uint64_t sleeps = 0;
  uint64_t pollWindowNs = 0;
};

class ChannelFront {
public:
  struct Options {
    PollPolicy poll = PollPolicy::adaptivePolicy();
    // Give up on a reply after this long (DISCONNECTED). 0: never; only
    // the server's death ends a wait.
    uint64_t replyTimeoutNs = 0;
  };

  // Takes the fd ChannelServer::create() returned (received over the capnp
  // socket). Throws if it is not a channel of this layout version.
  static kj::Own<ChannelFront> connect(kj::AutoCloseFd channelFd, Options options);
  static kj::Own<ChannelFront> connect(kj::AutoCloseFd channelFd) {
    return connect(kj::mv(channelFd), Options());
  }

  // Hangs up the channel (shutdown of the doorbell socket, whatever other
  // copies of its fd are still open): vlapicd retires it at once.
  ~ChannelFront() noexcept(false);
  KJ_DISALLOW_COPY(ChannelFront);

  // One synchronous call. Throws DISCONNECTED if the server went away (or
  // the reply timeout passed) and FAILED if its reply is malformed.
  Reply call(const Request& request);

  // The server queued events since the last call: fetch them (FETCH_EVENTS,
  // or any other call) before entering the guest again. One shared load.
  bool attentionPending() const;
  // Parks until attention is raised (true) or the timeout passes (false),
  // polling first like call(); for a halted vCPU. Throws DISCONNECTED if the
  // server went away.
  bool waitForAttention(kj::Maybe<uint64_t> timeoutNs);

  // For kicking a vCPU that is inside KVM_RUN: an eventfd (non-blocking)
  // that becomes readable whenever attention goes from clear to raised. The
  // front's event loop watches it (kj::UnixEventPort::FdObserver) from any
  // thread, calls consumeAttentionNotification() to re-arm it, and kicks the
  // vCPU thread, which then calls FETCH_EVENTS. It is separate from the
  // doorbell, so a watcher never steals the vCPU thread's wake-ups.
  int attentionFd() const;
  // Reads the eventfd; returns whether a notification was pending. Safe
  // from any thread.
  bool consumeAttentionNotification();

  // Readable from any thread.
  FrontStats stats() const;

  struct Impl;
  explicit ChannelFront(kj::Own<Impl> impl);

private:
  kj::Own<Impl> impl;
};

}  // namespace vlapic::channel
