// SPDX-License-Identifier: MIT
// A typed register API: value types with named bitfields for each LAPIC
// register (SDM Vol. 3A, APIC chapter, the register figures), and typed views
// over the two byte layouts registers live in: the architectural 4 KiB
// virtual-APIC page and KVM's 1 KiB `kvm_lapic_state` (KVM_GET_LAPIC /
// KVM_SET_LAPIC). Callers name fields instead of computing offsets and shifts
// by hand (seed 002).
//
// Value types are plain 32- or 64-bit wrappers: copyable, comparable, and
// constexpr. Setters return *this so a value can be built in one expression:
//   LvtValue().setVector(0x30).setTimerMode(TimerMode::PERIODIC)
// A setter masks its argument to the field's width; bits outside the field
// are kept, so read-modify-write of a raw register value preserves reserved
// bits exactly.
#pragma once

#include "schema/model/types.h"
#include "schema/model/registers.h"
#include "hal/hal.h"
#include <kj/array.h>
#include <kj/common.h>
#include <cstdint>

namespace vlapic {

namespace regview_detail {

template <typename T>
constexpr T fieldMask(unsigned width) {
  return width >= sizeof(T) * 8 ? ~T(0) : T((T(1) << width) - 1);
}
template <typename T>
constexpr T getField(T raw, unsigned low, unsigned width) {
  return (raw >> low) & fieldMask<T>(width);
}
template <typename T>
constexpr T setField(T raw, unsigned low, unsigned width, T value) {
  T mask = T(fieldMask<T>(width) << low);
  return T((raw & ~mask) | ((value << low) & mask));
}
template <typename T>
constexpr T setFlag(T raw, unsigned bit, bool value) {
  return setField<T>(raw, bit, 1, value ? 1 : 0);
}

}  // namespace regview_detail

// LVT LINT0/LINT1 input pin polarity (bit 13).
enum class PinPolarity : uint8_t { ACTIVE_HIGH = 0, ACTIVE_LOW = 1 };

// DFR model, bits 31:28 (SDM "Logical Destination Mode"). Other values are
// reserved; DfrValue::model() returns them as they are.
enum class DfrModel : uint8_t { CLUSTER = 0x0, FLAT = 0xF };

// IA32_APIC_BASE (MSR 0x1B), SDM "Local APIC Status and Location" and
// "x2APIC State Transitions".
class ApicBaseValue {
public:
  constexpr ApicBaseValue() = default;
  constexpr explicit ApicBaseValue(uint64_t raw): bits(raw) {}
  constexpr uint64_t raw() const { return bits; }

  constexpr bool bsp() const { return bits & kApicBaseBsp; }             // bit 8
  constexpr bool x2apicEnabled() const { return bits & kApicBaseExtd; }  // bit 10 (EXTD)
  constexpr bool enabled() const { return bits & kApicBaseEnable; }      // bit 11 (EN)
  // The 4 KiB-aligned base, bits 12 and up (the caller's MAXPHYADDR decides
  // which of them are reserved).
  constexpr uint64_t base() const { return bits & ~uint64_t(0xFFF); }

  constexpr ApicBaseValue& setBsp(bool v) { bits = regview_detail::setFlag<uint64_t>(bits, 8, v); return *this; }
  constexpr ApicBaseValue& setX2apicEnabled(bool v) { bits = regview_detail::setFlag<uint64_t>(bits, 10, v); return *this; }
  constexpr ApicBaseValue& setEnabled(bool v) { bits = regview_detail::setFlag<uint64_t>(bits, 11, v); return *this; }
  // Low 12 bits of `base` are ignored.
  constexpr ApicBaseValue& setBase(uint64_t base) {
    bits = (bits & uint64_t(0xFFF)) | (base & ~uint64_t(0xFFF));
    return *this;
  }

  // EN=0 means disabled whatever EXTD says; EN=1, EXTD=1 is x2APIC. The
  // combination EN=0, EXTD=1 is invalid (a WRMSR producing it raises #GP);
  // validState() tells it apart.
  constexpr ApicMode mode() const {
    return !enabled() ? ApicMode::DISABLED : x2apicEnabled() ? ApicMode::X2APIC : ApicMode::XAPIC;
  }
  constexpr bool validState() const { return enabled() || !x2apicEnabled(); }

  constexpr bool operator==(const ApicBaseValue&) const = default;

private:
  uint64_t bits = 0;
};

// The Interrupt Command Register as one 64-bit value (SDM "Interrupt Command
// Register (ICR)"): xAPIC splits it into ICR low (0x300) and high (0x310),
// x2APIC has one 64-bit MSR 0x830.
class IcrValue {
public:
  constexpr IcrValue() = default;
  constexpr explicit IcrValue(uint64_t raw): bits(raw) {}
  constexpr IcrValue(uint32_t low, uint32_t high): bits(uint64_t(high) << 32 | low) {}
  constexpr uint64_t raw() const { return bits; }
  constexpr uint32_t low() const { return uint32_t(bits); }
  constexpr uint32_t high() const { return uint32_t(bits >> 32); }

  constexpr uint8_t vector() const { return uint8_t(bits); }                              // 7:0
  constexpr DeliveryMode deliveryMode() const { return DeliveryMode(get(8, 3)); }          // 10:8
  constexpr bool logicalDestination() const { return get(11, 1); }                         // 11
  constexpr bool deliveryPending() const { return get(12, 1); }                            // 12 (xAPIC, RO)
  constexpr bool levelAssert() const { return get(14, 1); }                                // 14
  constexpr TriggerMode trigger() const { return TriggerMode(get(15, 1)); }                // 15
  constexpr Shorthand shorthand() const { return Shorthand(get(18, 2)); }                  // 19:18
  constexpr uint8_t xapicDestination() const { return uint8_t(get(56, 8)); }               // 63:56
  constexpr uint32_t x2apicDestination() const { return uint32_t(get(32, 32)); }           // 63:32

  constexpr IcrValue& setVector(uint8_t v) { return set(0, 8, v); }
  constexpr IcrValue& setDeliveryMode(DeliveryMode m) { return set(8, 3, uint8_t(m)); }
  constexpr IcrValue& setLogicalDestination(bool v) { return set(11, 1, v); }
  constexpr IcrValue& setDeliveryPending(bool v) { return set(12, 1, v); }
  constexpr IcrValue& setLevelAssert(bool v) { return set(14, 1, v); }
  constexpr IcrValue& setTrigger(TriggerMode t) { return set(15, 1, uint8_t(t)); }
  constexpr IcrValue& setShorthand(Shorthand s) { return set(18, 2, uint8_t(s)); }
  constexpr IcrValue& setXapicDestination(uint8_t d) { return set(56, 8, d); }
  constexpr IcrValue& setX2apicDestination(uint32_t d) { return set(32, 32, d); }

  // The interrupt message this ICR sends. In x2APIC format the destination
  // is ICR[63:32], in xAPIC format ICR[63:56].
  constexpr InterruptMessage toMessage(bool x2apicFormat) const {
    InterruptMessage m;
    m.vector = vector();
    m.deliveryMode = deliveryMode();
    m.logicalDestination = logicalDestination();
    m.shorthand = shorthand();
    m.destination = x2apicFormat ? x2apicDestination() : xapicDestination();
    m.x2apicFormat = x2apicFormat;
    m.levelAssert = levelAssert();
    m.trigger = trigger();
    return m;
  }

  constexpr bool operator==(const IcrValue&) const = default;

private:
  uint64_t bits = 0;
  constexpr uint64_t get(unsigned low, unsigned width) const {
    return regview_detail::getField<uint64_t>(bits, low, width);
  }
  constexpr IcrValue& set(unsigned low, unsigned width, uint64_t v) {
    bits = regview_detail::setField<uint64_t>(bits, low, width, v);
    return *this;
  }
};

// One LVT entry (SDM "Local Vector Table"). Which fields an entry has depends
// on the entry (Timer: no delivery mode, a timer mode; LINT0/1: polarity,
// remote IRR, trigger); the accessors read the bits regardless, and the
// register table's writable masks say which are real for each entry.
class LvtValue {
public:
  constexpr LvtValue() = default;
  constexpr explicit LvtValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  constexpr uint8_t vector() const { return uint8_t(bits); }                        // 7:0
  constexpr DeliveryMode deliveryMode() const { return DeliveryMode(get(8, 3)); }    // 10:8
  constexpr bool deliveryPending() const { return get(12, 1); }                      // 12 (RO)
  constexpr PinPolarity polarity() const { return PinPolarity(get(13, 1)); }         // 13
  constexpr bool remoteIrr() const { return get(14, 1); }                            // 14 (RO)
  constexpr TriggerMode trigger() const { return TriggerMode(get(15, 1)); }          // 15
  constexpr bool masked() const { return get(16, 1); }                               // 16
  // Bits 18:17. The value 3 is reserved and comes back as TimerMode(3).
  constexpr TimerMode timerMode() const { return TimerMode(get(17, 2)); }

  constexpr LvtValue& setVector(uint8_t v) { return set(0, 8, v); }
  constexpr LvtValue& setDeliveryMode(DeliveryMode m) { return set(8, 3, uint8_t(m)); }
  constexpr LvtValue& setDeliveryPending(bool v) { return set(12, 1, v); }
  constexpr LvtValue& setPolarity(PinPolarity p) { return set(13, 1, uint8_t(p)); }
  constexpr LvtValue& setRemoteIrr(bool v) { return set(14, 1, v); }
  constexpr LvtValue& setTrigger(TriggerMode t) { return set(15, 1, uint8_t(t)); }
  constexpr LvtValue& setMasked(bool v) { return set(16, 1, v); }
  constexpr LvtValue& setTimerMode(TimerMode m) { return set(17, 2, uint8_t(m)); }

  constexpr bool operator==(const LvtValue&) const = default;

private:
  uint32_t bits = 0;
  constexpr uint32_t get(unsigned low, unsigned width) const {
    return regview_detail::getField<uint32_t>(bits, low, width);
  }
  constexpr LvtValue& set(unsigned low, unsigned width, uint32_t v) {
    bits = regview_detail::setField<uint32_t>(bits, low, width, v);
    return *this;
  }
};

// Spurious-Interrupt Vector Register (SDM "Spurious Interrupt").
class SvrValue {
public:
  constexpr SvrValue() = default;
  constexpr explicit SvrValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  constexpr uint8_t spuriousVector() const { return uint8_t(bits); }              // 7:0
  constexpr bool apicEnabled() const { return bits & (1u << 8); }                 // 8: software enable
  constexpr bool focusCheckingDisabled() const { return bits & (1u << 9); }       // 9
  constexpr bool eoiBroadcastSuppressed() const { return bits & (1u << 12); }     // 12

  constexpr SvrValue& setSpuriousVector(uint8_t v) { bits = regview_detail::setField<uint32_t>(bits, 0, 8, v); return *this; }
  constexpr SvrValue& setApicEnabled(bool v) { bits = regview_detail::setFlag<uint32_t>(bits, 8, v); return *this; }
  constexpr SvrValue& setFocusCheckingDisabled(bool v) { bits = regview_detail::setFlag<uint32_t>(bits, 9, v); return *this; }
  constexpr SvrValue& setEoiBroadcastSuppressed(bool v) { bits = regview_detail::setFlag<uint32_t>(bits, 12, v); return *this; }

  constexpr bool operator==(const SvrValue&) const = default;

private:
  uint32_t bits = 0;
};

// Divide Configuration Register (SDM "APIC Timer"): the divide value is
// encoded in bits 3, 1 and 0; bit 2 is reserved. 000 -> 2, 001 -> 4, ...,
// 110 -> 128, 111 -> 1.
class DcrValue {
public:
  constexpr DcrValue() = default;
  constexpr explicit DcrValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  // The 3-bit code: bit 3 of the register is bit 2 of the code.
  constexpr uint8_t code() const { return uint8_t(((bits >> 1) & 4) | (bits & 3)); }
  constexpr uint32_t divisor() const { return code() == 7 ? 1 : 2u << code(); }

  // Keeps the register's other bits (including reserved bit 2).
  constexpr DcrValue& setCode(uint8_t code) {
    bits = (bits & ~uint32_t(0xB)) | (uint32_t(code & 4) << 1) | (code & 3);
    return *this;
  }
  // The register value for a divisor of 1, 2, 4, ..., 128; nullptr for any
  // other number.
  static kj::Maybe<DcrValue> fromDivisor(uint32_t divisor);

  constexpr bool operator==(const DcrValue&) const = default;

private:
  uint32_t bits = 0;
};

// Error Status Register (SDM "Error Handling").
class EsrValue {
public:
  constexpr EsrValue() = default;
  constexpr explicit EsrValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  enum Bit : uint8_t {
    SEND_CHECKSUM = 0,
    RECEIVE_CHECKSUM = 1,
    SEND_ACCEPT = 2,
    RECEIVE_ACCEPT = 3,
    REDIRECTABLE_IPI = 4,
    SEND_ILLEGAL_VECTOR = 5,
    RECEIVED_ILLEGAL_VECTOR = 6,
    ILLEGAL_REGISTER_ADDRESS = 7,
  };

  constexpr bool has(Bit b) const { return bits & (1u << b); }
  constexpr EsrValue& set(Bit b, bool v) { bits = regview_detail::setFlag<uint32_t>(bits, b, v); return *this; }

  constexpr bool sendChecksumError() const { return has(SEND_CHECKSUM); }
  constexpr bool receiveChecksumError() const { return has(RECEIVE_CHECKSUM); }
  constexpr bool sendAcceptError() const { return has(SEND_ACCEPT); }
  constexpr bool receiveAcceptError() const { return has(RECEIVE_ACCEPT); }
  constexpr bool redirectableIpi() const { return has(REDIRECTABLE_IPI); }
  constexpr bool sendIllegalVector() const { return has(SEND_ILLEGAL_VECTOR); }
  constexpr bool receivedIllegalVector() const { return has(RECEIVED_ILLEGAL_VECTOR); }
  constexpr bool illegalRegisterAddress() const { return has(ILLEGAL_REGISTER_ADDRESS); }

  constexpr EsrValue& setSendChecksumError(bool v) { return set(SEND_CHECKSUM, v); }
  constexpr EsrValue& setReceiveChecksumError(bool v) { return set(RECEIVE_CHECKSUM, v); }
  constexpr EsrValue& setSendAcceptError(bool v) { return set(SEND_ACCEPT, v); }
  constexpr EsrValue& setReceiveAcceptError(bool v) { return set(RECEIVE_ACCEPT, v); }
  constexpr EsrValue& setRedirectableIpi(bool v) { return set(REDIRECTABLE_IPI, v); }
  constexpr EsrValue& setSendIllegalVector(bool v) { return set(SEND_ILLEGAL_VECTOR, v); }
  constexpr EsrValue& setReceivedIllegalVector(bool v) { return set(RECEIVED_ILLEGAL_VECTOR, v); }
  constexpr EsrValue& setIllegalRegisterAddress(bool v) { return set(ILLEGAL_REGISTER_ADDRESS, v); }

  constexpr bool operator==(const EsrValue&) const = default;

private:
  uint32_t bits = 0;
};

// Local APIC Version Register (SDM "Local APIC Version Register").
class VersionValue {
public:
  constexpr VersionValue() = default;
  constexpr explicit VersionValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  constexpr uint8_t version() const { return uint8_t(bits); }                             // 7:0
  constexpr uint8_t maxLvtEntry() const { return uint8_t(bits >> 16); }                   // 23:16
  constexpr unsigned lvtEntries() const { return maxLvtEntry() + 1u; }
  constexpr bool eoiBroadcastSuppressionSupported() const { return bits & (1u << 24); }  // 24

  constexpr VersionValue& setVersion(uint8_t v) { bits = regview_detail::setField<uint32_t>(bits, 0, 8, v); return *this; }
  constexpr VersionValue& setMaxLvtEntry(uint8_t v) { bits = regview_detail::setField<uint32_t>(bits, 16, 8, v); return *this; }
  constexpr VersionValue& setEoiBroadcastSuppressionSupported(bool v) { bits = regview_detail::setFlag<uint32_t>(bits, 24, v); return *this; }

  constexpr bool operator==(const VersionValue&) const = default;

private:
  uint32_t bits = 0;
};

// TPR, APR and PPR (SDM "Task and Processor Priorities"): priority class in
// 7:4, subclass in 3:0, bits 31:8 reserved.
class PriorityValue {
public:
  constexpr PriorityValue() = default;
  constexpr explicit PriorityValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  constexpr uint8_t priority() const { return uint8_t(bits); }               // 7:0
  constexpr uint8_t priorityClass() const { return uint8_t(bits >> 4 & 0xF); }  // 7:4
  constexpr uint8_t subclass() const { return uint8_t(bits & 0xF); }            // 3:0

  constexpr PriorityValue& setPriorityClass(uint8_t c) { bits = regview_detail::setField<uint32_t>(bits, 4, 4, c); return *this; }
  constexpr PriorityValue& setSubclass(uint8_t s) { bits = regview_detail::setField<uint32_t>(bits, 0, 4, s); return *this; }

  constexpr bool operator==(const PriorityValue&) const = default;

private:
  uint32_t bits = 0;
};

// Logical Destination Register (SDM "Logical Destination Mode", "Logical
// Destination Mode in x2APIC Mode"). xAPIC: 8-bit logical ID in 31:24 (flat:
// a bitmap; cluster: cluster in 31:28, member bitmap in 27:24). x2APIC
// (read-only, derived from the ID): cluster in 31:16, member bitmap in 15:0.
class LdrValue {
public:
  constexpr LdrValue() = default;
  constexpr explicit LdrValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  constexpr uint8_t xapicLogicalId() const { return uint8_t(bits >> 24); }        // 31:24
  constexpr uint8_t xapicCluster() const { return uint8_t(bits >> 28); }          // 31:28
  constexpr uint8_t xapicClusterMembers() const { return uint8_t(bits >> 24 & 0xF); }  // 27:24
  constexpr uint16_t x2apicCluster() const { return uint16_t(bits >> 16); }       // 31:16
  constexpr uint16_t x2apicMembers() const { return uint16_t(bits); }             // 15:0

  constexpr LdrValue& setXapicLogicalId(uint8_t id) { bits = regview_detail::setField<uint32_t>(bits, 24, 8, id); return *this; }
  constexpr LdrValue& setX2apicCluster(uint16_t c) { bits = regview_detail::setField<uint32_t>(bits, 16, 16, c); return *this; }
  constexpr LdrValue& setX2apicMembers(uint16_t m) { bits = regview_detail::setField<uint32_t>(bits, 0, 16, m); return *this; }

  // The LDR an x2APIC with this ID has (SDM "Deriving Logical x2APIC ID
  // from the Local x2APIC ID"): cluster = id[31:4], member bit = id[3:0].
  static constexpr LdrValue forX2apicId(uint32_t id) {
    return LdrValue(((id >> 4) << 16) | (1u << (id & 0xF)));
  }

  constexpr bool operator==(const LdrValue&) const = default;

private:
  uint32_t bits = 0;
};

// Destination Format Register (xAPIC only): model in 31:28, 27:0 read as 1s.
class DfrValue {
public:
  constexpr DfrValue() = default;
  constexpr explicit DfrValue(uint32_t raw): bits(raw) {}
  constexpr uint32_t raw() const { return bits; }

  constexpr DfrModel model() const { return DfrModel(bits >> 28); }
  constexpr bool flat() const { return model() == DfrModel::FLAT; }
  constexpr bool cluster() const { return model() == DfrModel::CLUSTER; }

  constexpr DfrValue& setModel(DfrModel m) { bits = regview_detail::setField<uint32_t>(bits, 28, 4, uint8_t(m)); return *this; }

  constexpr bool operator==(const DfrValue&) const = default;

private:
  uint32_t bits = 0;
};

// A set of vectors 0..255 laid out as ISR, TMR and IRR are: vector v is bit
// v % 32 of the 32-bit slice v / 32.
class VectorSet {
public:
  constexpr VectorSet() = default;

  constexpr bool contains(uint8_t vector) const { return words[vector >> 5] >> (vector & 31) & 1; }
  constexpr VectorSet& set(uint8_t vector, bool present) {
    words[vector >> 5] = regview_detail::setFlag<uint32_t>(words[vector >> 5], vector & 31, present);
    return *this;
  }
  constexpr uint32_t slice(unsigned index) const { return words[index]; }  // index 0..7
  constexpr VectorSet& setSlice(unsigned index, uint32_t bits) { words[index] = bits; return *this; }

  constexpr bool empty() const {
    for (uint32_t w: words) if (w != 0) return false;
    return true;
  }
  // The highest vector in the set (what priority decisions look at).
  kj::Maybe<uint8_t> highest() const;
  // Every vector in the set, ascending.
  kj::Array<uint8_t> vectors() const;

  constexpr bool operator==(const VectorSet&) const = default;

private:
  uint32_t words[8] = {};
};

// How a register image lays out the fields whose place depends on the APIC
// mode (SDM "x2APIC Register Address Space"; KVM's kvm_lapic_state).
enum class RegisterLayout : uint8_t {
  // xAPIC: ID in 31:24; ICR high (0x310) holds the destination in 31:24.
  XAPIC,
  // x2APIC, 32-bit IDs: the virtual-APIC page in x2APIC mode, and KVM's
  // kvm_lapic_state with KVM_X2APIC_API_USE_32BIT_IDS. ID (0x020) is the
  // 32-bit x2APIC ID; 0x310 holds ICR[63:32].
  X2APIC,
  // KVM's kvm_lapic_state in x2APIC mode without KVM_X2APIC_API_USE_32BIT_IDS:
  // the x2APIC ID shifted into 31:24 (so only 8 bits of it); 0x310 still
  // holds ICR[63:32].
  X2APIC_LEGACY_ID,
};

// The layout of a register image saved in this mode. `x2apic32BitIds` only
// matters in x2APIC mode (LapicSnapshot::x2apic32BitIds).
constexpr RegisterLayout layoutFor(ApicMode mode, bool x2apic32BitIds = true) {
  return mode != ApicMode::X2APIC ? RegisterLayout::XAPIC
       : x2apic32BitIds ? RegisterLayout::X2APIC
       : RegisterLayout::X2APIC_LEGACY_ID;
}

constexpr size_t kKvmLapicStateSize = 1024;  // sizeof(struct kvm_lapic_state)

// Read access to a register image: each register a little-endian 32-bit
// word at its xAPIC offset (registers.h). A view borrows the bytes; it is a
// value type as cheap as an ArrayPtr and must not outlive them.
class ConstRegisterView {
public:
  kj::ArrayPtr<const kj::byte> bytes() const { return image; }
  RegisterLayout layout() const { return regLayout; }

  uint32_t raw(Reg reg) const;

  // APIC ID in the layout's encoding: XAPIC and X2APIC_LEGACY_ID take 31:24,
  // X2APIC the whole 32 bits.
  uint32_t id() const;
  VersionValue version() const { return VersionValue(raw(Reg::VERSION)); }
  PriorityValue tpr() const { return PriorityValue(raw(Reg::TPR)); }
  PriorityValue apr() const { return PriorityValue(raw(Reg::APR)); }
  PriorityValue ppr() const { return PriorityValue(raw(Reg::PPR)); }
  LdrValue ldr() const { return LdrValue(raw(Reg::LDR)); }
  DfrValue dfr() const { return DfrValue(raw(Reg::DFR)); }
  SvrValue svr() const { return SvrValue(raw(Reg::SVR)); }
  EsrValue esr() const { return EsrValue(raw(Reg::ESR)); }
  // ICR low | (0x310 << 32): in every layout that is the 64-bit ICR (in
  // xAPIC its bits 55:32 are the reserved part of ICR high).
  IcrValue icr() const { return IcrValue(raw(Reg::ICR_LOW), raw(Reg::ICR_HIGH)); }
  // The message the ICR describes, with the destination this layout uses.
  InterruptMessage icrMessage() const { return icr().toMessage(regLayout != RegisterLayout::XAPIC); }
  // `reg` must be one of the LVT registers (LVT_CMCI, LVT_TIMER .. LVT_ERROR).
  LvtValue lvt(Reg reg) const;
  uint32_t timerInitialCount() const { return raw(Reg::TIMER_INITIAL_COUNT); }
  uint32_t timerCurrentCount() const { return raw(Reg::TIMER_CURRENT_COUNT); }
  DcrValue timerDivideConfig() const { return DcrValue(raw(Reg::TIMER_DIVIDE_CONFIG)); }

  bool inIsr(uint8_t vector) const { return bitmapBit(Reg::ISR0, vector); }
  bool inTmr(uint8_t vector) const { return bitmapBit(Reg::TMR0, vector); }
  bool inIrr(uint8_t vector) const { return bitmapBit(Reg::IRR0, vector); }
  VectorSet isr() const { return bitmap(Reg::ISR0); }
  VectorSet tmr() const { return bitmap(Reg::TMR0); }
  VectorSet irr() const { return bitmap(Reg::IRR0); }

protected:
  // At least 1 KiB: every register lives below offset 0x400.
  ConstRegisterView(kj::ArrayPtr<const kj::byte> image, RegisterLayout layout);

  bool bitmapBit(Reg first, uint8_t vector) const;
  VectorSet bitmap(Reg first) const;

private:
  kj::ArrayPtr<const kj::byte> image;
  RegisterLayout regLayout;
};

// Read-write access to a register image. Setters store exactly the value
// given: they are a typed editor for saved state, not a guest access (no
// writable masks, no side effects); Lapic::restore() validates what comes
// back.
class RegisterView: public ConstRegisterView {
public:
  kj::ArrayPtr<kj::byte> mutableBytes() { return writable; }

  void setRaw(Reg reg, uint32_t value);

  // XAPIC and X2APIC_LEGACY_ID keep bits 23:0 and need id <= 0xFF.
  void setId(uint32_t id);
  void setVersion(VersionValue v) { setRaw(Reg::VERSION, v.raw()); }
  void setTpr(PriorityValue v) { setRaw(Reg::TPR, v.raw()); }
  void setApr(PriorityValue v) { setRaw(Reg::APR, v.raw()); }
  void setPpr(PriorityValue v) { setRaw(Reg::PPR, v.raw()); }
  void setLdr(LdrValue v) { setRaw(Reg::LDR, v.raw()); }
  void setDfr(DfrValue v) { setRaw(Reg::DFR, v.raw()); }
  void setSvr(SvrValue v) { setRaw(Reg::SVR, v.raw()); }
  void setEsr(EsrValue v) { setRaw(Reg::ESR, v.raw()); }
  // Writes ICR low and 0x310 (ICR high in xAPIC, ICR[63:32] in x2APIC).
  void setIcr(IcrValue v);
  void setLvt(Reg reg, LvtValue v);
  void setTimerInitialCount(uint32_t count) { setRaw(Reg::TIMER_INITIAL_COUNT, count); }
  void setTimerCurrentCount(uint32_t count) { setRaw(Reg::TIMER_CURRENT_COUNT, count); }
  void setTimerDivideConfig(DcrValue v) { setRaw(Reg::TIMER_DIVIDE_CONFIG, v.raw()); }

  void setInIsr(uint8_t vector, bool present) { setBitmapBit(Reg::ISR0, vector, present); }
  void setInTmr(uint8_t vector, bool present) { setBitmapBit(Reg::TMR0, vector, present); }
  void setInIrr(uint8_t vector, bool present) { setBitmapBit(Reg::IRR0, vector, present); }
  void setIsr(const VectorSet& set) { setBitmap(Reg::ISR0, set); }
  void setTmr(const VectorSet& set) { setBitmap(Reg::TMR0, set); }
  void setIrr(const VectorSet& set) { setBitmap(Reg::IRR0, set); }

protected:
  RegisterView(kj::ArrayPtr<kj::byte> image, RegisterLayout layout);

private:
  kj::ArrayPtr<kj::byte> writable;

  void setBitmapBit(Reg first, uint8_t vector, bool present);
  void setBitmap(Reg first, const VectorSet& set);
};

// KVM's struct kvm_lapic_state: exactly 1024 bytes (LapicSnapshot::regs).
class ConstKvmLapicStateView: public ConstRegisterView {
public:
  ConstKvmLapicStateView(kj::ArrayPtr<const kj::byte> regs, RegisterLayout layout);
};
class KvmLapicStateView: public RegisterView {
public:
  KvmLapicStateView(kj::ArrayPtr<kj::byte> regs, RegisterLayout layout);
};

// The architectural 4 KiB virtual-APIC page (Lapic::page()).
class ConstPageView: public ConstRegisterView {
public:
  ConstPageView(kj::ArrayPtr<const kj::byte> page, RegisterLayout layout);
  ConstPageView(const hal::Page& page, RegisterLayout layout): ConstPageView(page.bytes(), layout) {}
};
class PageView: public RegisterView {
public:
  PageView(kj::ArrayPtr<kj::byte> page, RegisterLayout layout);
  PageView(hal::Page& page, RegisterLayout layout): PageView(page.bytes(), layout) {}
};

// Whether `reg` is an LVT entry.
constexpr bool isLvtRegister(Reg reg) {
  return reg == Reg::LVT_CMCI || (reg >= Reg::LVT_TIMER && reg <= Reg::LVT_ERROR);
}

}  // namespace vlapic
