// SPDX-License-Identifier: MIT
#include "client/ctl/output.h"
#include "client/ctl/json.h"
#include "schema/model/dump.h"
#include "schema/model/ioapic.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <cinttypes>
#include <cstdio>
#include <map>

namespace vlapic::ctl {
namespace {

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

kj::StringPtr registerName(Reg reg) {
  KJ_IF_MAYBE(info, registerAtOffset(uint16_t(reg) << 4)) return info->name;
  return "reserved";
}

// Fixed width, upper case, as the register table prints its raw cells.
kj::String hexDigits(uint64_t value, int digits) {
  char buffer[24];
  snprintf(buffer, sizeof(buffer), "0x%0*" PRIX64, digits, value);
  return kj::heapString(buffer);
}

kj::StringPtr wireName(bool high) { return high ? "high" : "low"; }
kj::StringPtr yesNo(bool flag) { return flag ? "yes" : "no"; }

// "I/O APIC at 0xFEC00000: ID 0, version 0x11, IOREGSEL 0x10", or why
// there is none.
kj::String ioapicHeading(const client::IoApicStatus& s) {
  if (!s.present) return kj::str("I/O APIC: none in vlapicd (the VM's front has its own)");
  return kj::str("I/O APIC at ", hexDigits(s.base, 8), ": ID ", s.id, ", version ", hexDigits(s.version, 2),
                 ", IOREGSEL ", hexDigits(s.ioregsel, 2));
}

// The redirection table with each pin's wire, decoded by name.
kj::String ioapicTable(const client::IoApicStatus& s) {
  kj::Vector<kj::String> lines;
  lines.add(ioapicHeading(s));
  if (!s.present) return kj::strArray(lines, "\n");
  lines.add(kj::str("  ", pad("pin", 5), pad("wire", 6), pad("entry", 20), "decoded"));
  for (auto& pin: s.pins) {
    lines.add(kj::str("  ", pad(kj::str(pin.pin), 5), pad(wireName(pin.level), 6),
                      pad(hexDigits(pin.entry, 16), 20), formatRedirectionEntry(pin.entry)));
  }
  return kj::strArray(lines, "\n");
}

// The members of an I/O APIC object, shared by dump --json ("ioapic") and
// ioapic --json so that the two never describe a pin differently.
void ioapicMembers(JsonWriter& json, const client::IoApicStatus& s) {
  json.field("present", s.present);
  if (!s.present) return;
  json.field("base", s.base)
      .field("id", uint32_t(s.id))
      .field("version", uint32_t(s.version))
      .field("ioregsel", uint32_t(s.ioregsel))
      .key("pins").beginArray();
  for (auto& pin: s.pins) {
    auto f = decodeRedirection(pin.entry);
    json.beginObject()
        .field("pin", uint32_t(pin.pin))
        .field("level", pin.level)
        .field("asserted", pin.asserted)
        .field("pending_edge", pin.pendingEdge)
        // A string, as the register table's raw cells: a parser that holds
        // numbers as doubles would round the destination bits away.
        .field("entry", hexDigits(pin.entry, 16).asPtr())
        .field("decoded", formatRedirectionEntry(pin.entry).asPtr())
        .field("vector", uint32_t(f.vector))
        .field("delivery_mode", f.deliveryMode)
        .field("destination_mode", f.destinationMode)
        .field("delivery_status", f.deliveryStatus)
        .field("polarity", f.polarity)
        .field("remote_irr", f.remoteIrr)
        .field("trigger", f.trigger)
        .field("masked", f.masked)
        .field("destination", uint32_t(f.destination))
        .field("assertions", pin.stats.assertions)
        .field("messages", pin.stats.messages)
        .field("eois", pin.stats.eois)
        .field("redeliveries", pin.stats.redeliveries)
        .field("coalesced", pin.stats.coalesced)
        .endObject();
  }
  json.endArray();
}

}  // namespace

RedirectionFields decodeRedirection(uint64_t entry) {
  // Datasheet 3.2.4: 011 and 110 are reserved; 001 is "Lowest Priority".
  static const char* const kModes[8] = {"Fixed", "LowestPriority", "SMI", "reserved",
                                        "NMI", "INIT", "reserved", "ExtINT"};
  RedirectionFields f;
  f.vector = entry & rte::kVectorMask;
  f.deliveryMode = kModes[(entry >> rte::kDeliveryModeShift) & 7];
  f.destinationMode = entry & rte::kLogicalDestination ? "logical" : "physical";
  f.deliveryStatus = entry & rte::kDeliveryStatus ? "pending" : "idle";
  f.polarity = entry & rte::kActiveLow ? "low" : "high";
  f.remoteIrr = entry & rte::kRemoteIrr;
  f.trigger = entry & rte::kLevelTriggered ? "level" : "edge";
  f.masked = entry & rte::kMasked;
  f.destination = uint16_t((entry >> rte::kDestinationShift) & 0xFF) |
                  uint16_t(((entry >> rte::kExtendedDestinationShift) & 0x7F) << 8);
  return f;
}

kj::String formatRedirectionEntry(uint64_t entry) {
  auto f = decodeRedirection(entry);
  return kj::str("vector ", hexDigits(f.vector, 2), ", delivery ", f.deliveryMode, ", dest mode ",
                 f.destinationMode, ", status ", f.deliveryStatus, ", polarity ", f.polarity,
                 ", remote IRR ", f.remoteIrr ? 1 : 0, ", trigger ", f.trigger,
                 f.masked ? ", masked" : ", unmasked", ", destination ",
                 hexDigits(f.destination, f.destination > 0xFF ? 4 : 2));
}

kj::String statusText(const client::ServerStatus& s, kj::StringPtr socketPath) {
  return kj::str(
      "vlapicd ", s.version, " (pid ", s.pid, ") at ", socketPath, "\n",
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
          : kj::str("off (vlapicd --channel-timer-polls)"));
}

kj::String statusJson(const client::ServerStatus& s, kj::StringPtr socketPath) {
  JsonWriter json;
  json.beginObject()
      .field("version", s.version.asPtr())
      .field("pid", s.pid)
      .field("socket", socketPath)
      .field("uptime_ns", s.uptimeNs)
      .field("hal", s.hal.asPtr())
      .field("pages_in_use", s.pagesInUse)
      .field("connections", s.connections)
      .field("vms", s.vms)
      .field("vcpus", s.vcpus)
      .field("armed_timers", s.armedTimers)
      .field("events_posted", s.totalEventsPosted)
      .field("timer_expiries", s.totalTimerExpiries)
      .field("channel_loop_requests", s.channelLoopRequests)
      .field("channel_loop_polls", s.channelLoopPolls)
      .field("channel_loop_skipped", s.channelLoopSkipped)
      .field("channel_timer_polls", s.channelTimerPolls)
      .field("channel_hints_given", s.channelHintsGiven)
      .field("channel_hinted_polls", s.channelHintedPolls)
      .field("channel_hinted_wakeups", s.channelHintedWakeups)
      .field("channel_hinted_requests", s.channelHintedRequests)
      .field("channel_request_timer_fires", s.channelRequestTimerFires)
      .endObject();
  return json.finish();
}

kj::String listText(kj::ArrayPtr<const VmListing> vms) {
  kj::Vector<kj::String> lines;
  if (vms.size() == 0) lines.add(kj::str("no VMs"));
  for (auto& listing: vms) {
    auto& vm = listing.vm;
    lines.add(kj::str("VM ", vm.id, " \"", vm.name, "\": ", vm.vcpuCount, " vCPUs, owner connection ",
                      vm.owner, ", ", vm.eventsQueued, " events queued, ", vm.batchesInFlight,
                      " batches in flight"));
    lines.add(kj::str("  ", pad("vCPU", 6), pad("APIC ID", 10), pad("initial", 9), pad("BSP", 5),
                      pad("mode", 10), pad("run state", 15), pad("channel", 9), "timer"));
    for (auto& v: listing.vcpus) {
      kj::String timer = kj::str("idle");
      KJ_IF_MAYBE(d, v.timerDeadlineNs) timer = kj::str("armed (deadline ", *d, " ns)");
      lines.add(kj::str("  ", pad(kj::str(v.index), 6), pad(hex(v.apicId), 10),
                        pad(hex(v.initialApicId), 9), pad(v.bsp ? "yes" : "no", 5),
                        pad(apicModeName(v.apicMode), 10), pad(runStateName(v.runState), 15),
                        pad(v.channelOpen ? "open" : "-", 9), timer));
    }
  }
  return kj::strArray(lines, "\n");
}

kj::String listJson(kj::ArrayPtr<const VmListing> vms) {
  JsonWriter json;
  json.beginObject().key("vms").beginArray();
  for (auto& listing: vms) {
    auto& vm = listing.vm;
    json.beginObject()
        .field("id", vm.id)
        .field("name", vm.name.asPtr())
        .field("vcpu_count", vm.vcpuCount)
        .field("owner_connection", vm.owner)
        .field("created_ns", vm.createdNs)
        .field("events_queued", vm.eventsQueued)
        .field("batches_in_flight", vm.batchesInFlight)
        .key("vcpus").beginArray();
    for (auto& v: listing.vcpus) {
      json.beginObject()
          .field("index", v.index)
          .field("apic_id", v.apicId)
          .field("initial_apic_id", v.initialApicId)
          .field("bsp", v.bsp)
          .field("mode", apicModeName(v.apicMode))
          .field("run_state", runStateName(v.runState))
          .field("channel_open", v.channelOpen)
          .field("timer_deadline_ns", v.timerDeadlineNs)
          .endObject();
    }
    json.endArray().endObject();
  }
  json.endArray().endObject();
  return json.finish();
}

kj::String dumpText(const VcpuDump& d) {
  kj::String pending = kj::str("none");
  KJ_IF_MAYBE(p, d.interrupt.pendingVector) pending = hex(*p);
  kj::String timer = kj::str("idle");
  KJ_IF_MAYBE(t, d.info.timerDeadlineNs) timer = kj::str("armed, deadline ", *t, " ns (host monotonic)");
  return kj::str(
      "VM ", d.vmId, " vCPU ", d.info.index, ": ", runStateName(d.info.runState),
      d.info.bsp ? ", BSP" : "", "\n",
      "IA32_APIC_BASE: ", decodeApicBase(ApicBaseValue(d.state.apicBase)), "\n",
      "pending interrupt: ", pending, "; timer: ", timer, "\n\n",
      dumpRegisters(d.state.view()),
      d.ioapic.map([](const client::IoApicStatus& s) { return kj::str("\n", ioapicTable(s)); })
          .orDefault([]() { return kj::String(); }));
}

kj::String dumpJson(const VcpuDump& d) {
  JsonWriter json;
  json.beginObject()
      .field("vm", d.vmId)
      .field("vcpu", d.info.index)
      .field("run_state", runStateName(d.info.runState))
      .field("bsp", d.info.bsp)
      .field("mode", apicModeName(d.info.apicMode))
      .field("apic_base", d.state.apicBase)
      .field("apic_base_decoded", decodeApicBase(ApicBaseValue(d.state.apicBase)).asPtr())
      .key("pending_vector");
  KJ_IF_MAYBE(p, d.interrupt.pendingVector) {
    json.value(uint32_t(*p));
  } else {
    json.null();
  }
  json.field("tpr", uint32_t(d.interrupt.tpr))
      .field("ppr", uint32_t(d.interrupt.ppr))
      .field("timer_deadline_ns", d.info.timerDeadlineNs)
      .key("registers").beginArray();
  for (auto& row: dumpRows(d.state.view())) {
    json.beginObject()
        .field("name", row.name.asPtr())
        .field("offset", row.offset.asPtr())
        .field("msr", row.msr.asPtr())
        .field("raw", row.raw.asPtr())
        .field("decoded", row.decoded.asPtr())
        .endObject();
  }
  json.endArray().key("ioapic");
  KJ_IF_MAYBE(s, d.ioapic) {
    json.beginObject();
    ioapicMembers(json, *s);
    json.endObject();
  } else {
    json.null();
  }
  json.endObject();
  return json.finish();
}

kj::String ioapicText(uint64_t vmId, const client::IoApicStatus& s) {
  kj::Vector<kj::String> lines;
  lines.add(kj::str("VM ", vmId, " ", ioapicHeading(s)));
  if (!s.present) return kj::strArray(lines, "\n");
  lines.add(kj::str("  ", pad("pin", 5), pad("wire", 6), pad("asserted", 10), pad("pending", 9),
                    pad("remote IRR", 12), pad("entry", 20), pad("assertions", 12), pad("messages", 10),
                    pad("EOIs", 8), pad("redeliveries", 14), "coalesced"));
  for (auto& pin: s.pins) {
    lines.add(kj::str("  ", pad(kj::str(pin.pin), 5), pad(wireName(pin.level), 6),
                      pad(yesNo(pin.asserted), 10), pad(yesNo(pin.pendingEdge), 9),
                      pad(pin.entry & rte::kRemoteIrr ? "1" : "0", 12), pad(hexDigits(pin.entry, 16), 20),
                      pad(kj::str(pin.stats.assertions), 12), pad(kj::str(pin.stats.messages), 10),
                      pad(kj::str(pin.stats.eois), 8), pad(kj::str(pin.stats.redeliveries), 14),
                      pin.stats.coalesced));
  }
  return kj::strArray(lines, "\n");
}

kj::String ioapicJson(uint64_t vmId, const client::IoApicStatus& s) {
  JsonWriter json;
  json.beginObject().field("vm", vmId);
  ioapicMembers(json, s);
  json.endObject();
  return json.finish();
}

kj::String statsText(uint64_t vmId, const client::VmStats& now, kj::Maybe<const client::VmStats&> before) {
  kj::Vector<kj::String> lines;
  const client::VmStats* prev = nullptr;
  KJ_IF_MAYBE(b, before) prev = b;
  bool live = prev != nullptr;
  auto since = [&](uint64_t nowValue, uint64_t beforeValue) { return live ? nowValue - beforeValue : nowValue; };
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
    using S = client::VcpuStats;
    lines.add(kj::str("  ", pad(kj::str(v.index), 6), pad(d(&S::reads), 10), pad(d(&S::writes), 10),
                      pad(d(&S::gpFaults), 7), pad(d(&S::ignoredAccesses), 9), pad(d(&S::accepted), 10),
                      pad(d(&S::acknowledged), 9), pad(d(&S::eois), 9), pad(d(&S::ipisSent), 8),
                      pad(d(&S::timerExpiries), 8), d(&S::eventsPosted)));
    std::map<uint16_t, uint64_t> earlier;
    if (p) for (auto& r: p->perRegister) earlier[uint16_t(r.reg)] = r.count;
    kj::Vector<kj::String> registers;
    for (auto& r: v.perRegister) {
      uint64_t count = since(r.count, earlier[uint16_t(r.reg)]);
      if (count == 0) continue;
      registers.add(kj::str(registerName(r.reg), "=", count));
    }
    if (registers.size() > 0) lines.add(kj::str("        accesses: ", kj::strArray(registers, ", ")));
  }
  return kj::strArray(lines, "\n");
}

kj::String statsJson(uint64_t vmId, const client::VmStats& s, uint64_t sampledNs) {
  JsonWriter json;
  json.beginObject()
      .field("vm", vmId)
      .field("sampled_ns", sampledNs)
      .field("events_posted", s.eventsPosted)
      .field("batches_posted", s.batchesPosted)
      .field("events_coalesced", s.eventsCoalesced)
      .field("timer_expiries", s.timerExpiries)
      .field("msis_delivered", s.msisDelivered)
      .key("vcpus").beginArray();
  for (auto& v: s.vcpus) {
    json.beginObject()
        .field("index", v.index)
        .field("reads", v.reads)
        .field("writes", v.writes)
        .field("gp_faults", v.gpFaults)
        .field("ignored_accesses", v.ignoredAccesses)
        .field("accepted", v.accepted)
        .field("acknowledged", v.acknowledged)
        .field("eois", v.eois)
        .field("ipis_sent", v.ipisSent)
        .field("timer_expiries", v.timerExpiries)
        .field("events_posted", v.eventsPosted)
        .key("registers").beginArray();
    for (auto& r: v.perRegister) {
      if (r.count == 0) continue;
      json.beginObject()
          .field("name", registerName(r.reg))
          .field("offset", hex(uint64_t(r.reg) << 4).asPtr())
          .field("count", r.count)
          .endObject();
    }
    json.endArray().endObject();
  }
  json.endArray().endObject();
  return json.finish();
}

namespace {

// One row of top: the rates of a vCPU, or of a whole VM (summed).
struct Rates {
  double accesses = 0, gpFaults = 0, ipis = 0, timer = 0, events = 0, eois = 0, accepted = 0;

  void add(const client::VcpuStats& now, const client::VcpuStats* before, double seconds) {
    auto rate = [&](uint64_t client::VcpuStats::*field) {
      uint64_t earlier = before ? before->*field : 0;
      return now.*field >= earlier ? double(now.*field - earlier) / seconds : 0.0;
    };
    using S = client::VcpuStats;
    accesses += rate(&S::reads) + rate(&S::writes);
    gpFaults += rate(&S::gpFaults);
    ipis += rate(&S::ipisSent);
    timer += rate(&S::timerExpiries);
    events += rate(&S::eventsPosted);
    eois += rate(&S::eois);
    accepted += rate(&S::accepted);
  }
};

kj::String rate(double value) {
  char buffer[32];
  snprintf(buffer, sizeof(buffer), "%.1f", value);
  return kj::heapString(buffer);
}

kj::String topRow(kj::StringPtr vm, kj::StringPtr vcpu, kj::StringPtr name, const Rates& r) {
  return kj::str(pad(vm, 6), pad(vcpu, 6), pad(name, 14), pad(rate(r.accesses), 11), pad(rate(r.ipis), 9),
                 pad(rate(r.timer), 9), pad(rate(r.events), 10), pad(rate(r.accepted), 10),
                 pad(rate(r.eois), 9), rate(r.gpFaults));
}

}  // namespace

kj::String topFrame(const client::ServerStatus& status, kj::ArrayPtr<const TopVm> vms, double seconds) {
  kj::Vector<kj::String> lines;
  lines.add(kj::str("vlapicd ", status.version, " (pid ", status.pid, "), up ", formatDuration(status.uptimeNs),
                    ": ", status.vms, " VMs, ", status.vcpus, " vCPUs, ", status.armedTimers,
                    " armed timers, ", status.connections, " connections"));
  lines.add(kj::str("rates per second over the last ", rate(seconds), " s"));
  lines.add(kj::str(pad("VM", 6), pad("vCPU", 6), pad("name", 14), pad("accesses", 11), pad("IPIs", 9),
                    pad("timer", 9), pad("events", 10), pad("accepted", 10), pad("EOIs", 9), "#GP"));
  if (vms.size() == 0) lines.add(kj::str("no VMs"));
  for (auto& entry: vms) {
    const client::VmStats* before = nullptr;
    KJ_IF_MAYBE(b, entry.before) before = b;
    kj::Vector<kj::String> vcpuLines;
    Rates total;
    for (auto& v: entry.now.vcpus) {
      const client::VcpuStats* p = before && v.index < before->vcpus.size() ? &before->vcpus[v.index] : nullptr;
      Rates r;
      r.add(v, p, seconds);
      total.add(v, p, seconds);
      vcpuLines.add(kj::str(topRow("", kj::str(v.index), "", r)));
    }
    lines.add(topRow(kj::str(entry.vm.id), "all", entry.vm.name, total));
    for (auto& line: vcpuLines) lines.add(kj::mv(line));
  }
  return kj::strArray(lines, "\n");
}

}  // namespace vlapic::ctl
