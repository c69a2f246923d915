// SPDX-License-Identifier: MIT
// IPIs from the ICR, in xAPIC and x2APIC mode (SDM Vol. 3A, 11.6
// "Issuing Interprocessor Interrupts", 11.6.2 "Determining IPI
// Destination", 11.12.9 "ICR Operation in x2APIC Mode").
#include "vm-test-util.h"

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

// Runs a test body once with every vCPU in xAPIC mode and once in x2APIC.
#define BOTH_MODES(vm)                                            \
  bool x2 = GENERATE(false, true);                                \
  CAPTURE(x2);                                                    \
  if (x2) (vm).allToX2apic();                                     \
  uint32_t broadcastId = x2 ? 0xFFFFFFFF : 0xFF

TEST_CASE("fixed physical IPI reaches exactly the addressed vCPU (11.6.2.1)", "[ipi]") {
  TestVm vm(4);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.drainAll();

  auto r = vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 2);
  REQUIRE(r.status == AccessStatus::OK);
  CHECK(vm.withIrr(0x40) == ids({2}));
  CHECK(vm.take(2) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x40)});
  CHECK(vm.take(0).empty());
  CHECK(vm->stats().ipisRouted == 1);
  // What the front injects is what the event announced.
  CHECK(vm->acknowledge(2) == uint8_t(0x40));
  CHECK(vm.isr(2, 0x40));
}

TEST_CASE("xAPIC ICR delivery status reads 0 once the IPI is sent (11.6.1)", "[ipi]") {
  TestVm vm(2);
  vm.enableAll();
  vm.sendIcr(0, icrLow(0x41, DeliveryMode::FIXED), 1);
  CHECK((vm.read(0, Reg::ICR_LOW) & (1u << 12)) == 0);
  CHECK(vm.irr(1, 0x41));
}

TEST_CASE("a physical destination with no APIC reaches nobody", "[ipi]") {
  TestVm vm(3);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.sendIcr(0, icrLow(0x42, DeliveryMode::FIXED), 7);
  CHECK(vm.withIrr(0x42).empty());
  CHECK(vm->stats().messagesWithoutTarget == 1);
}

TEST_CASE("shorthands: self, all including self, all excluding self (11.6.1)", "[ipi]") {
  TestVm vm(4);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.drainAll();

  SECTION("self: a fixed self IPI lands in the sender's IRR") {
    vm.sendIcr(1, icrLow(0x50, DeliveryMode::FIXED, false, Shorthand::SELF), 3);
    CHECK(vm.withIrr(0x50) == ids({1}));
    CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x50)});
  }
  SECTION("self: an NMI to self is an NMI event for the sender, the destination ignored") {
    vm.sendIcr(1, icrLow(0, DeliveryMode::NMI, false, Shorthand::SELF), 3);
    CHECK(vm.withEvent(Kind::NMI) == ids({1}));
  }
  SECTION("all including self") {
    vm.sendIcr(1, icrLow(0x51, DeliveryMode::FIXED, false, Shorthand::ALL_INCLUDING_SELF), 0);
    CHECK(vm.withIrr(0x51) == ids({0, 1, 2, 3}));
  }
  SECTION("all excluding self") {
    vm.sendIcr(1, icrLow(0x52, DeliveryMode::FIXED, false, Shorthand::ALL_EXCLUDING_SELF), 0);
    CHECK(vm.withIrr(0x52) == ids({0, 2, 3}));
  }
  SECTION("all excluding self with NMI") {
    vm.sendIcr(2, icrLow(0, DeliveryMode::NMI, false, Shorthand::ALL_EXCLUDING_SELF), 0);
    CHECK(vm.withEvent(Kind::NMI) == ids({0, 1, 3}));
  }
}

TEST_CASE("x2APIC SELF IPI register (0x83F) delivers to the writer and announces it (11.12.11)",
          "[ipi]") {
  TestVm vm(2);
  vm.allToX2apic();
  vm.enableAll();
  vm.drainAll();
  CHECK(vm->msrWrite(1, regMsr(Reg::SELF_IPI), 0x57).status == AccessStatus::OK);
  CHECK(vm.withIrr(0x57) == ids({1}));
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x57)});
  CHECK(vm->stats().ipisRouted == 0);  // handled inside the core
}

TEST_CASE("broadcast destination in physical and logical mode (11.6.2, KVM)", "[ipi]") {
  TestVm vm(4);
  BOTH_MODES(vm);
  vm.enableAll();
  bool logical = GENERATE(false, true);
  CAPTURE(logical);
  vm.sendIcr(3, icrLow(0x60, DeliveryMode::FIXED, logical), broadcastId);
  CHECK(vm.withIrr(0x60) == ids({0, 1, 2, 3}));
}

TEST_CASE("x2APIC: destination 0xFF is APIC ID 0xFF, not a broadcast (11.12.9)", "[ipi]") {
  TestVm vm(3, {0, 0xFF, 0x1FF});
  vm.allToX2apic();
  vm.enableAll();
  vm.sendIcr(0, icrLow(0x61, DeliveryMode::FIXED), 0xFF);
  CHECK(vm.withIrr(0x61) == ids({1}));
  vm.sendIcr(0, icrLow(0x62, DeliveryMode::FIXED), 0x1FF);
  CHECK(vm.withIrr(0x62) == ids({2}));
}

TEST_CASE("xAPIC logical flat model: the destination is a mask of LDR bits (11.6.2.2)", "[ipi]") {
  TestVm vm(4);
  vm.enableAll();
  // DFR flat is the reset value; give vCPU i logical ID bit i, and vCPU 3 two bits.
  vm.write(0, Reg::LDR, 0x01000000);
  vm.write(1, Reg::LDR, 0x02000000);
  vm.write(2, Reg::LDR, 0x04000000);
  vm.write(3, Reg::LDR, 0x88000000);
  vm.sendIcr(0, icrLow(0x70, DeliveryMode::FIXED, true), 0x05);
  CHECK(vm.withIrr(0x70) == ids({0, 2}));
  vm.sendIcr(0, icrLow(0x71, DeliveryMode::FIXED, true), 0x0A);
  CHECK(vm.withIrr(0x71) == ids({1, 3}));
  vm.sendIcr(0, icrLow(0x72, DeliveryMode::FIXED, true), 0x80);
  CHECK(vm.withIrr(0x72) == ids({3}));
  vm.sendIcr(0, icrLow(0x73, DeliveryMode::FIXED, true), 0x00);
  CHECK(vm.withIrr(0x73).empty());
}

TEST_CASE("xAPIC logical cluster model: cluster in 7:4, mask in 3:0 (11.6.2.2)", "[ipi]") {
  TestVm vm(5);
  vm.enableAll();
  for (uint32_t v = 0; v < 5; v++) vm.write(v, Reg::DFR, 0x0FFFFFFF);
  vm.write(0, Reg::LDR, 0x11000000);  // cluster 1, bit 0
  vm.write(1, Reg::LDR, 0x12000000);  // cluster 1, bit 1
  vm.write(2, Reg::LDR, 0x14000000);  // cluster 1, bit 2
  vm.write(3, Reg::LDR, 0x21000000);  // cluster 2, bit 0
  vm.write(4, Reg::LDR, 0x23000000);  // cluster 2, bits 0 and 1
  vm.sendIcr(0, icrLow(0x74, DeliveryMode::FIXED, true), 0x13);
  CHECK(vm.withIrr(0x74) == ids({0, 1}));
  vm.sendIcr(0, icrLow(0x75, DeliveryMode::FIXED, true), 0x21);
  CHECK(vm.withIrr(0x75) == ids({3, 4}));
  vm.sendIcr(0, icrLow(0x76, DeliveryMode::FIXED, true), 0x32);
  CHECK(vm.withIrr(0x76).empty());
  // 0xFF is the broadcast in the cluster model too.
  vm.sendIcr(0, icrLow(0x77, DeliveryMode::FIXED, true), 0xFF);
  CHECK(vm.withIrr(0x77) == ids({0, 1, 2, 3, 4}));
}

TEST_CASE("xAPIC logical: a LAPIC with an undefined DFR model matches nothing (KVM)", "[ipi]") {
  TestVm vm(2);
  vm.enableAll();
  vm.write(1, Reg::LDR, 0x01000000);
  vm.write(1, Reg::DFR, 0x5FFFFFFF);
  if ((vm.read(1, Reg::DFR) >> 28) == 0x5) {
    vm.sendIcr(0, icrLow(0x78, DeliveryMode::FIXED, true), 0x01);
    CHECK(vm.withIrr(0x78).empty());
  } else {
    // The core masks DFR to the two defined models; then the flat rule holds.
    WARN("DFR model bits read " << (vm.read(1, Reg::DFR) >> 28));
  }
}

TEST_CASE("x2APIC logical: cluster 31:16, 16-bit mask, LDR derived from the ID (11.12.10.2)",
          "[ipi]") {
  std::vector<uint32_t> apicIds;
  for (uint32_t i = 0; i < 40; i++) apicIds.push_back(i);
  TestVm vm(40, apicIds);
  vm.allToX2apic();
  vm.enableAll();
  CHECK(vm.read(17, Reg::LDR) == ((1u << 16) | (1u << 1)));
  vm.sendIcr(0, icrLow(0x80, DeliveryMode::FIXED, true), (1u << 16) | 0x0003);
  CHECK(vm.withIrr(0x80) == ids({16, 17}));
  vm.sendIcr(0, icrLow(0x81, DeliveryMode::FIXED, true), (2u << 16) | 0x8001);
  CHECK(vm.withIrr(0x81) == ids({32}));  // IDs 32..39 only: bit 15 is ID 47
  vm.sendIcr(0, icrLow(0x82, DeliveryMode::FIXED, true), (7u << 16) | 0xFFFF);
  CHECK(vm.withIrr(0x82).empty());
}

TEST_CASE("x2APIC logical NMI multicast reaches every addressed vCPU", "[ipi]") {
  TestVm vm(20);
  vm.allToX2apic();
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI, true), (1u << 16) | 0x0005);
  CHECK(vm.withEvent(Kind::NMI) == ids({16, 18}));
}

TEST_CASE("a message without a sender cannot use a shorthand", "[ipi]") {
  TestVm vm(2);
  vm.enableAll();
  InterruptMessage m;
  m.vector = 0x40;
  m.shorthand = Shorthand::ALL_INCLUDING_SELF;
  CHECK(vm->deliverMessage(m).status == DeliveryStatus::NOT_AN_INTERRUPT);
  CHECK(vm.withIrr(0x40).empty());
}

TEST_CASE("fixed level-triggered IPI sets TMR - edge clears it (11.6.1)", "[ipi]") {
  TestVm vm(2);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.sendIcr(0, icrLow(0x90, DeliveryMode::FIXED, false, Shorthand::NONE, true,
                       TriggerMode::LEVEL), 1);
  CHECK(vm.irr(1, 0x90));
  CHECK(vm.tmr(1, 0x90));
  vm.sendIcr(0, icrLow(0x91, DeliveryMode::FIXED), 1);
  CHECK(vm.irr(1, 0x91));
  CHECK_FALSE(vm.tmr(1, 0x91));
}

TEST_CASE("a level-triggered fixed message with level 0 is dropped (KVM)", "[ipi]") {
  TestVm vm(2);
  vm.enableAll();
  InterruptMessage m;
  m.vector = 0x92;
  m.trigger = TriggerMode::LEVEL;
  m.levelAssert = false;
  m.destination = 1;
  auto result = vm->sendIpi(0, m);
  CHECK(result.status == DeliveryStatus::DROPPED);
  CHECK_FALSE(vm.irr(1, 0x92));
  // The same through the ICR.
  vm.sendIcr(0, icrLow(0x93, DeliveryMode::FIXED, false, Shorthand::NONE, false,
                       TriggerMode::LEVEL), 1);
  CHECK_FALSE(vm.irr(1, 0x93));
}

TEST_CASE("illegal vector in the ICR: sender ESR bit 5, receiver ESR bit 6, nothing accepted (11.5.3)",
          "[ipi][esr]") {
  TestVm vm(2);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.esr(0);
  vm.esr(1);
  vm.drainAll();
  vm.sendIcr(0, icrLow(0x05, DeliveryMode::FIXED), 1);
  CHECK(vm.esr(0) == (1u << 5));
  CHECK(vm.esr(1) == (1u << 6));
  CHECK_FALSE(vm.anyIrr(1));
  CHECK(vm.take(1).empty());
}

TEST_CASE("illegal vector received: receiver ESR bit 6, nothing in IRR (11.5.3)",
          "[ipi][esr]") {
  TestVm vm(3);
  vm.enableAll();
  vm.esr(1);
  vm.esr(2);
  InterruptMessage m;
  m.vector = 0x0F;
  m.shorthand = Shorthand::ALL_EXCLUDING_SELF;
  CHECK(vm->sendIpi(0, m).targetCount == 2);
  CHECK((vm.esr(1) & (1u << 6)) != 0);
  CHECK((vm.esr(2) & (1u << 6)) != 0);
  CHECK_FALSE(vm.anyIrr(1));
  CHECK(vm->pendingVector(1) == nullptr);
}

TEST_CASE("NMI and SMI IPIs are events, not IRR vectors (11.6.1)", "[ipi]") {
  TestVm vm(3);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::SMI), 1);
  CHECK_FALSE(vm.anyIrr(1));
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::NMI), event(Kind::SMI)});
  CHECK(vm.take(2).empty());
}

TEST_CASE("NMI reaches a software-disabled LAPIC, fixed interrupts do not (11.4.7.2)",
          "[ipi]") {
  TestVm vm(2);
  vm.enable(0);  // vCPU 1 stays software-disabled (SVR reset value)
  vm.drainAll();
  vm.sendIcr(0, icrLow(0xA0, DeliveryMode::FIXED), 1);
  CHECK_FALSE(vm.irr(1, 0xA0));
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::NMI)});
}

TEST_CASE("a hardware-disabled LAPIC receives no message at all (11.4.3, KVM)", "[ipi]") {
  TestVm vm(3);
  vm.enableAll();
  vm.hardwareDisable(2);
  vm.drainAll();
  vm.sendIcr(0, icrLow(0xA1, DeliveryMode::FIXED, false, Shorthand::ALL_EXCLUDING_SELF), 0);
  CHECK(vm.withIrr(0xA1) == ids({1}));
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI, false, Shorthand::NONE), 2);
  CHECK(vm.take(2).empty());
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT, false, Shorthand::ALL_EXCLUDING_SELF), 0);
  CHECK(vm.withEvent(Kind::INIT) == ids({1}));
}

TEST_CASE("reserved ICR delivery modes (011, ExtINT 111) deliver nothing (11.6.1)", "[ipi]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  InterruptMessage m;
  m.vector = 0xA2;
  m.destination = 1;
  for (auto mode : {DeliveryMode::RESERVED_3, DeliveryMode::EXTINT}) {
    m.deliveryMode = mode;
    CHECK(vm->sendIpi(0, m).status == DeliveryStatus::DROPPED);
  }
  CHECK_FALSE(vm.anyIrr(1));
  CHECK(vm.take(1).empty());
}

TEST_CASE("INIT IPI resets the target keeping ID and base - an AP waits for SIPI (11.4.7.3)",
          "[ipi][init]") {
  TestVm vm(3);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.startAps();
  vm.write(2, Reg::TPR, 0x20);
  vm.sendIcr(0, icrLow(0xB0, DeliveryMode::FIXED), 2);
  vm.drainAll();
  uint64_t baseBefore = vm->lapic(2).apicBase();
  uint32_t idBefore = vm->lapic(2).apicId();

  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT), 2);
  CHECK(vm->runState(2) == RunState::WAIT_FOR_SIPI);
  CHECK(vm->lapic(2).apicBase() == baseBefore);
  CHECK(vm->lapic(2).apicId() == idBefore);
  CHECK_FALSE(vm->lapic(2).softwareEnabled());
  CHECK(vm->lapic(2).tpr() == 0);
  CHECK_FALSE(vm.irr(2, 0xB0));
  CHECK(vm.take(2) == std::vector<VcpuEvent>{event(Kind::INIT)});
}

TEST_CASE("INIT to the boot vCPU: INIT event, it stays running (11.4.7.3, KVM)", "[init]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(1, icrLow(0, DeliveryMode::INIT), 0);
  CHECK(vm.take(0) == std::vector<VcpuEvent>{event(Kind::INIT)});
  CHECK(vm->runState(0) == RunState::RUNNING);
  CHECK(vm->lapic(0).isBsp());
}

TEST_CASE("INIT level de-assert is ignored (11.6.1)", "[init]") {
  TestVm vm(2);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enableAll();
  vm.startAps();
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT, false, Shorthand::ALL_EXCLUDING_SELF, false,
                       TriggerMode::LEVEL), 0);
  CHECK(vm.take(1).empty());
  CHECK(vm->runState(1) == RunState::RUNNING);
  CHECK(vm->lapic(1).softwareEnabled());
  // Level-triggered assert is a real INIT.
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT, false, Shorthand::ALL_EXCLUDING_SELF, true,
                       TriggerMode::LEVEL), 0);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::INIT)});
}

TEST_CASE("INIT-SIPI-SIPI starts every AP at the SIPI vector (8.4.4.1 MP initialization)",
          "[init][sipi]") {
  TestVm vm(4);
  BOTH_MODES(vm);
  (void)broadcastId;
  vm.enable(0);  // the BSP; APs are untouched, as after power-on
  vm.drainAll();
  for (uint32_t ap = 1; ap < 4; ap++) CHECK(vm->runState(ap) == RunState::WAIT_FOR_SIPI);
  // Firmware has run them once: they are running before the OS starts them.
  vm.startAps();

  // The universal start-up algorithm: INIT to all but self, then SIPI twice.
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT, false, Shorthand::ALL_EXCLUDING_SELF, true,
                       TriggerMode::LEVEL), 0);
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT, false, Shorthand::ALL_EXCLUDING_SELF, false,
                       TriggerMode::LEVEL), 0);
  for (uint32_t ap = 1; ap < 4; ap++) CHECK(vm->runState(ap) == RunState::WAIT_FOR_SIPI);
  vm.sendIcr(0, icrLow(0x9A, DeliveryMode::STARTUP, false, Shorthand::ALL_EXCLUDING_SELF), 0);
  vm.sendIcr(0, icrLow(0x9A, DeliveryMode::STARTUP, false, Shorthand::ALL_EXCLUDING_SELF), 0);

  for (uint32_t ap = 1; ap < 4; ap++) {
    CAPTURE(ap);
    CHECK(vm->runState(ap) == RunState::RUNNING);
    // One SIPI: the second found the AP running and was dropped.
    CHECK(vm.take(ap) ==
          std::vector<VcpuEvent>{event(Kind::INIT), event(Kind::SIPI, 0x9A)});
  }
  CHECK(vm.take(0).empty());
  CHECK(vm->runState(0) == RunState::RUNNING);
}

TEST_CASE("SIPI to a running vCPU is dropped (8.4.4)", "[sipi]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  // Power-on: the AP waits for SIPI; the first one starts it.
  vm.sendIcr(0, icrLow(0x10, DeliveryMode::STARTUP), 1);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::SIPI, 0x10)});
  CHECK(vm->runState(1) == RunState::RUNNING);
  vm.sendIcr(0, icrLow(0x11, DeliveryMode::STARTUP), 1);
  CHECK(vm.take(1).empty());
  CHECK(vm->runState(1) == RunState::RUNNING);
}

TEST_CASE("physical INIT then SIPI to one AP by APIC ID above 255", "[sipi][ids]") {
  TestVm vm(3, {0, 300, 70000});
  vm.allToX2apic();
  vm.enable(0);
  vm.startAps();
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT), 70000);
  vm.sendIcr(0, icrLow(0x20, DeliveryMode::STARTUP), 70000);
  CHECK(vm.take(2) == std::vector<VcpuEvent>{event(Kind::INIT), event(Kind::SIPI, 0x20)});
  CHECK(vm.take(1).empty());
  CHECK(vm->runState(1) == RunState::RUNNING);
}

}  // namespace
}  // namespace vlapic::test
