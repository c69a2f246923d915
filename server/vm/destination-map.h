// SPDX-License-Identifier: MIT
// Destination matching for interrupt messages (SDM Vol. 3A "Determining
// IPI Destination", "Logical Destination Mode", x2APIC "Logical Destination
// Mode in x2APIC Mode"), and the per-VM map that finds the targets of a
// physical or logical destination without scanning every vCPU.
//
// destinationMatches() is the reference rule; DestinationMap indexes exactly
// the same rule, and answers "scan instead" where two vCPUs alias one slot.
#pragma once

#include "server/core/lapic.h"
#include "schema/model/types.h"
#include <kj/map.h>
#include <kj/vector.h>
#include <array>
#include <cstdint>

namespace vlapic {

constexpr uint32_t kXapicBroadcast = 0xFF;
constexpr uint32_t kX2apicBroadcast = 0xFFFFFFFF;

// A destination (no shorthand) that addresses every enabled LAPIC: 0xFF in
// xAPIC-format messages, 0xFFFFFFFF in x2APIC-format ones, in physical and in
// logical mode alike (KVM). The rule follows the message's format, not the
// target's mode (see README.md for mixed-mode VMs).
inline bool isBroadcastDestination(const InterruptMessage& message) {
  return message.destination == (message.x2apicFormat ? kX2apicBroadcast : kXapicBroadcast);
}

// Whether one LAPIC is addressed by a non-broadcast destination.
// `initialApicId`: the vCPU's configured ID; an xAPIC-mode LAPIC whose ID
// does not fit 8 bits answers to it for destinations above 0xFF, as KVM does
// so that such vCPUs stay reachable before they switch to x2APIC.
bool destinationMatches(const Lapic& lapic, uint32_t initialApicId,
                        const InterruptMessage& message);

class DestinationMap {
public:
  // Indexes every hardware-enabled LAPIC. lapicAt(i) / initialIdAt(i) give
  // vCPU i's LAPIC and configured ID.
  template <typename LapicAt, typename InitialIdAt>
  void rebuild(uint32_t vcpuCount, LapicAt&& lapicAt, InitialIdAt&& initialIdAt) {
    clear();
    for (uint32_t i = 0; i < vcpuCount; i++) {
      const Lapic& lapic = lapicAt(i);
      if (lapic.hardwareEnabled()) add(i, lapic, initialIdAt(i));
    }
  }

  // The hardware-enabled vCPUs, in index order: a broadcast's targets.
  kj::ArrayPtr<const uint32_t> enabledVcpus() const { return enabled.asPtr(); }

  // Appends the targets of a non-broadcast destination to `out` in index
  // order and returns true; or returns false (and leaves `out` unspecified)
  // when aliased IDs make a scan necessary. `stamps` holds one entry per vCPU
  // for de-duplication; `stamp` must differ from every value in it.
  bool lookup(const InterruptMessage& message, kj::Vector<uint32_t>& out,
              kj::ArrayPtr<uint32_t> stamps, uint32_t stamp) const;

private:
  static constexpr uint32_t kNone = 0xFFFFFFFF;
  static constexpr uint32_t kAliased = 0xFFFFFFFE;
  // Physical IDs below this are looked up in an array, others in a hash map.
  static constexpr uint32_t kDensePhysicalLimit = 1u << 16;

  void clear();
  void add(uint32_t vcpu, const Lapic& lapic, uint32_t initialApicId);
  void addPhysical(uint32_t key, uint32_t vcpu);
  static void claim(uint32_t& slot, uint32_t vcpu);

  kj::Vector<uint32_t> enabled;
  kj::Vector<uint32_t> physicalDense;             // key -> vCPU, kNone, kAliased
  kj::HashMap<uint32_t, uint32_t> physicalSparse;
  // x2APIC logical: cluster (LDR 31:16) -> block in x2apicClusterSlots,
  // each slot (LDR bit 15:0) a vCPU, kNone or kAliased.
  kj::Vector<uint32_t> x2apicClusterBlock;
  kj::Vector<std::array<uint32_t, 16>> x2apicClusterSlots;
  // xAPIC logical (several LAPICs may legitimately share a bit).
  kj::Vector<uint32_t> xapicFlat[8];             // logical ID bit -> vCPUs
  kj::Vector<uint32_t> xapicCluster[16][4];      // cluster, bit -> vCPUs
};

}  // namespace vlapic
