// SPDX-License-Identifier: MIT
// vlapicd's listening sockets: bound on a path (vlapicd --socket,
// --admin-socket) or inherited from systemd socket activation, each tagged
// with the authority its connections get (server.h). Start-up failures are
// values with an exit status of their own, so the daemon can say one clear
// line instead of an uncaught exception.
#pragma once

#include "server.h"

#include <kj/one-of.h>
#include <kj/string.h>
#include <kj/vector.h>
#include <sys/types.h>

namespace vlapic::daemon {

// Exit statuses of vlapicd (documented in its --help and man page).
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;        // anything not listed below
constexpr int kExitUsage = 2;          // bad command line (schema/exit_status.h)
constexpr int kExitSocketUnusable = 3; // cannot create, bind or chmod a socket path
constexpr int kExitSocketInUse = 4;    // a live server already answers on the path
constexpr int kExitSandbox = 5;        // confinement was asked for and could not be applied

struct StartupFailure {
  int exitStatus;
  kj::String message;   // one line, no trailing newline
};

struct ListenSocket {
  int fd;                            // listening, close-on-exec, owned
  Authority authority;
  kj::Maybe<kj::String> path;        // bound by us; nullptr when inherited
  dev_t device = 0;                  // the socket file we bound (to remove
  ino_t inode = 0;                   // only that file, never a successor)
};

// Binds `path` (creating missing parent directories with mode 0755; it never
// changes the owner or mode of a directory that exists) and listens. A
// stale socket file (nobody accepting) is replaced; a live one is refused
// with kExitSocketInUse, so two daemons never share a path.
kj::OneOf<ListenSocket, StartupFailure> listenOnPath(kj::StringPtr path, mode_t mode,
                                                     Authority authority);

// systemd socket activation (sd_listen_fds(3)): the inherited listening
// sockets, those named "admin" by LISTEN_FDNAMES (FileDescriptorName=admin)
// with operator authority, the others for fronts. Empty when not activated.
// Consumes the LISTEN_* variables so children do not inherit them.
kj::OneOf<kj::Vector<ListenSocket>, StartupFailure> inheritedListenSockets();

}  // namespace vlapic::daemon
