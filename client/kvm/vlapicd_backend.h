// The ApicBackend that talks to vlapicd through the client library: one
// control connection (VM creation, events) and, per vCPU thread, its own
// connection opened from a ticket so a synchronous call is a plain socket
// round trip on that thread.
#pragma once

#include "client/kvm/apic_backend.h"
#include "client/lib/vlapic_client.h"
#include <kj/mutex.h>
#include <kj/vector.h>

namespace vlapic::kvm {

struct VlapicdVmSettings {
  uint32_t vcpuCount = 1;
  uint64_t tscHz = 0;
  bool x2apic = true;
  kj::String name;
};

class VlapicdBackend final : public ApicBackend {
public:
  // Connects and creates the VM; events go to `sink` from the client
  // thread. Throws with the client library's message when vlapicd is absent.
  VlapicdBackend(kj::StringPtr socketPath, const VlapicdVmSettings& settings, ApicEventSink& sink);
  ~VlapicdBackend() noexcept(false);

  // Make vlapicd's guest TSC (host ns * tscHz / 1e9 + offset) the one KVM
  // runs the vCPUs with.
  void setGuestTscOffset(int64_t offset);
  bool connected() const override;

  void openOnThisThread(uint32_t vcpu) override;
  void closeOnThisThread(uint32_t vcpu) override;
  ApicAccess mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size) override;
  ApicAccess mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value) override;
  ApicAccess msrRead(uint32_t vcpu, uint32_t msr) override;
  ApicAccess msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value) override;
  ApicAcknowledge acknowledge(uint32_t vcpu) override;
  ApicInterruptState setCr8(uint32_t vcpu, uint8_t cr8) override;
  kj::StringPtr name() const override { return "vlapicd"; }

private:
  ApicEventSink& sink;
  kj::String socketPath;
  kj::Own<client::Client> control;
  kj::Own<client::Vm> vm;
  kj::Array<client::VcpuTicket> tickets;
  // Per-vCPU handles, each created and used only on its vCPU's thread.
  kj::Array<kj::Own<client::VcpuHandle>> handles;

  client::VcpuHandle& handle(uint32_t vcpu);
  void onEvents(kj::ArrayPtr<const client::Event> events);
  template <typename Func>
  auto call(uint32_t vcpu, Func&& func) -> decltype(func(handle(vcpu)));
};

}  // namespace vlapic::kvm
