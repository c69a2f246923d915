// SPDX-License-Identifier: MIT
// vlapic-kvm's I/O APIC path without KVM: the VlapicdBackend the machine
// uses, against a real vlapicd, driven the way a vCPU thread drives it on
// an I/O APIC MMIO exit (mmioRead/mmioWrite at 0xFEC00000) and a device's
// wire change (setIrqLine), on both transports. What KVM adds on top (the
// exits themselves, injection) is covered by the ioapic guest kernel.
#include "client/kvm/vlapicd_backend.h"
#include "schema/model/ioapic.h"
#include "schema/model/registers.h"
#include "schema/model/types.h"
#include "tests/integration/daemon_process.h"

#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <thread>

using namespace vlapic;
using namespace vlapic::kvm;

namespace {

// Counts what the backend tells the machine; any thread.
class CountingSink final : public ApicEventSink {
public:
  std::atomic<uint32_t> deliverable{0}, attentions{0}, lost{0};
  void interruptDeliverable(uint32_t) override { deliverable++; }
  void nmi(uint32_t, uint32_t) override {}
  void init(uint32_t) override {}
  void startup(uint32_t, uint8_t) override {}
  void unhandledEvent(uint32_t, kj::StringPtr) override {}
  void attention(uint32_t) override { attentions++; }
  void restored(uint32_t) override {}
  void backendLost(kj::StringPtr) override { lost++; }
};

constexpr uint64_t kLapic = kDefaultApicBase;

struct Fixture {
  testing::DaemonProcess daemon{VLAPICD_PATH};
  CountingSink sink;
  kj::Own<VlapicdBackend> backend;

  Fixture(ApicTransport transport, uint8_t version) {
    VlapicdVmSettings settings;
    settings.name = kj::str("ioapic-backend-test");
    settings.transport = transport;
    settings.pageReads = false;
    settings.ioapicVersion = version;
    backend = kj::heap<VlapicdBackend>(daemon.socketPath(), settings, sink);
    backend->openOnThisThread(0);
    // Software-enable the LAPIC (xAPIC mode after reset).
    backend->mmioWrite(0, kLapic + regOffset(Reg::SVR), 4, 0x1FF, false);
  }
  ~Fixture() noexcept(false) { backend->closeOnThisThread(0); }

  uint32_t ioapicRead(uint32_t index) {
    backend->mmioWrite(0, kIoApicDefaultBase + kIoRegSel, 4, index, false);
    return uint32_t(backend->mmioRead(0, kIoApicDefaultBase + kIoWin, 4, false).value);
  }
  void ioapicWrite(uint32_t index, uint32_t value) {
    backend->mmioWrite(0, kIoApicDefaultBase + kIoRegSel, 4, index, false);
    auto access = backend->mmioWrite(0, kIoApicDefaultBase + kIoWin, 4, value, false);
    REQUIRE(access.kind == ApicAccess::Kind::VALUE);
  }
  void program(uint32_t pin, uint8_t vector, bool level) {
    ioapicWrite(kIoApicRedirectionIndex + 2 * pin + 1, 0);  // destination APIC ID 0
    ioapicWrite(kIoApicRedirectionIndex + 2 * pin, vector | (level ? rte::kLevelTriggered : 0));
  }
  // Waits (as the vCPU thread does: events fetched on its own thread) for
  // a deliverable interrupt and acknowledges it; nullptr after 2 s.
  kj::Maybe<uint8_t> nextInterrupt() {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < end) {
      backend->fetchEvents(0);
      if (sink.deliverable.load() > 0) {
        sink.deliverable = 0;
        KJ_IF_MAYBE(vector, backend->acknowledge(0).vector) return *vector;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return nullptr;
  }
  void eoi() { backend->mmioWrite(0, kLapic + regOffset(Reg::EOI), 4, 0, false); }
};

void ioapicThroughBackend(ApicTransport transport) {
  Fixture f(transport, kIoApicVersion11);
  REQUIRE(KJ_ASSERT_NONNULL(f.backend->ioApicBase()) == kIoApicDefaultBase);
  CHECK(f.ioapicRead(kIoApicVersionIndex) == ((23u << 16) | kIoApicVersion11));

  // Edge pin 10: one interrupt per rising edge.
  f.program(10, 0x40, false);
  f.backend->setIrqLine(10, true);
  CHECK(f.nextInterrupt() == uint8_t(0x40));
  f.eoi();
  f.backend->setIrqLine(10, false);
  f.backend->setIrqLine(10, true);
  CHECK(f.nextInterrupt() == uint8_t(0x40));
  f.eoi();
  f.backend->setIrqLine(10, false);

  // Level pin 11: again after an EOI while asserted, not after lowering.
  f.program(11, 0x50, true);
  f.backend->setIrqLine(11, true);
  CHECK(f.nextInterrupt() == uint8_t(0x50));
  CHECK((f.ioapicRead(kIoApicRedirectionIndex + 22) & rte::kRemoteIrr) != 0);
  f.eoi();  // the LAPIC's EOI broadcast reaches vlapicd's I/O APIC
  CHECK(f.nextInterrupt() == uint8_t(0x50));
  f.backend->setIrqLine(11, false);
  f.eoi();
  CHECK((f.ioapicRead(kIoApicRedirectionIndex + 22) & rte::kRemoteIrr) == 0);
  CHECK(f.backend->acknowledge(0).vector == nullptr);
  CHECK(f.sink.lost.load() == 0);
}

}  // namespace

TEST_CASE("vlapic-kvm backend: I/O APIC MMIO and setIrqLine reach vlapicd over RPC",
          "[kvm][ioapic]") {
  ioapicThroughBackend(ApicTransport::RPC);
}

TEST_CASE("vlapic-kvm backend: I/O APIC MMIO and setIrqLine reach vlapicd on the channel",
          "[kvm][ioapic]") {
  ioapicThroughBackend(ApicTransport::CHANNEL);
}

TEST_CASE("vlapic-kvm backend: --ioapic-version 0x20 and --no-ioapic reach vlapicd", "[kvm][ioapic]") {
  {
    Fixture f(ApicTransport::RPC, kIoApicVersion20);
    CHECK(f.ioapicRead(kIoApicVersionIndex) == ((23u << 16) | kIoApicVersion20));
  }
  testing::DaemonProcess daemon(VLAPICD_PATH);
  CountingSink sink;
  VlapicdVmSettings settings;
  settings.name = kj::str("ioapic-backend-test");
  settings.transport = ApicTransport::RPC;
  settings.ioapic = false;
  VlapicdBackend backend(daemon.socketPath(), settings, sink);
  CHECK(backend.ioApicBase() == nullptr);
  CHECK_THROWS(backend.setIrqLine(4, true));
}
