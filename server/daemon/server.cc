// SPDX-License-Identifier: MIT
#include "server.h"

#include "server_state.h"
#include "service_capability.h"
#include "vm_host.h"

#include "deadline_scheduler.h"
#include "front_account.h"
#include "ioapic_proto.h"
#include "reply_backpressure.h"
#include "schema/channel/channel.h"
#include "schema/vlapic.capnp.h"
#include "server/vm/vm.h"
#include "hal/hal.h"

#include <capnp/rpc-twoparty.h>
#include <capnp/rpc.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <kj/map.h>
#include <kj/vector.h>

#include <cerrno>
#include <deque>
#include <map>
#include <set>
#include <mutex>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <thread>
#include <unistd.h>

#ifndef VLAPIC_VERSION
#define VLAPIC_VERSION "unknown"
#endif

namespace vlapic::daemon {

// ---------------------------------------------------------------------------

// One front's RPC session.
struct Server::Impl::Connection {
  Connection(ServerState& server, uint64_t id, Authority authority, kj::Maybe<uid_t> peerUid,
             kj::Own<kj::AsyncCapabilityStream> streamParam)
      : id(id), authority(authority), peerUid(peerUid),
        account(kj::refcounted<FrontAccount>(id, server.options.frontLimits, server.serverWide)),
        stream(kj::heap<ReplyBackpressureStream>(kj::mv(streamParam),
            [this, limit = server.options.maxReplyBacklogBytes]() {
              return network.getCurrentQueueSize() > limit;
            })),
        // Fronts have no reason to send fds, but capnp sends fds (the page
        // memfds) only on a network that accepts some; one per message
        // bounds what a hostile front can push (dropped with its message).
        network(*stream, 1, capnp::rpc::twoparty::Side::SERVER, readerOptions(server.options)),
        rpc(capnp::makeRpcServer(network,
                                 newServiceCapability(server, authority, kj::addRef(*account)))) {
    // Calls whose replies are not yet sent: past this many words of their
    // parameters the RPC system stops reading this connection (the front
    // waits; nobody else notices).
    rpc.setFlowLimit(server.options.maxCallWordsInFlight);
  }

  static capnp::ReaderOptions readerOptions(const ServerOptions& options) {
    capnp::ReaderOptions result;
    result.traversalLimitInWords = options.maxMessageWords;
    result.nestingLimit = 16;
    return result;
  }

  uint64_t id;
  Authority authority;
  kj::Maybe<uid_t> peerUid;   // SO_PEERCRED, when the stream has one
  kj::Own<FrontAccount> account;
  kj::Own<kj::AsyncCapabilityStream> stream;
  capnp::TwoPartyVatNetwork network;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc;
};

namespace {
kj::AutoCloseFd newEventFd() {
  int fd;
  KJ_SYSCALL(fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  return kj::AutoCloseFd(fd);
}
}  // namespace

Server::Impl::Impl(kj::UnixEventPort& eventPort, ServerOptions options)
    : options(options),
      hal(options.hal == HalKind::SHARED ? hal::newSharedMemoryHal(clock)
                                         : hal::newHostMemoryHal(clock)),
      apicAccessPage(hal->allocatePage()),
      scheduler(eventPort),
      timer(eventPort.getTimer()),
      startNs(clock.nowNs()),
      wakeFd(newEventFd()),
      wakeObserver(eventPort, wakeFd, kj::UnixEventPort::FdObserver::OBSERVE_READ),
      tasks(*this) {
  serverWide.maxChannels = options.maxChannels;
  tasks.add(takeCrossThreadWork());
}

void Server::Impl::wakeLoop(uint64_t vmId) {
  crossThread.lockExclusive()->vms.insert(vmId);
  uint64_t one = 1;
  // Non-blocking; a full counter means a wake-up is pending anyway.
  (void)!write(wakeFd, &one, sizeof(one));
}

void Server::Impl::channelClosed(uint64_t vmId, uint32_t vcpu, uint64_t generation) {
  crossThread.lockExclusive()->closedChannels.add(ClosedChannel{vmId, vcpu, generation});
  uint64_t one = 1;
  (void)!write(wakeFd, &one, sizeof(one));
}

kj::Promise<void> Server::Impl::takeCrossThreadWork() {
  return wakeObserver.whenBecomesReadable().then([this]() {
    uint64_t count;
    while (read(wakeFd, &count, sizeof(count)) > 0) {}   // edge-triggered: drain
    CrossThreadQueue queue;
    {
      auto locked = crossThread.lockExclusive();
      queue = kj::mv(*locked);
      *locked = CrossThreadQueue();
    }
    for (uint64_t id: queue.vms) {
      KJ_IF_MAYBE(host, findVm(id)) host->takeCrossThreadWork();
    }
    for (auto& closed: queue.closedChannels) {
      KJ_IF_MAYBE(host, findVm(closed.vmId)) host->closeChannel(closed.vcpu, closed.generation);
    }
    return takeCrossThreadWork();
  });
}

Server::Impl::~Impl() noexcept(false) {
  // Connections first (they drop the leases, releasing every VM), then
  // whatever VMs admin handles saw, then the HAL's pages.
  connections.clear();
  for (auto lease: leases) lease->serverGone();
  vms.clear();
}

kj::Maybe<VmHost&> Server::Impl::findVm(uint64_t id) {
  auto it = vms.find(id);
  if (it == vms.end()) return nullptr;
  return *it->second;
}

VmHost& Server::Impl::requireVm(uint64_t id) {
  KJ_IF_MAYBE(host, findVm(id)) return *host;
  KJ_FAIL_REQUIRE("VM released", id);
}

void Server::Impl::releaseVm(uint64_t id) {
  auto it = vms.find(id);
  if (it == vms.end()) return;
  // Move it out before destroying: its destructor touches `tickets`.
  kj::Own<VmHost> host = kj::mv(it->second);
  vms.erase(it);
  retiredChannelHints.addVm(host->channelHints());
  KJ_LOG(INFO, "VM released", id);
  host = nullptr;
}

namespace {
kj::Maybe<uid_t> peerUid(kj::AsyncCapabilityStream& stream) {
  struct ucred credentials = {};
  uint length = sizeof(credentials);
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    stream.getsockopt(SOL_SOCKET, SO_PEERCRED, &credentials, &length);
  })) {
    return nullptr;   // not a Unix socket (tests' in-memory pipes)
  }
  return credentials.uid;
}

// Bounds the replies the kernel holds for a front that does not read them
// (ServerOptions.socketSendBufferBytes). Not a Unix socket (tests' in-memory
// pipes): nothing to bound.
void boundSendBuffer(kj::AsyncCapabilityStream& stream, uint32_t bytes) {
  if (bytes == 0) return;
  int value = int(bytes);
  kj::runCatchingExceptions([&]() {
    stream.setsockopt(SOL_SOCKET, SO_SNDBUF, &value, sizeof(value));
  });
}
}  // namespace

void Server::Impl::accept(kj::Own<kj::AsyncCapabilityStream> stream, Authority authority) {
  kj::Maybe<uid_t> uid = peerUid(*stream);
  boundSendBuffer(*stream, options.socketSendBufferBytes);
  if (authority == Authority::FRONT) {
    // Refused at once (the front sees its connection closed and the log
    // says why), never accepted and left to starve: a host's connection
    // slots are shared, so no one uid may take all of them.
    uint32_t fronts = 0;
    for (auto& entry: connections) fronts += entry.second->authority == Authority::FRONT;
    uint32_t ofUid = 0;
    KJ_IF_MAYBE(u, uid) {
      auto it = connectionsPerUid.find(*u);
      if (it != connectionsPerUid.end()) ofUid = it->second;
    }
    if (fronts >= options.maxConnections || ofUid >= options.maxConnectionsPerUid) {
      refusedConnections++;
      KJ_LOG(WARNING, "front connection refused: connection limit reached", fronts,
             options.maxConnections, ofUid, options.maxConnectionsPerUid);
      return;   // dropping the stream closes it
    }
    KJ_IF_MAYBE(u, uid) connectionsPerUid[*u]++;
  }
  uint64_t id = nextConnectionId++;
  auto connection = kj::heap<Connection>(*this, id, authority, uid, kj::mv(stream));
  auto disconnected = connection->network.onDisconnect();
  connections.emplace(id, kj::mv(connection));
  KJ_LOG(INFO, authority == Authority::OPERATOR ? "operator connected" : "front connected", id);
  tasks.add(disconnected.then([this, id]() {
    // Dropping the RPC system drops every capability the front held, which
    // releases its VMs. Do it on a fresh turn, outside the network's own
    // callbacks.
    return kj::evalLater([this, id]() {
      auto it = connections.find(id);
      if (it == connections.end()) return;
      if (it->second->authority == Authority::FRONT) {
        KJ_IF_MAYBE(u, it->second->peerUid) {
          auto count = connectionsPerUid.find(*u);
          if (count != connectionsPerUid.end() && --count->second == 0) {
            connectionsPerUid.erase(count);
          }
        }
      }
      connections.erase(it);
      KJ_LOG(INFO, "connection closed", id);
    });
  }));
}

ServerCounters Server::Impl::counters() const {
  ServerCounters c;
  c.connections = connections.size();
  c.refusedConnections = refusedConnections;
  c.channels = serverWide.channels;
  c.vms = vms.size();
  for (auto& entry: vms) c.vcpus += entry.second->vm.vcpuCount();
  c.pagesInUse = hal->pagesInUse();
  c.armedTimers = scheduler.armedCount();
  c.totalEventsPosted = totalEventsPosted;
  c.totalTimerExpiries = totalTimerExpiries;
  c.channelRequestTimerFires = timerExpiriesFiredByRequests;
  ChannelHintCounters hints = retiredChannelHints;
  for (auto& entry: vms) hints.addVm(entry.second->channelHints());
  c.channelHintsGiven = hints.given;
  c.channelHintedPolls = hints.polls;
  c.channelHintedWakeups = hints.wakeups;
  c.channelHintedRequests = hints.requests;
  c.channelLoopPolls = hints.loopPolls;
  c.channelLoopRequests = hints.loopRequests;
  c.channelLoopSkipped = hints.loopSkipped;
  return c;
}

void Server::Impl::fillStatus(proto::ServerStatus::Builder out) const {
  auto c = counters();
  out.setVersion(VLAPIC_VERSION);
  out.setHal(hal->name());
  out.setUptimeNs(clock.nowNs() - startNs);
  out.setConnections(c.connections);
  out.setVms(c.vms);
  out.setVcpus(c.vcpus);
  out.setPagesInUse(c.pagesInUse);
  out.setArmedTimers(c.armedTimers);
  out.setTotalEventsPosted(c.totalEventsPosted);
  out.setTotalTimerExpiries(c.totalTimerExpiries);
  out.setPid(getpid());
  out.setChannelLoopPolls(c.channelLoopPolls);
  out.setChannelLoopRequests(c.channelLoopRequests);
  out.setChannelLoopSkipped(c.channelLoopSkipped);
  out.setChannelTimerPolls(options.channelThreadTimerPolls);
  out.setChannelHintsGiven(c.channelHintsGiven);
  out.setChannelHintedPolls(c.channelHintedPolls);
  out.setChannelHintedWakeups(c.channelHintedWakeups);
  out.setChannelHintedRequests(c.channelHintedRequests);
  out.setChannelRequestTimerFires(c.channelRequestTimerFires);
}

void Server::Impl::fillFrontStatus(proto::ServerStatus::Builder out,
                                   const FrontAccount& account) const {
  // A front learns about the server only what concerns it: no counts of
  // other fronts' connections, VMs or traffic.
  out.setVersion(VLAPIC_VERSION);
  out.setHal(hal->name());
  out.setUptimeNs(clock.nowNs() - startNs);
  out.setConnections(1);
  out.setVms(account.vmCount());
  out.setVcpus(account.vcpuCount());
  out.setPagesInUse(account.vcpuCount());
  out.setChannelTimerPolls(options.channelThreadTimerPolls);
}

void Server::Impl::fillVmInfo(proto::VmInfo::Builder out, const VmHost& host) const {
  out.setId(host.id);
  out.setName(host.name);
  out.setVcpuCount(host.vm.vcpuCount());
  out.setOwner(host.owner);
  out.setCreatedNs(host.createdNs);
  out.setEventsQueued(host.eventsQueued());
  out.setBatchesInFlight(host.batchesInFlight);
}

// ---------------------------------------------------------------------------

Server::Server(kj::UnixEventPort& eventPort, ServerOptions options)
    : impl(kj::heap<Impl>(eventPort, options)) {}

Server::~Server() noexcept(false) {}

void Server::accept(kj::Own<kj::AsyncCapabilityStream> connection, Authority authority) {
  impl->accept(kj::mv(connection), authority);
}

kj::Promise<void> Server::listen(kj::ConnectionReceiver& listener, Authority authority) {
  return listener.accept().then([this, &listener, authority](kj::Own<kj::AsyncIoStream>&& stream) {
    // kj's Unix sockets are capability streams (as TwoPartyServer assumes).
    impl->accept(stream.downcast<kj::AsyncCapabilityStream>(), authority);
    return listen(listener, authority);
  });
}

ServerCounters Server::counters() const { return impl->counters(); }

kj::StringPtr Server::halName() const { return impl->hal->name(); }

}  // namespace vlapic::daemon
