// SPDX-License-Identifier: MIT
// Starting a private vlapicd for one run (--spawn-vlapicd): a child process
// listening on a socket in a fresh temporary directory, terminated and
// cleaned up when the run ends, and ending by itself when this process dies
// without cleaning up (vlapicd --exit-with-parent-fd).
#pragma once

#include <kj/common.h>
#include <kj/io.h>
#include <kj/string.h>
#include <sys/types.h>

namespace vlapic::kvm {

// What vlapic-kvm and bench-kvm start vlapicd with: the shared-memory HAL,
// so that each vCPU's virtual-APIC page can be mapped read-only. vlapicd
// confines itself as always (its seccomp filter allows the channel).
kj::ArrayPtr<const kj::StringPtr> spawnedVlapicdArguments();

class SpawnedVlapicd {
public:
  // `binary`: the vlapicd executable. Returns once the socket exists (the
  // caller's connect retries cover the rest). Throws with a clear message
  // when the binary cannot be started or dies before listening.
  // `arguments` are passed after `--socket PATH` (e.g. `--hal shared`).
  explicit SpawnedVlapicd(kj::StringPtr binary, kj::ArrayPtr<const kj::StringPtr> arguments = nullptr);
  ~SpawnedVlapicd() noexcept(false);
  KJ_DISALLOW_COPY(SpawnedVlapicd);

  kj::StringPtr socketPath() const { return socket; }
  // The child's process id (-1 once it has been reaped).
  pid_t processId() const { return pid; }

  // Where vlapicd is looked for when no path is given: $VLAPICD, then next
  // to this executable in the build tree (../../server/daemon/vlapicd) or
  // the install tree (./vlapicd), then "vlapicd" on PATH.
  static kj::String findBinary();

private:
  kj::String directory;
  kj::String socket;
  pid_t pid = -1;
  // The write end of the pipe whose read end vlapicd watches: open for as
  // long as we live (never written).
  kj::AutoCloseFd parentAlive;
};

}  // namespace vlapic::kvm
