// SPDX-License-Identifier: MIT
// vlapicctl: the operator's tool for a running vlapicd. It uses the server's
// admin capability (Service.admin), which anyone who can connect to the
// socket holds: listing, dumping, saving and restoring any front's VMs.
#include "client/ctl/output.h"
#include "client/lib/vlapic_client.h"
#include "schema/exit_status.h"

#include <kj/debug.h>
#include <kj/main.h>
#include <kj/io.h>

#include <cerrno>
#include <cinttypes>
#include <cstdlib>
#include <fcntl.h>
#include <thread>
#include <chrono>
#include <map>
#include <time.h>
#include <unistd.h>

#ifndef VLAPIC_VERSION
#define VLAPIC_VERSION "unknown"
#endif

namespace vlapic {
namespace {

using client::ThreadSession;

uint64_t monotonicNs() {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return uint64_t(now.tv_sec) * 1'000'000'000ull + now.tv_nsec;
}

// One document or frame on stdout (kj::ProcessContext::exitInfo would end
// the program; stats and top print several).
void printOut(kj::StringPtr text) {
  kj::FdOutputStream out(STDOUT_FILENO);
  out.write(text.begin(), text.size());
  out.write("\n", 1);
}

kj::Array<kj::byte> readFile(kj::StringPtr path) {
  int fd;
  KJ_SYSCALL(fd = open(path.cStr(), O_RDONLY | O_CLOEXEC), path);
  kj::FdInputStream input{kj::AutoCloseFd(fd)};
  return input.readAllBytes();
}

void writeFile(kj::StringPtr path, kj::ArrayPtr<const kj::byte> bytes) {
  int fd;
  KJ_SYSCALL(fd = open(path.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), path);
  kj::FdOutputStream output{kj::AutoCloseFd(fd)};
  output.write(bytes.begin(), bytes.size());
}

constexpr const char* kJsonHelp =
    "Print one JSON object on one line instead of text. Field names are stable; see "
    "'vlapicctl --help' and vlapicctl(1).";

class Vlapicctl {
public:
  explicit Vlapicctl(ExitStatusContext& context): context(context) {}

  kj::MainFunc getMain() {
    description = kj::str(
        "Inspects and controls a running vlapicd through its operator socket, the only place "
        "vlapicd serves the Admin capability (every VM on the server). Whoever can connect to "
        "that socket has this right; the front socket beside it does not give it. -h or "
        "--help after any command explains it.\n"
        "--json (status, list, dump, ioapic, stats) prints one JSON object per line. Its fields: "
        "status: version pid socket uptime_ns hal pages_in_use connections vms vcpus "
        "armed_timers events_posted timer_expiries channel_loop_requests channel_loop_polls "
        "channel_loop_skipped channel_timer_polls channel_hints_given channel_hinted_polls "
        "channel_hinted_wakeups channel_hinted_requests channel_request_timer_fires. "
        "list: vms[] of id name vcpu_count owner_connection created_ns events_queued "
        "batches_in_flight vcpus[] (index apic_id initial_apic_id bsp mode run_state "
        "channel_open timer_deadline_ns, null when idle). "
        "dump: vm vcpu run_state bsp mode apic_base apic_base_decoded pending_vector (null: "
        "none) tpr ppr timer_deadline_ns registers[] (name offset msr raw decoded, as the "
        "text table's cells) ioapic (the VM's I/O APIC as ioapic's document without vm; null "
        "from a vlapicd that reports none). "
        "ioapic: vm present (false: the VM has no I/O APIC in vlapicd, nothing else follows) "
        "base id version ioregsel pins[] (pin level (true: wire high) asserted pending_edge "
        "entry (hex string) decoded vector delivery_mode (Fixed LowestPriority SMI NMI INIT "
        "ExtINT reserved) destination_mode (physical logical) delivery_status (idle pending) "
        "polarity (high low) remote_irr trigger (edge level) masked destination (bits 14:8 "
        "from the extended destination ID) assertions messages eois redeliveries coalesced). "
        "stats: vm sampled_ns (vlapicctl's monotonic clock) events_posted batches_posted "
        "events_coalesced timer_expiries msis_delivered vcpus[] (index reads writes "
        "gp_faults ignored_accesses accepted acknowledged eois ipis_sent timer_expiries "
        "events_posted registers[] of name offset count); always totals, one line per "
        "sample. Numbers are integers unless named otherwise; fields are only ever added.\n",
        exitStatusHelp(", 3 cannot reach vlapicd (or lost the connection), 4 no such VM or vCPU"));
    return kj::MainBuilder(context, "vlapicctl " VLAPIC_VERSION, description)
        .addOptionWithArg({'s', "socket"}, KJ_BIND_METHOD(*this, setSocket), "<path>",
            "vlapicd's front socket; the operator socket used is the one beside it "
            "(<name>-admin.sock for <name>.sock). Default: $XDG_RUNTIME_DIR/vlapic/vlapicd.sock, "
            "or /run/vlapic/vlapicd.sock when XDG_RUNTIME_DIR is unset.")
        .addOptionWithArg({'a', "admin-socket"}, KJ_BIND_METHOD(*this, setAdminSocket), "<path>",
            "vlapicd's operator socket, when it is not beside the front socket "
            "(vlapicd --admin-socket).")
        .addSubCommand("status", KJ_BIND_METHOD(*this, statusMain), "Server status and totals.")
        .addSubCommand("list", KJ_BIND_METHOD(*this, listMain), "VMs and their vCPUs.")
        .addSubCommand("dump", KJ_BIND_METHOD(*this, dumpMain),
            "A vCPU's registers, decoded by name.")
        .addSubCommand("ioapic", KJ_BIND_METHOD(*this, ioapicMain),
            "A VM's I/O APIC: pin levels, remote IRR, redirection entries, per-pin counters.")
        .addSubCommand("save", KJ_BIND_METHOD(*this, saveMain), "Save a VM or a vCPU to a file.")
        .addSubCommand("restore", KJ_BIND_METHOD(*this, restoreMain),
            "Restore a VM or a vCPU from a file.")
        .addSubCommand("stats", KJ_BIND_METHOD(*this, statsMain),
            "Per-vCPU statistics of a VM, optionally refreshed live.")
        .addSubCommand("top", KJ_BIND_METHOD(*this, topMain),
            "Live per-VM and per-vCPU rates of accesses, IPIs, timer expiries and events.")
        .build();
  }

private:
  ExitStatusContext& context;
  kj::String description;   // MainBuilder keeps a StringPtr
  kj::Maybe<kj::String> socketPath;
  kj::Maybe<kj::String> adminSocketPath;
  uint64_t vmId = 0;
  uint32_t vcpuIndex = 0;
  bool haveVcpu = false;
  client::X2apicIdLayout idLayout = client::X2apicIdLayout::THIRTY_TWO_BIT;  // save
  kj::String file;
  double intervalSeconds = 1.0;
  uint32_t repeat = 1;
  bool forever = true;    // top without --count or --once
  bool json = false;

  kj::MainBuilder::Validity setSocket(kj::StringPtr path) {
    socketPath = kj::heapString(path);
    return true;
  }
  kj::MainBuilder::Validity setAdminSocket(kj::StringPtr path) {
    adminSocketPath = kj::heapString(path);
    return true;
  }
  kj::MainBuilder::Validity setVm(kj::StringPtr text) {
    char* end;
    vmId = strtoull(text.cStr(), &end, 0);
    if (*end != '\0' || text.size() == 0) return kj::str("not a VM id: ", text);
    return true;
  }
  kj::MainBuilder::Validity setVcpu(kj::StringPtr text) {
    char* end;
    unsigned long v = strtoul(text.cStr(), &end, 0);
    if (*end != '\0' || text.size() == 0 || v > 0xFFFFFFFFul) return kj::str("not a vCPU index: ", text);
    vcpuIndex = v;
    haveVcpu = true;
    return true;
  }
  kj::MainBuilder::Validity setFile(kj::StringPtr text) {
    file = kj::heapString(text);
    return true;
  }
  kj::MainBuilder::Validity setInterval(kj::StringPtr text) {
    char* end;
    intervalSeconds = strtod(text.cStr(), &end);
    if (*end != '\0' || !(intervalSeconds > 0)) return kj::str("not a positive number of seconds: ", text);
    return true;
  }
  kj::MainBuilder::Validity setRepeat(kj::StringPtr text) {
    char* end;
    repeat = strtoul(text.cStr(), &end, 10);
    if (*end != '\0' || repeat == 0) return kj::str("not a positive count: ", text);
    forever = false;
    return true;
  }
  kj::MainBuilder::Validity setOnce() {
    repeat = 1;
    forever = false;
    return true;
  }
  kj::MainBuilder::Validity setJson() {
    json = true;
    return true;
  }

  // A lost or refused connection is the one failure a script may want to
  // retry, so it has its own status.
  static ExitStatus statusFor(const kj::Exception& e) {
    return e.getType() == kj::Exception::Type::DISCONNECTED ? ExitStatus::NO_SERVER : ExitStatus::FAILED;
  }

  // Runs `body` against the server; any failure (server absent, VM gone,
  // rejected state) ends the tool with a clear one-line message.
  kj::MainBuilder::Validity withServer(kj::Function<void(ThreadSession&, client::AsyncAdmin&)> body) {
    auto frontPath = socketPath.map([](kj::String& p) { return kj::heapString(p); })
                         .orDefault([]() { return client::defaultSocketPath(); });
    auto path = adminSocketPath.map([](kj::String& p) { return kj::heapString(p); })
                    .orDefault([&]() { return client::adminSocketPathFor(frontPath); });
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
      auto session = ThreadSession::open(path);
      auto admin = session->connection().admin();
      body(*session, *admin);
    })) {
      context.exitWith(statusFor(*e), kj::str("vlapicctl: ", e->getDescription()));
    }
    return true;
  }

  // The VM's summary, checked before use so that a mistyped VM id or vCPU
  // index exits NOT_FOUND rather than with whatever the server says.
  client::VmInfo findVm(ThreadSession& session, client::AsyncAdmin& admin, kj::Maybe<uint32_t> vcpu) {
    for (auto& vm: admin.listVms().wait(session.waitScope())) {
      if (vm.id != vmId) continue;
      KJ_IF_MAYBE(v, vcpu) {
        if (*v >= vm.vcpuCount) {
          context.exitWith(ExitStatus::NOT_FOUND,
              kj::str("vlapicctl: VM ", vmId, " has no vCPU ", *v, " (it has ", vm.vcpuCount, ")"));
        }
      }
      return kj::mv(vm);
    }
    context.exitWith(ExitStatus::NOT_FOUND, kj::str("vlapicctl: no VM with id ", vmId,
                                                     " (vlapicctl list shows the VMs)"));
  }

  kj::MainFunc statusMain() {
    return kj::MainBuilder(context, "vlapicctl status", "Prints the server's status and totals.")
        .addOption({"json"}, KJ_BIND_METHOD(*this, setJson), kJsonHelp)
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto s = admin.status().wait(session.waitScope());
          auto socket = session.connection().socketPath();
          context.exitInfo(json ? ctl::statusJson(s, socket) : ctl::statusText(s, socket));
        }); })
        .build();
  }

  kj::MainFunc listMain() {
    return kj::MainBuilder(context, "vlapicctl list", "Lists every VM and its vCPUs.")
        .addOption({"json"}, KJ_BIND_METHOD(*this, setJson), kJsonHelp)
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          kj::Vector<ctl::VmListing> listings;
          for (auto& vm: admin.listVms().wait(ws)) {
            auto vcpus = admin.openVm(vm.id, vm.vcpuCount)->listVcpus().wait(ws);
            listings.add(ctl::VmListing{kj::mv(vm), kj::mv(vcpus)});
          }
          context.exitInfo(json ? ctl::listJson(listings) : ctl::listText(listings));
        }); })
        .build();
  }

  kj::MainFunc dumpMain() {
    return kj::MainBuilder(context, "vlapicctl dump",
        "Prints one vCPU's registers as the SDM names them: one row per register with its "
        "xAPIC offset, x2APIC MSR, raw value and decoded fields; then the VM's I/O APIC: "
        "ID, version, IOREGSEL and each pin's wire level and redirection entry, decoded by "
        "name (vector, delivery mode, destination mode, delivery status, polarity, remote "
        "IRR, trigger, mask, destination).")
        .addOption({"json"}, KJ_BIND_METHOD(*this, setJson), kJsonHelp)
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .expectArg("<vcpu>", KJ_BIND_METHOD(*this, setVcpu))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          findVm(session, admin, vcpuIndex);
          auto vm = admin.openVm(vmId, vcpuIndex + 1);
          auto vcpu = vm->vcpu(vcpuIndex);
          ctl::VcpuDump dump{vmId, vcpu->info().wait(ws), vcpu->save().wait(ws),
                             vcpu->interruptState().wait(ws), ioapicOf(*vm, ws)};
          context.exitInfo(json ? ctl::dumpJson(dump) : ctl::dumpText(dump));
        }); })
        .build();
  }

  // The VM's I/O APIC, or nullptr from a vlapicd without Vm.ioapic: a
  // dump of such a server's vCPU is still worth having.
  static kj::Maybe<client::IoApicStatus> ioapicOf(client::AsyncVm& vm, kj::WaitScope& ws) {
    kj::Maybe<client::IoApicStatus> status;
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { status = vm.ioapic().wait(ws); })) {
      if (e->getType() != kj::Exception::Type::UNIMPLEMENTED) kj::throwFatalException(kj::mv(*e));
    }
    return status;
  }

  kj::MainFunc ioapicMain() {
    return kj::MainBuilder(context, "vlapicctl ioapic",
        "Prints a VM's I/O APIC in vlapicd: its base, ID, version and IOREGSEL, and per pin "
        "the wire's level, whether the entry's polarity makes that asserted, an edge "
        "pending for an unmask, remote IRR, the redirection entry, and the counters of "
        "assertions, messages sent, EOIs, redeliveries and coalesced assertions. A VM "
        "without one (its front emulates its own) says so and exits 0. 'vlapicctl dump' "
        "decodes the entries by name.")
        .addOption({"json"}, KJ_BIND_METHOD(*this, setJson), kJsonHelp)
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          findVm(session, admin, nullptr);
          auto status = admin.openVm(vmId, 0)->ioapic().wait(ws);
          context.exitInfo(json ? ctl::ioapicJson(vmId, status) : ctl::ioapicText(vmId, status));
        }); })
        .build();
  }

  // What a save or restore covered, for its one-line report.
  static kj::String coverage(const client::VmState& state) {
    return kj::str(state.vcpus.size(), " vCPU(s)", state.ioapic == nullptr ? "" : " and the I/O APIC");
  }

  kj::MainFunc saveMain() {
    return kj::MainBuilder(context, "vlapicctl save",
        "Saves a whole VM (every vCPU, the guest TSC, queued events, its I/O APIC), or with --vcpu one "
        "vCPU, to <file> (a packed Cap'n Proto VmState message).")
        .addOptionWithArg({"vcpu"}, KJ_BIND_METHOD(*this, setVcpu), "<index>", "Save only this vCPU.")
        .addOption({"legacy-x2apic-ids"}, [this]() { idLayout = client::X2apicIdLayout::LEGACY; return true; },
                   "Write x2APIC vCPUs' IDs in KVM's legacy layout (no KVM_X2APIC_API_USE_32BIT_IDS).")
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .expectArg("<file>", KJ_BIND_METHOD(*this, setFile))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          findVm(session, admin, haveVcpu ? kj::Maybe<uint32_t>(vcpuIndex) : nullptr);
          auto vm = admin.openVm(vmId, haveVcpu ? vcpuIndex + 1 : 0);
          client::VmState state;
          if (haveVcpu) {
            state.vcpus = kj::heapArray<client::VcpuState>(1);
            state.vcpus[0] = vm->vcpu(vcpuIndex)->save(idLayout).wait(ws);
          } else {
            state = vm->save(idLayout).wait(ws);
          }
          writeFile(file, client::encodeVmState(state));
          context.exitInfo(kj::str("saved ", coverage(state), " of VM ", vmId, " to ", file));
        }); })
        .build();
  }

  kj::MainFunc restoreMain() {
    return kj::MainBuilder(context, "vlapicctl restore",
        "Restores a VM from <file> (written by save), or with --vcpu one vCPU from a file "
        "holding a single vCPU. The server validates everything first: a rejected file "
        "leaves the VM unchanged.")
        .addOptionWithArg({"vcpu"}, KJ_BIND_METHOD(*this, setVcpu), "<index>", "Restore only this vCPU.")
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .expectArg("<file>", KJ_BIND_METHOD(*this, setFile))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          auto state = client::decodeVmState(readFile(file));
          findVm(session, admin, haveVcpu ? kj::Maybe<uint32_t>(vcpuIndex) : nullptr);
          auto vm = admin.openVm(vmId, haveVcpu ? vcpuIndex + 1 : state.vcpus.size());
          if (haveVcpu) {
            KJ_REQUIRE(state.vcpus.size() == 1, "--vcpu needs a file saved with --vcpu (one vCPU)",
                       state.vcpus.size());
            vm->vcpu(vcpuIndex)->restore(state.vcpus[0]).wait(ws);
          } else {
            vm->restore(state).wait(ws);
          }
          // --vcpu restores that vCPU alone, whatever else the file holds.
          context.exitInfo(kj::str("restored ", haveVcpu ? kj::str("1 vCPU(s)") : coverage(state), " of VM ",
                                   vmId, " from ", file));
        }); })
        .build();
  }

  void sleepInterval() {
    std::this_thread::sleep_for(std::chrono::duration<double>(intervalSeconds));
  }

  kj::MainFunc statsMain() {
    return kj::MainBuilder(context, "vlapicctl stats",
        "Per-vCPU statistics of a VM: accesses per register, #GPs, ignored accesses, "
        "interrupts accepted/acknowledged/EOIed, IPIs, events posted and timer expiries. "
        "With --count N, refreshes N times every --interval seconds, showing the change "
        "since the previous sample (with --json: N lines of totals).")
        .addOptionWithArg({'i', "interval"}, KJ_BIND_METHOD(*this, setInterval), "<seconds>",
            "Time between samples (default 1).")
        .addOptionWithArg({'n', "count"}, KJ_BIND_METHOD(*this, setRepeat), "<n>",
            "Number of samples (default 1: totals only).")
        .addOption({"json"}, KJ_BIND_METHOD(*this, setJson), kJsonHelp)
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          findVm(session, admin, nullptr);
          auto vm = admin.openVm(vmId, 0);
          kj::Maybe<client::VmStats> previous;
          for (uint32_t sample = 0; sample < repeat; sample++) {
            if (sample > 0) sleepInterval();
            auto stats = vm->stats().wait(ws);
            printOut(json ? ctl::statsJson(vmId, stats, monotonicNs()) : ctl::statsText(vmId, stats, previous));
            previous = kj::mv(stats);
          }
        }); })
        .build();
  }

  kj::MainFunc topMain() {
    return kj::MainBuilder(context, "vlapicctl top",
        "A live view of every VM and each of its vCPUs: accesses (register reads and "
        "writes), IPIs sent, timer expiries, events posted, interrupts accepted, EOIs and "
        "#GPs, each per second over the last interval, one row per VM (all) and per vCPU. "
        "On a terminal the frame is redrawn in place until interrupted; otherwise, or with "
        "--count/--once, frames follow each other. A frame needs two samples, so the first "
        "comes one interval after the start.")
        .addOptionWithArg({'i', "interval"}, KJ_BIND_METHOD(*this, setInterval), "<seconds>",
            "Time between frames (default 1).")
        .addOptionWithArg({'n', "count"}, KJ_BIND_METHOD(*this, setRepeat), "<n>",
            "Stop after <n> frames (default: run until interrupted).")
        .addOption({"once"}, KJ_BIND_METHOD(*this, setOnce), "One frame, then exit (--count 1).")
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          runTop(session, admin);
        }); })
        .build();
  }

  // Every VM's stats, by id. A VM released between the listing and its
  // stats call is left out of the sample.
  std::map<uint64_t, std::pair<client::VmInfo, client::VmStats>> sampleAll(
      ThreadSession& session, client::AsyncAdmin& admin) {
    auto& ws = session.waitScope();
    std::map<uint64_t, std::pair<client::VmInfo, client::VmStats>> sample;
    for (auto& vm: admin.listVms().wait(ws)) {
      auto id = vm.id;
      KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
        auto stats = admin.openVm(id, 0)->stats().wait(ws);
        sample.emplace(id, std::make_pair(kj::mv(vm), kj::mv(stats)));
      })) {
        if (e->getType() == kj::Exception::Type::DISCONNECTED) kj::throwFatalException(kj::mv(*e));
      }
    }
    return sample;
  }

  void runTop(ThreadSession& session, client::AsyncAdmin& admin) {
    // Redraw in place only for a person watching; a pipe gets plain frames.
    bool terminal = isatty(STDOUT_FILENO);
    auto previous = sampleAll(session, admin);
    uint64_t previousNs = monotonicNs();
    for (uint32_t frame = 0; forever || frame < repeat; frame++) {
      sleepInterval();
      auto status = admin.status().wait(session.waitScope());
      auto current = sampleAll(session, admin);
      uint64_t nowNs = monotonicNs();
      kj::Vector<ctl::TopVm> rows;
      for (auto& entry: current) {
        kj::Maybe<const client::VmStats&> before;
        auto earlier = previous.find(entry.first);
        if (earlier != previous.end()) before = earlier->second.second;
        rows.add(ctl::TopVm{kj::mv(entry.second.first), kj::mv(entry.second.second), before});
      }
      auto text = ctl::topFrame(status, rows, double(nowNs - previousNs) / 1e9);
      printOut(terminal ? kj::str("\x1b[H\x1b[2J", text) : kj::str(text, forever || frame + 1 < repeat ? "\n" : ""));
      // Keep this sample's stats for the next frame's differences.
      previous.clear();
      for (auto& row: rows) {
        auto id = row.vm.id;
        previous.emplace(id, std::make_pair(kj::mv(row.vm), kj::mv(row.now)));
      }
      previousNs = nowNs;
    }
  }
};

}  // namespace
}  // namespace vlapic

int main(int argc, char* argv[]) {
  vlapic::ExitStatusContext context(argv[0]);
  vlapic::spellHelpOption(argc, argv);
  vlapic::Vlapicctl tool(context);
  return kj::runMainAndExit(context, tool.getMain(), argc, argv);
}
