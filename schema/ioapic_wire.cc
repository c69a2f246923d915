// SPDX-License-Identifier: MIT
#include "schema/ioapic_wire.h"

#include <kj/debug.h>

namespace vlapic {

void fillIoApicState(proto::IoApicState::Builder out, const IoApicState& state) {
  out.setId(state.id);
  out.setIoregsel(state.ioregsel);
  out.setPinLevels(state.pinLevels);
  out.setPendingEdges(state.pendingEdges);
  auto entries = out.initRedirection(kIoApicPins);
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) entries.set(pin, state.redirection[pin]);
}

IoApicState ioApicStateFromProto(proto::IoApicState::Reader in) {
  auto entries = in.getRedirection();
  KJ_REQUIRE(entries.size() == kIoApicPins,
             "IoApicState.redirection must have exactly one entry per pin", entries.size(),
             kIoApicPins);
  IoApicState state;
  state.id = in.getId();
  state.ioregsel = in.getIoregsel();
  state.pinLevels = in.getPinLevels();
  state.pendingEdges = in.getPendingEdges();
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) state.redirection[pin] = entries[pin];
  return state;
}

}  // namespace vlapic
