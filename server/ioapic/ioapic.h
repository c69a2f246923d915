// SPDX-License-Identifier: MIT
// A VM's I/O APIC: an 82093AA-compatible interrupt controller the VM's
// devices are wired to (Intel 82093AA I/O APIC datasheet; the register
// behaviour where the datasheet leaves a choice follows Linux KVM's
// in-kernel I/O APIC, which guests are tested against).
//
// The device turns pin levels into interrupt messages and hands them to an
// IoApicSink, the per-VM delivery layer's one routing path (the same one
// MSIs and IPIs take). It learns of EOIs from the LAPICs' EOI broadcast
// (eoiBroadcast()) and from its own EOI register (version 0x20).
//
// Pure: no I/O, no threads, no capnp types, no clock. Not thread-safe: it
// lives on the thread of the Vm that owns it.
#pragma once

#include "schema/model/ioapic.h"
#include "schema/model/types.h"
#include <kj/common.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic {

struct IoApicConfig {
  bool present = true;   // false: the VM has no I/O APIC (the front owns one)
  uint64_t base = kIoApicDefaultBase;  // 4 KiB aligned, below 2^52
  uint8_t id = 0;        // 4-bit I/O APIC ID after reset (KVM: 0)
  uint8_t version = kIoApicVersion11;  // kIoApicVersion11 or kIoApicVersion20
};

// Why an IoApicConfig is unusable, or nullptr.
kj::Maybe<kj::String> validateIoApicConfig(const IoApicConfig& config);

// The interrupt message a redirection entry sends (xAPIC format, the
// destination's bits 14:8 from the extended destination ID, as Linux and
// KVM use it for APIC IDs above 255), and whether the entry is masked.
struct DecodedRedirectionEntry {
  InterruptMessage message;
  bool masked = false;
};
DecodedRedirectionEntry decodeRedirectionEntry(uint64_t entry);

// Where the I/O APIC's messages go: the per-VM delivery layer.
class IoApicSink {
public:
  virtual ~IoApicSink() noexcept(false) = default;
  // Route one message now. Must not call back into the IoApic.
  virtual void sendIoApicMessage(const InterruptMessage& message) = 0;
};

class IoApic {
public:
  // Requires validateIoApicConfig(config) == nullptr.
  IoApic(const IoApicConfig& config, IoApicSink& sink);
  KJ_DISALLOW_COPY(IoApic);

  const IoApicConfig& config() const;
  bool windowContains(uint64_t gpa) const;

  // ---- Guest accesses to the MMIO window ----
  // Reads: any size 1, 2, 4 or 8 within one 16-byte register slot; the
  // register's value shifted to the access's offset in the slot. Writes: 4
  // or 8 bytes at the slot's start take the low 32 bits (KVM); any other
  // write is IGNORED with BAD_SIZE_OR_ALIGNMENT. Offsets that name no
  // register read 0 and ignore writes (IGNORED, RESERVED_REGISTER).
  AccessResult mmioRead(uint64_t gpa, uint8_t size);
  AccessResult mmioWrite(uint64_t gpa, uint8_t size, uint64_t value);

  // ---- Pins ----
  // The device wired to `pin` drives its wire to `level` (the electrical
  // level: an entry's polarity bit 13 says which level asserts it). pin <
  // kIoApicPins. After reset every wire is low, so an active-low pin is
  // asserted until its device drives it high. Edge entries send on the
  // edge that asserts (while unmasked; a masked edge is kept pending as
  // KVM's irr does and sent if unmasked before the wire returns); level
  // entries send while asserted and remote IRR is clear.
  void setPinLevel(uint32_t pin, bool level);
  bool pinLevel(uint32_t pin) const;
  // Whether the pin is asserted now, its polarity applied.
  bool pinAsserted(uint32_t pin) const;

  // ---- EOI ----
  // A LAPIC's EOI broadcast of a level-triggered vector (SDM 11.8.5; not
  // sent when SVR bit 12 suppresses it): every level entry with this vector
  // and remote IRR set clears remote IRR and, if its pin is still asserted
  // and unmasked, sends again.
  void eoiBroadcast(uint8_t vector);

  // ---- Reset, state ----
  void reset();  // every entry masked, wires low, ID from the config
  uint64_t redirectionEntry(uint32_t pin) const;
  const IoApicPinStats& pinStats(uint32_t pin) const;
  IoApicState save() const;
  // Why `state` cannot be restored, or nullptr. Refused: a pin bit >= 24, an
  // ID above 15, remote IRR on an edge entry, a pending edge on a level
  // entry. Normalised: delivery status (always 0 here: every message is
  // delivered at once).
  kj::Maybe<kj::String> validate(const IoApicState& state) const;
  // Requires validate(state) == nullptr. Then, as KVM's KVM_SET_IRQCHIP
  // re-injects its irr, every unmasked entry whose pin is asserted (level,
  // remote IRR clear) or has a pending edge sends: restore the LAPICs first.
  void restore(const IoApicState& state);

private:
  IoApicConfig config_;
  IoApicSink& sink;
  IoApicState state;
  IoApicPinStats stats[kIoApicPins];

  void service(uint32_t pin, bool redelivery);
  AccessReason checkAccess(uint64_t gpa, uint8_t size) const;
  // The register IOREGSEL selects: its 32-bit value or why it is refused.
  AccessResult writeIndirect(uint32_t value);
  AccessResult readIndirect() const;
  void writeEntry(uint32_t pin, bool high, uint32_t value);
};

}  // namespace vlapic
