// SPDX-License-Identifier: MIT
#include "ioapic_proto.h"

#include <kj/debug.h>

namespace vlapic::daemon {

IoApicConfig ioApicConfigFromProto(proto::IoApicConfig::Reader in) {
  IoApicConfig config;
  config.present = !in.getAbsent();
  if (in.getBase() != 0) config.base = in.getBase();
  config.id = in.getId();
  if (in.getVersion() != 0) config.version = in.getVersion();
  // validateVmConfig (through validateIoApicConfig) judges the values.
  return config;
}

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
  // The device's validate() judges the rest (in Vm::restoreVm).
  return state;
}

void fillIoApicStatus(proto::IoApicStatus::Builder out, const Vm& vm) {
  out.setPresent(vm.hasIoApic());
  if (!vm.hasIoApic()) return;
  const IoApic& device = vm.ioapic();
  IoApicState state = device.save();
  out.setBase(device.config().base);
  out.setId(state.id);
  out.setVersion(device.config().version);
  out.setIoregsel(state.ioregsel);
  auto pins = out.initPins(kIoApicPins);
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    auto p = pins[pin];
    const IoApicPinStats& stats = device.pinStats(pin);
    p.setPin(pin);
    p.setEntry(device.redirectionEntry(pin));
    p.setLevel(device.pinLevel(pin));
    p.setAsserted(device.pinAsserted(pin));
    p.setPendingEdge((state.pendingEdges >> pin) & 1);
    p.setAssertions(stats.assertions);
    p.setMessages(stats.messages);
    p.setEois(stats.eois);
    p.setRedeliveries(stats.redeliveries);
    p.setCoalesced(stats.coalesced);
  }
}

void requireIoApicPin(const Vm& vm, uint32_t pin) {
  KJ_REQUIRE(vm.hasIoApic(), "this VM has no I/O APIC (VmConfig.ioapic.absent)");
  KJ_REQUIRE(pin < kIoApicPins, "I/O APIC pin out of range", pin, kIoApicPins);
}

}  // namespace vlapic::daemon
