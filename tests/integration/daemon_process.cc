// SPDX-License-Identifier: MIT
#include "daemon_process.h"

#include <kj/debug.h>
#include <kj/io.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace vlapic::testing {

namespace {

bool canConnect(kj::StringPtr path) {
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) return false;
  memcpy(address.sun_path, path.cStr(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return ok;
}

kj::Array<char*> argv(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> args,
                      kj::Vector<kj::String>& storage) {
  storage.add(kj::heapString(binary));
  for (auto arg: args) storage.add(kj::heapString(arg));
  auto result = kj::heapArray<char*>(storage.size() + 1);
  for (size_t i = 0; i < storage.size(); i++) result[i] = const_cast<char*>(storage[i].cStr());
  result[storage.size()] = nullptr;
  return result;
}

}  // namespace

kj::String makeTempDir() {
  const char* base = getenv("TMPDIR");
  auto pattern = kj::str(base != nullptr && base[0] != '\0' ? base : "/tmp", "/vlapic-test-XXXXXX");
  if (mkdtemp(pattern.begin()) == nullptr) KJ_FAIL_SYSCALL("mkdtemp", errno, pattern);
  return pattern;
}

void removeTree(kj::StringPtr path) {
  nftw(path.cStr(), [](const char* p, const struct stat*, int, struct FTW*) { return remove(p); },
       16, FTW_DEPTH | FTW_PHYS);
}

DaemonProcess::DaemonProcess(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> extraArgs,
                             kj::StringPtr socketName)
    : dir(makeTempDir()),
      socket(socketName.startsWith("/") ? kj::str(socketName) : kj::str(dir, "/", socketName)),
      logPath(kj::str(dir, "/vlapicd.log")) {
  kj::Vector<kj::StringPtr> args;
  args.add("--socket");
  args.add(socket);
  args.addAll(extraArgs);
  kj::Vector<kj::String> storage;
  auto arguments = argv(binary, args, storage);
  int logFd;
  KJ_SYSCALL(logFd = open(logPath.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  KJ_SYSCALL(child = fork());
  if (child == 0) {
    dup2(logFd, STDERR_FILENO);
    dup2(logFd, STDOUT_FILENO);
    execv(arguments[0], arguments.begin());
    _exit(127);
  }
  close(logFd);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!canConnect(socket)) {
    if (!running() || std::chrono::steady_clock::now() > deadline) {
      KJ_FAIL_ASSERT("vlapicd did not start", binary, log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

DaemonProcess::~DaemonProcess() noexcept(false) {
  if (running()) {
    kill(child, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (running() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (running()) {
      kill(child, SIGKILL);
      int status;
      waitpid(child, &status, 0);
    }
  }
  removeTree(dir);
}

bool DaemonProcess::running() {
  if (exitStatus != nullptr) return false;
  int status;
  pid_t result = waitpid(child, &status, WNOHANG);
  if (result == child) {
    exitStatus = status;
    return false;
  }
  return true;
}

int DaemonProcess::stop() {
  if (running()) {
    kill(child, SIGTERM);
    int status;
    KJ_SYSCALL(waitpid(child, &status, 0));
    exitStatus = status;
  }
  return KJ_ASSERT_NONNULL(exitStatus);
}

kj::String DaemonProcess::log() const {
  int fd = open(logPath.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return kj::str("(no log)");
  kj::FdInputStream input{kj::AutoCloseFd(fd)};
  auto bytes = input.readAllBytes();
  return kj::heapString(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

ToolResult runTool(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> args) {
  kj::Vector<kj::String> storage;
  auto arguments = argv(binary, args, storage);
  int fds[2];
  KJ_SYSCALL(pipe2(fds, O_CLOEXEC));
  pid_t pid;
  KJ_SYSCALL(pid = fork());
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    execv(arguments[0], arguments.begin());
    _exit(127);
  }
  close(fds[1]);
  kj::FdInputStream input{kj::AutoCloseFd(fds[0])};
  auto bytes = input.readAllBytes();
  int status;
  KJ_SYSCALL(waitpid(pid, &status, 0));
  return ToolResult{WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                    kj::heapString(reinterpret_cast<const char*>(bytes.begin()), bytes.size())};
}

SeparatedToolResult runToolSeparated(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> args) {
  kj::Vector<kj::String> storage;
  auto arguments = argv(binary, args, storage);
  int fds[2];
  KJ_SYSCALL(pipe2(fds, O_CLOEXEC));
  // stderr goes to an anonymous file, read after the child exits: reading
  // two pipes one after the other could block on a full one.
  int errFd;
  KJ_SYSCALL(errFd = memfd_create("tool-stderr", MFD_CLOEXEC));
  kj::AutoCloseFd errOwned(errFd);
  pid_t pid;
  KJ_SYSCALL(pid = fork());
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(errFd, STDERR_FILENO);
    execv(arguments[0], arguments.begin());
    _exit(127);
  }
  close(fds[1]);
  kj::FdInputStream input{kj::AutoCloseFd(fds[0])};
  auto out = input.readAllBytes();
  int status;
  KJ_SYSCALL(waitpid(pid, &status, 0));
  KJ_SYSCALL(lseek(errFd, 0, SEEK_SET));
  kj::FdInputStream errInput{kj::mv(errOwned)};
  auto err = errInput.readAllBytes();
  return SeparatedToolResult{WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                             kj::heapString(reinterpret_cast<const char*>(out.begin()), out.size()),
                             kj::heapString(reinterpret_cast<const char*>(err.begin()), err.size())};
}

}  // namespace vlapic::testing
