// SPDX-License-Identifier: MIT
// The register map, decoding, reset values, writable masks and access rules
// (SDM Vol. 3A 11.4.1 "Local APIC Register Address Map" table, 11.12.1.2
// "x2APIC Register Address Space" table). Expectations are written out here
// from the SDM / facts sheet, independently of registers.cc.
#include "fixture.h"

#include <map>
#include <set>

namespace vlapic::test {
namespace {

enum Acc { NO, RO, WO, RW };

struct Expect {
  Reg reg;
  Acc xapic, x2apic;
  uint32_t reset;  // xAPIC reset value for a vCPU with initial ID 1, 6 LVTs
};

// SDM 11.4.1 and 11.12.1.2 tables; reset values from SDM 11.4.7.1.
std::vector<Expect> expectedRegisters() {
  std::vector<Expect> e = {
      {Reg::ID, RW, RO, 0x01000000},     {Reg::VERSION, RO, RO, 0x00050014},
      {Reg::TPR, RW, RW, 0},             {Reg::APR, RO, NO, 0},
      {Reg::PPR, RO, RO, 0},             {Reg::EOI, WO, WO, 0},
      {Reg::RRD, NO, NO, 0},               {Reg::LDR, RW, RO, 0},
      {Reg::DFR, RW, NO, 0xFFFFFFFF},    {Reg::SVR, RW, RW, 0xFF},
      {Reg::ESR, RW, RW, 0},             {Reg::ICR_LOW, RW, RW, 0},
      {Reg::ICR_HIGH, RW, NO, 0},        {Reg::LVT_TIMER, RW, RW, 0x10000},
      {Reg::LVT_THERMAL, RW, RW, 0x10000}, {Reg::LVT_PMC, RW, RW, 0x10000},
      {Reg::LVT_LINT0, RW, RW, 0x10000}, {Reg::LVT_LINT1, RW, RW, 0x10000},
      {Reg::LVT_ERROR, RW, RW, 0x10000}, {Reg::TIMER_INITIAL_COUNT, RW, RW, 0},
      {Reg::TIMER_CURRENT_COUNT, RO, RO, 0}, {Reg::TIMER_DIVIDE_CONFIG, RW, RW, 0},
      {Reg::SELF_IPI, NO, WO, 0},
  };
  for (unsigned i = 0; i < 8; ++i) {
    e.push_back({Reg(0x10 + i), RO, RO, 0});
    e.push_back({Reg(0x18 + i), RO, RO, 0});
    e.push_back({Reg(0x20 + i), RO, RO, 0});
  }
  return e;
}

TEST_CASE("SDM 11.4.1/11.12.1.2: the register table has exactly the architectural registers") {
  auto expected = expectedRegisters();
  std::set<uint16_t> expectedOffsets;
  for (auto& e : expected) expectedOffsets.insert(regOffset(e.reg));
  expectedOffsets.insert(regOffset(Reg::LVT_CMCI));

  std::set<uint16_t> tableOffsets;
  uint16_t previous = 0;
  for (const RegisterInfo& info : registerTable()) {
    CHECK(info.offset() > previous);  // offset order, no duplicates
    previous = info.offset();
    tableOffsets.insert(info.offset());
    CHECK(&registerInfo(info.reg) == &info);
    CHECK(info.msr() == 0x800u + (info.offset() >> 4));
  }
  CHECK(tableOffsets == expectedOffsets);
}

TEST_CASE("SDM 11.4.1: decoding of every xAPIC offset 0x000-0xFF0, every byte of a slot") {
  std::set<uint16_t> registers;
  for (const RegisterInfo& info : registerTable()) registers.insert(info.offset());
  for (uint32_t offset = 0; offset < 0x1000; offset += 16) {
    INFO("offset " << std::hex << offset);
    for (uint32_t byte = 0; byte < 16; ++byte) {
      KJ_IF_MAYBE(info, registerAtOffset(offset + byte)) {
        CHECK(registers.count(offset) == 1);
        CHECK(info->offset() == offset);
      } else {
        CHECK(registers.count(offset) == 0);
      }
    }
  }
  CHECK(registerAtOffset(0x1000) == nullptr);
}

TEST_CASE("SDM 11.12.1.2: decoding of every x2APIC MSR 0x800-0x8FF") {
  std::set<uint32_t> registers;
  for (const RegisterInfo& info : registerTable()) registers.insert(info.msr());
  for (uint32_t msr = 0x800; msr <= 0x8FF; ++msr) {
    INFO("MSR " << std::hex << msr);
    KJ_IF_MAYBE(info, registerAtMsr(msr)) {
      CHECK(info->msr() == msr);
    } else {
      CHECK(registers.count(msr) == 0);
    }
  }
  CHECK(registerAtMsr(0x7FF) == nullptr);
  CHECK(registerAtMsr(0x900) == nullptr);
}

TEST_CASE("Seed examples: 0xFEE00020 -> ID, 0xFEE00100 -> ISR[0], 0xFEE00320 -> LVT Timer, "
          "MSR 0x802, 0x810, 0x832") {
  Env env;
  auto lapic = env.make({}, 7);
  struct Case {
    uint64_t gpa;
    Reg reg;
  };
  for (Case c : {Case{0xFEE00020, Reg::ID}, Case{0xFEE00100, Reg::ISR0},
                 Case{0xFEE00320, Reg::LVT_TIMER}}) {
    KJ_IF_MAYBE(info, registerAtOffset(uint32_t(c.gpa - kBase))) {
      CHECK(info->reg == c.reg);
    } else {
      FAIL("no register");
    }
    uint64_t before = lapic->stats().perRegisterAccesses[uint16_t(c.reg)];
    CHECK(lapic->mmioRead(c.gpa, 4).status == AccessStatus::OK);
    CHECK(lapic->stats().perRegisterAccesses[uint16_t(c.reg)] == before + 1);
  }
  CHECK(lapic->mmioRead(0xFEE00020, 4).value == 0x07000000);
  CHECK(lapic->mmioRead(0xFEE00320, 4).value == 0x00010000);

  enterX2apic(*lapic);
  struct MsrCase {
    uint32_t msr;
    kj::StringPtr name;
  };
  for (MsrCase c : {MsrCase{0x802, "ID"}, MsrCase{0x810, "ISR[0]"}, MsrCase{0x832, "LVT Timer"}}) {
    KJ_IF_MAYBE(info, registerAtMsr(c.msr)) {
      CHECK(info->name == c.name);
    } else {
      FAIL("no register");
    }
  }
  CHECK(msrRead(*lapic, 0x802) == 7);
  CHECK(msrRead(*lapic, 0x810) == 0);
  CHECK(msrRead(*lapic, 0x832) == 0x00010000);
}

TEST_CASE("SDM 11.4.7.1: every register's reset value, xAPIC and x2APIC") {
  Env env;
  auto lapic = env.make({}, 1);
  for (auto& e : expectedRegisters()) {
    INFO(registerInfo(e.reg).name.cStr());
    CHECK(lapic->readRegister(e.reg) == e.reset);
    if (e.xapic == RO || e.xapic == RW) CHECK(mmioRead(*lapic, e.reg) == e.reset);
  }
  // x2APIC: ID becomes the 32-bit ID and LDR is derived from it
  // (SDM 11.12.5.1); everything else keeps its reset value.
  enterX2apic(*lapic);
  for (auto& e : expectedRegisters()) {
    if (e.x2apic != RO && e.x2apic != RW) continue;
    INFO(registerInfo(e.reg).name.cStr());
    uint32_t expected = e.reg == Reg::ID ? 1 : e.reg == Reg::LDR ? 0x2 : e.reset;
    CHECK(msrRead(*lapic, regMsr(e.reg)) == expected);
  }
}

TEST_CASE("SDM 11.4.8: Version reports the LVT count and EOI-broadcast suppression") {
  Env env;
  CHECK(env.make()->readRegister(Reg::VERSION) == 0x00050014);
  LapicConfig cmci;
  cmci.lvtEntries = 7;
  CHECK(env.make(cmci)->readRegister(Reg::VERSION) == 0x00060014);
  LapicConfig suppression;
  suppression.eoiBroadcastSuppression = true;
  CHECK(env.make(suppression)->readRegister(Reg::VERSION) == 0x01050014);
}

TEST_CASE("SDM 11.4.1/11.12.1.2: access rule of every register in both modes") {
  Env env;
  auto lapic = env.make();
  for (auto& e : expectedRegisters()) {
    INFO(registerInfo(e.reg).name.cStr());
    uint64_t gpa = kBase + regOffset(e.reg);
    AccessResult r = lapic->mmioRead(gpa, 4);
    switch (e.xapic) {
      case NO:
        CHECK(r.status == AccessStatus::IGNORED);
        CHECK(r.reason == AccessReason::NOT_IN_MODE);
        CHECK(r.value == 0);
        break;
      case WO:
        CHECK(r.status == AccessStatus::IGNORED);
        CHECK(r.reason == AccessReason::WRITE_ONLY_REGISTER);
        CHECK(r.value == 0);
        break;
      default:
        CHECK(r.status == AccessStatus::OK);
    }
    if (e.xapic == RO) {
      uint32_t before = lapic->readRegister(e.reg);
      r = lapic->mmioWrite(gpa, 4, 0xFFFFFFFF);
      CHECK(r.status == AccessStatus::IGNORED);
      CHECK(r.reason == AccessReason::READ_ONLY_REGISTER);
      CHECK(lapic->readRegister(e.reg) == before);
    }
    // xAPIC-only MSRs do not exist outside x2APIC mode.
    CHECK(lapic->msrRead(regMsr(e.reg)).status == AccessStatus::GP);
  }

  enterX2apic(*lapic);
  for (auto& e : expectedRegisters()) {
    INFO(registerInfo(e.reg).name.cStr());
    AccessResult r = lapic->msrRead(regMsr(e.reg));
    switch (e.x2apic) {
      case NO:
        CHECK(r.status == AccessStatus::GP);
        CHECK(r.reason == AccessReason::NOT_IN_MODE);
        CHECK(lapic->msrWrite(regMsr(e.reg), 0).status == AccessStatus::GP);
        break;
      case WO:
        CHECK(r.status == AccessStatus::GP);
        CHECK(r.reason == AccessReason::WRITE_ONLY_REGISTER);
        break;
      case RO:
        CHECK(r.status == AccessStatus::OK);
        r = lapic->msrWrite(regMsr(e.reg), 0);
        CHECK(r.status == AccessStatus::GP);
        CHECK(r.reason == AccessReason::READ_ONLY_REGISTER);
        break;
      case RW:
        CHECK(r.status == AccessStatus::OK);
        break;
    }
  }
}

TEST_CASE("SDM 11.12.1.2: MSRs in 0x800-0x8FF that name no register raise #GP") {
  Env env;
  auto lapic = env.make();
  enterX2apic(*lapic);
  std::set<uint32_t> registers;
  for (const RegisterInfo& info : registerTable()) {
    if (info.x2apic != RegAccess::NONE && info.minLvtEntries <= 6) registers.insert(info.msr());
  }
  for (uint32_t msr = 0x800; msr <= 0x8FF; ++msr) {
    if (registers.count(msr)) continue;
    INFO("MSR " << std::hex << msr);
    CHECK(lapic->msrRead(msr).status == AccessStatus::GP);
    CHECK(lapic->msrWrite(msr, 0).status == AccessStatus::GP);
  }
  // Other MSRs are not the LAPIC's.
  CHECK(lapic->msrRead(0x900).status == AccessStatus::GP);
  CHECK(lapic->msrRead(0x10).status == AccessStatus::GP);
}

TEST_CASE("SDM 11.4.1: every reserved xAPIC offset 0x000-0xFF0 reads 0 and drops writes") {
  Env env;
  auto lapic = env.make();
  std::set<uint16_t> registers;
  for (auto& e : expectedRegisters()) {
    if (e.xapic != NO) registers.insert(regOffset(e.reg));
  }
  auto pageBefore = kj::heapArray(lapic->page().bytes());
  for (uint32_t offset = 0; offset < 0x1000; offset += 16) {
    if (registers.count(offset)) continue;
    INFO("offset " << std::hex << offset);
    AccessResult r = lapic->mmioRead(kBase + offset, 4);
    CHECK(r.status == AccessStatus::IGNORED);
    CHECK(r.value == 0);
    r = lapic->mmioWrite(kBase + offset, 4, 0xFFFFFFFF);
    CHECK(r.status == AccessStatus::IGNORED);
  }
  // Nothing but the ESR accumulator changed; no page byte moved.
  CHECK(lapic->page().bytes() == pageBefore.asPtr());
  CHECK(lapic->stats().ignoredAccesses == 2 * (256 - registers.size()));
}

struct MaskCase {
  Reg reg;
  uint32_t ones;   // read-back after writing all ones
  uint32_t zeros;  // read-back after writing 0
  bool x2apic;     // writable through an MSR too
};

// SDM register figures (11.4.6, 11.5.1, 11.5.4, 11.6.1, 11.6.2, 11.8.3.1),
// with 7 LVT entries and TSC-deadline support.
const MaskCase kMaskCases[] = {
    {Reg::ID, 0xFF000000, 0, false},
    {Reg::TPR, 0xFF, 0, true},
    {Reg::LDR, 0xFF000000, 0, false},
    {Reg::DFR, 0xFFFFFFFF, 0x0FFFFFFF, false},
    {Reg::ICR_HIGH, 0xFF000000, 0, false},
    {Reg::LVT_CMCI, 0x107FF, 0, true},
    {Reg::LVT_TIMER, 0x700FF, 0, true},
    {Reg::LVT_THERMAL, 0x107FF, 0, true},
    {Reg::LVT_PMC, 0x107FF, 0, true},
    {Reg::LVT_LINT0, 0x1A7FF, 0, true},
    {Reg::LVT_LINT1, 0x1A7FF, 0, true},
    {Reg::LVT_ERROR, 0x100FF, 0, true},
    {Reg::TIMER_INITIAL_COUNT, 0xFFFFFFFF, 0, true},
    {Reg::TIMER_DIVIDE_CONFIG, 0xB, 0, true},
    // SVR: vector, software enable, focus-check disable; bit 12 only with
    // EOI-broadcast suppression advertised (SDM 11.9). Written last: the
    // LVTs above need the APIC software-enabled.
    {Reg::SVR, 0x3FF, 0, true},
};

TEST_CASE("SDM 11.4-11.6: writable mask of every writable register, xAPIC MMIO") {
  Env env;
  LapicConfig config;
  config.lvtEntries = 7;
  auto lapic = enabledLapic(env, config);
  for (const MaskCase& c : kMaskCases) {
    INFO(registerInfo(c.reg).name.cStr());
    mmioWrite(*lapic, c.reg, 0xFFFFFFFF);
    CHECK(mmioRead(*lapic, c.reg) == c.ones);
    mmioWrite(*lapic, c.reg, 0);
    CHECK(mmioRead(*lapic, c.reg) == c.zeros);
  }
  // ICR low: everything but delivery status (reads 0: sent at once) and the
  // reserved bits.
  AccessResult r = mmioWrite(*lapic, Reg::ICR_LOW, 0xFFFFFFFF);
  CHECK(r.ipi != nullptr);
  CHECK(mmioRead(*lapic, Reg::ICR_LOW) == 0xCCFFF);
}

TEST_CASE("SDM 11.12.1.2: writable mask of every writable register, x2APIC MSR (KVM masking)") {
  Env env;
  LapicConfig config;
  config.lvtEntries = 7;
  auto lapic = env.make(config);
  enterX2apic(*lapic);
  softwareEnable(*lapic);
  for (const MaskCase& c : kMaskCases) {
    if (!c.x2apic) continue;
    INFO(registerInfo(c.reg).name.cStr());
    msrWrite(*lapic, regMsr(c.reg), 0xFFFFFFFF);
    CHECK(msrRead(*lapic, regMsr(c.reg)) == c.ones);
    msrWrite(*lapic, regMsr(c.reg), 0);
    CHECK(msrRead(*lapic, regMsr(c.reg)) == c.zeros);
    // Bits 63:32 raise #GP (SDM 11.12.1.2).
    AccessResult r = lapic->msrWrite(regMsr(c.reg), 1ull << 32);
    CHECK(r.status == AccessStatus::GP);
    CHECK(r.reason == AccessReason::RESERVED_BITS);
  }
  // ICR: every bit that does not fault; delivery status (12) is masked.
  AccessResult r = msrWrite(*lapic, regMsr(Reg::ICR_LOW), 0x000CDFFF);
  CHECK(r.ipi != nullptr);
  CHECK(msrRead(*lapic, regMsr(Reg::ICR_LOW)) == 0xCCFFF);
}

TEST_CASE("SDM 11.5.1: LVT Timer bit 18 is reserved without TSC-deadline support") {
  Env env;
  LapicConfig config;
  config.tscDeadlineSupported = false;
  auto lapic = env.make(config);
  softwareEnable(*lapic);
  mmioWrite(*lapic, Reg::LVT_TIMER, 0xFFFFFFFF);
  CHECK(mmioRead(*lapic, Reg::LVT_TIMER) == 0x300FF);
  // Without TSC-deadline, IA32_TSC_DEADLINE does not exist.
  CHECK(lapic->msrRead(kMsrTscDeadline).status == AccessStatus::GP);
  CHECK(lapic->msrWrite(kMsrTscDeadline, 1).status == AccessStatus::GP);
}

TEST_CASE("SDM 11.12.1.2: strict option raises #GP on every reserved x2APIC bit") {
  Env env;
  auto lapic = strictX2apicLapic(env);
  AccessResult r = lapic->msrWrite(regMsr(Reg::TPR), 0x100);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::RESERVED_BITS);
  CHECK(lapic->msrWrite(regMsr(Reg::LVT_TIMER), 1u << 13).status == AccessStatus::GP);
  CHECK(lapic->msrWrite(regMsr(Reg::TIMER_DIVIDE_CONFIG), 0x4).status == AccessStatus::GP);
  CHECK(lapic->msrWrite(regMsr(Reg::SVR), 1u << 12).status == AccessStatus::GP);
  // ICR: the destination half is not reserved; delivery status (12) is.
  CHECK(lapic->msrWrite(regMsr(Reg::ICR_LOW), 0xFFFFFFFF00000030ull).status == AccessStatus::OK);
  CHECK(lapic->msrWrite(regMsr(Reg::ICR_LOW), 0x1030).status == AccessStatus::GP);
  // Writable bits still work.
  CHECK(lapic->msrWrite(regMsr(Reg::TPR), 0xFF).status == AccessStatus::OK);
  CHECK(lapic->tpr() == 0xFF);

  // The default (KVM) masks the same writes silently.
  auto kvmLike = env.make();
  enterX2apic(*kvmLike);
  CHECK(kvmLike->msrWrite(regMsr(Reg::TPR), 0x1FF).status == AccessStatus::OK);
  CHECK(kvmLike->tpr() == 0xFF);
}

TEST_CASE("Xen: with the strict option a read-modify-write of LVT LINT0 with remote IRR or "
          "delivery status set does not fault") {
  Env env;
  auto lapic = strictX2apicLapic(env);
  softwareEnable(*lapic);
  // A level-triggered fixed LINT0 interrupt, asserted: remote IRR is set
  // while it is in service.
  msrWrite(*lapic, regMsr(Reg::LVT_LINT0), 0x8031);
  lapic->setLint(0, true);
  uint64_t lint0 = msrRead(*lapic, regMsr(Reg::LVT_LINT0));
  REQUIRE((lint0 & (1u << 14)) != 0);
  // The guest masks it by read-modify-write: the read-only bits are written
  // back as read and are ignored.
  AccessResult r = lapic->msrWrite(regMsr(Reg::LVT_LINT0), lint0 | (1u << 16));
  CHECK(r.status == AccessStatus::OK);
  CHECK((msrRead(*lapic, regMsr(Reg::LVT_LINT0)) & (1u << 16)) != 0);
  CHECK(lapic->msrWrite(regMsr(Reg::LVT_LINT1), 0x10000 | (1u << 14) | (1u << 12)).status ==
        AccessStatus::OK);
  CHECK(lapic->msrWrite(regMsr(Reg::LVT_ERROR), 0x10000 | (1u << 12)).status ==
        AccessStatus::OK);
  // Remote IRR is reserved outside LINT0/LINT1; LINT0's bit 17 is reserved.
  CHECK(lapic->msrWrite(regMsr(Reg::LVT_ERROR), 0x10000 | (1u << 14)).status ==
        AccessStatus::GP);
  CHECK(lapic->msrWrite(regMsr(Reg::LVT_LINT0), 0x10000 | (1u << 17)).status ==
        AccessStatus::GP);
}

TEST_CASE("KVM: the obsolete Remote Read register (0x0C0) is not decoded") {
  Env env;
  auto lapic = env.make();
  softwareEnable(*lapic);
  AccessResult r = lapic->mmioRead(kBase + 0xC0, 4);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.value == 0);
  r = lapic->mmioWrite(kBase + 0xC0, 4, 0x1234);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(registerInfo(Reg::RRD).name == "RRD");  // the row still names the offset
}

TEST_CASE("SDM 11.4.1 (KVM sizes): MMIO reads of 1, 2 and 4 bytes inside a register") {
  Env env;
  auto lapic = env.make({}, 0xAB);
  mmioWrite(*lapic, Reg::TPR, 0x5A);
  // ID = 0xAB000000.
  CHECK(lapic->mmioRead(kBase + 0x20, 4).value == 0xAB000000);
  CHECK(lapic->mmioRead(kBase + 0x23, 1).value == 0xAB);
  CHECK(lapic->mmioRead(kBase + 0x22, 2).value == 0xAB00);
  CHECK(lapic->mmioRead(kBase + 0x80, 1).value == 0x5A);
  CHECK(lapic->mmioRead(kBase + 0x80, 2).status == AccessStatus::OK);

  struct Bad {
    uint32_t offset;
    uint8_t size;
  };
  for (Bad b : {Bad{0x23, 2}, Bad{0x22, 4}, Bad{0x24, 4}, Bad{0x28, 1}, Bad{0x20, 8},
                Bad{0x20, 3}, Bad{0x20, 0}}) {
    INFO("offset " << std::hex << b.offset << " size " << int(b.size));
    AccessResult r = lapic->mmioRead(kBase + b.offset, b.size);
    CHECK(r.status == AccessStatus::IGNORED);
    CHECK(r.reason == AccessReason::BAD_SIZE_OR_ALIGNMENT);
    CHECK(r.value == 0);
  }
}

TEST_CASE("SDM 11.4.1: only aligned 32-bit MMIO writes take effect") {
  Env env;
  auto lapic = env.make();
  for (auto [offset, size] : {std::pair{0x80u, uint8_t(1)}, {0x80u, uint8_t(2)},
                              {0x80u, uint8_t(8)}, {0x84u, uint8_t(4)}, {0x81u, uint8_t(4)}}) {
    AccessResult r = lapic->mmioWrite(kBase + offset, size, 0x70);
    CHECK(r.status == AccessStatus::IGNORED);
    CHECK(r.reason == AccessReason::BAD_SIZE_OR_ALIGNMENT);
    CHECK(lapic->tpr() == 0);
  }
  mmioWrite(*lapic, Reg::TPR, 0x70);
  CHECK(lapic->tpr() == 0x70);
}

TEST_CASE("SDM 11.4.3: outside the window and while not decoding the window reads all-ones") {
  Env env;
  auto lapic = env.make();
  AccessResult r = lapic->mmioRead(kBase + 0x1000, 4);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.reason == AccessReason::OUTSIDE_WINDOW);
  CHECK(!lapic->mmioWindowContains(kBase - 1));
  CHECK(lapic->mmioWindowContains(kBase + 0xFFF));
  CHECK(lapic->mmioDecoding());

  enterX2apic(*lapic);
  CHECK(!lapic->mmioDecoding());
  r = lapic->mmioRead(kBase + 0x80, 4);
  CHECK(r.status == AccessStatus::IGNORED);
  CHECK(r.reason == AccessReason::NOT_DECODING);
  CHECK(r.value == 0xFFFFFFFF);
  CHECK(lapic->mmioRead(kBase + 0x80, 1).value == 0xFF);
  CHECK(lapic->mmioRead(kBase + 0x80, 2).value == 0xFFFF);
  CHECK(lapic->mmioWrite(kBase + 0x80, 4, 0x70).reason == AccessReason::NOT_DECODING);
  CHECK(lapic->tpr() == 0);
}

TEST_CASE("Per-register access statistics count reads, writes, #GP and ignored accesses") {
  Env env;
  auto lapic = env.make();
  mmioRead(*lapic, Reg::TPR);
  mmioWrite(*lapic, Reg::TPR, 0x10);
  lapic->mmioRead(kBase + 0x40, 4);  // reserved
  lapic->msrRead(0x808);             // not in x2APIC mode: #GP
  const LapicStats& s = lapic->stats();
  CHECK(s.reads == 3);
  CHECK(s.writes == 1);
  CHECK(s.perRegisterAccesses[uint16_t(Reg::TPR)] == 2);
  CHECK(s.ignoredAccesses == 1);
  CHECK(s.gpFaults == 1);
}

}  // namespace
}  // namespace vlapic::test
