// SPDX-License-Identifier: MIT
// The VM's I/O APIC in the real vlapicd, driven as a front drives it: pins
// through Vm.setIrqLine(s), the guest's MMIO to its window through the
// vCPU's RPC methods and its shared-memory channel, its state through
// Vm.save/restore and Vm.ioapic, and hostile pin requests refused with the
// server still serving.
#include "client/lib/vlapic_client.h"
#include "schema/channel/channel.h"
#include "schema/model/ioapic.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/expect.h"
#include "tests/integration/xapic_addresses.h"

#include <catch2/catch.hpp>
#include <kj/debug.h>
#include <kj/mutex.h>

namespace vlapic {
namespace {

using namespace client;
using namespace testing;
using channel::ChannelFront;
using channel::Request;

const kj::StringPtr kUnconfined[] = {"--no-sandbox"};
constexpr uint64_t kIoRegSelAddress = kIoApicDefaultBase + kIoRegSel;
constexpr uint64_t kIoWinAddress = kIoApicDefaultBase + kIoWin;

uint64_t levelEntry(uint8_t vector, uint8_t destination) {
  return vector | rte::kLevelTriggered | (uint64_t(destination) << rte::kDestinationShift);
}

struct EventCounts {
  kj::MutexGuarded<uint64_t> eois{0};
  EventCallback callback() {
    return [this](kj::ArrayPtr<const Event> batch) {
      auto lock = eois.lockExclusive();
      for (auto& e: batch) if (e.kind == EventKind::EOI) *lock += e.count;
    };
  }
};

struct Served {
  explicit Served(VmOptions options)
      : daemon(VLAPICD_PATH, kUnconfined),
        front(Client::connect(daemon.socketPath())),
        vm(front->createVm(kj::mv(options), events.callback())),
        session(ThreadSession::open(daemon.socketPath())) {}
  ~Served() noexcept(false) {
    int status = daemon.stop();
    auto log = daemon.log();
    INFO(log.cStr());
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(!contains(log, "Sanitizer"));
  }
  static VmOptions options(uint32_t vcpus) {
    VmOptions o;
    o.vcpuCount = vcpus;
    o.name = kj::heapString("ioapic");
    return o;
  }
  kj::Own<VcpuHandle> vcpu(uint32_t index) { return session->attachVcpu(vm->ticket(index)); }

  DaemonProcess daemon;
  kj::Own<Client> front;
  EventCounts events;
  kj::Own<client::Vm> vm;
  kj::Own<ThreadSession> session;
};

// The guest programs an entry the way Linux does: high dword, then low.
void program(VcpuHandle& vcpu, uint32_t pin, uint64_t entry) {
  uint32_t index = kIoApicRedirectionIndex + 2 * pin;
  REQUIRE(vcpu.mmioWrite(kIoRegSelAddress, 4, index + 1).status == AccessStatus::OK);
  REQUIRE(vcpu.mmioWrite(kIoWinAddress, 4, entry >> 32).status == AccessStatus::OK);
  REQUIRE(vcpu.mmioWrite(kIoRegSelAddress, 4, index).status == AccessStatus::OK);
  REQUIRE(vcpu.mmioWrite(kIoWinAddress, 4, uint32_t(entry)).status == AccessStatus::OK);
}

TEST_CASE("vlapicd's I/O APIC: a level pin reaches the guest, its EOI re-sends the still-"
          "asserted pin, and Vm.ioapic reports it", "[integration][ioapic]") {
  Served served(Served::options(2));
  auto cpu1 = served.vcpu(1);
  REQUIRE(cpu1->mmioWrite(kSvr, 4, 0x1FF).status == AccessStatus::OK);
  program(*cpu1, 11, levelEntry(0x4B, 1));

  served.vm->setIrqLine(11, true);
  auto ack = cpu1->acknowledge();
  CHECK(ack.vector == uint8_t(0x4B));
  // SDM 11.8.5: the EOI of a level vector is broadcast to the I/O APIC; the
  // pin is still high, so it arrives again.
  auto eoi = cpu1->mmioWrite(kEoi, 4, 0);
  CHECK(eoi.eoiBroadcast == uint8_t(0x4B));
  CHECK(eoi.pendingVector == uint8_t(0x4B));
  CHECK(cpu1->acknowledge().vector == uint8_t(0x4B));
  served.vm->setIrqLine(11, false);
  CHECK(cpu1->mmioWrite(kEoi, 4, 0).pendingVector == nullptr);

  auto status = served.vm->ioapic();
  CHECK(status.present);
  CHECK(status.base == kIoApicDefaultBase);
  CHECK(status.version == kIoApicVersion11);
  REQUIRE(status.pins.size() == kIoApicPins);
  auto& pin = status.pins[11];
  CHECK(pin.entry == levelEntry(0x4B, 1));   // remote IRR clear again
  CHECK_FALSE(pin.level);
  CHECK(pin.stats.assertions == 1);
  CHECK(pin.stats.messages == 2);
  CHECK(pin.stats.eois == 2);
  CHECK(pin.stats.redeliveries == 1);
  // The front heard of both EOIs too.
  CHECK(served.events.eois.when([](uint64_t n) { return n >= 2; },
                                [](uint64_t& n) { return n; }, 10 * kj::SECONDS) == 2);
}

TEST_CASE("vlapicd's I/O APIC: the guest reaches its window through the vCPU's channel",
          "[integration][ioapic][channel]") {
  Served served(Served::options(1));
  auto cpu = served.vcpu(0);
  auto channel = ChannelFront::connect(cpu->openChannel());
  CHECK(channel->call(Request::mmioWrite(kIoRegSelAddress, 4, kIoApicVersionIndex)).status ==
        AccessStatus::OK);
  auto version = channel->call(Request::mmioRead(kIoWinAddress, 4));
  CHECK(version.status == AccessStatus::OK);
  CHECK(version.value == ((kIoApicPins - 1) << 16 | kIoApicVersion11));
  // Enable the LAPIC and program pin 3 (edge, vector 0x43) over the channel.
  CHECK(channel->call(Request::mmioWrite(kSvr, 4, 0x1FF)).status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kIoRegSelAddress, 4, kIoApicRedirectionIndex + 6))
            .status == AccessStatus::OK);
  CHECK(channel->call(Request::mmioWrite(kIoWinAddress, 4, 0x43)).status == AccessStatus::OK);
  served.vm->setIrqLines(kj::ArrayPtr<const IrqLine>({IrqLine{3, true}, IrqLine{3, false}}));
  auto read = channel->call(Request::mmioRead(kIoWinAddress, 4));
  CHECK(read.value == 0x43);
  CHECK(cpu->interruptState().pendingVector == uint8_t(0x43));
}

TEST_CASE("vlapicd's I/O APIC: Vm.save carries it and Vm.restore brings it back",
          "[integration][ioapic]") {
  Served served(Served::options(1));
  auto cpu = served.vcpu(0);
  program(*cpu, 7, levelEntry(0x47, 0) | rte::kMasked);
  served.vm->setIrqLine(7, true);
  auto saved = served.vm->save();
  KJ_IF_MAYBE(state, saved.ioapic) {
    CHECK(state->redirection[7] == (levelEntry(0x47, 0) | rte::kMasked));
    CHECK(state->pinLevels == 1u << 7);
  } else {
    FAIL("VmState has no I/O APIC");
  }
  // Through the file form vlapicctl uses.
  auto decoded = decodeVmState(encodeVmState(saved));
  REQUIRE(decoded.ioapic != nullptr);

  auto other = served.front->createVm(Served::options(1), [](auto) {});
  other->restore(decoded);
  auto restored = other->ioapic();
  CHECK(restored.pins[7].entry == (levelEntry(0x47, 0) | rte::kMasked));
  CHECK(restored.pins[7].level);

  // A state the device refuses is an error reply, and nothing changes.
  KJ_IF_MAYBE(state, decoded.ioapic) state->pendingEdges = 1u << 7;  // a level entry
  KJ_IF_MAYBE(e, failure([&]() { other->restore(decoded); })) {
    CHECK(contains(e->getDescription(), "I/O APIC"));
  } else {
    FAIL("an impossible I/O APIC state was restored");
  }
  CHECK(other->ioapic().pins[7].pendingEdge == false);
}

TEST_CASE("vlapicd's I/O APIC: bad pin requests get error replies, change nothing, and the "
          "server keeps serving", "[integration][ioapic]") {
  Served served(Served::options(1));
  KJ_IF_MAYBE(e, failure([&]() { served.vm->setIrqLine(24, true); })) {
    CHECK(contains(e->getDescription(), "pin out of range"));
  } else {
    FAIL("pin 24 accepted");
  }
  // A batch with one bad line applies none of them.
  CHECK(failure([&]() {
    served.vm->setIrqLines(kj::ArrayPtr<const IrqLine>({IrqLine{2, true}, IrqLine{200, true}}));
  }) != nullptr);
  CHECK_FALSE(served.vm->ioapic().pins[2].level);
  // Too many lines in one call.
  auto many = kj::heapArray<IrqLine>(5000);
  for (auto& line: many) line = IrqLine{1, true};
  KJ_IF_MAYBE(e, failure([&]() { served.vm->setIrqLines(many); })) {
    CHECK(contains(e->getDescription(), "too many lines"));
  } else {
    FAIL("5000 lines accepted");
  }
  CHECK_FALSE(served.vm->ioapic().pins[1].level);

  // A VM without an I/O APIC refuses pins and does not decode the window.
  auto options = Served::options(1);
  options.ioapic.present = false;
  auto without = served.front->createVm(kj::mv(options), [](auto) {});
  KJ_IF_MAYBE(e, failure([&]() { without->setIrqLine(0, true); })) {
    CHECK(contains(e->getDescription(), "no I/O APIC"));
  } else {
    FAIL("a VM without an I/O APIC took a pin");
  }
  CHECK_FALSE(without->ioapic().present);
  auto cpu = served.session->attachVcpu(without->ticket(0));
  CHECK(cpu->mmioRead(kIoWinAddress, 4).status == AccessStatus::IGNORED);

  // A bad I/O APIC configuration is refused at creation.
  auto bad = Served::options(1);
  bad.ioapic.version = 0x42;
  KJ_IF_MAYBE(e, failure([&]() { served.front->createVm(kj::mv(bad), [](auto) {}); })) {
    CHECK(contains(e->getDescription(), "I/O APIC"));
  } else {
    FAIL("I/O APIC version 0x42 accepted");
  }
  // Still serving.
  served.vm->setIrqLine(1, true);
  CHECK(served.vm->ioapic().pins[1].level);
  CHECK(served.front->echo(7) == 7);
}

}  // namespace
}  // namespace vlapic
