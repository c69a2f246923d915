// SPDX-License-Identifier: MIT
// libFuzzer harness for vlapicd's request handling (server/daemon/server.h),
// in process: one fresh Server per input on a kj event loop, a front
// connected to it through an in-memory capability pipe.
//
// The first byte chooses the mode:
// - raw: the rest of the input is written to the server as the front's byte
//   stream (Cap'n Proto framing, segment tables, RPC messages of any shape);
// - structured: the rest is a sequence of RPC calls with hostile arguments
//   through the schema's capabilities (VM configurations, vCPU indices,
//   access sizes, state blobs, tickets, calls after release, an event sink
//   that answers, never answers or throws).
// After the input the front disconnects and the harness checks what the
// protocol promises: the server never crashes (ASan/UBSan), every call
// returns (libFuzzer's -timeout catches a stall), a second front is served
// normally (echo), and once every front is gone all of them are released:
// no connection, VM, vCPU, page or armed timer left.
//
// Built only in the clang configuration (tests/fuzz/run.sh).

#include "server/daemon/server.h"
#include "schema/vlapic.capnp.h"

#include <capnp/rpc-twoparty.h>
#include <capnp/serialize.h>
#include "tests/fuzz/trace.h"

#include <fuzzer/FuzzedDataProvider.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <cstdio>
#include <cstdlib>

namespace vlapic {
namespace {

[[noreturn]] void violated(const char* what, uint64_t got, uint64_t expected) {
  fprintf(stderr, "INVARIANT VIOLATED: %s (got %llu, expected %llu)\n", what,
          (unsigned long long)got, (unsigned long long)expected);
  abort();
}

// The front's event sink: answers at once, never (a stalled front: the
// server must queue with flow control, not block), or with an error.
class Sink final : public proto::EventSink::Server {
public:
  explicit Sink(uint8_t behaviour) : behaviour(behaviour % 3) {}

protected:
  kj::Promise<void> deliver(DeliverContext context) override {
    (void)context.getParams().getEvents().size();
    switch (behaviour) {
      case 0: return kj::READY_NOW;
      case 1: return kj::NEVER_DONE;
      default: return KJ_EXCEPTION(FAILED, "front rejects the events");
    }
  }

private:
  uint8_t behaviour;
};

// Runs one call to completion; an error reply is a legitimate answer to a
// hostile request, so it is only counted.
template <typename Request>
auto call(kj::WaitScope& waitScope, Request&& request)
    -> kj::Maybe<decltype(request.send().wait(waitScope))> {
  try {
    return request.send().wait(waitScope);
  } catch (const kj::Exception& e) {
    TRACE("  -> error: %s\n", e.getDescription().cStr());
    return nullptr;
  }
}

class Front {
public:
  Front(FuzzedDataProvider& in, kj::AsyncIoContext& io, kj::AsyncCapabilityStream& stream,
        daemon::Authority authority)
      : in(in), io(io), authority(authority), client(stream, 4),
        service(client.bootstrap().castAs<proto::Service>()) {}

  void run() {
    unsigned steps = 0;
    while (in.remaining_bytes() > 0 && steps++ < 256) step();
  }

private:
  FuzzedDataProvider& in;
  kj::AsyncIoContext& io;
  daemon::Authority authority;
  capnp::TwoPartyClient client;
  proto::Service::Client service;
  kj::Vector<proto::Vm::Client> vms;
  kj::Vector<proto::Vcpu::Client> vcpus;
  kj::Vector<kj::Array<kj::byte>> tickets;
  kj::Vector<kj::Array<capnp::word>> savedVcpus;  // serialised VcpuState messages

  uint32_t smallOrAny() {
    return in.ConsumeBool() ? in.ConsumeIntegralInRange<uint32_t>(0, 8) : in.ConsumeIntegral<uint32_t>();
  }

  kj::Maybe<proto::Vm::Client&> someVm() {
    if (vms.empty()) return nullptr;
    return vms[in.ConsumeIntegralInRange<size_t>(0, vms.size() - 1)];
  }
  kj::Maybe<proto::Vcpu::Client&> someVcpu() {
    if (vcpus.empty()) return nullptr;
    return vcpus[in.ConsumeIntegralInRange<size_t>(0, vcpus.size() - 1)];
  }

  void createVm() {
    auto request = service.createVmRequest();
    auto config = request.initConfig();
    // Mostly small VMs (the fuzzer's time is better spent on requests), and
    // sometimes the limits and past them.
    uint32_t count = in.ConsumeBool() ? in.ConsumeIntegralInRange<uint32_t>(0, 8)
                                      : in.ConsumeIntegralInRange<uint32_t>(0, 5000);
    config.setVcpuCount(count);
    if (in.ConsumeBool()) {
      auto ids = config.initApicIds(in.ConsumeIntegralInRange<uint32_t>(0, 10));
      for (uint32_t i = 0; i < ids.size(); ++i) ids.set(i, smallOrAny());
    }
    config.setBootVcpu(smallOrAny());
    if (in.ConsumeBool()) config.setTimerHz(in.ConsumeIntegral<uint64_t>());
    if (in.ConsumeBool()) config.setTscHz(in.ConsumeIntegral<uint64_t>());
    config.setLvtEntries(in.ConsumeIntegral<uint8_t>());
    config.setEoiBroadcastSuppression(in.ConsumeBool());
    config.setX2apicSupported(in.ConsumeBool());
    config.setTscDeadlineSupported(in.ConsumeBool());
    config.setStrictReservedBits(in.ConsumeBool());
    if (in.ConsumeBool()) config.setMinTimerPeriodNs(in.ConsumeIntegral<uint64_t>());
    config.setBspLint0ExtInt(in.ConsumeBool());
    config.setName(in.ConsumeRandomLengthString(64));
    config.setMaxBatchesInFlight(smallOrAny());
    config.setMaxEventsPerBatch(smallOrAny());
    request.setSink(kj::heap<Sink>(in.ConsumeIntegral<uint8_t>()));
    TRACE("createVm(%u vCPUs)\n", count);
    KJ_IF_MAYBE(response, call(io.waitScope, request)) vms.add(response->getVm());
  }

  void vcpuAccess(proto::Vcpu::Client& vcpu) {
    switch (in.ConsumeIntegralInRange<int>(0, 12)) {
      case 0: {
        auto r = vcpu.mmioReadRequest();
        r.setAddress(in.ConsumeBool() ? 0xFEE00000 + in.ConsumeIntegralInRange<uint32_t>(0, 0xFFF)
                                      : in.ConsumeIntegral<uint64_t>());
        r.setSize(in.ConsumeIntegral<uint8_t>());
        TRACE("mmioRead\n");
        call(io.waitScope, r);
        break;
      }
      case 1: {
        auto r = vcpu.mmioWriteRequest();
        r.setAddress(in.ConsumeBool() ? 0xFEE00000 + (in.ConsumeIntegralInRange<uint32_t>(0, 0x3F) << 4)
                                      : in.ConsumeIntegral<uint64_t>());
        r.setSize(in.ConsumeBool() ? 4 : in.ConsumeIntegral<uint8_t>());
        r.setValue(in.ConsumeIntegral<uint64_t>());
        TRACE("mmioWrite\n");
        call(io.waitScope, r);
        break;
      }
      case 2: {
        auto r = vcpu.msrReadRequest();
        r.setMsr(in.ConsumeBool() ? 0x800 + in.ConsumeIntegral<uint8_t>() : in.ConsumeIntegral<uint32_t>());
        TRACE("msrRead\n");
        call(io.waitScope, r);
        break;
      }
      case 3: {
        auto r = vcpu.msrWriteRequest();
        static constexpr uint32_t kMsrs[] = {0x1B, 0x6E0, 0x830, 0x80B, 0x83F, 0x832, 0x838, 0x80F};
        r.setMsr(in.ConsumeBool() ? in.PickValueInArray(kMsrs) : 0x800 + in.ConsumeIntegral<uint8_t>());
        r.setValue(in.ConsumeIntegral<uint64_t>());
        TRACE("msrWrite\n");
        call(io.waitScope, r);
        break;
      }
      case 4: TRACE("acknowledge\n"); call(io.waitScope, vcpu.acknowledgeRequest()); break;
      case 5: TRACE("interruptState\n"); call(io.waitScope, vcpu.interruptStateRequest()); break;
      case 6: {
        auto r = vcpu.setCr8Request();
        r.setCr8(in.ConsumeIntegral<uint8_t>());
        call(io.waitScope, r);
        break;
      }
      case 7: {
        auto r = vcpu.startupRequest();
        r.setVector(in.ConsumeIntegral<uint8_t>());
        call(io.waitScope, r);
        break;
      }
      case 8: {
        TRACE("vcpu save\n");
        KJ_IF_MAYBE(response, call(io.waitScope, vcpu.saveRequest())) {
          capnp::MallocMessageBuilder copy;
          copy.setRoot(response->getState());
          savedVcpus.add(capnp::messageToFlatArray(copy));
        }
        break;
      }
      case 9: vcpuRestore(vcpu); break;
      case 10: TRACE("stats/info/pages\n");
        call(io.waitScope, vcpu.statsRequest());
        call(io.waitScope, vcpu.infoRequest());
        call(io.waitScope, vcpu.pagesRequest());
        break;
      case 11: {
        TRACE("ticket\n");
        KJ_IF_MAYBE(response, call(io.waitScope, vcpu.ticketRequest())) {
          tickets.add(kj::heapArray(response->getTicket()));
        }
        break;
      }
      case 12: {
        TRACE("virtualApicPage\n");
        KJ_IF_MAYBE(response, call(io.waitScope, vcpu.virtualApicPageRequest())) {
          call(io.waitScope, response->getPage().infoRequest());
        }
        break;
      }
    }
  }

  // A restore from a previously saved state, mutated, or from scratch.
  void vcpuRestore(proto::Vcpu::Client& vcpu) {
    auto request = vcpu.restoreRequest();
    auto state = request.initState();
    if (!savedVcpus.empty() && in.ConsumeBool()) {
      auto& saved = savedVcpus[in.ConsumeIntegralInRange<size_t>(0, savedVcpus.size() - 1)];
      capnp::FlatArrayMessageReader reader(saved);
      auto original = reader.getRoot<proto::VcpuState>();
      state.setApicBase(original.getApicBase());
      state.setX2apic32BitIds(original.getX2apic32BitIds());
      auto regs = kj::heapArray(original.getRegs());
      auto hidden = kj::heapArray(original.getHidden());
      unsigned flips = in.ConsumeIntegralInRange<unsigned>(0, 4);
      for (unsigned i = 0; i < flips && regs.size() > 0; ++i) {
        regs[in.ConsumeIntegralInRange<size_t>(0, regs.size() - 1)] = in.ConsumeIntegral<uint8_t>();
      }
      if (in.ConsumeBool() && hidden.size() > 0) {
        hidden[in.ConsumeIntegralInRange<size_t>(0, hidden.size() - 1)] = in.ConsumeIntegral<uint8_t>();
      }
      if (in.ConsumeBool()) state.setApicBase(in.ConsumeIntegral<uint64_t>());
      state.setRegs(regs);
      state.setHidden(hidden);
    } else {
      state.setApicBase(in.ConsumeIntegral<uint64_t>());
      auto regs = in.ConsumeBytes<uint8_t>(in.ConsumeBool() ? 1024 : in.ConsumeIntegralInRange<size_t>(0, 2048));
      state.setRegs(kj::arrayPtr(regs.data(), regs.size()));
      auto hidden = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 96));
      state.setHidden(kj::arrayPtr(hidden.data(), hidden.size()));
      state.setX2apic32BitIds(in.ConsumeBool());
    }
    state.setIndex(smallOrAny());
    TRACE("vcpu restore\n");
    call(io.waitScope, request);
  }

  void vmOp(proto::Vm::Client& vm) {
    switch (in.ConsumeIntegralInRange<int>(0, 12)) {
      case 10: {
        auto r = vm.setIrqLineRequest();
        r.setPin(in.ConsumeBool() ? in.ConsumeIntegralInRange<uint8_t>(0, 23)
                                  : in.ConsumeIntegral<uint8_t>());
        r.setLevel(in.ConsumeBool());
        TRACE("setIrqLine\n");
        call(io.waitScope, r);
        break;
      }
      case 11: {
        auto r = vm.setIrqLinesRequest();
        auto lines = r.initLines(in.ConsumeIntegralInRange<uint32_t>(0, in.ConsumeBool() ? 8 : 1100));
        for (auto line: lines) {
          line.setPin(in.ConsumeIntegralInRange<uint8_t>(0, in.ConsumeBool() ? 23 : 255));
          line.setLevel(in.ConsumeBool());
        }
        TRACE("setIrqLines %u\n", lines.size());
        call(io.waitScope, r);
        break;
      }
      case 12: call(io.waitScope, vm.ioapicRequest()); break;
      case 0: {
        auto r = vm.vcpuRequest();
        r.setIndex(smallOrAny());
        TRACE("vm.vcpu\n");
        KJ_IF_MAYBE(response, call(io.waitScope, r)) vcpus.add(response->getVcpu());
        break;
      }
      case 1: call(io.waitScope, vm.listVcpusRequest()); break;
      case 2: {
        auto r = vm.deliverMsiRequest();
        auto msi = r.initMsi();
        msi.setAddress(in.ConsumeBool() ? 0xFEE00000 | (in.ConsumeIntegral<uint32_t>() & 0xFFFFF)
                                        : in.ConsumeIntegral<uint64_t>());
        msi.setData(in.ConsumeIntegral<uint32_t>());
        TRACE("deliverMsi\n");
        call(io.waitScope, r);
        break;
      }
      case 3: {
        auto r = vm.deliverIoApicRequest();
        r.setEntry(in.ConsumeIntegral<uint64_t>());
        TRACE("deliverIoApic\n");
        call(io.waitScope, r);
        break;
      }
      case 4: {
        auto r = vm.setLintRequest();
        r.setVcpu(in.ConsumeBool() ? 0xFFFFFFFF : smallOrAny());
        r.setPin(in.ConsumeIntegral<uint8_t>());
        r.setLevel(in.ConsumeBool());
        TRACE("setLint\n");
        call(io.waitScope, r);
        break;
      }
      case 5: {
        // VM-wide save, then restore of it (possibly mutated) into some VM.
        TRACE("vm save/restore\n");
        KJ_IF_MAYBE(saved, call(io.waitScope, vm.saveRequest())) {
          auto target = someVm();
          auto& into = target == nullptr ? vm : KJ_ASSERT_NONNULL(target);
          auto r = into.restoreRequest();
          r.setState(saved->getState());
          auto state = r.getState();
          if (in.ConsumeBool()) state.setTscOffset(in.ConsumeIntegral<int64_t>());
          if (in.ConsumeBool()) state.setLowestPriorityCursor(in.ConsumeIntegral<uint32_t>());
          if (in.ConsumeBool() && state.getVcpus().size() > 0) {
            auto vcpu = state.getVcpus()[in.ConsumeIntegralInRange<uint32_t>(0, state.getVcpus().size() - 1)];
            vcpu.setIndex(smallOrAny());
            vcpu.setApicBase(in.ConsumeIntegral<uint64_t>());
          }
          r.setResumeTscAtSaved(in.ConsumeBool());
          call(io.waitScope, r);
        }
        break;
      }
      case 6: call(io.waitScope, vm.statsRequest()); break;
      case 7: call(io.waitScope, vm.infoRequest()); break;
      case 8: {
        KJ_IF_MAYBE(response, call(io.waitScope, vm.apicAccessPageRequest())) {
          call(io.waitScope, response->getPage().infoRequest());
        }
        break;
      }
      case 9: TRACE("release\n"); call(io.waitScope, vm.releaseRequest()); break;
    }
  }

  void step() {
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
      case 0:
      case 1: createVm(); break;
      case 2:
      case 3: KJ_IF_MAYBE(vm, someVm()) vmOp(*vm); break;
      case 4:
      case 5:
      case 6: KJ_IF_MAYBE(vcpu, someVcpu()) vcpuAccess(*vcpu); break;
      case 7: {
        auto r = service.attachVcpuRequest();
        if (!tickets.empty() && in.ConsumeBool()) {
          auto ticket = kj::heapArray(tickets[in.ConsumeIntegralInRange<size_t>(0, tickets.size() - 1)].asPtr());
          if (in.ConsumeBool() && ticket.size() > 0) ticket[0] ^= 1;
          r.setTicket(ticket);
        } else {
          auto bytes = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 64));
          r.setTicket(kj::arrayPtr(bytes.data(), bytes.size()));
        }
        TRACE("attachVcpu\n");
        KJ_IF_MAYBE(response, call(io.waitScope, r)) vcpus.add(response->getVcpu());
        break;
      }
      case 8: {
        TRACE("admin\n");
        auto admin = service.adminRequest().send().getAdmin();
        bool granted = call(io.waitScope, admin.statusRequest()) != nullptr;
        if (granted != (authority == daemon::Authority::OPERATOR)) {
          violated("Admin is served exactly on operator connections", granted, 0);
        }
        KJ_IF_MAYBE(list, call(io.waitScope, admin.listVmsRequest())) {
          auto r = admin.openVmRequest();
          r.setId(list->getVms().size() > 0 && in.ConsumeBool() ? list->getVms()[0].getId()
                                                                : in.ConsumeIntegral<uint64_t>());
          KJ_IF_MAYBE(opened, call(io.waitScope, r)) {
            if (in.ConsumeBool()) vms.add(opened->getVm());
          }
        }
        break;
      }
      case 9: {
        // Drop capabilities (the VM goes when its creator's last one does).
        if (in.ConsumeBool() && !vcpus.empty()) {
          vcpus.removeLast();
        } else if (!vms.empty()) {
          vms.removeLast();
        }
        io.waitScope.poll();
        break;
      }
    }
  }
};

void echoWorks(kj::AsyncIoContext& io, daemon::Server& server) {
  auto pipe = io.provider->newCapabilityPipe();
  server.accept(kj::mv(pipe.ends[0]));
  capnp::TwoPartyClient client(*pipe.ends[1], 4);
  auto request = client.bootstrap().castAs<proto::Service>().echoRequest();
  request.setValue(0x1234);
  auto response = request.send().wait(io.waitScope);
  if (response.getValue() != 0x1234) violated("echo after hostile front", response.getValue(), 0x1234);
}

// Lets the server notice disconnects and release what they held.
void settle(kj::AsyncIoContext& io, daemon::Server& server) {
  for (int turn = 0; turn < 1000 && server.counters().connections > 0; ++turn) {
    io.provider->getTimer().afterDelay(10 * kj::MICROSECONDS).wait(io.waitScope);
  }
}

void checkReleased(daemon::Server& server) {
  auto c = server.counters();
  if (c.connections != 0) violated("connections left after every front disconnected", c.connections, 0);
  if (c.vms != 0) violated("VMs left after every front disconnected", c.vms, 0);
  if (c.vcpus != 0) violated("vCPUs left after every front disconnected", c.vcpus, 0);
  if (c.pagesInUse > 1) {
    // The server object's one APIC-access page may stay; nothing else.
    violated("pages left after every front disconnected", c.pagesInUse, 1);
  }
  if (c.armedTimers != 0) violated("timers left armed after every front disconnected", c.armedTimers, 0);
}

void fuzzOne(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  auto io = kj::setupAsyncIo();
  daemon::ServerOptions options;
  options.maxMessageWords = 64 * 1024;  // small, so oversized messages are reachable
  options.maxVms = 8;
  options.maxVcpusPerVm = 64;
  daemon::Server server(io.unixEventPort, options);
  bool raw = in.ConsumeBool();
  {
    auto pipe = io.provider->newCapabilityPipe();
    // A front must be refused Admin; the operator gets it.
    auto authority = !raw && in.ConsumeBool() ? daemon::Authority::OPERATOR
                                              : daemon::Authority::FRONT;
    server.accept(kj::mv(pipe.ends[0]), authority);
    if (raw) {
      auto bytes = in.ConsumeRemainingBytes<uint8_t>();
      TRACE("raw: %zu bytes\n", bytes.size());
      try {
        pipe.ends[1]->write(bytes.data(), bytes.size())
            .exclusiveJoin(io.provider->getTimer().afterDelay(100 * kj::MILLISECONDS))
            .wait(io.waitScope);
      } catch (const kj::Exception&) {
        // The server may hang up on garbage: that is its right.
      }
      // Read whatever the server answers until it hangs up or goes quiet.
      kj::byte buffer[4096];
      for (int reads = 0; reads < 64; ++reads) {
        size_t n = 0;
        try {
          n = pipe.ends[1]->tryRead(buffer, 1, sizeof(buffer))
                  .exclusiveJoin(io.provider->getTimer().afterDelay(2 * kj::MILLISECONDS).then(
                      []() { return size_t(0); }))
                  .wait(io.waitScope);
        } catch (const kj::Exception&) {
          break;
        }
        if (n == 0) break;
      }
    } else {
      Front front(in, io, *pipe.ends[1], authority);
      front.run();
    }
    // The front goes away.
  }
  settle(io, server);
  echoWorks(io, server);
  settle(io, server);
  checkReleased(server);
}

}  // namespace
}  // namespace vlapic

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Hostile requests make the server log errors; keep the fuzzer's output
  // readable (FUZZ_TRACE shows them).
  if (!vlapic::fuzz::tracing()) kj::_::Debug::setLogLevel(kj::LogSeverity::FATAL);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vlapic::fuzzOne(data, size);
  return 0;
}
