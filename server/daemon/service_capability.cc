// SPDX-License-Identifier: MIT
#include "service_capability.h"

#include "ioapic_proto.h"
#include "vcpu_capability.h"
#include "vm_capability.h"
#include "vm_host.h"

#include <kj/debug.h>
#include <kj/encoding.h>

namespace vlapic::daemon {

namespace {

class AdminImpl final: public proto::Admin::Server {
public:
  explicit AdminImpl(ServerState& server): server(server) {}

  kj::Promise<void> status(StatusContext context) override {
    server.fillStatus(context.getResults(kReplySize).initStatus());
    return kj::READY_NOW;
  }

  kj::Promise<void> listVms(ListVmsContext context) override {
    auto list = context.getResults(kReplySize).initVms(server.vms.size());
    uint32_t i = 0;
    for (auto& entry: server.vms) {
      auto guard = entry.second->lock();
      server.fillVmInfo(list[i++], *entry.second);
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> openVm(OpenVmContext context) override {
    uint64_t id = context.getParams().getId();
    if (server.findVm(id) == nullptr) KJ_FAIL_REQUIRE("no VM with this id", id);
    context.getResults(kReplySize).setVm(newVmCapability(server, id, nullptr));
    return kj::READY_NOW;
  }

private:
  ServerState& server;
};

// A VM charged to a front's account and not yet created: refunded if the
// creation fails or is cancelled (the front hung up while it waited for its
// turn under the creation rate), handed to the VmHost otherwise.
struct PendingVmCharge {
  PendingVmCharge(kj::Own<FrontAccount> account, uint32_t vcpus)
      : account(kj::mv(account)), vcpus(vcpus) {}
  ~PendingVmCharge() noexcept(false) {
    if (!hostOwnsIt) account->refundVm(vcpus);
  }
  KJ_DISALLOW_COPY(PendingVmCharge);
  kj::Own<FrontAccount> account;
  uint32_t vcpus;
  bool hostOwnsIt = false;
};

// The bootstrap of one connection. What it may do is decided here and only
// here: every connection may create VMs (charged to its own account) and
// redeem tickets; only a connection accepted on the operator socket gets
// Admin, the one capability that names VMs by id.
class ServiceImpl final: public proto::Service::Server {
public:
  ServiceImpl(ServerState& server, Authority authority, kj::Own<FrontAccount> account)
      : server(server), authority(authority), account(kj::mv(account)) {}

  kj::Promise<void> echo(EchoContext context) override {
    context.getResults(capnp::MessageSize{4, 0}).setValue(context.getParams().getValue());
    return kj::READY_NOW;
  }

  kj::Promise<void> createVm(CreateVmContext context) override {
    auto params = context.getParams();
    auto in = params.getConfig();
    const auto& options = server.options;
    if (server.vms.size() >= options.maxVms) {
      kj::throwFatalException(KJ_EXCEPTION(OVERLOADED, "vlapicd holds its most VMs (--max-vms)",
                                           options.maxVms));
    }
    KJ_REQUIRE(in.getVcpuCount() >= 1 && in.getVcpuCount() <= options.maxVcpusPerVm,
               "VmConfig.vcpuCount out of range", in.getVcpuCount(), options.maxVcpusPerVm);

    VmConfig config;
    config.vcpuCount = in.getVcpuCount();
    auto ids = in.getApicIds();
    KJ_REQUIRE(ids.size() == 0 || ids.size() == config.vcpuCount,
               "VmConfig.apicIds must be empty or have one ID per vCPU", ids.size());
    auto idBuilder = kj::heapArrayBuilder<uint32_t>(ids.size());
    for (uint32_t id: ids) idBuilder.add(id);
    config.apicIds = idBuilder.finish();
    config.bootVcpu = in.getBootVcpu();
    if (in.getLvtEntries() != 0) config.lapic.lvtEntries = in.getLvtEntries();
    config.lapic.x2apicSupported = in.getX2apicSupported();
    config.lapic.tscDeadlineSupported = in.getTscDeadlineSupported();
    config.lapic.eoiBroadcastSuppression = in.getEoiBroadcastSuppression();
    config.lapic.strictReservedBits = in.getStrictReservedBits();
    config.lapic.bspLint0ExtInt = in.getBspLint0ExtInt();
    config.x2apicBroadcastQuirk = in.getX2apicBroadcastQuirk();
    if (in.hasIoapic()) config.ioapic = ioApicConfigFromProto(in.getIoapic());
    if (in.getTimerHz() != 0) config.lapic.timer.timerHz = in.getTimerHz();
    if (in.getMinTimerPeriodNs() != 0) config.lapic.timer.minPeriodNs = in.getMinTimerPeriodNs();
    if (in.getTscHz() != 0) config.tscHz = in.getTscHz();
    KJ_IF_MAYBE(reason, validateVmConfig(config)) {
      KJ_FAIL_REQUIRE("invalid VmConfig", *reason);
    }

    uint32_t batches = in.getMaxBatchesInFlight() != 0 ? in.getMaxBatchesInFlight()
                                                       : options.defaultBatchesInFlight;
    uint32_t perBatch = in.getMaxEventsPerBatch() != 0 ? in.getMaxEventsPerBatch()
                                                       : options.defaultEventsPerBatch;
    KJ_REQUIRE(batches <= 1024, "VmConfig.maxBatchesInFlight too large", batches);
    // A batch always holds at least one vCPU's whole queue.
    perBatch = kj::max(perBatch, kMaxQueuedEventsPerVcpu);

    // Quotas refuse at once; the creation rate makes the call wait its turn
    // (a front looping on refusals would keep vlapicd's loop busy answering
    // them; a waiting call costs a timer).
    uint64_t waitNs = account->chargeVm(config.vcpuCount, server.clock.nowNs());
    auto charge = kj::heap<PendingVmCharge>(kj::addRef(*account), config.vcpuCount);
    auto create = [&server = server, context, config = kj::mv(config),
                   name = kj::heapString(in.getName()), sink = params.getSink(), batches,
                   perBatch, charge = kj::mv(charge)]() mutable {
      uint64_t id = server.nextVmId++;
      auto host = kj::heap<VmHost>(server, id, kj::addRef(*charge->account), kj::mv(name), config,
                                   kj::mv(sink), batches, perBatch);
      charge->hostOwnsIt = true;   // the VmHost refunds when it goes
      uint64_t connectionId = charge->account->owner();
      auto lease = kj::refcounted<VmLease>(server, id);
      host->lease = *lease;
      server.vms.emplace(id, kj::mv(host));
      KJ_LOG(INFO, "VM created", id, connectionId, config.vcpuCount);
      context.getResults(kReplySize).setVm(newVmCapability(server, id, kj::mv(lease)));
    };
    if (waitNs == 0) {
      create();
      return kj::READY_NOW;
    }
    return server.timer.afterDelay(waitNs * kj::NANOSECONDS).then(kj::mv(create));
  }

  kj::Promise<void> attachVcpu(AttachVcpuContext context) override {
    auto token = context.getParams().getTicket();
    KJ_REQUIRE(token.size() == 16, "malformed vCPU ticket", token.size());
    auto key = kj::encodeHex(token);
    auto& target = KJ_REQUIRE_NONNULL(server.tickets.find(key), "unknown or expired vCPU ticket");
    auto& host = server.requireVm(target.vmId);
    auto& lease = KJ_ASSERT_NONNULL(host.lease);
    context.getResults(kReplySize).setVcpu(
        newVcpuCapability(server, target.vmId, target.index, kj::addRef(lease)));
    return kj::READY_NOW;
  }

  kj::Promise<void> admin(AdminContext context) override {
    if (authority != Authority::OPERATOR) {
      kj::throwFatalException(KJ_EXCEPTION(FAILED,
          "permission denied: operator authority (Service.admin) is served only on "
          "vlapicd's operator socket (--admin-socket), not on the front socket"));
    }
    context.getResults(kReplySize).setAdmin(kj::heap<AdminImpl>(server));
    return kj::READY_NOW;
  }

  kj::Promise<void> status(StatusContext context) override {
    auto out = context.getResults(kReplySize).initStatus();
    if (authority == Authority::OPERATOR) {
      server.fillStatus(out);
    } else {
      server.fillFrontStatus(out, *account);
    }
    return kj::READY_NOW;
  }

private:
  ServerState& server;
  Authority authority;
  kj::Own<FrontAccount> account;
};

}  // namespace

kj::Own<proto::Service::Server> newServiceCapability(ServerState& server, Authority authority,
                                                     kj::Own<FrontAccount> account) {
  return kj::heap<ServiceImpl>(server, authority, kj::mv(account));
}

}  // namespace vlapic::daemon
