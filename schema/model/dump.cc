// SPDX-License-Identifier: MIT
#include "schema/model/dump.h"
#include <kj/vector.h>

namespace vlapic {

namespace {

// "0x" and `digits` upper-case hex digits (more if the value needs them).
kj::String hex(uint64_t value, unsigned digits) {
  char buffer[16];
  unsigned length = 0;
  do {
    buffer[length++] = "0123456789ABCDEF"[value & 0xF];
    value >>= 4;
  } while (value != 0);
  while (length < digits && length < sizeof(buffer)) buffer[length++] = '0';
  auto result = kj::heapString(length + 2);
  result[0] = '0';
  result[1] = 'x';
  for (unsigned i = 0; i < length; i++) result[2 + i] = buffer[length - 1 - i];
  return result;
}

kj::String vectorList(const VectorSet& set) {
  if (set.empty()) return kj::str("none");
  auto vectors = set.vectors();
  kj::Vector<kj::String> names(vectors.size());
  for (uint8_t vector: vectors) names.add(hex(vector, 2));
  return kj::str("vectors ", kj::strArray(names, ", "));
}

// Adds the field `name` only when the flag is set: dumps stay short by naming
// only the non-default states.
void addFlag(kj::Vector<kj::String>& fields, bool set, kj::StringPtr name) {
  if (set) fields.add(kj::str(name));
}

kj::String join(kj::Vector<kj::String>& fields) {
  return kj::strArray(fields, ", ");
}

kj::String decodePriority(PriorityValue value) {
  return kj::str("priority ", hex(value.priority(), 2), " (class ", value.priorityClass(),
                 ", subclass ", value.subclass(), ")");
}

kj::String decodeApicId(uint32_t value, RegisterLayout layout) {
  switch (layout) {
    case RegisterLayout::XAPIC: return kj::str("APIC ID ", hex(value >> 24, 2));
    case RegisterLayout::X2APIC: return kj::str("x2APIC ID ", hex(value, 8));
    case RegisterLayout::X2APIC_LEGACY_ID: return kj::str("x2APIC ID ", hex(value >> 24, 2));
  }
  KJ_UNREACHABLE;
}

// xAPIC LDR meaning depends on the DFR model (SDM "Logical Destination
// Mode"); without the DFR only the raw logical ID can be named.
kj::String decodeLdr(LdrValue value, RegisterLayout layout, kj::Maybe<const DfrValue&> dfr) {
  if (layout != RegisterLayout::XAPIC) {
    return kj::str("cluster ", hex(value.x2apicCluster(), 4), ", members ", hex(value.x2apicMembers(), 4));
  }
  KJ_IF_MAYBE(d, dfr) {
    if (d->cluster()) {
      return kj::str("cluster ", hex(value.xapicCluster(), 1), ", members ", hex(value.xapicClusterMembers(), 1));
    }
  }
  return kj::str("logical ID ", hex(value.xapicLogicalId(), 2));
}

kj::String decodeDfr(DfrValue value) {
  switch (value.model()) {
    case DfrModel::FLAT: return kj::str("model flat");
    case DfrModel::CLUSTER: return kj::str("model cluster");
  }
  return kj::str("model reserved (", hex(uint8_t(value.model()), 1), ")");
}

kj::String decodeSvr(SvrValue value) {
  kj::Vector<kj::String> fields;
  fields.add(kj::str("spurious vector ", hex(value.spuriousVector(), 2)));
  fields.add(kj::str(value.apicEnabled() ? "APIC software-enabled" : "APIC software-disabled"));
  addFlag(fields, value.focusCheckingDisabled(), "focus checking disabled");
  addFlag(fields, value.eoiBroadcastSuppressed(), "EOI broadcast suppressed");
  return join(fields);
}

kj::String decodeEsr(EsrValue value) {
  kj::Vector<kj::String> fields;
  addFlag(fields, value.sendChecksumError(), "send checksum error");
  addFlag(fields, value.receiveChecksumError(), "receive checksum error");
  addFlag(fields, value.sendAcceptError(), "send accept error");
  addFlag(fields, value.receiveAcceptError(), "receive accept error");
  addFlag(fields, value.redirectableIpi(), "redirectable IPI");
  addFlag(fields, value.sendIllegalVector(), "send illegal vector");
  addFlag(fields, value.receivedIllegalVector(), "received illegal vector");
  addFlag(fields, value.illegalRegisterAddress(), "illegal register address");
  if (fields.empty()) return kj::str("no errors");
  return join(fields);
}

void addIcrLowFields(kj::Vector<kj::String>& fields, IcrValue icr) {
  fields.add(kj::str("vector ", hex(icr.vector(), 2)));
  fields.add(kj::str("delivery ", deliveryModeName(icr.deliveryMode())));
  fields.add(kj::str(icr.logicalDestination() ? "logical" : "physical"));
  fields.add(kj::str(icr.levelAssert() ? "assert" : "de-assert"));
  fields.add(kj::str(icr.trigger() == TriggerMode::LEVEL ? "level" : "edge"));
  if (icr.shorthand() != Shorthand::NONE) {
    fields.add(kj::str("shorthand ", shorthandName(icr.shorthand())));
  }
  addFlag(fields, icr.deliveryPending(), "send pending");
}

kj::String icrDestination(IcrValue icr, RegisterLayout layout) {
  return layout == RegisterLayout::XAPIC
      ? kj::str("destination ", hex(icr.xapicDestination(), 2))
      : kj::str("destination ", hex(icr.x2apicDestination(), 8));
}

// LVT formats differ in which fields exist (SDM figure "Local Vector
// Table"): Timer has a timer mode and no delivery mode; LINT0/1 add
// polarity, remote IRR and trigger; Error has only the vector.
kj::String decodeLvt(LvtValue value, RegFormat format) {
  kj::Vector<kj::String> fields;
  fields.add(kj::str("vector ", hex(value.vector(), 2)));
  switch (format) {
    case RegFormat::LVT_TIMER:
      fields.add(kj::str("mode ", timerModeName(value.timerMode())));
      break;
    case RegFormat::LVT_LINT:
      fields.add(kj::str("delivery ", deliveryModeName(value.deliveryMode())));
      fields.add(kj::str(value.polarity() == PinPolarity::ACTIVE_LOW ? "active low" : "active high"));
      fields.add(kj::str(value.trigger() == TriggerMode::LEVEL ? "level" : "edge"));
      addFlag(fields, value.remoteIrr(), "remote IRR");
      break;
    case RegFormat::LVT_OTHER:
      fields.add(kj::str("delivery ", deliveryModeName(value.deliveryMode())));
      break;
    default:
      break;
  }
  addFlag(fields, value.deliveryPending(), "send pending");
  addFlag(fields, value.masked(), "masked");
  return join(fields);
}

kj::String decode(const RegisterInfo& info, uint32_t value, RegisterLayout layout,
                  kj::Maybe<const DfrValue&> dfr) {
  switch (info.format) {
    case RegFormat::PLAIN: return hex(value, 8);
    case RegFormat::APIC_ID: return decodeApicId(value, layout);
    case RegFormat::VERSION: {
      VersionValue version(value);
      return kj::str("version ", hex(version.version(), 2), ", ", version.lvtEntries(), " LVT entries",
                     version.eoiBroadcastSuppressionSupported() ? ", EOI-broadcast suppression supported" : "");
    }
    case RegFormat::PRIORITY: return decodePriority(PriorityValue(value));
    case RegFormat::LDR: return decodeLdr(LdrValue(value), layout, dfr);
    case RegFormat::DFR: return decodeDfr(DfrValue(value));
    case RegFormat::SVR: return decodeSvr(SvrValue(value));
    case RegFormat::VECTOR_BITMAP: {
      // ISR0, TMR0 and IRR0 sit at register indices that are multiples of 8,
      // so the low three bits of the index are the slice number.
      VectorSet set;
      set.setSlice(uint16_t(info.reg) & 7, value);
      return vectorList(set);
    }
    case RegFormat::ESR: return decodeEsr(EsrValue(value));
    case RegFormat::ICR_LOW: {
      kj::Vector<kj::String> fields;
      addIcrLowFields(fields, IcrValue(value, 0));
      return join(fields);
    }
    case RegFormat::ICR_HIGH: return icrDestination(IcrValue(0, value), layout);
    case RegFormat::LVT_TIMER:
    case RegFormat::LVT_LINT:
    case RegFormat::LVT_OTHER:
    case RegFormat::LVT_ERROR:
      return decodeLvt(LvtValue(value), info.format);
    case RegFormat::DIVIDE_CONFIG: return kj::str("divide by ", DcrValue(value).divisor());
    case RegFormat::COUNT: return kj::str(value);
  }
  return hex(value, 8);
}

// The name of the row for a whole bitmap: the table names its slices
// "ISR[0]" .. "ISR[7]"; the row is "ISR".
kj::String bitmapName(const RegisterInfo& first) {
  KJ_IF_MAYBE(bracket, first.name.findFirst('[')) {
    return kj::heapString(first.name.begin(), *bracket);
  }
  return kj::str(first.name);
}

bool readable(RegAccess access) {
  return access == RegAccess::READ_ONLY || access == RegAccess::READ_WRITE;
}

}  // namespace

kj::StringPtr deliveryModeName(DeliveryMode mode) {
  switch (mode) {
    case DeliveryMode::FIXED: return "fixed";
    case DeliveryMode::LOWEST_PRIORITY: return "lowest priority";
    case DeliveryMode::SMI: return "SMI";
    case DeliveryMode::RESERVED_3: return "reserved";
    case DeliveryMode::NMI: return "NMI";
    case DeliveryMode::INIT: return "INIT";
    case DeliveryMode::STARTUP: return "start-up";
    case DeliveryMode::EXTINT: return "ExtINT";
  }
  return "reserved";
}

kj::StringPtr shorthandName(Shorthand shorthand) {
  switch (shorthand) {
    case Shorthand::NONE: return "none";
    case Shorthand::SELF: return "self";
    case Shorthand::ALL_INCLUDING_SELF: return "all including self";
    case Shorthand::ALL_EXCLUDING_SELF: return "all excluding self";
  }
  return "none";
}

kj::StringPtr timerModeName(TimerMode mode) {
  switch (mode) {
    case TimerMode::ONE_SHOT: return "one-shot";
    case TimerMode::PERIODIC: return "periodic";
    case TimerMode::TSC_DEADLINE: return "TSC-deadline";
    case TimerMode::RESERVED: return "reserved";
  }
  return "reserved";
}

kj::StringPtr apicModeName(ApicMode mode) {
  switch (mode) {
    case ApicMode::DISABLED: return "disabled";
    case ApicMode::XAPIC: return "xAPIC";
    case ApicMode::X2APIC: return "x2APIC";
  }
  return "unknown";
}

kj::String decodeRegister(const RegisterInfo& info, uint32_t value, RegisterLayout layout) {
  return decode(info, value, layout, nullptr);
}

kj::String dumpRegister(const RegisterInfo& info, uint32_t value, RegisterLayout layout) {
  return kj::str(info.name, ": ", decodeRegister(info, value, layout));
}

kj::String decodeIcr(IcrValue icr, RegisterLayout layout) {
  kj::Vector<kj::String> fields;
  addIcrLowFields(fields, icr);
  fields.add(icrDestination(icr, layout));
  return join(fields);
}

kj::String decodeApicBase(ApicBaseValue value) {
  kj::Vector<kj::String> fields;
  fields.add(kj::str("base ", hex(value.base(), 8)));
  if (value.validState()) {
    fields.add(kj::str("mode ", apicModeName(value.mode())));
  } else {
    // SDM "x2APIC State Transitions": EN=0 with EXTD=1 is an invalid state.
    fields.add(kj::str("mode invalid (EXTD without EN)"));
  }
  addFlag(fields, value.bsp(), "BSP");
  return join(fields);
}

namespace {

kj::String dumpTable(const ConstRegisterView& view, kj::Maybe<ApicBaseValue> apicBase) {
  kj::Vector<DumpRow> rows;
  rows.add(DumpRow { kj::str("Register"), kj::str("Offset"), kj::str("MSR"), kj::str("Raw"),
                     kj::str("Decoded") });
  for (auto& row: dumpRows(view, apicBase)) rows.add(kj::mv(row));

  auto cells = [](const DumpRow& row) {
    return kj::arr(row.name.asPtr(), row.offset.asPtr(), row.msr.asPtr(), row.raw.asPtr());
  };
  size_t widths[4] = {};
  for (auto& row: rows) {
    auto c = cells(row);
    for (size_t column = 0; column < 4; column++) widths[column] = kj::max(widths[column], c[column].size());
  }
  kj::Vector<char> text;
  for (auto& row: rows) {
    auto c = cells(row);
    for (size_t column = 0; column < 4; column++) {
      text.addAll(c[column]);
      for (size_t pad = c[column].size(); pad < widths[column] + 2; pad++) text.add(' ');
    }
    text.addAll(row.decoded);
    text.add('\n');
  }
  text.add('\0');
  return kj::String(text.releaseAsArray());
}

}  // namespace

kj::Array<DumpRow> dumpRows(const ConstRegisterView& view, kj::Maybe<ApicBaseValue> apicBase) {
  bool x2apic = view.layout() != RegisterLayout::XAPIC;
  unsigned lvtEntries = view.version().lvtEntries();
  DfrValue dfrValue = view.dfr();
  kj::Maybe<const DfrValue&> dfr;
  if (!x2apic) dfr = dfrValue;

  kj::Vector<DumpRow> rows;
  KJ_IF_MAYBE(base, apicBase) {
    rows.add(DumpRow { kj::str("IA32_APIC_BASE"), kj::str("-"), hex(kMsrApicBase, 3), hex(base->raw(), 8),
                       decodeApicBase(*base) });
  }
  for (const RegisterInfo& info: registerTable()) {
    RegAccess access = x2apic ? info.x2apic : info.xapic;
    if (!readable(access) || info.minLvtEntries > lvtEntries) continue;
    kj::String msr = info.x2apic == RegAccess::NONE ? kj::str("-") : hex(info.msr(), 3);

    if (info.format == RegFormat::VECTOR_BITMAP) {
      // One row for all eight slices, listed at the first.
      if ((uint16_t(info.reg) & 7) != 0) continue;
      const RegisterInfo& last = registerInfo(Reg(uint16_t(info.reg) + 7));
      VectorSet set = info.reg == Reg::ISR0 ? view.isr() : info.reg == Reg::TMR0 ? view.tmr() : view.irr();
      kj::String msrRange = info.x2apic == RegAccess::NONE ? kj::str("-")
          : kj::str(hex(info.msr(), 3), "-", hex(last.msr(), 3));
      rows.add(DumpRow { bitmapName(info),
                         kj::str(hex(info.offset(), 3), "-", hex(last.offset(), 3)),
                         kj::mv(msrRange), kj::str("-"), vectorList(set) });
    } else if (x2apic && info.reg == Reg::ICR_LOW) {
      // x2APIC has one 64-bit ICR (MSR 0x830); its high half is kept at 0x310.
      IcrValue icr = view.icr();
      rows.add(DumpRow { kj::str("ICR"),
                         kj::str(hex(info.offset(), 3), "-", hex(registerInfo(Reg::ICR_HIGH).offset(), 3)),
                         kj::mv(msr), hex(icr.raw(), 16),
                         decodeIcr(icr, view.layout()) });
    } else {
      uint32_t value = view.raw(info.reg);
      rows.add(DumpRow { kj::str(info.name), hex(info.offset(), 3), kj::mv(msr), hex(value, 8),
                         decode(info, value, view.layout(), dfr) });
    }
  }
  return rows.releaseAsArray();
}

kj::String dumpRegisters(const ConstRegisterView& view) {
  return dumpTable(view, nullptr);
}

kj::String dumpRegisters(const ConstRegisterView& view, ApicBaseValue apicBase) {
  return dumpTable(view, apicBase);
}

}  // namespace vlapic
