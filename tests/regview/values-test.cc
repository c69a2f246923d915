// SPDX-License-Identifier: MIT
// Register value types (regview.h) against the SDM's bit positions
// (Vol. 3A, APIC chapter: the figures for IA32_APIC_BASE, ICR, LVT, SVR,
// DCR, ESR, Version, TPR/PPR, LDR and DFR). Each field is checked both ways:
// a raw value with only that field set reads back through the accessor, and
// the setter produces exactly that raw value.
#include "schema/model/regview.h"
#include <catch2/catch.hpp>

using namespace vlapic;

// ---- IA32_APIC_BASE (SDM "Local APIC Status and Location") ----

TEST_CASE("ApicBaseValue: BSP bit 8, EXTD bit 10, EN bit 11, base 12 and up", "[regview][apic-base]") {
  CHECK(ApicBaseValue(1u << 8).bsp());
  CHECK_FALSE(ApicBaseValue(1u << 8).enabled());
  CHECK(ApicBaseValue(1u << 10).x2apicEnabled());
  CHECK(ApicBaseValue(1u << 11).enabled());
  CHECK(ApicBaseValue(0xFEE00900).base() == 0xFEE00000);
  CHECK(ApicBaseValue(0x0000123456789FFFull).base() == 0x0000123456789000ull);

  CHECK(ApicBaseValue().setBsp(true).raw() == 0x100);
  CHECK(ApicBaseValue().setX2apicEnabled(true).raw() == 0x400);
  CHECK(ApicBaseValue().setEnabled(true).raw() == 0x800);
  CHECK(ApicBaseValue().setBase(0xFEC00ABC).raw() == 0xFEC00000);
  // setBase keeps the flag bits; clearing a flag keeps the base.
  CHECK(ApicBaseValue(0xFEE00900).setBase(0xD0000000).raw() == 0xD0000900);
  CHECK(ApicBaseValue(0xFEE00900).setBsp(false).raw() == 0xFEE00800);
}

TEST_CASE("ApicBaseValue: mode from EN and EXTD (SDM x2APIC State Transitions)", "[regview][apic-base]") {
  CHECK(ApicBaseValue(0xFEE00000).mode() == ApicMode::DISABLED);
  CHECK(ApicBaseValue(0xFEE00800).mode() == ApicMode::XAPIC);
  CHECK(ApicBaseValue(0xFEE00C00).mode() == ApicMode::X2APIC);
  CHECK(ApicBaseValue(0xFEE00C00).validState());
  CHECK(ApicBaseValue(0xFEE00000).validState());
  // EN=0 with EXTD=1 is the invalid state.
  CHECK(ApicBaseValue(0xFEE00400).mode() == ApicMode::DISABLED);
  CHECK_FALSE(ApicBaseValue(0xFEE00400).validState());
  // The default value at reset of the boot processor.
  constexpr ApicBaseValue bspReset = ApicBaseValue().setBase(kDefaultApicBase).setEnabled(true).setBsp(true);
  static_assert(bspReset.raw() == 0xFEE00900);
  static_assert(bspReset.mode() == ApicMode::XAPIC);
}

// ---- ICR (SDM "Interrupt Command Register (ICR)") ----

TEST_CASE("IcrValue: each field at its SDM bit position", "[regview][icr]") {
  CHECK(IcrValue(0x000000ABull).vector() == 0xAB);
  for (uint8_t mode = 0; mode < 8; mode++) {
    CHECK(IcrValue(uint64_t(mode) << 8).deliveryMode() == DeliveryMode(mode));
    CHECK(IcrValue().setDeliveryMode(DeliveryMode(mode)).raw() == uint64_t(mode) << 8);
  }
  CHECK(IcrValue(1ull << 11).logicalDestination());
  CHECK(IcrValue(1ull << 12).deliveryPending());
  CHECK(IcrValue(1ull << 14).levelAssert());
  CHECK(IcrValue(1ull << 15).trigger() == TriggerMode::LEVEL);
  CHECK(IcrValue(0).trigger() == TriggerMode::EDGE);
  CHECK(IcrValue(1ull << 18).shorthand() == Shorthand::SELF);
  CHECK(IcrValue(2ull << 18).shorthand() == Shorthand::ALL_INCLUDING_SELF);
  CHECK(IcrValue(3ull << 18).shorthand() == Shorthand::ALL_EXCLUDING_SELF);
  CHECK(IcrValue(0x12ull << 56).xapicDestination() == 0x12);
  CHECK(IcrValue(0x89ABCDEFull << 32).x2apicDestination() == 0x89ABCDEF);
  CHECK(IcrValue(0x89ABCDEFull << 32).xapicDestination() == 0x89);

  CHECK(IcrValue().setVector(0xFE).raw() == 0xFE);
  CHECK(IcrValue().setLogicalDestination(true).raw() == 1ull << 11);
  CHECK(IcrValue().setDeliveryPending(true).raw() == 1ull << 12);
  CHECK(IcrValue().setLevelAssert(true).raw() == 1ull << 14);
  CHECK(IcrValue().setTrigger(TriggerMode::LEVEL).raw() == 1ull << 15);
  CHECK(IcrValue().setShorthand(Shorthand::ALL_EXCLUDING_SELF).raw() == 3ull << 18);
  CHECK(IcrValue().setXapicDestination(0xFF).raw() == 0xFFull << 56);
  CHECK(IcrValue().setX2apicDestination(0xFFFFFFFF).raw() == 0xFFFFFFFFull << 32);
}

TEST_CASE("IcrValue: low/high halves match the xAPIC 0x300/0x310 split", "[regview][icr]") {
  IcrValue icr(0x000C4830u, 0x05000000u);
  CHECK(icr.low() == 0x000C4830);
  CHECK(icr.high() == 0x05000000);
  CHECK(icr.raw() == 0x05000000000C4830ull);
  CHECK(icr.xapicDestination() == 5);
  CHECK(icr == IcrValue(0x05000000000C4830ull));
}

TEST_CASE("IcrValue: setters keep every other field (round trip)", "[regview][icr]") {
  IcrValue icr = IcrValue()
      .setVector(0x40)
      .setDeliveryMode(DeliveryMode::LOWEST_PRIORITY)
      .setLogicalDestination(true)
      .setLevelAssert(true)
      .setTrigger(TriggerMode::LEVEL)
      .setShorthand(Shorthand::ALL_INCLUDING_SELF)
      .setX2apicDestination(0x00010002);
  CHECK(icr.vector() == 0x40);
  CHECK(icr.deliveryMode() == DeliveryMode::LOWEST_PRIORITY);
  CHECK(icr.logicalDestination());
  CHECK_FALSE(icr.deliveryPending());
  CHECK(icr.levelAssert());
  CHECK(icr.trigger() == TriggerMode::LEVEL);
  CHECK(icr.shorthand() == Shorthand::ALL_INCLUDING_SELF);
  CHECK(icr.x2apicDestination() == 0x00010002);
  CHECK(icr.raw() == 0x000100020008C940ull);
  // Overwriting one field changes only that field.
  icr.setVector(0x41).setShorthand(Shorthand::NONE);
  CHECK(icr.raw() == 0x000100020000C941ull);
}

TEST_CASE("IcrValue::toMessage: xAPIC takes ICR[63:56], x2APIC ICR[63:32]", "[regview][icr]") {
  IcrValue icr = IcrValue().setVector(0x31).setDeliveryMode(DeliveryMode::NMI)
      .setLevelAssert(true).setX2apicDestination(0x03000102);
  InterruptMessage x = icr.toMessage(false);
  CHECK(x.vector == 0x31);
  CHECK(x.deliveryMode == DeliveryMode::NMI);
  CHECK_FALSE(x.logicalDestination);
  CHECK(x.shorthand == Shorthand::NONE);
  CHECK(x.destination == 0x03);
  CHECK_FALSE(x.x2apicFormat);
  CHECK(x.levelAssert);
  CHECK(x.trigger == TriggerMode::EDGE);

  InterruptMessage x2 = icr.toMessage(true);
  CHECK(x2.destination == 0x03000102);
  CHECK(x2.x2apicFormat);

  InterruptMessage level = IcrValue().setTrigger(TriggerMode::LEVEL).setLogicalDestination(true)
      .setShorthand(Shorthand::ALL_EXCLUDING_SELF).toMessage(false);
  CHECK(level.trigger == TriggerMode::LEVEL);
  CHECK(level.logicalDestination);
  CHECK_FALSE(level.levelAssert);
  CHECK(level.shorthand == Shorthand::ALL_EXCLUDING_SELF);
}

// ---- LVT (SDM "Local Vector Table") ----

TEST_CASE("LvtValue: each field at its SDM bit position", "[regview][lvt]") {
  CHECK(LvtValue(0x000000EF).vector() == 0xEF);
  CHECK(LvtValue(0x00000700).deliveryMode() == DeliveryMode::EXTINT);
  CHECK(LvtValue(0x00000400).deliveryMode() == DeliveryMode::NMI);
  CHECK(LvtValue(0x00000200).deliveryMode() == DeliveryMode::SMI);
  CHECK(LvtValue(0x00000500).deliveryMode() == DeliveryMode::INIT);
  CHECK(LvtValue(1u << 12).deliveryPending());
  CHECK(LvtValue(1u << 13).polarity() == PinPolarity::ACTIVE_LOW);
  CHECK(LvtValue(0).polarity() == PinPolarity::ACTIVE_HIGH);
  CHECK(LvtValue(1u << 14).remoteIrr());
  CHECK(LvtValue(1u << 15).trigger() == TriggerMode::LEVEL);
  CHECK(LvtValue(1u << 16).masked());
  CHECK(LvtValue(0u << 17).timerMode() == TimerMode::ONE_SHOT);
  CHECK(LvtValue(1u << 17).timerMode() == TimerMode::PERIODIC);
  CHECK(LvtValue(2u << 17).timerMode() == TimerMode::TSC_DEADLINE);
  CHECK(uint8_t(LvtValue(3u << 17).timerMode()) == 3);  // reserved encoding kept

  CHECK(LvtValue().setVector(0x30).raw() == 0x30);
  CHECK(LvtValue().setDeliveryMode(DeliveryMode::EXTINT).raw() == 0x700);
  CHECK(LvtValue().setDeliveryPending(true).raw() == 1u << 12);
  CHECK(LvtValue().setPolarity(PinPolarity::ACTIVE_LOW).raw() == 1u << 13);
  CHECK(LvtValue().setRemoteIrr(true).raw() == 1u << 14);
  CHECK(LvtValue().setTrigger(TriggerMode::LEVEL).raw() == 1u << 15);
  CHECK(LvtValue().setMasked(true).raw() == 1u << 16);
  CHECK(LvtValue().setTimerMode(TimerMode::TSC_DEADLINE).raw() == 2u << 17);
}

TEST_CASE("LvtValue: reset value is masked - setters keep other fields", "[regview][lvt]") {
  constexpr LvtValue reset(0x00010000);
  static_assert(reset.masked() && reset.vector() == 0);
  LvtValue timer = LvtValue(reset).setVector(0x30).setTimerMode(TimerMode::PERIODIC);
  CHECK(timer.raw() == 0x00030030);
  timer.setMasked(false);
  CHECK(timer.raw() == 0x00020030);
  // Reserved bits outside any field survive read-modify-write.
  CHECK(LvtValue(0x80000000).setVector(0x20).raw() == 0x80000020);
}

// ---- SVR (SDM "Spurious Interrupt") ----

TEST_CASE("SvrValue: vector 7:0, enable 8, focus check disable 9, EOI-broadcast suppression 12", "[regview][svr]") {
  CHECK(SvrValue(0xFF).spuriousVector() == 0xFF);
  CHECK_FALSE(SvrValue(0xFF).apicEnabled());
  CHECK(SvrValue(1u << 8).apicEnabled());
  CHECK(SvrValue(1u << 9).focusCheckingDisabled());
  CHECK(SvrValue(1u << 12).eoiBroadcastSuppressed());
  CHECK_FALSE(SvrValue(1u << 11).eoiBroadcastSuppressed());

  CHECK(SvrValue().setSpuriousVector(0xEF).raw() == 0xEF);
  CHECK(SvrValue().setApicEnabled(true).raw() == 0x100);
  CHECK(SvrValue().setFocusCheckingDisabled(true).raw() == 0x200);
  CHECK(SvrValue().setEoiBroadcastSuppressed(true).raw() == 0x1000);
  CHECK(SvrValue(0x11FF).setApicEnabled(false).raw() == 0x10FF);
}

// ---- DCR (SDM "APIC Timer", Divide Configuration Register figure) ----

TEST_CASE("DcrValue: divide value from bits 3, 1 and 0 (bit 2 reserved)", "[regview][dcr]") {
  // The SDM's table: 0000 -> 2, 0001 -> 4, 0010 -> 8, 0011 -> 16,
  // 1000 -> 32, 1001 -> 64, 1010 -> 128, 1011 -> 1.
  CHECK(DcrValue(0x0).divisor() == 2);
  CHECK(DcrValue(0x1).divisor() == 4);
  CHECK(DcrValue(0x2).divisor() == 8);
  CHECK(DcrValue(0x3).divisor() == 16);
  CHECK(DcrValue(0x8).divisor() == 32);
  CHECK(DcrValue(0x9).divisor() == 64);
  CHECK(DcrValue(0xA).divisor() == 128);
  CHECK(DcrValue(0xB).divisor() == 1);
  // Bit 2 plays no part.
  CHECK(DcrValue(0x4).divisor() == 2);
  CHECK(DcrValue(0xF).divisor() == 1);
}

TEST_CASE("DcrValue::fromDivisor: every power of two 1..128, nothing else", "[regview][dcr]") {
  const uint32_t expectedRaw[][2] = {
    {1, 0xB}, {2, 0x0}, {4, 0x1}, {8, 0x2}, {16, 0x3}, {32, 0x8}, {64, 0x9}, {128, 0xA},
  };
  for (auto& pair: expectedRaw) {
    KJ_IF_MAYBE(dcr, DcrValue::fromDivisor(pair[0])) {
      CHECK(dcr->raw() == pair[1]);
      CHECK(dcr->divisor() == pair[0]);
    } else {
      FAIL("no DCR for divisor " << pair[0]);
    }
  }
  for (uint32_t bad: {0u, 3u, 6u, 256u, 0x80000000u}) {
    CHECK(DcrValue::fromDivisor(bad) == nullptr);
  }
  // setCode keeps reserved bit 2 and the bits above 3.
  CHECK(DcrValue(0xF4).setCode(7).raw() == 0xFF);
  CHECK(DcrValue(0xFF).setCode(0).raw() == 0xF4);
}

// ---- ESR (SDM "Error Handling") ----

TEST_CASE("EsrValue: the eight error bits", "[regview][esr]") {
  CHECK(EsrValue(1u << 0).sendChecksumError());
  CHECK(EsrValue(1u << 1).receiveChecksumError());
  CHECK(EsrValue(1u << 2).sendAcceptError());
  CHECK(EsrValue(1u << 3).receiveAcceptError());
  CHECK(EsrValue(1u << 4).redirectableIpi());
  CHECK(EsrValue(1u << 5).sendIllegalVector());
  CHECK(EsrValue(1u << 6).receivedIllegalVector());
  CHECK(EsrValue(1u << 7).illegalRegisterAddress());
  // Each accessor reads only its own bit.
  CHECK_FALSE(EsrValue(~(1u << 5)).sendIllegalVector());
  CHECK_FALSE(EsrValue(~(1u << 6)).receivedIllegalVector());

  CHECK(EsrValue().setSendChecksumError(true).raw() == 0x01);
  CHECK(EsrValue().setReceiveChecksumError(true).raw() == 0x02);
  CHECK(EsrValue().setSendAcceptError(true).raw() == 0x04);
  CHECK(EsrValue().setReceiveAcceptError(true).raw() == 0x08);
  CHECK(EsrValue().setRedirectableIpi(true).raw() == 0x10);
  CHECK(EsrValue().setSendIllegalVector(true).raw() == 0x20);
  CHECK(EsrValue().setReceivedIllegalVector(true).raw() == 0x40);
  CHECK(EsrValue().setIllegalRegisterAddress(true).raw() == 0x80);
  CHECK(EsrValue(0xFF).setSendIllegalVector(false).raw() == 0xDF);
}

// ---- Version (SDM "Local APIC Version Register") ----

TEST_CASE("VersionValue: version 7:0, max LVT entry 23:16, EOI-broadcast suppression 24", "[regview][version]") {
  VersionValue sixLvts(0x00050014);
  CHECK(sixLvts.version() == 0x14);
  CHECK(sixLvts.maxLvtEntry() == 5);
  CHECK(sixLvts.lvtEntries() == 6);
  CHECK_FALSE(sixLvts.eoiBroadcastSuppressionSupported());
  CHECK(VersionValue(0x01060014).lvtEntries() == 7);
  CHECK(VersionValue(0x01060014).eoiBroadcastSuppressionSupported());

  CHECK(VersionValue().setVersion(0x14).setMaxLvtEntry(6).setEoiBroadcastSuppressionSupported(true).raw()
        == 0x01060014);
}

// ---- TPR/APR/PPR (SDM "Task and Processor Priorities") ----

TEST_CASE("PriorityValue: class 7:4, subclass 3:0", "[regview][priority]") {
  PriorityValue p(0x5A);
  CHECK(p.priority() == 0x5A);
  CHECK(p.priorityClass() == 5);
  CHECK(p.subclass() == 0xA);
  CHECK(PriorityValue().setPriorityClass(0xF).raw() == 0xF0);
  CHECK(PriorityValue().setSubclass(0x3).raw() == 0x03);
  CHECK(PriorityValue(0x5A).setPriorityClass(2).raw() == 0x2A);
  // Out-of-range arguments are masked to the 4-bit field.
  CHECK(PriorityValue().setPriorityClass(0x1F).raw() == 0xF0);
}

// ---- LDR and DFR (SDM "Logical Destination Mode") ----

TEST_CASE("LdrValue: xAPIC logical ID 31:24 (flat and cluster views)", "[regview][ldr]") {
  LdrValue ldr(0x21000000);
  CHECK(ldr.xapicLogicalId() == 0x21);
  CHECK(ldr.xapicCluster() == 0x2);
  CHECK(ldr.xapicClusterMembers() == 0x1);
  CHECK(LdrValue().setXapicLogicalId(0x80).raw() == 0x80000000);
}

TEST_CASE("LdrValue: x2APIC cluster 31:16, member bitmap 15:0, derived from the ID", "[regview][ldr]") {
  LdrValue ldr(0x00030004);
  CHECK(ldr.x2apicCluster() == 3);
  CHECK(ldr.x2apicMembers() == 4);
  CHECK(LdrValue().setX2apicCluster(0xABCD).raw() == 0xABCD0000);
  CHECK(LdrValue().setX2apicMembers(0x8000).raw() == 0x00008000);
  // SDM "Deriving Logical x2APIC ID from the Local x2APIC ID":
  // LDR = (ID[31:4] << 16) | (1 << ID[3:0]).
  static_assert(LdrValue::forX2apicId(0).raw() == 0x00000001);
  CHECK(LdrValue::forX2apicId(1).raw() == 0x00000002);  // KVM_GET_LAPIC after EXTD, vCPU 1
  CHECK(LdrValue::forX2apicId(0x2F).raw() == 0x00028000);
  CHECK(LdrValue::forX2apicId(0x12345).raw() == 0x12340020);
}

TEST_CASE("DfrValue: model in 31:28 (1111 flat, 0000 cluster)", "[regview][dfr]") {
  CHECK(DfrValue(0xFFFFFFFF).model() == DfrModel::FLAT);
  CHECK(DfrValue(0xFFFFFFFF).flat());
  CHECK(DfrValue(0x0FFFFFFF).model() == DfrModel::CLUSTER);
  CHECK(DfrValue(0x0FFFFFFF).cluster());
  CHECK(uint8_t(DfrValue(0x5FFFFFFF).model()) == 5);
  CHECK_FALSE(DfrValue(0x5FFFFFFF).flat());
  CHECK_FALSE(DfrValue(0x5FFFFFFF).cluster());
  CHECK(DfrValue(0xFFFFFFFF).setModel(DfrModel::CLUSTER).raw() == 0x0FFFFFFF);
  CHECK(DfrValue(0x0FFFFFFF).setModel(DfrModel::FLAT).raw() == 0xFFFFFFFF);
}

// ---- Vector sets (ISR/TMR/IRR layout) ----

TEST_CASE("VectorSet: vector v is bit v%32 of slice v/32 - highest and listing", "[regview][vectors]") {
  VectorSet set;
  CHECK(set.empty());
  CHECK(set.highest() == nullptr);
  set.set(0x31, true).set(0x40, true).set(0xFF, true).set(0x00, true);
  CHECK(set.slice(1) == (1u << 0x11));
  CHECK(set.slice(2) == 1u);
  CHECK(set.slice(7) == 0x80000000u);
  CHECK(set.slice(0) == 1u);
  CHECK(set.contains(0x31));
  CHECK_FALSE(set.contains(0x30));
  CHECK(set.highest() == uint8_t(0xFF));
  auto vectors = set.vectors();
  REQUIRE(vectors.size() == 4);
  CHECK(vectors[0] == 0x00);
  CHECK(vectors[1] == 0x31);
  CHECK(vectors[2] == 0x40);
  CHECK(vectors[3] == 0xFF);
  set.set(0xFF, false);
  CHECK(set.highest() == uint8_t(0x40));
  CHECK_FALSE(set.empty());
}
