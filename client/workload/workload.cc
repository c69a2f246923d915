// SPDX-License-Identifier: MIT
// vlapic-workload: the main job's client-side workload. It connects to a
// running vlapicd, creates a 4-vCPU VM and drives it the way a guest OS
// would through its front: SMP start-up by INIT-SIPI-SIPI, fixed, logical
// and broadcast IPIs, NMI, an I/O APIC level-triggered interrupt with its EOI
// broadcast, an MSI, and one-shot, periodic and TSC-deadline timers whose
// expiries vlapicd posts back on its own. Every step is checked; the report
// says what happened and how long the server took. Exit status 0 only if
// every check held.
//
// Usage: vlapic-workload SOCKET [--keep SECONDS]
//   --keep: keep the VM alive that long after the report (so vlapicctl can
//   dump it), printing "VM <id> ready" first.

#include "client/lib/vlapic_client.h"

#include <kj/debug.h>
#include <kj/main.h>
#include <kj/mutex.h>
#include <kj/vector.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

namespace vlapic::workload {
namespace {

using client::Event;
using client::EventKind;

constexpr uint64_t kBase = 0xFEE00000;
constexpr uint64_t kIcrLow = kBase + 0x300, kIcrHigh = kBase + 0x310;
constexpr uint64_t kSvr = kBase + 0xF0, kEoi = kBase + 0xB0, kLdr = kBase + 0xD0;
constexpr uint64_t kLvtTimer = kBase + 0x320, kTimerInit = kBase + 0x380;
constexpr uint64_t kTimerDivide = kBase + 0x3E0;

uint64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct StampedEvent {
  Event event;
  uint64_t receivedNs;
};

// Events arrive on the client thread; the workload thread waits for them.
class EventLog {
public:
  void push(kj::ArrayPtr<const Event> batch) {
    auto lock = events.lockExclusive();
    uint64_t now = nowNs();
    for (auto& e : batch) lock->add(StampedEvent{e, now});
  }

  // Waits up to `timeoutMs` for an event on `vcpu` of `kind` (and vector, if
  // given) and removes it from the log.
  kj::Maybe<StampedEvent> take(uint32_t vcpu, EventKind kind, int vector = -1,
                               uint32_t timeoutMs = 2000) {
    auto matches = [&](const StampedEvent& s) {
      return s.event.vcpu == vcpu && s.event.kind == kind &&
             (vector < 0 || s.event.vector == vector);
    };
    auto deadline = nowNs() + uint64_t(timeoutMs) * 1'000'000;
    for (;;) {
      {
        auto lock = events.lockExclusive();
        for (size_t i = 0; i < lock->size(); i++) {
          if (matches((*lock)[i])) {
            StampedEvent found = (*lock)[i];
            kj::Vector<StampedEvent> rest;
            for (size_t j = 0; j < lock->size(); j++) if (j != i) rest.add((*lock)[j]);
            *lock = kj::mv(rest);
            return found;
          }
        }
      }
      if (nowNs() > deadline) return nullptr;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  size_t count(uint32_t vcpu, EventKind kind) {
    auto lock = events.lockExclusive();
    size_t n = 0;
    for (auto& s : *lock) n += s.event.vcpu == vcpu && s.event.kind == kind;
    return n;
  }

private:
  kj::MutexGuarded<kj::Vector<StampedEvent>> events;
};

class Workload {
public:
  explicit Workload(kj::StringPtr socketPath) : socketPath(socketPath) {}

  int run(uint32_t keepSeconds) {
    auto client = client::Client::connect(socketPath);
    client::VmOptions options;
    options.vcpuCount = 4;
    options.apicIds = kj::heapArray<uint32_t>({0, 2, 4, 6});  // IDs are not indices
    options.name = kj::str("main-job workload");
    options.tscHz = 1'000'000'000;  // guest TSC ticks in ns: deadlines are easy to read
    auto vm = client->createVm(kj::mv(options),
                               [this](kj::ArrayPtr<const Event> batch) { log.push(batch); });
    auto session = client::ThreadSession::open(socketPath);
    kj::Vector<kj::Own<client::VcpuHandle>> cpus;
    for (uint32_t i = 0; i < vm->vcpuCount(); i++) cpus.add(session->attachVcpu(vm->ticket(i)));
    auto info = vm->info();
    printf("vlapic workload: VM %llu with %u vCPUs (APIC IDs 0, 2, 4, 6) on %s\n",
           (unsigned long long)info.id, vm->vcpuCount(), socketPath.cStr());

    step("BSP enables its APIC (SVR = 0x1FF)", [&]() {
      write(*cpus[0], kSvr, 0x1FF);
      return read(*cpus[0], kSvr) == 0x1FF;
    });

    step("APs wait for SIPI after power-on", [&]() {
      for (uint32_t i = 1; i < 4; i++)
        if (cpus[i]->interruptState().runState != client::RunState::WAIT_FOR_SIPI) return false;
      return true;
    });

    step("INIT IPI to all excluding self reaches the three APs", [&]() {
      write(*cpus[0], kIcrLow, 0x000C4500);  // INIT, level assert, all-excluding-self
      for (uint32_t i = 1; i < 4; i++)
        if (log.take(i, EventKind::INIT) == nullptr) return false;
      return log.count(0, EventKind::INIT) == 0;
    });

    step("SIPI (vector 0x9A) starts every AP at 9A00:0000; the second SIPI is dropped", [&]() {
      write(*cpus[0], kIcrLow, 0x000C469A);
      bool ok = true;
      for (uint32_t i = 1; i < 4; i++) {
        KJ_IF_MAYBE(e, log.take(i, EventKind::SIPI)) {
          ok = ok && e->event.vector == 0x9A;
        } else {
          ok = false;
        }
      }
      write(*cpus[0], kIcrLow, 0x000C469A);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      for (uint32_t i = 1; i < 4; i++) {
        ok = ok && log.count(i, EventKind::SIPI) == 0;
        ok = ok && cpus[i]->interruptState().runState == client::RunState::RUNNING;
      }
      return ok;
    });

    step("APs enable their APICs and take logical IDs (flat model)", [&]() {
      for (uint32_t i = 1; i < 4; i++) {
        write(*cpus[i], kSvr, 0x1FF);
        write(*cpus[i], kLdr, uint32_t(1u << (i + 24)));  // logical bit i
      }
      return read(*cpus[3], kLdr) == 0x08000000;
    });

    step("fixed IPI 0x40 from the BSP to APIC ID 4 (vCPU 2): inject, EOI", [&]() {
      uint64_t sent = nowNs();
      write(*cpus[0], kIcrHigh, uint32_t(4) << 24);
      write(*cpus[0], kIcrLow, 0x00004040);
      KJ_IF_MAYBE(e, log.take(2, EventKind::DELIVERABLE, 0x40)) {
        ipiLatencyUs = double(e->receivedNs - sent) / 1000.0;
      } else {
        return false;
      }
      return (ackAndEoi(*cpus[2], 0x40) != nullptr) && read(*cpus[0], kIcrLow) == 0x00004040;  // delivery status 0
    });

    step("logical multicast 0x41 to vCPUs 1 and 3 (mask 0x0A)", [&]() {
      write(*cpus[0], kIcrHigh, 0x0A000000);
      write(*cpus[0], kIcrLow, 0x00004841);  // logical destination mode
      bool ok = log.take(1, EventKind::DELIVERABLE, 0x41) != nullptr &&
                log.take(3, EventKind::DELIVERABLE, 0x41) != nullptr;
      ok = ok && (ackAndEoi(*cpus[1], 0x41) != nullptr) && (ackAndEoi(*cpus[3], 0x41) != nullptr);
      return ok && log.count(2, EventKind::DELIVERABLE) == 0;
    });

    step("NMI to all including self arrives on every vCPU", [&]() {
      write(*cpus[0], kIcrLow, 0x00084400);
      for (uint32_t i = 0; i < 4; i++)
        if (log.take(i, EventKind::NMI) == nullptr) return false;
      return true;
    });

    step("nested interrupts: 0x60 preempts 0x30, EOIs retire 0x60 first", [&]() {
      write(*cpus[1], kIcrHigh, 0);
      write(*cpus[1], kIcrLow, 0x00044030);  // self IPI 0x30
      auto first = cpus[1]->acknowledge();
      write(*cpus[1], kIcrLow, 0x00044060);  // self IPI 0x60 while 0x30 in service
      auto second = cpus[1]->acknowledge();
      bool ok = first.vector == uint8_t(0x30) && second.vector == uint8_t(0x60);
      ok = ok && cpus[1]->interruptState().ppr == 0x60;
      write(*cpus[1], kEoi, 0);
      ok = ok && cpus[1]->interruptState().ppr == 0x30;
      write(*cpus[1], kEoi, 0);
      return ok && cpus[1]->interruptState().ppr == 0x00;
    });

    step("I/O APIC level-triggered entry (vector 0x70 to APIC ID 6): EOI is broadcast", [&]() {
      uint64_t rte = 0x70 | (1u << 15) | (uint64_t(6) << 56);  // fixed, level, physical
      vm->deliverIoApic(rte);
      if (log.take(3, EventKind::DELIVERABLE, 0x70) == nullptr) return false;
      if (ackAndEoi(*cpus[3], 0x70) == nullptr) return false;
      return log.take(3, EventKind::EOI, 0x70) != nullptr;
    });

    step("MSI (address 0xFEE04000 -> APIC ID 4, vector 0x55) is delivered", [&]() {
      vm->deliverMsi(client::MsiMessage{0xFEE04000, 0x55});
      return log.take(2, EventKind::DELIVERABLE, 0x55) != nullptr && (ackAndEoi(*cpus[2], 0x55) != nullptr);
    });

    step("one-shot timer, 2 ms at divide 1: vlapicd posts the expiry itself", [&]() {
      write(*cpus[1], kTimerDivide, 0xB);  // divide by 1
      write(*cpus[1], kLvtTimer, 0x50);    // one-shot, vector 0x50
      uint64_t armed = nowNs();
      write(*cpus[1], kTimerInit, 2'000'000);
      KJ_IF_MAYBE(e, log.take(1, EventKind::DELIVERABLE, 0x50, 1000)) {
        oneShotLatenessUs = (double(e->receivedNs - armed) - 2e6) / 1000.0;
        return oneShotLatenessUs >= 0 && (ackAndEoi(*cpus[1], 0x50) != nullptr);
      }
      return false;
    });

    step("periodic timer, 1 ms period: 20 expiries posted by vlapicd, every injection EOIed", [&]() {
      write(*cpus[2], kTimerDivide, 0xB);
      write(*cpus[2], kLvtTimer, 0x20051);  // periodic, vector 0x51
      uint64_t start = nowNs();
      write(*cpus[2], kTimerInit, 1'000'000);
      // Like a front at each interrupt window: inject whatever is
      // deliverable. Expiries that land while 0x51 is still pending merge in
      // IRR, as on hardware; the TIMER events count every expiry.
      uint32_t expiries = 0, injected = 0;
      while (expiries < 20 && nowNs() - start < 2'000'000'000) {
        KJ_IF_MAYBE(tick, log.take(2, EventKind::TIMER, -1, 5)) expiries += tick->event.count;
        for (;;) {
          auto ack = cpus[2]->acknowledge();
          KJ_IF_MAYBE(vector, ack.vector) {
            if (*vector != 0x51) return false;
            injected++;
            write(*cpus[2], kEoi, 0);
          } else {
            break;
          }
        }
      }
      periodicElapsedMs = double(nowNs() - start) / 1e6;
      periodicInjected = injected;
      write(*cpus[2], kTimerInit, 0);  // stop
      if (expiries < 20 || injected == 0) return false;
      // Events travel on their own (flow-controlled) path and can trail the
      // injections: once the timer is stopped, every expiry that was
      // injected must have been reported.
      for (;;) {
        auto tick = log.take(2, EventKind::TIMER, -1, 200);
        KJ_IF_MAYBE(t, tick) { expiries += t->event.count; } else { break; }
      }
      return injected <= expiries;
    });

    step("vCPU 3 enters x2APIC mode: 32-bit ID 6, derived LDR", [&]() {
      auto base = cpus[3]->msrRead(0x1B).value;
      if (cpus[3]->msrWrite(0x1B, base | (1u << 10)).status != AccessStatus::OK) return false;
      // SDM "x2APIC Register Address Space"; LDR = cluster 0, bit (6 & 0xF).
      return cpus[3]->msrRead(0x802).value == 6 && cpus[3]->msrRead(0x80D).value == 0x40;
    });

    step("TSC-deadline timer 3 ms ahead fires; a deadline in the past fires at once", [&]() {
      uint64_t tscNow = vm->save().tscAtSave;  // 1 GHz guest TSC (VM option)
      cpus[3]->msrWrite(0x832, 0x40052);       // TSC-deadline mode, vector 0x52
      uint64_t armed = nowNs();
      cpus[3]->msrWrite(0x6E0, tscNow + 3'000'000);
      auto e = log.take(3, EventKind::DELIVERABLE, 0x52, 1000);
      if (e == nullptr) return false;
      tscDeadlineAfterMs = double(KJ_ASSERT_NONNULL(e).receivedNs - armed) / 1e6;
      if (ackAndEoi(*cpus[3], 0x52) == nullptr) return false;
      auto past = cpus[3]->msrWrite(0x6E0, 1);
      // The interrupt is pending when the WRMSR returns (lapic-facts.md).
      return past.pendingVector == uint8_t(0x52) && (ackAndEoi(*cpus[3], 0x52) != nullptr) &&
             cpus[3]->msrRead(0x6E0).value == 0;
    });

    step("x2APIC reserved bits and absent registers raise #GP", [&]() {
      return cpus[3]->msrRead(0x809).status == AccessStatus::GP &&      // APR absent
             cpus[3]->msrWrite(0x83F, 0x1FF).status == AccessStatus::GP &&  // SELF IPI 31:8
             cpus[3]->msrWrite(0x80B, 1).status == AccessStatus::GP &&   // non-zero EOI
             cpus[0]->msrRead(0x802).status == AccessStatus::GP;         // xAPIC vCPU
    });

    printf("\n%u of %u checks passed\n", passed, passed + failed);
    printf("fixed IPI: BSP's ICR write to event at the front: %.1f us\n", ipiLatencyUs);
    printf("one-shot timer lateness seen by the front: %.1f us\n", oneShotLatenessUs);
    printf("periodic timer (1 ms): 20 expiry reports reached the front after %.2f ms; %u injections\n",
           periodicElapsedMs, periodicInjected);
    printf("TSC-deadline timer armed 3 ms ahead (minus the save round trip) fired after %.2f ms\n", tscDeadlineAfterMs);

    auto stats = vm->stats();
    printf("server stats: %llu events posted in %llu batches, %llu timer expiries\n",
           (unsigned long long)stats.eventsPosted, (unsigned long long)stats.batchesPosted,
           (unsigned long long)stats.timerExpiries);
    if (keepSeconds > 0) {
      printf("VM %llu ready\n", (unsigned long long)info.id);
      fflush(stdout);
      std::this_thread::sleep_for(std::chrono::seconds(keepSeconds));
    }
    return failed == 0 ? 0 : 1;
  }

private:
  kj::StringPtr socketPath;
  EventLog log;
  uint32_t passed = 0, failed = 0;
  double ipiLatencyUs = 0, oneShotLatenessUs = 0, periodicElapsedMs = 0, tscDeadlineAfterMs = 0;
  uint32_t periodicInjected = 0;

  template <typename Func>
  void step(const char* what, Func&& check) {
    bool ok = false;
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { ok = check(); })) {
      printf("FAIL  %s: %s\n", what, e->getDescription().cStr());
      failed++;
      return;
    }
    printf("%s  %s\n", ok ? "ok  " : "FAIL", what);
    (ok ? passed : failed)++;
  }

  static void write(client::VcpuHandle& cpu, uint64_t gpa, uint32_t value) {
    auto r = cpu.mmioWrite(gpa, 4, value);
    KJ_REQUIRE(r.status == AccessStatus::OK, "MMIO write not accepted", gpa, accessReasonName(r.reason));
  }
  static uint32_t read(client::VcpuHandle& cpu, uint64_t gpa) {
    auto r = cpu.mmioRead(gpa, 4);
    KJ_REQUIRE(r.status == AccessStatus::OK, "MMIO read not accepted", gpa, accessReasonName(r.reason));
    return uint32_t(r.value);
  }
  // The front injects: acknowledge, then the guest's handler writes EOI.
  // Returns the EOI's outcome (its pendingVector says what to inject next),
  // or nullptr if `vector` was not the one to inject.
  static kj::Maybe<client::AccessOutcome> ackAndEoi(client::VcpuHandle& cpu, uint8_t vector) {
    auto ack = cpu.acknowledge();
    if (ack.vector != vector) return nullptr;
    if (ack.state.apicMode == ApicMode::X2APIC) return cpu.msrWrite(0x80B, 0);
    auto r = cpu.mmioWrite(kEoi, 4, 0);
    KJ_REQUIRE(r.status == AccessStatus::OK, "EOI write not accepted");
    return kj::mv(r);
  }
};

}  // namespace
}  // namespace vlapic::workload

int main(int argc, char* argv[]) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s SOCKET [--keep SECONDS]\n", argv[0]);
    return 2;
  }
  uint32_t keep = 0;
  if (argc >= 4 && kj::StringPtr(argv[2]) == "--keep") keep = atoi(argv[3]);
  int status = 1;
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    status = vlapic::workload::Workload(argv[1]).run(keep);
  })) {
    fprintf(stderr, "vlapic-workload: %s\n", e->getDescription().cStr());
    return 1;
  }
  return status;
}
