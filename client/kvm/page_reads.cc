// SPDX-License-Identifier: MIT
#include "client/kvm/page_reads.h"

#include "schema/model/registers.h"
#include <kj/debug.h>

namespace vlapic::kvm {

namespace {

// A read of this register returns exactly the page's word: no computation
// and no side effect. Excluded: TIMER_CURRENT_COUNT (computed from the
// clock at read time; the page holds 0) and registers a mode lacks or a
// VM without CMCI lacks (the server decides #GP / all-ones for those).
bool servedFromPage(const RegisterInfo& info, RegAccess access, uint8_t lvtEntries) {
  if (access != RegAccess::READ_ONLY && access != RegAccess::READ_WRITE) return false;
  if (info.reg == Reg::TIMER_CURRENT_COUNT) return false;
  if (info.minLvtEntries > lvtEntries) return false;
  return true;
}

}  // namespace

VirtualApicPageReader::VirtualApicPageReader(kj::ArrayPtr<const kj::byte> page, uint8_t lvtEntries)
    : words(reinterpret_cast<const uint32_t*>(page.begin())), lvtEntries(lvtEntries) {
  KJ_REQUIRE(page.size() >= 1024, "virtual-APIC page too small", page.size());
  KJ_REQUIRE(reinterpret_cast<uintptr_t>(page.begin()) % alignof(uint32_t) == 0);
}

uint32_t VirtualApicPageReader::load(uint32_t byteOffset) const {
  // One aligned 32-bit load: never torn against the server's aligned store.
  return __atomic_load_n(words + byteOffset / 4, __ATOMIC_ACQUIRE);
}

kj::Maybe<uint64_t> VirtualApicPageReader::mmioRead(uint64_t offset, uint8_t size) const {
  // Only whole, aligned 32-bit register reads (SDM "Local APIC Register
  // Address Space": registers are 128-bit aligned and accessed as 32-bit
  // words); any other width goes to the server, which owns those rules.
  if (size != 4 || offset % 16 != 0 || offset >= 0x400) return nullptr;
  KJ_IF_MAYBE(info, registerAtOffset(uint32_t(offset))) {
    if (servedFromPage(*info, info->xapic, lvtEntries)) return uint64_t(load(info->offset()));
  }
  return nullptr;
}

kj::Maybe<uint64_t> VirtualApicPageReader::msrRead(uint32_t msr) const {
  KJ_IF_MAYBE(info, registerAtMsr(msr)) {
    if (!servedFromPage(*info, info->x2apic, lvtEntries)) return nullptr;
    if (info->reg == Reg::ICR_LOW) {
      // The 64-bit x2APIC ICR is two page words (0x300, and 0x310 holding
      // ICR[63:32]). Only this vCPU's own WRMSR changes them while it runs
      // (it is blocked in that write's exit now), so the two loads cannot
      // straddle a guest write. An INIT from another vCPU or a restore
      // resets them asynchronously; see README.md.
      uint64_t low = load(regOffset(Reg::ICR_LOW));
      uint64_t high = load(regOffset(Reg::ICR_HIGH));
      return low | (high << 32);
    }
    return uint64_t(load(info->offset()));
  }
  return nullptr;
}

}  // namespace vlapic::kvm
