// SPDX-License-Identifier: MIT
// Save and restore of one vCPU and of a whole VM: LAPIC state, the guest
// TSC, queued events and the lowest-priority rotation; all or nothing.
#include "vm-test-util.h"

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

TEST_CASE("VM save/restore round trip: registers, queued events, TSC, rotation", "[save]") {
  TestVm source(3);
  source.allToX2apic();
  source.enableAll();
  source.drainAll();
  source.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1);
  source.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  source.sendIcr(0, icrLow(0x41, DeliveryMode::LOWEST_PRIORITY, true), 0x6);  // IDs 1, 2
  source.write(2, Reg::TPR, 0x20);
  auto snapshot = source->saveVm();
  CHECK(snapshot.vcpus.size() == 3);
  CHECK(snapshot.tscAtSave == source->tsc().now());

  TestVm target(3);
  REQUIRE(target->restoreVm(snapshot) == nullptr);
  CHECK(target.x2apic(1));
  CHECK(target.irr(1, 0x40));
  CHECK(target->lapic(2).tpr() == 0x20);
  CHECK(std::vector<VcpuEvent>(target->peekEvents(1).begin(), target->peekEvents(1).end()) ==
        std::vector<VcpuEvent>(source->peekEvents(1).begin(), source->peekEvents(1).end()));
  CHECK(target->tsc().getOffset() == source->tsc().getOffset());
  // The listener learns about the restored queues.
  CHECK(std::find(target.listener.pending.begin(), target.listener.pending.end(), 1) !=
        target.listener.pending.end());
  // The rotation continues where it was: the next lowest-priority winner
  // among IDs 1 and 2 is the same in both VMs.
  source.sendIcr(0, icrLow(0x42, DeliveryMode::LOWEST_PRIORITY, true), 0x6);
  target.sendIcr(0, icrLow(0x42, DeliveryMode::LOWEST_PRIORITY, true), 0x6);
  CHECK(source.withIrr(0x42) == target.withIrr(0x42));
}

TEST_CASE("restoreVm with RESUME_AT_SAVED continues the guest TSC from the saved value",
          "[save]") {
  TestVm vm(1);
  auto snapshot = vm->saveVm();
  vm.clock.advance(5'000'000'000);
  REQUIRE(vm->restoreVm(snapshot, TscRestore::RESUME_AT_SAVED) == nullptr);
  CHECK(vm->tsc().now() == snapshot.tscAtSave);
  vm.clock.advance(1'000'000'000);
  REQUIRE(vm->restoreVm(snapshot, TscRestore::KEEP_OFFSET) == nullptr);
  CHECK(vm->tsc().getOffset() == snapshot.tscOffset);
}

TEST_CASE("a bad VM snapshot is rejected with a reason and changes nothing", "[save]") {
  TestVm vm(2);
  vm.enableAll();
  vm.write(1, Reg::TPR, 0x30);
  vm.drainAll();
  auto good = vm->saveVm();
  vm.write(0, Reg::TPR, 0x50);  // state that a failed restore must not undo
  vm.write(1, Reg::TPR, 0x60);

  SECTION("wrong vCPU count") {
    TestVm other(3);
    auto snapshot = other->saveVm();
    CHECK(vm->restoreVm(snapshot) != nullptr);
  }
  SECTION("a corrupt hidden-state record on the second vCPU") {
    auto bad = vm->saveVm();
    bad.vcpus[0].regs[0x80] = 0x10;  // TPR 0x10 on vCPU 0 if this were applied
    bad.vcpus[1].hidden = kj::heapArray<kj::byte>({0xDE, 0xAD});
    bad.tscOffset = good.tscOffset + 12345;
    CHECK(vm->restoreVm(bad) != nullptr);
    CHECK(vm->tsc().getOffset() == good.tscOffset);
  }
  SECTION("a queue with two NMI events") {
    auto bad = vm->saveVm();
    bad.queuedEvents[1] = kj::heapArray<VcpuEvent>({event(Kind::NMI), event(Kind::NMI)});
    CHECK(vm->restoreVm(bad) != nullptr);
  }
  SECTION("an event with count 0") {
    auto bad = vm->saveVm();
    bad.queuedEvents[0] = kj::heapArray<VcpuEvent>({event(Kind::EOI, 0x40, 0)});
    CHECK(vm->restoreVm(bad) != nullptr);
  }
  CHECK(vm->lapic(0).tpr() == 0x50);
  CHECK(vm->lapic(1).tpr() == 0x60);
}

TEST_CASE("vCPU save/restore keeps the events and re-announces what is deliverable",
          "[save]") {
  TestVm vm(2);
  vm.enableAll();
  vm.sendIcr(0, icrLow(0x70, DeliveryMode::FIXED), 1);
  auto saved = vm->saveVcpu(1);
  vm.drainAll();
  REQUIRE(vm->acknowledge(1) == uint8_t(0x70));
  vm.write(1, Reg::EOI, 0);
  REQUIRE(vm->restoreVcpu(1, saved) == nullptr);
  CHECK(vm.irr(1, 0x70));
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x70)});
  auto bad = vm->saveVcpu(1);
  bad.hidden = kj::heapArray<kj::byte>(3);
  CHECK(vm->restoreVcpu(1, bad) != nullptr);
  CHECK(vm.irr(1, 0x70));
}

TEST_CASE("RESET of one vCPU clears its queue and its LAPIC", "[init]") {
  TestVm vm(2);
  vm.enableAll();
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1);
  vm->reset(1);
  CHECK_FALSE(vm->hasEvents(1));
  CHECK_FALSE(vm.irr(1, 0x40));
  CHECK_FALSE(vm->lapic(1).softwareEnabled());
}

}  // namespace
}  // namespace vlapic::test
