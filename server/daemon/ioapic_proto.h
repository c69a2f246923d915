// SPDX-License-Identifier: MIT
// The I/O APIC's wire forms that only vlapicd writes or reads (schema
// IoApicConfig, IoApicStatus; IoApicState is schema/ioapic_wire.h's). Malformed
// input is the front's error: KJ_REQUIRE, an error reply, nothing changed.
#pragma once

#include "schema/ioapic_wire.h"
#include "schema/vlapic.capnp.h"
#include "server/ioapic/ioapic.h"
#include "server/vm/vm.h"

namespace vlapic::daemon {

// Most lines one Vm.setIrqLines call may carry.
constexpr uint32_t kMaxIrqLinesPerCall = 1024;

IoApicConfig ioApicConfigFromProto(proto::IoApicConfig::Reader in);
void fillIoApicStatus(proto::IoApicStatus::Builder out, const Vm& vm);
// An error reply unless the VM has an I/O APIC with this pin.
void requireIoApicPin(const Vm& vm, uint32_t pin);

}  // namespace vlapic::daemon
