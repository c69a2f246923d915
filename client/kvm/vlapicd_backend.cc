#include "client/kvm/vlapicd_backend.h"

#include <kj/debug.h>

namespace vlapic::kvm {

namespace {

ApicAccess fromOutcome(const client::AccessOutcome& outcome) {
  ApicAccess access;
  switch (outcome.status) {
    case AccessStatus::OK: access.kind = ApicAccess::Kind::VALUE; break;
    case AccessStatus::GP: access.kind = ApicAccess::Kind::GP; break;
    case AccessStatus::IGNORED: access.kind = ApicAccess::Kind::IGNORED; break;
  }
  access.value = outcome.value;
  access.reason = accessReasonName(outcome.reason);
  access.interruptPending = outcome.pendingVector != nullptr;
  return access;
}

ApicInterruptState fromState(const client::InterruptState& state) {
  ApicInterruptState result;
  result.interruptPending = state.pendingVector != nullptr;
  result.tpr = state.tpr;
  return result;
}

}  // namespace

VlapicdBackend::VlapicdBackend(kj::StringPtr socketPath, const VlapicdVmSettings& settings,
                               ApicEventSink& sink)
    : sink(sink), socketPath(kj::str(socketPath)), control(client::Client::connect(socketPath)) {
  client::VmOptions options;
  options.vcpuCount = settings.vcpuCount;
  options.tscHz = settings.tscHz;
  options.x2apicSupported = settings.x2apic;
  options.tscDeadlineSupported = true;
  options.name = kj::str(settings.name);
  vm = control->createVm(kj::mv(options), [this](kj::ArrayPtr<const client::Event> events) {
    onEvents(events);
  });
  handles = kj::heapArray<kj::Own<client::VcpuHandle>>(settings.vcpuCount);
  // Tickets are fetched here, one at a time, rather than concurrently from
  // the vCPU threads: the library's Vm::ticket() reads its temporary vCPU
  // object after releasing it, which concurrent callers turn into a crash.
  auto builder = kj::heapArrayBuilder<client::VcpuTicket>(settings.vcpuCount);
  for (uint32_t i = 0; i < settings.vcpuCount; i++) {
    auto ticket = vm->ticket(i);
    // The token names the vCPU; the socket and index are ours anyway.
    ticket.socketPath = kj::str(socketPath);
    ticket.index = i;
    builder.add(kj::mv(ticket));
  }
  tickets = builder.finish();
}

VlapicdBackend::~VlapicdBackend() noexcept(false) {}

void VlapicdBackend::setGuestTscOffset(int64_t offset) {
  // VmConfig has no offset field; a VM-wide save/restore that keeps the
  // saved offset (resumeTscAtSaved = false) sets it.
  auto state = vm->save();
  state.tscOffset = offset;
  vm->restore(state, false);
}

bool VlapicdBackend::connected() const { return control->connected(); }

void VlapicdBackend::onEvents(kj::ArrayPtr<const client::Event> events) {
  for (auto& event : events) {
    switch (event.kind) {
      case client::EventKind::DELIVERABLE: sink.interruptDeliverable(event.vcpu); break;
      case client::EventKind::NMI: sink.nmi(event.vcpu); break;
      case client::EventKind::INIT: sink.init(event.vcpu); break;
      case client::EventKind::SIPI: sink.startup(event.vcpu, event.vector); break;
      case client::EventKind::TIMER:
        // The timer's interrupt, if any, arrives as its own DELIVERABLE.
        break;
      case client::EventKind::SMI:
      case client::EventKind::EXTINT:
      case client::EventKind::EOI:
        sink.unhandledEvent(event.vcpu, client::eventKindName(event.kind));
        break;
    }
  }
}

void VlapicdBackend::openOnThisThread(uint32_t vcpu) {
  KJ_REQUIRE(vcpu < handles.size());
  handles[vcpu] = client::openVcpu(tickets[vcpu]);
}

void VlapicdBackend::closeOnThisThread(uint32_t vcpu) {
  KJ_REQUIRE(vcpu < handles.size());
  handles[vcpu] = nullptr;
}

client::VcpuHandle& VlapicdBackend::handle(uint32_t vcpu) {
  KJ_REQUIRE(vcpu < handles.size() && handles[vcpu].get() != nullptr,
             "vCPU handle not opened on this thread", vcpu);
  return *handles[vcpu];
}

template <typename Func>
auto VlapicdBackend::call(uint32_t vcpu, Func&& func) -> decltype(func(handle(vcpu))) {
  // A failed call means vlapicd is gone or refused a request this front
  // should never make: either way no vCPU can continue.
  try {
    return func(handle(vcpu));
  } catch (kj::Exception& exception) {
    sink.backendLost(exception.getDescription());
    throw;
  }
}

ApicAccess VlapicdBackend::mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size) {
  return call(vcpu, [&](client::VcpuHandle& h) { return fromOutcome(h.mmioRead(gpa, size)); });
}

ApicAccess VlapicdBackend::mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value) {
  return call(vcpu, [&](client::VcpuHandle& h) { return fromOutcome(h.mmioWrite(gpa, size, value)); });
}

ApicAccess VlapicdBackend::msrRead(uint32_t vcpu, uint32_t msr) {
  return call(vcpu, [&](client::VcpuHandle& h) { return fromOutcome(h.msrRead(msr)); });
}

ApicAccess VlapicdBackend::msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value) {
  return call(vcpu, [&](client::VcpuHandle& h) { return fromOutcome(h.msrWrite(msr, value)); });
}

ApicAcknowledge VlapicdBackend::acknowledge(uint32_t vcpu) {
  return call(vcpu, [&](client::VcpuHandle& h) {
    auto acked = h.acknowledge();
    ApicAcknowledge result;
    result.vector = acked.vector;
    result.after = fromState(acked.state);
    return result;
  });
}

ApicInterruptState VlapicdBackend::setCr8(uint32_t vcpu, uint8_t cr8) {
  return call(vcpu, [&](client::VcpuHandle& h) { return fromState(h.setCr8(cr8)); });
}

}  // namespace vlapic::kvm
