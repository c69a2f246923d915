// SPDX-License-Identifier: MIT
// What one connection to vlapicd may hold, and what it holds now. Every VM
// a connection creates is charged to that connection's account (its vCPUs,
// one 4 KiB virtual-APIC page each, and the shared-memory channels opened on
// them, each a server thread), whichever connection later drives its vCPUs:
// a ticket redeemed elsewhere works for the creator's VM, it does not make
// the redeemer its owner. The account outlives the connection while its VMs
// do (a redeemed ticket keeps a VM alive), so it is refcounted.
//
// Refusals are kj OVERLOADED exceptions naming the limit and the flag that
// sets it: the front sees a clear error reply, nobody else notices.
#pragma once

#include <kj/refcount.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::daemon {

struct FrontLimits {
  uint32_t vms = 64;          // --max-vms-per-front
  uint32_t vcpus = 1024;      // --max-vcpus-per-front (also its pages: one each)
  uint32_t channels = 256;    // --max-channels-per-front
  // VM creations a second, sustained (--vm-creates-per-front): a front may
  // create its whole VM quota at once, then this many a second. Creating
  // and releasing VMs in a loop is the costliest thing a front can make
  // vlapicd's event loop do (bench-load --hostile: a quota loop at 1.7-3.7k
  // creations a second doubled the other fronts' p99); a VMM creates a few.
  uint32_t vmCreatesPerSecond = 100;
};

// Server-wide counts that no one front may take all of: channel threads
// (bounded by the task limit a deployment gives vlapicd).
struct ServerWideUsage {
  uint32_t channels = 0;
  uint32_t maxChannels = 1024;   // --max-channels
};

class FrontAccount final: public kj::Refcounted {
public:
  FrontAccount(uint64_t connectionId, FrontLimits limits, ServerWideUsage& serverWide)
      : connectionId(connectionId), limits(limits), serverWide(serverWide),
        createCredit(int64_t(limits.vms) * kCreditPerCreation) {}

  // Charge or refund a VM of `vcpus` vCPUs, asked for at monotonic `nowNs`.
  // Returns how long the creation must wait for the front's creation rate
  // (0: none); the VM is charged from now. Throws OVERLOADED when over a
  // quota, or when the wait would exceed kMaxCreationWaitNs (the front asks
  // faster than its rate for a whole second ahead). A refund does not give
  // the creation back.
  uint64_t chargeVm(uint32_t vcpus, uint64_t nowNs);
  void refundVm(uint32_t vcpus);
  void chargeChannel();
  void refundChannel();

  uint64_t owner() const { return connectionId; }
  uint32_t vmCount() const { return vms; }
  uint32_t vcpuCount() const { return vcpus; }
  uint32_t channelCount() const { return channels; }

  static constexpr uint64_t kMaxCreationWaitNs = 1'000'000'000;

private:
  static constexpr int64_t kCreditPerCreation = 1'000'000'000;

  uint64_t connectionId;
  FrontLimits limits;
  ServerWideUsage& serverWide;
  uint32_t vms = 0;
  uint32_t vcpus = 0;
  uint32_t channels = 0;
  // The creation rate's token bucket: creations available (in 1/1e9 of a
  // creation, so refilling needs no division), full at the VM quota;
  // negative while creations wait for their turn.
  int64_t createCredit;
  uint64_t creditAtNs = 0;
};

}  // namespace vlapic::daemon
