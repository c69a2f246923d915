// SPDX-License-Identifier: MIT
// The Vm capability: what its creator (and the operator, through Admin) may
// do with one VM: its vCPUs, device interrupts (MSIs, I/O APIC pins and
// entries, LINT), save/restore, stats, release. Internal to server/daemon.
#pragma once

#include "server_state.h"
#include "vm_host.h"

namespace vlapic::daemon {

// `lease` keeps the VM alive (nullptr: an operator's handle, which does not).
kj::Own<proto::Vm::Server> newVmCapability(ServerState& server, uint64_t vmId,
                                           kj::Maybe<kj::Own<VmLease>> lease);

}  // namespace vlapic::daemon
