// SPDX-License-Identifier: MIT
// The capabilities a front holds for one vCPU: Vcpu (its guest accesses,
// injection, save/restore, ticket, channel) and Page (a mappable page).
// Each call checks only that the VM still exists: holding the capability is
// the right (schema/vlapic.capnp). Internal to server/daemon.
#pragma once

#include "server_state.h"
#include "vm_host.h"

namespace vlapic::daemon {

// `lease` keeps the VM alive (nullptr: an operator's handle, which does not).
kj::Own<proto::Vcpu::Server> newVcpuCapability(ServerState& server, uint64_t vmId, uint32_t index,
                                               kj::Maybe<kj::Own<VmLease>> lease);
// vcpu == nullptr: the server's APIC-access page.
kj::Own<proto::Page::Server> newPageCapability(ServerState& server, uint64_t vmId,
                                               kj::Maybe<uint32_t> vcpu);

}  // namespace vlapic::daemon
