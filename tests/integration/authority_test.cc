// SPDX-License-Identifier: MIT
// Who may call what, over the real vlapicd (issue 14): a front's connection
// reaches only the VMs it created; Admin (every VM by id) is served only on
// the operator socket; per-front quotas refuse one front alone; connections
// over the limit are closed, not starved. And the daemon's own start and
// stop: one clear line and a distinct status when a socket cannot be used,
// SIGHUP survived, socket files removed on a clean stop.
#include "client/lib/vlapic_client.h"
#include "schema/channel/channel.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/expect.h"
#include "tests/integration/rpc_flood.h"
#include "tests/integration/xapic_addresses.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>

#include <csignal>
#include <cstring>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <chrono>
#include <thread>
#include <unistd.h>

namespace vlapic {
namespace {

using namespace client;
using testing::DaemonProcess;
using testing::runTool;
using namespace testing;   // xapic_addresses.h

VmOptions vmOptions(uint32_t vcpus, kj::StringPtr name) {
  VmOptions options;
  options.vcpuCount = vcpus;
  options.name = kj::heapString(name);
  return options;
}

EventCallback ignoreEvents() {
  return [](kj::ArrayPtr<const Event>) {};
}

bool exists(kj::StringPtr path) {
  struct stat st;
  return lstat(path.cStr(), &st) == 0;
}

// Runs `body` on a thread of its own (a ThreadSession is one per thread).
template <typename Func>
void onOwnThread(Func&& body) {
  kj::Maybe<kj::Exception> thrown;
  std::thread thread([&]() { thrown = kj::runCatchingExceptions(body); });
  thread.join();
  KJ_IF_MAYBE(e, thrown) kj::throwFatalException(kj::mv(*e));
}

// The operator's Admin on a connection, or the exception that refused it.
kj::Maybe<kj::Exception> adminRefused(ThreadSession& session) {
  auto admin = session.connection().admin();
  return failure([&]() { admin->listVms().wait(session.waitScope()); });
}

TEST_CASE("authority: a front reaches only its own VMs, Admin only on the operator socket",
          "[integration][authority]") {
  DaemonProcess daemon(VLAPICD_PATH);
  auto operatorPath = adminSocketPathFor(daemon.socketPath());
  REQUIRE(exists(operatorPath));

  auto frontA = Client::connect(daemon.socketPath());
  auto vmA = frontA->createVm(vmOptions(2, "A"), ignoreEvents());
  uint64_t idA = vmA->info().id;
  auto sessionA = ThreadSession::open(daemon.socketPath());
  auto a0 = sessionA->attachVcpu(vmA->ticket(0));
  REQUIRE(a0->mmioWrite(kTpr, 4, 0x20).status == AccessStatus::OK);

  // A second front: Admin refused with a clear reason, by every call.
  onOwnThread([&]() {
  auto frontB = ThreadSession::open(daemon.socketPath());
  auto& ws = frontB->waitScope();
  KJ_IF_MAYBE(e, adminRefused(*frontB)) {
    CHECK(contains(e->getDescription(), "permission denied"));
    CHECK(contains(e->getDescription(), "operator socket"));
  } else {
    FAIL("a front connection was given Admin.listVms");
  }
  auto admin = frontB->connection().admin();
  CHECK(failure([&]() { admin->status().wait(ws); }) != nullptr);
  // Guessing ids: openVm is Admin's, so every id fails, the real one too.
  for (uint64_t guess: {idA, idA + 1, uint64_t(0), ~uint64_t(0)}) {
    auto vm = admin->openVm(guess, 2);
    CHECK(failure([&]() { vm->info().wait(ws); }) != nullptr);
    CHECK(failure([&]() { vm->save().wait(ws); }) != nullptr);
    CHECK(failure([&]() { vm->vcpu(0)->save().wait(ws); }) != nullptr);
    CHECK(failure([&]() { vm->release().wait(ws); }) != nullptr);
  }
  });
  // The client library's listing is the operator's too.
  auto clientB = Client::connect(daemon.socketPath());
  CHECK(failure([&]() { clientB->listVms(); }) != nullptr);
  // Status on a front socket tells a front only about itself.
  auto statusB = clientB->status();
  CHECK(statusB.vms == 0);
  CHECK(statusB.vcpus == 0);
  CHECK(statusB.connections == 1);
  CHECK(frontA->status().vms == 1);
  CHECK(frontA->status().vcpus == 2);
  // vlapicctl pointed at the front socket as if it were the operator's.
  kj::StringPtr listOnFront[] = {"--admin-socket", daemon.socketPath(), "list"};
  auto refused = runTool(VLAPICCTL_PATH, listOnFront);
  CHECK(refused.exitCode != 0);
  CHECK(contains(refused.output, "permission denied"));

  // A untouched by all of it.
  CHECK(a0->mmioRead(kTpr, 4).value == 0x20);
  CHECK(daemon.running());

  // The operator sees and reaches every VM.
  onOwnThread([&]() {
  auto operatorSession = ThreadSession::open(operatorPath);
  auto& ows = operatorSession->waitScope();
  auto operatorAdmin = operatorSession->connection().admin();
  auto vms = operatorAdmin->listVms().wait(ows);
  REQUIRE(vms.size() == 1);
  CHECK(vms[0].id == idA);
  auto opened = operatorAdmin->openVm(idA, 2);
  auto saved = opened->save().wait(ows);
  CHECK(saved.vcpus.size() == 2);
  opened->restore(saved).wait(ows);
  CHECK(operatorAdmin->status().wait(ows).vms == 1);
  });
  auto idText = kj::str(idA);
  kj::StringPtr dump[] = {"--socket", daemon.socketPath(), "dump", idText, "0"};
  auto dumped = runTool(VLAPICCTL_PATH, dump);
  CHECK(dumped.exitCode == 0);
  INFO(dumped.output.cStr());
  CHECK(contains(dumped.output, "TPR"));

  // The operator releases A; A's ticket then fails cleanly for anyone.
  auto ticket = vmA->ticket(1);
  onOwnThread([&]() {
    auto operatorSession = ThreadSession::open(operatorPath);
    operatorSession->connection().admin()->openVm(idA, 2)->release().wait(
        operatorSession->waitScope());
  });
  KJ_IF_MAYBE(e, failure([&]() { sessionA->attachVcpu(ticket); })) {
    CHECK(contains(e->getDescription(), "ticket"));
  } else {
    FAIL("a released VM's ticket was redeemed");
  }
  CHECK(daemon.running());
}

TEST_CASE("quotas: one front over its limits is refused alone", "[integration][authority]") {
  kj::StringPtr args[] = {"--no-sandbox", "--max-vms-per-front", "2", "--max-vcpus-per-front", "5",
                          "--max-channels-per-front", "1"};
  DaemonProcess daemon(VLAPICD_PATH, args);
  auto greedy = ThreadSession::open(daemon.socketPath());
  auto& ws = greedy->waitScope();
  auto first = greedy->connection().createVm(vmOptions(4, "g1"), ignoreEvents()).wait(ws);
  // 4 + 2 vCPUs is over 5.
  KJ_IF_MAYBE(e, failure([&]() {
    greedy->connection().createVm(vmOptions(2, "g2"), ignoreEvents()).wait(ws);
  })) {
    CHECK(e->getType() == kj::Exception::Type::OVERLOADED);
    CHECK(contains(e->getDescription(), "--max-vcpus-per-front"));
  } else {
    FAIL("vCPU quota not enforced");
  }
  auto second = greedy->connection().createVm(vmOptions(1, "g2"), ignoreEvents()).wait(ws);
  KJ_IF_MAYBE(e, failure([&]() {
    greedy->connection().createVm(vmOptions(1, "g3"), ignoreEvents()).wait(ws);
  })) {
    CHECK(contains(e->getDescription(), "--max-vms-per-front"));
  } else {
    FAIL("VM quota not enforced");
  }
  // One channel, then the quota.
  auto channel = first->vcpu(0)->openChannel().wait(ws);
  KJ_IF_MAYBE(e, failure([&]() { first->vcpu(1)->openChannel().wait(ws); })) {
    CHECK(contains(e->getDescription(), "--max-channels-per-front"));
  } else {
    FAIL("channel quota not enforced");
  }
  // Closing the channel gives the slot back (once vlapicd saw the hang-up).
  channel = nullptr;
  kj::Maybe<kj::AutoCloseFd> reopened;
  for (int attempt = 0; attempt < 200 && reopened == nullptr; attempt++) {
    KJ_IF_MAYBE(e, failure([&]() { reopened = first->vcpu(1)->openChannel().wait(ws); })) {
      (void)e;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  CHECK(reopened != nullptr);

  // Another front has its own quota, untouched by the greedy one's.
  auto other = Client::connect(daemon.socketPath());
  auto otherVm = other->createVm(vmOptions(5, "o1"), ignoreEvents());
  CHECK(otherVm->vcpuCount() == 5);

  // Releasing refunds: the greedy front may create again.
  second->release().wait(ws);
  auto third = greedy->connection().createVm(vmOptions(1, "g3"), ignoreEvents()).wait(ws);
  CHECK(third->vcpuCount() == 1);
  CHECK(daemon.running());
}

TEST_CASE("VM creation rate: a front creating VMs in a loop waits its turn and is refused a "
          "second ahead, others are not held up", "[integration][authority]") {
  kj::StringPtr args[] = {"--no-sandbox", "--max-vms-per-front", "3", "--vm-creates-per-front", "2"};
  DaemonProcess daemon(VLAPICD_PATH, args);
  auto churner = ThreadSession::open(daemon.socketPath());
  auto& ws = churner->waitScope();
  using std::chrono::steady_clock;
  auto elapsedMs = [](steady_clock::time_point since) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady_clock::now() - since)
        .count();
  };
  // The whole VM quota at once is fine, released again at once.
  auto start = steady_clock::now();
  for (int i = 0; i < 3; i++) {
    auto vm = churner->connection().createVm(vmOptions(1, "c"), ignoreEvents()).wait(ws);
    CHECK(vm->vcpuCount() == 1);
  }
  CHECK(elapsedMs(start) < 400);
  // Beyond it, two a second: the next one waits half a second for its turn
  // instead of being refused (a refusal would invite a retry loop).
  start = steady_clock::now();
  auto fourth = churner->connection().createVm(vmOptions(1, "c4"), ignoreEvents()).wait(ws);
  CHECK(fourth->vcpuCount() == 1);
  CHECK(elapsedMs(start) >= 400);
  fourth = nullptr;
  // Asking for more than a second ahead at once: the ones within the
  // second wait, the rest are refused at once, naming the flag.
  auto& conn = churner->connection();
  auto a = conn.createVm(vmOptions(1, "c5"), ignoreEvents());
  auto b = conn.createVm(vmOptions(1, "c6"), ignoreEvents());
  auto c = conn.createVm(vmOptions(1, "c7"), ignoreEvents());
  // Meanwhile another front's rate is its own: not held up.
  start = steady_clock::now();
  auto other = Client::connect(daemon.socketPath());
  CHECK(other->createVm(vmOptions(1, "o"), ignoreEvents())->vcpuCount() == 1);
  CHECK(elapsedMs(start) < 400);
  KJ_IF_MAYBE(e, failure([&]() { c.wait(ws); })) {
    CHECK(e->getType() == kj::Exception::Type::OVERLOADED);
    CHECK(contains(e->getDescription(), "--vm-creates-per-front"));
  } else {
    FAIL("a creation more than a second ahead of the rate was not refused");
  }
  CHECK(a.wait(ws)->vcpuCount() == 1);
  CHECK(b.wait(ws)->vcpuCount() == 1);
}

TEST_CASE("connections over the limit are closed at once, the others keep working",
          "[integration][authority]") {
  kj::StringPtr args[] = {"--no-sandbox", "--max-connections", "3"};
  DaemonProcess daemon(VLAPICD_PATH, args);
  // The operator is not counted against the fronts' limit. Wait until
  // vlapicd has seen DaemonProcess's readiness probe hang up: only the
  // operator's own connection is left.
  auto operatorView = Client::connect(adminSocketPathFor(daemon.socketPath()));
  for (int attempt = 0; attempt < 200 && operatorView->status().connections > 1; attempt++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(operatorView->status().connections == 1);
  auto a = Client::connect(daemon.socketPath());
  auto b = Client::connect(daemon.socketPath());
  auto c = Client::connect(daemon.socketPath());
  CHECK(a->echo(1) == 1);
  CHECK(b->echo(2) == 2);
  CHECK(c->echo(3) == 3);
  CHECK(failure([&]() {
    auto refused = Client::connect(daemon.socketPath());
    refused->echo(4);
  }) != nullptr);
  CHECK(operatorView->status().connections == 4);
  CHECK(a->echo(5) == 5);
  // A slot freed is a slot again (once vlapicd saw the hang-up).
  c = nullptr;
  bool served = false;
  for (int attempt = 0; attempt < 200 && !served; attempt++) {
    served = failure([&]() {
      auto again = Client::connect(daemon.socketPath());
      again->echo(6);
    }) == nullptr;
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(served);
  CHECK(daemon.running());
}

uint64_t residentKb(pid_t pid) {
  auto path = kj::str("/proc/", pid, "/status");
  FILE* f = fopen(path.cStr(), "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kb = 0;
  while (fgets(line, sizeof(line), f) != nullptr) {
    if (strncmp(line, "VmRSS:", 6) == 0) kb = strtoull(line + 6, nullptr, 10);
  }
  fclose(f);
  return kb;
}

TEST_CASE("a front that floods calls and never reads the replies is paused, not buffered",
          "[integration][authority]") {
  DaemonProcess daemon(VLAPICD_PATH);
  auto healthy = Client::connect(daemon.socketPath());
  CHECK(healthy->echo(1) == 1);
  uint64_t rssBefore = residentKb(daemon.pid());
  // 400k echo calls, ~40 MB of requests and as much in replies.
  auto flood = testing::echoFloodMessages(400000);
  int fd = -1;
  size_t accepted = testing::writeWithoutReading(daemon.socketPath(), flood, 5.0, &fd);
  KJ_DEFER(close(fd));
  uint64_t rssDuring = residentKb(daemon.pid());
  INFO("accepted " << accepted << " of " << flood.size() << " bytes; vlapicd RSS "
       << rssBefore << " KiB before, " << rssDuring << " KiB during");
  // vlapicd stopped reading: most of the flood never left the flooder.
  CHECK(accepted < flood.size() / 4);
#ifdef __SANITIZE_ADDRESS__
  // ASan keeps freed memory in its quarantine (256 MiB by default), so an
  // ASan vlapicd's RSS says nothing about what it buffers; the accepted
  // bytes above are the evidence there.
  WARN("ASan build: vlapicd's RSS bound not checked (quarantine), RSS " << rssDuring << " KiB");
#else
  CHECK(rssDuring < rssBefore + 32 * 1024);
#endif
  // Nobody else noticed.
  CHECK(healthy->echo(2) == 2);
  auto other = Client::connect(daemon.socketPath());
  CHECK(other->echo(3) == 3);
  CHECK(daemon.running());
}

TEST_CASE("vlapicd start-up failures: one clear line and a distinct exit status",
          "[integration][authority]") {
  DaemonProcess live(VLAPICD_PATH);
  // A second daemon on a live path refuses and leaves the first serving.
  kj::StringPtr second[] = {"--socket", live.socketPath()};
  auto inUse = runTool(VLAPICD_PATH, second);
  INFO(inUse.output.cStr());
  CHECK(inUse.exitCode == 4);
  CHECK(contains(inUse.output, "already answering"));
  CHECK(!contains(inUse.output, "0x"));   // no stack addresses
  auto stillServed = Client::connect(live.socketPath());
  CHECK(stillServed->echo(7) == 7);

  // A path whose directory cannot be made (a file is in the way).
  auto dir = testing::makeTempDir();
  auto blocker = kj::str(dir, "/file");
  FILE* f = fopen(blocker.cStr(), "w");
  REQUIRE(f != nullptr);
  fclose(f);
  auto bad = kj::str(blocker, "/vlapicd.sock");
  kj::StringPtr unusable[] = {"--socket", bad};
  auto notADir = runTool(VLAPICD_PATH, unusable);
  INFO(notADir.output.cStr());
  CHECK(notADir.exitCode == 3);
  CHECK(contains(notADir.output, "cannot"));
  // A regular file where the socket should be is not replaced.
  kj::StringPtr onFile[] = {"--socket", blocker};
  auto fileInWay = runTool(VLAPICD_PATH, onFile);
  CHECK(fileInWay.exitCode == 3);
  CHECK(exists(blocker));
  testing::removeTree(dir);
}

TEST_CASE("vlapicd survives SIGHUP and removes its socket files on a clean stop",
          "[integration][authority]") {
  kj::String socket, operatorSocket;
  {
    DaemonProcess daemon(VLAPICD_PATH);
    socket = kj::heapString(daemon.socketPath());
    operatorSocket = adminSocketPathFor(socket);
    auto front = Client::connect(socket);
    auto vm = front->createVm(vmOptions(1, "kept"), ignoreEvents());
    REQUIRE(kill(daemon.pid(), SIGHUP) == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(daemon.running());
    CHECK(vm->info().vcpuCount == 1);   // its state survived too
    vm = nullptr;
    front = nullptr;
    int status = daemon.stop();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(!exists(socket));
    CHECK(!exists(operatorSocket));
  }
}

}  // namespace
}  // namespace vlapic
