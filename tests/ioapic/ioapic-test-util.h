// SPDX-License-Identifier: MIT
// Helpers for the I/O APIC tests: a device wired to a sink that records every
// message, driven the way a guest drives it (IOREGSEL then IOWIN, 32-bit
// accesses) so each test goes through the real MMIO entry points.
#pragma once

#include "server/ioapic/ioapic.h"
#include <catch2/catch.hpp>
#include <vector>

namespace vlapic::test {

struct RecordingSink final : public IoApicSink {
  std::vector<InterruptMessage> messages;
  void sendIoApicMessage(const InterruptMessage& message) override {
    messages.push_back(message);
  }
  // The vectors sent, in order: what most tests check.
  std::vector<uint8_t> vectors() const {
    std::vector<uint8_t> result;
    for (auto& m: messages) result.push_back(m.vector);
    return result;
  }
};

struct EntryFields {
  uint8_t vector = 0;
  uint32_t destination = 0;
  DeliveryMode mode = DeliveryMode::FIXED;
  bool logical = false;
  bool activeLow = false;
  TriggerMode trigger = TriggerMode::EDGE;
  bool masked = false;
};

inline uint64_t makeEntry(const EntryFields& f) {
  return f.vector | (uint64_t(f.mode) << rte::kDeliveryModeShift) |
         (f.logical ? rte::kLogicalDestination : 0) | (f.activeLow ? rte::kActiveLow : 0) |
         (f.trigger == TriggerMode::LEVEL ? rte::kLevelTriggered : 0) |
         (f.masked ? rte::kMasked : 0) |
         (uint64_t(f.destination & 0xFF) << rte::kDestinationShift) |
         (uint64_t((f.destination >> 8) & 0x7F) << rte::kExtendedDestinationShift);
}

inline uint64_t edgeEntry(uint8_t vector, bool masked = false) {
  return makeEntry({.vector = vector, .masked = masked});
}
inline uint64_t levelEntry(uint8_t vector, bool masked = false, bool activeLow = false) {
  return makeEntry(
      {.vector = vector, .activeLow = activeLow, .trigger = TriggerMode::LEVEL, .masked = masked});
}

inline IoApicConfig configWith(uint8_t version, uint8_t id = 0) {
  IoApicConfig config;
  config.version = version;
  config.id = id;
  return config;
}

class TestIoApic {
public:
  explicit TestIoApic(const IoApicConfig& config = IoApicConfig()) : ioapic(config, sink) {}

  RecordingSink sink;
  IoApic ioapic;

  IoApic* operator->() { return &ioapic; }

  uint64_t base() const { return ioapic.config().base; }
  AccessResult read(uint64_t offset, uint8_t size = 4) {
    return ioapic.mmioRead(base() + offset, size);
  }
  AccessResult write(uint64_t offset, uint32_t value, uint8_t size = 4) {
    return ioapic.mmioWrite(base() + offset, size, value);
  }
  // One indirect register, through IOREGSEL and IOWIN.
  AccessResult readIndirect(uint32_t index) {
    REQUIRE(write(kIoRegSel, index).status == AccessStatus::OK);
    return read(kIoWin);
  }
  AccessResult writeIndirect(uint32_t index, uint32_t value) {
    REQUIRE(write(kIoRegSel, index).status == AccessStatus::OK);
    return write(kIoWin, value);
  }
  // High dword first, as Linux writes an entry, so the low dword's unmask
  // sees the final destination.
  void writeEntry(uint32_t pin, uint64_t entry) {
    REQUIRE(writeIndirect(kIoApicRedirectionIndex + 2 * pin + 1, entry >> 32).status ==
            AccessStatus::OK);
    REQUIRE(writeIndirect(kIoApicRedirectionIndex + 2 * pin, uint32_t(entry)).status ==
            AccessStatus::OK);
  }
  uint64_t readEntry(uint32_t pin) {
    uint64_t low = readIndirect(kIoApicRedirectionIndex + 2 * pin).value;
    uint64_t high = readIndirect(kIoApicRedirectionIndex + 2 * pin + 1).value;
    return (high << 32) | low;
  }
  bool remoteIrr(uint32_t pin) { return ioapic.redirectionEntry(pin) & rte::kRemoteIrr; }
  void pulse(uint32_t pin) {
    ioapic.setPinLevel(pin, true);
    ioapic.setPinLevel(pin, false);
  }
};

using Vectors = std::vector<uint8_t>;

}  // namespace vlapic::test
