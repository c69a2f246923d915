// SPDX-License-Identifier: MIT
#include "server/ioapic/ioapic.h"

namespace vlapic {

DecodedRedirectionEntry decodeRedirectionEntry(uint64_t entry) {
  DecodedRedirectionEntry decoded;
  InterruptMessage& m = decoded.message;
  m.vector = entry & rte::kVectorMask;
  m.deliveryMode = DeliveryMode((entry >> rte::kDeliveryModeShift) & 7);
  m.logicalDestination = entry & rte::kLogicalDestination;
  m.trigger = entry & rte::kLevelTriggered ? TriggerMode::LEVEL : TriggerMode::EDGE;
  // The I/O APIC sends a message only while the pin is asserted.
  m.levelAssert = true;
  m.destination = uint32_t((entry >> rte::kDestinationShift) & 0xFF) |
                  uint32_t(((entry >> rte::kExtendedDestinationShift) & 0x7F) << 8);
  decoded.masked = entry & rte::kMasked;
  return decoded;
}

}  // namespace vlapic
