// SPDX-License-Identifier: MIT
#include "server/vm/destination-map.h"
#include <algorithm>

namespace vlapic {

namespace {

// DFR bits 31:28 (SDM "Destination Format Register").
constexpr uint32_t kDfrModelFlat = 0xF;
constexpr uint32_t kDfrModelCluster = 0x0;

}  // namespace

bool destinationMatches(const Lapic& lapic, uint32_t initialApicId,
                        const InterruptMessage& message) {
  if (!lapic.hardwareEnabled()) return false;
  uint32_t destination = message.destination;
  bool x2apic = lapic.mode() == ApicMode::X2APIC;

  if (!message.logicalDestination) {
    // Physical: the APIC ID (32-bit in x2APIC mode, 8-bit in xAPIC mode).
    if (x2apic) return destination == lapic.apicId();
    return destination <= 0xFF ? destination == lapic.apicId() : destination == initialApicId;
  }

  uint32_t ldr = lapic.ldr();
  if (x2apic) {
    // SDM "Logical Destination Mode in x2APIC Mode": cluster ID in bits
    // 31:16 must be equal, and the 16-bit masks must intersect.
    return (destination >> 16) == (ldr >> 16) && (destination & ldr & 0xFFFF) != 0;
  }
  uint32_t logicalId = ldr >> 24;
  switch (lapic.dfr() >> 28) {
    case kDfrModelFlat:
      // Flat: the 8-bit destination is a bit mask of logical IDs.
      return (logicalId & destination) != 0;
    case kDfrModelCluster:
      // Cluster: bits 7:4 name the cluster, bits 3:0 a mask within it.
      return (logicalId >> 4) == (destination >> 4) && (logicalId & destination & 0xF) != 0;
    default:
      return false;  // no model the SDM defines: matches nothing (KVM)
  }
}

void DestinationMap::clear() {
  enabled.clear();
  physicalDense.clear();
  // kj 0.9's HashMap::clear() memsets a null bucket array when the map never
  // held anything (UBSan flags it): only clear a map that has entries.
  if (physicalSparse.size() > 0) physicalSparse.clear();
  x2apicClusterBlock.clear();
  x2apicClusterSlots.clear();
  for (auto& list : xapicFlat) list.clear();
  for (auto& cluster : xapicCluster) {
    for (auto& list : cluster) list.clear();
  }
}

void DestinationMap::claim(uint32_t& slot, uint32_t vcpu) {
  slot = (slot == kNone || slot == vcpu) ? vcpu : kAliased;
}

void DestinationMap::addPhysical(uint32_t key, uint32_t vcpu) {
  if (key < kDensePhysicalLimit) {
    while (physicalDense.size() <= key) physicalDense.add(kNone);
    claim(physicalDense[key], vcpu);
  } else {
    physicalSparse.upsert(key, vcpu, [vcpu](uint32_t& existing, uint32_t&&) {
      claim(existing, vcpu);
    });
  }
}

void DestinationMap::add(uint32_t vcpu, const Lapic& lapic, uint32_t initialApicId) {
  enabled.add(vcpu);
  uint32_t ldr = lapic.ldr();
  if (lapic.mode() == ApicMode::X2APIC) {
    addPhysical(lapic.apicId(), vcpu);
    uint32_t cluster = ldr >> 16;
    while (x2apicClusterBlock.size() <= cluster) x2apicClusterBlock.add(kNone);
    if (x2apicClusterBlock[cluster] == kNone) {
      x2apicClusterBlock[cluster] = x2apicClusterSlots.size();
      std::array<uint32_t, 16> slots;
      slots.fill(kNone);
      x2apicClusterSlots.add(slots);
    }
    auto& slots = x2apicClusterSlots[x2apicClusterBlock[cluster]];
    for (uint32_t bit = 0; bit < 16; bit++) {
      if (ldr & (1u << bit)) claim(slots[bit], vcpu);
    }
    return;
  }

  // xAPIC mode: the 8-bit ID, and the configured ID when it does not fit
  // (see destinationMatches()).
  addPhysical(lapic.apicId(), vcpu);
  if (initialApicId > 0xFF) addPhysical(initialApicId, vcpu);
  uint32_t logicalId = ldr >> 24;
  switch (lapic.dfr() >> 28) {
    case kDfrModelFlat:
      for (uint32_t bit = 0; bit < 8; bit++) {
        if (logicalId & (1u << bit)) xapicFlat[bit].add(vcpu);
      }
      break;
    case kDfrModelCluster:
      for (uint32_t bit = 0; bit < 4; bit++) {
        if (logicalId & (1u << bit)) xapicCluster[logicalId >> 4][bit].add(vcpu);
      }
      break;
    default:
      break;
  }
}

bool DestinationMap::lookup(const InterruptMessage& message, kj::Vector<uint32_t>& out,
                            kj::ArrayPtr<uint32_t> stamps, uint32_t stamp) const {
  uint32_t destination = message.destination;
  if (!message.logicalDestination) {
    uint32_t found = kNone;
    if (destination < physicalDense.size()) {
      found = physicalDense[destination];
    } else if (destination >= kDensePhysicalLimit) {
      KJ_IF_MAYBE(vcpu, physicalSparse.find(destination)) found = *vcpu;
    }
    if (found == kAliased) return false;
    if (found != kNone) out.add(found);
    return true;
  }

  auto addOnce = [&](uint32_t vcpu) {
    if (stamps[vcpu] != stamp) {
      stamps[vcpu] = stamp;
      out.add(vcpu);
    }
  };

  // x2APIC-mode targets.
  uint32_t cluster = destination >> 16;
  uint32_t mask = destination & 0xFFFF;
  if (mask != 0 && cluster < x2apicClusterBlock.size() &&
      x2apicClusterBlock[cluster] != kNone) {
    auto& slots = x2apicClusterSlots[x2apicClusterBlock[cluster]];
    for (uint32_t bit = 0; bit < 16; bit++) {
      if (!(mask & (1u << bit))) continue;
      if (slots[bit] == kAliased) return false;
      if (slots[bit] != kNone) addOnce(slots[bit]);
    }
  }

  // xAPIC-mode targets, flat model.
  for (uint32_t bit = 0; bit < 8; bit++) {
    if (destination & (1u << bit)) {
      for (uint32_t vcpu : xapicFlat[bit]) addOnce(vcpu);
    }
  }
  // xAPIC-mode targets, cluster model.
  if ((destination >> 4) < 16) {
    auto& lists = xapicCluster[destination >> 4];
    for (uint32_t bit = 0; bit < 4; bit++) {
      if (destination & (1u << bit)) {
        for (uint32_t vcpu : lists[bit]) addOnce(vcpu);
      }
    }
  }

  if (out.size() > 1) std::sort(out.begin(), out.end());
  return true;
}

}  // namespace vlapic
