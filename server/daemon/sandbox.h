// SPDX-License-Identifier: MIT
// The hook through which vlapicd confines itself after start-up: called by
// the daemon main once the listening socket is open (and, with socket
// activation, inherited) and before the first connection is served, so the
// confinement may forbid opening files and sockets from then on.
//
// Implemented in server/daemon/sandbox.cc (seccomp filter, no new
// privileges, dropping to an unprivileged user); when that file is absent
// the daemon is built without confinement and says so at start-up.
#pragma once

#include <kj/string.h>
#include <sys/types.h>

namespace vlapic {

struct SandboxOptions {
  // --no-sandbox turns confinement off (debugging, profilers).
  bool enabled = true;
  // The listening socket vlapicd serves (already bound and listening).
  int listenFd = -1;
  // Its path, or nullptr for an inherited (socket-activated) fd.
  kj::Maybe<kj::StringPtr> socketPath;
  // --hal shared: the server keeps creating memfds for new VMs' pages.
  bool sharedMemoryHal = false;
  // When started as root: the user and group to drop to (--user NAME).
  kj::Maybe<kj::StringPtr> user;
};

// Confine the calling process for the rest of its life. Throws kj::Exception
// (and vlapicd exits non-zero) if the confinement cannot be applied: running
// unconfined when confinement was asked for is never silent.
void applySandbox(const SandboxOptions& options);

}  // namespace vlapic
