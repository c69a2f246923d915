// SPDX-License-Identifier: MIT
#include "listen_socket.h"

#include <kj/debug.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace vlapic::daemon {
namespace {

constexpr int kSystemdFirstFd = 3;   // SD_LISTEN_FDS_START

StartupFailure unusable(kj::StringPtr path, kj::StringPtr what, int error) {
  return {kExitSocketUnusable, kj::str("cannot ", what, " ", path, ": ", strerror(error))};
}

// Creates the missing directories above `path`, parents first. Existing
// ones are left exactly as they are (owner, mode, sticky bit).
kj::Maybe<StartupFailure> makeParentDirectories(kj::StringPtr path) {
  KJ_IF_MAYBE(slash, path.findLast('/')) {
    if (*slash == 0) return nullptr;
    auto parent = kj::heapString(path.slice(0, *slash));
    KJ_IF_MAYBE(failure, makeParentDirectories(parent)) return kj::mv(*failure);
    if (mkdir(parent.cStr(), 0755) < 0 && errno != EEXIST) {
      return unusable(parent, "create the directory", errno);
    }
  }
  return nullptr;
}

}  // namespace

kj::OneOf<ListenSocket, StartupFailure> listenOnPath(kj::StringPtr path, mode_t mode,
                                                     Authority authority) {
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  if (path.size() == 0 || path.size() >= sizeof(address.sun_path)) {
    return StartupFailure{kExitSocketUnusable,
        kj::str("socket path '", path, "' is empty or longer than ",
                sizeof(address.sun_path) - 1, " bytes")};
  }
  memcpy(address.sun_path, path.cStr(), path.size() + 1);
  KJ_IF_MAYBE(failure, makeParentDirectories(path)) return kj::mv(*failure);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return unusable(path, "create a socket for", errno);
  kj::AutoCloseFd owned(fd);
  auto bindIt = [&]() {
    return bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  };
  if (bindIt() < 0) {
    int error = errno;
    if (error != EADDRINUSE) return unusable(path, "bind", error);
    // Something is there: a live server (refuse) or a stale file (replace).
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return unusable(path, "probe", errno);
    kj::AutoCloseFd ownedProbe(probe);
    if (connect(probe, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
      return StartupFailure{kExitSocketInUse,
          kj::str("another server is already answering on ", path, "; not replacing it")};
    }
    struct stat existing;
    if (lstat(path.cStr(), &existing) < 0) return unusable(path, "examine", errno);
    if (!S_ISSOCK(existing.st_mode)) {
      return StartupFailure{kExitSocketUnusable,
          kj::str(path, " exists and is not a socket; not replacing it")};
    }
    if (unlink(path.cStr()) < 0) return unusable(path, "remove the stale socket", errno);
    if (bindIt() < 0) return unusable(path, "bind", errno);
  }
  if (chmod(path.cStr(), mode) < 0) return unusable(path, "set the mode of", errno);
  struct stat bound;
  if (lstat(path.cStr(), &bound) < 0) return unusable(path, "examine", errno);
  if (listen(fd, 128) < 0) return unusable(path, "listen on", errno);
  return ListenSocket{owned.release(), authority, kj::heapString(path), bound.st_dev, bound.st_ino};
}

kj::OneOf<kj::Vector<ListenSocket>, StartupFailure> inheritedListenSockets() {
  kj::Vector<ListenSocket> result;
  const char* pid = getenv("LISTEN_PID");
  const char* fds = getenv("LISTEN_FDS");
  const char* names = getenv("LISTEN_FDNAMES");
  kj::String nameList = kj::heapString(names == nullptr ? "" : names);
  bool forUs = pid != nullptr && fds != nullptr && strtol(pid, nullptr, 10) == getpid();
  long count = fds == nullptr ? 0 : strtol(fds, nullptr, 10);
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  if (!forUs || count < 1) return kj::mv(result);

  kj::Vector<kj::String> nameOf;
  for (size_t start = 0; start <= nameList.size();) {
    size_t end = start;
    while (end < nameList.size() && nameList[end] != ':') end++;
    nameOf.add(kj::heapString(nameList.slice(start, end)));
    start = end + 1;
  }
  for (long i = 0; i < count; i++) {
    int fd = kSystemdFirstFd + int(i);
    int flags = fcntl(fd, F_GETFD);
    int accepts = 0;
    socklen_t length = sizeof(accepts);
    if (flags < 0 || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepts, &length) < 0 || !accepts) {
      return StartupFailure{kExitSocketUnusable,
          kj::str("inherited fd ", fd, " (socket activation) is not a listening socket")};
    }
    fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    bool admin = size_t(i) < nameOf.size() && nameOf[i] == "admin";
    result.add(ListenSocket{fd, admin ? Authority::OPERATOR : Authority::FRONT, nullptr});
  }
  return kj::mv(result);
}

}  // namespace vlapic::daemon
