// SPDX-License-Identifier: MIT
// The per-vCPU event queues: order, coalescing where the architecture allows
// it (IRR is a set, one NMI and one SMI latch, INIT supersedes INIT/SIPI),
// the bound, and the listener that spares the transport from polling.
#include "vm-test-util.h"
#include <random>

namespace vlapic::test {
namespace {

using Kind = VcpuEvent::Kind;

TEST_CASE("events keep the order in which they happened", "[events]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(0, icrLow(0, DeliveryMode::SMI), 1);
  vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::SMI),
                                             event(Kind::VECTOR_DELIVERABLE, 0x40),
                                             event(Kind::NMI)});
}

TEST_CASE("vector-deliverable is state: only the latest, withdrawn when nothing is deliverable",
          "[events]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  vm.sendIcr(0, icrLow(0x80, DeliveryMode::FIXED), 1);
  // 0x80 supersedes 0x40 and is queued where it happened, after the NMI.
  CHECK(vm->peekEvents(1).size() == 2);
  CHECK(vm->peekEvents(1)[0] == event(Kind::NMI));
  CHECK(vm->peekEvents(1)[1] == event(Kind::VECTOR_DELIVERABLE, 0x80));
  // A lower vector changes nothing: 0x80 is still what acknowledge returns.
  vm.sendIcr(0, icrLow(0x50, DeliveryMode::FIXED), 1);
  CHECK(vm->peekEvents(1).size() == 2);
  // CR8 = 9 blocks classes <= 9: nothing deliverable, the event is withdrawn.
  vm->setCr8(1, 9);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::NMI)});
  vm->setCr8(1, 0);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x80)});
  // Sending a vector already pending is not news.
  vm.sendIcr(0, icrLow(0x80, DeliveryMode::FIXED), 1);
  CHECK(vm.take(1).empty());
  // After acknowledge, the next deliverable vector is announced again.
  CHECK(vm->acknowledge(1) == uint8_t(0x80));
  CHECK(vm.take(1).empty());  // 0x50, 0x40 are blocked by ISR 0x80 (PPR 0x80)
  vm.write(1, Reg::EOI, 0);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x50)});
  CHECK(vm->acknowledge(1) == uint8_t(0x50));
  CHECK(vm.take(1) == std::vector<VcpuEvent>{});  // 0x40 blocked by 0x50 in service
  vm.write(1, Reg::EOI, 0);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::VECTOR_DELIVERABLE, 0x40)});
}

TEST_CASE("NMIs are counted, never dropped, while unfetched (SDM 6.7.1 - the CPU, not the queue, "
          "decides which collapse), and one SMI latches",
          "[events][nmi]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  for (int i = 0; i < 5; i++) {
    vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
    vm.sendIcr(0, icrLow(0, DeliveryMode::SMI), 1);
  }
  auto nmis = event(Kind::NMI);
  nmis.count = 5;
  CHECK(vm.take(1) == std::vector<VcpuEvent>{nmis, event(Kind::SMI)});
  CHECK(vm->stats().eventsCoalesced == 8);
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::NMI)});
}

TEST_CASE("two NMIs sent before the front fetches both reach it (the 1 ms case of issue 17)",
          "[events][nmi]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  uint64_t received = 0;
  for (int round = 0; round < 4000; round++) {
    vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
    if (round % 3 != 0) vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
    for (auto& e : vm.take(1)) {
      if (e.kind == Kind::NMI) received += e.count;
    }
  }
  CHECK(received == 4000 + 4000 - 1334);
}

TEST_CASE("INIT supersedes queued INIT, SIPI, NMI and SMI events (MP protocol, KVM reset)",
          "[events][init]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  vm->deliverMsi(0xFEE01000, 0x700);  // ExtINT: a level, kept
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT), 1);
  vm.sendIcr(0, icrLow(0x11, DeliveryMode::STARTUP), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::SMI), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT), 1);
  CHECK(vm->runState(1) == RunState::WAIT_FOR_SIPI);
  CHECK(vm->peekEvents(1).size() == 2);
  // Events after the INIT queue after it; NMIs are counted again.
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  vm.sendIcr(0, icrLow(0x22, DeliveryMode::STARTUP), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::EXTINT), event(Kind::INIT),
                                             event(Kind::NMI, 0, 2), event(Kind::SIPI, 0x22)});
}

TEST_CASE("INIT withdraws a vector-deliverable event: IRR is cleared", "[events][init]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::INIT), 1);
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::INIT)});
  CHECK(vm->pendingVector(1) == nullptr);
}

TEST_CASE("the listener hears each empty -> non-empty transition once", "[events]") {
  TestVm vm(3);
  vm.enableAll();
  vm.drainAll();
  vm.listener.pending.clear();
  vm.sendIcr(0, icrLow(0x40, DeliveryMode::FIXED), 1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  vm.sendIcr(0, icrLow(0x41, DeliveryMode::FIXED), 2);
  CHECK(vm.listener.pending == std::vector<uint32_t>{1, 2});
  vm.take(1);
  vm.sendIcr(0, icrLow(0, DeliveryMode::NMI), 1);
  CHECK(vm.listener.pending == std::vector<uint32_t>{1, 2, 1});
  CHECK(vm->hasEvents(1));
  CHECK_FALSE(vm->hasEvents(0));
}

TEST_CASE("timer: a TSC deadline already past when WRMSR 0x6E0 arrives queues one TIMER_EXPIRED (SDM 11.5.4.1)",
          "[events][timer][tsc-deadline]") {
  TestVm vm(2);
  vm.enableAll();
  vm.allToX2apic();
  vm.drainAll();
  vm.write(1, Reg::LVT_TIMER, 0x40031);  // TSC-deadline mode (bits 18:17 = 10b), vector 0x31
  vm.clock.advance(1'000'000);
  uint64_t past = vm->tsc().now() - 500;
  REQUIRE(vm->msrWrite(1, kMsrTscDeadline, past).status == AccessStatus::OK);
  // The write itself collected the expiry: no onTimer() call.
  CHECK(vm.irr(1, 0x31));
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::TIMER_EXPIRED, 0, 1),
                                             event(Kind::VECTOR_DELIVERABLE, 0x31)});
  CHECK(vm->stats().timerExpiries == 1);
  CHECK(vm->stats().timerExpiries == vm->lapic(1).stats().timerExpiries);
  // The timer is disarmed after the expiry: nothing more to collect.
  CHECK(vm->onTimer(1) == 0);
  CHECK(vm.take(1).empty());
  CHECK(vm->stats().timerExpiries == 1);
}

TEST_CASE("timer: arming notifies timerChanged - expiry queues TIMER_EXPIRED and the vector",
          "[events][timer]") {
  TestVm vm(2);
  vm.enableAll();
  vm.drainAll();
  vm.listener.timers.clear();
  vm.write(1, Reg::TIMER_DIVIDE_CONFIG, 0xB);   // divide by 1
  vm.write(1, Reg::LVT_TIMER, 0x20030);         // periodic, vector 0x30
  vm.write(1, Reg::TIMER_INITIAL_COUNT, 1'000'000);  // 1 ms at 1 GHz
  CHECK(vm.listener.timers == std::vector<uint32_t>{1});
  auto deadline = vm->timerDeadlineNs(1);
  REQUIRE(deadline != nullptr);
  CHECK(vm->onTimer(1) == 0);  // not due yet
  vm.clock.advance(3'500'000);
  CHECK(vm->onTimer(1) == 3);  // three periods, coalesced into one interrupt
  CHECK(vm.listener.timers == std::vector<uint32_t>{1, 1});  // next deadline moved
  CHECK(vm.take(1) == std::vector<VcpuEvent>{event(Kind::TIMER_EXPIRED, 0, 3),
                                             event(Kind::VECTOR_DELIVERABLE, 0x30)});
  CHECK(vm->stats().timerExpiries == 3);
  // Expiries merge while the front is away.
  vm.clock.advance(1'000'000);
  vm->onTimer(1);
  vm.clock.advance(1'000'000);
  vm->onTimer(1);
  auto events = vm.take(1);
  REQUIRE(events.size() >= 1);
  CHECK(events[0] == event(Kind::TIMER_EXPIRED, 0, 2));
  // Stopping the timer notifies too.
  vm.write(1, Reg::TIMER_INITIAL_COUNT, 0);
  CHECK(vm->timerDeadlineNs(1) == nullptr);
  CHECK(vm.listener.timers.back() == 1);
  CHECK(vm.listener.timers.size() == 5);
}

TEST_CASE("queues stay within their bound under a storm, losing no kind of event",
          "[events]") {
  TestVm vm(4);
  vm.enableAll();
  vm.drainAll();
  std::mt19937 rng(12345);
  for (int step = 0; step < 20000; step++) {
    uint32_t from = rng() % 4, to = rng() % 4;
    switch (rng() % 8) {
      case 0: vm.sendIcr(from, icrLow(0, DeliveryMode::NMI), to); break;
      case 1: vm.sendIcr(from, icrLow(0, DeliveryMode::SMI), to); break;
      case 2:
        vm->deliverMsi(0xFEE00000 | (to << 12),
                       0x8000 | 0x4000 | (16 + rng() % 240));  // level-triggered fixed
        break;
      case 3:
        KJ_IF_MAYBE(v, vm->acknowledge(to)) {
          (void)v;
          vm.write(to, Reg::EOI, 0);
        }
        break;
      case 4: vm.sendIcr(from, icrLow(16 + rng() % 240, DeliveryMode::FIXED), to); break;
      case 5: vm->setLint(to, 0, rng() % 2); break;
      default:
        if (rng() % 50 == 0) vm.take(to);
        break;
    }
    for (uint32_t v = 0; v < 4; v++) {
      REQUIRE(vm->peekEvents(v).size() <= kMaxQueuedEventsPerVcpu);
    }
  }
  // Every queue's content is consistent: at most one of each singleton kind.
  for (uint32_t v = 0; v < 4; v++) {
    int counts[8] = {};
    for (auto& e : vm->peekEvents(v)) {
      if (e.kind != Kind::EOI) CHECK(++counts[unsigned(e.kind)] == 1);
    }
  }
}

}  // namespace
}  // namespace vlapic::test
