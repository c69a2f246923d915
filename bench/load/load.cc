// SPDX-License-Identifier: MIT
// bench-load: many fronts hammering one vlapicd at once, for a bounded time.
//
// It starts the real vlapicd (confined, as deployed) on a private socket and
// runs FRONTS front threads, each with its own control connection and VM of
// VCPUS vCPUs and its own per-thread connection for the vCPU hot path. Every
// front loops over its vCPUs doing what a guest's exits do: MMIO reads and
// writes, a fixed IPI to the next vCPU through the ICR (routed by the server
// before the write returns), and acknowledge + EOI of everything pending on
// the target, while every vCPU also runs a 10 ms periodic LAPIC timer whose
// expiries the server posts as events. Every 20 s each front releases its VM
// and creates a new one. One more front runs in a child process and is
// killed with SIGKILL half-way through: its VM must be released while the
// others keep running.
//
// Checked: no error, no lost IPI (every IPI sent is acknowledged on its
// target), the killed front's VM released, and after all fronts are gone no
// VM, vCPU, page or armed timer left. Printed: throughput, access latency
// (median and p99 of samples), events, and vlapicd's resident memory over
// time (flat memory: growth after warm-up). Exit status 1 if a check fails.
//
// Usage: bench-load [--fronts N] [--vcpus N] [--seconds N]
//                   [--socket PATH --server-pid PID]
//   --socket/--server-pid: load an already running vlapicd instead of
//   starting one (e.g. under valgrind, or an ASan build whose
//   LeakSanitizer report at exit is the point of the run).
#include "bench/common/stats.h"
#include "client/lib/vlapic_client.h"
#include "tests/integration/daemon_process.h"

#include <kj/debug.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace vlapic::load {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kBase = 0xFEE00000;
constexpr uint64_t kId = kBase + 0x20, kTpr = kBase + 0x80, kEoi = kBase + 0xB0;
constexpr uint64_t kSvr = kBase + 0xF0, kIcrLow = kBase + 0x300, kIcrHigh = kBase + 0x310;
constexpr uint64_t kLvtTimer = kBase + 0x320, kTimerInit = kBase + 0x380;
constexpr uint64_t kTimerDivide = kBase + 0x3E0;
constexpr uint8_t kTimerVector = 0x20;       // lowest class: IPIs always win
constexpr uint8_t kFirstIpiVector = 0x50;    // 0x50-0x6F
constexpr uint32_t kTimerPeriodTicks = 10'000'000;  // 10 ms at the default 1 GHz
constexpr auto kVmLifetime = std::chrono::seconds(20);

struct Totals {
  std::atomic<uint64_t> accesses{0}, ipisSent{0}, ipisAcknowledged{0}, timerAcks{0};
  std::atomic<uint64_t> timerEvents{0}, timerExpiries{0}, deliverableEvents{0}, otherEvents{0};
  std::atomic<uint64_t> errors{0}, vmsCreated{0};
};

struct Sampler {
  std::vector<double> samples;  // microseconds
  void add(Clock::time_point start) {
    samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
};

void check(bool condition, Totals& totals, const char* what) {
  if (!condition) {
    if (totals.errors.fetch_add(1) < 10) fprintf(stderr, "bench-load: check failed: %s\n", what);
  }
}

// One front: a control connection with one VM, and this thread's own
// connection driving all of the VM's vCPUs.
class Front {
public:
  Front(kj::StringPtr socket, uint32_t vcpuCount, Totals& totals, kj::StringPtr name)
      : socket(socket), vcpuCount(vcpuCount), totals(totals), name(name) {}

  void run(Clock::time_point end, Sampler& sampler) {
    auto client = client::Client::connect(socket);
    while (Clock::now() < end) {
      auto lifetimeEnd = std::min(end, Clock::now() + kVmLifetime);
      runOneVm(*client, lifetimeEnd, sampler);
    }
  }

private:
  kj::StringPtr socket;
  uint32_t vcpuCount;
  Totals& totals;
  kj::StringPtr name;

  void runOneVm(client::Client& client, Clock::time_point end, Sampler& sampler) {
    client::VmOptions options;
    options.vcpuCount = vcpuCount;
    options.name = kj::str(name);
    Totals& t = totals;
    auto vm = client.createVm(kj::mv(options), [&t](kj::ArrayPtr<const client::Event> events) {
      for (auto& event : events) {
        switch (event.kind) {
          case client::EventKind::TIMER:
            t.timerEvents.fetch_add(1, std::memory_order_relaxed);
            t.timerExpiries.fetch_add(event.count, std::memory_order_relaxed);
            break;
          case client::EventKind::DELIVERABLE:
            t.deliverableEvents.fetch_add(1, std::memory_order_relaxed);
            break;
          default: t.otherEvents.fetch_add(1, std::memory_order_relaxed); break;
        }
      }
    });
    totals.vmsCreated.fetch_add(1);
    auto session = client::ThreadSession::open(socket);
    kj::Vector<kj::Own<client::VcpuHandle>> vcpus;
    for (uint32_t i = 0; i < vcpuCount; ++i) vcpus.add(session->attachVcpu(vm->ticket(i)));

    // Software-enable every LAPIC and start its periodic timer.
    for (auto& vcpu : vcpus) {
      check(vcpu->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK, totals, "SVR write");
      vcpu->mmioWrite(kTimerDivide, 4, 0xB);  // divide by 1
      vcpu->mmioWrite(kLvtTimer, 4, (1u << 17) | kTimerVector);
      vcpu->mmioWrite(kTimerInit, 4, kTimerPeriodTicks);
      totals.accesses.fetch_add(4, std::memory_order_relaxed);
    }

    uint64_t step = 0;
    while (Clock::now() < end) {
      for (uint32_t i = 0; i < vcpuCount; ++i, ++step) {
        auto& vcpu = *vcpus[i];
        bool sample = (step & 15) == 0;
        auto start = Clock::now();
        auto id = vcpu.mmioRead(kId, 4);
        if (sample) sampler.add(start);
        check(id.status == AccessStatus::OK && (id.value >> 24) == i, totals, "ID read");
        check(vcpu.mmioWrite(kTpr, 4, 0).status == AccessStatus::OK, totals, "TPR write");

        // A fixed IPI to the next vCPU, then that vCPU takes everything
        // pending: the IPI's vector must be among it, exactly once.
        uint32_t target = (i + 1) % vcpuCount;
        uint8_t vector = kFirstIpiVector + step % 32;
        vcpu.mmioWrite(kIcrHigh, 4, uint64_t(target) << 24);
        auto sent = vcpu.mmioWrite(kIcrLow, 4, vector);
        check(sent.status == AccessStatus::OK && sent.ipiSent, totals, "ICR write sent no IPI");
        totals.ipisSent.fetch_add(1, std::memory_order_relaxed);
        totals.accesses.fetch_add(4, std::memory_order_relaxed);
        drain(*vcpus[target], vector);
      }
    }
    // Dropping the handles and the VM releases it in the server.
  }

  void drain(client::VcpuHandle& vcpu, uint8_t expected) {
    bool seen = false;
    for (int i = 0; i < 8; ++i) {
      auto taken = vcpu.acknowledge();
      KJ_IF_MAYBE(vector, taken.vector) {
        if (*vector == expected) {
          check(!seen, totals, "IPI vector acknowledged twice");
          seen = true;
          totals.ipisAcknowledged.fetch_add(1, std::memory_order_relaxed);
        } else if (*vector == kTimerVector) {
          totals.timerAcks.fetch_add(1, std::memory_order_relaxed);
        } else {
          check(false, totals, "unexpected vector acknowledged");
        }
        vcpu.mmioWrite(kEoi, 4, 0);
        totals.accesses.fetch_add(2, std::memory_order_relaxed);
      } else {
        totals.accesses.fetch_add(1, std::memory_order_relaxed);
        break;
      }
    }
    check(seen, totals, "IPI lost: not pending on its target");
  }
};

uint64_t residentKb(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

// A front in its own process, killed mid-run: hammers until SIGKILL.
pid_t startDoomedFront(kj::StringPtr socket, uint32_t vcpus) {
  pid_t child = fork();
  KJ_SYSCALL(child);
  if (child == 0) {
    Totals ignored;
    Sampler sampler;
    Front front(socket, vcpus, ignored, "doomed");
    front.run(Clock::now() + std::chrono::hours(1), sampler);
    _exit(0);
  }
  return child;
}

int run(uint32_t fronts, uint32_t vcpus, uint32_t seconds, kj::Maybe<kj::StringPtr> external,
        pid_t externalPid) {
  kj::Maybe<testing::DaemonProcess> daemon;
  kj::StringPtr socket;
  pid_t server;
  KJ_IF_MAYBE(path, external) {
    socket = *path;
    server = externalPid;
  } else {
    auto& started = daemon.emplace(VLAPICD_PATH);
    socket = started.socketPath();
    server = started.pid();
  }
  // Forked before this process has any thread.
  pid_t doomed = startDoomedFront(socket, vcpus);
  // Server-wide views are the operator's: its socket beside the front one.
  auto monitor = client::Client::connect(client::adminSocketPathFor(socket));
  auto doomedVmExists = [&]() {
    for (auto& vm : monitor->listVms()) {
      if (vm.name == "doomed") return true;
    }
    return false;
  };

  Totals totals;
  auto start = Clock::now();
  auto end = start + std::chrono::seconds(seconds);
  std::vector<Sampler> samplers(fronts);
  std::vector<std::thread> threads;
  for (uint32_t f = 0; f < fronts; ++f) {
    threads.emplace_back([&, f]() {
      try {
        auto name = kj::str("load-", f);
        Front(socket, vcpus, totals, name).run(end, samplers[f]);
      } catch (const kj::Exception& e) {
        totals.errors.fetch_add(1);
        fprintf(stderr, "bench-load: front %u: %s\n", f, e.getDescription().cStr());
      }
    });
  }

  // Watch the server: memory once a second; kill the doomed front half-way.
  std::vector<uint64_t> rss;
  bool killed = false, doomedReleased = false;
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    rss.push_back(residentKb(server));
    if (!killed && Clock::now() > start + std::chrono::seconds(seconds / 2)) {
      bool existed = doomedVmExists();
      kill(doomed, SIGKILL);
      waitpid(doomed, nullptr, 0);
      killed = true;
      // Its VM goes within a moment; the other fronts do not notice.
      for (int i = 0; i < 200 && !doomedReleased; ++i) {
        doomedReleased = existed && !doomedVmExists();
        if (!doomedReleased) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }
  for (auto& thread : threads) thread.join();
  double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  if (!killed) {
    kill(doomed, SIGKILL);
    waitpid(doomed, nullptr, 0);
  }

  // Everyone is gone: nothing may be left.
  client::ServerStatus after;
  for (int i = 0; i < 200; ++i) {
    after = monitor->status();
    if (after.vms == 0 && after.connections <= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  bool released = after.vms == 0 && after.vcpus == 0 && after.armedTimers == 0 &&
                  after.pagesInUse <= 1;  // the server's one APIC-access page

  std::vector<double> latencies;
  for (auto& s : samplers) latencies.insert(latencies.end(), s.samples.begin(), s.samples.end());
  bench::Samples latencySamples(kj::mv(latencies));
  double medianUs = latencySamples.median(), p99Us = latencySamples.percentile(0.99);
  uint64_t warm = rss.size() > 5 ? rss[4] : (rss.empty() ? 0 : rss.front());
  uint64_t last = rss.empty() ? 0 : rss.back();
  uint64_t peak = rss.empty() ? 0 : *std::max_element(rss.begin(), rss.end());
  int64_t growth = int64_t(last) - int64_t(warm);
  uint64_t lost = totals.ipisSent - totals.ipisAcknowledged;

  printf("bench-load: %u fronts x %u vCPUs (+1 front killed at %u s), %.1f s, %s\n", fronts,
         vcpus, seconds / 2, elapsed,
         external == nullptr ? "vlapicd started confined" : "external vlapicd");
  printf("  %-34s %12.0f /s   (%llu total)\n", "guest accesses (MMIO, ack, EOI)",
         totals.accesses / elapsed, (unsigned long long)totals.accesses.load());
  printf("  %-34s %12.0f /s   (%llu sent, %llu acknowledged, %llu lost)\n", "fixed IPIs",
         totals.ipisSent / elapsed, (unsigned long long)totals.ipisSent.load(),
         (unsigned long long)totals.ipisAcknowledged.load(), (unsigned long long)lost);
  printf("  %-34s %12.1f us median, %.1f us p99 (%zu samples)\n", "MMIO read round trip", medianUs,
         p99Us, latencySamples.count());
  printf("  %-34s %12llu events for %llu expiries, %llu acknowledged\n", "timer (10 ms periodic)",
         (unsigned long long)totals.timerEvents.load(), (unsigned long long)totals.timerExpiries.load(),
         (unsigned long long)totals.timerAcks.load());
  printf("  %-34s %12llu deliverable, %llu other\n", "events posted to fronts",
         (unsigned long long)totals.deliverableEvents.load(), (unsigned long long)totals.otherEvents.load());
  printf("  %-34s %12llu\n", "VMs created and released", (unsigned long long)totals.vmsCreated.load());
  printf("  %-34s %12llu KiB after warm-up, %llu KiB peak, %llu KiB at end (%+lld KiB)\n",
         "vlapicd resident memory", (unsigned long long)warm, (unsigned long long)peak,
         (unsigned long long)last, (long long)growth);
  printf("  %-34s %12s\n", "killed front's VM released", doomedReleased ? "yes" : "NO");
  printf("  %-34s %12s (vms %u, vcpus %u, timers %u, pages %llu)\n", "all released at the end",
         released ? "yes" : "NO", after.vms, after.vcpus, after.armedTimers,
         (unsigned long long)after.pagesInUse);
  printf("  %-34s %12llu\n", "errors", (unsigned long long)totals.errors.load());
  bool ok = totals.errors == 0 && lost == 0 && doomedReleased && released;
  printf("RESULT load fronts=%u vcpus=%u seconds=%.0f accesses_per_s=%.0f ipis_per_s=%.0f "
         "lost_ipis=%llu errors=%llu read_median_us=%.1f read_p99_us=%.1f rss_warm_kb=%llu "
         "rss_end_kb=%llu rss_growth_kb=%lld ok=%d\n",
         fronts, vcpus, elapsed, totals.accesses / elapsed, totals.ipisSent / elapsed,
         (unsigned long long)lost, (unsigned long long)totals.errors.load(), medianUs, p99Us,
         (unsigned long long)warm, (unsigned long long)last, (long long)growth, ok ? 1 : 0);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace vlapic::load

int main(int argc, char* argv[]) {
  uint32_t fronts = 16, vcpus = 8, seconds = 60;
  kj::Maybe<kj::StringPtr> socket;
  pid_t serverPid = 0;
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> uint32_t {
      if (i + 1 >= argc) {
        fprintf(stderr, "bench-load: %s needs a value\n", argv[i]);
        exit(2);
      }
      return uint32_t(strtoul(argv[++i], nullptr, 10));
    };
    if (strcmp(argv[i], "--fronts") == 0) fronts = next();
    else if (strcmp(argv[i], "--vcpus") == 0) vcpus = next();
    else if (strcmp(argv[i], "--seconds") == 0) seconds = next();
    else if (strcmp(argv[i], "--server-pid") == 0) serverPid = pid_t(next());
    else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) socket = kj::StringPtr(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--fronts N] [--vcpus N] [--seconds N] "
              "[--socket PATH --server-pid PID]\n", argv[0]);
      return 2;
    }
  }
  if (fronts == 0 || vcpus < 2 || seconds < 4) {
    fprintf(stderr, "bench-load: need at least 1 front, 2 vCPUs and 4 seconds\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if ((socket == nullptr) != (serverPid == 0)) {
    fprintf(stderr, "bench-load: --socket and --server-pid go together\n");
    return 2;
  }
  return vlapic::load::run(fronts, vcpus, seconds, socket, serverPid);
}
