// SPDX-License-Identifier: MIT
// IoApicState (schema/model/ioapic.h) in its wire form, schema IoApicState:
// one encoding for vlapicd, the client library and vlapicctl's state files.
#pragma once

#include "schema/model/ioapic.h"
#include "schema/vlapic.capnp.h"

namespace vlapic {

void fillIoApicState(proto::IoApicState::Builder out, const IoApicState& state);
// Malformed input (not exactly kIoApicPins entries) is the sender's error:
// KJ_REQUIRE. The values themselves are judged by IoApic::validate.
IoApicState ioApicStateFromProto(proto::IoApicState::Reader in);

}  // namespace vlapic
