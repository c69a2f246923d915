// SPDX-License-Identifier: MIT
// Where vlapicd listens by default, shared by the daemon and its clients so
// they always agree: $XDG_RUNTIME_DIR/vlapic/vlapicd.sock when the variable
// is set (a per-user daemon), else /run/vlapic/vlapicd.sock (system daemon).
#pragma once

#include <kj/string.h>
#include <cstdlib>

namespace vlapic {

inline kj::String defaultSocketPath() {
  const char* runtime = getenv("XDG_RUNTIME_DIR");
  if (runtime != nullptr && runtime[0] != '\0') return kj::str(runtime, "/vlapic/vlapicd.sock");
  return kj::str("/run/vlapic/vlapicd.sock");
}

}  // namespace vlapic
