// SPDX-License-Identifier: MIT
#include "proto_convert.h"

#include "schema/channel/channel.h"

#include <kj/debug.h>
#include <cstring>

namespace vlapic::daemon {

// The enums of the schema mirror the core's one for one (same order).
static_assert(uint16_t(proto::AccessReason::TIMER_MODE) == uint16_t(AccessReason::TIMER_MODE));
static_assert(uint16_t(proto::ApicMode::X2APIC) == uint16_t(ApicMode::X2APIC));
// The channel's event kinds are the Vm layer's, one for one.
static_assert(uint8_t(channel::EventKind::TIMER) == uint8_t(VcpuEvent::Kind::TIMER_EXPIRED));
static_assert(uint8_t(channel::EventKind::DELIVERABLE) == uint8_t(VcpuEvent::Kind::VECTOR_DELIVERABLE));

proto::AccessReason toProto(AccessReason reason) { return proto::AccessReason(uint16_t(reason)); }
proto::ApicMode toProto(ApicMode mode) { return proto::ApicMode(uint16_t(mode)); }
proto::RunState toProto(RunState state) {
  return state == RunState::WAIT_FOR_SIPI ? proto::RunState::WAIT_FOR_SIPI : proto::RunState::RUNNING;
}

void fillEvent(proto::Event::Builder out, uint32_t vcpu, const VcpuEvent& event) {
  out.setVcpu(vcpu);
  out.setCount(event.count);
  switch (event.kind) {
    case VcpuEvent::Kind::VECTOR_DELIVERABLE: out.setDeliverable(event.vector); return;
    case VcpuEvent::Kind::NMI: out.setNmi(); return;
    case VcpuEvent::Kind::SMI: out.setSmi(); return;
    case VcpuEvent::Kind::INIT: out.setInit(); return;
    case VcpuEvent::Kind::SIPI: out.setSipi(event.vector); return;
    case VcpuEvent::Kind::EXTINT: out.setExtint(); return;
    case VcpuEvent::Kind::EOI: out.setEoi(event.vector); return;
    case VcpuEvent::Kind::TIMER_EXPIRED: out.setTimer(); return;
  }
  KJ_UNREACHABLE;
}

VcpuEvent eventFromProto(proto::Event::Reader in) {
  VcpuEvent event;
  event.count = in.getCount();
  switch (in.which()) {
    case proto::Event::DELIVERABLE:
      event.kind = VcpuEvent::Kind::VECTOR_DELIVERABLE; event.vector = in.getDeliverable(); break;
    case proto::Event::NMI: event.kind = VcpuEvent::Kind::NMI; break;
    case proto::Event::SMI: event.kind = VcpuEvent::Kind::SMI; break;
    case proto::Event::INIT: event.kind = VcpuEvent::Kind::INIT; break;
    case proto::Event::SIPI: event.kind = VcpuEvent::Kind::SIPI; event.vector = in.getSipi(); break;
    case proto::Event::EXTINT: event.kind = VcpuEvent::Kind::EXTINT; break;
    case proto::Event::EOI: event.kind = VcpuEvent::Kind::EOI; event.vector = in.getEoi(); break;
    case proto::Event::TIMER: event.kind = VcpuEvent::Kind::TIMER_EXPIRED; break;
    default: KJ_FAIL_REQUIRE("unknown event kind in saved state", uint16_t(in.which()));
  }
  return event;
}

void fillSnapshot(proto::VcpuState::Builder out, uint32_t index, const LapicSnapshot& snapshot) {
  out.setIndex(index);
  out.setApicBase(snapshot.apicBase);
  out.setRegs(kj::arrayPtr(snapshot.regs, sizeof(snapshot.regs)));
  out.setX2apic32BitIds(snapshot.x2apic32BitIds);
  out.setHidden(snapshot.hidden);
}

// Malformed input is the front's error: an error reply, nothing changed.
LapicSnapshot snapshotFromProto(proto::VcpuState::Reader in) {
  LapicSnapshot snapshot;
  auto regs = in.getRegs();
  KJ_REQUIRE(regs.size() == sizeof(snapshot.regs),
             "VcpuState.regs must be exactly one kvm_lapic_state (1024 bytes)", regs.size());
  memcpy(snapshot.regs, regs.begin(), regs.size());
  snapshot.apicBase = in.getApicBase();
  snapshot.x2apic32BitIds = in.getX2apic32BitIds();
  snapshot.hidden = kj::heapArray<kj::byte>(in.getHidden());
  return snapshot;
}

void fillInterruptState(proto::InterruptState::Builder out, const Vm& vm, uint32_t vcpu) {
  const Lapic& lapic = vm.lapic(vcpu);
  KJ_IF_MAYBE(vector, vm.pendingVector(vcpu)) {
    out.setInterruptPending(true);
    out.setPendingVector(*vector);
  }
  out.setTpr(lapic.tpr());
  out.setPpr(lapic.ppr());
  out.setCr8(lapic.cr8());
  out.setRunState(toProto(vm.runState(vcpu)));
  out.setApicMode(toProto(lapic.mode()));
  out.setApicId(lapic.apicId());
  KJ_IF_MAYBE(deadline, vm.timerDeadlineNs(vcpu)) out.setTimerDeadlineNs(*deadline);
}

void fillAccess(proto::AccessResult::Builder out, const AccessResult& result, const Vm& vm,
                uint32_t vcpu) {
  switch (result.status) {
    case AccessStatus::OK: out.setValue(result.value); break;
    case AccessStatus::GP: out.setGp(toProto(result.reason)); break;
    case AccessStatus::IGNORED: {
      auto ignored = out.initIgnored();
      ignored.setReason(toProto(result.reason));
      ignored.setValue(result.value);
      break;
    }
  }
  out.setIpiSent(result.ipi != nullptr);
  KJ_IF_MAYBE(vector, result.eoiBroadcast) {
    out.setEoiBroadcast(true);
    out.setEoiVector(*vector);
  }
  out.setTimerChanged(result.timerChanged);
  KJ_IF_MAYBE(vector, vm.pendingVector(vcpu)) {
    out.setInterruptPending(true);
    out.setPendingVector(*vector);
  }
  KJ_IF_MAYBE(deadline, vm.timerDeadlineNs(vcpu)) out.setTimerDeadlineNs(*deadline);
}

void fillPageInfo(proto::PageInfo::Builder out, const hal::Page& page) {
  out.setAddress(page.physAddr());
  out.setShared(page.fd() != nullptr);
  out.setFdOffset(page.fdOffset());
}

}  // namespace vlapic::daemon
