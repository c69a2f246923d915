// SPDX-License-Identifier: MIT
// Issuing IPIs (SDM Vol. 3A 11.6.1 "Interrupt Command Register (ICR)",
// 11.12.9 "ICR Operation in x2APIC Mode", 11.12.11 "SELF IPI Register").
#include "fixture.h"

#include <string.h>

namespace vlapic::test {
namespace {

InterruptMessage requireIpi(const AccessResult& r) {
  KJ_IF_MAYBE(m, r.ipi) { return *m; }
  FAIL("no IPI produced");
  return {};
}

TEST_CASE("SDM 11.6.1: an xAPIC ICR low write sends the IPI the ICR describes") {
  Env env;
  auto lapic = enabledLapic(env);
  mmioWrite(*lapic, Reg::ICR_HIGH, 0x03000000);
  // Vector 0x44, lowest priority, logical, level assert, level trigger.
  AccessResult r = mmioWrite(*lapic, Reg::ICR_LOW, 0x0000C944);
  InterruptMessage m = requireIpi(r);
  CHECK(m.vector == 0x44);
  CHECK(m.deliveryMode == DeliveryMode::LOWEST_PRIORITY);
  CHECK(m.logicalDestination);
  CHECK(m.levelAssert);
  CHECK(m.trigger == TriggerMode::LEVEL);
  CHECK(m.shorthand == Shorthand::NONE);
  CHECK(m.destination == 3);
  CHECK(!m.x2apicFormat);
  // Delivery status reads 0: the IPI has been sent.
  CHECK(mmioRead(*lapic, Reg::ICR_LOW) == 0x0000C944);
  CHECK(lapic->stats().ipisSent == 1);
  // Writing ICR high alone sends nothing.
  CHECK(mmioWrite(*lapic, Reg::ICR_HIGH, 0xFF000000).ipi == nullptr);
}

TEST_CASE("SDM 11.6.1: INIT, SIPI, NMI, SMI and broadcasts go to the per-VM layer") {
  Env env;
  auto lapic = enabledLapic(env);
  struct Case {
    uint32_t icr;
    DeliveryMode mode;
    Shorthand shorthand;
  };
  for (Case c : {Case{0x00000500, DeliveryMode::INIT, Shorthand::NONE},
                 Case{0x00008500, DeliveryMode::INIT, Shorthand::NONE},  // de-assert: VM's call
                 Case{0x00000608, DeliveryMode::STARTUP, Shorthand::NONE},
                 Case{0x00000400, DeliveryMode::NMI, Shorthand::NONE},
                 Case{0x00000200, DeliveryMode::SMI, Shorthand::NONE},
                 Case{0x00080030, DeliveryMode::FIXED, Shorthand::ALL_INCLUDING_SELF},
                 Case{0x000C0030, DeliveryMode::FIXED, Shorthand::ALL_EXCLUDING_SELF},
                 Case{0x00040400, DeliveryMode::NMI, Shorthand::SELF}}) {
    INFO(std::hex << c.icr);
    InterruptMessage m = requireIpi(mmioWrite(*lapic, Reg::ICR_LOW, c.icr));
    CHECK(m.deliveryMode == c.mode);
    CHECK(m.shorthand == c.shorthand);
  }
  // Nothing was accepted locally by the all-including-self broadcast: the
  // per-VM layer delivers to every target including this one.
  CHECK(mmioRead(*lapic, Reg(uint16_t(Reg::IRR0) + 1)) == 0);
}

TEST_CASE("SDM 11.6.1: a fixed IPI to self is delivered locally") {
  Env env;
  auto lapic = enabledLapic(env);
  AccessResult r = mmioWrite(*lapic, Reg::ICR_LOW, 0x00040031);
  CHECK(r.ipi == nullptr);
  CHECK(inIrr(*lapic, 0x31));
  CHECK(!inTmr(*lapic, 0x31));
  r = mmioWrite(*lapic, Reg::ICR_LOW, 0x0004C032);  // level triggered, asserted
  CHECK(inIrr(*lapic, 0x32));
  CHECK(inTmr(*lapic, 0x32));
  r = mmioWrite(*lapic, Reg::ICR_LOW, 0x00048033);  // level triggered, level 0: nothing
  CHECK(!inIrr(*lapic, 0x33));
  CHECK(maybeVector(lapic->acknowledge()) == 0x32);
}

TEST_CASE("SDM 11.5.3: fixed and lowest-priority IPIs with vectors 0-15 log Send Illegal Vector") {
  Env env;
  auto lapic = enabledLapic(env);
  // Sent to others: the sender logs bit 5 and the message goes out (each
  // receiver logs bit 6 and discards it: the per-VM layer's tests).
  for (uint32_t icr : {0x0000000Fu, 0x0000010Au, 0x000C0000u}) {
    INFO(std::hex << icr);
    CHECK(mmioWrite(*lapic, Reg::ICR_LOW, icr).ipi != nullptr);
    CHECK(latchEsr(*lapic) == 0x20);
  }
  // To self: sent and received here, so both bits, and nothing in IRR.
  CHECK(mmioWrite(*lapic, Reg::ICR_LOW, 0x00040003u).ipi == nullptr);
  CHECK(latchEsr(*lapic) == 0x60);
  CHECK(mmioRead(*lapic, Reg::IRR0) == 0);
  // Vector 0 is fine for NMI and INIT (the vector is not used).
  CHECK(mmioWrite(*lapic, Reg::ICR_LOW, 0x00000400).ipi != nullptr);
  CHECK(latchEsr(*lapic) == 0);
}

TEST_CASE("SDM 11.12.9: the x2APIC ICR is one 64-bit MSR with a 32-bit destination") {
  Env env;
  auto lapic = enabledLapic(env);
  enterX2apic(*lapic);
  AccessResult r = msrWrite(*lapic, 0x830, 0x0000012300000851ull);  // logical, fixed, 0x51
  InterruptMessage m = requireIpi(r);
  CHECK(m.vector == 0x51);
  CHECK(m.logicalDestination);
  CHECK(m.destination == 0x123);
  CHECK(m.x2apicFormat);
  CHECK(msrRead(*lapic, 0x830) == 0x0000012300000851ull);
  // The page keeps ICR[63:32] at 0x310, as KVM's layout does, and the whole
  // 64-bit ICR at 0x300, where a CPU virtualising x2APIC reads it (SDM Vol.
  // 3C 30.5).
  CHECK(lapic->readRegister(Reg::ICR_HIGH) == 0x123);
  uint64_t icr64;
  memcpy(&icr64, lapic->page().bytes().begin() + 0x300, 8);
  CHECK(icr64 == 0x0000012300000851ull);
  CHECK(lapic->msrRead(0x831).status == AccessStatus::GP);  // no ICR high MSR
  // Broadcast destination.
  m = requireIpi(msrWrite(*lapic, 0x830, 0xFFFFFFFF00000040ull));
  CHECK(m.destination == 0xFFFFFFFF);
}

TEST_CASE("SDM 11.12.9 (KVM): x2APIC ICR reserved bits 31:20, 17:16 and 13 raise #GP, "
          "delivery status is masked") {
  Env env;
  auto lapic = enabledLapic(env);
  enterX2apic(*lapic);
  std::vector<unsigned> faulting = {13, 16, 17};
  for (unsigned bit = 20; bit < 32; ++bit) faulting.push_back(bit);
  for (unsigned bit : faulting) {
    INFO("bit " << bit);
    AccessResult r = lapic->msrWrite(0x830, 0x40 | (1ull << bit));
    CHECK(r.status == AccessStatus::GP);
    CHECK(r.reason == AccessReason::RESERVED_BITS);
  }
  CHECK(lapic->stats().ipisSent == 0);
  AccessResult r = msrWrite(*lapic, 0x830, 0x1040);
  CHECK(r.ipi != nullptr);
  CHECK(msrRead(*lapic, 0x830) == 0x40);
}

TEST_CASE("SDM 11.12.11: SELF IPI delivers a fixed edge interrupt locally, bits 31:8 fault") {
  Env env;
  auto lapic = enabledLapic(env);
  enterX2apic(*lapic);
  AccessResult r = msrWrite(*lapic, 0x83F, 0x77);
  CHECK(r.ipi == nullptr);
  CHECK(inIrr(*lapic, 0x77));
  CHECK(!inTmr(*lapic, 0x77));
  r = lapic->msrWrite(0x83F, 0x177);
  CHECK(r.status == AccessStatus::GP);
  CHECK(r.reason == AccessReason::RESERVED_BITS);
  // RDMSR of a write-only register faults.
  CHECK(lapic->msrRead(0x83F).status == AccessStatus::GP);
  // An illegal vector is a send error, and, received by this APIC, a
  // receive error (SDM 11.5.3: "...or via a self IPI").
  msrWrite(*lapic, 0x83F, 0x0E);
  CHECK(latchEsr(*lapic) == 0x60);
  CHECK(!inIrr(*lapic, 0x0E));
}

}  // namespace
}  // namespace vlapic::test
