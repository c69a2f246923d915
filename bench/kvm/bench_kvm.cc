// SPDX-License-Identifier: MIT
// bench-kvm: what a LAPIC access costs as seen by a real KVM guest, in one
// run, next to a bare user-space exit (an OUT to an unused port): through
// vlapic-kvm + vlapicd over the per-vCPU shared-memory channel, over plain
// Cap'n Proto RPC, with plain register reads served from the mapped
// virtual-APIC page, and with KVM's in-kernel LAPIC (KVM_CREATE_IRQCHIP).
// The guest (bench_guest.c) times batches with its TSC; this program boots
// it once per configuration on two vCPUs and summarises: median and spread
// (min..max of the batch medians) per operation, in microseconds. Then it
// measures the CPU that vlapicd and vlapic-kvm's machine use while a guest
// sits halted.
#include "bench/common/stats.h"
#include "client/kvm/machine.h"
#include "client/kvm/spawn.h"
#include "client/kvm/vlapicd_backend.h"

#include <kj/debug.h>
#include <kj/map.h>
#include <kj/vector.h>
#include <ctime>
#include <kj/thread.h>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

namespace vlapic::kvm {
namespace {

// One operation's batch times in microseconds.
using Figures = bench::Spread;

struct RunResult {
  kj::HashMap<kj::String, Figures> figures;
  // Every value of each BENCH line, in us (per-sample lines: percentiles).
  kj::HashMap<kj::String, std::vector<double>> samples;
  uint64_t tscHz = 0;
  kj::String log;
  bool ok = false;
};

// Parses "BENCH <name> <cycles/op> ..." lines.
kj::HashMap<kj::String, Figures> summarise(kj::StringPtr output, uint64_t tscHz,
                                          kj::HashMap<kj::String, std::vector<double>>* samples = nullptr) {
  kj::HashMap<kj::String, Figures> result;
  double usPerCycle = 1e6 / double(tscHz);
  size_t start = 0;
  while (start < output.size()) {
    size_t end = start;
    while (end < output.size() && output[end] != '\n') end++;
    auto line = kj::str(output.slice(start, end));
    start = end + 1;
    if (!line.startsWith("BENCH ")) continue;
    kj::Vector<kj::String> words;
    size_t w = 6;
    while (w < line.size()) {
      size_t e = w;
      while (e < line.size() && line[e] != ' ') e++;
      words.add(kj::str(line.slice(w, e)));
      w = e + 1;
    }
    if (words.size() < 2) continue;
    std::vector<double> values;
    for (size_t i = 1; i < words.size(); i++) values.push_back(double(strtoull(words[i].cStr(), nullptr, 10)) * usPerCycle);
    if (samples != nullptr) samples->insert(kj::str(words[0]), values);
    result.insert(kj::mv(words[0]), bench::spreadOf(kj::mv(values)));
  }
  return result;
}


// One guest configuration: where the LAPIC lives and, for vlapicd, how the
// front reaches it.
struct Setup {
  ApicLocation location = ApicLocation::SERVER;
  ApicTransport transport = ApicTransport::CHANNEL;
  bool pageReads = false;
};

// A machine with its vlapicd (spawned with the shared-memory HAL) attached.
struct BenchMachine {
  kj::Own<Machine> machine;
  kj::Maybe<kj::Own<SpawnedVlapicd>> spawned;
  kj::Maybe<kj::Own<VlapicdBackend>> backend;
};

BenchMachine bootMachine(KvmSystem& kvm, kj::ArrayPtr<const kj::byte> kernel, const Setup& setup,
                         kj::StringPtr vlapicdBinary, kj::Function<void(char)> output) {
  MachineConfig config;
  config.vcpuCount = 2;
  config.memoryBytes = 64ull << 20;
  config.apic = setup.location;
  BenchMachine result;
  result.machine = kj::heap<Machine>(kvm, config, kj::mv(output));
  auto& machine = *result.machine;
  machine.setBootState(loadMultiboot(machine.memory(), kernel, "bench-kvm", nullptr));
  if (setup.location == ApicLocation::SERVER) {
    auto& child = *result.spawned.emplace(
        kj::heap<SpawnedVlapicd>(vlapicdBinary, spawnedVlapicdArguments()));
    VlapicdVmSettings settings;
    settings.vcpuCount = config.vcpuCount;
    settings.tscHz = machine.tscHz();
    settings.name = kj::str("bench-kvm");
    settings.transport = setup.transport;
    settings.pageReads = setup.pageReads;
    for (int attempt = 0;; attempt++) {
      auto failure = kj::runCatchingExceptions([&]() {
        result.backend = kj::heap<VlapicdBackend>(child.socketPath(), settings, machine);
      });
      if (failure == nullptr) break;
      if (attempt >= 50) kj::throwFatalException(kj::mv(KJ_ASSERT_NONNULL(failure)));
      usleep(20'000);
    }
    auto& b = *KJ_ASSERT_NONNULL(result.backend);
    b.setGuestTscOffset(machine.measureGuestTscOffset());
    machine.attachApic(b);
  }
  return result;
}

RunResult runGuest(KvmSystem& kvm, kj::ArrayPtr<const kj::byte> kernel, const Setup& setup,
                   kj::StringPtr vlapicdBinary) {
  kj::Vector<char> output;
  auto booted = bootMachine(kvm, kernel, setup, vlapicdBinary, [&output](char c) { output.add(c); });
  auto& machine = *booted.machine;
  auto exit = machine.run(uint64_t(120'000));
  output.add('\0');
  RunResult result;
  result.log = kj::str(output.begin());
  result.ok = exit.kind == MachineExit::Kind::GUEST_EXIT && exit.guestValue == 0;
  if (!result.ok) {
    result.log = kj::str(result.log, "\n(run ended: ", exit.message, ")\n");
  }
  if (setup.pageReads && machine.counters().pageReads.load() == 0) {
    result.ok = false;
    result.log = kj::str(result.log, "\n(no read was served from the page: is vlapicd's HAL shared?)\n");
  }
  result.figures = summarise(result.log, machine.tscHz(), &result.samples);
  result.tscHz = machine.tscHz();
  return result;
}

uint64_t processCpuNs(pid_t pid) {
  clockid_t clock;
  KJ_REQUIRE(clock_getcpuclockid(pid, &clock) == 0, "no CPU clock for process", pid);
  timespec ts;
  KJ_SYSCALL(clock_gettime(clock, &ts));
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

struct IdleFigures {
  double vlapicdPercent = 0, frontPercent = 0;
  double seconds = 0;
};

// A 2-vCPU guest halted with interrupts on (the BSP) and waiting for SIPI
// (the AP), over the channel: CPU time of vlapicd and of this whole process
// (the vCPU threads, attention watchers, the client thread) over a few
// seconds, as a percentage of one CPU. With `snapshotMs`, as vlapic-kvm
// --spawn-vlapicd runs by default: a VM-wide snapshot that often.
IdleFigures measureIdle(KvmSystem& kvm, kj::ArrayPtr<const kj::byte> kernel, kj::StringPtr vlapicdBinary,
                        uint64_t snapshotMs) {
  Setup setup;
  setup.pageReads = true;
  kj::MutexGuarded<kj::Vector<char>> output;
  auto booted = bootMachine(kvm, kernel, setup, vlapicdBinary,
                            [&output](char c) { output.lockExclusive()->add(c); });
  auto& machine = *booted.machine;
  if (snapshotMs > 0) {
    KJ_ASSERT_NONNULL(booted.backend)->enableRecovery([]() -> kj::String {
      KJ_FAIL_REQUIRE("vlapicd died during the idle measurement");
    }, snapshotMs);
  }
  pid_t vlapicd = KJ_ASSERT_NONNULL(booted.spawned)->processId();
  constexpr uint64_t kSettleMs = 1000, kMeasureMs = 3000;
  kj::Maybe<MachineExit> exit;
  {
    kj::Thread runner([&]() { exit = machine.run(kSettleMs + kMeasureMs + 400); });
    usleep(kSettleMs * 1000);
    uint64_t wallBefore = monotonicNs();
    uint64_t serverBefore = processCpuNs(vlapicd);
    uint64_t frontBefore = processCpuNs(getpid());
    usleep(kMeasureMs * 1000);
    uint64_t wall = monotonicNs() - wallBefore;
    IdleFigures figures;
    figures.vlapicdPercent = 100.0 * double(processCpuNs(vlapicd) - serverBefore) / double(wall);
    figures.frontPercent = 100.0 * double(processCpuNs(getpid()) - frontBefore) / double(wall);
    figures.seconds = double(wall) / 1e9;
    // The runner ends at its timeout; the guest never exits by itself.
    return figures;
  }
}

kj::Maybe<Figures> find(RunResult& run, kj::StringPtr name) {
  KJ_IF_MAYBE(f, run.figures.find(name)) return *f;
  return nullptr;
}

kj::String cell(kj::Maybe<Figures> figures) {
  KJ_IF_MAYBE(f, figures) {
    char buffer[64];
    snprintf(buffer, sizeof(buffer), "%6.2f [%6.2f..%7.2f]", f->median, f->min, f->max);
    return kj::str(buffer);
  }
  return kj::str("   (not measured)     ");
}

double median(kj::Maybe<Figures> figures) {
  KJ_IF_MAYBE(f, figures) return f->median;
  return 0;
}

kj::String fixed2(double value) {
  char buffer[32];
  snprintf(buffer, sizeof(buffer), "%.2f", value);
  return kj::str(buffer);
}

int runBench() {
  kj::Maybe<KvmSystem> kvmSystem;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() { kvmSystem.emplace(); })) {
    printf("SKIP bench-kvm: KVM is not available (%s)\n", exception->getDescription().cStr());
    printf("RESULT kvm skipped=1\n");
    return 0;
  }
  auto& kvm = KJ_ASSERT_NONNULL(kvmSystem);
  auto kernel = readWholeFile(BENCH_KVM_GUEST);
  auto idleKernel = readWholeFile(BENCH_KVM_IDLE_GUEST);
  const char* fromEnv = getenv("VLAPICD");
  kj::String vlapicd = kj::str(fromEnv != nullptr && *fromEnv ? fromEnv : VLAPICD_BINARY);

  struct Column {
    const char* title;
    Setup setup;
    RunResult run;
    double loop = 0;
  };
  Column columns[] = {
      {"vlapicd channel", {ApicLocation::SERVER, ApicTransport::CHANNEL, false}, {}},
      {"vlapicd plain RPC", {ApicLocation::SERVER, ApicTransport::RPC, false}, {}},
      {"channel + page reads", {ApicLocation::SERVER, ApicTransport::CHANNEL, true}, {}},
      {"KVM in-kernel LAPIC", {ApicLocation::IN_KERNEL, ApicTransport::CHANNEL, false}, {}},
  };
  for (auto& column : columns) {
    column.run = runGuest(kvm, kernel, column.setup, vlapicd);
    if (!column.run.ok) {
      fprintf(stderr, "bench-kvm: the %s run failed\n%s\n", column.title, column.run.log.cStr());
      return 1;
    }
    // The timed loops carry their own overhead (each ring-0 instruction is
    // emulated on our nested host); it is measured ("loop") and subtracted.
    column.loop = median(find(column.run, "loop"));
  }
  auto& channel = columns[0];
  auto& rpc = columns[1];
  auto& page = columns[2];
  auto& inKernel = columns[3];
  auto net = [](Column& column, kj::StringPtr name, bool perLoop) -> kj::Maybe<Figures> {
    KJ_IF_MAYBE(f, find(column.run, name)) {
      Figures out = *f;
      if (perLoop) {
        out.median -= column.loop;
        out.min -= column.loop;
        out.max -= column.loop;
      }
      return out;
    }
    return nullptr;
  };

  printf("bench-kvm: cost per access seen by a 2-vCPU guest, us per operation,\n");
  printf("median [min..max] of %d batches, loop overhead subtracted (", 15);
  for (auto& column : columns) printf("%s%.2f", &column == columns ? "" : " / ", column.loop);
  printf(" us)\n(x bare): the median over that run's own bare exit\n\n");
  printf("%-24s", "operation");
  for (auto& column : columns) printf(" %-32s", column.title);
  printf("\n");
  struct Row {
    const char* label;
    const char* name;
    bool perLoop;
  };
  Row rows[] = {
      {"OUT unused port (bare)", "bare_exit", true},
      {"MMIO read, no device", "bare_mmio", true},
      {"xAPIC MMIO read (VER)", "mmio_read", true},
      {"xAPIC MMIO write (TPR)", "mmio_write", true},
      {"xAPIC MMIO EOI", "mmio_eoi", true},
      {"x2APIC RDMSR (TPR)", "msr_read", true},
      {"x2APIC WRMSR (TPR)", "msr_write", true},
      {"x2APIC WRMSR EOI", "msr_eoi", true},
      {"IPI RTT BSP->AP->BSP", "ipi_rtt_bsp_ap_bsp", false},
      {"IPI RTT AP->BSP->AP", "ipi_rtt_ap_bsp_ap", false},
      {"IPI RTT, target running", "ipi_rtt_running_target", false},
      {"timer delay, running", "guest_timer_running", false},
      {"timer delay, halted", "guest_timer_halted", false},
      {"expired deadline taken", "expired_deadline", false},
      {"storm iteration", "storm", false},
  };
  for (auto& row : rows) {
    printf("%-24s", row.label);
    for (auto& column : columns) {
      auto figures = net(column, row.name, row.perLoop);
      double bare = median(net(column, "bare_exit", true));
      char ratio[32] = "";
      if (row.perLoop && bare > 0 && figures != nullptr) {
        snprintf(ratio, sizeof(ratio), "%5.2fx", median(figures) / bare);
      }
      printf(" %s %-7s", cell(figures).cStr(), ratio);
    }
    printf("\n");
  }
  printf("(writes and EOIs in the page-reads column go through the channel)\n");

  auto bareIdle = measureIdle(kvm, idleKernel, vlapicd, 0);
  auto idle = measureIdle(kvm, idleKernel, vlapicd, 100);
  printf("\nidle: a halted 2-vCPU guest over the channel, %.1f s: vlapicd %.3f%% CPU, "
         "vlapic-kvm machine %.3f%% CPU, together %.3f%%\n",
         bareIdle.seconds, bareIdle.vlapicdPercent, bareIdle.frontPercent,
         bareIdle.vlapicdPercent + bareIdle.frontPercent);
  printf("idle with vlapic-kvm's default VM-wide snapshot every 100 ms, %.1f s: vlapicd %.3f%% CPU, "
         "vlapic-kvm machine %.3f%% CPU, together %.3f%% (idle_cpu_percent)\n",
         idle.seconds, idle.vlapicdPercent, idle.frontPercent, idle.vlapicdPercent + idle.frontPercent);

  auto medianOf = [&](Column& column, kj::StringPtr name) { return median(net(column, name, true)); };
  // Guest-seen timer delay: running and halted samples pooled per column.
  auto timerPercentile = [&](Column& column, double q) {
    std::vector<double> pooled;
    for (auto name : {"guest_timer_running", "guest_timer_halted"}) {
      KJ_IF_MAYBE(v, column.run.samples.find(name)) pooled.insert(pooled.end(), v->begin(), v->end());
    }
    if (pooled.empty()) return 0.0;
    return bench::Samples(kj::mv(pooled)).percentile(q);
  };
  auto cyclesOf = [&](Column& column, kj::StringPtr name) {
    return median(find(column.run, name)) * double(column.run.tscHz) / 1e6;
  };
  auto rawMedian = [&](Column& column, kj::StringPtr name) { return median(find(column.run, name)); };
  double bare = medianOf(rpc, "bare_exit");
  double mmioRead = medianOf(rpc, "mmio_read");
  double channelBare = medianOf(channel, "bare_exit");
  double channelRead = medianOf(channel, "mmio_read");
  double pageBare = medianOf(page, "bare_exit");
  double pageRead = medianOf(page, "mmio_read");
  double kernelMmioRead = medianOf(inKernel, "mmio_read");
  double pageBareMmio = medianOf(page, "bare_mmio");
  double pageMsrRead = medianOf(page, "msr_read");
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0; };
  printf("\nMMIO read / bare exit: channel %.2fx, page %.2fx, plain RPC %.2fx, in-kernel %.2fx\n",
         ratio(channelRead, channelBare), ratio(pageRead, pageBare), ratio(mmioRead, bare),
         ratio(kernelMmioRead, medianOf(inKernel, "bare_exit")));
  printf("page MMIO read / MMIO read with no device (the same exit, answered at once): %.2fx\n",
         ratio(pageRead, pageBareMmio));
  double channelTimerP50 = timerPercentile(channel, 0.5), kernelTimerP50 = timerPercentile(inKernel, 0.5);
  double channelTimerP99 = timerPercentile(channel, 0.99), kernelTimerP99 = timerPercentile(inKernel, 0.99);
  double rpcTimerP50 = timerPercentile(rpc, 0.5);
  printf("guest-seen timer delay (deadline to handler, running and halted pooled): channel p50 %.2f "
         "p99 %.2f us, rpc p50 %.2f us, in-kernel p50 %.2f p99 %.2f us: p50 %.2fx, p99 %.2fx in-kernel\n",
         channelTimerP50, channelTimerP99, rpcTimerP50, kernelTimerP50, kernelTimerP99,
         ratio(channelTimerP50, kernelTimerP50), ratio(channelTimerP99, kernelTimerP99));
  char guestKeys[2048];
  snprintf(guestKeys, sizeof(guestKeys), "ratio_channel_ipi_vs_kernel=%s ratio_rpc_ipi_vs_kernel=%s "
         "ratio_channel_ipi_running_vs_kernel=%s ratio_rpc_ipi_running_vs_kernel=%s "
         "ratio_channel_eoi_vs_bare=%s guest_timer_p50_us=%s "
         "kernel_guest_timer_p50_us=%s ratio_guest_timer_vs_kernel=%s guest_timer_p99_us=%s "
         "kernel_guest_timer_p99_us=%s ratio_guest_timer_p99_vs_kernel=%s rpc_guest_timer_p50_us=%s "
         "expired_deadline_cycles=%s kernel_expired_deadline_cycles=%s rpc_expired_deadline_cycles=%s "
         "ratio_storm_vs_kernel=%s ratio_rpc_storm_vs_kernel=%s",
         fixed2(ratio(rawMedian(channel, "ipi_rtt_bsp_ap_bsp"), rawMedian(inKernel, "ipi_rtt_bsp_ap_bsp"))).cStr(),
         fixed2(ratio(rawMedian(rpc, "ipi_rtt_bsp_ap_bsp"), rawMedian(inKernel, "ipi_rtt_bsp_ap_bsp"))).cStr(),
         fixed2(ratio(rawMedian(channel, "ipi_rtt_running_target"), rawMedian(inKernel, "ipi_rtt_running_target"))).cStr(),
         fixed2(ratio(rawMedian(rpc, "ipi_rtt_running_target"), rawMedian(inKernel, "ipi_rtt_running_target"))).cStr(),
         fixed2(ratio(medianOf(channel, "msr_eoi"), channelBare)).cStr(),
         fixed2(channelTimerP50).cStr(), fixed2(kernelTimerP50).cStr(),
         fixed2(ratio(channelTimerP50, kernelTimerP50)).cStr(), fixed2(channelTimerP99).cStr(),
         fixed2(kernelTimerP99).cStr(), fixed2(ratio(channelTimerP99, kernelTimerP99)).cStr(),
         fixed2(rpcTimerP50).cStr(),
         fixed2(cyclesOf(channel, "expired_deadline")).cStr(), fixed2(cyclesOf(inKernel, "expired_deadline")).cStr(),
         fixed2(cyclesOf(rpc, "expired_deadline")).cStr(),
         fixed2(ratio(rawMedian(channel, "storm"), rawMedian(inKernel, "storm"))).cStr(),
         fixed2(ratio(rawMedian(rpc, "storm"), rawMedian(inKernel, "storm"))).cStr());
  printf("RESULT kvm bare_exit_us=%s mmio_read_us=%s mmio_write_us=%s msr_read_us=%s msr_write_us=%s "
         "kernel_bare_exit_us=%s kernel_mmio_read_us=%s kernel_mmio_write_us=%s kernel_msr_read_us=%s "
         "kernel_msr_write_us=%s ipi_rtt_us=%s kernel_ipi_rtt_us=%s ratio_rpc_vs_bare=%s "
         "ratio_rpc_vs_kernel=%s channel_mmio_read_us=%s channel_mmio_write_us=%s "
         "channel_msr_write_us=%s channel_eoi_us=%s page_mmio_read_us=%s page_msr_read_us=%s "
         "channel_ipi_rtt_us=%s ratio_channel_vs_bare=%s ratio_page_read_vs_bare=%s "
         "idle_cpu_percent=%s idle_cpu_percent_no_snapshots=%s bare_mmio_us=%s ratio_page_read_vs_bare_mmio=%s ratio_page_msr_read_vs_bare=%s %s\n",
         fixed2(bare).cStr(), fixed2(mmioRead).cStr(), fixed2(medianOf(rpc, "mmio_write")).cStr(),
         fixed2(medianOf(rpc, "msr_read")).cStr(), fixed2(medianOf(rpc, "msr_write")).cStr(),
         fixed2(medianOf(inKernel, "bare_exit")).cStr(), fixed2(kernelMmioRead).cStr(),
         fixed2(medianOf(inKernel, "mmio_write")).cStr(), fixed2(medianOf(inKernel, "msr_read")).cStr(),
         fixed2(medianOf(inKernel, "msr_write")).cStr(),
         fixed2(median(find(rpc.run, "ipi_rtt_bsp_ap_bsp"))).cStr(),
         fixed2(median(find(inKernel.run, "ipi_rtt_bsp_ap_bsp"))).cStr(),
         fixed2(ratio(mmioRead, bare)).cStr(), fixed2(ratio(mmioRead, kernelMmioRead)).cStr(),
         fixed2(channelRead).cStr(), fixed2(medianOf(channel, "mmio_write")).cStr(),
         fixed2(medianOf(channel, "msr_write")).cStr(), fixed2(medianOf(channel, "mmio_eoi")).cStr(),
         fixed2(pageRead).cStr(), fixed2(medianOf(page, "msr_read")).cStr(),
         fixed2(median(find(channel.run, "ipi_rtt_bsp_ap_bsp"))).cStr(),
         fixed2(ratio(channelRead, channelBare)).cStr(), fixed2(ratio(pageRead, pageBare)).cStr(),
         fixed2(idle.vlapicdPercent + idle.frontPercent).cStr(),
         fixed2(bareIdle.vlapicdPercent + bareIdle.frontPercent).cStr(), fixed2(pageBareMmio).cStr(),
         fixed2(ratio(pageRead, pageBareMmio)).cStr(), fixed2(ratio(pageMsrRead, pageBare)).cStr(),
         guestKeys);
  return 0;
}

}  // namespace
}  // namespace vlapic::kvm

int main() {
  int status = 1;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() { status = vlapic::kvm::runBench(); })) {
    fprintf(stderr, "bench-kvm: %s\n", exception->getDescription().cStr());
    return 1;
  }
  return status;
}
