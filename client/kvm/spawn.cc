// SPDX-License-Identifier: MIT
#include "client/kvm/spawn.h"

#include <kj/debug.h>
#include <kj/vector.h>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace vlapic::kvm {

namespace {

bool isExecutable(kj::StringPtr path) { return access(path.cStr(), X_OK) == 0; }

void sleepMs(int ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1'000'000L};
  nanosleep(&ts, nullptr);
}

constexpr kj::StringPtr kSpawnArguments[] = {"--hal"_kj, "shared"_kj};

}  // namespace

kj::ArrayPtr<const kj::StringPtr> spawnedVlapicdArguments() { return kSpawnArguments; }

kj::String SpawnedVlapicd::findBinary() {
  const char* fromEnv = getenv("VLAPICD");
  if (fromEnv != nullptr && *fromEnv != '\0') return kj::str(fromEnv);
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    kj::StringPtr selfPath(self);
    KJ_IF_MAYBE(slash, selfPath.findLast('/')) {
      auto dir = kj::str(selfPath.slice(0, *slash));
      auto inBuildTree = kj::str(dir, "/../../server/daemon/vlapicd");
      if (isExecutable(inBuildTree)) return inBuildTree;
      auto sibling = kj::str(dir, "/vlapicd");
      if (isExecutable(sibling)) return sibling;
    }
  }
  return kj::str("vlapicd");
}

SpawnedVlapicd::SpawnedVlapicd(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> arguments) {
  char pattern[] = "/tmp/vlapic-kvm.XXXXXX";
  KJ_REQUIRE(mkdtemp(pattern) != nullptr, "cannot create a directory for vlapicd's socket",
             strerror(errno));
  directory = kj::str(pattern);
  socket = kj::str(directory, "/vlapicd.sock");

  // vlapicd must end with us however we end, SIGKILL included. It watches
  // the read end of a pipe whose only write end we hold (O_CLOEXEC, so no
  // other program we start holds it): when we exit, the kernel closes it and
  // vlapicd reads end of file (vlapicd --exit-with-parent-fd). Not
  // PR_SET_PDEATHSIG: the kernel clears it when vlapicd drops from root to
  // an unprivileged user, it follows the thread that forked rather than the
  // process, and a parent that dies before the child sets it is missed. An
  // end of file cannot be missed: it stays readable.
  int pipeEnds[2];
  if (pipe2(pipeEnds, O_CLOEXEC) < 0) {
    int error = errno;
    KJ_FAIL_SYSCALL("pipe2", error);
  }
  kj::AutoCloseFd parentEnd(pipeEnds[0]);
  parentAlive = kj::AutoCloseFd(pipeEnds[1]);
  auto parentEndNumber = kj::str(parentEnd.get());

  // The argument vector is built before fork(): the child only execs.
  kj::Vector<const char*> argv;
  argv.add(binary.cStr());
  argv.add("--socket");
  argv.add(socket.cStr());
  argv.add("--exit-with-parent-fd");
  argv.add(parentEndNumber.cStr());
  for (auto& argument : arguments) argv.add(argument.cStr());
  argv.add(nullptr);

  pid = fork();
  if (pid < 0) {
    int error = errno;
    KJ_FAIL_SYSCALL("fork", error);
  }
  if (pid == 0) {
    // vlapicd's log goes to our stderr; the guest owns stdout.
    dup2(STDERR_FILENO, STDOUT_FILENO);
    // The read end survives the exec (in this process only); the write end
    // closes at it.
    fcntl(parentEnd.get(), F_SETFD, 0);
    execvp(binary.cStr(), const_cast<char* const*>(argv.begin()));
    fprintf(stderr, "vlapic-kvm: cannot execute %s: %s\n", binary.cStr(), strerror(errno));
    _exit(127);
  }
  // Wait up to 10 s for the listening socket to appear.
  for (int waited = 0; waited < 10000; waited += 10) {
    struct stat info;
    if (stat(socket.cStr(), &info) == 0) return;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1;
      KJ_FAIL_REQUIRE("vlapicd exited before listening", binary,
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    sleepMs(10);
  }
  KJ_FAIL_REQUIRE("vlapicd did not create its socket within 10 s", binary, socket);
}

SpawnedVlapicd::~SpawnedVlapicd() noexcept(false) {
  if (pid > 0) {
    kill(pid, SIGTERM);
    int status;
    for (int waited = 0; waited < 3000; waited += 10) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        break;
      }
      sleepMs(10);
    }
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
  }
  unlink(socket.cStr());
  rmdir(directory.cStr());
}

}  // namespace vlapic::kvm
