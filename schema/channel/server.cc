// SPDX-License-Identifier: MIT
// The server side of a channel: one thread per channel that polls, sleeps,
// copies each request out of shared memory, runs the handler and replies.
#include "schema/channel/shared-layout.h"
#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/thread.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <cerrno>
#include <mutex>
#include <ctime>

namespace vlapic::channel {

struct ChannelServer::Impl {
  Impl(Handler handler, OnClosed onClosed, Options options, int memfd,
       kj::AutoCloseFd doorbell, kj::AutoCloseFd attentionFd, kj::AutoCloseFd stopFd,
       kj::AutoCloseFd hintFd)
      : handler(kj::mv(handler)), onClosed(kj::mv(onClosed)), options(options),
        mapping(memfd), doorbell(kj::mv(doorbell)), attentionFd(kj::mv(attentionFd)),
        stopFd(kj::mv(stopFd)), hintFd(kj::mv(hintFd)) {}

  Handler handler;
  OnClosed onClosed;
  Options options;
  SharedMapping mapping;
  kj::AutoCloseFd doorbell;
  kj::AutoCloseFd attentionFd;  // eventfd: the front's event loop watches it
  kj::AutoCloseFd stopFd;  // eventfd: readable once the destructor runs
  // timerfd (CLOCK_MONOTONIC, absolute): expires at the latest hint's
  // start, waking the thread if it sleeps.
  kj::AutoCloseFd hintFd;
  std::atomic<bool> stopping = false;

  // One request at a time, on the channel thread or on a serveOnCaller()
  // caller: whoever holds `serving` and finds requestSeq moved past
  // lastServedSeq serves it. The last sequence number served is ours, not
  // shared memory's: the front cannot rewind it.
  std::mutex serving;
  std::atomic<uint32_t> lastServedSeq = 0;

  // The latest pollBetween() / cancelPoll(). `generation` counts the calls,
  // so the thread adopts each hint once; untilNs == 0 is a cancellation.
  struct Hint {
    uint64_t generation = 0;
    uint64_t fromNs = 0;
    uint64_t untilNs = 0;
    uint64_t givenNs = 0;   // when pollBetween() was called
  };
  kj::MutexGuarded<Hint> hint;
  // Its generation alone, for the spinning thread to see a change cheaply.
  std::atomic<uint64_t> hintGeneration = 0;
  // When raiseAttention() was last called (CLOCK_MONOTONIC ns): a hinted
  // poll ends once it has served a request that came after attention was
  // raised within the hint's time.
  std::atomic<uint64_t> lastRaiseNs = 0;

  // Statistics: written by the channel thread, read by anyone.
  std::atomic<uint64_t> requests = 0, rejected = 0, handlerFailures = 0;
  std::atomic<uint64_t> pollHits = 0, contended = 0, sleeps = 0, pollWindowNs = 0;
  std::atomic<uint64_t> hintedPolls = 0, hintedWakeups = 0, hintedRequests = 0,
                        hintedContended = 0, callerPolls = 0, callerRequests = 0;
  // serveOnCaller()'s back-off (only its one caller thread touches these):
  // after a poll that served nothing, that many calls return at once.
  uint32_t callerBackoff = 0, callerSkipsLeft = 0;
  std::atomic<uint64_t> callerSkipped = 0;
  std::atomic<bool> asleep = false, closed = false;
  std::atomic<bool> threadRunning = false;
  std::atomic<clockid_t> threadClock = 0;
  std::atomic<uint64_t> finalThreadCpuNs = 0;

  kj::Maybe<kj::Own<kj::Thread>> thread;

  void run();
  void setHint(uint64_t fromNs, uint64_t untilNs);
  bool requestWaiting(SharedChannel& shared) const {
    return shared.requestSeq.load(std::memory_order_acquire) !=
           lastServedSeq.load(std::memory_order_relaxed);
  }
  // Serves the waiting request, if any, under `serving`; bumps `counter`
  // (if not null) before the reply goes out.
  bool serveNext(SharedChannel& shared, kj::ArrayPtr<capnp::word> copy,
                 std::atomic<uint64_t>* counter);
  void serve(SharedChannel& shared, uint32_t seq, kj::ArrayPtr<capnp::word> copy);
  Reply runHandler(const Request& request);
};

namespace {

uint64_t cpuClockNs(clockid_t clock) {
  struct timespec ts;
  if (clock_gettime(clock, &ts) != 0) return 0;
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace

void ChannelServer::Impl::run() {
  clockid_t clock;
  KJ_ASSERT(pthread_getcpuclockid(pthread_self(), &clock) == 0);
  threadClock = clock;
  threadRunning = true;
  KJ_DEFER({
    finalThreadCpuNs = cpuClockNs(clock);
    threadRunning = false;
  });

  SharedChannel& shared = mapping.channel();
  PollWindow window(options.poll);
  pollWindowNs = window.currentNs();
  capnp::word copy[kRequestSlotBytes / sizeof(capnp::word)];

  auto requestOrStop = [&]() {
    return requestWaiting(shared) || stopping.load(std::memory_order_relaxed);
  };

  // The hinted poll in progress (see pollBetween in channel.h): its hint's
  // start and end. (Plain values, not a kj::Maybe: g++ 12 misreads the
  // Maybe's storage as uninitialized here.)
  bool hinted = false;
  uint64_t hintedFromNs = 0;
  uint64_t hintedUntilNs = 0;
  uint64_t adoptedGeneration = 0;   // the last hint taken up (or dropped)
  bool wokenByHint = false;

  while (!stopping.load(std::memory_order_relaxed)) {
    if (requestWaiting(shared)) {
      uint64_t raisedNs = lastRaiseNs.load(std::memory_order_seq_cst);
      // Counted before the reply goes out, so the front sees it counted.
      if (!serveNext(shared, copy, hinted ? &hintedRequests : nullptr)) continue;
      // Attention was raised within the hint's time before this request
      // came: its reply carried what the hint was for (the handler takes
      // every queued event). Events raised before the hint's start do not
      // count: the front's own fetch ahead of the deadline takes those.
      if (hinted && raisedNs >= hintedFromNs) hinted = false;
      continue;
    }

    uint64_t now = monotonicNowNs();
    {
      Hint latest = *hint.lockExclusive();
      if (latest.generation != adoptedGeneration) {
        if (latest.untilNs == 0) {
          adoptedGeneration = latest.generation;   // cancelled
          hinted = false;
        } else if (latest.fromNs <= now && now < latest.untilNs) {
          // Its time has come. A hint set while a poll runs (a periodic
          // timer's next period, set at the expiry) waits for its own time
          // and leaves that poll alone.
          adoptedGeneration = latest.generation;
          hinted = true;
          hintedFromNs = kj::max(latest.fromNs, latest.givenNs);
          hintedUntilNs = latest.untilNs;
          hintedPolls.fetch_add(1, std::memory_order_relaxed);
          if (wokenByHint) hintedWakeups.fetch_add(1, std::memory_order_relaxed);
        } else if (now >= latest.untilNs) {
          adoptedGeneration = latest.generation;   // its time passed unseen
        }
      }
      wokenByHint = false;
    }
    if (hinted) {
      if (now >= hintedUntilNs) {
        hinted = false;
      } else {
        // Poll to the end whatever the CPU does: the poll yields on each
        // round and is bounded by its end time, which the hint's giver
        // bounds. (Yielding is not free on a 2-core host: README.md,
        // "Timer expiries".) Nothing here feeds `window` (see channel.h).
        uint64_t generation = hintGeneration.load(std::memory_order_relaxed);
        auto readyOrNewHint = [&]() {
          return requestOrStop() ||
                 hintGeneration.load(std::memory_order_relaxed) != generation;
        };
        SpinResult result;
        for (;;) {
          result = spinFor(hintedUntilNs - now, now, doorbell, readyOrNewHint);
          if (result != SpinResult::CONTENDED) break;
          hintedContended.fetch_add(1, std::memory_order_relaxed);
          now = monotonicNowNs();
          if (now >= hintedUntilNs) break;
        }
        if (result == SpinResult::HUNG_UP) {
          closed = true;
          onClosed();
          return;
        }
        // A request or a new hint: the top of the loop takes it up. Else
        // the poll has run its time, and the normal wait follows.
        continue;
      }
    }

    uint64_t start = monotonicNowNs();
    switch (spinFor(window.currentNs(), start, doorbell, requestOrStop)) {
      case SpinResult::READY:
        pollHits.fetch_add(1, std::memory_order_relaxed);
        window.onPollHit();
        continue;
      case SpinResult::HUNG_UP:
        closed = true;
        onClosed();
        return;
      case SpinResult::CONTENDED:
        contended.fetch_add(1, std::memory_order_relaxed);
        window.onContended();
        pollWindowNs = window.currentNs();
        break;
      case SpinResult::EXPIRED:
        break;
    }

    // Sleep: announce it, then re-check (see SharedChannel's protocol).
    shared.serverSleeping.store(1, std::memory_order_seq_cst);
    DoorbellWait woken = DoorbellWait::RUNG;
    if (shared.requestSeq.load(std::memory_order_seq_cst) ==
        lastServedSeq.load(std::memory_order_relaxed)) {
      sleeps.fetch_add(1, std::memory_order_relaxed);
      asleep = true;
      woken = sleepOnDoorbell(doorbell, stopFd, -1, hintFd);
      asleep = false;
    }
    shared.serverSleeping.store(0, std::memory_order_seq_cst);
    switch (woken) {
      case DoorbellWait::HUNG_UP:
        closed = true;
        onClosed();
        return;
      case DoorbellWait::STOPPED:
        return;
      case DoorbellWait::HINTED:
        // Not a request: the wait says nothing about the front's pace.
        wokenByHint = true;
        continue;
      case DoorbellWait::RUNG:
      case DoorbellWait::TIMED_OUT:
        // Rung for a request that serveOnCaller() took meanwhile: this
        // thread's wait did not end in a request, so it teaches nothing.
        if (!requestWaiting(shared)) continue;
        break;
    }
    window.onSlept(monotonicNowNs() - start);
    pollWindowNs = window.currentNs();
  }
}

void ChannelServer::Impl::setHint(uint64_t fromNs, uint64_t untilNs) {
  auto locked = hint.lockExclusive();
  locked->generation++;
  locked->fromNs = fromNs;
  locked->untilNs = untilNs;
  locked->givenNs = monotonicNowNs();
  hintGeneration.store(locked->generation, std::memory_order_relaxed);
  // Under the lock, so that the timerfd always holds the latest hint's
  // start. 0 disarms it; a start already past expires at once.
  struct itimerspec spec = {};
  if (untilNs != 0) {
    uint64_t at = kj::max(fromNs, uint64_t(1));
    spec.it_value.tv_sec = static_cast<time_t>(at / 1'000'000'000u);
    spec.it_value.tv_nsec = static_cast<long>(at % 1'000'000'000u);
  }
  KJ_SYSCALL(timerfd_settime(hintFd, TFD_TIMER_ABSTIME, &spec, nullptr));
}

bool ChannelServer::Impl::serveNext(SharedChannel& shared, kj::ArrayPtr<capnp::word> copy,
                                    std::atomic<uint64_t>* counter) {
  std::lock_guard<std::mutex> guard(serving);
  uint32_t seq = shared.requestSeq.load(std::memory_order_acquire);
  // Whatever number the front wrote, one change is one request: a front
  // jumping its sequence gets one reply per change it makes, no more.
  if (seq == lastServedSeq.load(std::memory_order_relaxed)) return false;
  lastServedSeq.store(seq, std::memory_order_relaxed);
  if (counter != nullptr) counter->fetch_add(1, std::memory_order_relaxed);
  serve(shared, seq, copy);
  return true;
}

void ChannelServer::Impl::serve(SharedChannel& shared, uint32_t seq,
                                kj::ArrayPtr<capnp::word> copy) {
  // Read the declared size once; copyOutOfSlot checks it and copies.
  uint32_t declared = shared.requestBytes.load(std::memory_order_relaxed);
  Reply reply;
  auto copied = copyOutOfSlot(shared.requestSlot, kRequestSlotBytes, declared, copy);
  KJ_SWITCH_ONEOF(copied) {
    KJ_CASE_ONEOF(message, kj::ArrayPtr<const capnp::word>) {
      auto decoded = decodeRequest(message);
      KJ_SWITCH_ONEOF(decoded) {
        KJ_CASE_ONEOF(request, Request) {
          reply = runHandler(request);
        }
        KJ_CASE_ONEOF(why, Rejection) {
          rejected.fetch_add(1, std::memory_order_relaxed);
          reply = Reply::rejected(why);
        }
      }
    }
    KJ_CASE_ONEOF(why, Rejection) {
      rejected.fetch_add(1, std::memory_order_relaxed);
      reply = Reply::rejected(why);
    }
  }

  size_t bytes = encodeReply(reply, kj::arrayPtr(shared.replySlot, kReplySlotBytes));
  shared.replyBytes.store(static_cast<uint32_t>(bytes), std::memory_order_relaxed);
  // The seq_cst store also releases the slot and size to the front.
  shared.replySeq.store(seq, std::memory_order_seq_cst);
  requests.fetch_add(1, std::memory_order_relaxed);
  if (shared.frontSleeping.load(std::memory_order_seq_cst) != 0) ringDoorbell(doorbell);
}

Reply ChannelServer::Impl::runHandler(const Request& request) {
  Reply reply;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    reply = handler(request);
    // The front rejects a reply that breaks these; catch it here, where the
    // bug is, rather than as a "malformed reply" over there.
    KJ_REQUIRE(reply.cr8 <= 15, "handler returned a CR8 above 15", reply.cr8);
  })) {
    uint64_t failures = handlerFailures.fetch_add(1, std::memory_order_relaxed) + 1;
    // Log the 1st, 2nd, 4th, 8th... failure: visible, yet a front that keeps
    // provoking one cannot flood the log.
    if ((failures & (failures - 1)) == 0) {
      KJ_LOG(ERROR, "vlapic channel handler failed", failures, *exception);
    }
    return Reply::rejected(Rejection::HANDLER_FAILED);
  }
  return reply;
}

ChannelServer::Created ChannelServer::create(Handler handler, OnClosed onClosed,
                                             Options options) {
  int fd;
  KJ_SYSCALL(fd = memfd_create("vlapic-channel", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  kj::AutoCloseFd memfd(fd);
  KJ_SYSCALL(ftruncate(memfd, kSharedBytes));
  // Sealed: a front that could shrink the file would make the server's next
  // access to the mapping fault with SIGBUS.
  KJ_SYSCALL(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));

  int pair[2];
  KJ_SYSCALL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair));
  kj::AutoCloseFd serverEnd(pair[0]);
  kj::AutoCloseFd frontEnd(pair[1]);

  KJ_SYSCALL(fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  kj::AutoCloseFd stopFd(fd);
  KJ_SYSCALL(fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  kj::AutoCloseFd attentionFd(fd);
  KJ_SYSCALL(fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  kj::AutoCloseFd hintFd(fd);

  // The memory and the attention eventfd travel to the front ahead of any
  // doorbell ring, through the same socket, so the front needs one fd from
  // the capnp socket.
  sendChannelMemory(serverEnd, memfd, attentionFd);
  auto impl = kj::heap<Impl>(kj::mv(handler), kj::mv(onClosed), options, memfd,
                             kj::mv(serverEnd), kj::mv(attentionFd), kj::mv(stopFd),
                             kj::mv(hintFd));
  SharedChannel& shared = impl->mapping.channel();
  shared.magic = kChannelMagic;
  shared.version = kLayoutVersion;
  shared.requestSlotBytes = kRequestSlotBytes;
  shared.replySlotBytes = kReplySlotBytes;
  shared.sharedBytes = kSharedBytes;
  Impl& ref = *impl;
  auto server = kj::heap<ChannelServer>(kj::mv(impl));
  ref.thread = kj::heap<kj::Thread>([&ref]() { ref.run(); });
  return {kj::mv(server), kj::mv(frontEnd)};
}

ChannelServer::ChannelServer(kj::Own<Impl> impl) : impl(kj::mv(impl)) {}

ChannelServer::~ChannelServer() noexcept(false) {
  impl->stopping = true;
  signalEventFd(impl->stopFd);
  impl->thread = nullptr;  // joins
}

void ChannelServer::raiseAttention() {
  SharedChannel& shared = impl->mapping.channel();
  impl->lastRaiseNs.store(monotonicNowNs(), std::memory_order_seq_cst);
  // Only the 0 -> 1 edge notifies the eventfd: until the front's next call
  // clears the flag, it already knows.
  if (shared.attention.exchange(1, std::memory_order_seq_cst) == 0) {
    signalEventFd(impl->attentionFd);
  }
  if (shared.frontSleeping.load(std::memory_order_seq_cst) != 0) ringDoorbell(impl->doorbell);
}

void ChannelServer::pollBetween(uint64_t fromNs, uint64_t untilNs) {
  KJ_REQUIRE(untilNs != 0, "pollBetween needs an end time; cancelPoll() withdraws a hint");
  impl->setHint(fromNs, untilNs);
}

void ChannelServer::cancelPoll() { impl->setHint(0, 0); }

bool ChannelServer::serveOnCaller(uint64_t untilNs) {
  // A poll that serves nothing cost its caller the whole time: a front
  // whose vCPU was running guest code rather than halted and polling (its
  // fetch comes only after a kick), or one that never fetches. Back off as
  // the channel's own window does: after a miss, skip the next call, and
  // double that with each miss in a row, up to kMaxCallerBackoff calls; a
  // served request resets it. So a front that does not fetch promptly
  // costs the caller (vlapicd's loop, shared by every VM) at most one poll
  // per kMaxCallerBackoff expiries.
  if (impl->callerSkipsLeft > 0) {
    --impl->callerSkipsLeft;
    impl->callerSkipped.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  SharedChannel& shared = impl->mapping.channel();
  uint64_t now = monotonicNowNs();
  if (now >= untilNs) return false;
  impl->callerPolls.fetch_add(1, std::memory_order_relaxed);
  auto waiting = [&]() { return impl->requestWaiting(shared); };
  shared.callerPolling.store(1, std::memory_order_seq_cst);
  spinFor(untilNs - now, now, impl->doorbell, waiting);
  // Then re-check (shared-layout.h): a front that saw the flag set did not
  // ring, so what came is ours to serve.
  shared.callerPolling.store(0, std::memory_order_seq_cst);
  bool served = false;
  if (impl->requestWaiting(shared)) {
    capnp::word copy[kRequestSlotBytes / sizeof(capnp::word)];
    served = impl->serveNext(shared, copy, &impl->callerRequests);
  }
  if (served) {
    impl->callerBackoff = 0;
  } else {
    impl->callerBackoff =
        impl->callerBackoff == 0 ? 1 : kj::min(impl->callerBackoff * 2, kMaxCallerBackoff);
    impl->callerSkipsLeft = impl->callerBackoff;
  }
  return served;
}

bool ChannelServer::frontHungUp() const {
  return impl->closed.load(std::memory_order_acquire) || doorbellHungUp(impl->doorbell);
}

ServerStats ChannelServer::stats() const {
  ServerStats stats;
  stats.requests = impl->requests.load();
  stats.rejected = impl->rejected.load();
  stats.handlerFailures = impl->handlerFailures.load();
  stats.pollHits = impl->pollHits.load();
  stats.contended = impl->contended.load();
  stats.sleeps = impl->sleeps.load();
  stats.pollWindowNs = impl->pollWindowNs.load();
  stats.asleep = impl->asleep.load();
  stats.closed = impl->closed.load();
  stats.hintedPolls = impl->hintedPolls.load();
  stats.hintedWakeups = impl->hintedWakeups.load();
  stats.hintedRequests = impl->hintedRequests.load();
  stats.hintedContended = impl->hintedContended.load();
  stats.callerPolls = impl->callerPolls.load();
  stats.callerRequests = impl->callerRequests.load();
  stats.callerSkipped = impl->callerSkipped.load();
  uint64_t cpu = 0;
  if (impl->threadRunning.load()) cpu = cpuClockNs(impl->threadClock.load());
  stats.threadCpuNs = cpu != 0 ? cpu : impl->finalThreadCpuNs.load();
  return stats;
}

}  // namespace vlapic::channel
