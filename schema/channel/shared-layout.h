// SPDX-License-Identifier: MIT
// Internals of the channel shared by the server, the front and the tests
// (which play a hostile front): the memfd layout, the doorbell socket and the
// wire codec. Users of the library need only channel.h.
#pragma once

#include "schema/channel/channel.h"
#include <capnp/common.h>
#include <kj/one-of.h>
#include <atomic>
#include <sched.h>
#include <cstddef>

namespace vlapic::channel {

constexpr uint64_t kChannelMagic = 0x6c656e6e61686376;  // "vchannel", little-endian
constexpr uint32_t kLayoutVersion = 1;
constexpr size_t kRequestSlotBytes = 256;
// A reply with kMaxEventsPerReply events (one word each) and its result.
constexpr size_t kReplySlotBytes = 3072;
constexpr size_t kSharedBytes = 4096;

static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "shared-memory atomics must not need a lock");

// One 4 KiB memfd page. Every word the two sides both touch is an atomic;
// each writer's words sit on their own cache line so that the spinning
// reader of one does not slow the writer of another.
//
// Protocol (Dekker-style, all marked stores and loads seq_cst):
//   front:  write request slot, requestBytes; store requestSeq = n;
//           load serverSleeping -> ring the doorbell if set;
//           spin on replySeq == n, then frontSleeping = 1, re-check, sleep.
//   server: load requestSeq != last -> read requestBytes once, copy the slot
//           out, decode, serve, write reply slot, replyBytes; store
//           replySeq = n; load frontSleeping -> ring if set;
//           spin on requestSeq, then serverSleeping = 1, re-check, sleep.
//   front:  rings only if serverSleeping is set and callerPolling is not;
//           spins for the reply at least kAwakeServerSpinNs when it did not
//           ring (a server thread is awake: the reply is microseconds away).
//   caller: (serveOnCaller) callerPolling = 1; spin on requestSeq; then
//           callerPolling = 0, re-check, serve what came.
// Either the sleeper's re-check sees the new sequence or the writer sees the
// sleeping flag, so no wake-up is lost. The server keeps its own state
// (last sequence served) privately: shared words are only hints, which a
// hostile front may scribble on without hurting anyone but itself.
struct SharedChannel {
  // Written once by the server before the fd is handed out.
  uint64_t magic;
  uint32_t version;
  uint32_t requestSlotBytes;
  uint32_t replySlotBytes;
  uint32_t sharedBytes;

  // Written by the front.
  alignas(64) std::atomic<uint32_t> requestSeq;
  std::atomic<uint32_t> requestBytes;
  alignas(64) std::atomic<uint32_t> frontSleeping;

  // Written by the server.
  alignas(64) std::atomic<uint32_t> replySeq;
  std::atomic<uint32_t> replyBytes;
  alignas(64) std::atomic<uint32_t> serverSleeping;
  // Set while a thread other than the channel thread polls for the next
  // request (ChannelServer::serveOnCaller). Dekker-style like the sleeping
  // flags: the front stores requestSeq, then loads this and need not ring
  // while it is set; the poller clears it, then re-checks requestSeq and
  // serves what came. Either one sees the other.
  std::atomic<uint32_t> callerPolling;

  // Set by the server when events are queued, cleared by the front before
  // each call (a call's reply carries everything queued before it).
  alignas(64) std::atomic<uint32_t> attention;

  alignas(64) kj::byte requestSlot[kRequestSlotBytes];
  alignas(64) kj::byte replySlot[kReplySlotBytes];
};
static_assert(sizeof(SharedChannel) <= kSharedBytes);

// A read-write mapping of a channel memfd; unmapped on destruction.
class SharedMapping {
public:
  explicit SharedMapping(int memfd);
  ~SharedMapping() noexcept(false);
  KJ_DISALLOW_COPY(SharedMapping);
  // Shared with another process: not part of this object's const state.
  SharedChannel& channel() const { return *shared; }

private:
  SharedChannel* shared;
};

// ---- The doorbell: a SOCK_SEQPACKET socket pair ----
// Rings the peer: one 1-byte packet, never blocking and never raising
// SIGPIPE (a full socket already holds a pending wake-up; a closed peer is
// noticed by the next sleep).
void ringDoorbell(int fd);

enum class DoorbellWait : uint8_t { RUNG, TIMED_OUT, HUNG_UP, STOPPED, HINTED };
// Sleeps until the doorbell rings, the peer hangs up, `stopFd` (if not -1)
// becomes readable, `hintFd` (if not -1: the server's hinted-poll timerfd)
// expires or the timeout passes (-1: none); drains pending rings, and the
// timerfd's expiration count.
DoorbellWait sleepOnDoorbell(int fd, int stopFd, int timeoutMs, int hintFd = -1);
// Whether the peer hung up, without blocking.
bool doorbellHungUp(int fd);

// Non-blocking eventfds (the attention notification, the stop signal).
// signalEventFd adds 1 (a saturated counter is readable already);
// drainEventFd reads it back to zero and says whether it was signalled.
void signalEventFd(int fd);
bool drainEventFd(int fd);

// File descriptors over a Unix socket (SCM_RIGHTS), one 1-byte message.
constexpr size_t kMaxFdsPerMessage = 4;
void sendFds(int socket, kj::ArrayPtr<const int> fds);
// Throws if no message with fds is waiting (dontWait) or the peer closed.
kj::Array<kj::AutoCloseFd> receiveFds(int socket, bool dontWait = false);

// The server sends the memfd and the attention eventfd through the doorbell
// socket itself, so a front needs one fd from the capnp socket, not three.
struct ChannelFds {
  kj::AutoCloseFd memory;
  kj::AutoCloseFd attention;
};
void sendChannelMemory(int doorbellFd, int memfd, int attentionFd);
// Throws if no channel memory is waiting on the socket. The memfd is
// validated for size and seals (the server seals it so nobody can shrink it
// under the other side's mapping), not for content.
ChannelFds receiveChannelMemory(int doorbellFd);

// ---- The wire codec (channel.capnp, flat array, one segment) ----
// Encodes into `slot`; returns the bytes used. Throws if it does not fit,
// which our own bounded structs never do.
size_t encodeRequest(const Request& request, kj::ArrayPtr<kj::byte> slot);
size_t encodeReply(const Reply& reply, kj::ArrayPtr<kj::byte> slot);
// Decodes a private copy of what the peer wrote. Untrusted input: anything
// malformed comes back as a Rejection, never as an exception or a crash.
kj::OneOf<Request, Rejection> decodeRequest(kj::ArrayPtr<const capnp::word> message);
kj::Maybe<Reply> decodeReply(kj::ArrayPtr<const capnp::word> message);

// Reads `declaredBytes` (already loaded once from shared memory) of `slot`
// into `copy`, checking bounds and alignment first: the one place untrusted
// bytes leave shared memory. Returns the words copied, or the rejection.
kj::OneOf<kj::ArrayPtr<const capnp::word>, Rejection> copyOutOfSlot(
    const kj::byte* slot, size_t slotBytes, uint32_t declaredBytes,
    kj::ArrayPtr<capnp::word> copy);

// CLOCK_MONOTONIC in ns: the spin windows run on host time.
uint64_t monotonicNowNs();

enum class SpinResult : uint8_t { READY, EXPIRED, CONTENDED, HUNG_UP };

// Spins until `ready()` or until `windowNs` has passed since `startNs`. A
// long (busy-policy) spin also checks the doorbell for a hang-up every
// millisecond, so a busy waiter notices a dead peer too.
//
// After a short pure spin, each round yields the CPU: when the peer waits
// for the core this spinner holds, a spin that never yields delays the very
// reply it waits for until its window runs out (measured here: 0.5 ms per
// call instead of microseconds). On an idle core sched_yield() returns at
// once.
//
// And like KVM's halt-polling, which stops polling as soon as another task
// is runnable on its CPU (single_task_running()), the spin gives up when the
// CPU is contended: user space cannot ask that question cheaply, but it can
// see the answer -- a yield or a gap between two rounds that took longer
// than a sleeping wake-up would have means other work ran on this core.
// Spinning then only delays everyone; CONTENDED tells the caller to sleep.
constexpr uint32_t kPureSpinRounds = 64;
// How long a front spins for a reply it did not have to ring for, whatever
// its window: a server thread is awake, so the reply is a few microseconds
// of work away unless the CPUs are contended (then the spin gives up as
// any spin does). Without it a front whose window collapsed (contended
// hold-off) sleeps and pays a cold wake-up for a reply that came at once.
constexpr uint64_t kAwakeServerSpinNs = 30'000;
constexpr uint64_t kContendedGapNs = 30'000;

template <typename Ready>
SpinResult spinFor(uint64_t windowNs, uint64_t startNs, int doorbellFd, Ready&& ready) {
  // No window, no spin: the caller re-checks after announcing its sleep.
  if (windowNs == 0) return SpinResult::EXPIRED;
  if (ready()) return SpinResult::READY;
  uint64_t lastHangUpCheck = startNs;
  uint64_t lastRound = startNs;
  for (uint32_t i = 1;; i++) {
    if (ready()) return SpinResult::READY;
    if (i < kPureSpinRounds) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      if (i % 16 != 0) continue;
    } else {
      sched_yield();
    }
    uint64_t now = monotonicNowNs();
    if (now - lastRound > kContendedGapNs) {
      if (ready()) return SpinResult::READY;
      // A caller that spins again at once after CONTENDED (a hinted poll)
      // starts a new spin each time; on a loaded host each may end here
      // before its first 1 ms hang-up check below, so check now too.
      return doorbellHungUp(doorbellFd) ? SpinResult::HUNG_UP : SpinResult::CONTENDED;
    }
    lastRound = now;
    if (now - startNs >= windowNs) return SpinResult::EXPIRED;
    if (now - lastHangUpCheck >= 1'000'000) {
      lastHangUpCheck = now;
      if (doorbellHungUp(doorbellFd)) return SpinResult::HUNG_UP;
    }
  }
}

}  // namespace vlapic::channel
