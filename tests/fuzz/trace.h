// SPDX-License-Identifier: MIT
// Tracing shared by the fuzz harnesses: FUZZ_TRACE=1 in the environment
// makes a harness print every operation it performs, for reading what a
// reproducer does (run the harness binary with the input file as argument).
#pragma once

#include <cstdio>
#include <cstdlib>

namespace vlapic::fuzz {

inline bool& tracing() {
  static bool enabled = getenv("FUZZ_TRACE") != nullptr;
  return enabled;
}

}  // namespace vlapic::fuzz

#define TRACE(...)                                                               \
  do {                                                                           \
    if (::vlapic::fuzz::tracing()) fprintf(stderr, __VA_ARGS__);                 \
  } while (0)
