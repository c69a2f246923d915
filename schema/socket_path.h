// SPDX-License-Identifier: MIT
// Where vlapicd listens by default, shared by the daemon and its clients so
// they always agree: $XDG_RUNTIME_DIR/vlapic/vlapicd.sock when the variable
// is set (a per-user daemon), else /run/vlapic/vlapicd.sock (system daemon).
//
// Two sockets, two authorities (schema: Service, Admin). The front socket
// serves hypervisor fronts: each connection creates and drives its own VMs
// and can name nothing else. The operator socket, beside it, is the only
// place the Admin capability (every VM on the server) is served; its file
// permissions are the operator's right, separate from the fronts'.
#pragma once

#include <kj/string.h>
#include <cstdlib>

namespace vlapic {

inline kj::String defaultSocketPath() {
  const char* runtime = getenv("XDG_RUNTIME_DIR");
  if (runtime != nullptr && runtime[0] != '\0') return kj::str(runtime, "/vlapic/vlapicd.sock");
  return kj::str("/run/vlapic/vlapicd.sock");
}

// The operator socket that goes with a front socket: "<dir>/<name>-admin.sock"
// for "<dir>/<name>.sock" (else "<path>-admin"). Daemon and vlapicctl derive
// it the same way, so `--socket` alone names both.
inline kj::String adminSocketPathFor(kj::StringPtr frontSocketPath) {
  if (frontSocketPath.endsWith(".sock")) {
    return kj::str(frontSocketPath.slice(0, frontSocketPath.size() - 5), "-admin.sock");
  }
  return kj::str(frontSocketPath, "-admin");
}

}  // namespace vlapic
