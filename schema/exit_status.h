// SPDX-License-Identifier: MIT
// The exit statuses of vlapicd and vlapicctl, kept here beside the socket
// path for the same reason: the tools, their --help texts and the man pages
// must agree. (vlapic-kvm keeps its own table: its odd statuses are the
// guest's.) Plus the small pieces of command-line plumbing both tools need
// for them, which kj::MainBuilder does not provide: it exits 1 on a bad
// command line, as on every other failure, and knows no -h.
#pragma once

#include <kj/main.h>
#include <cstdlib>
#include <unistd.h>

namespace vlapic {

enum class ExitStatus: int {
  OK = 0,
  FAILED = 1,       // anything not listed below
  USAGE = 2,        // bad command line
  NO_SERVER = 3,    // vlapicd cannot be reached, or the connection was lost
  NOT_FOUND = 4,    // no such VM or vCPU
};

// The text each --help ends with; `extra` names statuses only that tool uses.
inline kj::String exitStatusHelp(kj::StringPtr extra) {
  return kj::str("Exit status: 0 success, 1 failure, 2 bad command line", extra, ".");
}

// kj's TopLevelProcessContext, except that a bad command line (the only thing
// kj::MainBuilder reports through exitError) exits with USAGE, and that the
// program can pick its status with exitWith().
class ExitStatusContext final: public kj::ProcessContext {
public:
  explicit ExitStatusContext(kj::StringPtr programName): inner(programName) {}

  kj::StringPtr getProgramName() override { return inner.getProgramName(); }
  KJ_NORETURN(void exit() override) { inner.exit(); }
  void warning(kj::StringPtr message) override { inner.warning(message); }
  void error(kj::StringPtr message) override { inner.error(message); }
  KJ_NORETURN(void exitInfo(kj::StringPtr message) override) { inner.exitInfo(message); }
  void increaseLoggingVerbosity() override { inner.increaseLoggingVerbosity(); }
  KJ_NORETURN(void exitError(kj::StringPtr message) override) { exitWith(ExitStatus::USAGE, message); }

  // Prints `message` (unless empty) on stderr and exits with `status`.
  KJ_NORETURN(void exitWith(ExitStatus status, kj::StringPtr message)) {
    if (message.size() > 0) inner.warning(message);
    // As kj's own exit: under KJ_CLEAN_SHUTDOWN (leak checkers) unwind back
    // to runMainAndExit, which returns the status from main.
    if (getenv("KJ_CLEAN_SHUTDOWN") != nullptr) {
      throw kj::TopLevelProcessContext::CleanShutdownException{int(status)};
    }
    _exit(int(status));
  }

private:
  kj::TopLevelProcessContext inner;
};

// Rewrites a "-h" option as "--help", which kj::MainBuilder answers, at any
// level (vlapicctl dump -h). Arguments after "--" are operands and are left
// alone; so is the value of an option, which a "-h" cannot sensibly be.
inline void spellHelpOption(int argc, char* argv[]) {
  for (int i = 1; i < argc; i++) {
    kj::StringPtr arg = argv[i];
    if (arg == "--") break;
    if (arg == "-h") argv[i] = const_cast<char*>("--help");   // never written through
  }
}

}  // namespace vlapic
