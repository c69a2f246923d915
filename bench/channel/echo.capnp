# SPDX-License-Identifier: MIT
@0xdb6a5b3c84d989f0;
# The transport floor bench-channel compares the channel with: a trivial
# Cap'n Proto two-party RPC call between two processes on a Unix socket.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vlapic::channel::bench");

interface Echo {
  echo @0 (value :UInt64) -> (value :UInt64);
}
