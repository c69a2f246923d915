// SPDX-License-Identifier: MIT
// Runs the real vlapicd as a child process on a private socket, for the
// integration tests and bench-rpc, and runs command-line tools (vlapicctl)
// capturing their output.
#pragma once

#include <kj/array.h>
#include <kj/string.h>
#include <kj/vector.h>
#include <sys/types.h>

namespace vlapic::testing {

class DaemonProcess {
public:
  // Starts `binary --socket <tmpdir>/vlapicd.sock <extraArgs...>` and waits
  // (up to 10 s) until the socket accepts connections. Throws if it never
  // does, with the daemon's log attached.
  // `socketName` may name a subdirectory the daemon (or script) creates,
  // or be an absolute path (the caller then owns its directory).
  DaemonProcess(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> extraArgs = nullptr,
                kj::StringPtr socketName = "vlapicd.sock");
  // SIGTERM, then SIGKILL if it does not stop within 5 s; removes the
  // temporary directory.
  ~DaemonProcess() noexcept(false);
  KJ_DISALLOW_COPY(DaemonProcess);

  kj::StringPtr socketPath() const { return socket; }
  kj::StringPtr directory() const { return dir; }
  pid_t pid() const { return child; }

  // Whether the process is still running (reaps it if not).
  bool running();
  // SIGTERM and wait; returns the raw wait status.
  int stop();
  // What the daemon printed on stderr so far.
  kj::String log() const;

private:
  kj::String dir;
  kj::String socket;
  kj::String logPath;
  pid_t child = -1;
  kj::Maybe<int> exitStatus;
};

struct ToolResult {
  int exitCode;        // -1 if killed by a signal
  kj::String output;   // stdout and stderr, interleaved
};

// Runs `binary args...` to completion.
ToolResult runTool(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> args);

struct SeparatedToolResult {
  int exitCode;        // -1 if killed by a signal
  kj::String out;      // stdout
  kj::String err;      // stderr
};

// The same, keeping stdout and stderr apart.
SeparatedToolResult runToolSeparated(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> args);

// A fresh private temporary directory (mkdtemp).
kj::String makeTempDir();
void removeTree(kj::StringPtr path);

}  // namespace vlapic::testing
