// SPDX-License-Identifier: MIT
// vlapicd: the vlapic server daemon. Parses flags, opens (or inherits) the
// listening Unix socket, confines itself (sandbox.h) and serves fronts on one
// kj event loop until SIGTERM or SIGINT.
#include "server.h"
#include "sandbox.h"
#include "schema/exit_status.h"
#include "schema/socket_path.h"

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/debug.h>
#include <kj/main.h>
#include <kj/vector.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef VLAPIC_VERSION
#define VLAPIC_VERSION "unknown"
#endif

namespace vlapic {
namespace {

constexpr int kSystemdFirstFd = 3;   // SD_LISTEN_FDS_START

// systemd socket activation (sd_listen_fds(3)): LISTEN_PID names us and
// LISTEN_FDS >= 1. The variables are consumed so children do not inherit them.
kj::Maybe<int> inheritedListenFd() {
  const char* pid = getenv("LISTEN_PID");
  const char* fds = getenv("LISTEN_FDS");
  if (pid == nullptr || fds == nullptr) return nullptr;
  bool forUs = strtol(pid, nullptr, 10) == getpid() && strtol(fds, nullptr, 10) >= 1;
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  if (!forUs) return nullptr;
  int flags;
  KJ_SYSCALL(flags = fcntl(kSystemdFirstFd, F_GETFD), "inherited listening fd 3 is not open");
  KJ_SYSCALL(fcntl(kSystemdFirstFd, F_SETFD, flags | FD_CLOEXEC));
  int acceptsConnections = 0;
  socklen_t length = sizeof(acceptsConnections);
  KJ_SYSCALL(getsockopt(kSystemdFirstFd, SOL_SOCKET, SO_ACCEPTCONN, &acceptsConnections, &length),
             "inherited fd 3 is not a socket");
  KJ_REQUIRE(acceptsConnections, "inherited fd 3 is not a listening socket");
  return kSystemdFirstFd;
}

void makeParentDirectory(kj::StringPtr path) {
  KJ_IF_MAYBE(slash, path.findLast('/')) {
    if (*slash == 0) return;
    auto parent = kj::heapString(path.slice(0, *slash));
    makeParentDirectory(parent);
    if (mkdir(parent.cStr(), 0755) < 0 && errno != EEXIST) {
      KJ_FAIL_SYSCALL("mkdir", errno, parent);
    }
  }
}

// Bind and listen on `path`. A stale socket file (nobody accepting) is
// replaced; a live one is an error, so two daemons never share a path.
int listenOnPath(kj::StringPtr path, mode_t mode) {
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  KJ_REQUIRE(path.size() < sizeof(address.sun_path), "socket path too long", path);
  memcpy(address.sun_path, path.cStr(), path.size() + 1);
  makeParentDirectory(path);

  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  kj::AutoCloseFd owned(fd);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) < 0) {
    int error = errno;
    KJ_REQUIRE(error == EADDRINUSE, "cannot bind the socket", path, strerror(error));
    int probe;
    KJ_SYSCALL(probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    kj::AutoCloseFd ownedProbe(probe);
    bool live = connect(probe, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    KJ_REQUIRE(!live, "another vlapicd is already serving this socket", path);
    KJ_SYSCALL(unlink(path.cStr()), "removing stale socket", path);
    KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), path);
  }
  KJ_SYSCALL(chmod(path.cStr(), mode), path);
  KJ_SYSCALL(listen(fd, 128));
  return owned.release();
}

// Resolves when `pipe` reaches end of file. With --exit-with-parent-fd only
// the parent holds the write end, and the kernel closes it when the parent
// exits however it exits (SIGKILL included); anything read is ignored. Not
// PR_SET_PDEATHSIG: dropping root in applySandbox() clears it (see
// client/kvm/spawn.cc for the other reasons). An end of file that came
// before we looked stays readable, so no getppid() check is needed.
kj::Promise<void> untilEndOfFile(kj::AsyncInputStream& pipe) {
  auto buffer = kj::heapArray<kj::byte>(64);
  auto read = pipe.tryRead(buffer.begin(), 1, buffer.size());
  return read.then([&pipe, buffer = kj::mv(buffer)](size_t bytes) -> kj::Promise<void> {
    if (bytes == 0) return kj::READY_NOW;
    return untilEndOfFile(pipe);
  });
}

// vlapicd's log on stderr: "<monotonic seconds> <LEVEL> <message>", one
// line per message (continuation lines indented). The monotonic clock is the
// one timer deadlines and `vlapicctl list` use, so log lines line up with
// them; journald adds wall-clock time itself. The source location kj passes
// along is left out: it means something to a developer with this tree, not
// to an operator. Installed by main() for the main thread and, through
// getThreadInitializer(), for every kj::Thread (the channel threads).
class LogSink final: public kj::ExceptionCallback {
public:
  void logMessage(kj::LogSeverity severity, const char*, int, int contextDepth, kj::String&& text) override {
    write(severity, kj::str(kj::repeat(' ', contextDepth * 2), text));
  }

  // Also for lines that are printed whatever the log level (start-up).
  void write(kj::LogSeverity severity, kj::StringPtr text) const {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    char stamp[32];
    snprintf(stamp, sizeof(stamp), "%llu.%06ld ", static_cast<unsigned long long>(now.tv_sec),
             now.tv_nsec / 1000);
    kj::Vector<char> line;
    line.addAll(kj::StringPtr(stamp));
    line.addAll(levelName(severity));
    line.add(' ');
    for (char c: text) {
      if (c == '\n') {
        line.addAll(kj::StringPtr("\n    "));
      } else {
        line.add(c);
      }
    }
    while (line.size() > 0 && (line.back() == ' ' || line.back() == '\n')) line.removeLast();
    line.add('\n');
    // One write per line: lines from several threads never interleave.
    // Nothing to do about a failed write to our own stderr.
    ssize_t ignored = ::write(STDERR_FILENO, line.begin(), line.size());
    (void)ignored;
  }

  kj::Function<void(kj::Function<void()>)> getThreadInitializer() override {
    return [this](kj::Function<void()> threadMain) {
      Forward forward(*this);
      threadMain();
    };
  }

private:
  class Forward final: public kj::ExceptionCallback {
  public:
    explicit Forward(const LogSink& sink): sink(sink) {}
    void logMessage(kj::LogSeverity severity, const char*, int, int contextDepth, kj::String&& text) override {
      sink.write(severity, kj::str(kj::repeat(' ', contextDepth * 2), text));
    }
  private:
    const LogSink& sink;
  };

  static kj::StringPtr levelName(kj::LogSeverity severity) {
    switch (severity) {
      case kj::LogSeverity::INFO: return "INFO";
      case kj::LogSeverity::WARNING: return "WARNING";
      case kj::LogSeverity::ERROR: return "ERROR";
      case kj::LogSeverity::FATAL: return "FATAL";
      case kj::LogSeverity::DBG: return "DEBUG";
    }
    return "LOG";
  }
};

class Vlapicd {
public:
  Vlapicd(ExitStatusContext& context, const LogSink& log): context(context), log(log) {}

  kj::MainFunc getMain() {
    // MainBuilder keeps StringPtrs: the help text must outlive it.
    socketHelp = kj::str(
        "Listen on the Unix socket <path> (created, with missing parent directories; a "
        "stale socket file is replaced). Default here: ", defaultSocketPath(),
        " ($XDG_RUNTIME_DIR/vlapic/vlapicd.sock, or /run/vlapic/vlapicd.sock when "
        "XDG_RUNTIME_DIR is unset). Whoever can connect to it has full rights over every VM "
        "(the admin capability), so keep it private.");
    description = kj::str(
        "Serves virtual x86 local APICs (xAPIC MMIO, x2APIC MSRs, timer, IPIs, INIT/SIPI) to "
        "hypervisor fronts over Cap'n Proto on a Unix socket. Each front creates VMs through "
        "the socket's bootstrap capability and drives each vCPU through its own capability; "
        "a front's VMs are released when it disconnects.\n"
        "With systemd socket activation (LISTEN_FDS/LISTEN_PID set for this process) it "
        "serves the inherited listening socket (fd 3) and ignores --socket.\n"
        "Stops cleanly on SIGTERM or SIGINT. Logging: warnings and errors by default; "
        "--verbose adds informational messages (connections, VMs created and released), "
        "--quiet keeps errors only. Each line is \"<seconds> <LEVEL> <message>\", the "
        "seconds on the host's monotonic clock (the one timer deadlines use), LEVEL one of "
        "INFO, WARNING, ERROR, FATAL.\n",
        exitStatusHelp(""), " A stop on SIGTERM or SIGINT is a success; failing to start "
        "(the socket cannot be bound, another vlapicd serves it) is 1.");
    return kj::MainBuilder(context, "vlapicd " VLAPIC_VERSION, description)
        .addOptionWithArg({"socket"}, KJ_BIND_METHOD(*this, setSocket), "<path>",
            socketHelp)
        .addOptionWithArg({"socket-mode"}, KJ_BIND_METHOD(*this, setSocketMode), "<octal>",
            "Permissions of the socket file. Default: 0600 (only vlapicd's user).")
        .addOptionWithArg({"hal"}, KJ_BIND_METHOD(*this, setHal), "<host|shared>",
            "Where APIC pages live. 'host' (default): private host memory. 'shared': memfd "
            "pages whose fds are passed to fronts over the socket, so a co-located front can "
            "map a vCPU's virtual-APIC page read-only.")
        .addOptionWithArg({"max-message-kib"}, KJ_BIND_METHOD(*this, setMaxMessage), "<KiB>",
            "Largest message accepted from a front; a larger one ends that front's "
            "connection. Default: 16384 (16 MiB).")
        .addOption({"sandbox"}, KJ_BIND_METHOD(*this, enableSandbox),
            "Confine vlapicd after start-up (seccomp filter, no new privileges, dropping "
            "root). The default.")
        .addOption({"no-sandbox"}, KJ_BIND_METHOD(*this, disableSandbox),
            "Do not confine vlapicd (debugging, profiling).")
        .addOptionWithArg({"user"}, KJ_BIND_METHOD(*this, setUser), "<name>",
            "When started as root, the unprivileged user to run as once confined.")
        .addOptionWithArg({"exit-with-parent-fd"}, KJ_BIND_METHOD(*this, setParentFd), "<fd>",
            "<fd> is the read end of a pipe whose write end only the parent process holds: "
            "stop (as on SIGTERM) when it reaches end of file, i.e. when the parent exits or "
            "is killed. A front that spawns a private vlapicd passes it (vlapic-kvm "
            "--spawn-vlapicd), so the daemon never outlives its front.")
        .addOption({"channel-timer-polls"}, KJ_BIND_METHOD(*this, enableChannelTimerPolls),
            "Keep a channel vCPU's channel thread polling across each of its timer expiries "
            "(from just before the deadline until the front's fetch, at most 150 us past it), "
            "so the fetch finds it awake. Costs a spinning thread per expiring timer: for "
            "hosts with a core to spare. Off by default: on a 2-core host it delayed the "
            "loop's own expiries more than it saved (server/daemon/README.md).")
        .addOption({'q', "quiet"}, KJ_BIND_METHOD(*this, setQuiet),
            "Log errors only; print nothing on start-up.")
        .callAfterParsing(KJ_BIND_METHOD(*this, run))
        .build();
  }

private:
  ExitStatusContext& context;
  const LogSink& log;
  kj::String socketHelp;
  kj::String description;
  kj::Maybe<kj::String> socketPath;
  mode_t socketMode = 0600;
  daemon::ServerOptions options;
  SandboxOptions sandbox;
  kj::Maybe<kj::String> user;
  kj::Maybe<int> parentFd;
  bool quiet = false;

  kj::MainBuilder::Validity setSocket(kj::StringPtr path) {
    if (path.size() == 0) return kj::str("--socket needs a path");
    if (path.size() >= sizeof(sockaddr_un::sun_path)) {
      return kj::str("--socket path is longer than a Unix socket path can be (",
                     sizeof(sockaddr_un::sun_path) - 1, " bytes)");
    }
    socketPath = kj::heapString(path);
    return true;
  }

  kj::MainBuilder::Validity setSocketMode(kj::StringPtr text) {
    char* end;
    long mode = strtol(text.cStr(), &end, 8);
    if (*end != '\0' || mode < 0 || mode > 0777) return kj::str("--socket-mode wants octal permissions like 0660");
    socketMode = mode;
    return true;
  }

  kj::MainBuilder::Validity setHal(kj::StringPtr kind) {
    if (kind == "host") {
      options.hal = daemon::HalKind::HOST;
    } else if (kind == "shared") {
      options.hal = daemon::HalKind::SHARED;
    } else {
      return kj::str("--hal must be 'host' or 'shared', not '", kind, "'");
    }
    return true;
  }

  kj::MainBuilder::Validity setMaxMessage(kj::StringPtr text) {
    char* end;
    unsigned long long kib = strtoull(text.cStr(), &end, 10);
    if (*end != '\0' || kib < 64 || kib > 1024 * 1024) {
      return kj::str("--max-message-kib must be a number between 64 and 1048576");
    }
    options.maxMessageWords = kib * 1024 / 8;
    return true;
  }

  kj::MainBuilder::Validity enableSandbox() { sandbox.enabled = true; return true; }
  kj::MainBuilder::Validity disableSandbox() { sandbox.enabled = false; return true; }
  kj::MainBuilder::Validity setUser(kj::StringPtr name) {
    user = kj::heapString(name);
    return true;
  }
  kj::MainBuilder::Validity setParentFd(kj::StringPtr text) {
    char* end;
    long fd = strtol(text.cStr(), &end, 10);
    if (text.size() == 0 || *end != '\0' || fd < 0 || fd > INT32_MAX) {
      return kj::str("--exit-with-parent-fd wants a file descriptor number");
    }
    if (fcntl(int(fd), F_GETFD) < 0) {
      return kj::str("--exit-with-parent-fd ", fd, " is not an open file descriptor");
    }
    parentFd = int(fd);
    return true;
  }
  kj::MainBuilder::Validity enableChannelTimerPolls() {
    options.channelThreadTimerPolls = true;
    return true;
  }
  kj::MainBuilder::Validity setQuiet() {
    kj::_::Debug::setLogLevel(kj::LogSeverity::ERROR);
    quiet = true;
    return true;
  }

  // A failure to start (or to keep serving) is logged like everything else
  // rather than as kj's "*** Uncaught exception ***" with a stack trace.
  kj::MainBuilder::Validity run() {
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([this]() { serve(); })) {
      log.write(kj::LogSeverity::ERROR, e->getDescription());
      context.exitWith(ExitStatus::FAILED, "");
    }
    return true;
  }

  void serve() {
    // Signals must be captured before the event loop exists (they are then
    // delivered through it rather than killing us mid-operation).
    kj::UnixEventPort::captureSignal(SIGTERM);
    kj::UnixEventPort::captureSignal(SIGINT);
    // A front that disconnects while we write to it must not kill us.
    signal(SIGPIPE, SIG_IGN);

    auto io = kj::setupAsyncIo();
    daemon::Server server(io.unixEventPort, options);

    int listenFd;
    kj::Maybe<kj::String> ownedPath;
    KJ_IF_MAYBE(fd, inheritedListenFd()) {
      listenFd = *fd;
      if (!quiet) log.write(kj::LogSeverity::INFO, "serving the socket-activated listening fd 3");
    } else {
      auto path = kj::mv(socketPath).orDefault(defaultSocketPath());
      listenFd = listenOnPath(path, socketMode);
      ownedPath = kj::mv(path);
    }
    auto listener = io.lowLevelProvider->wrapListenSocketFd(
        listenFd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
    // kj makes it close-on-exec and non-blocking.
    kj::Maybe<kj::Own<kj::AsyncInputStream>> parentPipe;
    KJ_IF_MAYBE(fd, parentFd) {
      parentPipe = io.lowLevelProvider->wrapInputFd(*fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
    }

    sandbox.listenFd = listenFd;
    KJ_IF_MAYBE(p, ownedPath) sandbox.socketPath = kj::StringPtr(*p);
    sandbox.sharedMemoryHal = options.hal == daemon::HalKind::SHARED;
    KJ_IF_MAYBE(u, user) sandbox.user = kj::StringPtr(*u);
#if VLAPIC_HAVE_SANDBOX
    applySandbox(sandbox);
#else
    if (sandbox.enabled) {
      log.write(kj::LogSeverity::WARNING, "built without sandbox support (server/daemon/sandbox.cc "
                                          "absent): running unconfined");
    }
#endif

    if (!quiet) {
      KJ_IF_MAYBE(p, ownedPath) {
        log.write(kj::LogSeverity::INFO, kj::str("serving on ", *p, " (hal ", server.halName(),
                                                 ", pid ", getpid(), ")"));
      }
    }

    auto stop = io.unixEventPort.onSignal(SIGTERM)
        .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
        .then([](siginfo_t info) { return kj::str(strsignal(info.si_signo)); });
    KJ_IF_MAYBE(pipe, parentPipe) {
      stop = stop.exclusiveJoin(untilEndOfFile(**pipe).then([]() { return kj::str("parent exited"); }));
    }
    auto serving = server.listen(*listener).then([]() { return kj::str("listening socket closed"); });
    kj::String why = serving.exclusiveJoin(kj::mv(stop)).wait(io.waitScope);
    KJ_LOG(INFO, "shutting down", why);

    KJ_IF_MAYBE(p, ownedPath) {
      // Best effort: a confined daemon may not be allowed to unlink; the next
      // start replaces a stale socket anyway.
      unlink(p->cStr());
    }
    if (!quiet) log.write(kj::LogSeverity::INFO, kj::str("stopped (", why, ")"));
  }
};

}  // namespace
}  // namespace vlapic

int main(int argc, char* argv[]) {
  vlapic::ExitStatusContext context(argv[0]);
  vlapic::spellHelpOption(argc, argv);
  // Before anything can log; it lives as long as the daemon.
  vlapic::LogSink log;
  vlapic::Vlapicd daemon(context, log);
  return kj::runMainAndExit(context, daemon.getMain(), argc, argv);
}
