// SPDX-License-Identifier: MIT
// The one declarative register table (SDM Vol. 3A, "Local APIC Register
// Address Map" table and "x2APIC Register Address Space" table). Every
// rule about which register exists in which mode, what it resets to and
// which bits a guest can change lives here; lapic.cc, the decoded dumps and
// the tests all read it instead of listing registers again.
#include "schema/model/registers.h"
#include <kj/debug.h>

namespace vlapic {
namespace {

constexpr auto NONE = RegAccess::NONE;
constexpr auto RO = RegAccess::READ_ONLY;
constexpr auto WO = RegAccess::WRITE_ONLY;
constexpr auto RW = RegAccess::READ_WRITE;

// Bits 63:32 of every x2APIC MSR but the ICR raise #GP when set (SDM
// "x2APIC Register Address Space": the upper half is reserved; KVM faults).
constexpr uint64_t kUpperHalf = 0xFFFFFFFF00000000ull;

// LVT field masks (SDM "Local Vector Table" figure).
constexpr uint32_t kVector = 0x000000FF;
constexpr uint32_t kDeliveryMode = 0x00000700;
constexpr uint32_t kPolarity = 1u << 13;
constexpr uint32_t kLevelTrigger = 1u << 15;
constexpr uint32_t kMasked = 1u << 16;
// Timer mode 18:17; bit 18 (TSC-deadline) is only writable when CPUID
// reports TSC-deadline, which the Lapic applies per VM on top of this mask.
constexpr uint32_t kTimerMode = 3u << 17;
constexpr uint32_t kLvtReset = kMasked;

// ICR low (SDM "Interrupt Command Register"): vector, delivery mode,
// destination mode (11), level (14), trigger (15), shorthand (19:18).
// Delivery status (12) is read-only; the rest is reserved.
constexpr uint32_t kIcrLowWritable = 0x000CCFFF;
// x2APIC ICR bits that fault even in KVM-compatible mode: 31:20, 17:16, 13.
constexpr uint64_t kIcrGpBits = 0xFFF00000ull | 0x00030000ull | 0x00002000ull;

// SVR: vector 7:0, APIC software enable 8, focus processor checking 9,
// suppress EOI broadcast 12 (writable only when Version bit 24 is set, which
// the Lapic applies per VM).
constexpr uint32_t kSvrWritable = 0x000013FF;

constexpr RegisterInfo row(Reg reg, kj::StringPtr name, RegAccess xapic, RegAccess x2apic,
                           uint32_t resetValue, uint32_t writableMask,
                           uint32_t x2apicWritableMask, uint64_t x2apicGpBits,
                           RegFormat format, uint8_t minLvtEntries = 0) {
  return RegisterInfo{reg,          name,           xapic,  x2apic,       resetValue,
                      writableMask, x2apicWritableMask, x2apicGpBits, format, minLvtEntries};
}

// A 32-bit slice of a 256-bit vector bitmap: read-only in both modes.
constexpr RegisterInfo bitmapRow(Reg first, unsigned slice, kj::StringPtr name) {
  return row(Reg(uint16_t(first) + slice), name, RO, RO, 0, 0, 0, kUpperHalf,
             RegFormat::VECTOR_BITMAP);
}

constexpr RegisterInfo kTable[] = {
  // ID: xAPIC ID in 31:24, guest-writable as on P6/Pentium 4/Xeon (KVM
  // allows it); x2APIC: the read-only 32-bit x2APIC ID.
  row(Reg::ID, "ID"_kj, RW, RO, 0, 0xFF000000, 0, kUpperHalf, RegFormat::APIC_ID),
  // Version: 0x14 | (max LVT index << 16) | (EOI-broadcast suppression << 24),
  // filled per VM.
  row(Reg::VERSION, "Version"_kj, RO, RO, 0, 0, 0, kUpperHalf, RegFormat::VERSION),
  row(Reg::TPR, "TPR"_kj, RW, RW, 0, 0xFF, 0xFF, kUpperHalf, RegFormat::PRIORITY),
  // APR: not maintained, reads 0 (as KVM); absent in x2APIC mode.
  row(Reg::APR, "APR"_kj, RO, NONE, 0, 0, 0, kUpperHalf, RegFormat::PRIORITY),
  row(Reg::PPR, "PPR"_kj, RO, RO, 0, 0, 0, kUpperHalf, RegFormat::PRIORITY),
  // EOI: the value written is ignored in xAPIC mode; a non-zero WRMSR faults.
  row(Reg::EOI, "EOI"_kj, WO, WO, 0, 0, 0, kUpperHalf, RegFormat::PLAIN),
  // Remote read: obsolete since the Pentium 4 (it read another APIC over the
  // P6's APIC bus). KVM does not decode it in either mode, and neither do
  // we: an access is refused like an absent register's (ignored, reads 0,
  // ESR "illegal register address"), and the front does not serve it from
  // the page. The row stays so the page layout and dumps name the offset.
  row(Reg::RRD, "RRD"_kj, NONE, NONE, 0, 0, 0, kUpperHalf, RegFormat::PLAIN),
  // LDR: logical ID in 31:24; x2APIC: read-only, derived from the x2APIC ID.
  row(Reg::LDR, "LDR"_kj, RW, RO, 0, 0xFF000000, 0, kUpperHalf, RegFormat::LDR),
  // DFR: model in 31:28; 27:0 always read as ones (SDM "Destination Format
  // Register"); absent in x2APIC mode.
  row(Reg::DFR, "DFR"_kj, RW, NONE, 0xFFFFFFFF, 0xF0000000, 0, kUpperHalf, RegFormat::DFR),
  row(Reg::SVR, "SVR"_kj, RW, RW, 0x000000FF, kSvrWritable, kSvrWritable, kUpperHalf,
      RegFormat::SVR),
  bitmapRow(Reg::ISR0, 0, "ISR[0]"_kj), bitmapRow(Reg::ISR0, 1, "ISR[1]"_kj),
  bitmapRow(Reg::ISR0, 2, "ISR[2]"_kj), bitmapRow(Reg::ISR0, 3, "ISR[3]"_kj),
  bitmapRow(Reg::ISR0, 4, "ISR[4]"_kj), bitmapRow(Reg::ISR0, 5, "ISR[5]"_kj),
  bitmapRow(Reg::ISR0, 6, "ISR[6]"_kj), bitmapRow(Reg::ISR0, 7, "ISR[7]"_kj),
  bitmapRow(Reg::TMR0, 0, "TMR[0]"_kj), bitmapRow(Reg::TMR0, 1, "TMR[1]"_kj),
  bitmapRow(Reg::TMR0, 2, "TMR[2]"_kj), bitmapRow(Reg::TMR0, 3, "TMR[3]"_kj),
  bitmapRow(Reg::TMR0, 4, "TMR[4]"_kj), bitmapRow(Reg::TMR0, 5, "TMR[5]"_kj),
  bitmapRow(Reg::TMR0, 6, "TMR[6]"_kj), bitmapRow(Reg::TMR0, 7, "TMR[7]"_kj),
  bitmapRow(Reg::IRR0, 0, "IRR[0]"_kj), bitmapRow(Reg::IRR0, 1, "IRR[1]"_kj),
  bitmapRow(Reg::IRR0, 2, "IRR[2]"_kj), bitmapRow(Reg::IRR0, 3, "IRR[3]"_kj),
  bitmapRow(Reg::IRR0, 4, "IRR[4]"_kj), bitmapRow(Reg::IRR0, 5, "IRR[5]"_kj),
  bitmapRow(Reg::IRR0, 6, "IRR[6]"_kj), bitmapRow(Reg::IRR0, 7, "IRR[7]"_kj),
  // ESR: a write (of any value in xAPIC mode; only 0 in x2APIC mode) latches
  // the accumulated errors; the written value itself is not stored.
  row(Reg::ESR, "ESR"_kj, RW, RW, 0, 0, 0, kUpperHalf, RegFormat::ESR),
  // LVT CMCI exists only when the VM advertises 7 LVT entries.
  row(Reg::LVT_CMCI, "LVT CMCI"_kj, RW, RW, kLvtReset, kVector | kDeliveryMode | kMasked,
      kVector | kDeliveryMode | kMasked, kUpperHalf, RegFormat::LVT_OTHER, 7),
  // ICR: xAPIC low half sends on write; x2APIC is one 64-bit MSR with the
  // destination in 63:32.
  row(Reg::ICR_LOW, "ICR low"_kj, RW, RW, 0, kIcrLowWritable, kIcrLowWritable, kIcrGpBits,
      RegFormat::ICR_LOW),
  row(Reg::ICR_HIGH, "ICR high"_kj, RW, NONE, 0, 0xFF000000, 0, kUpperHalf,
      RegFormat::ICR_HIGH),
  row(Reg::LVT_TIMER, "LVT Timer"_kj, RW, RW, kLvtReset, kVector | kMasked | kTimerMode,
      kVector | kMasked | kTimerMode, kUpperHalf, RegFormat::LVT_TIMER),
  row(Reg::LVT_THERMAL, "LVT Thermal"_kj, RW, RW, kLvtReset, kVector | kDeliveryMode | kMasked,
      kVector | kDeliveryMode | kMasked, kUpperHalf, RegFormat::LVT_OTHER),
  row(Reg::LVT_PMC, "LVT PMC"_kj, RW, RW, kLvtReset, kVector | kDeliveryMode | kMasked,
      kVector | kDeliveryMode | kMasked, kUpperHalf, RegFormat::LVT_OTHER),
  row(Reg::LVT_LINT0, "LVT LINT0"_kj, RW, RW, kLvtReset,
      kVector | kDeliveryMode | kPolarity | kLevelTrigger | kMasked,
      kVector | kDeliveryMode | kPolarity | kLevelTrigger | kMasked, kUpperHalf,
      RegFormat::LVT_LINT),
  row(Reg::LVT_LINT1, "LVT LINT1"_kj, RW, RW, kLvtReset,
      kVector | kDeliveryMode | kPolarity | kLevelTrigger | kMasked,
      kVector | kDeliveryMode | kPolarity | kLevelTrigger | kMasked, kUpperHalf,
      RegFormat::LVT_LINT),
  row(Reg::LVT_ERROR, "LVT Error"_kj, RW, RW, kLvtReset, kVector | kMasked, kVector | kMasked,
      kUpperHalf, RegFormat::LVT_ERROR),
  row(Reg::TIMER_INITIAL_COUNT, "Timer initial count"_kj, RW, RW, 0, 0xFFFFFFFF, 0xFFFFFFFF,
      kUpperHalf, RegFormat::COUNT),
  row(Reg::TIMER_CURRENT_COUNT, "Timer current count"_kj, RO, RO, 0, 0, 0, kUpperHalf,
      RegFormat::COUNT),
  // DCR: divide value in bits 3,1,0 (SDM "Divide Configuration Register").
  row(Reg::TIMER_DIVIDE_CONFIG, "Timer divide config"_kj, RW, RW, 0, 0xB, 0xB, kUpperHalf,
      RegFormat::DIVIDE_CONFIG),
  // SELF IPI: x2APIC only, write-only; bits 31:8 fault.
  row(Reg::SELF_IPI, "SELF IPI"_kj, NONE, WO, 0, 0, 0xFF, 0xFFFFFFFFFFFFFF00ull,
      RegFormat::PLAIN),
};

constexpr size_t kRows = sizeof(kTable) / sizeof(kTable[0]);

// Register index (offset >> 4, or MSR - 0x800) -> row in kTable, or -1.
// The architectural register space ends at offset 0x3F0 / MSR 0x83F.
constexpr size_t kIndexSlots = 0x40;

struct IndexMap {
  int8_t rowAt[kIndexSlots];
};

constexpr IndexMap buildIndex() {
  IndexMap map{};
  for (auto& slot : map.rowAt) slot = -1;
  for (size_t i = 0; i < kRows; ++i) map.rowAt[uint16_t(kTable[i].reg)] = int8_t(i);
  return map;
}

constexpr IndexMap kIndex = buildIndex();

constexpr bool tableInOffsetOrder() {
  for (size_t i = 1; i < kRows; ++i) {
    if (uint16_t(kTable[i - 1].reg) >= uint16_t(kTable[i].reg)) return false;
  }
  return true;
}
static_assert(tableInOffsetOrder(), "registerTable() promises offset order");
static_assert(kRows == 48, "every architectural register has exactly one row");

const RegisterInfo* rowAtIndex(uint32_t index) {
  if (index >= kIndexSlots) return nullptr;
  int8_t rowIndex = kIndex.rowAt[index];
  return rowIndex < 0 ? nullptr : &kTable[rowIndex];
}

}  // namespace

kj::ArrayPtr<const RegisterInfo> registerTable() {
  return kj::arrayPtr(kTable, kRows);
}

kj::Maybe<const RegisterInfo&> registerAtOffset(uint32_t offset) {
  if (offset >= 0x1000) return nullptr;
  const RegisterInfo* info = rowAtIndex(offset >> 4);
  if (info == nullptr) return nullptr;
  return *info;
}

kj::Maybe<const RegisterInfo&> registerAtMsr(uint32_t msr) {
  if (msr < kMsrX2apicFirst || msr > kMsrX2apicLast) return nullptr;
  const RegisterInfo* info = rowAtIndex(msr - kMsrX2apicFirst);
  if (info == nullptr) return nullptr;
  return *info;
}

const RegisterInfo& registerInfo(Reg reg) {
  const RegisterInfo* info = rowAtIndex(uint16_t(reg));
  KJ_REQUIRE(info != nullptr, "not a register", uint16_t(reg));
  return *info;
}

}  // namespace vlapic
