// SPDX-License-Identifier: MIT
// vlapicctl: the operator's tool for a running vlapicd. It uses the server's
// admin capability (Service.admin), which anyone who can connect to the
// socket holds: listing, dumping, saving and restoring any front's VMs.
#include "client/lib/vlapic_client.h"
#include "server/core/dump.h"

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
#include <unistd.h>

#ifndef VLAPIC_VERSION
#define VLAPIC_VERSION "unknown"
#endif

namespace vlapic {
namespace {

using client::ThreadSession;

kj::String formatDuration(uint64_t ns) {
  uint64_t s = ns / 1'000'000'000ull;
  return kj::str(s / 3600, "h", (s / 60) % 60, "m", s % 60, "s");
}

kj::StringPtr runStateName(client::RunState state) {
  return state == client::RunState::WAIT_FOR_SIPI ? "wait-for-SIPI" : "running";
}

// Left-aligned column.
kj::String pad(kj::StringPtr text, size_t width) {
  if (text.size() >= width) return kj::str(text, " ");
  return kj::str(text, kj::repeat(' ', width - text.size()));
}

kj::String hex(uint64_t value) {
  char buffer[24];
  snprintf(buffer, sizeof(buffer), "0x%" PRIx64, value);
  return kj::heapString(buffer);
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

class Vlapicctl {
public:
  explicit Vlapicctl(kj::ProcessContext& context): context(context) {}

  kj::MainFunc getMain() {
    return kj::MainBuilder(context, "vlapicctl " VLAPIC_VERSION,
        "Inspects and controls a running vlapicd through its operator socket, the only place "
        "vlapicd serves the Admin capability (every VM on the server). Whoever can connect to "
        "that socket has this right; the front socket beside it does not give it.")
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
        .addSubCommand("save", KJ_BIND_METHOD(*this, saveMain), "Save a VM or a vCPU to a file.")
        .addSubCommand("restore", KJ_BIND_METHOD(*this, restoreMain),
            "Restore a VM or a vCPU from a file.")
        .addSubCommand("stats", KJ_BIND_METHOD(*this, statsMain),
            "Per-vCPU statistics of a VM, optionally refreshed live.")
        .build();
  }

private:
  kj::ProcessContext& context;
  kj::Maybe<kj::String> socketPath;
  kj::Maybe<kj::String> adminSocketPath;
  uint64_t vmId = 0;
  uint32_t vcpuIndex = 0;
  bool haveVcpu = false;
  kj::String file;
  double intervalSeconds = 1.0;
  uint32_t repeat = 1;

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
    if (*end != '\0' || intervalSeconds <= 0) return kj::str("not a positive number of seconds: ", text);
    return true;
  }
  kj::MainBuilder::Validity setRepeat(kj::StringPtr text) {
    char* end;
    repeat = strtoul(text.cStr(), &end, 10);
    if (*end != '\0' || repeat == 0) return kj::str("not a positive count: ", text);
    return true;
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
      context.exitError(kj::str("vlapicctl: ", e->getDescription()));
    }
    return true;
  }

  kj::MainFunc statusMain() {
    return kj::MainBuilder(context, "vlapicctl status", "Prints the server's status and totals.")
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto s = admin.status().wait(session.waitScope());
          context.exitInfo(kj::str(
              "vlapicd ", s.version, " (pid ", s.pid, ") at ", session.connection().socketPath(), "\n",
              "  uptime           ", formatDuration(s.uptimeNs), "\n",
              "  HAL              ", s.hal, " (", s.pagesInUse, " pages in use)\n",
              "  connections      ", s.connections, "\n",
              "  VMs / vCPUs      ", s.vms, " / ", s.vcpus, "\n",
              "  armed timers     ", s.armedTimers, "\n",
              "  events posted    ", s.totalEventsPosted, "\n",
              "  timer expiries   ", s.totalTimerExpiries, "\n",
              "  expiry fetches   ", s.channelLoopRequests, " served by the loop in ",
              s.channelLoopPolls, " polls, ", s.channelLoopSkipped, " skipped\n",
              "  timer polls      ",
              s.channelTimerPolls
                  ? kj::str("on: ", s.channelHintedPolls, " polls for ", s.channelHintsGiven,
                            " deadlines (", s.channelHintedWakeups, " woke the thread), ",
                            s.channelHintedRequests, " requests served")
                  : kj::str("off (vlapicd --channel-timer-polls)")));
        }); })
        .build();
  }

  kj::MainFunc listMain() {
    return kj::MainBuilder(context, "vlapicctl list", "Lists every VM and its vCPUs.")
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          auto vms = admin.listVms().wait(ws);
          kj::Vector<kj::String> lines;
          if (vms.size() == 0) lines.add(kj::str("no VMs"));
          for (auto& vm: vms) {
            lines.add(kj::str("VM ", vm.id, " \"", vm.name, "\": ", vm.vcpuCount, " vCPUs, owner connection ",
                              vm.owner, ", ", vm.eventsQueued, " events queued, ", vm.batchesInFlight,
                              " batches in flight"));
            lines.add(kj::str("  ", pad("vCPU", 6), pad("APIC ID", 10), pad("initial", 9), pad("BSP", 5),
                              pad("mode", 10), pad("run state", 15), pad("channel", 9), "timer"));
            auto handle = admin.openVm(vm.id, vm.vcpuCount);
            for (auto& v: handle->listVcpus().wait(ws)) {
              kj::String timer = kj::str("idle");
              KJ_IF_MAYBE(d, v.timerDeadlineNs) timer = kj::str("armed (deadline ", *d, " ns)");
              lines.add(kj::str("  ", pad(kj::str(v.index), 6), pad(hex(v.apicId), 10),
                                pad(hex(v.initialApicId), 9), pad(v.bsp ? "yes" : "no", 5),
                                pad(apicModeName(v.apicMode), 10), pad(runStateName(v.runState), 15),
                                pad(v.channelOpen ? "open" : "-", 9), timer));
            }
          }
          context.exitInfo(kj::strArray(lines, "\n"));
        }); })
        .build();
  }

  kj::MainFunc dumpMain() {
    return kj::MainBuilder(context, "vlapicctl dump",
        "Prints one vCPU's registers as the SDM names them: one row per register with its "
        "xAPIC offset, x2APIC MSR, raw value and decoded fields.")
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .expectArg("<vcpu>", KJ_BIND_METHOD(*this, setVcpu))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          auto vm = admin.openVm(vmId, vcpuIndex + 1);
          auto vcpu = vm->vcpu(vcpuIndex);
          auto info = vcpu->info().wait(ws);
          auto state = vcpu->save().wait(ws);
          auto interrupt = vcpu->interruptState().wait(ws);
          kj::String pending = kj::str("none");
          KJ_IF_MAYBE(p, interrupt.pendingVector) pending = hex(*p);
          kj::String timer = kj::str("idle");
          KJ_IF_MAYBE(d, info.timerDeadlineNs) timer = kj::str("armed, deadline ", *d, " ns (host monotonic)");
          context.exitInfo(kj::str(
              "VM ", vmId, " vCPU ", vcpuIndex, ": ", runStateName(info.runState),
              info.bsp ? ", BSP" : "", "\n",
              "IA32_APIC_BASE: ", decodeApicBase(ApicBaseValue(state.apicBase)), "\n",
              "pending interrupt: ", pending, "; timer: ", timer, "\n\n",
              dumpRegisters(state.view())));
        }); })
        .build();
  }

  kj::MainFunc saveMain() {
    return kj::MainBuilder(context, "vlapicctl save",
        "Saves a whole VM (every vCPU, the guest TSC, queued events), or with --vcpu one "
        "vCPU, to <file> (a packed Cap'n Proto VmState message).")
        .addOptionWithArg({"vcpu"}, KJ_BIND_METHOD(*this, setVcpu), "<index>", "Save only this vCPU.")
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .expectArg("<file>", KJ_BIND_METHOD(*this, setFile))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          auto vm = admin.openVm(vmId, haveVcpu ? vcpuIndex + 1 : 0);
          client::VmState state;
          if (haveVcpu) {
            state.vcpus = kj::heapArray<client::VcpuState>(1);
            state.vcpus[0] = vm->vcpu(vcpuIndex)->save().wait(ws);
          } else {
            state = vm->save().wait(ws);
          }
          writeFile(file, client::encodeVmState(state));
          context.exitInfo(kj::str("saved ", state.vcpus.size(), " vCPU(s) of VM ", vmId, " to ", file));
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
          auto vm = admin.openVm(vmId, haveVcpu ? vcpuIndex + 1 : state.vcpus.size());
          if (haveVcpu) {
            KJ_REQUIRE(state.vcpus.size() == 1, "--vcpu needs a file saved with --vcpu (one vCPU)",
                       state.vcpus.size());
            vm->vcpu(vcpuIndex)->restore(state.vcpus[0]).wait(ws);
          } else {
            vm->restore(state).wait(ws);
          }
          context.exitInfo(kj::str("restored ", state.vcpus.size(), " vCPU(s) of VM ", vmId, " from ", file));
        }); })
        .build();
  }

  kj::MainFunc statsMain() {
    return kj::MainBuilder(context, "vlapicctl stats",
        "Per-vCPU statistics of a VM: accesses per register, #GPs, ignored accesses, "
        "interrupts accepted/acknowledged/EOIed, IPIs, events posted and timer expiries. "
        "With --count N, refreshes N times every --interval seconds, showing the change "
        "since the previous sample.")
        .addOptionWithArg({'i', "interval"}, KJ_BIND_METHOD(*this, setInterval), "<seconds>",
            "Time between samples (default 1).")
        .addOptionWithArg({'n', "count"}, KJ_BIND_METHOD(*this, setRepeat), "<n>",
            "Number of samples (default 1: totals only).")
        .expectArg("<vm-id>", KJ_BIND_METHOD(*this, setVm))
        .callAfterParsing([this]() { return withServer([this](ThreadSession& session, client::AsyncAdmin& admin) {
          auto& ws = session.waitScope();
          auto vm = admin.openVm(vmId, 0);
          kj::Maybe<client::VmStats> previous;
          for (uint32_t sample = 0; sample < repeat; sample++) {
            if (sample > 0) {
              std::this_thread::sleep_for(std::chrono::duration<double>(intervalSeconds));
            }
            auto stats = vm->stats().wait(ws);
            auto text = formatStats(stats, previous);
            context.warning(text);
            previous = kj::mv(stats);
          }
        }); })
        .build();
  }

  kj::String formatStats(const client::VmStats& now, kj::Maybe<client::VmStats>& before) {
    // With a previous sample, every figure is the change since then.
    kj::Vector<kj::String> lines;
    bool live = before != nullptr;
    auto since = [&](uint64_t nowValue, uint64_t beforeValue) { return live ? nowValue - beforeValue : nowValue; };
    const client::VmStats* prev = nullptr;
    KJ_IF_MAYBE(b, before) prev = b;
    lines.add(kj::str("VM ", vmId, live ? " (change since previous sample)" : " (totals)", ": ",
                      since(now.eventsPosted, prev ? prev->eventsPosted : 0), " events in ",
                      since(now.batchesPosted, prev ? prev->batchesPosted : 0), " batches, ",
                      since(now.eventsCoalesced, prev ? prev->eventsCoalesced : 0), " coalesced, ",
                      since(now.timerExpiries, prev ? prev->timerExpiries : 0), " timer expiries, ",
                      since(now.msisDelivered, prev ? prev->msisDelivered : 0), " MSIs"));
    lines.add(kj::str("  ", pad("vCPU", 6), pad("reads", 10), pad("writes", 10), pad("#GP", 7),
                      pad("ignored", 9), pad("accepted", 10), pad("acked", 9), pad("EOIs", 9),
                      pad("IPIs", 8), pad("timer", 8), "events"));
    for (auto& v: now.vcpus) {
      const client::VcpuStats* p = prev && v.index < prev->vcpus.size() ? &prev->vcpus[v.index] : nullptr;
      auto d = [&](uint64_t client::VcpuStats::*field) {
        return kj::str(since(v.*field, p ? p->*field : 0));
      };
      lines.add(kj::str("  ", pad(kj::str(v.index), 6), pad(d(&client::VcpuStats::reads), 10),
                        pad(d(&client::VcpuStats::writes), 10), pad(d(&client::VcpuStats::gpFaults), 7),
                        pad(d(&client::VcpuStats::ignoredAccesses), 9),
                        pad(d(&client::VcpuStats::accepted), 10), pad(d(&client::VcpuStats::acknowledged), 9),
                        pad(d(&client::VcpuStats::eois), 9), pad(d(&client::VcpuStats::ipisSent), 8),
                        pad(d(&client::VcpuStats::timerExpiries), 8), d(&client::VcpuStats::eventsPosted)));
      std::map<uint16_t, uint64_t> earlier;
      if (p) for (auto& r: p->perRegister) earlier[uint16_t(r.reg)] = r.count;
      kj::Vector<kj::String> registers;
      for (auto& r: v.perRegister) {
        uint64_t count = since(r.count, earlier[uint16_t(r.reg)]);
        if (count == 0) continue;
        kj::StringPtr name = "reserved";
        KJ_IF_MAYBE(info, registerAtOffset(uint16_t(r.reg) << 4)) name = info->name;
        registers.add(kj::str(name, "=", count));
      }
      if (registers.size() > 0) lines.add(kj::str("        accesses: ", kj::strArray(registers, ", ")));
    }
    return kj::strArray(lines, "\n");
  }
};

}  // namespace
}  // namespace vlapic

KJ_MAIN(vlapic::Vlapicctl)
