// SPDX-License-Identifier: MIT
// The declarative register table: one row per architectural register (SDM
// Vol. 3A, "Local APIC Register Address Map" and "x2APIC Register Address
// Space"). Decoding, masking, reset and the decoded dumps are all driven by
// it; nothing else in the project lists registers.
#pragma once

#include "schema/model/types.h"
#include <kj/string.h>

namespace vlapic {

// Register index = xAPIC offset >> 4 = x2APIC MSR - 0x800.
enum class Reg : uint16_t {
  ID = 0x02,
  VERSION = 0x03,
  TPR = 0x08,
  APR = 0x09,
  PPR = 0x0A,
  EOI = 0x0B,
  RRD = 0x0C,
  LDR = 0x0D,
  DFR = 0x0E,
  SVR = 0x0F,
  ISR0 = 0x10,  // ISR0..ISR7 = 0x10..0x17
  TMR0 = 0x18,  // TMR0..TMR7 = 0x18..0x1F
  IRR0 = 0x20,  // IRR0..IRR7 = 0x20..0x27
  ESR = 0x28,
  LVT_CMCI = 0x2F,
  ICR_LOW = 0x30,
  ICR_HIGH = 0x31,
  LVT_TIMER = 0x32,
  LVT_THERMAL = 0x33,
  LVT_PMC = 0x34,
  LVT_LINT0 = 0x35,
  LVT_LINT1 = 0x36,
  LVT_ERROR = 0x37,
  TIMER_INITIAL_COUNT = 0x38,
  TIMER_CURRENT_COUNT = 0x39,
  TIMER_DIVIDE_CONFIG = 0x3E,
  SELF_IPI = 0x3F,
};

constexpr uint16_t regOffset(Reg r) { return uint16_t(r) << 4; }
constexpr uint32_t regMsr(Reg r) { return kMsrX2apicFirst + uint16_t(r); }

// Access in one mode. NONE: the register does not exist in that mode.
enum class RegAccess : uint8_t { NONE, READ_ONLY, WRITE_ONLY, READ_WRITE };

// How the dump decodes a register's value into named fields.
enum class RegFormat : uint8_t {
  PLAIN,       // a number
  APIC_ID,     // xAPIC ID 31:24 / x2APIC 32-bit
  VERSION,
  PRIORITY,    // TPR, APR, PPR: class and subclass
  LDR,
  DFR,
  SVR,
  VECTOR_BITMAP,  // one 32-bit slice of ISR/TMR/IRR
  ESR,
  ICR_LOW,
  ICR_HIGH,
  LVT_TIMER,
  LVT_LINT,    // LINT0, LINT1
  LVT_OTHER,   // Thermal, PMC, CMCI (delivery mode, no polarity/trigger)
  LVT_ERROR,
  DIVIDE_CONFIG,
  COUNT,       // timer initial/current
};

struct RegisterInfo {
  Reg reg;
  kj::StringPtr name;        // "LVT Timer", "ISR[0]", ...
  RegAccess xapic;           // xAPIC MMIO access
  RegAccess x2apic;          // x2APIC MSR access (NONE: #GP)
  uint32_t resetValue;       // value after RESET and INIT (ID/Version filled per vCPU)
  uint32_t writableMask;     // bits a guest write can change (xAPIC)
  uint32_t x2apicWritableMask;  // bits a guest WRMSR can change (low 32 bits)
  // x2APIC bits that raise #GP when set even in KVM-compatible (non-strict)
  // mode: SDM/KVM "reserved bits" (e.g. SELF IPI 31:8, ICR 31:20,17:16,13).
  // In strict mode every bit outside x2apicWritableMask raises #GP.
  uint64_t x2apicGpBits;
  RegFormat format;
  // Present only when the VM has at least this many LVT entries (CMCI: 7).
  uint8_t minLvtEntries;

  uint16_t offset() const { return regOffset(reg); }
  uint32_t msr() const { return regMsr(reg); }
};

// Every row, in offset order.
kj::ArrayPtr<const RegisterInfo> registerTable();

// The row for an xAPIC offset (any byte offset inside the 16-byte slot), or
// nullptr for a reserved offset. Both lookups return a register's row even
// when it is absent in that mode (e.g. offset 0x3F0 -> SELF IPI, MSR 0x831 ->
// ICR high): check `xapic` / `x2apic` access for that.
kj::Maybe<const RegisterInfo&> registerAtOffset(uint32_t offset);

// The row for an x2APIC MSR in 0x800-0x8FF, or nullptr.
kj::Maybe<const RegisterInfo&> registerAtMsr(uint32_t msr);

const RegisterInfo& registerInfo(Reg reg);

}  // namespace vlapic
