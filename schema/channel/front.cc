// SPDX-License-Identifier: MIT
// The front side of a channel: a synchronous call from a vCPU thread.
#include "schema/channel/shared-layout.h"
#include <kj/debug.h>
#include <atomic>
#include <climits>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>

namespace vlapic::channel {

struct ChannelFront::Impl {
  Impl(Options options, kj::AutoCloseFd doorbell, ChannelFds fds)
      : options(options), doorbell(kj::mv(doorbell)), attentionFd(kj::mv(fds.attention)),
        mapping(fds.memory), replyWindow(options.poll), attentionWindow(options.poll) {}

  Options options;
  kj::AutoCloseFd doorbell;
  kj::AutoCloseFd attentionFd;
  SharedMapping mapping;
  uint32_t lastSeq = 0;
  // Replies come microseconds after a request while the server is awake;
  // attention comes whenever the guest's next interrupt does. Separate
  // windows, so HLT parking does not shrink the window calls need.
  PollWindow replyWindow;
  PollWindow attentionWindow;
  // Written by the vCPU thread only, readable from any thread (stats()):
  // relaxed atomics, bumped without a locked instruction.
  struct Counter {
    std::atomic<uint64_t> value = 0;
    void bump() {
      value.store(value.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    uint64_t get() const { return value.load(std::memory_order_relaxed); }
  };
  Counter calls, pollHits, contended, sleeps;
  std::atomic<uint64_t> replyWindowNs = 0;
  capnp::word copy[kReplySlotBytes / sizeof(capnp::word)];

  // Polls then sleeps until ready(). Returns false on timeout; throws
  // DISCONNECTED when the server hung up. With `slowHitMeansContended`, a
  // spin that succeeded but took longer than kContendedGapNs counts as
  // contention: see call().
  template <typename Ready>
  bool waitFor(PollWindow& window, kj::Maybe<uint64_t> timeoutNs, bool slowHitMeansContended,
               uint64_t minSpinNs, Ready&& ready);
};

namespace {

[[noreturn]] void throwServerGone() {
  kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "vlapicd closed the channel"));
}

}  // namespace

template <typename Ready>
bool ChannelFront::Impl::waitFor(PollWindow& window, kj::Maybe<uint64_t> timeoutNs,
                                 bool slowHitMeansContended, uint64_t minSpinNs,
                                 Ready&& ready) {
  SharedChannel& shared = mapping.channel();
  uint64_t start = monotonicNowNs();
  uint64_t spin = kj::max(window.currentNs(), minSpinNs);
  KJ_IF_MAYBE(timeout, timeoutNs) {
    if (*timeout < spin) spin = *timeout;
  }
  switch (spinFor(spin, start, doorbell, ready)) {
    case SpinResult::READY:
      pollHits.bump();
      if (slowHitMeansContended && monotonicNowNs() - start > kContendedGapNs) {
        contended.bump();
        window.onContended();
      } else {
        window.onPollHit();
      }
      return true;
    case SpinResult::HUNG_UP:
      throwServerGone();
    case SpinResult::CONTENDED:
      contended.bump();
      window.onContended();
      break;
    case SpinResult::EXPIRED:
      break;
  }

  for (;;) {
    int timeoutMs = -1;
    KJ_IF_MAYBE(timeout, timeoutNs) {
      uint64_t waited = monotonicNowNs() - start;
      if (waited >= *timeout) return false;
      uint64_t remainingMs = (*timeout - waited + 999'999) / 1'000'000;
      timeoutMs = static_cast<int>(kj::min(remainingMs, uint64_t(INT_MAX)));
    }
    shared.frontSleeping.store(1, std::memory_order_seq_cst);
    if (ready()) {
      shared.frontSleeping.store(0, std::memory_order_seq_cst);
      break;
    }
    sleeps.bump();
    DoorbellWait woken = sleepOnDoorbell(doorbell, -1, timeoutMs);
    shared.frontSleeping.store(0, std::memory_order_seq_cst);
    // A reply written just before the server died still counts.
    if (ready()) break;
    if (woken == DoorbellWait::HUNG_UP) throwServerGone();
  }
  window.onSlept(monotonicNowNs() - start);
  return true;
}

kj::Own<ChannelFront> ChannelFront::connect(kj::AutoCloseFd channelFd, Options options) {
  ChannelFds fds = receiveChannelMemory(channelFd);
  auto impl = kj::heap<Impl>(options, kj::mv(channelFd), kj::mv(fds));
  SharedChannel& shared = impl->mapping.channel();
  KJ_REQUIRE(shared.magic == kChannelMagic && shared.version == kLayoutVersion &&
                 shared.requestSlotBytes == kRequestSlotBytes &&
                 shared.replySlotBytes == kReplySlotBytes && shared.sharedBytes == kSharedBytes,
             "vlapic channel of an unknown layout", shared.magic, shared.version);
  impl->lastSeq = shared.requestSeq.load(std::memory_order_relaxed);
  return kj::heap<ChannelFront>(kj::mv(impl));
}

ChannelFront::ChannelFront(kj::Own<Impl> impl) : impl(kj::mv(impl)) {}
ChannelFront::~ChannelFront() noexcept(false) {
  // Hang up the doorbell socket itself, not just this fd: other copies of
  // it can outlive this one for a while (the one the capnp message arrived
  // with, and vlapicd's own until the front's release of the VcpuChannel
  // capability reaches it, which capnp may send after the front's next
  // call). shutdown() ends the socket for every copy, so vlapicd sees the
  // hang-up now and a channel opened right after this one is not refused.
  if (impl.get() != nullptr) (void)shutdown(impl->doorbell, SHUT_RDWR);
}

Reply ChannelFront::call(const Request& request) {
  SharedChannel& shared = impl->mapping.channel();
  // Everything queued before this call comes back in its reply.
  shared.attention.store(0, std::memory_order_seq_cst);
  uint32_t seq = ++impl->lastSeq;
  size_t bytes = encodeRequest(request, kj::arrayPtr(shared.requestSlot, kRequestSlotBytes));
  shared.requestBytes.store(static_cast<uint32_t>(bytes), std::memory_order_relaxed);
  shared.requestSeq.store(seq, std::memory_order_seq_cst);
  // The doorbell only for a sleeping server that nobody polls for (a
  // serveOnCaller() poller serves what it sees, see shared-layout.h).
  bool serverAwake = shared.serverSleeping.load(std::memory_order_seq_cst) == 0 ||
                     shared.callerPolling.load(std::memory_order_seq_cst) != 0;
  if (!serverAwake) ringDoorbell(impl->doorbell);
  impl->calls.bump();

  kj::Maybe<uint64_t> timeout;
  if (impl->options.replyTimeoutNs != 0) timeout = impl->options.replyTimeoutNs;
  // A reply is a few microseconds of server work away when both sides have
  // a CPU; one that took longer to arrive while spinning means the CPUs
  // are shared (seen here: ~30 us per call spinning vs ~12 us sleeping on
  // an overloaded host), so the front stops spinning for a while. But not
  // for a request an awake server took up: that reply comes at once, and
  // sleeping for it would cost a cold wake-up (kAwakeServerSpinNs).
  bool replied = impl->waitFor(impl->replyWindow, timeout, true,
                               serverAwake && impl->options.poll.adaptive ? kAwakeServerSpinNs : 0,
                               [&]() {
    return shared.replySeq.load(std::memory_order_acquire) == seq;
  });
  impl->replyWindowNs.store(impl->replyWindow.currentNs(), std::memory_order_relaxed);
  if (!replied) {
    kj::throwFatalException(KJ_EXCEPTION(DISCONNECTED, "vlapicd did not reply in time"));
  }

  uint32_t declared = shared.replyBytes.load(std::memory_order_relaxed);
  auto copied = copyOutOfSlot(shared.replySlot, kReplySlotBytes, declared, impl->copy);
  KJ_SWITCH_ONEOF(copied) {
    KJ_CASE_ONEOF(message, kj::ArrayPtr<const capnp::word>) {
      KJ_IF_MAYBE(reply, decodeReply(message)) {
        return *reply;
      }
    }
    KJ_CASE_ONEOF(why, Rejection) {
      KJ_FAIL_REQUIRE("vlapicd wrote a reply that does not fit its slot", rejectionName(why));
    }
  }
  KJ_FAIL_REQUIRE("vlapicd wrote a malformed reply");
}

bool ChannelFront::attentionPending() const {
  return impl->mapping.channel().attention.load(std::memory_order_acquire) != 0;
}

bool ChannelFront::waitForAttention(kj::Maybe<uint64_t> timeoutNs) {
  SharedChannel& shared = impl->mapping.channel();
  // The next interrupt can be any time away: a long spin is no sign.
  return impl->waitFor(impl->attentionWindow, timeoutNs, false, 0, [&]() {
    return shared.attention.load(std::memory_order_acquire) != 0;
  });
}

int ChannelFront::attentionFd() const { return impl->attentionFd; }

bool ChannelFront::consumeAttentionNotification() { return drainEventFd(impl->attentionFd); }

FrontStats ChannelFront::stats() const {
  FrontStats stats;
  stats.calls = impl->calls.get();
  stats.pollHits = impl->pollHits.get();
  stats.contended = impl->contended.get();
  stats.sleeps = impl->sleeps.get();
  stats.pollWindowNs = impl->replyWindowNs.load(std::memory_order_relaxed);
  return stats;
}

}  // namespace vlapic::channel
