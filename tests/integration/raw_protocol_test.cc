// SPDX-License-Identifier: MIT
// Tests that speak the schema directly (no client library), for fronts that
// misbehave in ways the library never would, and for systemd socket
// activation of the real daemon.
#include "schema/vlapic.capnp.h"
#include "schema/socket_path.h"
#include "tests/integration/daemon_process.h"

#include <capnp/rpc-twoparty.h>
#include <catch2/catch.hpp>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <cstring>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace vlapic {
namespace {

int connectTo(kj::StringPtr path) {
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  strcpy(address.sun_path, path.cStr());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KJ_SYSCALL(fd);
  KJ_SYSCALL(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)));
  return fd;
}

// A raw two-party RPC client of vlapicd.
struct RawFront {
  explicit RawFront(kj::AsyncIoContext& io, kj::StringPtr path)
      : stream(io.lowLevelProvider->wrapUnixSocketFd(connectTo(path),
                                                     kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP)),
        client(*stream, 4),
        service(client.bootstrap().castAs<proto::Service>()) {}

  kj::Own<kj::AsyncCapabilityStream> stream;
  capnp::TwoPartyClient client;
  proto::Service::Client service;
};

// A front that takes event batches and never says it is done with them.
class StuckSink final: public proto::EventSink::Server {
public:
  explicit StuckSink(uint32_t& calls): calls(calls) {}
  kj::Promise<void> deliver(DeliverContext) override {
    ++calls;
    return kj::NEVER_DONE;
  }

private:
  uint32_t& calls;
};

TEST_CASE("a front that never finishes an event batch stalls neither vlapicd nor other fronts",
          "[integration]") {
  testing::DaemonProcess daemon(VLAPICD_PATH);
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  RawFront stuck(io, daemon.socketPath());
  RawFront healthy(io, daemon.socketPath());

  uint32_t deliverCalls = 0;
  auto create = stuck.service.createVmRequest();
  create.initConfig().setVcpuCount(4);
  create.getConfig().setMaxBatchesInFlight(1);
  create.setSink(kj::heap<StuckSink>(deliverCalls));
  auto vm = create.send().getVm();
  auto vcpuRequest = vm.vcpuRequest();
  vcpuRequest.setIndex(0);
  auto bsp = vcpuRequest.send().getVcpu();

  // SDM "Interrupt Command Register": NMI (100b), shorthand all excluding
  // self (11b): an NMI event for each of the other three vCPUs, each time.
  for (uint32_t i = 0; i < 500; i++) {
    auto write = bsp.mmioWriteRequest();
    write.setAddress(0xFEE00300);
    write.setSize(4);
    write.setValue((4u << 8) | (1u << 14) | (3u << 18));
    auto response = write.send().wait(ws);   // keeps the reader below valid
    auto result = response.getResult();
    REQUIRE(result.isValue());
    REQUIRE(result.getIpiSent());
  }

  // One batch went out and is still outstanding; the rest waits in the
  // server, merged (the CPU latches one pending NMI), not piled up.
  auto infoResponse = vm.infoRequest().send().wait(ws);
  auto info = infoResponse.getInfo();
  CHECK(deliverCalls == 1);
  CHECK(info.getBatchesInFlight() == 1);
  CHECK(info.getEventsQueued() <= 3);

  // The other front is served as usual.
  auto echo = healthy.service.echoRequest();
  echo.setValue(77);
  CHECK(echo.send().wait(ws).getValue() == 77);
  // And the operator, who alone sees server-wide counts.
  RawFront operatorView(io, adminSocketPathFor(daemon.socketPath()));
  auto statusResponse = operatorView.service.statusRequest().send().wait(ws);
  auto status = statusResponse.getStatus();
  CHECK(status.getVms() == 1);
  // The healthy front's own view: none of them is its.
  auto ownResponse = healthy.service.statusRequest().send().wait(ws);
  CHECK(ownResponse.getStatus().getVms() == 0);
}

TEST_CASE("a VM lives while any of its creator's capabilities does", "[integration]") {
  testing::DaemonProcess daemon(VLAPICD_PATH);
  auto io = kj::setupAsyncIo();
  auto& ws = io.waitScope;
  RawFront front(io, daemon.socketPath());
  uint32_t calls = 0;

  auto create = front.service.createVmRequest();
  create.initConfig().setVcpuCount(2);
  create.setSink(kj::heap<StuckSink>(calls));
  kj::Maybe<proto::Vm::Client> vm = create.send().wait(ws).getVm();
  auto request = KJ_ASSERT_NONNULL(vm).vcpuRequest();
  request.setIndex(1);
  kj::Maybe<proto::Vcpu::Client> vcpu = request.send().wait(ws).getVcpu();
  auto vmsNow = [&]() { return front.service.statusRequest().send().wait(ws).getStatus().getVms(); };
  CHECK(vmsNow() == 1);

  vm = nullptr;             // the vCPU capability still holds it
  CHECK(vmsNow() == 1);
  auto read = KJ_ASSERT_NONNULL(vcpu).mmioReadRequest();
  read.setAddress(0xFEE00020);
  read.setSize(4);
  CHECK(read.send().wait(ws).getResult().getValue() == 1u << 24);

  vcpu = nullptr;           // the last one: released
  CHECK(vmsNow() == 0);
}

TEST_CASE("vlapicd serves a socket-activated listening fd (LISTEN_FDS/LISTEN_PID)", "[integration]") {
  auto dir = testing::makeTempDir();
  KJ_DEFER(testing::removeTree(dir));
  auto path = kj::str(dir, "/activated.sock");
  struct sockaddr_un address = {};
  address.sun_family = AF_UNIX;
  strcpy(address.sun_path, path.cStr());
  int listenFd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(listenFd >= 0);
  REQUIRE(bind(listenFd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
  REQUIRE(listen(listenFd, 16) == 0);

  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // As systemd does: the socket at fd 3, the variables naming this process.
    if (listenFd == 3) {
      fcntl(3, F_SETFD, 0);   // dup2 onto itself would keep FD_CLOEXEC
    } else {
      dup2(listenFd, 3);
    }
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", kj::str(getpid()).cStr(), 1);
    execl(VLAPICD_PATH, VLAPICD_PATH, "--quiet", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(listenFd);
  KJ_DEFER({
    kill(child, SIGTERM);
    int status;
    waitpid(child, &status, 0);
  });

  auto io = kj::setupAsyncIo();
  RawFront front(io, path);   // connect() succeeds at once: the socket already listens
  auto echo = front.service.echoRequest();
  echo.setValue(5);
  CHECK(echo.send().wait(io.waitScope).getValue() == 5);
}

}  // namespace
}  // namespace vlapic
