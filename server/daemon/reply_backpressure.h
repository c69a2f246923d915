// SPDX-License-Identifier: MIT
// A front that sends calls and never reads the replies would make vlapicd
// queue replies (and keep their answers) without bound: capnp 0.9's flow
// limit counts only calls not yet answered, and vlapicd answers at once.
// This stream sits under a connection's RPC network and stops reading the
// front's requests while that network's unsent replies exceed a limit, so
// the front's own writes block in the kernel's socket buffer instead. A
// front that reads its replies never notices it.
#pragma once

#include <kj/async-io.h>
#include <kj/function.h>

namespace vlapic::daemon {

class ReplyBackpressureStream final: public kj::AsyncCapabilityStream,
                                     private kj::TaskSet::ErrorHandler {
public:
  // `repliesBacklogged()` says whether reading must wait (queried before
  // each read and after each write completes).
  ReplyBackpressureStream(kj::Own<kj::AsyncCapabilityStream> inner,
                          kj::Function<bool()> repliesBacklogged);

  // Reads wait while replies are backlogged.
  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override;
  kj::Promise<ReadResult> tryReadWithFds(void* buffer, size_t minBytes, size_t maxBytes,
                                         kj::AutoCloseFd* fdBuffer, size_t maxFds) override;
  kj::Promise<ReadResult> tryReadWithStreams(void* buffer, size_t minBytes, size_t maxBytes,
                                             kj::Own<kj::AsyncCapabilityStream>* streamBuffer,
                                             size_t maxStreams) override;

  // Writes pass through; their completion may let a waiting read go on.
  kj::Promise<void> write(const void* buffer, size_t size) override;
  kj::Promise<void> write(kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces) override;
  kj::Promise<void> writeWithFds(kj::ArrayPtr<const kj::byte> data,
                                 kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> moreData,
                                 kj::ArrayPtr<const int> fds) override;
  kj::Promise<void> writeWithStreams(kj::ArrayPtr<const kj::byte> data,
                                     kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> moreData,
                                     kj::Array<kj::Own<kj::AsyncCapabilityStream>> streams) override;

  kj::Promise<void> whenWriteDisconnected() override { return inner->whenWriteDisconnected(); }
  void shutdownWrite() override { inner->shutdownWrite(); }
  void abortRead() override { inner->abortRead(); }
  void getsockopt(int level, int option, void* value, kj::uint* length) override {
    inner->getsockopt(level, option, value, length);
  }
  void setsockopt(int level, int option, const void* value, kj::uint length) override {
    inner->setsockopt(level, option, value, length);
  }
  void getsockname(struct sockaddr* addr, kj::uint* length) override { inner->getsockname(addr, length); }
  void getpeername(struct sockaddr* addr, kj::uint* length) override { inner->getpeername(addr, length); }
  kj::Maybe<int> getFd() const override { return inner->getFd(); }

  // Reads that had to wait, since the connection began.
  uint64_t pausedReads() const { return pauses; }

private:
  kj::Own<kj::AsyncCapabilityStream> inner;
  kj::Function<bool()> repliesBacklogged;
  kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> waitingRead;
  uint64_t pauses = 0;
  kj::TaskSet rechecks;   // last: cancelled first

  void taskFailed(kj::Exception&& exception) override { (void)exception; }

  kj::Promise<void> whenReadable();
  kj::Promise<void> afterWrite(kj::Promise<void> written);
};

}  // namespace vlapic::daemon
