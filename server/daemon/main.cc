// SPDX-License-Identifier: MIT
// vlapicd: the vlapic server daemon. Parses flags, opens (or inherits) the
// listening Unix socket, confines itself (sandbox.h) and serves fronts on one
// kj event loop until SIGTERM or SIGINT.
#include "listen_socket.h"
#include "server.h"
#include "sandbox.h"
#include "socket_remover.h"
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
// kj requires an ExceptionCallback to live on its thread's stack (within
// 64 KiB of the stack pointer). ASan's detect_stack_use_after_return (our
// sanitizer job's setting) moves an instrumented function's locals to a heap
// "fake stack", which fails that check at start-up; the two frames that
// hold a callback are left uninstrumented so their locals stay on the stack.
#define VLAPIC_CALLBACK_FRAME __attribute__((no_sanitize("address")))

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
    return [this](kj::Function<void()> threadMain) { runForwarding(*this, threadMain); };
  }

private:
  class Forward;
  VLAPIC_CALLBACK_FRAME static void runForwarding(const LogSink& sink,
                                                  kj::Function<void()>& threadMain);

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

void LogSink::runForwarding(const LogSink& sink, kj::Function<void()>& threadMain) {
  Forward forward(sink);
  threadMain();
}

class Vlapicd {
public:
  Vlapicd(ExitStatusContext& context, const LogSink& log): context(context), log(log) {}

  kj::MainFunc getMain() {
    // MainBuilder keeps StringPtrs: the help text must outlive it.
    socketHelp = kj::str(
        "Serve hypervisor fronts on the Unix socket <path> (created, with missing parent "
        "directories; a stale socket file is replaced, a live one is refused). Default here: ",
        defaultSocketPath(), " ($XDG_RUNTIME_DIR/vlapic/vlapicd.sock, or "
        "/run/vlapic/vlapicd.sock when XDG_RUNTIME_DIR is unset). A front reaches only the VMs "
        "it creates, within its quotas; give this socket to the hypervisors' group.");
    adminSocketHelp = kj::str(
        "Serve the operator (vlapicctl: every VM, dump, save, restore, release) on <path>. "
        "Default: beside the front socket, <name>-admin.sock for <name>.sock (here ",
        adminSocketPathFor(defaultSocketPath()), "). It is the only place the Admin "
        "capability is served: its permissions (--admin-socket-mode, default 0600) are the "
        "operator's right.");
    description = kj::str(
        "Serves virtual x86 local APICs (xAPIC MMIO, x2APIC MSRs, timer, IPIs, INIT/SIPI) to "
        "hypervisor fronts over Cap'n Proto on a Unix socket. Each front creates VMs through "
        "the socket's bootstrap capability and drives each vCPU through its own capability; "
        "a front's VMs are released when it disconnects.\n"
        "With systemd socket activation (LISTEN_FDS/LISTEN_PID set for this process) it "
        "serves the inherited listening socket (fd 3) and ignores --socket.\n"
        "Inherited sockets named 'admin' (LISTEN_FDNAMES, systemd's FileDescriptorName=admin) "
        "serve the operator, the others fronts.\n"
        "Stops cleanly on SIGTERM or SIGINT and removes the socket files it bound; SIGHUP is "
        "ignored (nothing to reload; the VMs' state must not die with a closing terminal).\n"
        "Logging: warnings and errors by default; "
        "--verbose adds informational messages (connections, VMs created and released), "
        "--quiet keeps errors only. Each line is \"<seconds> <LEVEL> <message>\", the "
        "seconds on the host's monotonic clock (the one timer deadlines use), LEVEL one of "
        "INFO, WARNING, ERROR, FATAL.\n",
        exitStatusHelp(", 3 a socket path cannot be created, bound or used, 4 another server "
                       "already answers on a socket path (never replaced), 5 confinement was "
                       "asked for and could not be applied"),
        " A stop on SIGTERM or SIGINT is a success.");
    return kj::MainBuilder(context, "vlapicd " VLAPIC_VERSION, description)
        .addOptionWithArg({"socket"}, KJ_BIND_METHOD(*this, setSocket), "<path>",
            socketHelp)
        .addOptionWithArg({"socket-mode"}, KJ_BIND_METHOD(*this, setSocketMode), "<octal>",
            "Permissions of the front socket file. Default: 0600 (only vlapicd's user).")
        .addOptionWithArg({"admin-socket"}, KJ_BIND_METHOD(*this, setAdminSocket), "<path>",
            adminSocketHelp)
        .addOptionWithArg({"admin-socket-mode"}, KJ_BIND_METHOD(*this, setAdminSocketMode),
            "<octal>", "Permissions of the operator socket file. Default: 0600.")
        .addOption({"no-admin-socket"}, KJ_BIND_METHOD(*this, disableAdminSocket),
            "Serve no operator socket (nobody can list or open VMs).")
        .addOptionWithArg({"max-vms-per-front"}, limit("--max-vms-per-front", options.frontLimits.vms), "<n>",
            "Quota: VMs one front connection may hold at once. Default: 64.")
        .addOptionWithArg({"max-vcpus-per-front"}, limit("--max-vcpus-per-front", options.frontLimits.vcpus), "<n>",
            "Quota: vCPUs (one 4 KiB page each) over all of one front's VMs. Default: 1024.")
        .addOptionWithArg({"vm-creates-per-front"}, limit("--vm-creates-per-front", options.frontLimits.vmCreatesPerSecond), "<n>",
            "Rate: VM creations a second one front connection may make, once its VM quota's worth is used; a faster creation waits its turn (up to a second ahead, then it is refused). Default: 100.")
        .addOptionWithArg({"max-channels-per-front"}, limit("--max-channels-per-front", options.frontLimits.channels), "<n>",
            "Quota: shared-memory channels (one server thread each) of one front's VMs. "
            "Default: 256.")
        .addOptionWithArg({"max-channels"}, limit("--max-channels", options.maxChannels), "<n>",
            "Channels on the whole server: its task limit must fit this plus a few threads "
            "(deploy/vlapicd.service). Default: 1024.")
        .addOptionWithArg({"max-connections"}, limit("--max-connections", options.maxConnections), "<n>",
            "Front connections at once; one more is closed at once. Default: 256.")
        .addOptionWithArg({"max-connections-per-uid"}, limit("--max-connections-per-uid", options.maxConnectionsPerUid), "<n>",
            "Front connections at once from one peer uid (SO_PEERCRED). Default: 128.")
        .addOptionWithArg({"max-vms"}, limit("--max-vms", options.maxVms), "<n>",
            "VMs on the whole server. Default: 4096.")
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
  kj::String adminSocketHelp;
  kj::String description;
  kj::Maybe<kj::String> socketPath;
  mode_t socketMode = 0600;
  kj::Maybe<kj::String> adminSocketPath;
  mode_t adminSocketMode = 0600;
  bool adminSocket = true;
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

  static kj::Maybe<mode_t> parseMode(kj::StringPtr text) {
    char* end;
    long mode = strtol(text.cStr(), &end, 8);
    if (text.size() == 0 || *end != '\0' || mode < 0 || mode > 0777) return nullptr;
    return mode_t(mode);
  }

  kj::MainBuilder::Validity setSocketMode(kj::StringPtr text) {
    KJ_IF_MAYBE(mode, parseMode(text)) {
      socketMode = *mode;
      return true;
    }
    return kj::str("--socket-mode wants octal permissions like 0660");
  }

  kj::MainBuilder::Validity setAdminSocket(kj::StringPtr path) {
    if (path.size() == 0 || path.size() >= sizeof(sockaddr_un::sun_path)) {
      return kj::str("--admin-socket needs a path shorter than ",
                     sizeof(sockaddr_un::sun_path), " bytes");
    }
    adminSocketPath = kj::heapString(path);
    return true;
  }

  kj::MainBuilder::Validity setAdminSocketMode(kj::StringPtr text) {
    KJ_IF_MAYBE(mode, parseMode(text)) {
      adminSocketMode = *mode;
      return true;
    }
    return kj::str("--admin-socket-mode wants octal permissions like 0600");
  }

  kj::MainBuilder::Validity disableAdminSocket() {
    adminSocket = false;
    return true;
  }

  // The parser of one numeric limit flag.
  kj::Function<kj::MainBuilder::Validity(kj::StringPtr)> limit(kj::StringPtr flag, uint32_t& target) {
    return [flag, &target](kj::StringPtr text) -> kj::MainBuilder::Validity {
      char* end;
      unsigned long long value = strtoull(text.cStr(), &end, 10);
      if (text.size() == 0 || *end != '\0' || value < 1 || value > UINT32_MAX) {
        return kj::str(flag, " wants a whole number from 1 to ", UINT32_MAX);
      }
      target = uint32_t(value);
      return true;
    };
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

  // Prints the one line a start-up failure gets and exits with its status.
  [[noreturn]] void fail(const daemon::StartupFailure& failure) {
    log.write(kj::LogSeverity::ERROR, failure.message);
    context.exitWith(ExitStatus(failure.exitStatus), "");
  }

  // The listening sockets: inherited from systemd, else bound on paths.
  kj::Vector<daemon::ListenSocket> openSockets() {
    kj::Vector<daemon::ListenSocket> sockets;
    KJ_SWITCH_ONEOF(daemon::inheritedListenSockets()) {
      KJ_CASE_ONEOF(inherited, kj::Vector<daemon::ListenSocket>) sockets = kj::mv(inherited);
      KJ_CASE_ONEOF(failure, daemon::StartupFailure) fail(failure);
    }
    bool activated = sockets.size() > 0;
    bool haveAdmin = false;
    for (auto& s: sockets) haveAdmin = haveAdmin || s.authority == daemon::Authority::OPERATOR;
    auto frontPath = socketPath.map([](kj::String& p) { return kj::heapString(p); })
                         .orDefault([]() { return defaultSocketPath(); });
    auto bind = [&](kj::StringPtr path, mode_t mode, daemon::Authority authority) {
      KJ_SWITCH_ONEOF(daemon::listenOnPath(path, mode, authority)) {
        KJ_CASE_ONEOF(socket, daemon::ListenSocket) sockets.add(kj::mv(socket));
        KJ_CASE_ONEOF(failure, daemon::StartupFailure) {
          for (auto& s: sockets) {
            close(s.fd);
            KJ_IF_MAYBE(p, s.path) unlink(p->cStr());   // bound a moment ago
          }
          fail(failure);
        }
      }
    };
    if (!activated) bind(frontPath, socketMode, daemon::Authority::FRONT);
    // With socket activation the operator socket is systemd's too (a second
    // unit, FileDescriptorName=admin); bind one only when asked by name.
    if (adminSocket && !haveAdmin && (!activated || adminSocketPath != nullptr)) {
      auto adminPath = adminSocketPath.map([](kj::String& p) { return kj::heapString(p); })
                           .orDefault([&]() { return adminSocketPathFor(frontPath); });
      bind(adminPath, adminSocketMode, daemon::Authority::OPERATOR);
    }
    return sockets;
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
    // A front that disconnects while we write to it must not kill us, nor
    // must a closing terminal: there is nothing to reload, and every VM's
    // LAPIC state lives here.
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);

    auto sockets = openSockets();
    // Forked now, while vlapicd may still touch the file system and before
    // any thread exists.
    daemon::SocketRemover remover(sockets);

    auto io = kj::setupAsyncIo();
    daemon::Server server(io.unixEventPort, options);

    kj::Vector<kj::Own<kj::ConnectionReceiver>> listeners;
    for (auto& socket: sockets) {
      // kj makes each close-on-exec and non-blocking, and owns it now.
      listeners.add(io.lowLevelProvider->wrapListenSocketFd(
          socket.fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP));
    }
    kj::Maybe<kj::Own<kj::AsyncInputStream>> parentPipe;
    KJ_IF_MAYBE(fd, parentFd) {
      parentPipe = io.lowLevelProvider->wrapInputFd(*fd, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
    }

    sandbox.listenFd = sockets[0].fd;
    KJ_IF_MAYBE(p, sockets[0].path) sandbox.socketPath = kj::StringPtr(*p);
    sandbox.sharedMemoryHal = options.hal == daemon::HalKind::SHARED;
    KJ_IF_MAYBE(u, user) sandbox.user = kj::StringPtr(*u);
#if VLAPIC_HAVE_SANDBOX
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { applySandbox(sandbox); })) {
      fail({daemon::kExitSandbox, kj::str("cannot confine the daemon: ", e->getDescription())});
    }
#else
    if (sandbox.enabled) {
      log.write(kj::LogSeverity::WARNING, "built without sandbox support (server/daemon/sandbox.cc "
                                          "absent): running unconfined");
    }
#endif

    if (!quiet) {
      for (auto& socket: sockets) {
        kj::StringPtr role = socket.authority == daemon::Authority::OPERATOR ? "the operator"
                                                                             : "fronts";
        KJ_IF_MAYBE(p, socket.path) {
          log.write(kj::LogSeverity::INFO, kj::str("serving on ", *p, " for ", role, " (hal ",
                                  server.halName(), ", pid ", getpid(), ")"));
        } else {
          log.write(kj::LogSeverity::INFO,
                    kj::str("serving on socket-activated fd ", socket.fd, " for ", role));
        }
      }
    }

    auto stop = io.unixEventPort.onSignal(SIGTERM)
        .exclusiveJoin(io.unixEventPort.onSignal(SIGINT))
        .then([](siginfo_t info) { return kj::str(strsignal(info.si_signo)); });
    KJ_IF_MAYBE(pipe, parentPipe) {
      stop = stop.exclusiveJoin(untilEndOfFile(**pipe).then([]() { return kj::str("parent exited"); }));
    }
    for (size_t i = 0; i < listeners.size(); i++) {
      auto serving = server.listen(*listeners[i], sockets[i].authority)
          .then([]() { return kj::str("listening socket closed"); });
      stop = stop.exclusiveJoin(kj::mv(serving));
    }
    kj::String why = stop.wait(io.waitScope);
    KJ_LOG(INFO, "shutting down", why);

    if (!remover.remove()) {
      KJ_LOG(WARNING, "socket files not removed (the remover did not answer); the next start "
                      "replaces them");
    }
    if (!quiet) log.write(kj::LogSeverity::INFO, kj::str("stopped (", why, ")"));
  }
};

}  // namespace
}  // namespace vlapic

VLAPIC_CALLBACK_FRAME int main(int argc, char* argv[]) {
  vlapic::ExitStatusContext context(argv[0]);
  vlapic::spellHelpOption(argc, argv);
  // Before anything can log; it lives as long as the daemon.
  vlapic::LogSink log;
  vlapic::Vlapicd daemon(context, log);
  return kj::runMainAndExit(context, daemon.getMain(), argc, argv);
}
