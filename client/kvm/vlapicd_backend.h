// SPDX-License-Identifier: MIT
// The ApicBackend that talks to vlapicd through the client library: one
// control connection (VM creation, events), and per vCPU thread either the
// vCPU's shared-memory channel (the exit fast path, schema/channel; the
// default) or its own RPC connection opened from a ticket (--rpc), so a
// synchronous call never hops threads. With the channel, register reads
// that need no computation come from the vCPU's virtual-APIC page mapped
// read-only when vlapicd runs with --hal shared.
#pragma once

#include "client/kvm/apic_backend.h"
#include "client/kvm/page_reads.h"
#include "client/lib/vlapic_client.h"
#include "schema/channel/channel.h"
#include <kj/mutex.h>
#include <kj/thread.h>
#include <kj/vector.h>
#include <atomic>
#include <utility>

namespace vlapic::kvm {

enum class ApicTransport : uint8_t {
  CHANNEL,  // per-vCPU shared-memory call/reply slot; events in each reply
  RPC,      // a Cap'n Proto call per access; events through the control connection
};

struct VlapicdVmSettings {
  uint32_t vcpuCount = 1;
  uint64_t tscHz = 0;
  bool x2apic = true;
  kj::String name;
  ApicTransport transport = ApicTransport::CHANNEL;
  // CHANNEL only: serve plain register reads from the mapped page when the
  // server offers it (falls back to the channel when it does not).
  bool pageReads = true;
  // The VM's I/O APIC in vlapicd (VmOptions::IoApic): at 0xFEC00000,
  // version 0x11 (KVM's) or 0x20 (with the EOI register at +0x40).
  bool ioapic = true;
  uint8_t ioapicVersion = kIoApicVersion11;
};

class VlapicdBackend final : public ApicBackend {
public:
  // Connects and creates the VM; events go to `sink` from the client
  // thread (and, with the channel, from each vCPU's own thread). Throws
  // with the client library's message when vlapicd is absent.
  VlapicdBackend(kj::StringPtr socketPath, const VlapicdVmSettings& settings, ApicEventSink& sink);
  ~VlapicdBackend() noexcept(false);

  // Make vlapicd's guest TSC (host ns * tscHz / 1e9 + offset) the one KVM
  // runs the vCPUs with.
  void setGuestTscOffset(int64_t offset);

  // Surviving vlapicd's death (issue 8). From now on the VM's whole state
  // is saved every `snapshotIntervalMs` (Vm::save, one consistent cut of
  // every vCPU) and on demand (snapshot()). When vlapicd goes away,
  // `restartServer` is called (on the machine's control thread) for the
  // socket of a new vlapicd; the VM is created there again and restored
  // from the last snapshot, and each vCPU thread reopens its link and
  // retries the call that failed. README.md says what can be lost.
  void enableRecovery(kj::Function<kj::String()> restartServer, uint64_t snapshotIntervalMs);
  void snapshot();
  uint32_t recoveries() const;

  bool keepAlive() override;

  void openOnThisThread(uint32_t vcpu) override;
  void closeOnThisThread(uint32_t vcpu) override;
  ApicAccess mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size, bool canInject) override;
  ApicAccess mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value,
                       bool canInject) override;
  ApicAccess msrRead(uint32_t vcpu, uint32_t msr, bool canInject) override;
  ApicAccess msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value, bool canInject) override;
  kj::Maybe<uint64_t> mmioReadFromPage(uint32_t vcpu, uint64_t offset, uint8_t size) override;
  kj::Maybe<uint64_t> msrReadFromPage(uint32_t vcpu, uint32_t msr) override;
  kj::Maybe<uint64_t> ioApicBase() const override;
  void setIrqLine(uint8_t pin, bool level) override;
  void fetchEvents(uint32_t vcpu) override;
  ApicAcknowledge acknowledge(uint32_t vcpu) override;
  ApicInterruptState setCr8(uint32_t vcpu, uint8_t cr8) override;
  void waitWhileHalted(uint32_t vcpu, HaltWait& wait) override;
  kj::Maybe<uint64_t> knownTimerDeadline(uint32_t vcpu) override;
  kj::StringPtr name() const override {
    return settings.transport == ApicTransport::CHANNEL ? "vlapicd (channel)" : "vlapicd (rpc)";
  }

  // Whether vCPU `vcpu` reads from a mapped page (valid after
  // openOnThisThread on that vCPU's thread).
  bool pageMapped(uint32_t vcpu) const;

private:
  class AttentionWatcher;
  // What one vCPU thread uses; created and used only on that thread.
  struct VcpuLink {
    kj::Own<client::VcpuHandle> handle;
    kj::Maybe<kj::Own<client::MappedPage>> page;
    kj::Maybe<VirtualApicPageReader> pageReader;
    kj::Maybe<kj::Own<channel::ChannelFront>> channel;
    kj::Maybe<kj::Own<AttentionWatcher>> watcher;  // after `channel`: stops first
    uint64_t generation = 0;  // of the server it was opened on
  };

  // The server connection and what vCPU threads need to reopen their
  // links; replaced as a whole by a recovery.
  struct Server {
    uint64_t generation = 0;
    bool lost = false;  // a vCPU thread saw it die; recovery is due
    bool failed = false;  // recovery gave up
    kj::Array<client::VcpuTicket> tickets;
  };
  struct Recovery {
    kj::Function<kj::String()> restartServer;
    uint64_t snapshotIntervalNs = 0;
    uint64_t lastSnapshotNs = 0;
    kj::Maybe<client::VmState> lastSnapshot;
    uint64_t activityAtSnapshot = 0;
    uint32_t count = 0;
  };
  // Calls made and events received: while it stays the same, the VM's
  // state has not moved (an idle VM is not saved again and again).
  std::atomic<uint64_t> activity{0};
  // Per vCPU, the vectors in service as the guest sees them: set when the
  // front injects an acknowledged vector, the highest cleared at each EOI
  // the guest writes (SDM 10.8.5), all cleared by INIT. A restore puts this
  // ISR in place of the snapshot's, whose EOIs since the snapshot were lost
  // with the server (else a vector EOIed since would stay in service and
  // block its priority class for good).
  kj::Array<kj::MutexGuarded<VectorSet>> inService;
  // The levels the front's devices drive on the I/O APIC's pins (bit n:
  // pin n high), as last set. The lock also serialises setIrqLine calls
  // with a recovery replacing `vm`: a recovery sets every pin whose level
  // changed since the snapshot again, so no wire is lost with the server.
  struct IrqLevels {
    uint32_t levels = 0;
  };
  kj::MutexGuarded<IrqLevels> irqLevels;
  void reapplyIrqLines(const client::VmState& restored);
  bool inIoApicWindow(uint64_t gpa) const;
  void injected(uint32_t vcpu, kj::Maybe<uint8_t> vector);
  void eoiWritten(uint32_t vcpu, const ApicAccess& access);

  // Per vCPU, when its LAPIC timer expires next as far as this front knows
  // (halt polling wakes ahead of it). With RPC, every access reply,
  // acknowledge and TIMER event says (schema timerDeadlineNs); the channel's
  // replies do not, so a channel access that may move the timer (a timer
  // register, IA32_TSC_DEADLINE, IA32_APIC_BASE), a TIMER or INIT event and
  // a recovery make it stale, and the next halt asks vlapicd (Vcpu.info).
  struct TimerHint {
    kj::Maybe<uint64_t> deadlineNs;
    bool stale = true;
    uint64_t fetchedFor = 0;  // the due deadline a fetch was sent for (takeDueTimer)
  };
  // The deadline is known, past, and not fetched for yet: true once.
  bool takeDueTimer(uint32_t vcpu);
  bool dueTimerUnfetched(uint32_t vcpu);
  void afterChannelReply(uint32_t vcpu, const channel::Reply& reply);
  kj::Array<kj::MutexGuarded<TimerHint>> timerHints;
  void noteTimer(uint32_t vcpu, kj::Maybe<uint64_t> deadlineNs);
  void timerMayHaveMoved(uint32_t vcpu);
  kj::Maybe<uint64_t> timerDeadline(uint32_t vcpu);
  // Halt polling per vCPU: used on that vCPU's thread only.
  struct HaltPolling {
    client::WakeAheadPolicy policy;
    client::WakeAheadStats stats;
  };
  kj::Array<HaltPolling> haltPolling;

  ApicEventSink& sink;
  VlapicdVmSettings settings;
  // `control` and `vm` are used by the control thread only (and replaced by
  // it during a recovery); vCPU threads read `server` under its lock.
  kj::Own<client::Client> control;
  kj::Own<client::Vm> vm;
  kj::MutexGuarded<Server> server;
  kj::Maybe<Recovery> recovery;
  kj::Array<kj::Maybe<kj::Own<VcpuLink>>> links;

  // Connects to vlapicd and creates the VM there (this becomes `control`
  // and `vm`); returns the vCPUs' tickets. vCPU threads keep using the
  // server they have until publish() hands them these tickets.
  kj::Array<client::VcpuTicket> connect(kj::StringPtr socketPath);
  void publish(kj::Array<client::VcpuTicket> tickets);
  void recover();
  // On a vCPU thread whose call found the server gone: waits for the
  // control thread's recovery. False if there is none or it failed.
  bool awaitRecovery(uint64_t lostGeneration);
  // This vCPU's link to the server of `generation`, (re)opened if needed.
  VcpuLink& link(uint32_t vcpu, uint64_t generation);
  void openLink(uint32_t vcpu, uint64_t generation);
  channel::Reply serveChannel(uint32_t vcpu, VcpuLink& l, const channel::Request& request);
  void onEvents(kj::ArrayPtr<const client::Event> events);
  void deliver(uint32_t vcpu, client::EventKind kind, uint8_t vector, uint32_t count);
  void deliverFromChannel(uint32_t vcpu, const channel::Event& event);
  // An RPC access's result, with the timer deadline it reports noted.
  ApicAccess rpcAccess(uint32_t vcpu, const client::AccessOutcome& outcome);
  channel::Reply callChannel(uint32_t vcpu, const channel::Request& request);
  ApicAccess channelAccess(uint32_t vcpu, channel::Request request, bool canInject);
  template <typename Func>
  auto call(uint32_t vcpu, Func&& func) -> decltype(func(std::declval<VcpuLink&>()));
};

}  // namespace vlapic::kvm
