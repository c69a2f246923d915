// SPDX-License-Identifier: MIT
// Running vlapicctl against a test's own vlapicd (integration-tests only:
// VLAPICCTL_PATH is its compile definition).
#pragma once

#include "tests/integration/daemon_process.h"

#include <initializer_list>

namespace vlapic::testing {

// vlapicctl --socket <socket> args..., stdout and stderr kept apart.
inline SeparatedToolResult runCtl(kj::StringPtr socket, std::initializer_list<kj::StringPtr> args) {
  kj::Vector<kj::StringPtr> all;
  all.add("--socket");
  all.add(socket);
  for (auto a: args) all.add(a);
  return runToolSeparated(VLAPICCTL_PATH, all);
}

}  // namespace vlapic::testing
