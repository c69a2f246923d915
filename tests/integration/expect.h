// SPDX-License-Identifier: MIT
// Small helpers the integration tests share for stating failures.
#pragma once

#include <kj/exception.h>
#include <kj/string.h>
#include <cstring>

namespace vlapic::testing {

// The exception `func` threw, if it threw one.
template <typename Func>
kj::Maybe<kj::Exception> failure(Func&& func) {
  return kj::runCatchingExceptions(kj::fwd<Func>(func));
}

inline bool contains(kj::StringPtr haystack, kj::StringPtr needle) {
  return strstr(haystack.cStr(), needle.cStr()) != nullptr;
}

}  // namespace vlapic::testing
