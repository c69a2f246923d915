// SPDX-License-Identifier: MIT
// The VM's I/O APIC as the operator sees it (issue 12): vlapicctl ioapic
// and dump, in text and --json, save and restore, against the real vlapicd
// on a private socket. The guest side programs the redirection table the
// way a guest does, through a vCPU's MMIO accesses at 0xFEC00000; the
// devices' side raises pins with Vm::setIrqLine.
#include "client/lib/vlapic_client.h"
#include "tests/integration/ctl_tool.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/expect.h"
#include "tests/integration/json_doc.h"
#include "tests/integration/xapic_addresses.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>

#include <regex>
#include <string>

namespace vlapic {
namespace {

using namespace client;
using namespace testing;

constexpr uint64_t kIoRegSelGpa = kIoApicDefaultBase + kIoRegSel;
constexpr uint64_t kIoWinGpa = kIoApicDefaultBase + kIoWin;

// Entries as a guest writes them (82093AA datasheet 3.2.4): the fields by
// their bits, so that a test names what it programs.
constexpr uint64_t kLowestPriority = 1ull << rte::kDeliveryModeShift;
constexpr uint64_t destination(uint8_t apicId) { return uint64_t(apicId) << rte::kDestinationShift; }

// A daemon, a VM of one vCPU with its LAPIC software-enabled (the I/O
// APIC's messages need an enabled LAPIC to be accepted), and vlapicctl.
struct IoApicServed: CtlServed {
  explicit IoApicServed(bool ioapic = true): CtlServed(options(ioapic), 0) {
    REQUIRE(vcpu->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  }

  static VmOptions options(bool ioapic) {
    VmOptions o;
    o.name = kj::str("ioapic");
    o.ioapic.present = ioapic;
    return o;
  }

  void select(uint32_t index) {
    REQUIRE(vcpu->mmioWrite(kIoRegSelGpa, 4, index).status == AccessStatus::OK);
  }

  // Pin `pin`'s entry, written the guest's way: IOREGSEL, then IOWIN, per half.
  void program(uint32_t pin, uint64_t entry) {
    select(kIoApicRedirectionIndex + 2 * pin + 1);
    REQUIRE(vcpu->mmioWrite(kIoWinGpa, 4, entry >> 32).status == AccessStatus::OK);
    select(kIoApicRedirectionIndex + 2 * pin);
    REQUIRE(vcpu->mmioWrite(kIoWinGpa, 4, uint32_t(entry)).status == AccessStatus::OK);
  }

  uint32_t readLow(uint32_t pin) {
    select(kIoApicRedirectionIndex + 2 * pin);
    auto read = vcpu->mmioRead(kIoWinGpa, 4);
    REQUIRE(read.status == AccessStatus::OK);
    return uint32_t(read.value);
  }
};

// The `pin`'s object in an I/O APIC document's pins[].
capnp::JsonValue::Reader pinOf(capnp::JsonValue::Reader ioapic, uint32_t pin) {
  auto pins = member(ioapic, "pins").getArray();
  REQUIRE(pins.size() == kIoApicPins);
  auto p = pins[pin];
  REQUIRE(number(p, "pin") == pin);
  return p;
}

bool matches(kj::StringPtr text, const char* pattern) {
  std::string s = text.cStr();
  return std::regex_search(s, std::regex(pattern));
}

TEST_CASE("vlapicctl ioapic: a raised pin's level, assertion, remote IRR and counters", "[integration][ioapic]") {
  IoApicServed s;
  // Pin 5: vector 0x41, fixed, physical destination 0, edge, unmasked.
  s.program(5, 0x41 | destination(0));
  // Pin 9: vector 0x52, level-triggered: remote IRR holds until the EOI.
  s.program(9, 0x52 | rte::kLevelTriggered | destination(0));
  s.vm->setIrqLine(5, true);
  s.vm->setIrqLine(9, true);
  CHECK(s.vcpu->interruptState().pendingVector == uint8_t(0x52));

  auto table = s.ctl({"ioapic", s.id});
  INFO(table.out.cStr());
  INFO(table.err.cStr());
  REQUIRE(table.exitCode == 0);
  CHECK(contains(table.out, kj::str("VM ", s.id, " I/O APIC at 0xFEC00000: ID 0, version 0x11")));
  // pin wire asserted pending remote-IRR entry assertions messages EOIs redeliveries coalesced
  CHECK(matches(table.out, "\n  5 +high +yes +no +0 +0x0000000000000041 +1 +1 +0 +0 +0\n"));
  CHECK(matches(table.out, "\n  9 +high +yes +no +1 +0x000000000000[CD]052 +1 +1 +0 +0 +0\n"));
  CHECK(matches(table.out, "\n  0 +low +no +no +0 +0x0000000000010000 +0 +0 +0 +0 +0\n"));

  // The guest takes 0x52, its device lowers the wire, the EOI clears
  // remote IRR (and is counted) without a redelivery; then 0x41.
  CHECK(s.vcpu->acknowledge().vector == uint8_t(0x52));
  s.vm->setIrqLine(9, false);
  REQUIRE(s.vcpu->mmioWrite(kEoi, 4, 0).status == AccessStatus::OK);
  CHECK(s.vcpu->acknowledge().vector == uint8_t(0x41));
  REQUIRE(s.vcpu->mmioWrite(kEoi, 4, 0).status == AccessStatus::OK);
  s.vm->setIrqLine(5, false);
  s.vm->setIrqLine(5, true);   // a second edge

  auto json = s.ctl({"ioapic", "--json", s.id});
  REQUIRE(json.exitCode == 0);
  Json doc(json.out);
  auto root = doc.root();
  CHECK(kj::str(uint64_t(number(root, "vm"))) == s.id);
  CHECK(boolean(root, "present"));
  CHECK(number(root, "base") == double(kIoApicDefaultBase));
  CHECK(number(root, "id") == 0);
  CHECK(number(root, "version") == 0x11);
  CHECK(number(root, "ioregsel") == kIoApicRedirectionIndex + 2 * 9);   // the last select
  auto five = pinOf(root, 5);
  CHECK(boolean(five, "level"));
  CHECK(boolean(five, "asserted"));
  CHECK(!boolean(five, "pending_edge"));
  CHECK(!boolean(five, "remote_irr"));
  CHECK(text(five, "entry") == "0x0000000000000041");
  CHECK(number(five, "assertions") == 2);
  CHECK(number(five, "messages") == 2);
  CHECK(number(five, "eois") == 0);
  auto nine = pinOf(root, 9);
  CHECK(!boolean(nine, "level"));
  CHECK(!boolean(nine, "asserted"));
  CHECK(!boolean(nine, "remote_irr"));
  CHECK(number(nine, "messages") == 1);
  CHECK(number(nine, "eois") == 1);
  CHECK(number(nine, "redeliveries") == 0);
  CHECK(number(nine, "coalesced") == 0);
  CHECK(text(nine, "trigger") == "level");
}

TEST_CASE("vlapicctl dump: the redirection table the guest programmed, decoded by name", "[integration][ioapic]") {
  IoApicServed s;
  // Pin 3: vector 0x63, lowest priority, logical destination 0x03, level,
  // active low, masked. Pin 7: vector 0x41 to APIC ID 0x1234 (extended
  // destination ID 0x12 in bits 55:49).
  s.program(3, 0x63 | kLowestPriority | rte::kLogicalDestination | rte::kActiveLow | rte::kLevelTriggered |
                   rte::kMasked | destination(3));
  s.program(7, 0x41 | destination(0x34) | (0x12ull << rte::kExtendedDestinationShift));
  s.vm->setIrqLine(3, true);   // active low: driving it high de-asserts

  auto dump = s.ctl({"dump", s.id, "0"});
  INFO(dump.out.cStr());
  INFO(dump.err.cStr());
  REQUIRE(dump.exitCode == 0);
  CHECK(contains(dump.out, "spurious vector"));   // the vCPU's registers stay first
  CHECK(contains(dump.out, "I/O APIC at 0xFEC00000: ID 0, version 0x11, IOREGSEL 0x1E"));
  CHECK(contains(dump.out,
      "\n  3    high  0x030000000001A963  vector 0x63, delivery LowestPriority, dest mode logical, status idle, "
      "polarity low, remote IRR 0, trigger level, masked, destination 0x03\n"));
  CHECK(contains(dump.out,
      "\n  7    low   0x3424000000000041  vector 0x41, delivery Fixed, dest mode physical, status idle, "
      "polarity high, remote IRR 0, trigger edge, unmasked, destination 0x1234"));
  CHECK(contains(dump.out, "\n  23   low   0x0000000000010000  vector 0x00, delivery Fixed"));

  auto json = s.ctl({"dump", "--json", s.id, "0"});
  REQUIRE(json.exitCode == 0);
  Json doc(json.out);
  auto ioapic = member(doc.root(), "ioapic");
  CHECK(boolean(ioapic, "present"));
  CHECK(number(ioapic, "ioregsel") == 0x1E);
  auto three = pinOf(ioapic, 3);
  CHECK(number(three, "vector") == 0x63);
  CHECK(text(three, "delivery_mode") == "LowestPriority");
  CHECK(text(three, "destination_mode") == "logical");
  CHECK(text(three, "delivery_status") == "idle");
  CHECK(text(three, "polarity") == "low");
  CHECK(!boolean(three, "remote_irr"));
  CHECK(text(three, "trigger") == "level");
  CHECK(boolean(three, "masked"));
  CHECK(number(three, "destination") == 3);
  CHECK(boolean(three, "level"));
  CHECK(!boolean(three, "asserted"));
  CHECK(text(three, "entry") == "0x030000000001A963");
  CHECK(contains(text(three, "decoded"), "delivery LowestPriority"));
  auto seven = pinOf(ioapic, 7);
  CHECK(number(seven, "destination") == 0x1234);
  CHECK(text(seven, "delivery_mode") == "Fixed");
  CHECK(!boolean(seven, "masked"));
  // The vCPU's own fields are still there.
  CHECK(number(doc.root(), "vcpu") == 0);
  member(doc.root(), "registers");
}

TEST_CASE("vlapicctl save and restore carry the I/O APIC", "[integration][ioapic]") {
  IoApicServed s;
  s.program(2, 0x41 | destination(0));
  s.program(4, 0x44 | rte::kMasked);
  s.vm->setIrqLine(4, true);   // masked edge: kept pending
  auto file = kj::str(s.daemon.directory(), "/vm.state");
  auto save = s.ctl({"save", s.id, file});
  INFO(save.err.cStr());
  REQUIRE(save.exitCode == 0);
  CHECK(contains(save.out, "1 vCPU(s) and the I/O APIC"));

  s.program(2, 0x99 | rte::kMasked);
  s.vm->setIrqLine(4, false);
  auto restore = s.ctl({"restore", s.id, file});
  INFO(restore.err.cStr());
  REQUIRE(restore.exitCode == 0);
  CHECK(contains(restore.out, "1 vCPU(s) and the I/O APIC"));
  CHECK(s.readLow(2) == 0x41);
  auto status = s.vm->ioapic();
  CHECK(status.pins[4].level);
  CHECK(status.pins[4].pendingEdge);
  CHECK(status.pins[4].entry == (0x44 | rte::kMasked));
}

TEST_CASE("vlapicctl ioapic: no I/O APIC, no such VM, help", "[integration][ioapic]") {
  IoApicServed s(false);
  auto none = s.ctl({"ioapic", s.id});
  INFO(none.err.cStr());
  CHECK(none.exitCode == 0);
  CHECK(contains(none.out, "I/O APIC: none in vlapicd"));
  auto json = s.ctl({"ioapic", "--json", s.id});
  REQUIRE(json.exitCode == 0);
  {
    Json doc(json.out);
    CHECK(!boolean(doc.root(), "present"));
  }
  auto dump = s.ctl({"dump", "--json", s.id, "0"});
  REQUIRE(dump.exitCode == 0);
  {
    Json doc(dump.out);
    CHECK(!boolean(member(doc.root(), "ioapic"), "present"));
  }
  auto missing = s.ctl({"ioapic", "999"});
  CHECK(missing.exitCode == 4);
  CHECK(contains(missing.err, "no VM with id 999"));
  CHECK(runToolSeparated(VLAPICCTL_PATH, {"ioapic"}).exitCode == 2);   // missing argument
  auto help = runToolSeparated(VLAPICCTL_PATH, {"ioapic", "-h"});
  CHECK(help.exitCode == 0);
  CHECK(contains(help.out, "--json"));
  auto top = runToolSeparated(VLAPICCTL_PATH, {"--help"});
  CHECK(contains(top.out, "ioapic"));
  CHECK(contains(top.out, "pending_edge"));   // its JSON fields are listed
}

TEST_CASE("setIrqLine: pin 24 and a VM without an I/O APIC are refused with a clear error",
          "[integration][ioapic]") {
  {
    IoApicServed s;
    KJ_IF_MAYBE(e, failure([&]() { s.vm->setIrqLine(24, true); })) {
      CHECK(contains(e->getDescription(), "pin out of range"));
    } else {
      FAIL("pin 24 accepted");
    }
    s.vm->setIrqLine(23, true);   // the connection and the VM are still fine
    CHECK(s.vm->ioapic().pins[23].level);
  }
  IoApicServed bare(false);
  KJ_IF_MAYBE(e, failure([&]() { bare.vm->setIrqLine(0, true); })) {
    CHECK(contains(e->getDescription(), "no I/O APIC"));
  } else {
    FAIL("a VM without an I/O APIC took setIrqLine");
  }
  CHECK(!bare.vm->ioapic().present);
}

}  // namespace
}  // namespace vlapic
