// SPDX-License-Identifier: MIT
// Shared by the channel tests: a deterministic handler whose every reply can
// be predicted from the request alone (so either side, in either process,
// can check a round trip), and helpers to move a channel fd between
// processes the way vlapicd's socket does.
#pragma once

#include "schema/channel/shared-layout.h"
#include <kj/debug.h>
#include <sys/socket.h>
#include <cstring>
#include <ctime>

namespace vlapic::channel::test {

// Waits (bounded, 5 s) for a condition another thread or process makes
// true; for the few tests that must observe real time passing.
template <typename Condition>
bool eventually(Condition&& condition) {
  for (int i = 0; i < 5000; i++) {
    if (condition()) return true;
    struct timespec ms = {0, 1'000'000};
    nanosleep(&ms, nullptr);
  }
  return condition();
}

// The reply the test handler gives: a pure function of the request, with
// events whose number and content depend on it too.
inline Reply expectedReply(const Request& request) {
  Reply reply;
  switch (request.operation) {
    case Operation::MMIO_READ:
      reply = Reply::access(AccessResult::ok(request.gpa ^ request.size));
      break;
    case Operation::MMIO_WRITE:
      reply = Reply::access(AccessResult::ignored(AccessReason::READ_ONLY_REGISTER,
                                                  request.value + 1));
      break;
    case Operation::MSR_READ:
      reply = Reply::access(AccessResult::ok(uint64_t(request.msr) * 3));
      break;
    case Operation::MSR_WRITE:
      reply = Reply::access(AccessResult::gp(AccessReason::RESERVED_BITS));
      reply.value = request.value;
      break;
    case Operation::ACKNOWLEDGE:
      reply.inject = uint8_t(0x40);
      break;
    case Operation::SET_CR8:
      reply.cr8 = request.cr8;
      break;
    case Operation::FETCH_EVENTS:
      break;
  }
  if (request.injectIfPending) reply.inject = uint8_t(0x41);
  // Events: as many as the low 3 bits of the value, of varying kinds; a
  // vector only where the kind carries one.
  for (uint32_t i = 0; i < (request.value & 7); i++) {
    auto kind = static_cast<EventKind>(i);
    bool hasVector = kind == EventKind::DELIVERABLE || kind == EventKind::SIPI ||
                     kind == EventKind::EOI;
    reply.addEvent(Event{kind, hasVector ? static_cast<uint8_t>(request.value + i) : uint8_t(0),
                         i + 1});
  }
  return reply;
}

// A request that differs with `i`, cycling through every operation.
inline Request requestNumber(uint64_t i) {
  switch (i % 7) {
    case 0: return Request::mmioRead(0xFEE00000 + (i & 0xFF0), 4);
    case 1: return Request::mmioWrite(0xFEE00300, 4, i);
    case 2: return Request::msrRead(0x800 + uint32_t(i & 0xFF));
    case 3: return Request::msrWrite(0x830, i << 20 | i);
    case 4: return Request::acknowledge();
    case 5: return Request::setCr8(uint8_t(i & 15));
    default: {
      Request r = Request::fetchEvents();
      r.injectIfPending = true;
      return r;
    }
  }
}

// Moves one fd over a Unix socket (as the capnp socket would).
inline void sendFd(int socket, int fd) { sendFds(socket, kj::arrayPtr(&fd, 1)); }

inline kj::AutoCloseFd receiveFd(int socket) {
  auto fds = receiveFds(socket);
  KJ_REQUIRE(fds.size() == 1);
  return kj::mv(fds[0]);
}

// A front that talks to the shared memory directly, for hostile tests.
class RawFront {
public:
  explicit RawFront(kj::AutoCloseFd channelFd)
      : doorbell(kj::mv(channelFd)), fds(receiveChannelMemory(doorbell)),
        mapping(fds.memory) {}

  SharedChannel& shared() { return mapping.channel(); }
  int doorbellFd() { return doorbell; }
  int memoryFd() { return fds.memory; }

  // Publishes `bytes` of the request slot under sequence `seq` and waits
  // (sleeping on the doorbell) until the server answers that sequence.
  Reply publishAndWait(uint32_t seq, uint32_t bytes) {
    shared().requestBytes.store(bytes);
    shared().requestSeq.store(seq);
    ringDoorbell(doorbell);
    return waitForReply(seq);
  }

  Reply waitForReply(uint32_t seq) {
    for (;;) {
      shared().frontSleeping.store(1);
      if (shared().replySeq.load() == seq) break;
      KJ_ASSERT(sleepOnDoorbell(doorbell, -1, 5000) != DoorbellWait::HUNG_UP);
    }
    shared().frontSleeping.store(0);
    capnp::word copy[kReplySlotBytes / sizeof(capnp::word)];
    auto copied = copyOutOfSlot(shared().replySlot, kReplySlotBytes, shared().replyBytes.load(),
                                copy);
    auto& message = copied.get<kj::ArrayPtr<const capnp::word>>();
    KJ_IF_MAYBE(reply, decodeReply(message)) {
      return *reply;
    }
    KJ_FAIL_ASSERT("server wrote a malformed reply");
  }

private:
  kj::AutoCloseFd doorbell;
  ChannelFds fds;
  SharedMapping mapping;
};

}  // namespace vlapic::channel::test
