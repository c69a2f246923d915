// SPDX-License-Identifier: MIT
// bench-core: what one guest APIC access costs inside the core, the work
// every APIC exit does once it reaches vlapicd (no transport, no front).
//
//   xAPIC MMIO read    TPR, through address decoding and the register table
//   xAPIC MMIO write   TPR (updates PPR)
//   x2APIC RDMSR       TPR
//   x2APIC WRMSR       TPR
//   timer count read   TIMER_CURRENT_COUNT (computed from the clock)
//   cycle              acceptInterrupt + acknowledge + EOI write (MMIO)
//   cycle, 8 nested    eight vectors of rising priority accepted, then
//                      acknowledged and retired (the per-vector cost)
//
// Each figure is the per-operation time of a batch of kBatch operations;
// the median and p10/p90 are over kRuns batches. The clock is a ManualClock
// so the timer does not fire under the measurement. The last line is
// `RESULT core read_ns=... write_ns=... cycle_ns=...` (MMIO read, MMIO write,
// cycle).
#include "bench/common/stats.h"
#include "server/core/lapic.h"

#include <chrono>
#include <cstdio>
#include <vector>

namespace vlapic::bench {
namespace {

constexpr uint64_t kBase = 0xFEE00000;
constexpr int kBatch = 20000;
constexpr int kRuns = 101;

template <typename Op>
Spread measure(Op&& op) {
  using Clock = std::chrono::steady_clock;
  for (int i = 0; i < kBatch; ++i) op();  // warm up caches and branch predictors
  std::vector<double> perOp;
  perOp.reserve(kRuns);
  for (int run = 0; run < kRuns; ++run) {
    auto start = Clock::now();
    for (int i = 0; i < kBatch; ++i) op();
    auto elapsed = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    perOp.push_back(elapsed / kBatch);
  }
  return spreadOf(kj::mv(perOp));
}

void print(const char* what, const Spread& f) {
  printf("%-34s %8.1f ns   (p10 %6.1f, p90 %6.1f)\n", what, f.median, f.p10, f.p90);
}

// Keeps results alive so the compiler cannot drop the accesses.
volatile uint64_t sink;

void check(const AccessResult& r) {
  if (r.status != AccessStatus::OK) {
    fprintf(stderr, "bench-core: an access failed (%s)\n", accessReasonName(r.reason).cStr());
    abort();
  }
}

int run() {
  hal::ManualClock clock;
  auto hal = hal::newHostMemoryHal(clock);
  GuestTsc tsc(clock, 2'000'000'000);
  LapicConfig config;

  Lapic xapic(*hal, tsc, config, 1, false);
  check(xapic.mmioWrite(kBase + 0xF0, 4, 0x1FF));  // software enable
  Lapic x2apic(*hal, tsc, config, 2, false);
  check(x2apic.msrWrite(kMsrApicBase, kBase | kApicBaseEnable | kApicBaseExtd));
  check(x2apic.msrWrite(0x80F, 0x1FF));
  check(xapic.mmioWrite(kBase + 0x3E0, 4, 0xB));
  check(xapic.mmioWrite(kBase + 0x380, 4, 0xFFFFFFFF));  // a running count to read

  uint32_t tpr = 0;
  Spread read = measure([&] {
    AccessResult r = xapic.mmioRead(kBase + 0x80, 4);
    sink = r.value;
  });
  Spread write = measure([&] {
    AccessResult r = xapic.mmioWrite(kBase + 0x80, 4, (tpr++ & 0x7) << 4);
    sink = uint64_t(r.status);
  });
  Spread msrRead = measure([&] {
    AccessResult r = x2apic.msrRead(0x808);
    sink = r.value;
  });
  Spread msrWrite = measure([&] {
    AccessResult r = x2apic.msrWrite(0x808, (tpr++ & 0x7) << 4);
    sink = uint64_t(r.status);
  });
  Spread countRead = measure([&] {
    AccessResult r = xapic.mmioRead(kBase + 0x390, 4);
    sink = r.value;
  });
  check(xapic.mmioWrite(kBase + 0x80, 4, 0));
  check(x2apic.msrWrite(0x808, 0));

  uint8_t vector = 0x20;
  Spread cycle = measure([&] {
    xapic.acceptInterrupt(vector, TriggerMode::EDGE);
    KJ_IF_MAYBE(v, xapic.acknowledge()) { sink = *v; }
    AccessResult r = xapic.mmioWrite(kBase + 0xB0, 4, 0);
    sink = uint64_t(r.status);
    vector = vector == 0xFE ? 0x20 : vector + 1;
  });
  Spread msrCycle = measure([&] {
    x2apic.acceptInterrupt(vector, TriggerMode::EDGE);
    KJ_IF_MAYBE(v, x2apic.acknowledge()) { sink = *v; }
    AccessResult r = x2apic.msrWrite(0x80B, 0);
    sink = uint64_t(r.status);
    vector = vector == 0xFE ? 0x20 : vector + 1;
  });
  Spread nestedBatch = measure([&] {
    for (uint8_t v = 0x30; v <= 0xA0; v += 0x10) {
      xapic.acceptInterrupt(v, TriggerMode::EDGE);
      KJ_IF_MAYBE(got, xapic.acknowledge()) { sink = *got; }
    }
    for (int i = 0; i < 8; ++i) sink = uint64_t(xapic.mmioWrite(kBase + 0xB0, 4, 0).status);
  });
  Spread nested = nestedBatch.dividedBy(8);

  if (xapic.pendingVector() != nullptr || xapic.ppr() != 0) {
    fprintf(stderr, "bench-core: the cycle left state behind\n");
    return 1;
  }

  printf("bench-core: LAPIC core, in process, %d batches of %d operations\n", kRuns, kBatch);
  print("xAPIC MMIO read (TPR)", read);
  print("xAPIC MMIO write (TPR)", write);
  print("x2APIC RDMSR (TPR)", msrRead);
  print("x2APIC WRMSR (TPR)", msrWrite);
  print("timer current count read", countRead);
  print("accept+acknowledge+EOI (MMIO)", cycle);
  print("accept+acknowledge+EOI (x2APIC)", msrCycle);
  print("same, 8 nested, per vector", nested);
  printf("RESULT core read_ns=%.1f write_ns=%.1f cycle_ns=%.1f msr_read_ns=%.1f "
         "msr_write_ns=%.1f msr_cycle_ns=%.1f\n",
         read.median, write.median, cycle.median, msrRead.median, msrWrite.median,
         msrCycle.median);
  return 0;
}

}  // namespace
}  // namespace vlapic::bench

int main() { return vlapic::bench::run(); }
