// bench-kvm: what a LAPIC access costs as seen by a real KVM guest, through
// vlapic-kvm + vlapicd (every access an exit plus a Cap'n Proto call) and
// with KVM's in-kernel LAPIC (KVM_CREATE_IRQCHIP), in one run, next to a
// bare user-space exit (an OUT to an unused port). The guest
// (bench_guest.c) times batches with its TSC; this program boots it twice
// on two vCPUs and summarises: median and spread (min..max of the batch
// medians) per operation, in microseconds.
#include "client/kvm/machine.h"
#include "client/kvm/spawn.h"
#include "client/kvm/vlapicd_backend.h"

#include <kj/debug.h>
#include <kj/map.h>
#include <kj/vector.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

namespace vlapic::kvm {
namespace {

struct Figures {
  double medianUs = 0, minUs = 0, maxUs = 0;
  size_t batches = 0;
};

struct RunResult {
  kj::HashMap<kj::String, Figures> figures;
  kj::String log;
  bool ok = false;
};

// Parses "BENCH <name> <cycles/op> ..." lines.
kj::HashMap<kj::String, Figures> summarise(kj::StringPtr output, uint64_t tscHz) {
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
    kj::Vector<double> values;
    for (size_t i = 1; i < words.size(); i++) values.add(double(strtoull(words[i].cStr(), nullptr, 10)) * usPerCycle);
    std::sort(values.begin(), values.end());
    Figures figures;
    figures.batches = values.size();
    figures.medianUs = values[values.size() / 2];
    figures.minUs = values[0];
    figures.maxUs = values[values.size() - 1];
    result.insert(kj::mv(words[0]), figures);
  }
  return result;
}

RunResult runGuest(KvmSystem& kvm, kj::ArrayPtr<const kj::byte> kernel, ApicLocation location,
                   kj::StringPtr vlapicdBinary) {
  MachineConfig config;
  config.vcpuCount = 2;
  config.memoryBytes = 64ull << 20;
  config.apic = location;
  kj::Vector<char> output;
  Machine machine(kvm, config, [&output](char c) { output.add(c); });
  machine.setBootState(loadMultiboot(machine.memory(), kernel, "bench-kvm", nullptr));

  kj::Maybe<kj::Own<SpawnedVlapicd>> spawned;
  kj::Maybe<kj::Own<VlapicdBackend>> backend;
  if (location == ApicLocation::SERVER) {
    auto& child = *spawned.emplace(kj::heap<SpawnedVlapicd>(vlapicdBinary));
    VlapicdVmSettings settings;
    settings.vcpuCount = config.vcpuCount;
    settings.tscHz = machine.tscHz();
    settings.name = kj::str("bench-kvm");
    for (int attempt = 0;; attempt++) {
      auto failure = kj::runCatchingExceptions([&]() {
        backend = kj::heap<VlapicdBackend>(child.socketPath(), settings, machine);
      });
      if (failure == nullptr) break;
      if (attempt >= 50) kj::throwFatalException(kj::mv(KJ_ASSERT_NONNULL(failure)));
      usleep(20'000);
    }
    auto& b = *KJ_ASSERT_NONNULL(backend);
    b.setGuestTscOffset(machine.measureGuestTscOffset());
    machine.attachApic(b);
  }
  auto exit = machine.run(uint64_t(120'000));
  output.add('\0');
  RunResult result;
  result.log = kj::str(output.begin());
  result.ok = exit.kind == MachineExit::Kind::GUEST_EXIT && exit.guestValue == 0;
  if (!result.ok) {
    result.log = kj::str(result.log, "\n(run ended: ", exit.message, ")\n");
  }
  result.figures = summarise(result.log, machine.tscHz());
  return result;
}

kj::Maybe<Figures> find(RunResult& run, kj::StringPtr name) {
  KJ_IF_MAYBE(f, run.figures.find(name)) return *f;
  return nullptr;
}

kj::String cell(kj::Maybe<Figures> figures) {
  KJ_IF_MAYBE(f, figures) {
    char buffer[64];
    snprintf(buffer, sizeof(buffer), "%8.2f [%7.2f..%8.2f]", f->medianUs, f->minUs, f->maxUs);
    return kj::str(buffer);
  }
  return kj::str("          (not measured)    ");
}

double median(kj::Maybe<Figures> figures) {
  KJ_IF_MAYBE(f, figures) return f->medianUs;
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
  const char* fromEnv = getenv("VLAPICD");
  kj::String vlapicd = kj::str(fromEnv != nullptr && *fromEnv ? fromEnv : VLAPICD_BINARY);

  auto server = runGuest(kvm, kernel, ApicLocation::SERVER, vlapicd);
  auto inKernel = runGuest(kvm, kernel, ApicLocation::IN_KERNEL, vlapicd);
  if (!server.ok || !inKernel.ok) {
    fprintf(stderr, "bench-kvm: a guest run failed\n--- vlapicd run ---\n%s\n--- in-kernel run ---\n%s\n",
            server.log.cStr(), inKernel.log.cStr());
    return 1;
  }

  // The timed loops carry their own overhead (each ring-0 instruction is
  // emulated on our nested host); it is measured ("loop") and subtracted.
  double loopServer = median(find(server, "loop"));
  double loopKernel = median(find(inKernel, "loop"));
  auto net = [](kj::Maybe<Figures> figures, double loop) -> kj::Maybe<Figures> {
    KJ_IF_MAYBE(f, figures) {
      Figures out = *f;
      out.medianUs -= loop;
      out.minUs -= loop;
      out.maxUs -= loop;
      return out;
    }
    return nullptr;
  };

  printf("bench-kvm: cost per access seen by a 2-vCPU guest, us per operation,\n");
  printf("median [min..max] of %d batches, loop overhead (%.2f / %.2f us) subtracted\n\n", 15,
         loopServer, loopKernel);
  printf("%-28s %-30s %-30s %s\n", "operation", "vlapic-kvm + vlapicd", "KVM in-kernel LAPIC", "ratio");
  struct Row {
    const char* label;
    const char* name;
    bool perLoop;
  };
  Row rows[] = {
      {"OUT to unused port (bare)", "bare_exit", true},
      {"xAPIC MMIO read", "mmio_read", true},
      {"xAPIC MMIO write (TPR)", "mmio_write", true},
      {"x2APIC RDMSR (TPR)", "msr_read", true},
      {"x2APIC WRMSR (TPR)", "msr_write", true},
      {"IPI round trip BSP->AP->BSP", "ipi_rtt_bsp_ap_bsp", false},
      {"IPI round trip AP->BSP->AP", "ipi_rtt_ap_bsp_ap", false},
  };
  for (auto& row : rows) {
    auto s = row.perLoop ? net(find(server, row.name), loopServer) : find(server, row.name);
    auto k = row.perLoop ? net(find(inKernel, row.name), loopKernel) : find(inKernel, row.name);
    double ratio = median(k) > 0 ? median(s) / median(k) : 0;
    printf("%-28s %-30s %-30s %6.2fx\n", row.label, cell(s).cStr(), cell(k).cStr(), ratio);
  }

  double bare = median(net(find(server, "bare_exit"), loopServer));
  double mmioRead = median(net(find(server, "mmio_read"), loopServer));
  double mmioWrite = median(net(find(server, "mmio_write"), loopServer));
  double msrRead = median(net(find(server, "msr_read"), loopServer));
  double msrWrite = median(net(find(server, "msr_write"), loopServer));
  double kernelBare = median(net(find(inKernel, "bare_exit"), loopKernel));
  double kernelMmioRead = median(net(find(inKernel, "mmio_read"), loopKernel));
  double kernelMmioWrite = median(net(find(inKernel, "mmio_write"), loopKernel));
  double kernelMsrRead = median(net(find(inKernel, "msr_read"), loopKernel));
  double kernelMsrWrite = median(net(find(inKernel, "msr_write"), loopKernel));
  printf("\nMMIO read through vlapicd / bare exit: %.2fx; / in-kernel LAPIC: %.2fx\n",
         bare > 0 ? mmioRead / bare : 0, kernelMmioRead > 0 ? mmioRead / kernelMmioRead : 0);
  printf("RESULT kvm bare_exit_us=%s mmio_read_us=%s mmio_write_us=%s msr_read_us=%s msr_write_us=%s "
         "kernel_bare_exit_us=%s kernel_mmio_read_us=%s kernel_mmio_write_us=%s kernel_msr_read_us=%s "
         "kernel_msr_write_us=%s ipi_rtt_us=%s kernel_ipi_rtt_us=%s ratio_rpc_vs_bare=%s "
         "ratio_rpc_vs_kernel=%s\n",
         fixed2(bare).cStr(), fixed2(mmioRead).cStr(), fixed2(mmioWrite).cStr(), fixed2(msrRead).cStr(),
         fixed2(msrWrite).cStr(), fixed2(kernelBare).cStr(), fixed2(kernelMmioRead).cStr(),
         fixed2(kernelMmioWrite).cStr(), fixed2(kernelMsrRead).cStr(), fixed2(kernelMsrWrite).cStr(),
         fixed2(median(find(server, "ipi_rtt_bsp_ap_bsp"))).cStr(),
         fixed2(median(find(inKernel, "ipi_rtt_bsp_ap_bsp"))).cStr(),
         fixed2(bare > 0 ? mmioRead / bare : 0).cStr(),
         fixed2(kernelMmioRead > 0 ? mmioRead / kernelMmioRead : 0).cStr());
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
