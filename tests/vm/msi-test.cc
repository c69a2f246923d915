// SPDX-License-Identifier: MIT
// Interrupt messages from devices: MSIs (SDM Vol. 3A, 11.11 "Message
// Signalled Interrupts") and I/O APIC redirection entries (82093AA
// datasheet), routed like IPIs; and EOI events back to the I/O APIC
// (11.8.5 "Signaling Interrupt Servicing Completion").
#include "vm-test-util.h"

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

uint64_t msiAddress(uint32_t destination, bool logical = false, bool redirectionHint = false) {
  return 0xFEE00000ull | (uint64_t(destination & 0xFF) << 12) |
         (uint64_t((destination >> 8) & 0x7F) << 5) | (uint64_t(redirectionHint) << 3) |
         (uint64_t(logical) << 2);
}

uint32_t msiData(uint8_t vector, DeliveryMode mode = DeliveryMode::FIXED,
                 TriggerMode trigger = TriggerMode::EDGE, bool level = true) {
  return vector | (uint32_t(mode) << 8) | (uint32_t(level) << 14) | (uint32_t(trigger) << 15);
}

uint64_t redirectionEntry(uint8_t vector, uint32_t destination,
                          DeliveryMode mode = DeliveryMode::FIXED, bool logical = false,
                          TriggerMode trigger = TriggerMode::EDGE, bool masked = false) {
  return vector | (uint64_t(mode) << 8) | (uint64_t(logical) << 11) |
         (uint64_t(trigger) << 15) | (uint64_t(masked) << 16) |
         (uint64_t(destination & 0xFF) << 56) | (uint64_t((destination >> 8) & 0x7F) << 49);
}

TEST_CASE("decodeMsi: the architectural address and data fields (11.11.1, 11.11.2)", "[msi]") {
  auto decoded = decodeMsi(0xFEE2302Cull, 0xC1A5);  // dest 0x23 | ext 0x01 << 8, RH, DM
  REQUIRE(decoded != nullptr);
  KJ_IF_MAYBE(msi, decoded) {
    CHECK(msi->message.destination == 0x123);
    CHECK(msi->redirectionHint);
    CHECK(msi->message.logicalDestination);
    CHECK(msi->message.vector == 0xA5);
    CHECK(msi->message.deliveryMode == DeliveryMode::LOWEST_PRIORITY);
    CHECK(msi->message.levelAssert);
    CHECK(msi->message.trigger == TriggerMode::LEVEL);
    CHECK_FALSE(msi->message.x2apicFormat);
  }
  // Not 0xFEExxxxx: an ordinary memory write, not an interrupt.
  CHECK(decodeMsi(0xFED00000ull, 0x30) == nullptr);
  // KVM's 32-bit x2APIC API: destination bits 31:8 in the high address.
  KJ_IF_MAYBE(msi, decodeMsi((uint64_t(0x00011100) << 32) | 0xFEE22000ull, 0x30)) {
    CHECK(msi->message.destination == 0x00011122);
    CHECK(msi->message.x2apicFormat);
  } else {
    FAIL("high-address MSI not decoded");
  }
}

TEST_CASE("an MSI outside 0xFEExxxxx is not an interrupt", "[msi]") {
  TestVm vm(2);
  vm.enableAll();
  CHECK(vm->deliverMsi(0xFEF00000, msiData(0x30)).status == DeliveryStatus::NOT_AN_INTERRUPT);
  CHECK(vm.withIrr(0x30).empty());
}

TEST_CASE("fixed MSI, physical, in both APIC modes", "[msi]") {
  TestVm vm(4);
  bool x2 = GENERATE(false, true);
  CAPTURE(x2);
  if (x2) vm.allToX2apic();
  vm.enableAll();
  vm.drainAll();
  auto r = vm->deliverMsi(msiAddress(2), msiData(0x31));
  CHECK(r.status == DeliveryStatus::DELIVERED);
  CHECK(r.targetCount == 1);
  CHECK(vm.withIrr(0x31) == ids({2}));
  CHECK(vm.take(2) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x31)});
  // 0xFF broadcasts to xAPIC-mode LAPICs; to x2APIC-mode ones it names ID
  // 255 (KVM with its broadcast quirk disabled, our default), here nobody.
  r = vm->deliverMsi(msiAddress(0xFF), msiData(0x32));
  if (x2) {
    CHECK(r.status == DeliveryStatus::NO_TARGET);
    CHECK(vm.withIrr(0x32).empty());
  } else {
    CHECK(r.targetCount == 4);
    CHECK(vm.withIrr(0x32) == ids({0, 1, 2, 3}));
  }
  CHECK(vm->stats().externalMessages == 2);
}

TEST_CASE("KVM x2APIC broadcast quirk on: an MSI to 0xFF broadcasts to x2APIC-mode vCPUs too",
          "[msi][ids]") {
  VmConfig config = makeConfig(4, {0, 255, 300, 0x7FFE});
  config.x2apicBroadcastQuirk = true;
  TestVm vm(config);
  vm.allToX2apic();
  vm.enableAll();
  CHECK(vm->deliverMsi(msiAddress(0xFF), msiData(0x32)).targetCount == 4);
  CHECK(vm.withIrr(0x32) == ids({0, 1, 2, 3}));
}

TEST_CASE("KVM (32-bit IDs, broadcast quirk disabled): MSI and I/O APIC destination 0xFF with "
          "extended ID 0 is x2APIC ID 255 alone",
          "[msi][ids][ioapic]") {
  TestVm vm(4, {0, 255, 300, 0x7FFE});
  vm.allToX2apic();
  vm.enableAll();
  auto r = vm->deliverMsi(msiAddress(0xFF), msiData(0x3C));
  CHECK(r.status == DeliveryStatus::DELIVERED);
  CHECK(r.targetCount == 1);
  CHECK(vm.withIrr(0x3C) == ids({1}));
  r = vm->deliverIoApic(redirectionEntry(0x3D, 0xFF));
  CHECK(r.targetCount == 1);
  CHECK(vm.withIrr(0x3D) == ids({1}));
  // Logical 0xFF is the 32-bit logical destination 0xFF: cluster 0, IDs
  // 0-7, so only the vCPU with x2APIC ID 0 (LDR 0x00000001).
  vm->deliverMsi(msiAddress(0xFF, true), msiData(0x3E));
  CHECK(vm.withIrr(0x3E) == ids({0}));
  // A vCPU still in xAPIC mode takes 0xFF as the broadcast.
  TestVm mixed(2, {0, 255});
  mixed.toX2apic(1);
  mixed.enableAll();
  mixed->deliverMsi(msiAddress(0xFF), msiData(0x3F));
  CHECK(mixed.withIrr(0x3F) == ids({0, 1}));
}

TEST_CASE("MSI extended destination ID reaches x2APIC IDs above 255", "[msi][ids]") {
  TestVm vm(4, {0, 255, 300, 0x7FFE});
  vm.allToX2apic();
  vm.enableAll();
  vm->deliverMsi(msiAddress(300), msiData(0x33));
  CHECK(vm.withIrr(0x33) == ids({2}));
  vm->deliverMsi(msiAddress(0x7FFE), msiData(0x34));
  CHECK(vm.withIrr(0x34) == ids({3}));
  // Bits 7:0 alone (300 & 0xFF = 0x2C) name nobody.
  CHECK(vm->deliverMsi(msiAddress(0x2C), msiData(0x35)).status == DeliveryStatus::NO_TARGET);
  // KVM's 32-bit form reaches an ID beyond 15 bits.
  TestVm big(2, {0, 0x123456});
  big.allToX2apic();
  big.enableAll();
  big->deliverMsi((uint64_t(0x123400) << 32) | msiAddress(0x56), msiData(0x36));
  CHECK(big.withIrr(0x36) == ids({1}));
}

TEST_CASE("logical MSI to an x2APIC cluster and to xAPIC flat IDs", "[msi]") {
  TestVm vm(4);
  SECTION("x2APIC: 8-bit logical destination is cluster 0") {
    vm.allToX2apic();
    vm.enableAll();
    vm->deliverMsi(msiAddress(0x0A, true), msiData(0x37));
    CHECK(vm.withIrr(0x37) == ids({1, 3}));
  }
  SECTION("xAPIC flat") {
    vm.enableAll();
    for (uint32_t v = 0; v < 4; v++) vm.write(v, Reg::LDR, (1u << v) << 24);
    vm->deliverMsi(msiAddress(0x06, true), msiData(0x38));
    CHECK(vm.withIrr(0x38) == ids({1, 2}));
  }
}

TEST_CASE("MSI redirection hint: one target among the destination (11.11.1)", "[msi][lowest]") {
  TestVm vm(4);
  vm.enableAll();
  for (uint32_t v = 0; v < 4; v++) vm.write(v, Reg::LDR, (1u << v) << 24);
  auto r = vm->deliverMsi(msiAddress(0x0F, true, true), msiData(0x39));
  CHECK(r.targetCount == 1);
  CHECK(vm.withIrr(0x39).size() == 1);
  // Without the hint, all four.
  vm->deliverMsi(msiAddress(0x0F, true, false), msiData(0x3A));
  CHECK(vm.withIrr(0x3A).size() == 4);
}

TEST_CASE("SDM 11.11.1: an MSI with the redirection hint to logical 0xFF reaches one vCPU, "
          "an NMI included",
          "[msi][lowest]") {
  TestVm vm(4);
  vm.enableAll();
  vm.drainAll();
  for (uint32_t v = 0; v < 4; v++) vm.write(v, Reg::LDR, (1u << v) << 24);
  auto r = vm->deliverMsi(msiAddress(0xFF, true, true), msiData(0x3B));
  CHECK(r.targetCount == 1);
  CHECK(vm.withIrr(0x3B).size() == 1);
  r = vm->deliverMsi(msiAddress(0xFF, true, true), msiData(0x3C, DeliveryMode::LOWEST_PRIORITY));
  CHECK(r.targetCount == 1);
  CHECK(vm.withIrr(0x3C).size() == 1);
  vm.drainAll();
  r = vm->deliverMsi(msiAddress(0xFF, true, true), msiData(0, DeliveryMode::NMI));
  CHECK(r.targetCount == 1);
  CHECK(vm.withEvent(Kind::NMI).size() == 1);
  // Without the hint the NMI goes to all four.
  vm.drainAll();
  vm->deliverMsi(msiAddress(0xFF, true, false), msiData(0, DeliveryMode::NMI));
  CHECK(vm.withEvent(Kind::NMI) == ids({0, 1, 2, 3}));
}

TEST_CASE("MSI delivery modes: NMI, SMI, INIT, ExtINT are events - SIPI and 011 reserved",
          "[msi]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  CHECK(vm->deliverMsi(msiAddress(1), msiData(0, DeliveryMode::NMI)).status ==
        DeliveryStatus::DELIVERED);
  CHECK(vm->deliverMsi(msiAddress(1), msiData(0, DeliveryMode::SMI)).status ==
        DeliveryStatus::DELIVERED);
  CHECK(vm->deliverMsi(msiAddress(1), msiData(0, DeliveryMode::EXTINT)).status ==
        DeliveryStatus::DELIVERED);
  CHECK(vm->deliverMsi(msiAddress(1), msiData(0x10, DeliveryMode::STARTUP)).status ==
        DeliveryStatus::DROPPED);
  CHECK(vm->deliverMsi(msiAddress(1), msiData(0x40, DeliveryMode::RESERVED_3)).status ==
        DeliveryStatus::DROPPED);
  CHECK(vm.take(1) ==
        std::vector<VcpuEvent>{event(Kind::NMI), event(Kind::SMI), event(Kind::EXTINT)});
  CHECK(vm->deliverMsi(msiAddress(1), msiData(0, DeliveryMode::INIT)).status ==
        DeliveryStatus::DELIVERED);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::INIT)});
  CHECK(vm->runState(1) == RunState::WAIT_FOR_SIPI);
}

TEST_CASE("level-triggered MSI: TMR set, level 0 dropped", "[msi]") {
  TestVm vm(2);
  vm.enableAll();
  vm->deliverMsi(msiAddress(1), msiData(0x3B, DeliveryMode::FIXED, TriggerMode::LEVEL));
  CHECK(vm.irr(1, 0x3B));
  CHECK(vm.tmr(1, 0x3B));
  CHECK(vm->deliverMsi(msiAddress(1), msiData(0x3C, DeliveryMode::FIXED, TriggerMode::LEVEL,
                                              false)).status == DeliveryStatus::DROPPED);
  CHECK_FALSE(vm.irr(1, 0x3C));
}

TEST_CASE("illegal vector from a device: receiver ESR bit 6 (11.5.3)", "[msi][esr]") {
  TestVm vm(2);
  vm.enableAll();
  vm.esr(1);
  vm->deliverMsi(msiAddress(1), msiData(0x0E));
  CHECK((vm.esr(1) & (1u << 6)) != 0);
  CHECK_FALSE(vm.anyIrr(1));
}

TEST_CASE("I/O APIC redirection entries: decode, route, mask, trigger", "[ioapic]") {
  auto decoded = decodeRedirectionEntry(redirectionEntry(0x51, 0x1AB, DeliveryMode::LOWEST_PRIORITY,
                                                         true, TriggerMode::LEVEL, true));
  CHECK(decoded.message.vector == 0x51);
  CHECK(decoded.message.destination == 0x1AB);
  CHECK(decoded.message.deliveryMode == DeliveryMode::LOWEST_PRIORITY);
  CHECK(decoded.message.logicalDestination);
  CHECK(decoded.message.trigger == TriggerMode::LEVEL);
  CHECK(decoded.masked);

  TestVm vm(3, {0, 1, 0x1AB});
  vm.allToX2apic();
  vm.enableAll();
  CHECK(vm->deliverIoApic(redirectionEntry(0x52, 1)).status == DeliveryStatus::DELIVERED);
  CHECK(vm.withIrr(0x52) == ids({1}));
  CHECK(vm->deliverIoApic(redirectionEntry(0x53, 1, DeliveryMode::FIXED, false,
                                           TriggerMode::EDGE, true)).status ==
        DeliveryStatus::DROPPED);
  CHECK(vm.withIrr(0x53).empty());
  vm->deliverIoApic(redirectionEntry(0x54, 0x1AB, DeliveryMode::FIXED, false, TriggerMode::LEVEL));
  CHECK(vm.withIrr(0x54) == ids({2}));
  CHECK(vm.tmr(2, 0x54));
}

TEST_CASE("EOI of a level-triggered vector is an EOI event for the I/O APIC (11.8.5)",
          "[eoi]") {
  TestVm vm(2);
  bool x2 = GENERATE(false, true);
  CAPTURE(x2);
  if (x2) vm.allToX2apic();
  vm.enableAll();
  vm->deliverIoApic(redirectionEntry(0x61, 1, DeliveryMode::FIXED, false, TriggerMode::LEVEL));
  vm->deliverIoApic(redirectionEntry(0x62, 1, DeliveryMode::FIXED, false, TriggerMode::EDGE));
  vm.drainAll();
  REQUIRE(vm->acknowledge(1) == uint8_t(0x62));
  vm.write(1, Reg::EOI, 0);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x61)});
  REQUIRE(vm->acknowledge(1) == uint8_t(0x61));
  vm.write(1, Reg::EOI, 0);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::EOI, 0x61)});
}

TEST_CASE("SVR bit 12 suppresses the EOI event (11.8.5)", "[eoi]") {
  VmConfig config = makeConfig(2);
  config.lapic.eoiBroadcastSuppression = true;
  TestVm vm(config);
  vm.enableAll();
  vm.write(1, Reg::SVR, 0x11FF);
  REQUIRE((vm.read(1, Reg::SVR) & (1u << 12)) != 0);
  vm->deliverMsi(msiAddress(1), msiData(0x63, DeliveryMode::FIXED, TriggerMode::LEVEL));
  vm.drainAll();
  REQUIRE(vm->acknowledge(1) == uint8_t(0x63));
  vm.write(1, Reg::EOI, 0);
  CHECK(vm.take(1).empty());
}

TEST_CASE("EOI events of one vector merge with a count - distinct vectors stay apart",
          "[eoi][events]") {
  TestVm vm(2);
  vm.enableAll();
  for (int round = 0; round < 3; round++) {
    vm->deliverMsi(msiAddress(1), msiData(0x64, DeliveryMode::FIXED, TriggerMode::LEVEL));
    REQUIRE(vm->acknowledge(1) == uint8_t(0x64));
    vm.write(1, Reg::EOI, 0);
  }
  vm->deliverMsi(msiAddress(1), msiData(0x65, DeliveryMode::FIXED, TriggerMode::LEVEL));
  REQUIRE(vm->acknowledge(1) == uint8_t(0x65));
  vm.write(1, Reg::EOI, 0);
  std::vector<VcpuEvent> eois;
  for (auto& e : vm.take(1)) {
    if (e.kind == Kind::EOI) eois.push_back(e);
  }
  CHECK(eois == std::vector<VcpuEvent>{event(Kind::EOI, 0x64, 3), event(Kind::EOI, 0x65, 1)});
}

}  // namespace
}  // namespace vlapic::test
