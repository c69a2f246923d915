// SPDX-License-Identifier: MIT
// sandbox-probe: a small process that confines itself exactly as vlapicd
// does (server/daemon/sandbox.cc's applySandbox, linked in) and then does
// one thing named on its command line, so tests can check from outside what
// the confinement allows and what kills the process.
//
// Usage: sandbox-probe ACTION
//   sanitizer-build  print 1 if built with ASan (the filter is wider), else 0
//   serve            the work vlapicd does once confined: kj event loop,
//                    accepting a connection and talking over it, timers,
//                    a thread, memfd shared memory, an exception; exit 0
//   wait             print "confined" and block until stdin closes; exit 0
//   unlink           unlink() must fail with EPERM (not kill); exit 0
//   open-read open-write socket-unix socket-inet execve fork ptrace
//   mmap-exec mprotect-exec setuid-root kill-other chmod
//                    a forbidden call: the process must die of SIGSYS
#include "server/daemon/sandbox.h"

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>
#include <kj/thread.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace vlapic {
namespace {

bool sanitizerBuild() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

// A listening socket at an abstract address (nothing on the filesystem to
// clean up after confinement) and a client already connected to it, as a
// front would be.
struct Sockets {
  kj::AutoCloseFd listener;
  kj::AutoCloseFd client;
};

Sockets openSockets() {
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  auto name = kj::str("vlapic-sandbox-probe-", getpid());
  memcpy(address.sun_path + 1, name.begin(), name.size());
  socklen_t length = offsetof(struct sockaddr_un, sun_path) + 1 + name.size();
  int listener, client;
  KJ_SYSCALL(listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  Sockets sockets{kj::AutoCloseFd(listener), kj::AutoCloseFd()};
  KJ_SYSCALL(bind(listener, reinterpret_cast<sockaddr*>(&address), length));
  KJ_SYSCALL(listen(listener, 4));
  KJ_SYSCALL(client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockets.client = kj::AutoCloseFd(client);
  KJ_SYSCALL(connect(client, reinterpret_cast<sockaddr*>(&address), length));
  return sockets;
}

// What vlapicd does all day, done after confinement: every step must work.
int serve(kj::AsyncIoContext& io, Sockets& sockets) {
  auto listener = io.lowLevelProvider->wrapListenSocketFd(sockets.listener.get());
  auto connection = listener->accept().wait(io.waitScope);
  KJ_SYSCALL(write(sockets.client.get(), "ping", 4));
  char buffer[4];
  connection->read(buffer, 4).wait(io.waitScope);
  KJ_REQUIRE(memcmp(buffer, "ping", 4) == 0);
  connection->write("pong", 4).wait(io.waitScope);

  // A timer on the loop (timerfd / epoll).
  io.provider->getTimer().afterDelay(2 * kj::MILLISECONDS).wait(io.waitScope);

  // A thread sharing memfd memory with this one, as the channel does.
  int memfd;
  KJ_SYSCALL(memfd = memfd_create("probe", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  kj::AutoCloseFd ownedMemfd(memfd);
  KJ_SYSCALL(ftruncate(memfd, 4096));
  KJ_SYSCALL(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW));
  void* shared = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  KJ_REQUIRE(shared != MAP_FAILED, strerror(errno));
  {
    kj::Thread thread([shared]() { *static_cast<volatile int*>(shared) = 42; });
  }
  KJ_REQUIRE(*static_cast<volatile int*>(shared) == 42);
  munmap(shared, 4096);

  // A front's bad request becomes a kj exception with a stack trace.
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([]() { KJ_FAIL_REQUIRE("a hostile request"); })) {
    KJ_REQUIRE(e->getDescription().size() > 0);
  }
  printf("served\n");
  fflush(stdout);
  return 0;
}

int forbidden(kj::StringPtr action) {
  // Each of these must be killed by the filter before it returns.
  if (action == "open-read") {
    open("/proc/self/status", O_RDONLY);
  } else if (action == "open-write") {
    open("/tmp/vlapic-sandbox-probe", O_WRONLY | O_CREAT, 0600);
  } else if (action == "socket-unix") {
    socket(AF_UNIX, SOCK_STREAM, 0);
  } else if (action == "socket-inet") {
    socket(AF_INET, SOCK_STREAM, 0);
  } else if (action == "execve") {
    char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
    execv("/bin/true", argv);
  } else if (action == "fork") {
    if (fork() == 0) _exit(0);
  } else if (action == "ptrace") {
    ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
  } else if (action == "mmap-exec") {
    mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  } else if (action == "mprotect-exec") {
    void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(page, 4096, PROT_READ | PROT_EXEC);
  } else if (action == "setuid-root") {
    setuid(0);
  } else if (action == "kill-other") {
    kill(getppid(), 0);
  } else if (action == "chmod") {
    chmod("/tmp", 0777);
  } else {
    fprintf(stderr, "sandbox-probe: unknown action %s\n", action.cStr());
    return 2;
  }
  printf("survived %s\n", action.cStr());
  return 1;
}

int run(kj::StringPtr action) {
  if (action == "sanitizer-build") {
    printf("%d\n", sanitizerBuild() ? 1 : 0);
    return 0;
  }
  // Start-up as in vlapicd's main: the event loop and the sockets exist
  // before confinement.
  auto io = kj::setupAsyncIo();
  Sockets sockets = openSockets();
  SandboxOptions options;
  options.listenFd = sockets.listener.get();
  applySandbox(options);

  if (action == "serve") return serve(io, sockets);
  if (action == "wait") {
    printf("confined\n");
    fflush(stdout);
    char c;
    while (read(STDIN_FILENO, &c, 1) > 0) {}
    return 0;
  }
  if (action == "unlink") {
    int result = unlink("/tmp/vlapic-sandbox-probe-nonexistent");
    printf("unlink: %s\n", result < 0 ? strerrorname_np(errno) : "succeeded");
    return result < 0 && errno == EPERM ? 0 : 1;
  }
  return forbidden(action);
}

}  // namespace
}  // namespace vlapic

int main(int argc, char* argv[]) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s ACTION\n", argv[0]);
    return 2;
  }
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { exit(vlapic::run(argv[1])); })) {
    fprintf(stderr, "sandbox-probe: %s\n", kj::str(*e).cStr());
    return 3;
  }
  return 0;
}
