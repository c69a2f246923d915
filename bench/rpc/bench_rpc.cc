// SPDX-License-Identifier: MIT
// bench-rpc: what a LAPIC access costs through vlapicd over its Unix socket,
// next to the transport floor (a Cap'n Proto echo on the same kind of
// socket), plus pipelined throughput and event-posting throughput.
//
// Starts its own vlapicd (the real daemon, as deployed) on a private socket.
// Round trips are measured in blocks of back-to-back synchronous calls, the
// three kinds interleaved block by block so that drift in machine load hits
// them alike; figures are the median over blocks with the 10th-90th
// percentile spread.
#include "bench/common/block_options.h"
#include "bench/common/stats.h"
#include "client/lib/vlapic_client.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/xapic_addresses.h"

#include <kj/debug.h>
#include <kj/main.h>

#include <chrono>
#include <cstdio>
#include <vector>

namespace vlapic {
namespace {

using Clock = std::chrono::steady_clock;
using namespace testing;   // xapic_addresses.h

constexpr uint32_t kMsrTpr = 0x808;

using bench::Spread;
using bench::spreadOf;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void printRow(const char* name, const Spread& s, const char* unit) {
  printf("  %-34s median %8.2f %s   p10 %8.2f   p90 %8.2f   min %8.2f\n", name, s.median, unit, s.p10,
         s.p90, s.min);
}

class BenchRpc {
public:
  explicit BenchRpc(kj::ProcessContext& context): context(context) {}

  kj::MainFunc getMain() {
    kj::MainBuilder builder(context, "bench-rpc",
        "Measures vlapicd round trips (MMIO read, x2APIC MSR write) against a Cap'n Proto echo "
        "on the same Unix socket, pipelined throughput and event-posting throughput.");
    return bench::addBlockOptions(builder, counts, "Blocks per round-trip kind (default 31).",
                                  "Calls per block (default 400).")
        .callAfterParsing(KJ_BIND_METHOD(*this, run))
        .build();
  }

private:
  kj::ProcessContext& context;
  bench::BlockCounts counts{31, 400};
  uint32_t& blocks = counts.blocks;
  uint32_t& calls = counts.calls;

  kj::MainBuilder::Validity run() {
    kj::StringPtr args[] = {"--quiet"};
    testing::DaemonProcess daemon(VLAPICD_PATH, args);
    auto session = client::ThreadSession::open(daemon.socketPath());
    auto& ws = session->waitScope();
    auto& conn = session->connection();

    uint64_t eventsReceived = 0;
    // Fulfilled when a deliverable event for vCPU 2 arrives (latency probe).
    kj::Maybe<kj::Own<kj::PromiseFulfiller<void>>> deliverableWaiter;
    constexpr uint32_t kVcpus = 64;
    client::VmOptions options;
    options.vcpuCount = kVcpus;
    options.name = kj::str("bench-rpc");
    auto vm = conn.createVm(kj::mv(options), [&](kj::ArrayPtr<const client::Event> batch) {
      eventsReceived += batch.size();
      for (auto& event: batch) {
        if (event.vcpu == 2 && event.kind == client::EventKind::DELIVERABLE) {
          KJ_IF_MAYBE(waiter, deliverableWaiter) (*waiter)->fulfill();
          deliverableWaiter = nullptr;
        }
      }
    }).wait(ws);

    // vCPU 0 stays in xAPIC mode (MMIO); vCPU 1 goes to x2APIC (MSRs).
    auto xapic = vm->vcpu(0);
    auto x2apic = vm->vcpu(1);
    auto enter = x2apic->msrWrite(0x1B, 0xFEE00000 | kApicBaseEnable | kApicBaseExtd).wait(ws);
    KJ_REQUIRE(enter.status == AccessStatus::OK, "could not enter x2APIC mode");
    KJ_REQUIRE(xapic->mmioWrite(kTpr, 4, 0x10).wait(ws).status == AccessStatus::OK);

    // Warm up caches, the allocator and both processes' scheduling.
    for (uint32_t i = 0; i < 2000; i++) {
      conn.echo(i).wait(ws);
      xapic->mmioRead(kTpr, 4).wait(ws);
      x2apic->msrWrite(kMsrTpr, 0).wait(ws);
    }

    std::vector<double> echoUs, mmioUs, msrUs;
    for (uint32_t b = 0; b < blocks; b++) {
      auto start = Clock::now();
      for (uint32_t i = 0; i < calls; i++) conn.echo(i).wait(ws);
      echoUs.push_back(secondsSince(start) * 1e6 / calls);

      start = Clock::now();
      for (uint32_t i = 0; i < calls; i++) {
        auto r = xapic->mmioRead(kTpr, 4).wait(ws);
        KJ_ASSERT(r.value == 0x10);
      }
      mmioUs.push_back(secondsSince(start) * 1e6 / calls);

      start = Clock::now();
      for (uint32_t i = 0; i < calls; i++) {
        auto r = x2apic->msrWrite(kMsrTpr, i & 0xF0).wait(ws);
        KJ_ASSERT(r.status == AccessStatus::OK);
      }
      msrUs.push_back(secondsSince(start) * 1e6 / calls);
    }
    auto echo = spreadOf(echoUs);
    auto mmio = spreadOf(mmioUs);
    auto msr = spreadOf(msrUs);

    // Pipelined: many reads in flight on one connection.
    constexpr uint32_t kPipelined = 4000;
    std::vector<double> pipelinedKops;
    for (uint32_t run = 0; run < 7; run++) {
      auto start = Clock::now();
      auto promises = kj::heapArrayBuilder<kj::Promise<client::AccessOutcome>>(kPipelined);
      for (uint32_t i = 0; i < kPipelined; i++) promises.add(xapic->mmioRead(kTpr, 4));
      kj::joinPromises(promises.finish()).wait(ws);
      pipelinedKops.push_back(kPipelined / secondsSince(start) / 1e3);
    }
    auto pipelined = spreadOf(pipelinedKops);

    // Event latency: from issuing a fixed IPI (ICR write on vCPU 0) until its
    // "deliverable" event for vCPU 2 reaches our sink; then vCPU 2 takes the
    // interrupt (acknowledge, EOI) so the next IPI makes a new event.
    auto target = vm->vcpu(2);
    KJ_REQUIRE(xapic->mmioWrite(kSvr, 4, 0x1FF).wait(ws).status == AccessStatus::OK);
    KJ_REQUIRE(target->mmioWrite(kSvr, 4, 0x1FF).wait(ws).status == AccessStatus::OK);
    KJ_REQUIRE(xapic->mmioWrite(kTpr, 4, 0).wait(ws).status == AccessStatus::OK);
    KJ_REQUIRE(xapic->mmioWrite(kIcrHigh, 4, 2u << 24).wait(ws).status == AccessStatus::OK);
    std::vector<double> ipiEventUs;
    for (uint32_t i = 0; i < 301; i++) {
      auto paf = kj::newPromiseAndFulfiller<void>();
      deliverableWaiter = kj::mv(paf.fulfiller);
      auto start = Clock::now();
      auto write = xapic->mmioWrite(kIcrLow, 4, 0x40 | kIcrAssert);
      paf.promise.wait(ws);
      ipiEventUs.push_back(secondsSince(start) * 1e6);
      KJ_ASSERT(write.wait(ws).ipiSent);
      KJ_ASSERT(target->acknowledge().wait(ws).vector == uint8_t(0x40));
      target->mmioWrite(kEoi, 4, 0).wait(ws);
    }
    auto ipiEvent = spreadOf(ipiEventUs);

    // Event posting: NMI IPIs to all-excluding-self (SDM "Interrupt Command
    // Register": shorthand 11b) from vCPU 0; each reaches 63 vCPUs, each an
    // NMI event the server posts to our sink.
    constexpr uint32_t kBroadcasts = 300;
    uint32_t nmiAllButSelf = kIcrNmi | kIcrAssert | kIcrAllExcludingSelf;
    std::vector<double> eventRates;
    uint64_t totalCoalesced = 0;
    for (uint32_t run = 0; run < 5; run++) {
      auto before = vm->stats().wait(ws);
      uint64_t receivedBefore = eventsReceived;
      auto start = Clock::now();
      for (uint32_t i = 0; i < kBroadcasts; i++) {
        KJ_ASSERT(xapic->mmioWrite(kIcrLow, 4, nmiAllButSelf).wait(ws).ipiSent);
      }
      // Until everything posted has arrived.
      for (;;) {
        auto now = vm->stats().wait(ws);
        if (eventsReceived == now.eventsPosted) {
          totalCoalesced += now.eventsCoalesced - before.eventsCoalesced;
          break;
        }
      }
      eventRates.push_back((eventsReceived - receivedBefore) / secondsSince(start) / 1e3);
    }
    auto events = spreadOf(eventRates);

    double ratio = mmio.median / echo.median;
    double msrRatio = msr.median / echo.median;
    printf("bench-rpc: vlapicd over a Unix socket (%u blocks x %u calls per round-trip kind)\n",
           blocks, calls);
    printRow("echo round trip (transport floor)", echo, "us");
    printRow("xAPIC MMIO read round trip", mmio, "us");
    printRow("x2APIC MSR write round trip", msr, "us");
    printf("  %-34s %8.3fx  (MSR write %.3fx; target <= 1.10x)\n", "MMIO read vs echo", ratio, msrRatio);
    printRow("pipelined MMIO reads", pipelined, "kops/s");
    printRow("IPI issued -> event at the front", ipiEvent, "us");
    printRow("events posted to the front", events, "kev/s");
    printf("  (%u NMI broadcasts to 63 vCPUs per run; %llu events coalesced in the server)\n",
           kBroadcasts, (unsigned long long)totalCoalesced);
    printf("RESULT rpc rpc_us=%.2f echo_us=%.2f ratio_vs_echo=%.3f msr_write_us=%.2f "
           "msr_ratio_vs_echo=%.3f pipelined_kops=%.1f events_kps=%.1f ipi_event_us=%.2f\n",
           mmio.median, echo.median, ratio, msr.median, msrRatio, pipelined.median, events.median, ipiEvent.median);
    fflush(stdout);
    return true;
  }
};

}  // namespace
}  // namespace vlapic

KJ_MAIN(vlapic::BenchRpc)
