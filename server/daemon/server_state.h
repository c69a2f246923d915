// SPDX-License-Identifier: MIT
// vlapicd's server-wide state (Server::Impl, named ServerState inside the
// daemon): the VMs, tickets, connections, server-wide counters and the
// work channel threads hand to the loop. Internal to server/daemon: the
// per-VM host (vm_host.h), the capabilities (*_capability.cc) and the
// connection lifecycle (server.cc) share it.
#pragma once

#include "server.h"

#include "deadline_scheduler.h"
#include "front_account.h"
#include "schema/channel/channel.h"
#include "schema/vlapic.capnp.h"
#include "hal/hal.h"

#include <capnp/message.h>
#include <kj/async-unix.h>
#include <kj/map.h>
#include <kj/mutex.h>
#include <kj/vector.h>

#include <atomic>
#include <map>
#include <set>
#include <sys/types.h>

namespace vlapic::daemon {

// Inside the capability classes `Server` names capnp's server base class.
using ServerState = Server::Impl;

class VmHost;
class VmLease;

// What the hinted polls did, summed over channels (ServerCounters).
struct ChannelHintCounters {
  uint64_t given = 0;   // hints vlapicd gave (one per new deadline)
  uint64_t polls = 0, wakeups = 0, requests = 0;
  uint64_t loopPolls = 0, loopRequests = 0;   // serveOnCaller on the loop
  uint64_t loopSkipped = 0;                    // ... skipped by its back-off

  void add(const channel::ServerStats& stats) {
    polls += stats.hintedPolls;
    wakeups += stats.hintedWakeups;
    requests += stats.hintedRequests;
    loopPolls += stats.callerPolls;
    loopRequests += stats.callerRequests;
    loopSkipped += stats.callerSkipped;
  }
  void addVm(const ChannelHintCounters& vm) {
    given += vm.given;
    polls += vm.polls;
    wakeups += vm.wakeups;
    requests += vm.requests;
    loopPolls += vm.loopPolls;
    loopRequests += vm.loopRequests;
    loopSkipped += vm.loopSkipped;
  }
};

// First-segment hint for replies (they grow as needed). Always explicit:
// capnp's defaulted hint trips g++'s -Wmaybe-uninitialized in sanitizer
// builds.
constexpr capnp::MessageSize kReplySize{256, 1};


struct Server::Impl final: private kj::TaskSet::ErrorHandler {
  Impl(kj::UnixEventPort& eventPort, ServerOptions options);
  ~Impl() noexcept(false);

  ServerOptions options;
  hal::MonotonicClock clock;
  kj::Own<hal::Hal> hal;
  // The APIC-access page: one per server object (seed 000), through the HAL.
  kj::Own<hal::Page> apicAccessPage;
  DeadlineScheduler scheduler;
  kj::Timer& timer;   // the event port's: coarse waits (the VM creation rate)
  uint64_t startNs;

  uint64_t nextVmId = 1;
  uint64_t nextConnectionId = 1;
  std::map<uint64_t, kj::Own<VmHost>> vms;
  struct TicketTarget { uint64_t vmId; uint32_t index; };
  kj::HashMap<kj::String, TicketTarget> tickets;   // hex token -> vCPU

  struct Connection;
  std::map<uint64_t, kj::Own<Connection>> connections;
  std::map<uid_t, uint32_t> connectionsPerUid;   // front connections only
  ServerWideUsage serverWide;
  uint64_t refusedConnections = 0;

  uint64_t totalEventsPosted = 0;
  // Added to by the loop and by channel threads (a due timer a request
  // fires, serveChannel), under different VMs' locks.
  std::atomic<uint64_t> totalTimerExpiries{0};
  std::atomic<uint64_t> timerExpiriesFiredByRequests{0};   // of those, by serveChannel
  ChannelHintCounters retiredChannelHints;   // of released VMs

  // Live leases: the RPC system may drop capabilities after the server is
  // gone (it defers some teardown), so leases must know whether it is.
  std::set<VmLease*> leases;

  // Work channel threads hand to the loop: VMs with noted work, and
  // channels whose front hung up. Any thread adds and then writes `wakeFd`;
  // the loop drains.
  struct ClosedChannel { uint64_t vmId; uint32_t vcpu; uint64_t generation; };
  struct CrossThreadQueue {
    std::set<uint64_t> vms;
    kj::Vector<ClosedChannel> closedChannels;
  };
  kj::MutexGuarded<CrossThreadQueue> crossThread;
  kj::AutoCloseFd wakeFd;   // eventfd; closed after `wakeObserver` unregisters it
  kj::UnixEventPort::FdObserver wakeObserver;

  kj::TaskSet tasks;

  void wakeLoop(uint64_t vmId);          // any thread
  void channelClosed(uint64_t vmId, uint32_t vcpu, uint64_t generation);   // any thread
  kj::Promise<void> takeCrossThreadWork();

  kj::Maybe<VmHost&> findVm(uint64_t id);
  VmHost& requireVm(uint64_t id);
  void releaseVm(uint64_t id);
  void accept(kj::Own<kj::AsyncCapabilityStream> stream, Authority authority);
  ServerCounters counters() const;
  void fillStatus(proto::ServerStatus::Builder out) const;
  void fillFrontStatus(proto::ServerStatus::Builder out, const FrontAccount& account) const;
  void fillVmInfo(proto::VmInfo::Builder out, const VmHost& host) const;

  void taskFailed(kj::Exception&& exception) override {
    KJ_LOG(ERROR, "server task failed", exception);
  }
};

}  // namespace vlapic::daemon
