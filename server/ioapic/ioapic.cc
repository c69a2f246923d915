// SPDX-License-Identifier: MIT
#include "server/ioapic/ioapic.h"
#include <kj/debug.h>

namespace vlapic {

namespace {

// The window decodes 16-byte register slots; an access must stay inside one.
constexpr uint64_t kSlotSize = 0x10;
constexpr uint64_t kMaxBase = 1ull << 52;
constexpr uint8_t kMaxId = 0xF;
constexpr unsigned kIdShift = 24;
constexpr uint64_t kLowDword = 0xFFFFFFFFull;
constexpr uint32_t kAllPins = (1u << kIoApicPins) - 1;
// KVM answers an indirect index that names no register with all ones.
constexpr uint32_t kUnknownIndexValue = 0xFFFFFFFF;

enum class Slot : uint8_t { NONE, IOREGSEL, IOWIN, EOI };

Slot slotAt(uint64_t slotOffset, uint8_t version) {
  switch (slotOffset) {
    case kIoRegSel: return Slot::IOREGSEL;
    case kIoWin: return Slot::IOWIN;
    // The directed-EOI register came with version 0x20; on the 82093AA
    // (0x11) the offset is as empty as any other.
    case kIoEoi: return version == kIoApicVersion20 ? Slot::EOI : Slot::NONE;
    default: return Slot::NONE;
  }
}

bool isAccessSize(uint8_t size) { return size == 1 || size == 2 || size == 4 || size == 8; }

bool isLevel(uint64_t entry) { return entry & rte::kLevelTriggered; }

}  // namespace

kj::Maybe<kj::String> validateIoApicConfig(const IoApicConfig& config) {
  if (config.base % kIoApicWindowSize != 0) {
    return kj::str("I/O APIC base 0x", kj::hex(config.base), " is not 4 KiB aligned");
  }
  if (config.base >= kMaxBase) {
    return kj::str("I/O APIC base 0x", kj::hex(config.base), " is not below 2^52");
  }
  if (config.version != kIoApicVersion11 && config.version != kIoApicVersion20) {
    return kj::str("I/O APIC version 0x", kj::hex(config.version), " is neither 0x11 nor 0x20");
  }
  if (config.id > kMaxId) {
    return kj::str("I/O APIC ID ", config.id, " does not fit in 4 bits");
  }
  return nullptr;
}

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

IoApic::IoApic(const IoApicConfig& config, IoApicSink& sink) : config_(config), sink(sink) {
  KJ_IF_MAYBE(reason, validateIoApicConfig(config)) {
    KJ_FAIL_REQUIRE("invalid I/O APIC config", *reason);
  }
  reset();
}

const IoApicConfig& IoApic::config() const { return config_; }

bool IoApic::windowContains(uint64_t gpa) const {
  return gpa >= config_.base && gpa - config_.base < kIoApicWindowSize;
}

// ---- MMIO ----

// Why an access is refused before any register is looked at, or NONE: it
// must lie in the window, be 1, 2, 4 or 8 bytes and stay inside one slot.
AccessReason IoApic::checkAccess(uint64_t gpa, uint8_t size) const {
  if (!windowContains(gpa)) return AccessReason::OUTSIDE_WINDOW;
  uint64_t inSlot = (gpa - config_.base) % kSlotSize;
  if (!isAccessSize(size) || inSlot + size > kSlotSize) {
    return AccessReason::BAD_SIZE_OR_ALIGNMENT;
  }
  return AccessReason::NONE;
}

AccessResult IoApic::mmioRead(uint64_t gpa, uint8_t size) {
  AccessReason refused = checkAccess(gpa, size);
  if (refused != AccessReason::NONE) return AccessResult::ignored(refused);
  uint64_t offset = gpa - config_.base;
  uint64_t inSlot = offset % kSlotSize;
  AccessResult result;
  switch (slotAt(offset - inSlot, config_.version)) {
    case Slot::NONE: return AccessResult::ignored(AccessReason::RESERVED_REGISTER);
    case Slot::IOREGSEL: result = AccessResult::ok(state.ioregsel); break;
    case Slot::IOWIN: result = readIndirect(); break;
    // Write-only (QEMU's version 0x20 reads it as 0).
    case Slot::EOI: result = AccessResult::ignored(AccessReason::WRITE_ONLY_REGISTER); break;
  }
  // A partial read sees the bytes of the 32-bit register at its offset; the
  // slot's bytes past the register read 0.
  unsigned shift = unsigned(inSlot) * 8;
  result.value = shift >= 64 ? 0 : result.value >> shift;
  if (size < 8) result.value &= (1ull << (size * 8)) - 1;
  return result;
}

AccessResult IoApic::mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) {
  AccessReason refused = checkAccess(gpa, size);
  if (refused != AccessReason::NONE) return AccessResult::ignored(refused);
  uint64_t offset = gpa - config_.base;
  uint64_t inSlot = offset % kSlotSize;
  Slot slot = slotAt(offset - inSlot, config_.version);
  if (slot == Slot::NONE) return AccessResult::ignored(AccessReason::RESERVED_REGISTER);
  // KVM takes 4- and 8-byte writes at the register and drops the rest: a
  // partial write of IOREGSEL or IOWIN has no defined meaning.
  if (inSlot != 0 || (size != 4 && size != 8)) {
    return AccessResult::ignored(AccessReason::BAD_SIZE_OR_ALIGNMENT);
  }
  uint32_t data = uint32_t(value);
  switch (slot) {
    case Slot::NONE: break;  // handled above
    case Slot::IOREGSEL: state.ioregsel = uint8_t(data); break;
    case Slot::IOWIN: return writeIndirect(data);
    case Slot::EOI: eoiBroadcast(uint8_t(data & rte::kVectorMask)); break;
  }
  return AccessResult::ok();
}

AccessResult IoApic::readIndirect() const {
  uint32_t index = state.ioregsel;
  switch (index) {
    case kIoApicIdIndex: return AccessResult::ok(uint32_t(state.id) << kIdShift);
    case kIoApicVersionIndex:
      return AccessResult::ok(((kIoApicPins - 1) << 16) | config_.version);
    // The 82093AA's arbitration ID is loaded from the ID register; KVM
    // reports it that way.
    case kIoApicArbitrationIndex: return AccessResult::ok(uint32_t(state.id) << kIdShift);
  }
  if (index >= kIoApicRedirectionIndex) {
    uint32_t pin = (index - kIoApicRedirectionIndex) / 2;
    if (pin < kIoApicPins) {
      uint64_t entry = state.redirection[pin];
      return AccessResult::ok(index & 1 ? entry >> 32 : entry & kLowDword);
    }
  }
  return AccessResult::ignored(AccessReason::RESERVED_REGISTER, kUnknownIndexValue);
}

AccessResult IoApic::writeIndirect(uint32_t value) {
  uint32_t index = state.ioregsel;
  switch (index) {
    case kIoApicIdIndex:
      state.id = (value >> kIdShift) & kMaxId;
      return AccessResult::ok();
    case kIoApicVersionIndex:
    case kIoApicArbitrationIndex:
      return AccessResult::ignored(AccessReason::READ_ONLY_REGISTER);
  }
  if (index >= kIoApicRedirectionIndex) {
    uint32_t pin = (index - kIoApicRedirectionIndex) / 2;
    if (pin < kIoApicPins) {
      writeEntry(pin, index & 1, value);
      return AccessResult::ok();
    }
  }
  return AccessResult::ignored(AccessReason::RESERVED_REGISTER);
}

void IoApic::writeEntry(uint32_t pin, bool high, uint32_t value) {
  uint64_t& entry = state.redirection[pin];
  uint64_t old = entry;
  uint64_t written = high ? (old & kLowDword) | (uint64_t(value) << 32)
                          : (old & ~kLowDword) | value;
  entry = (written & ~rte::kReadOnlyBits) | (old & rte::kReadOnlyBits);
  uint32_t bit = 1u << pin;
  if (isLevel(entry)) {
    // A pending edge means nothing to a level entry (its wire is the state).
    state.pendingEdges &= ~bit;
  } else {
    // KVM clears remote IRR when an entry becomes (or is rewritten as) edge:
    // Linux and Xen switch a pin to edge and back to clear a stuck one.
    entry &= ~rte::kRemoteIrr;
  }
  // A level pin left asserted while masked (or asserted by a polarity
  // change) sends now; an edge that arrived while masked is sent on unmask.
  // A polarity change alone is no edge (KVM reads the wire only on
  // set_irq).
  bool unmasked = (old & rte::kMasked) && !(entry & rte::kMasked);
  service(pin, unmasked && isLevel(entry));
}

// ---- Pins ----

void IoApic::setPinLevel(uint32_t pin, bool level) {
  KJ_REQUIRE(pin < kIoApicPins, "no such I/O APIC pin", pin);
  uint32_t bit = 1u << pin;
  bool wasAsserted = pinAsserted(pin);
  state.pinLevels = level ? state.pinLevels | bit : state.pinLevels & ~bit;
  bool asserted = pinAsserted(pin);
  IoApicPinStats& pinStats = stats[pin];
  if (asserted && !wasAsserted) pinStats.assertions++;
  uint64_t entry = state.redirection[pin];
  if (isLevel(entry)) {
    if (!asserted) return;  // remote IRR stays until the EOI
    if (entry & rte::kRemoteIrr) {
      // The message in service covers this assertion; the EOI re-sends if
      // the pin is still asserted then.
      pinStats.coalesced++;
      return;
    }
    // Each assert services a level pin, repeated or not (KVM's set_irq).
    service(pin, false);
  } else {
    if (!asserted) {
      state.pendingEdges &= ~bit;
      return;
    }
    if (wasAsserted) return;  // no edge
    if (state.pendingEdges & bit) pinStats.coalesced++;
    state.pendingEdges |= bit;
    service(pin, false);
  }
}

bool IoApic::pinLevel(uint32_t pin) const {
  KJ_REQUIRE(pin < kIoApicPins, "no such I/O APIC pin", pin);
  return state.pinLevels & (1u << pin);
}

bool IoApic::pinAsserted(uint32_t pin) const {
  return pinLevel(pin) != bool(state.redirection[pin] & rte::kActiveLow);
}

// Sends the pin's message if the entry can send now: unmasked, and an
// asserted level pin with remote IRR clear, or an edge pending.
void IoApic::service(uint32_t pin, bool redelivery) {
  uint64_t& entry = state.redirection[pin];
  if (entry & rte::kMasked) return;
  uint32_t bit = 1u << pin;
  if (isLevel(entry)) {
    if (!pinAsserted(pin) || (entry & rte::kRemoteIrr)) return;
    // Set for every level message, as KVM does, so the pin waits for its
    // EOI before it sends again.
    entry |= rte::kRemoteIrr;
  } else {
    if (!(state.pendingEdges & bit)) return;
    state.pendingEdges &= ~bit;
  }
  IoApicPinStats& pinStats = stats[pin];
  pinStats.messages++;
  if (redelivery) pinStats.redeliveries++;
  sink.sendIoApicMessage(decodeRedirectionEntry(entry).message);
}

// ---- EOI ----

void IoApic::eoiBroadcast(uint8_t vector) {
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    uint64_t& entry = state.redirection[pin];
    if (!isLevel(entry) || (entry & rte::kVectorMask) != vector ||
        !(entry & rte::kRemoteIrr)) {
      continue;
    }
    entry &= ~rte::kRemoteIrr;
    stats[pin].eois++;
    service(pin, true);
  }
}

// ---- Reset, state ----

void IoApic::reset() {
  state = IoApicState();
  state.id = config_.id;
  for (uint64_t& entry: state.redirection) entry = rte::kResetValue;
}

uint64_t IoApic::redirectionEntry(uint32_t pin) const {
  KJ_REQUIRE(pin < kIoApicPins, "no such I/O APIC pin", pin);
  return state.redirection[pin];
}

const IoApicPinStats& IoApic::pinStats(uint32_t pin) const {
  KJ_REQUIRE(pin < kIoApicPins, "no such I/O APIC pin", pin);
  return stats[pin];
}

IoApicState IoApic::save() const { return state; }

kj::Maybe<kj::String> IoApic::validate(const IoApicState& s) const {
  if (s.pinLevels & ~kAllPins) {
    return kj::str("pinLevels ", kj::hex(s.pinLevels), " names a pin above ", kIoApicPins - 1);
  }
  if (s.pendingEdges & ~kAllPins) {
    return kj::str("pendingEdges ", kj::hex(s.pendingEdges), " names a pin above ",
                   kIoApicPins - 1);
  }
  if (s.id > kMaxId) return kj::str("I/O APIC ID ", s.id, " does not fit in 4 bits");
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    uint64_t entry = s.redirection[pin];
    if (isLevel(entry)) {
      if (s.pendingEdges & (1u << pin)) {
        return kj::str("pin ", pin, " is level-triggered but has a pending edge");
      }
    } else if (entry & rte::kRemoteIrr) {
      return kj::str("pin ", pin, " is edge-triggered but has remote IRR set");
    }
  }
  return nullptr;
}

void IoApic::restore(const IoApicState& s) {
  KJ_IF_MAYBE(reason, validate(s)) {
    KJ_FAIL_REQUIRE("invalid I/O APIC state", *reason);
  }
  state = s;
  for (uint64_t& entry: state.redirection) entry &= ~rte::kDeliveryStatus;
  // What was pending when the state was saved is delivered now, as KVM's
  // KVM_SET_IRQCHIP re-injects its irr.
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) service(pin, false);
}

}  // namespace vlapic
