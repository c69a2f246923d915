// SPDX-License-Identifier: MIT
// The daemon's wire forms of the lower layers' value types (schema/
// vlapic.capnp <-> server/core, server/vm): access results, interrupt state,
// events, saved vCPUs, pages. Malformed input is the front's error:
// KJ_REQUIRE, an error reply, nothing changed.
#pragma once

#include "schema/vlapic.capnp.h"
#include "server/vm/vm.h"
#include "hal/hal.h"

namespace vlapic::daemon {

proto::AccessReason toProto(AccessReason reason);
proto::ApicMode toProto(ApicMode mode);
proto::RunState toProto(RunState state);
void fillEvent(proto::Event::Builder out, uint32_t vcpu, const VcpuEvent& event);
VcpuEvent eventFromProto(proto::Event::Reader in);
void fillSnapshot(proto::VcpuState::Builder out, uint32_t index, const LapicSnapshot& snapshot);
LapicSnapshot snapshotFromProto(proto::VcpuState::Reader in);
void fillInterruptState(proto::InterruptState::Builder out, const Vm& vm, uint32_t vcpu);
void fillAccess(proto::AccessResult::Builder out, const AccessResult& result, const Vm& vm,
                uint32_t vcpu);
void fillPageInfo(proto::PageInfo::Builder out, const hal::Page& page);

}  // namespace vlapic::daemon
