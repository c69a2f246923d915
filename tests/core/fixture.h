// SPDX-License-Identifier: MIT
// Shared set-up for the core tests: one vCPU's LAPIC on host-memory pages and
// a ManualClock, plus helpers that perform guest accesses and insist they
// succeed.
#pragma once

#include "server/core/lapic.h"
#include "schema/model/regview.h"
#include <catch2/catch.hpp>

namespace vlapic::test {

constexpr uint64_t kBase = 0xFEE00000;
constexpr uint64_t kEnabled = kBase | kApicBaseEnable;
constexpr uint64_t kX2apic = kBase | kApicBaseEnable | kApicBaseExtd;
constexpr uint64_t kTscHz = 2'000'000'000;

struct Env {
  hal::ManualClock clock;
  kj::Own<hal::Hal> hal = hal::newHostMemoryHal(clock);
  GuestTsc tsc{clock, kTscHz};

  kj::Own<Lapic> make(LapicConfig config = {}, uint32_t initialId = 1, bool bsp = false) {
    return kj::heap<Lapic>(*hal, tsc, config, initialId, bsp);
  }
};

inline uint32_t mmioRead(Lapic& lapic, Reg reg) {
  AccessResult r = lapic.mmioRead((lapic.apicBase() & ~0xFFFull) | regOffset(reg), 4);
  INFO("register " << registerInfo(reg).name.cStr());
  REQUIRE(r.status == AccessStatus::OK);
  return uint32_t(r.value);
}

inline AccessResult mmioWrite(Lapic& lapic, Reg reg, uint32_t value) {
  AccessResult r = lapic.mmioWrite((lapic.apicBase() & ~0xFFFull) | regOffset(reg), 4, value);
  INFO("register " << registerInfo(reg).name.cStr());
  REQUIRE(r.status == AccessStatus::OK);
  return r;
}

inline uint64_t msrRead(Lapic& lapic, uint32_t msr) {
  AccessResult r = lapic.msrRead(msr);
  INFO("MSR " << std::hex << msr);
  REQUIRE(r.status == AccessStatus::OK);
  return r.value;
}

inline AccessResult msrWrite(Lapic& lapic, uint32_t msr, uint64_t value) {
  AccessResult r = lapic.msrWrite(msr, value);
  INFO("MSR " << std::hex << msr << " value " << value);
  REQUIRE(r.status == AccessStatus::OK);
  return r;
}

inline void enterX2apic(Lapic& lapic) {
  msrWrite(lapic, kMsrApicBase, (lapic.apicBase() & kApicBaseBsp) | kX2apic);
  REQUIRE(lapic.mode() == ApicMode::X2APIC);
}

// SVR = 0x1FF: software enabled, spurious vector 0xFF.
inline void softwareEnable(Lapic& lapic) {
  if (lapic.mode() == ApicMode::X2APIC) {
    msrWrite(lapic, regMsr(Reg::SVR), 0x1FF);
  } else {
    mmioWrite(lapic, Reg::SVR, 0x1FF);
  }
  REQUIRE(lapic.softwareEnabled());
}

// A vCPU (initial ID 1) that is software-enabled.
// A LAPIC in x2APIC mode with the strict reserved-bit option (SDM, Xen).
inline kj::Own<Lapic> strictX2apicLapic(Env& env) {
  LapicConfig config;
  config.strictReservedBits = true;
  auto lapic = env.make(config);
  enterX2apic(*lapic);
  return lapic;
}

inline kj::Own<Lapic> enabledLapic(Env& env, LapicConfig config = {}) {
  auto lapic = env.make(config);
  softwareEnable(*lapic);
  return lapic;
}

inline bool inBitmap(const Lapic& lapic, Reg first, uint8_t vector) {
  return lapic.readRegister(Reg(uint16_t(first) + vector / 32)) & (1u << (vector % 32));
}
inline bool inIrr(const Lapic& l, uint8_t v) { return inBitmap(l, Reg::IRR0, v); }
inline bool inIsr(const Lapic& l, uint8_t v) { return inBitmap(l, Reg::ISR0, v); }
inline bool inTmr(const Lapic& l, uint8_t v) { return inBitmap(l, Reg::TMR0, v); }

// The ESR as a guest reads it: write to latch, then read (SDM 11.5.3).
inline uint32_t latchEsr(Lapic& lapic) {
  if (lapic.mode() == ApicMode::X2APIC) {
    msrWrite(lapic, regMsr(Reg::ESR), 0);
    return uint32_t(msrRead(lapic, regMsr(Reg::ESR)));
  }
  mmioWrite(lapic, Reg::ESR, 0);
  return mmioRead(lapic, Reg::ESR);
}

inline int maybeVector(kj::Maybe<uint8_t> v) {
  KJ_IF_MAYBE(x, v) { return *x; }
  return -1;
}

}  // namespace vlapic::test
