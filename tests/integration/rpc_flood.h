// SPDX-License-Identifier: MIT
// A hostile front's traffic, as raw bytes on its socket: the Cap'n Proto RPC
// messages of a bootstrap and then many Service.echo calls, none of which
// is ever finished or whose replies are ever read. For the tests and
// bench-load's hostile front.
#pragma once

#include <kj/array.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::testing {

// The bootstrap (question 0) followed by `calls` echo calls on it
// (questions 1..calls), serialized back to back.
kj::Array<kj::byte> echoFloodMessages(uint32_t calls);

// Connects to `socketPath` and writes `bytes` without ever reading, with
// non-blocking writes for at most `seconds`; returns how many bytes the
// kernel accepted (less than all of them when the server stopped reading).
// The fd stays open in *fdOut until the caller closes it.
size_t writeWithoutReading(kj::StringPtr socketPath, kj::ArrayPtr<const kj::byte> bytes,
                           double seconds, int* fdOut);

}  // namespace vlapic::testing
