// SPDX-License-Identifier: MIT
// The operator's interface (issue 15): vlapicctl's --json documents, stats
// on stdout, top without a terminal, -h/--help and the distinct exit
// statuses of vlapicctl and vlapicd, vlapicd's log line format. Against the
// real vlapicd on a private socket. The JSON is parsed with capnp's
// JsonCodec (json_doc.h).
#include "client/lib/vlapic_client.h"
#include "tests/integration/ctl_tool.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/json_doc.h"
#include "tests/integration/xapic_addresses.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>
#include <kj/thread.h>

#include <atomic>
#include <cstring>
#include <regex>
#include <string>

namespace vlapic {
namespace {

using namespace client;
using testing::DaemonProcess;
using testing::runTool;
using testing::runToolSeparated;
using namespace testing;   // xapic_addresses.h

bool contains(kj::StringPtr haystack, kj::StringPtr needle) {
  return strstr(haystack.cStr(), needle.cStr()) != nullptr;
}

// A daemon with one VM of two vCPUs that did some work.
struct Operated: testing::CtlServed {
  Operated(): CtlServed(options(), 1) {
    REQUIRE(vcpu->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
    REQUIRE(vcpu->mmioWrite(kTpr, 4, 0x20).status == AccessStatus::OK);
    REQUIRE(vcpu->msrRead(0x808).status == AccessStatus::GP);   // not in x2APIC mode
  }

  static VmOptions options() {
    VmOptions o;
    o.vcpuCount = 2;
    o.name = kj::str("operated");
    return o;
  }
};

TEST_CASE("vlapicctl --json: status, list, dump and stats carry their documented fields", "[integration]") {
  Operated o;

  auto status = o.ctl({"status", "--json"});
  INFO(status.err.cStr());
  REQUIRE(status.exitCode == 0);
  {
    Json doc(status.out);
    auto root = doc.root();
    CHECK(number(root, "vms") == 1);
    CHECK(number(root, "vcpus") == 2);
    CHECK(number(root, "pid") == o.daemon.pid());
    CHECK(text(root, "socket") == adminSocketPathFor(o.daemon.socketPath()));   // the operator socket used
    CHECK(text(root, "hal") == "host-memory");   // vlapicd --hal host
    CHECK(member(root, "channel_timer_polls").isBoolean());
    for (auto name: {"uptime_ns", "pages_in_use", "connections", "armed_timers", "events_posted",
                     "timer_expiries", "channel_loop_requests", "channel_loop_polls", "channel_loop_skipped",
                     "channel_hints_given", "channel_hinted_polls", "channel_hinted_wakeups",
                     "channel_hinted_requests", "channel_request_timer_fires"}) {
      number(root, name);
    }
    CHECK(text(root, "version").size() > 0);
  }

  auto list = o.ctl({"list", "--json"});
  REQUIRE(list.exitCode == 0);
  {
    Json doc(list.out);
    auto vms = member(doc.root(), "vms");
    REQUIRE(vms.isArray());
    REQUIRE(vms.getArray().size() == 1);
    auto vm = vms.getArray()[0];
    CHECK(kj::str(uint64_t(number(vm, "id"))) == o.id);
    CHECK(text(vm, "name") == "operated");
    CHECK(number(vm, "vcpu_count") == 2);
    for (auto name: {"owner_connection", "created_ns", "events_queued", "batches_in_flight"}) number(vm, name);
    auto vcpus = member(vm, "vcpus").getArray();
    REQUIRE(vcpus.size() == 2);
    CHECK(number(vcpus[1], "index") == 1);
    CHECK(number(vcpus[1], "apic_id") == 1);
    CHECK(number(vcpus[1], "initial_apic_id") == 1);
    CHECK(member(vcpus[0], "bsp").getBoolean());
    CHECK(!member(vcpus[1], "bsp").getBoolean());
    CHECK(text(vcpus[1], "mode") == "xAPIC");
    CHECK(text(vcpus[1], "run_state").size() > 0);
    CHECK(member(vcpus[1], "channel_open").isBoolean());
    CHECK(member(vcpus[1], "timer_deadline_ns").isNull());   // no timer armed
  }

  auto dump = o.ctl({"dump", "--json", o.id, "1"});
  REQUIRE(dump.exitCode == 0);
  {
    Json doc(dump.out);
    auto root = doc.root();
    CHECK(number(root, "vcpu") == 1);
    CHECK(number(root, "tpr") == 0x20);
    CHECK(text(root, "mode") == "xAPIC");
    CHECK(member(root, "pending_vector").isNull());
    CHECK(contains(text(root, "apic_base_decoded"), "xAPIC"));
    CHECK(number(root, "apic_base") == double(0xFEE00800));
    bool sawTpr = false;
    for (auto row: member(root, "registers").getArray()) {
      if (text(row, "name") != "TPR") continue;
      sawTpr = true;
      CHECK(text(row, "offset") == "0x080");
      CHECK(text(row, "msr") == "0x808");
      CHECK(text(row, "raw") == "0x00000020");
      text(row, "decoded");
    }
    CHECK(sawTpr);
  }

  auto stats = o.ctl({"stats", "--json", "--count", "2", "--interval", "0.05", o.id});
  REQUIRE(stats.exitCode == 0);
  {
    // JSON Lines: one document per sample, each holding totals.
    auto out = kj::str(stats.out);
    auto newline = KJ_REQUIRE_NONNULL(out.findFirst('\n'));
    CHECK(out.slice(newline + 1).findFirst('\n') != nullptr);
    Json doc(kj::str(out.slice(0, newline)));
    auto root = doc.root();
    CHECK(kj::str(uint64_t(number(root, "vm"))) == o.id);
    for (auto name: {"sampled_ns", "events_posted", "batches_posted", "events_coalesced", "timer_expiries",
                     "msis_delivered"}) {
      number(root, name);
    }
    auto vcpu = member(root, "vcpus").getArray()[1];
    CHECK(number(vcpu, "index") == 1);
    CHECK(number(vcpu, "writes") >= 2);
    CHECK(number(vcpu, "gp_faults") == 1);
    for (auto name: {"reads", "ignored_accesses", "accepted", "acknowledged", "eois", "ipis_sent",
                     "timer_expiries", "events_posted"}) {
      number(vcpu, name);
    }
    bool sawTpr = false;
    for (auto r: member(vcpu, "registers").getArray()) {
      if (text(r, "name") == "TPR") {
        sawTpr = true;
        CHECK(number(r, "count") == 1);
        CHECK(text(r, "offset") == "0x80");
      }
    }
    CHECK(sawTpr);
  }
}

TEST_CASE("vlapicctl stats prints on stdout, top --once and --count print frames without a terminal",
          "[integration]") {
  Operated o;
  auto stats = o.ctl({"stats", o.id});
  REQUIRE(stats.exitCode == 0);
  CHECK(contains(stats.out, "TPR="));
  CHECK(contains(stats.out, "(totals)"));
  CHECK(stats.err == "");

  auto once = o.ctl({"top", "--once", "--interval", "0.1"});
  INFO(once.err.cStr());
  REQUIRE(once.exitCode == 0);
  INFO(once.out.cStr());
  CHECK(contains(once.out, "1 VMs, 2 vCPUs"));
  CHECK(contains(once.out, "accesses"));
  CHECK(contains(once.out, "IPIs"));
  CHECK(contains(once.out, "timer"));
  CHECK(contains(once.out, "events"));
  CHECK(contains(once.out, "operated"));
  CHECK(!contains(once.out, "\x1b["));   // not a terminal: no redrawing
  // One VM row and a row per vCPU.
  std::string out = once.out.cStr();
  std::smatch m;
  CHECK(std::regex_search(out, m, std::regex("\n" + std::string(o.id.cStr()) + " +all +operated")));
  CHECK(std::regex_search(out, m, std::regex("\n +0 +[0-9.]+ ")));
  CHECK(std::regex_search(out, m, std::regex("\n +1 +[0-9.]+ ")));

  auto two = o.ctl({"top", "--count", "2", "--interval", "0.05"});
  REQUIRE(two.exitCode == 0);
  std::string frames = two.out.cStr();
  size_t count = 0;
  for (size_t at = frames.find("rates per second"); at != std::string::npos;
       at = frames.find("rates per second", at + 1)) {
    count++;
  }
  CHECK(count == 2);
}

TEST_CASE("vlapicctl top: a vCPU's access rate follows its accesses", "[integration]") {
  Operated o;
  // Another thread keeps reading vCPU 0's TPR while top --once takes its
  // two samples: the rate it shows for vCPU 0 must be well above zero.
  std::atomic<bool> done{false};
  auto stress = kj::heap<kj::Thread>([&]() {
    auto session = ThreadSession::open(o.daemon.socketPath());
    auto vcpu = session->attachVcpu(o.vm->ticket(0));
    while (!done) vcpu->mmioRead(kTpr, 4);
  });
  auto once = o.ctl({"top", "--once", "--interval", "0.3"});
  done = true;
  stress = nullptr;
  REQUIRE(once.exitCode == 0);
  INFO(once.out.cStr());
  std::string out = once.out.cStr();
  std::smatch m;
  REQUIRE(std::regex_search(out, m, std::regex("\n +0 +([0-9.]+) ")));
  CHECK(std::stod(m[1]) > 10);
}

TEST_CASE("-h and --help exit 0, bad usage exits 2, no server 3, no such VM or vCPU 4", "[integration]") {
  for (auto tool: {VLAPICCTL_PATH, VLAPICD_PATH}) {
    INFO(tool);
    for (auto flag: {"-h", "--help"}) {
      auto help = runToolSeparated(tool, {flag});
      CHECK(help.exitCode == 0);
      CHECK(contains(help.out, "Exit status: 0"));
      CHECK(contains(help.out, "2 bad command line"));
    }
    auto bad = runTool(tool, {"--frobnicate"});
    CHECK(bad.exitCode == 2);
  }
  auto ctlHelp = runToolSeparated(VLAPICCTL_PATH, {"-h"});
  CHECK(contains(ctlHelp.out, "3 cannot reach vlapicd"));
  CHECK(contains(ctlHelp.out, "4 no such VM or vCPU"));
  CHECK(contains(ctlHelp.out, "channel_request_timer_fires"));   // the JSON fields are listed
  auto subHelp = runToolSeparated(VLAPICCTL_PATH, {"dump", "-h"});
  CHECK(subHelp.exitCode == 0);
  CHECK(contains(subHelp.out, "--json"));
  auto kvmHelp = runToolSeparated(VLAPIC_KVM_PATH, {"-h"});
  CHECK(kvmHelp.exitCode == 0);
  CHECK(contains(kvmHelp.out, "Exit status"));

  CHECK(runTool(VLAPICCTL_PATH, {"dump", "1"}).exitCode == 2);            // missing argument
  CHECK(runTool(VLAPICCTL_PATH, {"stats", "--count", "0", "1"}).exitCode == 2);
  CHECK(runTool(VLAPICCTL_PATH, {"frobnicate"}).exitCode == 2);
  CHECK(runTool(VLAPICD_PATH, {"--hal", "nonsense"}).exitCode == 2);

  auto dir = testing::makeTempDir();
  KJ_DEFER(testing::removeTree(dir));
  auto nobody = kj::str(dir, "/nobody.sock");
  for (auto command: {"status", "list", "top"}) {
    INFO(command);
    auto absent = runToolSeparated(VLAPICCTL_PATH, {"--socket", nobody, command});
    CHECK(absent.exitCode == 3);
    CHECK(contains(absent.err, "cannot reach vlapicd"));
  }

  Operated o;
  auto noVm = o.ctl({"dump", "999", "0"});
  CHECK(noVm.exitCode == 4);
  CHECK(contains(noVm.err, "no VM with id 999"));
  CHECK(o.ctl({"stats", "999"}).exitCode == 4);
  CHECK(o.ctl({"save", "999", kj::str(dir, "/x")}).exitCode == 4);
  auto noVcpu = o.ctl({"dump", o.id, "2"});
  CHECK(noVcpu.exitCode == 4);
  CHECK(contains(noVcpu.err, "has no vCPU 2"));
  // A failure that is neither: a file that is not a saved state.
  auto junk = kj::str(dir, "/junk.state");
  CHECK(runTool("/bin/sh", {"-c", kj::str("head -c 3000 /dev/urandom > ", junk)}).exitCode == 0);
  CHECK(o.ctl({"restore", o.id, junk}).exitCode == 1);
}

TEST_CASE("vlapicd log lines: monotonic seconds, level, message, no source paths", "[integration]") {
  kj::String log;
  {
    kj::StringPtr args[] = {"--verbose"};
    DaemonProcess daemon(VLAPICD_PATH, args);
    {
      auto front = Client::connect(daemon.socketPath());
      auto vm = front->createVm(Operated::options(), [](kj::ArrayPtr<const Event>) {});
    }
    daemon.stop();
    log = daemon.log();
  }
  INFO(log.cStr());
  std::string text = log.cStr();
  std::regex line("^[0-9]+\\.[0-9]{6} (INFO|WARNING|ERROR|FATAL|DEBUG) [^ ].*$");
  size_t lines = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    auto one = text.substr(start, end - start);
    start = end + 1;
    if (one.rfind("    ", 0) == 0) continue;   // a continuation line
    INFO(one);
    CHECK(std::regex_match(one, line));
    lines++;
  }
  CHECK(lines >= 4);   // serving on, front connected, VM created, ..., stopped
  CHECK(contains(log, " INFO serving on "));
  CHECK(contains(log, " INFO VM created"));
  CHECK(contains(log, " INFO stopped ("));
  CHECK(!contains(log, ".cc:"));
  CHECK(!contains(log, VLAPIC_SOURCE_DIR));

  // A start-up failure is one ERROR line and its own status (4: a live
  // server on the path), not an uncaught exception with a stack trace.
  DaemonProcess first(VLAPICD_PATH);
  auto second = runToolSeparated(VLAPICD_PATH, {"--no-sandbox", "--socket", first.socketPath()});
  CHECK(second.exitCode == 4);
  INFO(second.err.cStr());
  CHECK(contains(second.err, " ERROR "));
  CHECK(contains(second.err, "already answering"));
  CHECK(!contains(second.err, "Uncaught exception"));
}

}  // namespace
}  // namespace vlapic
