// SPDX-License-Identifier: MIT
// The I/O APIC's wire forms (schema/vlapic.capnp: IoApicConfig,
// IoApicState, IoApicStatus) to and from the device's value types. Malformed
// input is the front's error: KJ_REQUIRE, an error reply, nothing changed.
#pragma once

#include "schema/vlapic.capnp.h"
#include "server/ioapic/ioapic.h"
#include "server/vm/vm.h"

namespace vlapic::daemon {

// Most lines one Vm.setIrqLines call may carry.
constexpr uint32_t kMaxIrqLinesPerCall = 1024;

IoApicConfig ioApicConfigFromProto(proto::IoApicConfig::Reader in);
void fillIoApicState(proto::IoApicState::Builder out, const IoApicState& state);
IoApicState ioApicStateFromProto(proto::IoApicState::Reader in);
void fillIoApicStatus(proto::IoApicStatus::Builder out, const Vm& vm);
// An error reply unless the VM has an I/O APIC with this pin.
void requireIoApicPin(const Vm& vm, uint32_t pin);

}  // namespace vlapic::daemon
