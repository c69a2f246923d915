// SPDX-License-Identifier: MIT
// The --blocks and --calls options of the benches that measure round trips
// in blocks of back-to-back calls (a block's time / calls is one sample).
#pragma once

#include <kj/main.h>
#include <stdint.h>
#include <stdlib.h>

namespace vlapic::bench {

struct BlockCounts {
  uint32_t blocks;
  uint32_t calls;
};

// Adds --blocks and --calls to `builder`, parsed into `counts` (which must
// outlive the builder); at least 3 blocks (a median) and 10 calls a block.
// The help texts name the defaults, so they are the caller's literals.
inline kj::MainBuilder& addBlockOptions(kj::MainBuilder& builder, BlockCounts& counts,
                                        kj::StringPtr blocksHelp, kj::StringPtr callsHelp) {
  return builder
      .addOptionWithArg({"blocks"}, [&counts](kj::StringPtr s) -> kj::MainBuilder::Validity {
        counts.blocks = strtoul(s.cStr(), nullptr, 10);
        if (counts.blocks < 3) return kj::str("need at least 3 blocks");
        return true;
      }, "<n>", blocksHelp)
      .addOptionWithArg({"calls"}, [&counts](kj::StringPtr s) -> kj::MainBuilder::Validity {
        counts.calls = strtoul(s.cStr(), nullptr, 10);
        if (counts.calls < 10) return kj::str("need at least 10 calls");
        return true;
      }, "<n>", callsHelp);
}

}  // namespace vlapic::bench
