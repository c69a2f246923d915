// SPDX-License-Identifier: MIT
// Invariant checks shared by the fuzz harnesses: a violation prints the step
// and what broke, then aborts, which libFuzzer records as a crash with its
// reproducer. The macros expect a `step` (the operation's index) in scope.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace vlapic::fuzz {

[[noreturn]] inline void violated(unsigned step, const char* what, uint64_t got,
                                  uint64_t expected) {
  fprintf(stderr, "INVARIANT VIOLATED at step %u: %s (got 0x%llx, expected 0x%llx)\n", step,
          what, (unsigned long long)got, (unsigned long long)expected);
  abort();
}

}  // namespace vlapic::fuzz

#define EXPECT_EQ(got, expected, what)                                           \
  do {                                                                           \
    uint64_t got_ = uint64_t(got), expected_ = uint64_t(expected);               \
    if (got_ != expected_) ::vlapic::fuzz::violated(step, what, got_, expected_); \
  } while (0)
#define EXPECT_TRUE(cond, what)                                                  \
  do {                                                                           \
    if (!(cond)) ::vlapic::fuzz::violated(step, what, 0, 1);                     \
  } while (0)
