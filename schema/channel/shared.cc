// SPDX-License-Identifier: MIT
// The channel's shared memory, doorbell and polling window.
#include "schema/channel/shared-layout.h"
#include <kj/debug.h>
#include <kj/vector.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <ctime>

namespace vlapic::channel {

uint64_t monotonicNowNs() {
  struct timespec ts;
  KJ_SYSCALL(clock_gettime(CLOCK_MONOTONIC, &ts));
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

void PollWindow::onSlept(uint64_t waitedNs) {
  if (!policy.adaptive) return;
  if (holdoff > 0) {
    holdoff--;
    return;
  }
  if (waitedNs <= policy.maxNs) {
    // A longer spin would have caught this one: grow.
    if (window < policy.maxNs) {
      window = window < policy.startNs ? policy.startNs : window * 2;
      if (window > policy.maxNs) window = policy.maxNs;
    }
  } else {
    // The wait was long: spinning would only have burnt CPU.
    window /= 2;
    if (window < policy.startNs) window = 0;
  }
}

SharedMapping::SharedMapping(int memfd) {
  void* mapped = mmap(nullptr, kSharedBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mapped == MAP_FAILED) {
    KJ_FAIL_SYSCALL("mmap(channel memfd)", errno);
  }
  shared = static_cast<SharedChannel*>(mapped);
}

SharedMapping::~SharedMapping() noexcept(false) {
  KJ_SYSCALL(munmap(shared, kSharedBytes));
}

void ringDoorbell(int fd) {
  kj::byte ring = 'D';
  ssize_t n;
  do {
    n = send(fd, &ring, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  // EAGAIN: the peer has unread rings already, so it will wake anyway.
  // EPIPE/ECONNRESET: the peer is gone; whoever waits notices the hang-up.
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EPIPE &&
      errno != ECONNRESET) {
    KJ_FAIL_SYSCALL("send(doorbell)", errno);
  }
}

namespace {

// Reads pending rings without blocking. Bounded, so a peer that floods the
// socket cannot keep us here; what is left wakes the next sleep at once.
// Returns false if the peer hung up.
bool drainDoorbell(int fd) {
  for (int i = 0; i < 64; i++) {
    kj::byte buffer[16];
    // No control buffer: any fds a hostile peer attached are discarded by
    // the kernel.
    ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n > 0) continue;
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    if (errno == ECONNRESET) return false;
    KJ_FAIL_SYSCALL("recv(doorbell)", errno);
  }
  return true;
}

}  // namespace

DoorbellWait sleepOnDoorbell(int fd, int stopFd, int timeoutMs, int hintFd) {
  struct pollfd fds[3] = {{fd, POLLIN, 0}, {stopFd, POLLIN, 0}, {hintFd, POLLIN, 0}};
  int n;
  do {
    // A negative fd is ignored by poll(): stopFd and hintFd are optional.
    n = poll(fds, 3, timeoutMs);
  } while (n < 0 && errno == EINTR);
  if (n < 0) KJ_FAIL_SYSCALL("poll(doorbell)", errno);
  if (stopFd >= 0 && fds[1].revents != 0) return DoorbellWait::STOPPED;
  // The timerfd stays readable until read: drain it whatever else woke us.
  if (hintFd >= 0 && fds[2].revents != 0) drainEventFd(hintFd);
  if (n == 0) return DoorbellWait::TIMED_OUT;
  if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL)) return DoorbellWait::HUNG_UP;
  // Nothing on the doorbell and not stopped: the hint's timer woke us.
  if (fds[0].revents == 0) return DoorbellWait::HINTED;
  return drainDoorbell(fd) ? DoorbellWait::RUNG : DoorbellWait::HUNG_UP;
}

bool doorbellHungUp(int fd) {
  struct pollfd pfd = {fd, POLLIN, 0};
  int n;
  do {
    n = poll(&pfd, 1, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) KJ_FAIL_SYSCALL("poll(doorbell)", errno);
  return (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

void signalEventFd(int fd) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(fd, &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) KJ_FAIL_SYSCALL("write(eventfd)", errno);
}

bool drainEventFd(int fd) {
  uint64_t count;
  ssize_t n;
  do {
    n = read(fd, &count, sizeof(count));
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) KJ_FAIL_SYSCALL("read(eventfd)", errno);
  return n == sizeof(count);
}

namespace {

// A 1-byte message with room for kMaxFdsPerMessage fds, as both directions
// of the fd passing use it.
struct FdMessage {
  explicit FdMessage(kj::byte tag) : tag(tag) {
    iov = {&this->tag, 1};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  KJ_DISALLOW_COPY(FdMessage);

  kj::byte tag;
  struct iovec iov;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  struct msghdr msg = {};
};

}  // namespace

void sendFds(int socket, kj::ArrayPtr<const int> fds) {
  KJ_REQUIRE(fds.size() >= 1 && fds.size() <= kMaxFdsPerMessage);
  FdMessage message('M');
  struct msghdr& msg = message.msg;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  struct cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  memcpy(CMSG_DATA(cmsg), fds.begin(), sizeof(int) * fds.size());
  KJ_SYSCALL(sendmsg(socket, &msg, MSG_NOSIGNAL));
}

kj::Array<kj::AutoCloseFd> receiveFds(int socket, bool dontWait) {
  FdMessage message(0);
  struct msghdr& msg = message.msg;
  ssize_t n;
  KJ_SYSCALL(n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | (dontWait ? MSG_DONTWAIT : 0)));

  // Own every fd that arrived before judging, so none leaks.
  kj::Vector<kj::AutoCloseFd> received;
  for (struct cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr;
       cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
      size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        received.add(fd);
      }
    }
  }
  KJ_REQUIRE(n == 1 && message.tag == 'M' && !(msg.msg_flags & MSG_CTRUNC),
             "no file descriptors on the socket");
  return received.releaseAsArray();
}

void sendChannelMemory(int doorbellFd, int memfd, int attentionFd) {
  int fds[2] = {memfd, attentionFd};
  sendFds(doorbellFd, fds);
}

ChannelFds receiveChannelMemory(int doorbellFd) {
  kj::Array<kj::AutoCloseFd> received;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    received = receiveFds(doorbellFd, true);
  })) {
    KJ_FAIL_REQUIRE("not a vlapic channel: no channel memory on the socket",
                    exception->getDescription());
  }
  KJ_REQUIRE(received.size() == 2, "not a vlapic channel: wrong number of fds",
             received.size());
  ChannelFds channel{kj::mv(received[0]), kj::mv(received[1])};
  int memfd = channel.memory;

  struct stat st;
  KJ_SYSCALL(fstat(memfd, &st));
  KJ_REQUIRE(static_cast<size_t>(st.st_size) == kSharedBytes, "channel memory has the wrong size",
             st.st_size);
  int seals;
  KJ_SYSCALL(seals = fcntl(memfd, F_GET_SEALS));
  KJ_REQUIRE((seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
                 (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
             "channel memory is not sealed against resizing", seals);
  return channel;
}

}  // namespace vlapic::channel
