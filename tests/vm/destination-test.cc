// SPDX-License-Identifier: MIT
// VM size and the destination map: configurable APIC IDs (above 255, sparse),
// 1024-vCPU VMs, aliased IDs falling back to a scan, the map following ID,
// LDR, DFR and mode changes, and the map agreeing with the reference scan on
// random VMs. Also VmConfig validation.
#include "vm-test-util.h"
#include <random>

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

TEST_CASE("1024 vCPUs with sparse x2APIC IDs above 255: physical, cluster and broadcast",
          "[ids][scale]") {
  constexpr uint32_t n = 1024;
  std::vector<uint32_t> apicIds;
  for (uint32_t i = 0; i < n; i++) apicIds.push_back(1000 + 3 * i);
  TestVm vm(n, apicIds);
  vm.allToX2apic();
  vm.enableAll();
  vm.drainAll();

  for (uint32_t i = 0; i < n; i++) {
    vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1000 + 3 * i);
  }
  CHECK(vm.withIrr(0x40).size() == n);
  for (uint32_t i = 0; i < n; i++) CHECK(vm->peekEvents(i).size() == 1);
  // Nobody is addressed by an ID in between.
  vm.sendIcr(0, icrLow(0x41, DeliveryMode::FIXED), 1001);
  CHECK(vm.withIrr(0x41).empty());

  vm.sendIcr(5, icrLow(0x42, DeliveryMode::FIXED, false, Shorthand::ALL_EXCLUDING_SELF), 0);
  auto got = vm.withIrr(0x42);
  CHECK(got.size() == n - 1);
  CHECK(std::find(got.begin(), got.end(), 5) == got.end());
  vm.sendIcr(5, icrLow(0x43, DeliveryMode::FIXED), 0xFFFFFFFF);
  CHECK(vm.withIrr(0x43).size() == n);

  // ID 1000 + 3i: cluster (ID >> 4), bit (ID & 15). Cluster 100 holds IDs
  // 1600..1615, i.e. i = 200 (1600), 201 (1603), ..., 205 (1615).
  vm.sendIcr(0, icrLow(0x44, DeliveryMode::FIXED, true), (100u << 16) | 0xFFFF);
  CHECK(vm.withIrr(0x44) == ids({200, 201, 202, 203, 204, 205}));
  vm.sendIcr(0, icrLow(0x45, DeliveryMode::FIXED, true), (100u << 16) | (1u << 3));
  CHECK(vm.withIrr(0x45) == ids({201}));

  CHECK(vm->stats().destinationScans == 0);
  CHECK(vm->vcpuWithInitialApicId(1000 + 3 * 777) == uint32_t(777));
  CHECK(vm->initialApicId(777) == 1000 + 3 * 777);
}

TEST_CASE("APIC IDs beyond the dense range are found through the sparse map", "[ids]") {
  TestVm vm(3, {0x10000, 0x12345678, 7});
  vm.allToX2apic();
  vm.enableAll();
  vm.sendIcr(2, icrLow(0x46, DeliveryMode::FIXED), 0x12345678);
  CHECK(vm.withIrr(0x46) == ids({1}));
  vm.sendIcr(2, icrLow(0x47, DeliveryMode::FIXED), 0x10000);
  CHECK(vm.withIrr(0x47) == ids({0}));
  vm.sendIcr(2, icrLow(0x48, DeliveryMode::FIXED), 0x10001);
  CHECK(vm.withIrr(0x48).empty());
  CHECK(vm->stats().destinationScans == 0);
}

TEST_CASE("aliased IDs: two vCPUs with one xAPIC ID both receive (scan fallback)", "[ids]") {
  TestVm vm(3);
  vm.enableAll();
  // The guest gives vCPU 2 the ID of vCPU 1 (xAPIC ID is writable).
  vm.write(2, Reg::ID, 1u << 24);
  REQUIRE(vm->lapic(2).apicId() == 1);
  vm.sendIcr(0, icrLow(0x49, DeliveryMode::FIXED), 1);
  CHECK(vm.withIrr(0x49) == ids({1, 2}));
  CHECK(vm->stats().destinationScans == 1);
  // Lowest priority over the aliased pair picks one.
  vm.sendIcr(0, icrLow(0x4A, DeliveryMode::LOWEST_PRIORITY), 1);
  CHECK(vm.withIrr(0x4A).size() == 1);
  // vCPU 2's own ID is gone.
  vm.sendIcr(0, icrLow(0x4B, DeliveryMode::FIXED), 2);
  CHECK(vm.withIrr(0x4B).empty());
}

TEST_CASE("the map follows ID, LDR, DFR and mode changes", "[ids]") {
  TestVm vm(3);
  vm.enableAll();
  vm.sendIcr(0, icrLow(0x50, DeliveryMode::FIXED), 2);
  CHECK(vm.withIrr(0x50) == ids({2}));
  uint64_t rebuilds = vm->stats().destinationMapRebuilds;

  vm.write(2, Reg::ID, 9u << 24);
  vm.sendIcr(0, icrLow(0x51, DeliveryMode::FIXED), 9);
  CHECK(vm.withIrr(0x51) == ids({2}));
  CHECK(vm->stats().destinationMapRebuilds == rebuilds + 1);

  vm.write(1, Reg::LDR, 0x20000000);
  vm.sendIcr(0, icrLow(0x52, DeliveryMode::FIXED, true), 0x20);
  CHECK(vm.withIrr(0x52) == ids({1}));

  vm.write(1, Reg::DFR, 0x0FFFFFFF);  // cluster model: 0x20 is cluster 2, no bits
  vm.sendIcr(0, icrLow(0x53, DeliveryMode::FIXED, true), 0x20);
  CHECK(vm.withIrr(0x53).empty());

  vm.toX2apic(1);  // x2APIC ID 1, LDR cluster 0 bit 1
  vm.sendIcr(0, icrLow(0x54, DeliveryMode::FIXED, true), 0x02);
  CHECK(vm.withIrr(0x54) == ids({1}));

  vm.hardwareDisable(2);
  vm.sendIcr(0, icrLow(0x55, DeliveryMode::FIXED), 9);
  CHECK(vm.withIrr(0x55).empty());
}

TEST_CASE("an xAPIC-mode vCPU whose ID does not fit 8 bits answers to its full ID (KVM)",
          "[ids]") {
  TestVm vm(2, {0, 0x105});
  vm.enableAll();
  CHECK(vm->lapic(1).apicId() == 0x05);
  InterruptMessage m;
  m.vector = 0x56;
  m.destination = 0x105;
  m.x2apicFormat = true;
  CHECK(vm->deliverMessage(m).status == DeliveryStatus::DELIVERED);
  CHECK(vm.withIrr(0x56) == ids({1}));
  m.vector = 0x57;
  m.destination = 0x05;
  vm->deliverMessage(m);
  CHECK(vm.withIrr(0x57) == ids({1}));
}

TEST_CASE("mixed xAPIC/x2APIC VM: one ID in both spaces aliases and still delivers", "[ids]") {
  TestVm vm(3, {0, 5, 0x205});
  vm.enableAll();
  vm.toX2apic(1);  // x2APIC ID 5; vCPU 2 stays xAPIC with ID 0x205 & 0xFF = 5
  InterruptMessage m;
  m.vector = 0x58;
  m.destination = 5;
  vm->deliverMessage(m);
  CHECK(vm.withIrr(0x58) == ids({1, 2}));
}

TEST_CASE("the destination map agrees with a scan of every vCPU on random VMs", "[ids]") {
  std::mt19937 rng(GENERATE(1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u));
  uint32_t n = 2 + rng() % 40;
  std::vector<uint32_t> apicIds;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t id;
    do {
      id = rng() % 3 == 0 ? rng() % 0x300 : rng() % 64;
    } while (std::find(apicIds.begin(), apicIds.end(), id) != apicIds.end());
    apicIds.push_back(id);
  }
  VmConfig withMap = makeConfig(n, apicIds);
  VmConfig withScan = makeConfig(n, apicIds);
  withScan.destinationMap = false;
  TestVm a(withMap), b(withScan);

  auto both = [&](auto&& op) {
    op(a);
    op(b);
  };
  for (int step = 0; step < 200; step++) {
    uint32_t v = rng() % n;
    uint32_t r = rng();
    switch (rng() % 7) {
      case 0: both([&](TestVm& vm) { if (!vm.x2apic(v)) vm.write(v, Reg::ID, (r % 16) << 24); }); break;
      case 1: both([&](TestVm& vm) { if (!vm.x2apic(v)) vm.write(v, Reg::LDR, (r & 0xFF) << 24); }); break;
      case 2:
        both([&](TestVm& vm) {
          if (!vm.x2apic(v)) vm.write(v, Reg::DFR, (r & 1) ? 0xFFFFFFFF : 0x0FFFFFFF);
        });
        break;
      case 3: both([&](TestVm& vm) { if (vm->lapic(v).hardwareEnabled() && !vm.x2apic(v)) vm.toX2apic(v); }); break;
      case 4: if (r % 4 == 0) both([&](TestVm& vm) { vm.hardwareDisable(v); }); break;
      default: break;
    }
    for (int probe = 0; probe < 10; probe++) {
      InterruptMessage m;
      m.logicalDestination = rng() % 2;
      m.x2apicFormat = rng() % 2;
      switch (rng() % 4) {
        case 0: m.destination = rng() % 0x300; break;
        case 1: m.destination = rng() & 0xFF; break;
        case 2: m.destination = ((rng() % 4) << 16) | (rng() & 0xFFFF); break;
        default: m.destination = apicIds[rng() % n]; break;
      }
      kj::Maybe<uint32_t> source;
      if (rng() % 4 == 0) {
        m.shorthand = Shorthand(rng() % 4);
        source = rng() % n;
      }
      auto fromMap = a->resolveDestination(m, source);
      auto fromScan = b->resolveDestination(m, source);
      CAPTURE(step, m.destination, m.logicalDestination, m.x2apicFormat, int(m.shorthand));
      REQUIRE(std::vector<uint32_t>(fromMap.begin(), fromMap.end()) ==
              std::vector<uint32_t>(fromScan.begin(), fromScan.end()));
    }
  }
  CHECK(b->stats().destinationMapRebuilds == 0);
}

TEST_CASE("VmConfig validation names the problem", "[config]") {
  auto problem = [](const VmConfig& config) -> std::string {
    KJ_IF_MAYBE(p, validateVmConfig(config)) return p->cStr();
    return "";
  };
  CHECK(problem(makeConfig(4)) == "");
  CHECK(problem(makeConfig(0)) != "");
  CHECK(problem(makeConfig(kMaxVcpus + 1)) != "");
  CHECK(problem(makeConfig(3, {1, 2})) != "");
  CHECK(problem(makeConfig(3, {1, 2, 1})).find("twice") != std::string::npos);
  CHECK(problem(makeConfig(2, {0, 0xFFFFFFFF})) != "");
  VmConfig boot = makeConfig(2);
  boot.bootVcpu = 2;
  CHECK(problem(boot) != "");
  VmConfig noX2apic = makeConfig(2, {0, 300});
  noX2apic.lapic.x2apicSupported = false;
  CHECK(problem(noX2apic).find("x2APIC") != std::string::npos);
  VmConfig tsc = makeConfig(1);
  tsc.tscHz = 0;
  CHECK(problem(tsc) != "");
  VmConfig lvt = makeConfig(1);
  lvt.lapic.lvtEntries = 5;
  CHECK(problem(lvt) != "");
}

TEST_CASE("the boot vCPU comes from the configuration", "[config][init]") {
  VmConfig config = makeConfig(3);
  config.bootVcpu = 2;
  TestVm vm(config);
  CHECK(vm->bootVcpu() == 2);
  CHECK(vm->lapic(2).isBsp());
  CHECK_FALSE(vm->lapic(0).isBsp());
  CHECK((vm->lapic(2).apicBase() & kApicBaseBsp) != 0);
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(2, icrLow(0, DeliveryMode::INIT, false, Shorthand::ALL_INCLUDING_SELF), 0);
  CHECK(vm->runState(2) == RunState::RUNNING);
  CHECK(vm->runState(0) == RunState::WAIT_FOR_SIPI);
}

}  // namespace
}  // namespace vlapic::test
