// SPDX-License-Identifier: MIT
// vlapic-kvm: boots a multiboot kernel on Linux KVM with every LAPIC access
// served by vlapicd.
//
//   vlapic-kvm --smp 2 --memory 256M --kernel FILE [--initrd FILE]
//              [--append ARGS] [--cpu x2apic|xapic]
//              [--vlapicd SOCKET | --spawn-vlapicd] [--rpc] [--no-page-reads]
//              [--snapshot-ms MS] [--ioapic-version 0x11|0x20] [--no-ioapic]
//              [--timeout SECONDS]
//
// The guest's serial port is our stdout; the process exits with the guest's
// debug-exit status ((v << 1) | 1) or an even status of its own (machine.h).
#include "client/kvm/machine.h"
#include "client/kvm/spawn.h"
#include "client/kvm/vlapicd_backend.h"

#include <kj/debug.h>
#include <kj/vector.h>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

namespace vlapic::kvm {
namespace {

constexpr const char* kUsage =
    "usage: vlapic-kvm --kernel FILE [options]\n"
    "Boots a multiboot v1 kernel on KVM; every LAPIC access goes to vlapicd.\n"
    "\n"
    "  --kernel FILE        multiboot v1 kernel (ELF32/ELF64 or a.out kludge)\n"
    "  --initrd FILE        loaded as multiboot module 0\n"
    "  --append ARGS        kernel command line\n"
    "  --smp N              number of vCPUs (default 1); vCPU i has APIC ID i\n"
    "  --memory SIZE        guest RAM, e.g. 256M or 1G (default 256M, max 3G)\n"
    "  --cpu x2apic|xapic   advertise x2APIC in CPUID (default x2apic)\n"
    "  --vlapicd SOCKET     use the vlapicd listening on SOCKET\n"
    "                       (default: the client library's default socket)\n"
    "  --spawn-vlapicd      start a private vlapicd for this run ($VLAPICD or\n"
    "                       the one next to this binary)\n"
    "  --rpc                every APIC access is a Cap'n Proto call (default:\n"
    "                       the per-vCPU shared-memory channel)\n"
    "  --no-page-reads      with the channel, ask vlapicd for every register\n"
    "                       read (default: plain reads come from the vCPU's\n"
    "                       virtual-APIC page when vlapicd runs --hal shared)\n"
    "  --snapshot-ms MS     with --spawn-vlapicd: save the whole VM's LAPIC state\n"
    "                       every MS milliseconds (default 100) and, if vlapicd\n"
    "                       dies, start a new one and restore it so the guest\n"
    "                       continues; 0: no snapshots, vlapicd's loss ends the run\n"
    "  --ioapic-version V   the I/O APIC vlapicd gives the VM at 0xFEC00000:\n"
    "                       0x11 (KVM's, the default) or 0x20 (with the EOI\n"
    "                       register at +0x40, as QEMU's)\n"
    "  --no-ioapic          no I/O APIC: its window floats, IRQ wires go nowhere\n"
    "  --timeout SECONDS    stop the guest after this long (status 12)\n"
    "  --trace              log every exit and injected vector on stderr\n"
    "\n"
    "Exit status: the guest's (v << 1) | 1 after it writes v to port 0xF4;\n"
    "2 usage or unloadable kernel, 4 no /dev/kvm, 6 vlapicd unavailable or\n"
    "gone, 8 triple fault, 10 unhandled exit, 12 timeout, 14 internal error.\n";

struct Options {
  MachineConfig machine;
  kj::String kernel;
  kj::Maybe<kj::String> initrd;
  kj::String append = kj::str("");
  kj::Maybe<kj::String> socket;
  bool spawn = false;
  ApicTransport transport = ApicTransport::CHANNEL;
  bool pageReads = true;
  uint64_t snapshotMs = 100;
  kj::Maybe<uint64_t> timeoutMs;
  bool ioapic = true;
  uint8_t ioapicVersion = kIoApicVersion11;
};

[[noreturn]] void usageError(kj::StringPtr message) {
  fprintf(stderr, "vlapic-kvm: %s\n\n%s", message.cStr(), kUsage);
  exit(kStatusUsage);
}

uint64_t parseNumber(kj::StringPtr text, kj::StringPtr flag) {
  char* end;
  errno = 0;
  unsigned long long value = strtoull(text.cStr(), &end, 0);
  if (errno != 0 || end == text.cStr() || *end != '\0') {
    usageError(kj::str(flag, ": not a number: ", text));
  }
  return value;
}

uint64_t parseSize(kj::StringPtr text) {
  uint64_t multiplier = 1u << 20;  // bare numbers are MiB, as QEMU's -m
  kj::String digits = kj::str(text);
  if (text.size() > 0) {
    char suffix = text[text.size() - 1];
    uint64_t m = 0;
    if (suffix == 'K' || suffix == 'k') m = 1u << 10;
    if (suffix == 'M' || suffix == 'm') m = 1u << 20;
    if (suffix == 'G' || suffix == 'g') m = 1u << 30;
    if (m != 0) {
      multiplier = m;
      digits = kj::str(text.slice(0, text.size() - 1));
    }
  }
  return parseNumber(digits, "--memory") * multiplier;
}

Options parseOptions(int argc, char** argv) {
  Options options;
  bool haveKernel = false;
  for (int i = 1; i < argc; i++) {
    kj::StringPtr arg = argv[i];
    auto value = [&]() -> kj::StringPtr {
      if (i + 1 >= argc) usageError(kj::str(arg, " needs a value"));
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      fputs(kUsage, stdout);
      exit(0);
    } else if (arg == "--kernel") {
      options.kernel = kj::str(value());
      haveKernel = true;
    } else if (arg == "--initrd") {
      options.initrd = kj::str(value());
    } else if (arg == "--append") {
      options.append = kj::str(value());
    } else if (arg == "--smp") {
      uint64_t n = parseNumber(value(), arg);
      if (n < 1 || n > 255) usageError("--smp must be between 1 and 255");
      options.machine.vcpuCount = n;
    } else if (arg == "--memory" || arg == "-m") {
      options.machine.memoryBytes = parseSize(value());
    } else if (arg == "--cpu") {
      kj::StringPtr model = value();
      if (model == "x2apic") options.machine.x2apic = true;
      else if (model == "xapic") options.machine.x2apic = false;
      else usageError(kj::str("--cpu must be x2apic or xapic, not ", model));
    } else if (arg == "--vlapicd") {
      options.socket = kj::str(value());
    } else if (arg == "--spawn-vlapicd") {
      options.spawn = true;
    } else if (arg == "--rpc") {
      options.transport = ApicTransport::RPC;
    } else if (arg == "--no-page-reads") {
      options.pageReads = false;
    } else if (arg == "--snapshot-ms") {
      options.snapshotMs = parseNumber(value(), arg);
    } else if (arg == "--ioapic-version") {
      uint64_t version = parseNumber(value(), arg);
      if (version != kIoApicVersion11 && version != kIoApicVersion20) {
        usageError("--ioapic-version must be 0x11 or 0x20");
      }
      options.ioapicVersion = uint8_t(version);
    } else if (arg == "--no-ioapic") {
      options.ioapic = false;
    } else if (arg == "--trace") {
      options.machine.trace = true;
    } else if (arg == "--timeout") {
      options.timeoutMs = parseNumber(value(), arg) * 1000;
    } else {
      usageError(kj::str("unknown argument ", arg));
    }
  }
  if (!haveKernel) usageError("--kernel is required");
  if (options.spawn && options.socket != nullptr) {
    usageError("--vlapicd and --spawn-vlapicd exclude each other");
  }
  if (options.machine.memoryBytes < (2u << 20) || options.machine.memoryBytes > GuestMemory::kMaxBytes ||
      options.machine.memoryBytes % 4096 != 0) {
    usageError("--memory must be between 2M and 3G, a multiple of 4K");
  }
  return options;
}

// The guest's serial output, line-buffered onto stdout.
class SerialOutput {
public:
  void put(char c) {
    line.add(c);
    if (c == '\n' || line.size() >= 4096) flush();
  }
  void flush() {
    size_t done = 0;
    while (done < line.size()) {
      ssize_t n = write(STDOUT_FILENO, line.begin() + done, line.size() - done);
      if (n <= 0) break;
      done += n;
    }
    line.clear();
  }

private:
  kj::Vector<char> line;
};

int runVlapicKvm(int argc, char** argv) {
  Options options = parseOptions(argc, argv);

  // Files first: a bad path is the user's mistake whether or not KVM works.
  kj::Array<kj::byte> kernel;
  kj::Vector<BootModule> modules;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    kernel = readWholeFile(options.kernel);
    KJ_IF_MAYBE(initrd, options.initrd) {
      modules.add(BootModule{readWholeFile(*initrd), kj::str(*initrd)});
    }
  })) {
    fprintf(stderr, "vlapic-kvm: cannot load the kernel: %s\n", exception->getDescription().cStr());
    return kStatusUsage;
  }
  auto commandLine = kj::str(options.kernel, options.append.size() > 0 ? " " : "", options.append);

  kj::Maybe<KvmSystem> kvmSystem;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() { kvmSystem.emplace(); })) {
    fprintf(stderr, "vlapic-kvm: KVM is not available: %s\n",
            exception->getDescription().cStr());
    return kStatusNoKvm;
  }
  auto& kvm = KJ_ASSERT_NONNULL(kvmSystem);

  SerialOutput serial;
  Machine machine(kvm, options.machine, [&serial](char c) { serial.put(c); });

  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    machine.setBootState(loadMultiboot(machine.memory(), kernel, commandLine, modules));
  })) {
    fprintf(stderr, "vlapic-kvm: cannot load the kernel: %s\n", exception->getDescription().cStr());
    return kStatusUsage;
  }

  kj::Maybe<kj::Own<SpawnedVlapicd>> spawned;
  kj::Maybe<kj::Own<VlapicdBackend>> backendHolder;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    kj::String socket;
    if (options.spawn) {
      auto& child = *spawned.emplace(
          kj::heap<SpawnedVlapicd>(SpawnedVlapicd::findBinary(), spawnedVlapicdArguments()));
      socket = kj::str(child.socketPath());
    } else {
      KJ_IF_MAYBE(s, options.socket) socket = kj::str(*s);
      else socket = client::defaultSocketPath();
    }
    VlapicdVmSettings settings;
    settings.vcpuCount = options.machine.vcpuCount;
    settings.tscHz = machine.tscHz();
    settings.x2apic = options.machine.x2apic;
    settings.name = kj::str("vlapic-kvm ", options.kernel);
    settings.transport = options.transport;
    settings.pageReads = options.pageReads;
    settings.ioapic = options.ioapic;
    settings.ioapicVersion = options.ioapicVersion;
    // A freshly spawned vlapicd may create its socket a moment before it
    // accepts: retry briefly.
    for (int attempt = 0;; attempt++) {
      auto result = kj::runCatchingExceptions([&]() {
        backendHolder = kj::heap<VlapicdBackend>(socket, settings, machine);
      });
      if (result == nullptr) break;
      if (!options.spawn || attempt >= 50) kj::throwFatalException(kj::mv(KJ_ASSERT_NONNULL(result)));
      usleep(20'000);
    }
  })) {
    fprintf(stderr, "vlapic-kvm: cannot use vlapicd: %s\n", exception->getDescription().cStr());
    return kStatusBackendLost;
  }
  auto& backend = *KJ_ASSERT_NONNULL(backendHolder);
  backend.setGuestTscOffset(machine.measureGuestTscOffset());
  if (options.spawn && options.snapshotMs > 0) {
    // Our own vlapicd died: start another (the backend restores the VM).
    backend.enableRecovery([&]() -> kj::String {
      spawned = nullptr;  // reaps the dead one, removes its socket directory
      auto& child = *spawned.emplace(
          kj::heap<SpawnedVlapicd>(SpawnedVlapicd::findBinary(),
                                   spawnedVlapicdArguments()));
      return kj::str(child.socketPath());
    }, options.snapshotMs);
  }
  machine.attachApic(backend);

  auto exit = machine.run(options.timeoutMs);
  serial.flush();
  if (exit.kind != MachineExit::Kind::GUEST_EXIT) {
    fprintf(stderr, "vlapic-kvm: %s\n", exit.message.cStr());
  }
  return exit.processStatus();
}

}  // namespace
}  // namespace vlapic::kvm

int main(int argc, char** argv) {
  int status = vlapic::kvm::kStatusInternalError;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    status = vlapic::kvm::runVlapicKvm(argc, argv);
  })) {
    fprintf(stderr, "vlapic-kvm: %s\n", exception->getDescription().cStr());
    return vlapic::kvm::kStatusInternalError;
  }
  return status;
}
