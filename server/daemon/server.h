// SPDX-License-Identifier: MIT
// The vlapicd server logic, independent of how connections arrive: the daemon
// main feeds it sockets from a listener (or systemd socket activation), tests
// feed it socketpairs in-process. Every connection is a Cap'n Proto two-party
// RPC session whose bootstrap is the schema's `Service`.
//
// Everything runs on one kj event loop: one Vm (server/vm) per VM a front
// creates, its LAPIC timers on real timerfd deadlines, and its events posted
// to the front's EventSink with flow control. The transport stops here: the
// layers below never see a capnp type.
#pragma once

#include <kj/async-io.h>
#include <kj/async-unix.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <cstdint>

#include "front_account.h"
#include "schema/model/types.h"

namespace vlapic::daemon {

enum class HalKind : uint8_t {
  HOST,    // pages from host memory (private to vlapicd)
  SHARED,  // pages from memfds: fronts may map them (fds passed over the socket)
};

// Who is on the other end of a connection, by the socket it came in on.
enum class Authority : uint8_t {
  FRONT,      // a hypervisor front: its own VMs only, within its quotas
  OPERATOR,   // the operator socket: also Admin (every VM on the server)
};

struct ServerOptions {
  HalKind hal = HalKind::HOST;
  // Largest message vlapicd accepts from a front, in 8-byte words; a larger
  // one ends that front's connection with an error (nobody else notices).
  // 2 Mi words = 16 MiB: a VM-wide restore of 4096 vCPUs fits.
  uint64_t maxMessageWords = 2 * 1024 * 1024;
  // Event flow control defaults (VmConfig may choose its own).
  uint32_t defaultBatchesInFlight = 4;
  uint32_t defaultEventsPerBatch = 256;
  // Resource limits per server, so one front cannot exhaust the host.
  uint32_t maxVms = 4096;
  uint32_t maxVcpusPerVm = kMaxVcpusPerVm;   // schema/model/types.h
  // And per front (front_account.h): what one connection's VMs may hold.
  FrontLimits frontLimits;
  // Shared-memory channels on the whole server: each is a thread, so this
  // is what a deployment's task limit must fit (deploy/vlapicd.service).
  uint32_t maxChannels = 1024;
  // Front connections at once, in all and per peer uid (SO_PEERCRED); one
  // beyond either is closed at once. Operator connections are not counted.
  uint32_t maxConnections = 256;
  uint32_t maxConnectionsPerUid = 128;
  // Per connection: parameter words of calls not yet answered past which
  // vlapicd stops reading that connection until they are (capnp flow limit).
  uint64_t maxCallWordsInFlight = 4 * 1024 * 1024;
  // Per connection: bytes of replies not yet sent (a front that does not
  // read them) past which vlapicd stops reading its requests
  // (reply_backpressure.h). One reply may exceed it (a large VM save).
  // With the socket's own send buffer below, this bounds the calls a front
  // that never reads can make vlapicd answer: some 256 + 64 KiB of echo
  // replies, about 5000 calls, per connection.
  uint64_t maxReplyBacklogBytes = 256 * 1024;
  // SO_SNDBUF of each accepted connection (0: the kernel's default, some
  // 200 KiB): replies a front has not read wait in the socket up to this
  // much before they count against maxReplyBacklogBytes.
  uint32_t socketSendBufferBytes = 64 * 1024;
  // Keep a channel vCPU's channel thread polling across each of its timer
  // expiries (from the deadline minus the advance margin + 20 us until the
  // front's fetch, at most 150 us past the deadline). Off: on this 2-core
  // host the extra polling thread delayed the loop's own expiries so much
  // (median lateness 80-137 us instead of 45-77) that it lost more than it
  // gained (README.md, "Channels and timers"); it is for hosts with a core
  // to spare. The loop's own poll right after the expiry is always on.
  bool channelThreadTimerPolls = false;
};

struct ServerCounters {
  uint32_t connections = 0;
  uint64_t refusedConnections = 0;   // over maxConnections / maxConnectionsPerUid
  uint32_t channels = 0;             // open shared-memory channels
  uint32_t vms = 0;
  uint32_t vcpus = 0;
  uint64_t pagesInUse = 0;
  uint32_t armedTimers = 0;
  uint64_t totalEventsPosted = 0;
  uint64_t totalTimerExpiries = 0;
  // Channel threads kept polling across their vCPU's timer expiry
  // (server.cc, kChannelPollTailNs): hints given (one per new deadline of
  // a vCPU with a channel), hinted polls that began, those that had to wake
  // the thread, and requests served from them. Since the server started.
  uint64_t channelHintsGiven = 0;
  uint64_t channelHintedPolls = 0;
  uint64_t channelHintedWakeups = 0;
  uint64_t channelHintedRequests = 0;
  uint64_t channelRequestTimerFires = 0;   // expiries fired by channel requests
  // The loop thread's own poll for the front's fetch right after a channel
  // vCPU's timer expiry (server.cc, kLoopServeTailNs): polls, and requests
  // it served, and expiries whose poll its back-off skipped after polls
  // that served nothing (channel::ChannelServer::serveOnCaller).
  uint64_t channelLoopPolls = 0;
  uint64_t channelLoopRequests = 0;
  uint64_t channelLoopSkipped = 0;
};

class Server {
public:
  Server(kj::UnixEventPort& eventPort, ServerOptions options);
  ~Server() noexcept(false);
  KJ_DISALLOW_COPY(Server);

  // Serve one connection on an already connected Unix stream, with the
  // authority of the socket it arrived on.
  void accept(kj::Own<kj::AsyncCapabilityStream> connection,
              Authority authority = Authority::FRONT);
  // Accept connections from a listening Unix socket until the promise is
  // dropped. The receiver must produce AsyncCapabilityStreams (any kj Unix
  // socket listener does).
  kj::Promise<void> listen(kj::ConnectionReceiver& listener,
                           Authority authority = Authority::FRONT);

  ServerCounters counters() const;
  kj::StringPtr halName() const;

  // Opaque outside server.cc (public only so its helpers can name it).
  struct Impl;

private:
  kj::Own<Impl> impl;
};

}  // namespace vlapic::daemon
