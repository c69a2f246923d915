// SPDX-License-Identifier: MIT
// Lowest-priority delivery (SDM Vol. 3A, 11.6.2.4 "Lowest Priority Delivery
// Mode"): one target among the matching hardware- and software-enabled
// LAPICs. The SDM leaves the choice model-specific; ours (lowest PPR, then a
// fair rotation) is documented in server/vm/README.md.
#include "vm-test-util.h"
#include <map>

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

// Four vCPUs with flat logical IDs 1, 2, 4, 8 (vCPU i has bit i).
void flatLogicalIds(TestVm& vm) {
  for (uint32_t v = 0; v < vm->vcpuCount(); v++) vm.write(v, Reg::LDR, (1u << v) << 24);
}

// Sends one lowest-priority IPI from vCPU 0 and returns the vCPU that got it
// (its IRR is then cleared by acknowledge + EOI).
uint32_t sendLowestPriority(TestVm& vm, uint32_t destination, bool logical = true,
                            uint8_t vector = 0x40) {
  vm.sendIcr(0, icrLow(vector, DeliveryMode::LOWEST_PRIORITY, logical), destination);
  auto got = vm.withIrr(vector);
  REQUIRE(got.size() == 1);
  vm.serviceAll(got[0]);
  vm.drainAll();
  return got[0];
}

TEST_CASE("lowest priority to one physical ID goes to that vCPU", "[lowest]") {
  TestVm vm(4);
  vm.enableAll();
  CHECK(sendLowestPriority(vm, 3, false) == 3);
  CHECK(sendLowestPriority(vm, 3, false) == 3);
}

TEST_CASE("lowest priority: the candidate with the lowest PPR wins", "[lowest]") {
  TestVm vm(4);
  vm.enableAll();
  flatLogicalIds(vm);
  vm.write(1, Reg::TPR, 0x30);
  vm.write(2, Reg::TPR, 0x10);
  vm.write(3, Reg::TPR, 0x20);
  for (int i = 0; i < 5; i++) CHECK(sendLowestPriority(vm, 0x0E) == 2);
  // PPR counts in-service vectors too (11.8.3.1): vCPU 2 busy at class 5.
  vm.sendIcr(0, icrLow(0x55, DeliveryMode::FIXED), 2);
  REQUIRE(vm->acknowledge(2) == uint8_t(0x55));
  CHECK(vm->lapic(2).ppr() == 0x50);
  CHECK(sendLowestPriority(vm, 0x0E) == 3);
  CHECK(vm->stats().lowestPriorityArbitrations == 6);
}

TEST_CASE("lowest priority: equal priorities rotate fairly and deterministically", "[lowest]") {
  TestVm vm(4);
  vm.enableAll();
  flatLogicalIds(vm);
  std::vector<uint32_t> winners;
  for (int i = 0; i < 7; i++) winners.push_back(sendLowestPriority(vm, 0x0E));
  CHECK(winners == std::vector<uint32_t>{1, 2, 3, 1, 2, 3, 1});

  std::map<uint32_t, int> counts;
  for (int i = 0; i < 299; i++) counts[sendLowestPriority(vm, 0x0F)]++;
  // 299 deliveries over 4 equal candidates: each gets 74 or 75.
  for (uint32_t v = 0; v < 4; v++) {
    CAPTURE(v);
    CHECK(counts[v] >= 74);
    CHECK(counts[v] <= 75);
  }
}

TEST_CASE("lowest priority: rotation only among the lowest-PPR candidates", "[lowest]") {
  TestVm vm(4);
  vm.enableAll();
  flatLogicalIds(vm);
  vm.write(1, Reg::TPR, 0x10);
  std::vector<uint32_t> winners;
  for (int i = 0; i < 4; i++) winners.push_back(sendLowestPriority(vm, 0x0E));
  CHECK(winners == std::vector<uint32_t>{2, 3, 2, 3});
}

TEST_CASE("lowest priority skips software-disabled LAPICs - none enabled: no target",
          "[lowest]") {
  TestVm vm(4);
  vm.enable(0);
  vm.enable(1);
  vm.enable(2);
  flatLogicalIds(vm);
  for (int i = 0; i < 6; i++) CHECK(sendLowestPriority(vm, 0x0C) == 2);
  InterruptMessage m;
  m.vector = 0x41;
  m.deliveryMode = DeliveryMode::LOWEST_PRIORITY;
  m.logicalDestination = true;
  m.destination = 0x08;  // only vCPU 3, software-disabled
  CHECK(vm->sendIpi(0, m).status == DeliveryStatus::NO_TARGET);
  CHECK(vm.withIrr(0x41).empty());
}

TEST_CASE("SDM 11.6.2.4: lowest priority to a logical or x2APIC broadcast is accepted by one vCPU",
          "[lowest]") {
  // However many processors the destination names, one accepts it: xAPIC
  // logical 0xFF, x2APIC logical and physical 0xFFFFFFFF.
  TestVm vm(4);
  bool x2 = GENERATE(false, true);
  bool logical = GENERATE(false, true);
  CAPTURE(x2, logical);
  if (!x2 && !logical) return;  // xAPIC physical 0xFF: KVM's exception, below
  if (x2) vm.allToX2apic();
  vm.enableAll();
  if (!x2) flatLogicalIds(vm);
  vm.write(2, Reg::TPR, 0x20);  // not the lowest priority
  std::vector<uint32_t> winners;
  for (int i = 0; i < 4; i++) {
    winners.push_back(sendLowestPriority(vm, x2 ? 0xFFFFFFFF : 0xFF, logical));
  }
  CHECK(winners == std::vector<uint32_t>{0, 1, 3, 0});
  CHECK(vm->stats().lowestPriorityArbitrations == 4);
}

TEST_CASE("SDM 11.6.2.4: lowest priority with the all-including and all-excluding-self "
          "shorthands is accepted by one vCPU",
          "[lowest]") {
  TestVm vm(4);
  bool x2 = GENERATE(false, true);
  CAPTURE(x2);
  if (x2) vm.allToX2apic();
  vm.enableAll();
  vm.write(3, Reg::TPR, 0x40);
  vm.sendIcr(0, icrLow(0x43, DeliveryMode::LOWEST_PRIORITY, false,
                       Shorthand::ALL_EXCLUDING_SELF), 0);
  auto got = vm.withIrr(0x43);
  REQUIRE(got.size() == 1);
  CHECK(got[0] != 0);  // never the sender
  CHECK(got[0] != 3);  // never above the lowest priority
  vm.sendIcr(0, icrLow(0x44, DeliveryMode::LOWEST_PRIORITY, false,
                       Shorthand::ALL_INCLUDING_SELF), 0);
  CHECK(vm.withIrr(0x44).size() == 1);
  CHECK(vm->stats().lowestPriorityArbitrations == 2);
}

TEST_CASE("KVM: lowest priority to xAPIC physical 0xFF is fixed delivery to all "
          "(\"phys broadcast and lowest prio\")",
          "[lowest]") {
  TestVm vm(4);
  vm.enableAll();
  vm.sendIcr(0, icrLow(0x42, DeliveryMode::LOWEST_PRIORITY, false), 0xFF);
  CHECK(vm.withIrr(0x42) == ids({0, 1, 2, 3}));
  CHECK(vm->stats().lowestPriorityArbitrations == 0);
}

TEST_CASE("SDM 11.6.2.4: an I/O APIC entry with lowest priority to logical 0xFF reaches one "
          "of 8 vCPUs",
          "[lowest][ioapic]") {
  TestVm vm(8);
  vm.enableAll();
  for (uint32_t v = 0; v < 8; v++) vm.write(v, Reg::LDR, (1u << v) << 24);
  uint64_t entry = 0x45 | (uint64_t(DeliveryMode::LOWEST_PRIORITY) << 8) | (1ull << 11) |
                   (0xFFull << 56);
  auto result = vm->deliverIoApic(entry);
  CHECK(result.status == DeliveryStatus::DELIVERED);
  CHECK(result.targetCount == 1);
  CHECK(vm.withIrr(0x45).size() == 1);
  // Physical 0xFF from the I/O APIC: KVM's fixed-to-all exception holds for
  // device messages too.
  entry = 0x46 | (uint64_t(DeliveryMode::LOWEST_PRIORITY) << 8) | (0xFFull << 56);
  CHECK(vm->deliverIoApic(entry).targetCount == 8);
  CHECK(vm.withIrr(0x46).size() == 8);
}

TEST_CASE("lowest priority in x2APIC cluster mode picks one of the cluster", "[lowest]") {
  TestVm vm(8);
  vm.allToX2apic();
  vm.enableAll();
  vm.write(5, Reg::TPR, 0x80);
  std::vector<uint32_t> winners;
  for (int i = 0; i < 4; i++) winners.push_back(sendLowestPriority(vm, 0x0000002C));
  CHECK(winners == std::vector<uint32_t>{2, 3, 2, 3});  // IDs 2, 3, 5; 5 has TPR 0x80
}

TEST_CASE("policy ROTATION ignores PPR", "[lowest]") {
  VmConfig config = makeConfig(4);
  config.lowestPriority = LowestPriorityPolicy::ROTATION;
  TestVm vm(config);
  vm.enableAll();
  flatLogicalIds(vm);
  vm.write(1, Reg::TPR, 0xF0);
  // Distinct vectors: vCPU 1 cannot take them (TPR), so they stay in its IRR.
  std::vector<uint32_t> winners;
  for (uint8_t i = 0; i < 4; i++) winners.push_back(sendLowestPriority(vm, 0x0E, true, 0x40 + i));
  CHECK(winners == std::vector<uint32_t>{1, 2, 3, 1});
}

TEST_CASE("policy VECTOR_HASH picks candidate (vector mod n), as KVM does", "[lowest]") {
  VmConfig config = makeConfig(4);
  config.lowestPriority = LowestPriorityPolicy::VECTOR_HASH;
  TestVm vm(config);
  vm.enableAll();
  flatLogicalIds(vm);
  // Candidates 1, 2, 3: vector 0x40 = 64 -> 64 mod 3 = 1 -> vCPU 2.
  CHECK(sendLowestPriority(vm, 0x0E, true, 0x40) == 2);
  CHECK(sendLowestPriority(vm, 0x0E, true, 0x40) == 2);
  CHECK(sendLowestPriority(vm, 0x0E, true, 0x42) == 1);  // 66 mod 3 = 0
}

}  // namespace
}  // namespace vlapic::test
