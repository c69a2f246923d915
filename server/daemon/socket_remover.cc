// SPDX-License-Identifier: MIT
#include "socket_remover.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <cerrno>
#include <csignal>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace vlapic::daemon {
namespace {

constexpr char kRemove = 'R';
constexpr char kDone = 'D';

struct OwnedFile {
  kj::String path;
  dev_t device;
  ino_t inode;
};

// The child's whole life: only async-signal-safe calls after fork().
[[noreturn]] void serveRemoval(int fd, kj::ArrayPtr<const OwnedFile> files) {
  // A Ctrl-C or a stop signal sent to the whole group must not end the
  // remover before the daemon asks it to remove.
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  char word = 0;
  ssize_t n;
  do {
    n = read(fd, &word, 1);
  } while (n < 0 && errno == EINTR);
  if (n == 1 && word == kRemove) {
    for (auto& file: files) {
      struct stat now;
      if (lstat(file.path.cStr(), &now) == 0 && now.st_dev == file.device &&
          now.st_ino == file.inode) {
        unlink(file.path.cStr());
      }
    }
    (void)!write(fd, &kDone, 1);
  }
  _exit(0);
}

}  // namespace

SocketRemover::SocketRemover(kj::ArrayPtr<const ListenSocket> sockets) {
  kj::Vector<OwnedFile> files;
  for (auto& socket: sockets) {
    KJ_IF_MAYBE(p, socket.path) files.add(OwnedFile{kj::heapString(*p), socket.device, socket.inode});
  }
  if (files.size() == 0) return;

  int pair[2];
  KJ_SYSCALL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair));
  KJ_SYSCALL(child = fork());
  if (child == 0) {
    // Keep only our end: the listening sockets must close with the daemon
    // (a front connecting to a stopped daemon is refused, not queued).
    if (pair[1] != 3) {
      dup2(pair[1], 3);
    }
    syscall(SYS_close_range, 4u, ~0u, 0u);
    serveRemoval(3, files);
  }
  close(pair[1]);
  channel = kj::AutoCloseFd(pair[0]);
}

SocketRemover::~SocketRemover() noexcept(false) {}

bool SocketRemover::remove() {
  if (channel.get() < 0) return true;   // nothing bound by path
  if (write(channel, &kRemove, 1) != 1) return false;
  struct pollfd ready = {channel.get(), POLLIN, 0};
  if (poll(&ready, 1, 2000) != 1) return false;
  char word = 0;
  return read(channel, &word, 1) == 1 && word == kDone;
}

}  // namespace vlapic::daemon
