// SPDX-License-Identifier: MIT
#include "vm_capability.h"

#include "ioapic_proto.h"
#include "proto_convert.h"
#include "vcpu_capability.h"

#include <kj/debug.h>

namespace vlapic::daemon {

namespace {

class VmImpl final: public proto::Vm::Server {
public:
  VmImpl(ServerState& server, uint64_t vmId, kj::Maybe<kj::Own<VmLease>> lease)
      : server(server), vmId(vmId), lease(kj::mv(lease)) {}

  kj::Promise<void> vcpu(VcpuContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    uint32_t index = context.getParams().getIndex();
    KJ_REQUIRE(index < host.vm.vcpuCount(), "vCPU index out of range", index, host.vm.vcpuCount());
    context.getResults(kReplySize).setVcpu(newVcpuCapability(server, vmId, index, addLease()));
    return kj::READY_NOW;
  }

  kj::Promise<void> listVcpus(ListVcpusContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto list = context.getResults(kReplySize).initVcpus(host.vm.vcpuCount());
    for (uint32_t v = 0; v < host.vm.vcpuCount(); v++) fillVcpuInfo(list[v], host, v);
    return kj::READY_NOW;
  }

  kj::Promise<void> deliverMsi(DeliverMsiContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto msi = context.getParams().getMsi();
    auto result = host.vm.deliverMsi(msi.getAddress(), msi.getData());
    if (result.status == DeliveryStatus::DELIVERED) ++host.msisDelivered;
    return kj::READY_NOW;
  }

  kj::Promise<void> deliverIoApic(DeliverIoApicContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    host.vm.deliverIoApic(context.getParams().getEntry());
    return kj::READY_NOW;
  }

  kj::Promise<void> setIrqLine(SetIrqLineContext context) override {
    auto params = context.getParams();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    requireIoApicPin(host.vm, params.getPin());
    host.vm.setIrqLine(params.getPin(), params.getLevel());
    return kj::READY_NOW;
  }

  kj::Promise<void> setIrqLines(SetIrqLinesContext context) override {
    auto lines = context.getParams().getLines();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_REQUIRE(lines.size() <= kMaxIrqLinesPerCall, "too many lines in one setIrqLines call",
               lines.size(), kMaxIrqLinesPerCall);
    // All checked before any is applied: a bad call changes nothing.
    for (auto line: lines) requireIoApicPin(host.vm, line.getPin());
    for (auto line: lines) host.vm.setIrqLine(line.getPin(), line.getLevel());
    return kj::READY_NOW;
  }

  kj::Promise<void> ioapic(IoapicContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillIoApicStatus(context.getResults(kReplySize).initStatus(), host.vm);
    return kj::READY_NOW;
  }

  kj::Promise<void> setLint(SetLintContext context) override {
    auto params = context.getParams();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_REQUIRE(params.getPin() <= 1, "LINT pin must be 0 or 1", params.getPin());
    if (params.getVcpu() == 0xFFFFFFFF) {
      host.vm.setLintAll(params.getPin(), params.getLevel());
    } else {
      KJ_REQUIRE(params.getVcpu() < host.vm.vcpuCount(), "vCPU index out of range", params.getVcpu());
      host.vm.setLint(params.getVcpu(), params.getPin(), params.getLevel());
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> save(SaveContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    VmSnapshot snapshot = host.vm.saveVm(!context.getParams().getLegacyX2apicIds());
    auto out = context.getResults(kReplySize).initState();
    auto vcpus = out.initVcpus(snapshot.vcpus.size());
    for (uint32_t v = 0; v < snapshot.vcpus.size(); v++) fillSnapshot(vcpus[v], v, snapshot.vcpus[v]);
    out.setTscOffset(snapshot.tscOffset);
    out.setTscAtSave(snapshot.tscAtSave);
    out.setLowestPriorityCursor(snapshot.lowestPriorityCursor);
    auto queues = out.initQueuedEvents(snapshot.queuedEvents.size());
    for (uint32_t v = 0; v < snapshot.queuedEvents.size(); v++) {
      auto events = queues.init(v, snapshot.queuedEvents[v].size());
      for (uint32_t i = 0; i < events.size(); i++) fillEvent(events[i], v, snapshot.queuedEvents[v][i]);
    }
    KJ_IF_MAYBE(ioapic, snapshot.ioapic) fillIoApicState(out.initIoapic(), *ioapic);
    return kj::READY_NOW;
  }

  kj::Promise<void> restore(RestoreContext context) override {
    auto params = context.getParams();
    auto in = params.getState();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto vcpus = in.getVcpus();
    KJ_REQUIRE(vcpus.size() == host.vm.vcpuCount(), "VmState has a different vCPU count",
               vcpus.size(), host.vm.vcpuCount());
    auto queues = in.getQueuedEvents();
    KJ_REQUIRE(queues.size() == 0 || queues.size() == vcpus.size(),
               "VmState.queuedEvents must have one list per vCPU", queues.size());
    VmSnapshot snapshot;
    snapshot.tscOffset = in.getTscOffset();
    snapshot.tscAtSave = in.getTscAtSave();
    snapshot.lowestPriorityCursor = in.getLowestPriorityCursor();
    auto builder = kj::heapArrayBuilder<LapicSnapshot>(vcpus.size());
    for (auto vcpu: vcpus) builder.add(snapshotFromProto(vcpu));
    snapshot.vcpus = builder.finish();
    auto queueBuilder = kj::heapArrayBuilder<kj::Array<VcpuEvent>>(vcpus.size());
    for (uint32_t v = 0; v < vcpus.size(); v++) {
      if (queues.size() == 0) {
        queueBuilder.add(nullptr);
        continue;
      }
      auto events = queues[v];
      KJ_REQUIRE(events.size() <= kMaxQueuedEventsPerVcpu, "too many queued events", v, events.size());
      auto eventBuilder = kj::heapArrayBuilder<VcpuEvent>(events.size());
      for (auto event: events) eventBuilder.add(eventFromProto(event));
      queueBuilder.add(eventBuilder.finish());
    }
    snapshot.queuedEvents = queueBuilder.finish();
    if (in.hasIoapic()) snapshot.ioapic = ioApicStateFromProto(in.getIoapic());
    auto mode = params.getResumeTscAtSaved() ? TscRestore::RESUME_AT_SAVED : TscRestore::KEEP_OFFSET;
    KJ_IF_MAYBE(reason, host.vm.restoreVm(snapshot, mode)) {
      KJ_FAIL_REQUIRE("invalid VM state", *reason);
    }
    host.resyncAll();
    return kj::READY_NOW;
  }

  kj::Promise<void> stats(StatsContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto out = context.getResults(kReplySize).initStats();
    auto list = out.initVcpus(host.vm.vcpuCount());
    for (uint32_t v = 0; v < host.vm.vcpuCount(); v++) fillVcpuStats(list[v], host, v);
    out.setEventsPosted(host.eventsPosted);
    out.setBatchesPosted(host.batchesPosted);
    out.setEventsCoalesced(host.vm.stats().eventsCoalesced);
    // The VM layer counts every expiry, also those collected inside a
    // register access or a restore, not only the ones timerFired() sees.
    out.setTimerExpiries(host.vm.stats().timerExpiries);
    out.setMsisDelivered(host.msisDelivered);
    return kj::READY_NOW;
  }

  kj::Promise<void> info(InfoContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    server.fillVmInfo(context.getResults(kReplySize).initInfo(), host);
    return kj::READY_NOW;
  }

  kj::Promise<void> apicAccessPage(ApicAccessPageContext context) override {
    server.requireVm(vmId);
    auto results = context.getResults(kReplySize);
    fillPageInfo(results.initInfo(), *server.apicAccessPage);
    results.setPage(newPageCapability(server, vmId, nullptr));
    return kj::READY_NOW;
  }

  kj::Promise<void> release(ReleaseContext) override {
    server.requireVm(vmId);
    server.releaseVm(vmId);
    return kj::READY_NOW;
  }

private:
  ServerState& server;
  uint64_t vmId;
  kj::Maybe<kj::Own<VmLease>> lease;   // nullptr: an operator's (admin) handle

  kj::Maybe<kj::Own<VmLease>> addLease() {
    KJ_IF_MAYBE(l, lease) return kj::addRef(**l);
    return nullptr;
  }
};

}  // namespace

kj::Own<proto::Vm::Server> newVmCapability(ServerState& server, uint64_t vmId,
                                           kj::Maybe<kj::Own<VmLease>> lease) {
  return kj::heap<VmImpl>(server, vmId, kj::mv(lease));
}

}  // namespace vlapic::daemon
