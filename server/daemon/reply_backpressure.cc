// SPDX-License-Identifier: MIT
#include "reply_backpressure.h"

namespace vlapic::daemon {

ReplyBackpressureStream::ReplyBackpressureStream(kj::Own<kj::AsyncCapabilityStream> inner,
                                                 kj::Function<bool()> repliesBacklogged)
    : inner(kj::mv(inner)), repliesBacklogged(kj::mv(repliesBacklogged)), rechecks(*this) {}

kj::Promise<void> ReplyBackpressureStream::whenReadable() {
  if (!repliesBacklogged()) return kj::READY_NOW;
  pauses++;
  auto paf = kj::newPromiseAndFulfiller<void>();
  waitingRead = kj::mv(paf.fulfiller);
  return kj::mv(paf.promise);
}

kj::Promise<void> ReplyBackpressureStream::afterWrite(kj::Promise<void> written) {
  return written.then([this]() {
    // The network counts a reply as sent only in its own continuation of
    // this write, which runs after ours resolves: look again on a later
    // turn, outside this promise chain.
    if (waitingRead != nullptr) {
      rechecks.add(kj::evalLater([this]() {
        KJ_IF_MAYBE(fulfiller, waitingRead) {
          if (!repliesBacklogged()) {
            (*fulfiller)->fulfill();
            waitingRead = nullptr;
          }
        }
      }));
    }
  });
}

kj::Promise<size_t> ReplyBackpressureStream::tryRead(void* buffer, size_t minBytes,
                                                     size_t maxBytes) {
  return whenReadable().then([this, buffer, minBytes, maxBytes]() {
    return inner->tryRead(buffer, minBytes, maxBytes);
  });
}

kj::Promise<kj::AsyncCapabilityStream::ReadResult> ReplyBackpressureStream::tryReadWithFds(
    void* buffer, size_t minBytes, size_t maxBytes, kj::AutoCloseFd* fdBuffer, size_t maxFds) {
  return whenReadable().then([this, buffer, minBytes, maxBytes, fdBuffer, maxFds]() {
    return inner->tryReadWithFds(buffer, minBytes, maxBytes, fdBuffer, maxFds);
  });
}

kj::Promise<kj::AsyncCapabilityStream::ReadResult> ReplyBackpressureStream::tryReadWithStreams(
    void* buffer, size_t minBytes, size_t maxBytes,
    kj::Own<kj::AsyncCapabilityStream>* streamBuffer, size_t maxStreams) {
  return whenReadable().then([this, buffer, minBytes, maxBytes, streamBuffer, maxStreams]() {
    return inner->tryReadWithStreams(buffer, minBytes, maxBytes, streamBuffer, maxStreams);
  });
}

kj::Promise<void> ReplyBackpressureStream::write(const void* buffer, size_t size) {
  return afterWrite(inner->write(buffer, size));
}

kj::Promise<void> ReplyBackpressureStream::write(
    kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) {
  return afterWrite(inner->write(pieces));
}

kj::Promise<void> ReplyBackpressureStream::writeWithFds(
    kj::ArrayPtr<const kj::byte> data, kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> moreData,
    kj::ArrayPtr<const int> fds) {
  return afterWrite(inner->writeWithFds(data, moreData, fds));
}

kj::Promise<void> ReplyBackpressureStream::writeWithStreams(
    kj::ArrayPtr<const kj::byte> data, kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> moreData,
    kj::Array<kj::Own<kj::AsyncCapabilityStream>> streams) {
  return afterWrite(inner->writeWithStreams(data, moreData, kj::mv(streams)));
}

}  // namespace vlapic::daemon
