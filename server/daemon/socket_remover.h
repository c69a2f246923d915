// SPDX-License-Identifier: MIT
// Removes vlapicd's socket files when it stops cleanly. Once confined the
// daemon can no longer touch the file system (its seccomp filter has no
// path calls) and, started as root, it no longer has the right to the
// directory either; so before confinement it forks this small process,
// which keeps the daemon's original identity, does nothing but wait on a
// socket pair, and on the daemon's word removes exactly the socket files
// the daemon bound (same device and inode: never a file that replaced
// them). If the daemon dies instead (the pair reaches end of file without a
// word), it removes nothing: the next start replaces a stale socket anyway.
#pragma once

#include "listen_socket.h"

#include <kj/array.h>
#include <kj/io.h>
#include <sys/types.h>

namespace vlapic::daemon {

class SocketRemover {
public:
  // Forks the remover. Call before confinement and before any thread starts.
  explicit SocketRemover(kj::ArrayPtr<const ListenSocket> sockets);
  // Without remove(): the remover sees end of file and exits, removing nothing.
  ~SocketRemover() noexcept(false);
  KJ_DISALLOW_COPY(SocketRemover);

  // Asks the remover to remove the files and waits (at most ~2 s) until it
  // says it has. Allowed under vlapicd's seccomp filter (write and read on
  // an fd it holds). Returns false if the remover did not answer.
  bool remove();

private:
  kj::AutoCloseFd channel;
  pid_t child = -1;
};

}  // namespace vlapic::daemon
