// SPDX-License-Identifier: MIT
#include "front_account.h"

#include <kj/debug.h>

namespace vlapic::daemon {

namespace {
[[noreturn]] void overQuota(kj::StringPtr what) {
  kj::throwFatalException(KJ_EXCEPTION(OVERLOADED, what));
}
}  // namespace

void FrontAccount::chargeVm(uint32_t count) {
  if (vms + 1 > limits.vms) {
    overQuota(kj::str("quota: this front already holds ", vms, " VMs, the most vlapicd allows "
                      "one front (--max-vms-per-front ", limits.vms, ")"));
  }
  if (uint64_t(vcpus) + count > limits.vcpus) {
    overQuota(kj::str("quota: ", count, " more vCPUs would give this front ",
                      uint64_t(vcpus) + count, ", over --max-vcpus-per-front ", limits.vcpus));
  }
  vms++;
  vcpus += count;
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
