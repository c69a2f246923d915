// SPDX-License-Identifier: MIT
// Who may call what, in one place: the bootstrap Service every connection
// gets (create VMs charged to its own account, redeem vCPU tickets, its own
// status) and the operator's Admin, handed out only on the operator socket.
// Every other right is a capability these hand out. Internal to
// server/daemon.
#pragma once

#include "server_state.h"
#include "front_account.h"

namespace vlapic::daemon {

kj::Own<proto::Service::Server> newServiceCapability(ServerState& server, Authority authority,
                                                     kj::Own<FrontAccount> account);

}  // namespace vlapic::daemon
