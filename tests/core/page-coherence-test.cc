// SPDX-License-Identifier: MIT
// The virtual-APIC page is always what the guest reads (the property APIC
// register virtualisation relies on, SDM Vol. 3A 30.4 "Virtualizing Memory-
// Mapped APIC Accesses" for the page, 11.8.3.1 for PPR), checked after every
// step of long pseudo-random sequences of guest accesses and interrupt
// traffic, in xAPIC and in x2APIC mode.
#include "fixture.h"

#include <random>
#include <string.h>

namespace vlapic::test {
namespace {

// Every invariant the state machine promises at any instant.
void checkInvariants(Lapic& lapic) {
  bool x2apic = lapic.mode() == ApicMode::X2APIC;
  for (const RegisterInfo& info : registerTable()) {
    RegAccess access = x2apic ? info.x2apic : info.xapic;
    if (access != RegAccess::READ_ONLY && access != RegAccess::READ_WRITE) continue;
    if (info.minLvtEntries > 6 || info.reg == Reg::TIMER_CURRENT_COUNT) continue;
    INFO(info.name.cStr());
    uint64_t value = x2apic ? msrRead(lapic, info.msr()) : mmioRead(lapic, info.reg);
    CHECK(uint32_t(value) == lapic.readRegister(info.reg));
    if (x2apic && info.reg == Reg::ICR_LOW) {
      CHECK(uint32_t(value >> 32) == lapic.readRegister(Reg::ICR_HIGH));
    }
  }
  // The 64-bit x2APIC ICR layout at 0x300 (SDM Vol. 3C 30.5): its upper
  // half mirrors 0x310 in x2APIC mode and is 0 otherwise.
  uint32_t icrUpper;
  memcpy(&icrUpper, lapic.page().bytes().begin() + 0x304, 4);
  CHECK(icrUpper == (x2apic ? lapic.readRegister(Reg::ICR_HIGH) : 0));
  // PPR formula (SDM 11.8.3.1).
  int isrv = -1;
  for (int v = 255; v >= 0 && isrv < 0; --v) {
    if (inIsr(lapic, uint8_t(v))) isrv = v;
  }
  uint32_t isrClass = isrv < 0 ? 0 : uint32_t(isrv) & 0xF0;
  uint8_t tpr = lapic.tpr();
  CHECK(lapic.ppr() == ((tpr & 0xF0) >= isrClass ? tpr : isrClass));
  // Vectors 0-15 never reach IRR or ISR (SDM 11.5.2).
  CHECK((lapic.readRegister(Reg::IRR0) & 0xFFFF) == 0);
  CHECK((lapic.readRegister(Reg::ISR0) & 0xFFFF) == 0);
  // A software-disabled APIC has every LVT masked (SDM 11.4.7.2).
  if (!lapic.softwareEnabled()) {
    for (Reg lvt : {Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC, Reg::LVT_LINT0,
                    Reg::LVT_LINT1, Reg::LVT_ERROR}) {
      CHECK((lapic.readRegister(lvt) & (1u << 16)) != 0);
    }
  }
  // What is pending is deliverable against PPR.
  KJ_IF_MAYBE(v, lapic.pendingVector()) {
    CHECK((*v & 0xF0) > (lapic.ppr() & 0xF0));
    CHECK(inIrr(lapic, *v));
  }
}

void randomTraffic(Env& env, Lapic& lapic, uint32_t seed, int steps) {
  std::mt19937 rng(seed);
  auto pick = [&](uint32_t n) { return uint32_t(rng() % n); };
  auto table = registerTable();
  bool x2apic = lapic.mode() == ApicMode::X2APIC;
  for (int step = 0; step < steps; ++step) {
    INFO("seed " << seed << " step " << step);
    switch (pick(8)) {
      case 0:
      case 1: {
        // A guest write of a random value to a random register; the SVR
        // mostly keeps the APIC enabled so interrupts flow.
        const RegisterInfo& info = table[pick(table.size())];
        uint64_t value = rng();
        if (info.reg == Reg::SVR && pick(4) != 0) value |= 0x100;
        if (x2apic) {
          if (info.reg == Reg::ICR_LOW) value = (value & ~0xFFF32000ull) | uint64_t(rng()) << 32;
          if (info.reg == Reg::EOI || info.reg == Reg::ESR) value = 0;
          if (info.reg == Reg::SELF_IPI) value &= 0xFF;
          lapic.msrWrite(info.msr(), value);
        } else {
          lapic.mmioWrite(kBase + info.offset(), 4, value);
        }
        break;
      }
      case 2:
        lapic.acceptInterrupt(uint8_t(pick(256)), pick(2) ? TriggerMode::LEVEL : TriggerMode::EDGE);
        break;
      case 3:
        lapic.acknowledge();
        break;
      case 4:
        if (x2apic) {
          lapic.msrWrite(regMsr(Reg::EOI), 0);
        } else {
          lapic.mmioWrite(kBase + regOffset(Reg::EOI), 4, 0);
        }
        break;
      case 5:
        lapic.setLint(pick(2), pick(2));
        break;
      case 6:
        env.clock.advance(pick(400'000));
        lapic.onTimer();
        break;
      case 7:
        lapic.setCr8(uint8_t(pick(16)));
        break;
    }
    checkInvariants(lapic);
  }
}

TEST_CASE("SDM 11.4.1/11.8.3.1: the page equals every register read after random xAPIC traffic") {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    Env env;
    auto lapic = enabledLapic(env);
    randomTraffic(env, *lapic, seed, 400);
  }
}

TEST_CASE("SDM 11.12.1.2/11.8.3.1: the page equals every MSR read after random x2APIC traffic") {
  for (uint32_t seed = 100; seed <= 120; ++seed) {
    Env env;
    auto lapic = env.make();
    enterX2apic(*lapic);
    softwareEnable(*lapic);
    randomTraffic(env, *lapic, seed, 400);
    // And the state survives a save/restore round trip unchanged.
    auto copy = env.make();
    KJ_IF_MAYBE(problem, copy->restore(lapic->save())) FAIL(problem->cStr());
    CHECK(copy->page().bytes() == lapic->page().bytes());
    checkInvariants(*copy);
  }
}

}  // namespace
}  // namespace vlapic::test
