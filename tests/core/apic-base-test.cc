// SPDX-License-Identifier: MIT
// IA32_APIC_BASE (SDM Vol. 3A 11.4.4 "Local APIC Status and Location",
// 11.12.5 "x2APIC State Transitions", Figure "Local x2APIC State
// Transitions").
#include "fixture.h"

namespace vlapic::test {
namespace {

constexpr uint64_t kDisabled = kBase;
constexpr uint64_t kInvalid = kBase | kApicBaseExtd;  // EXTD without EN

void enterState(Lapic& lapic, ApicMode mode) {
  if (mode == ApicMode::DISABLED) msrWrite(lapic, kMsrApicBase, kDisabled);
  if (mode == ApicMode::X2APIC) msrWrite(lapic, kMsrApicBase, kX2apic);
  REQUIRE(lapic.mode() == mode);
}

TEST_CASE("SDM 11.4.4: IA32_APIC_BASE after RESET, with and without BSP") {
  Env env;
  CHECK(env.make({}, 1, false)->apicBase() == 0xFEE00800);
  auto bsp = env.make({}, 0, true);
  CHECK(bsp->apicBase() == 0xFEE00900);
  CHECK(bsp->isBsp());
  CHECK(msrRead(*bsp, kMsrApicBase) == 0xFEE00900);
  CHECK(bsp->mode() == ApicMode::XAPIC);
  CHECK(bsp->hardwareEnabled());
}

TEST_CASE("SDM 11.12.5: every IA32_APIC_BASE state transition, legal and illegal") {
  struct Case {
    ApicMode from;
    uint64_t value;
    bool legal;
    ApicMode to;
  };
  // Figure "Local x2APIC State Transitions": disabled <-> xAPIC <-> x2APIC,
  // x2APIC -> disabled; never x2APIC -> xAPIC or disabled -> x2APIC; EXTD
  // without EN is an invalid state.
  Case cases[] = {
      {ApicMode::DISABLED, kDisabled, true, ApicMode::DISABLED},
      {ApicMode::DISABLED, kEnabled, true, ApicMode::XAPIC},
      {ApicMode::DISABLED, kX2apic, false, ApicMode::DISABLED},
      {ApicMode::DISABLED, kInvalid, false, ApicMode::DISABLED},
      {ApicMode::XAPIC, kDisabled, true, ApicMode::DISABLED},
      {ApicMode::XAPIC, kEnabled, true, ApicMode::XAPIC},
      {ApicMode::XAPIC, kX2apic, true, ApicMode::X2APIC},
      {ApicMode::XAPIC, kInvalid, false, ApicMode::XAPIC},
      {ApicMode::X2APIC, kDisabled, true, ApicMode::DISABLED},
      {ApicMode::X2APIC, kEnabled, false, ApicMode::X2APIC},
      {ApicMode::X2APIC, kX2apic, true, ApicMode::X2APIC},
      {ApicMode::X2APIC, kInvalid, false, ApicMode::X2APIC},
  };
  for (const Case& c : cases) {
    Env env;
    auto lapic = env.make();
    enterState(*lapic, c.from);
    uint64_t before = lapic->apicBase();
    INFO("from " << int(c.from) << " write " << std::hex << c.value);
    AccessResult r = lapic->msrWrite(kMsrApicBase, c.value);
    if (c.legal) {
      CHECK(r.status == AccessStatus::OK);
      CHECK(lapic->apicBase() == c.value);
    } else {
      CHECK(r.status == AccessStatus::GP);
      CHECK(r.reason == AccessReason::ILLEGAL_TRANSITION);
      CHECK(lapic->apicBase() == before);
    }
    CHECK(lapic->mode() == c.to);
  }
}

TEST_CASE("SDM 11.4.4: reserved IA32_APIC_BASE bits raise #GP") {
  Env env;
  LapicConfig config;
  config.maxPhysAddrBits = 39;
  auto lapic = env.make(config);
  std::vector<unsigned> reserved = {0, 1, 2, 3, 4, 5, 6, 7, 9};
  for (unsigned bit = 39; bit < 64; ++bit) reserved.push_back(bit);
  for (unsigned bit : reserved) {
    INFO("bit " << bit);
    AccessResult r = lapic->msrWrite(kMsrApicBase, kEnabled | (1ull << bit));
    CHECK(r.status == AccessStatus::GP);
    CHECK(r.reason == AccessReason::RESERVED_BITS);
    CHECK(lapic->apicBase() == kEnabled);
  }
  // Bits 12..MAXPHYADDR-1 are the base.
  CHECK(lapic->msrWrite(kMsrApicBase, (1ull << 38) | kApicBaseEnable).status ==
        AccessStatus::OK);
}

TEST_CASE("CPUID without x2APIC: setting EXTD raises #GP") {
  Env env;
  LapicConfig config;
  config.x2apicSupported = false;
  auto lapic = env.make(config);
  AccessResult r = lapic->msrWrite(kMsrApicBase, kX2apic);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::RESERVED_BITS);
  CHECK(lapic->mode() == ApicMode::XAPIC);
}

TEST_CASE("SDM 11.4.5: relocating the xAPIC window") {
  Env env;
  auto lapic = env.make();
  mmioWrite(*lapic, Reg::TPR, 0x20);
  msrWrite(*lapic, kMsrApicBase, 0xFEC00000 | kApicBaseEnable);
  CHECK(lapic->mmioWindowContains(0xFEC00080));
  CHECK(!lapic->mmioWindowContains(0xFEE00080));
  CHECK(lapic->mmioRead(0xFEC00080, 4).value == 0x20);
  CHECK(lapic->mmioRead(0xFEE00080, 4).reason == AccessReason::OUTSIDE_WINDOW);
  CHECK(lapic->mmioWrite(0xFEC00080, 4, 0x30).status == AccessStatus::OK);
  CHECK(lapic->tpr() == 0x30);
}

TEST_CASE("SDM 11.4.3 (KVM): a hardware-disabled APIC keeps its registers, its window reads "
          "all-ones, its x2APIC MSRs fault, re-enabling restores the initial APIC ID") {
  Env env;
  auto lapic = env.make({}, 3);
  softwareEnable(*lapic);
  mmioWrite(*lapic, Reg::ID, 0x09000000);
  mmioWrite(*lapic, Reg::TPR, 0x40);
  mmioWrite(*lapic, Reg::LVT_LINT0, 0x700);
  CHECK(lapic->apicId() == 9);

  uint64_t generation = lapic->routingGeneration();
  msrWrite(*lapic, kMsrApicBase, kDisabled);
  CHECK(!lapic->hardwareEnabled());
  CHECK(lapic->routingGeneration() != generation);
  AccessResult r = lapic->mmioRead(kBase + 0x80, 4);
  CHECK(r.reason == AccessReason::NOT_DECODING);
  CHECK(r.value == 0xFFFFFFFF);
  CHECK(lapic->mmioWrite(kBase + 0x80, 4, 0x10).status == AccessStatus::IGNORED);
  r = lapic->msrRead(0x808);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::APIC_DISABLED);
  // A disabled APIC accepts no interrupts.
  CHECK(!lapic->acceptInterrupt(0x50, TriggerMode::EDGE));
  CHECK(lapic->pendingVector() == nullptr);

  msrWrite(*lapic, kMsrApicBase, kEnabled);
  CHECK(lapic->tpr() == 0x40);
  CHECK(mmioRead(*lapic, Reg::LVT_LINT0) == 0x700);
  CHECK(mmioRead(*lapic, Reg::ID) == 0x03000000);
  CHECK(lapic->apicId() == 3);
}

TEST_CASE("SDM 11.12.5.1: entering x2APIC mode sets the 32-bit ID and the derived LDR") {
  Env env;
  auto lapic = env.make({}, 0x123);
  mmioWrite(*lapic, Reg::ID, 0x05000000);  // not carried over
  mmioWrite(*lapic, Reg::LDR, 0x80000000);
  uint64_t generation = lapic->routingGeneration();
  enterX2apic(*lapic);
  CHECK(lapic->routingGeneration() != generation);
  CHECK(msrRead(*lapic, 0x802) == 0x123);
  CHECK(lapic->apicId() == 0x123);
  // LDR = (id[31:4] << 16) | (1 << id[3:0]) (SDM 11.12.10.2).
  CHECK(msrRead(*lapic, 0x80D) == ((0x12u << 16) | (1u << 3)));
  CHECK(lapic->ldr() == ((0x12u << 16) | (1u << 3)));
  // The page says the same: it is what an APIC-virtualising CPU would read.
  CHECK(lapic->readRegister(Reg::ID) == 0x123);
}

TEST_CASE("KVM measured: vCPU 1 after EXTD has ID 1, LDR 2, DFR still all-ones in the page") {
  Env env;
  auto lapic = env.make({}, 1);
  enterX2apic(*lapic);
  CHECK(lapic->readRegister(Reg::ID) == 1);
  CHECK(lapic->readRegister(Reg::LDR) == 2);
  CHECK(lapic->readRegister(Reg::DFR) == 0xFFFFFFFF);
}

TEST_CASE("SDM 11.12.5: x2APIC -> disabled -> xAPIC goes back to the xAPIC ID, only xAPIC "
          "fields survive in LDR and ICR high") {
  Env env;
  auto lapic = env.make({}, 0x35);
  enterX2apic(*lapic);
  msrWrite(*lapic, 0x830, 0x1234567800000400ull);
  msrWrite(*lapic, kMsrApicBase, kDisabled);
  CHECK(lapic->msrRead(0x802).status == AccessStatus::GP);
  msrWrite(*lapic, kMsrApicBase, kEnabled);
  CHECK(lapic->mode() == ApicMode::XAPIC);
  CHECK(mmioRead(*lapic, Reg::ID) == 0x35000000);
  CHECK(lapic->apicId() == 0x35);
  // x2APIC LDR 0x00030020 and ICR[63:32] 0x12345678 keep their bits 31:24.
  CHECK(mmioRead(*lapic, Reg::LDR) == 0);
  CHECK(mmioRead(*lapic, Reg::ICR_HIGH) == 0x12000000);
  // A state the core reaches is one it can save and restore.
  auto copy = env.make({}, 0x35);
  KJ_IF_MAYBE(problem, copy->restore(lapic->save())) FAIL(problem->cStr());
  CHECK(copy->page().bytes() == lapic->page().bytes());
}

TEST_CASE("SDM 11.12.1.2: x2APIC-only MSRs raise #GP outside x2APIC mode") {
  Env env;
  auto lapic = env.make();
  AccessResult r = lapic->msrWrite(regMsr(Reg::SELF_IPI), 0x40);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::APIC_DISABLED);
  CHECK(lapic->msrRead(regMsr(Reg::TPR)).status == AccessStatus::GP);
  // IA32_APIC_BASE itself is always there.
  CHECK(lapic->msrRead(kMsrApicBase).status == AccessStatus::OK);
}

TEST_CASE("The BSP flag is part of IA32_APIC_BASE") {
  Env env;
  auto lapic = env.make({}, 1, false);
  CHECK(!lapic->isBsp());
  msrWrite(*lapic, kMsrApicBase, kEnabled | kApicBaseBsp);
  CHECK(lapic->isBsp());
}

}  // namespace
}  // namespace vlapic::test
