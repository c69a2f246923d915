// SPDX-License-Identifier: MIT
#include "front_account.h"

#include <kj/debug.h>

namespace vlapic::daemon {

namespace {
[[noreturn]] void overQuota(kj::StringPtr what) {
  kj::throwFatalException(KJ_EXCEPTION(OVERLOADED, what));
}
}  // namespace

uint64_t FrontAccount::chargeVm(uint32_t count, uint64_t nowNs) {
  if (vms + 1 > limits.vms) {
    overQuota(kj::str("quota: this front already holds ", vms, " VMs, the most vlapicd allows "
                      "one front (--max-vms-per-front ", limits.vms, ")"));
  }
  if (uint64_t(vcpus) + count > limits.vcpus) {
    overQuota(kj::str("quota: ", count, " more vCPUs would give this front ",
                      uint64_t(vcpus) + count, ", over --max-vcpus-per-front ", limits.vcpus));
  }
  // Within its quotas, the rate. Refill: vmCreatesPerSecond creations a
  // second is that many credits a ns, up to the VM quota's worth.
  int64_t full = int64_t(limits.vms) * kCreditPerCreation;
  uint64_t elapsedNs = nowNs > creditAtNs ? nowNs - creditAtNs : 0;
  unsigned __int128 refill = (unsigned __int128)elapsedNs * limits.vmCreatesPerSecond;
  createCredit = refill >= (unsigned __int128)(full - createCredit) ? full
                                                                     : createCredit + int64_t(refill);
  creditAtNs = nowNs;
  int64_t after = createCredit - kCreditPerCreation;
  uint64_t waitNs = 0;
  if (after < 0) {
    // The credit comes back at vmCreatesPerSecond per ns: this creation's
    // turn is when `after` is back at 0.
    uint64_t rate = kj::max(limits.vmCreatesPerSecond, 1u);
    waitNs = (uint64_t(-after) + rate - 1) / rate;
    if (waitNs > kMaxCreationWaitNs) {
      overQuota(kj::str("rate: this front creates VMs faster than vlapicd allows one front "
                        "(--vm-creates-per-front ", limits.vmCreatesPerSecond, " a second after "
                        "its first ", limits.vms, ") for more than a second ahead; retry later"));
    }
  }
  vms++;
  vcpus += count;
  createCredit = after;
  return waitNs;
}

void FrontAccount::refundVm(uint32_t count) {
  KJ_ASSERT(vms >= 1 && vcpus >= count);
  vms--;
  vcpus -= count;
}

void FrontAccount::chargeChannel() {
  if (channels + 1 > limits.channels) {
    overQuota(kj::str("quota: this front already has ", channels, " open channels "
                      "(--max-channels-per-front ", limits.channels, ")"));
  }
  if (serverWide.channels + 1 > serverWide.maxChannels) {
    overQuota(kj::str("vlapicd serves ", serverWide.channels, " channels, its limit "
                      "(--max-channels ", serverWide.maxChannels, "): use the RPC path"));
  }
  channels++;
  serverWide.channels++;
}

void FrontAccount::refundChannel() {
  KJ_ASSERT(channels >= 1 && serverWide.channels >= 1);
  channels--;
  serverWide.channels--;
}

}  // namespace vlapic::daemon
