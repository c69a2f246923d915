// SPDX-License-Identifier: MIT
#include "vm_host.h"

namespace vlapic::daemon {

void fillVcpuStats(proto::VcpuStats::Builder out, const VmHost& host, uint32_t vcpu) {
  const LapicStats& s = host.vm.lapic(vcpu).stats();
  out.setIndex(vcpu);
  out.setReads(s.reads);
  out.setWrites(s.writes);
  out.setGpFaults(s.gpFaults);
  out.setIgnoredAccesses(s.ignoredAccesses);
  out.setAccepted(s.accepted);
  out.setAcknowledged(s.acknowledged);
  out.setEois(s.eois);
  out.setIpisSent(s.ipisSent);
  out.setTimerExpiries(s.timerExpiries);
  out.setEventsPosted(host.eventsPostedFor(vcpu));
  uint32_t nonZero = 0;
  for (uint64_t count: s.perRegisterAccesses) nonZero += count != 0;
  auto list = out.initPerRegister(nonZero);
  uint32_t i = 0;
  for (uint32_t reg = 0; reg < kj::size(s.perRegisterAccesses); reg++) {
    if (s.perRegisterAccesses[reg] == 0) continue;
    list[i].setOffset(reg << 4);
    list[i].setCount(s.perRegisterAccesses[reg]);
    ++i;
  }
}

void fillVcpuInfo(proto::VcpuInfo::Builder out, const VmHost& host, uint32_t vcpu) {
  const Lapic& lapic = host.vm.lapic(vcpu);
  out.setIndex(vcpu);
  out.setApicId(lapic.apicId());
  out.setInitialApicId(lapic.initialApicId());
  out.setBsp(lapic.isBsp());
  out.setApicMode(toProto(lapic.mode()));
  out.setRunState(toProto(host.vm.runState(vcpu)));
  KJ_IF_MAYBE(deadline, host.timer(vcpu).deadline()) {
    out.setTimerArmed(true);
    out.setTimerDeadlineNs(*deadline);
  }
  out.setChannelOpen(host.hasChannel(vcpu));
}

}  // namespace vlapic::daemon
