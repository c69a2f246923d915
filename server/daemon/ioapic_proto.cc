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
