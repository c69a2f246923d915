// SPDX-License-Identifier: MIT
// bench-capi: is the C API free on the hot path? A C front (c_front_loop.c,
// compiled as C, the public vlapic.h only) and a C++ front (the channel
// front the C API wraps, called directly) each make synchronous xAPIC MMIO
// reads over their own vCPU's shared-memory channel to the same real
// vlapicd. Blocks of the two alternate, one front at a time, so machine
// load hits both alike; the figure is the ratio of the medians (goal: the
// C front within 5% of the C++ one), with the 10th-90th percentile spread.
#include "bench/capi/c_front_loop.h"
#include "bench/common/block_options.h"
#include "bench/common/stats.h"
#include "client/lib/vlapic_client.h"
#include "schema/channel/channel.h"
#include "tests/integration/daemon_process.h"

#include <kj/debug.h>
#include <kj/main.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

namespace vlapic {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kTprGpa = 0xFEE00080;

// Lets two threads take turns: each waits for its turn, runs a block, and
// hands the turn over.
class TurnTaking {
public:
  void waitFor(int who) {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait(lock, [&]() { return turn == who; });
  }
  void handTo(int who) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      turn = who;
    }
    changed.notify_all();
  }

private:
  std::mutex mutex;
  std::condition_variable changed;
  int turn = 0;
};

void printRow(const char* name, const bench::Spread& s) {
  printf("  %-30s median %7.2f us   p10 %7.2f   p90 %7.2f   min %7.2f\n", name, s.median, s.p10, s.p90,
         s.min);
}

class BenchCapi {
public:
  explicit BenchCapi(kj::ProcessContext& context): context(context) {}

  kj::MainFunc getMain() {
    kj::MainBuilder builder(context, "bench-capi",
        "Measures an MMIO read over the shared-memory channel made through the C API (from C) "
        "against the same read by a C++ front on the channel front, blocks interleaved.");
    return bench::addBlockOptions(builder, counts, "Blocks per front (default 21).",
                                  "Reads per block (default 20000).")
        .callAfterParsing(KJ_BIND_METHOD(*this, run))
        .build();
  }

private:
  kj::ProcessContext& context;
  // Long blocks: a channel server thread spins a while after its last
  // request, so the idle front's tail overlaps the start of the next block.
  bench::BlockCounts counts{21, 20000};
  uint32_t& blocks = counts.blocks;
  uint32_t& calls = counts.calls;

  kj::MainBuilder::Validity run() {
    kj::StringPtr args[] = {"--quiet"};
    testing::DaemonProcess daemon(VLAPICD_PATH, args);
    TurnTaking turns;
    std::vector<double> cUs, cppUs;
    kj::Maybe<kj::Exception> cFailure, cppFailure;
    // Warm-up blocks (the first of each front) are not counted.
    uint32_t rounds = blocks + 1;

    std::thread cFront([&]() {
      turns.waitFor(0);
      KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
        vlapic_client* client = nullptr;
        KJ_REQUIRE(vlapic_connect(daemon.socketPath().cStr(), &client) == VLAPIC_OK, vlapic_last_error());
        struct vlapic_vm_config config;
        vlapic_vm_config_init(&config);
        vlapic_vm* vm = nullptr;
        KJ_REQUIRE(vlapic_vm_create(client, &config, &vm) == VLAPIC_OK, vlapic_last_error());
        vlapic_vcpu* vcpu = nullptr;
        KJ_REQUIRE(vlapic_vcpu_open(vm, 0, &vcpu) == VLAPIC_OK, vlapic_last_error());
        for (uint32_t round = 0; round < rounds; ++round) {
          if (round > 0) turns.waitFor(0);
          auto start = Clock::now();
          int rc = cFrontMmioReads(vcpu, kTprGpa, calls);
          double us = std::chrono::duration<double, std::micro>(Clock::now() - start).count() / calls;
          turns.handTo(1);
          KJ_REQUIRE(rc == 0, "a C front read failed", vlapic_last_error());
          if (round > 0) cUs.push_back(us);
        }
        vlapic_vcpu_close(vcpu);
        vlapic_vm_destroy(vm);
        vlapic_disconnect(client);
      })) {
        cFailure = kj::mv(*e);
        turns.handTo(1);
      }
    });

    std::thread cppFront([&]() {
      KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
        auto session = client::ThreadSession::open(daemon.socketPath());
        auto& ws = session->waitScope();
        client::VmOptions options;
        options.name = kj::str("bench-capi-cpp");
        auto vm = session->connection().createVm(kj::mv(options), [](auto) {}).wait(ws);
        auto vcpu = vm->vcpu(0);
        auto front = channel::ChannelFront::connect(vcpu->openChannel().wait(ws));
        auto read = channel::Request::mmioRead(kTprGpa, 4);
        turns.handTo(0);
        for (uint32_t round = 0; round < rounds; ++round) {
          turns.waitFor(1);
          KJ_IF_MAYBE(other, cFailure) { (void)other; return; }
          auto start = Clock::now();
          bool ok = true;
          for (uint32_t i = 0; i < calls; ++i) {
            channel::Reply reply = front->call(read);
            ok = ok && reply.kind != channel::Reply::Kind::REJECTED;
          }
          double us = std::chrono::duration<double, std::micro>(Clock::now() - start).count() / calls;
          turns.handTo(0);
          KJ_REQUIRE(ok, "a C++ front read was rejected");
          if (round > 0) cppUs.push_back(us);
        }
      })) {
        cppFailure = kj::mv(*e);
        turns.handTo(0);
      }
    });
    cFront.join();
    cppFront.join();
    KJ_IF_MAYBE(e, cFailure) return kj::str("C front: ", e->getDescription());
    KJ_IF_MAYBE(e, cppFailure) return kj::str("C++ front: ", e->getDescription());

    auto c = bench::spreadOf(cUs), cpp = bench::spreadOf(cppUs);
    printf("bench-capi: %u interleaved blocks of %u synchronous MMIO reads per front, one vCPU each, "
           "over the shared-memory channel to one vlapicd\n", blocks, calls);
    printRow("C front (vlapic.h, from C)", c);
    printRow("C++ front (ChannelFront)", cpp);
    double ratio = c.median / cpp.median;
    // The per-block ratio too: how much the pairing itself moves.
    std::vector<double> pairRatios;
    for (size_t i = 0; i < cUs.size() && i < cppUs.size(); ++i) pairRatios.push_back(cUs[i] / cppUs[i]);
    auto pairs = bench::spreadOf(pairRatios);
    printf("  C / C++ median ratio %.3f; per block pair: median %.3f p10 %.3f p90 %.3f\n", ratio,
           pairs.median, pairs.p10, pairs.p90);
    printf("RESULT capi c_front_us=%.3f cpp_front_us=%.3f c_p10_us=%.3f c_p90_us=%.3f cpp_p10_us=%.3f "
           "cpp_p90_us=%.3f ratio=%.3f pair_ratio_p10=%.3f pair_ratio_p90=%.3f blocks=%u calls=%u goal_5pct=%s\n",
           c.median, cpp.median, c.p10, c.p90, cpp.p10, cpp.p90, ratio, pairs.p10, pairs.p90, blocks, calls,
           ratio <= 1.05 ? "met" : "missed");
    fflush(stdout);  // KJ_MAIN ends the process without flushing stdio
    return true;
  }
};

}  // namespace
}  // namespace vlapic

KJ_MAIN(vlapic::BenchCapi)
