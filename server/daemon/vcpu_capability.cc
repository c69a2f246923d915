// SPDX-License-Identifier: MIT
#include "vcpu_capability.h"

#include "ioapic_proto.h"
#include "proto_convert.h"

#include <kj/debug.h>

namespace vlapic::daemon {

namespace {

// A mappable page: the fd travels with the capability (SCM_RIGHTS).
class PageImpl final: public proto::Page::Server {
public:
  // vcpu == nullptr: the server's APIC-access page.
  PageImpl(ServerState& server, uint64_t vmId, kj::Maybe<uint32_t> vcpu)
      : server(server), vmId(vmId), vcpu(vcpu) {}

  kj::Maybe<int> getFd() override {
    KJ_IF_MAYBE(page, find()) return page->fd();
    return nullptr;
  }

  kj::Promise<void> info(InfoContext context) override {
    KJ_IF_MAYBE(page, find()) {
      fillPageInfo(context.getResults(kReplySize).initInfo(), *page);
      return kj::READY_NOW;
    }
    KJ_FAIL_REQUIRE("VM released", vmId);
  }

private:
  ServerState& server;
  uint64_t vmId;
  kj::Maybe<uint32_t> vcpu;

  kj::Maybe<const hal::Page&> find() {
    KJ_IF_MAYBE(host, server.findVm(vmId)) {
      KJ_IF_MAYBE(v, vcpu) return host->vm.lapic(*v).page();
      return *server.apicAccessPage;
    }
    return nullptr;
  }
};

// Carries the front's end of a channel's doorbell socket. Once the front has
// its own duplicate and drops this capability, ours closes, so the channel
// thread sees the front hang up when the front closes its end.
class VcpuChannelImpl final: public proto::VcpuChannel::Server {
public:
  explicit VcpuChannelImpl(kj::AutoCloseFd fd): fd(kj::mv(fd)) {}
  kj::Maybe<int> getFd() override { return fd.get(); }

private:
  kj::AutoCloseFd fd;
};

class VcpuImpl final: public proto::Vcpu::Server {
public:
  VcpuImpl(ServerState& server, uint64_t vmId, uint32_t index, kj::Maybe<kj::Own<VmLease>> lease)
      : server(server), vmId(vmId), index(index), lease(kj::mv(lease)) {}

  kj::Promise<void> mmioRead(MmioReadContext context) override {
    auto params = context.getParams();
    uint8_t size = requireSize(params.getSize());
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.mmioRead(index, params.getAddress(), size);
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> mmioWrite(MmioWriteContext context) override {
    auto params = context.getParams();
    uint8_t size = requireSize(params.getSize());
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.mmioWrite(index, params.getAddress(), size, params.getValue());
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> msrRead(MsrReadContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.msrRead(index, context.getParams().getMsr());
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> msrWrite(MsrWriteContext context) override {
    auto params = context.getParams();
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto result = host.vm.msrWrite(index, params.getMsr(), params.getValue());
    fillAccess(context.getResults(kResultSize).initResult(), result, host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> acknowledge(AcknowledgeContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto results = context.getResults(kResultSize);
    KJ_IF_MAYBE(vector, host.vm.acknowledge(index)) {
      results.setDelivered(true);
      results.setVector(*vector);
    }
    fillInterruptState(results.initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> interruptState(InterruptStateContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillInterruptState(context.getResults(kResultSize).initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> setCr8(SetCr8Context context) override {
    uint8_t cr8 = context.getParams().getCr8();
    KJ_REQUIRE(cr8 <= 0xF, "CR8 holds 4 bits", cr8);
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    host.vm.setCr8(index, cr8);
    fillInterruptState(context.getResults(kResultSize).initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> startup(StartupContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    bool waiting = host.vm.runState(index) == RunState::WAIT_FOR_SIPI;
    host.vm.startup(index, context.getParams().getVector());
    auto results = context.getResults(kResultSize);
    results.setStarted(waiting && host.vm.runState(index) == RunState::RUNNING);
    fillInterruptState(results.initState(), host.vm, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> save(SaveContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    bool x2apic32BitIds = !context.getParams().getLegacyX2apicIds();
    fillSnapshot(context.getResults(kReplySize).initState(), index,
                 host.vm.saveVcpu(index, x2apic32BitIds));
    return kj::READY_NOW;
  }

  kj::Promise<void> restore(RestoreContext context) override {
    auto snapshot = snapshotFromProto(context.getParams().getState());
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_IF_MAYBE(reason, host.vm.restoreVcpu(index, snapshot)) {
      KJ_FAIL_REQUIRE("invalid vCPU state", *reason);
    }
    host.resyncAll();
    return kj::READY_NOW;
  }

  kj::Promise<void> pages(PagesContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    auto results = context.getResults(kReplySize);
    fillPageInfo(results.initVirtualApic(), host.vm.lapic(index).page());
    fillPageInfo(results.initApicAccess(), *server.apicAccessPage);
    return kj::READY_NOW;
  }

  kj::Promise<void> virtualApicPage(VirtualApicPageContext context) override {
    server.requireVm(vmId);
    context.getResults(kReplySize).setPage(kj::heap<PageImpl>(server, vmId, index));
    return kj::READY_NOW;
  }

  kj::Promise<void> stats(StatsContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillVcpuStats(context.getResults(kReplySize).initStats(), host, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> info(InfoContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    fillVcpuInfo(context.getResults(kReplySize).initInfo(), host, index);
    return kj::READY_NOW;
  }

  kj::Promise<void> ticket(TicketContext context) override {
    auto& host = server.requireVm(vmId);
    auto guard = host.lock();
    KJ_REQUIRE(lease != nullptr, "only the VM's creator can issue tickets");
    auto key = host.ticketFor(index);
    context.getResults(kReplySize).setTicket(kj::decodeHex(key));
    return kj::READY_NOW;
  }

  kj::Promise<void> openChannel(OpenChannelContext context) override {
    auto& host = server.requireVm(vmId);
    context.getResults(kReplySize).setChannel(kj::heap<VcpuChannelImpl>(host.openChannel(index)));
    return kj::READY_NOW;
  }

private:
  // Every result of these methods fits in one small segment.
  static constexpr capnp::MessageSize kResultSize{16, 0};

  ServerState& server;
  uint64_t vmId;
  uint32_t index;
  kj::Maybe<kj::Own<VmLease>> lease;

  static uint8_t requireSize(uint8_t size) {
    KJ_REQUIRE(size == 1 || size == 2 || size == 4 || size == 8,
               "MMIO access size must be 1, 2, 4 or 8 bytes", size);
    return size;
  }
};

}  // namespace

kj::Own<proto::Vcpu::Server> newVcpuCapability(ServerState& server, uint64_t vmId, uint32_t index,
                                               kj::Maybe<kj::Own<VmLease>> lease) {
  return kj::heap<VcpuImpl>(server, vmId, index, kj::mv(lease));
}

kj::Own<proto::Page::Server> newPageCapability(ServerState& server, uint64_t vmId,
                                               kj::Maybe<uint32_t> vcpu) {
  return kj::heap<PageImpl>(server, vmId, vcpu);
}

}  // namespace vlapic::daemon
