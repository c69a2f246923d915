// SPDX-License-Identifier: MIT
// Decoded dumps of LAPIC registers, driven by the register table
// (registers.h): each register's RegisterInfo::format picks how its value is
// decoded into named fields. Pure formatting: every function returns a
// kj::String and prints nothing.
//
//   dumpRegister(registerInfo(Reg::LVT_TIMER), 0x00030030)
//     == "LVT Timer: vector 0x30, mode periodic, masked"
#pragma once

#include "schema/model/regview.h"
#include <kj/array.h>
#include <kj/string.h>

namespace vlapic {

// Field names as the SDM spells them.
kj::StringPtr deliveryModeName(DeliveryMode mode);   // "fixed", "lowest priority", "SMI", ...
kj::StringPtr shorthandName(Shorthand shorthand);    // "none", "self", ...
kj::StringPtr timerModeName(TimerMode mode);         // "one-shot", "periodic", "TSC-deadline", "reserved"
kj::StringPtr apicModeName(ApicMode mode);           // "disabled", "xAPIC", "x2APIC"

// The decoded fields of one 32-bit register value, e.g. "vector 0x30, mode
// periodic, masked". `layout` matters for ID, LDR and ICR high, whose
// encoding differs between xAPIC and x2APIC.
kj::String decodeRegister(const RegisterInfo& info, uint32_t value,
                          RegisterLayout layout = RegisterLayout::XAPIC);

// "<name>: <decoded fields>".
kj::String dumpRegister(const RegisterInfo& info, uint32_t value,
                        RegisterLayout layout = RegisterLayout::XAPIC);

// The full 64-bit ICR: the ICR low fields followed by the destination in the
// layout's format (ICR[63:56] for xAPIC, ICR[63:32] otherwise).
kj::String decodeIcr(IcrValue icr, RegisterLayout layout);

// IA32_APIC_BASE, e.g. "base 0xFEE00000, mode xAPIC, BSP".
kj::String decodeApicBase(ApicBaseValue value);

// A table of every register the image holds state for in its layout's mode,
// one row each, in offset order: name, xAPIC offset, x2APIC MSR ("-" if the
// register has none), raw value and decoded fields. Left out: registers
// absent in the mode, write-only registers (EOI, SELF IPI: they hold no
// state) and LVT CMCI unless the image's Version register reports 7 LVT
// entries. ISR, TMR and IRR are one row each listing the set vectors; in
// x2APIC layouts ICR is one 64-bit row.
kj::String dumpRegisters(const ConstRegisterView& view);

// The rows of that table (without its heading), for output in other forms
// (vlapicctl dump --json). Hex cells as the table prints them; a range such
// as "0x100-0x170" for ISR, TMR, IRR and the x2APIC ICR; "-" where a
// register has no such cell. With `apicBase`, IA32_APIC_BASE comes first.
struct DumpRow {
  kj::String name, offset, msr, raw, decoded;
};
kj::Array<DumpRow> dumpRows(const ConstRegisterView& view, kj::Maybe<ApicBaseValue> apicBase = nullptr);

// The same table with IA32_APIC_BASE (MSR 0x1B) as its first row: a saved
// vCPU is its kvm_lapic_state plus this MSR.
kj::String dumpRegisters(const ConstRegisterView& view, ApicBaseValue apicBase);

}  // namespace vlapic
