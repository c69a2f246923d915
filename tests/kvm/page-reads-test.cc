// SPDX-License-Identifier: MIT
// The front's reads from the virtual-APIC page (client/kvm/page_reads.h)
// against the LAPIC itself: every read the front answers from the page must
// return exactly what the same read through the LAPIC returns (SDM "Local
// APIC Register Address Space", "x2APIC Register Address Space"), and the
// reads that must be computed (timer current count, SDM "APIC Timer") or
// that fault or are not whole registers must be left to the server.
#include "client/kvm/page_reads.h"
#include "tests/core/fixture.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>

using namespace vlapic;
using namespace vlapic::test;
using vlapic::kvm::VirtualApicPageReader;

namespace {

// A LAPIC with every kind of register holding something non-default:
// priorities, logical destination, LVTs, timer, an interrupt in service and
// more pending, an error latched.
kj::Own<Lapic> busyLapic(Env& env, bool x2apic) {
  auto lapic = enabledLapic(env);
  if (x2apic) enterX2apic(*lapic);
  auto write = [&](Reg reg, uint32_t value) {
    if (x2apic) msrWrite(*lapic, regMsr(reg), value); else mmioWrite(*lapic, reg, value);
  };
  write(Reg::TPR, 0x20);
  if (!x2apic) {
    write(Reg::LDR, 0x03000000);
    write(Reg::DFR, 0x0FFFFFFF);
  }
  write(Reg::LVT_TIMER, 0x20031);
  write(Reg::LVT_LINT0, 0x10700);
  write(Reg::LVT_ERROR, 0x33);
  write(Reg::TIMER_DIVIDE_CONFIG, 0x3);
  write(Reg::TIMER_INITIAL_COUNT, 100000);
  lapic->acceptInterrupt(0x51, TriggerMode::EDGE);
  REQUIRE(lapic->acknowledge() == kj::Maybe<uint8_t>(uint8_t(0x51)));
  lapic->acceptInterrupt(0x62, TriggerMode::LEVEL);
  lapic->acceptInterrupt(0x43, TriggerMode::EDGE);
  // An illegal vector (below 16) latches "send illegal vector" (SDM
  // "Error Handling"); writing ESR makes it visible.
  if (x2apic) {
    lapic->msrWrite(regMsr(Reg::ICR_LOW), (uint64_t(7) << 32) | 0x4005);
  } else {
    write(Reg::ICR_HIGH, 0x07000000);
    lapic->mmioWrite(kBase | regOffset(Reg::ICR_LOW), 4, 0x4005);
  }
  write(Reg::ESR, 0);
  env.clock.advance(1000);
  return lapic;
}

}  // namespace

TEST_CASE("xAPIC: every MMIO read served from the page equals the LAPIC's own read (SDM 10.4.1)") {
  Env env;
  auto lapic = busyLapic(env, false);
  VirtualApicPageReader reader(lapic->page().bytes(), 6);
  size_t served = 0;
  for (uint32_t offset = 0; offset < 0x1000; offset += 4) {
    for (uint8_t size : {1, 2, 4, 8}) {
      KJ_IF_MAYBE(value, reader.mmioRead(offset, size)) {
        INFO("offset " << std::hex << offset << " size " << int(size));
        AccessResult direct = lapic->mmioRead(kBase | offset, size);
        CHECK(direct.status == AccessStatus::OK);
        CHECK(*value == direct.value);
        served++;
      }
    }
  }
  CHECK(served >= 40);  // ID, version, priorities, LDR/DFR/SVR, 24 bitmap words, ESR, ICR, LVTs, timer
}

TEST_CASE("x2APIC: every RDMSR served from the page equals the LAPIC's own read, ICR as 64 bits (SDM 10.12.1.2)") {
  Env env;
  auto lapic = busyLapic(env, true);
  VirtualApicPageReader reader(lapic->page().bytes(), 6);
  size_t served = 0;
  for (uint32_t msr = kMsrX2apicFirst; msr <= kMsrX2apicLast; msr++) {
    KJ_IF_MAYBE(value, reader.msrRead(msr)) {
      INFO("MSR " << std::hex << msr);
      AccessResult direct = lapic->msrRead(msr);
      CHECK(direct.status == AccessStatus::OK);
      CHECK(*value == direct.value);
      served++;
    }
  }
  CHECK(served >= 35);
  auto icr = reader.msrRead(regMsr(Reg::ICR_LOW));
  REQUIRE(icr != nullptr);
  CHECK(KJ_ASSERT_NONNULL(icr) >> 32 == 7);  // the destination half
}

TEST_CASE("reads the server must compute or refuse are never served from the page (SDM 10.5.4, 10.12.1.2)") {
  Env env;
  auto lapic = busyLapic(env, false);
  VirtualApicPageReader reader(lapic->page().bytes(), 6);
  // The current count runs down with time: only the server can compute it.
  CHECK(reader.mmioRead(regOffset(Reg::TIMER_CURRENT_COUNT), 4) == nullptr);
  CHECK(reader.msrRead(regMsr(Reg::TIMER_CURRENT_COUNT)) == nullptr);
  // Write-only and reserved registers, partial and misaligned reads.
  CHECK(reader.mmioRead(regOffset(Reg::EOI), 4) == nullptr);
  CHECK(reader.mmioRead(0x3F0, 4) == nullptr);
  CHECK(reader.mmioRead(0x40, 4) == nullptr);
  CHECK(reader.mmioRead(regOffset(Reg::TPR), 1) == nullptr);
  CHECK(reader.mmioRead(regOffset(Reg::TPR) + 4, 4) == nullptr);
  // x2APIC: #GP cases (write-only EOI and SELF IPI, ICR high, DFR).
  CHECK(reader.msrRead(regMsr(Reg::EOI)) == nullptr);
  CHECK(reader.msrRead(regMsr(Reg::SELF_IPI)) == nullptr);
  CHECK(reader.msrRead(regMsr(Reg::ICR_HIGH)) == nullptr);
  CHECK(reader.msrRead(regMsr(Reg::DFR)) == nullptr);
  // LVT CMCI exists only with 7 LVT entries (SDM 10.5.1).
  CHECK(reader.mmioRead(regOffset(Reg::LVT_CMCI), 4) == nullptr);
  VirtualApicPageReader withCmci(lapic->page().bytes(), 7);
  CHECK(withCmci.mmioRead(regOffset(Reg::LVT_CMCI), 4) != nullptr);
}
