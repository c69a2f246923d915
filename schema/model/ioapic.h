// SPDX-License-Identifier: MIT
// The I/O APIC's register layout and state as value types, shared by the
// device (server/ioapic), the transport and the fronts and tools through
// the client library (part of the shared model, schema/model). Intel
// 82093AA I/O APIC datasheet, section 3.
#pragma once

#include <cstdint>

namespace vlapic {

// Pins of the I/O APIC (the 82093AA has 24; KVM's has 24).
constexpr uint32_t kIoApicPins = 24;
// The guest-physical window the device decodes: 4 KiB from its base (as
// QEMU maps it); only offsets 0x00 (IOREGSEL), 0x10 (IOWIN) and, for
// version 0x20, 0x40 (EOI) are registers.
constexpr uint64_t kIoApicWindowSize = 0x1000;
constexpr uint64_t kIoApicDefaultBase = 0xFEC00000;
// The 82093AA's version register value (what KVM reports) and the later
// version with a directed-EOI register (what QEMU's ioapic reports).
constexpr uint8_t kIoApicVersion11 = 0x11;
constexpr uint8_t kIoApicVersion20 = 0x20;

// Register offsets in the window and the indirect register indices.
constexpr uint64_t kIoRegSel = 0x00;
constexpr uint64_t kIoWin = 0x10;
constexpr uint64_t kIoEoi = 0x40;
constexpr uint32_t kIoApicIdIndex = 0x00;
constexpr uint32_t kIoApicVersionIndex = 0x01;
constexpr uint32_t kIoApicArbitrationIndex = 0x02;
constexpr uint32_t kIoApicRedirectionIndex = 0x10;  // + 2 * pin (low), + 1 (high)

// Redirection table entry fields (datasheet 3.2.4).
namespace rte {
constexpr uint64_t kVectorMask = 0xFF;
constexpr unsigned kDeliveryModeShift = 8;      // 10:8
constexpr uint64_t kLogicalDestination = 1ull << 11;
constexpr uint64_t kDeliveryStatus = 1ull << 12;  // read-only
constexpr uint64_t kActiveLow = 1ull << 13;       // polarity
constexpr uint64_t kRemoteIrr = 1ull << 14;       // read-only
constexpr uint64_t kLevelTriggered = 1ull << 15;
constexpr uint64_t kMasked = 1ull << 16;
constexpr unsigned kExtendedDestinationShift = 49;  // 55:49: destination 14:8
constexpr unsigned kDestinationShift = 56;          // 63:56
// Bits the guest cannot change by writing IOWIN.
constexpr uint64_t kReadOnlyBits = kDeliveryStatus | kRemoteIrr;
// An entry after reset: masked, everything else 0 (datasheet 3.2.4).
constexpr uint64_t kResetValue = kMasked;
}  // namespace rte

// Per-pin counters, for operators (vlapicctl ioapic).
struct IoApicPinStats {
  uint64_t assertions = 0;   // de-asserted -> asserted transitions
  uint64_t messages = 0;     // messages sent to the sink
  uint64_t eois = 0;         // EOIs that cleared this pin's remote IRR
  uint64_t redeliveries = 0; // messages sent because an EOI or unmask found
                             // the level pin still asserted
  uint64_t coalesced = 0;    // edges (or level assertions) that found the
                             // previous one not yet delivered

  bool operator==(const IoApicPinStats& other) const = default;
};

// The I/O APIC's whole state, as it is saved and restored with the VM.
struct IoApicState {
  uint8_t id = 0;            // the ID register's 4-bit ID
  uint8_t ioregsel = 0;      // the last IOREGSEL write
  // Bit n: pin n's wire is at the high electrical level.
  uint32_t pinLevels = 0;
  // Bit n: an edge pin's rising edge not yet delivered (it was masked), as
  // KVM's irr keeps it for edge pins. Level pins: unused, 0.
  uint32_t pendingEdges = 0;
  uint64_t redirection[kIoApicPins] = {};

  bool operator==(const IoApicState& other) const = default;
};

}  // namespace vlapic
