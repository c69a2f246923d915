// SPDX-License-Identifier: MIT
// libFuzzer harness for the per-vCPU LAPIC core (server/core/lapic.h).
//
// The input is a VM configuration followed by a sequence of operations a
// guest, a front or the server can perform on one Lapic: MMIO and MSR reads
// and writes (IA32_APIC_BASE and IA32_TSC_DEADLINE included), interrupt
// acceptance and acknowledge, LINT pins and LVT sources, INIT/SIPI/RESET,
// CR8, clock advances with timer processing, and save/restore of mutated
// snapshots. After every operation the invariants the SDM fixes (and the
// contracts lapic.h states) are checked; a violation prints what broke and
// aborts, which libFuzzer records as a crash with its reproducer.
//
// Built only by tests/fuzz/standalone (clang, -fsanitize=fuzzer,address,
// undefined), driven by tests/fuzz/run.sh.

#include "server/core/lapic.h"
#include "schema/model/registers.h"
#include "hal/hal.h"

#include "tests/fuzz/invariant.h"
#include "tests/fuzz/trace.h"

#include <fuzzer/FuzzedDataProvider.h>
#include <kj/debug.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace vlapic {
namespace {

// Core bugs this harness found that are reported to the core's owner and
// not fixed yet. Meeting one abandons the input (counted, printed at exit)
// instead of aborting, so the bounded CI run keeps looking for new bugs;
// FUZZ_STRICT=1 makes them fatal again (the ctest entry fuzz-known-findings
// runs the reproducers under tests/fuzz/repro that way). Remove an entry once
// its bug is fixed.
struct KnownFinding {
  const char* id;
  const char* description;
  uint64_t hits = 0;
};
// Fixed: timer-save-rounding (the snapshot now carries the remaining time
// exactly), restore-timer-count-mismatch and restore-remaining-exceeds-period
// (the snapshot carries the running count's length; checkSnapshot() allows
// a clamped count rescaled by divide changes). Their reproducers are in the
// corpus. None is open.
std::vector<KnownFinding> knownFindings = {};
bool strictFindings = false;
struct AbandonInput {};

// Called at the check an open finding trips (with none open, nothing calls it).
[[maybe_unused]] void knownFinding(kj::StringPtr id) {
  for (auto& finding : knownFindings) {
    if (id != finding.id) continue;
    if (strictFindings) {
      fprintf(stderr, "KNOWN FINDING %s (fatal under FUZZ_STRICT): %s\n", finding.id,
              finding.description);
      abort();
    }
    ++finding.hits;
    throw AbandonInput();
  }
  // Not (or no longer) a known finding: the caller's check decides.
}

void reportKnownFindings() {
  for (auto& finding : knownFindings) {
    if (finding.hits > 0) {
      fprintf(stderr, "KNOWN FINDING %s: hit by %llu inputs (not fixed yet): %s\n", finding.id,
              (unsigned long long)finding.hits, finding.description);
    }
  }
}

using fuzz::violated;

constexpr uint32_t kLvtMask = 1u << 16;

// Highest set bit of a 256-bit bitmap stored as eight 32-bit registers
// starting at `first`, or -1.
int highestBit(const Lapic& lapic, Reg first) {
  for (int slice = 7; slice >= 0; --slice) {
    uint32_t word = lapic.readRegister(Reg(uint16_t(first) + slice));
    if (word != 0) return slice * 32 + 31 - __builtin_clz(word);
  }
  return -1;
}

bool bitSet(const Lapic& lapic, Reg first, unsigned vector) {
  return (lapic.readRegister(Reg(uint16_t(first) + vector / 32)) >> (vector % 32)) & 1;
}

kj::ArrayPtr<const Reg> lvtRegisters(const LapicConfig& config) {
  static constexpr Reg kLvts[] = {Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC,
                                  Reg::LVT_LINT0, Reg::LVT_LINT1,   Reg::LVT_ERROR,
                                  Reg::LVT_CMCI};
  return kj::arrayPtr(kLvts, config.lvtEntries >= 7 ? 7 : 6);
}

// Everything observable about a vCPU except its statistics: a failed restore
// must leave all of it byte-identical.
struct Observation {
  uint64_t apicBase;
  ApicMode mode;
  RunState runState;
  uint64_t deadline;  // 0: none
  bool lint0, lint1;
  std::vector<kj::byte> page;
  std::vector<kj::byte> savedRegs;
  std::vector<kj::byte> savedHidden;
  uint64_t savedApicBase;

  static Observation of(const Lapic& lapic) {
    Observation o;
    o.apicBase = lapic.apicBase();
    o.mode = lapic.mode();
    o.runState = lapic.runState();
    o.deadline = lapic.timerDeadlineNs().orDefault(0);
    o.lint0 = lapic.lintLevel(0);
    o.lint1 = lapic.lintLevel(1);
    auto bytes = lapic.page().bytes();
    o.page.assign(bytes.begin(), bytes.end());
    LapicSnapshot s = lapic.save();
    o.savedRegs.assign(s.regs, s.regs + sizeof(s.regs));
    o.savedHidden.assign(s.hidden.begin(), s.hidden.end());
    o.savedApicBase = s.apicBase;
    return o;
  }

  // Index of the first difference, or -1; with FUZZ_TRACE, where.
  int differsFrom(const Observation& o) const {
    int field = firstDifferentField(o);
    if (vlapic::fuzz::tracing() && field >= 0) {
      auto firstByte = [](const std::vector<kj::byte>& a, const std::vector<kj::byte>& b) {
        for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
          if (a[i] != b[i]) return i;
        }
        return kj::min(a.size(), b.size());
      };
      size_t at = field == 6 ? firstByte(page, o.page)
                : field == 7 ? firstByte(savedRegs, o.savedRegs)
                : field == 8 ? firstByte(savedHidden, o.savedHidden) : 0;
      fprintf(stderr, "observation differs: field %d, byte %#zx\n", field, at);
    }
    return field;
  }

  int firstDifferentField(const Observation& o) const {
    if (apicBase != o.apicBase) return 1;
    if (mode != o.mode) return 2;
    if (runState != o.runState) return 3;
    if (deadline != o.deadline) return 4;
    if (lint0 != o.lint0 || lint1 != o.lint1) return 5;
    if (page != o.page) return 6;
    if (savedRegs != o.savedRegs) return 7;
    if (savedHidden != o.savedHidden) return 8;
    if (savedApicBase != o.savedApicBase) return 9;
    return -1;
  }
};

class Harness {
public:
  Harness(FuzzedDataProvider& in)
      : in(in),
        clock(1'000'000'000ull + in.ConsumeIntegralInRange<uint64_t>(0, 1ull << 40)),
        hal(hal::newHostMemoryHal(clock)),
        config(makeConfig(in)),
        tsc(clock, in.ConsumeIntegralInRange<uint64_t>(1'000'000, 5'000'000'000ull)),
        initialId(in.ConsumeBool() ? in.ConsumeIntegral<uint32_t>()
                                   : in.ConsumeIntegral<uint8_t>()),
        bootVcpu(in.ConsumeBool()),
        lapic(*hal, tsc, config, initialId, bootVcpu) {}

  void run() {
    TRACE("config: lvt %u x2apic %d tscdl %d eoisupp %d strict %d lint0quirk %d maxphys %u "
          "timerHz %llu minPeriod %llu tscHz %llu id %#x boot %d\n",
          config.lvtEntries, config.x2apicSupported, config.tscDeadlineSupported,
          config.eoiBroadcastSuppression, config.strictReservedBits, config.bspLint0ExtInt,
          config.maxPhysAddrBits, (unsigned long long)config.timer.timerHz,
          (unsigned long long)config.timer.minPeriodNs, (unsigned long long)tsc.frequencyHz(),
          initialId, bootVcpu);
    checkAll();
    while (in.remaining_bytes() > 0 && step < 4096) {
      ++step;
      doOne();
      checkAll();
    }
  }

private:
  FuzzedDataProvider& in;
  hal::ManualClock clock;
  kj::Own<hal::Hal> hal;
  LapicConfig config;
  GuestTsc tsc;
  uint32_t initialId;
  // The VM's boot vCPU (a construction fact; the guest may later clear the
  // BSP bit, but RESET and KVM's LINT0 quirk follow the boot vCPU).
  bool bootVcpu;
  Lapic lapic;
  unsigned step = 0;
  // KVM's reset quirk (LapicConfig::bspLint0ExtInt) leaves the boot vCPU's
  // LVT LINT0 as unmasked ExtINT (0x700) although SVR is software-disabled;
  // that value is allowed until LINT0 changes, and after a restore (a KVM
  // state saved right after reset holds it).
  bool lint0ExtIntAllowed = true;

  static LapicConfig makeConfig(FuzzedDataProvider& in) {
    LapicConfig c;
    c.lvtEntries = in.ConsumeBool() ? 7 : 6;
    c.x2apicSupported = in.ConsumeBool();
    c.tscDeadlineSupported = in.ConsumeBool();
    c.eoiBroadcastSuppression = in.ConsumeBool();
    c.strictReservedBits = in.ConsumeBool();
    c.bspLint0ExtInt = in.ConsumeBool();
    c.maxPhysAddrBits = in.ConsumeIntegralInRange<uint8_t>(36, 52);
    c.timer.timerHz = in.ConsumeBool() ? 1'000'000'000ull
                                       : in.ConsumeIntegralInRange<uint64_t>(1'000, 4'000'000'000ull);
    c.timer.minPeriodNs = in.ConsumeIntegralInRange<uint64_t>(0, 1'000'000);
    return c;
  }

  uint64_t mmioBase() const {
    return lapic.apicBase() & ~uint64_t(0xFFF) & ((uint64_t(1) << config.maxPhysAddrBits) - 1);
  }

  uint64_t someValue() {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: return in.ConsumeIntegral<uint8_t>();
      case 1: return in.ConsumeIntegral<uint32_t>();
      case 2: return uint64_t(in.ConsumeIntegral<uint32_t>()) << 32 | in.ConsumeIntegral<uint32_t>();
      default: return 0;
    }
  }

  uint32_t someMsr() {
    switch (in.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
      case 1: return kMsrX2apicFirst + in.ConsumeIntegral<uint8_t>();
      case 2: return kMsrApicBase;
      case 3: return kMsrTscDeadline;
      default: return in.ConsumeIntegral<uint32_t>();
    }
  }

  uint64_t someGpa() {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
      case 1:  // a register slot
        return mmioBase() + (uint64_t(in.ConsumeIntegralInRange<uint16_t>(0, 0x3F)) << 4);
      case 2: return mmioBase() + in.ConsumeIntegralInRange<uint16_t>(0, 0xFFF);
      default: return in.ConsumeIntegral<uint64_t>();
    }
  }

  uint8_t someSize() {
    static constexpr uint8_t kSizes[] = {4, 4, 1, 2, 8, 3, 0};
    return in.PickValueInArray(kSizes);
  }

  // ---- operations ----

  void doOne() {
    switch (in.ConsumeIntegralInRange<int>(0, 18)) {
      case 0: mmioRead(); break;
      case 1: mmioWrite(); break;
      case 2: msrRead(someMsr()); break;
      case 3: msrWrite(someMsr(), someValue()); break;
      case 4: apicBaseWrite(); break;
      case 5: accept(); break;
      case 6: acknowledge(); break;
      case 7: eoi(); break;
      case 8: lint(); break;
      case 9: lvtSource(); break;
      case 10: initOrStartup(); break;
      case 11: timerStep(); break;
      case 12: tscDeadline(); break;
      case 13: setCr8(); break;
      case 14: saveRestoreRoundTrip(); break;
      case 15: restoreMutated(); break;
      case 16: registerWrite(); break;
      case 17: TRACE("%u: reset()\n", step); lapic.reset(); lint0ExtIntAllowed = true; checkAfterReset(); break;
      case 18: restoreKvmImage(); break;
    }
  }

  void mmioRead() {
    uint64_t gpa = someGpa();
    uint8_t size = someSize();
    bool decoding = lapic.mmioDecoding();
    bool inWindow = lapic.mmioWindowContains(gpa);
    AccessResult r = lapic.mmioRead(gpa, size);
    TRACE("%u: mmioRead(%#llx, %u) -> status %u reason %u value %#llx\n", step,
          (unsigned long long)gpa, size, unsigned(r.status), unsigned(r.reason),
          (unsigned long long)r.value);
    checkMmioResult(r, decoding, inWindow, size, true);
    // The page is what a guest reads (lapic.h): an accepted aligned 32-bit
    // read of a plain register returns the page's value.
    if (r.status == AccessStatus::OK && size == 4 && (gpa & 0xF) == 0 && inWindow) {
      Reg reg = Reg((gpa - mmioBase()) >> 4);
      if (reg != Reg::TIMER_CURRENT_COUNT && reg != Reg::APR) {
        EXPECT_EQ(r.value, lapic.readRegister(reg), "MMIO read differs from the page");
      }
    }
  }

  void checkMmioResult(const AccessResult& r, bool decoding, bool inWindow, uint8_t size,
                       bool read = false) {
    // MMIO never faults: bad accesses are dropped or read as something.
    EXPECT_TRUE(r.status != AccessStatus::GP, "MMIO access raised #GP");
    if (inWindow && !decoding) {
      EXPECT_TRUE(r.status == AccessStatus::IGNORED, "MMIO access while not decoding took effect");
      uint64_t ones = size >= 8 ? ~uint64_t(0) : (uint64_t(1) << (size * 8)) - 1;
      if (read && size > 0 && size <= 8) {
        EXPECT_EQ(r.value & ones, ones, "MMIO read while not decoding is not all-ones");
      }
    }
  }

  void mmioWrite() {
    uint64_t gpa = someGpa();
    uint8_t size = someSize();
    uint64_t value = someValue();
    bool decoding = lapic.mmioDecoding();
    bool inWindow = lapic.mmioWindowContains(gpa);
    Observation before = Observation::of(lapic);
    bool eoi = decoding && inWindow && size == 4 && gpa == mmioBase() + regOffset(Reg::EOI);
    int isrv = highestBit(lapic, Reg::ISR0);
    AccessResult r = lapic.mmioWrite(gpa, size, value);
    TRACE("%u: mmioWrite(%#llx, %u, %#llx) -> status %u reason %u\n", step,
          (unsigned long long)gpa, size, (unsigned long long)value, unsigned(r.status),
          unsigned(r.reason));
    checkMmioResult(r, decoding, inWindow, size);
    if (inWindow && !decoding) {
      EXPECT_TRUE(Observation::of(lapic).differsFrom(before) < 0,
                  "MMIO write while not decoding changed state");
    }
    if (eoi) checkEoi(r, isrv, before);
  }

  AccessResult msrRead(uint32_t msr) {
    ApicMode mode = lapic.mode();
    AccessResult r = lapic.msrRead(msr);
    TRACE("%u: msrRead(%#x) -> status %u reason %u value %#llx\n", step, msr, unsigned(r.status),
          unsigned(r.reason), (unsigned long long)r.value);
    checkMsrMode(r, msr, mode);
    if (msr == kMsrApicBase) {
      EXPECT_TRUE(r.status == AccessStatus::OK, "RDMSR IA32_APIC_BASE failed");
      EXPECT_EQ(r.value, lapic.apicBase(), "RDMSR IA32_APIC_BASE differs from apicBase()");
    }
    if (r.status == AccessStatus::OK && msr >= kMsrX2apicFirst && msr <= kMsrX2apicLast) {
      Reg reg = Reg(msr - kMsrX2apicFirst);
      if (reg == Reg::ICR_LOW) {
        uint64_t icr = lapic.readRegister(Reg::ICR_LOW) |
                       uint64_t(lapic.readRegister(Reg::ICR_HIGH)) << 32;
        EXPECT_EQ(r.value, icr, "RDMSR ICR differs from the page");
      } else if (reg != Reg::TIMER_CURRENT_COUNT) {
        EXPECT_EQ(r.value, lapic.readRegister(reg), "RDMSR differs from the page");
      }
    }
    return r;
  }

  void checkMsrMode(const AccessResult& r, uint32_t msr, ApicMode mode) {
    bool x2 = msr >= kMsrX2apicFirst && msr <= kMsrX2apicLast;
    if (x2 && mode != ApicMode::X2APIC) {
      EXPECT_TRUE(r.status == AccessStatus::GP, "x2APIC MSR outside x2APIC mode did not #GP");
    }
    if (!x2 && msr != kMsrApicBase && msr != kMsrTscDeadline) {
      EXPECT_TRUE(r.status == AccessStatus::GP, "unknown MSR did not #GP");
    }
  }

  void msrWrite(uint32_t msr, uint64_t value) {
    if (msr == kMsrApicBase) {
      apicBaseWrite(value);
      return;
    }
    ApicMode mode = lapic.mode();
    Observation before = Observation::of(lapic);
    int isrv = highestBit(lapic, Reg::ISR0);
    AccessResult r = lapic.msrWrite(msr, value);
    TRACE("%u: msrWrite(%#x, %#llx) -> status %u reason %u\n", step, msr,
          (unsigned long long)value, unsigned(r.status), unsigned(r.reason));
    checkMsrMode(r, msr, mode);
    if (r.status == AccessStatus::GP) {
      // A faulting WRMSR has no effect (SDM: the instruction faults).
      EXPECT_TRUE(Observation::of(lapic).differsFrom(before) < 0, "faulting WRMSR changed state");
    }
    if (msr == regMsr(Reg::EOI) && mode == ApicMode::X2APIC && value == 0) {
      checkEoi(r, isrv, before);
    }
  }

  // IA32_APIC_BASE legality (SDM "x2APIC State Transitions"; KVM's
  // kvm_set_apic_base for the reserved-bit set).
  void apicBaseWrite(uint64_t value) {
    uint64_t old = lapic.apicBase();
    ApicMode oldMode = lapic.mode();
    bool en = value & kApicBaseEnable, extd = value & kApicBaseExtd;
    uint64_t reserved = 0x2FFull | ~((uint64_t(1) << config.maxPhysAddrBits) - 1) |
                        (config.x2apicSupported ? 0 : kApicBaseExtd);
    bool legal = (value & reserved) == 0 && !(extd && !en) &&
                 !(oldMode == ApicMode::X2APIC && en && !extd) &&
                 !(oldMode == ApicMode::DISABLED && en && extd);
    AccessResult r = lapic.msrWrite(kMsrApicBase, value);
    TRACE("%u: msrWrite(IA32_APIC_BASE, %#llx) -> status %u reason %u\n", step,
          (unsigned long long)value, unsigned(r.status), unsigned(r.reason));
    if (legal) {
      EXPECT_TRUE(r.status == AccessStatus::OK, "legal IA32_APIC_BASE write refused");
      EXPECT_EQ(lapic.apicBase(), value, "IA32_APIC_BASE does not read back the written value");
      if (en && !(old & kApicBaseEnable) && !extd) {
        // Re-enabling restores the initial xAPIC ID (as KVM does).
        EXPECT_EQ(lapic.readRegister(Reg::ID) >> 24, initialId & 0xFF,
                  "re-enabled APIC lost its initial ID");
      }
    } else {
      EXPECT_TRUE(r.status == AccessStatus::GP, "illegal IA32_APIC_BASE write did not #GP");
      EXPECT_EQ(lapic.apicBase(), old, "faulting IA32_APIC_BASE write changed it");
    }
  }

  void apicBaseWrite() {
    uint64_t value;
    if (in.ConsumeBool()) {
      value = in.ConsumeIntegral<uint64_t>();
    } else {
      uint64_t base = in.ConsumeBool() ? kDefaultApicBase
                                       : (uint64_t(in.ConsumeIntegral<uint32_t>()) << 12);
      value = base | (lapic.apicBase() & kApicBaseBsp);
      if (in.ConsumeBool()) value |= kApicBaseEnable;
      if (in.ConsumeBool()) value |= kApicBaseExtd;
    }
    apicBaseWrite(value);
  }

  // A write of the named register in the current mode, through the guest's
  // interface, with a value biased to the register's fields.
  void registerWrite() {
    auto table = registerTable();
    const RegisterInfo& info = table[in.ConsumeIntegralInRange<size_t>(0, table.size() - 1)];
    uint64_t value = in.ConsumeBool() ? uint64_t(info.resetValue ^ in.ConsumeIntegral<uint32_t>())
                                      : uint64_t(in.ConsumeIntegral<uint32_t>() & info.writableMask);
    if (lapic.mode() == ApicMode::X2APIC) {
      msrWrite(info.msr(), value & (info.reg == Reg::ICR_LOW ? ~uint64_t(0) : 0xFFFFFFFFull));
    } else {
      uint64_t gpa = mmioBase() + info.offset();
      bool decoding = lapic.mmioDecoding();
      Observation before = Observation::of(lapic);
      int isrv = highestBit(lapic, Reg::ISR0);
      AccessResult r = lapic.mmioWrite(gpa, 4, value);
      TRACE("%u: write %s = %#llx -> status %u reason %u\n", step, info.name.cStr(),
            (unsigned long long)value, unsigned(r.status), unsigned(r.reason));
      checkMmioResult(r, decoding, true, 4);
      if (decoding && info.reg == Reg::EOI) checkEoi(r, isrv, before);
    }
  }

  // EOI clears the highest ISR bit; a level-triggered vector is broadcast
  // unless SVR bit 12 suppresses it (SDM "EOI Register").
  void checkEoi(const AccessResult& r, int isrvBefore, const Observation& before) {
    if (r.status != AccessStatus::OK) return;
    if (isrvBefore < 0) {
      EXPECT_TRUE(r.eoiBroadcast == nullptr, "EOI with empty ISR broadcast");
      return;
    }
    EXPECT_TRUE(!bitSet(lapic, Reg::ISR0, isrvBefore), "EOI left the highest ISR bit set");
    auto oldReg = [&](Reg reg) {
      uint32_t v;
      memcpy(&v, before.page.data() + regOffset(reg), 4);
      return v;
    };
    bool level = (oldReg(Reg(uint16_t(Reg::TMR0) + isrvBefore / 32)) >> (isrvBefore % 32)) & 1;
    bool suppressed = oldReg(Reg::SVR) & (1u << 12);
    KJ_IF_MAYBE(v, r.eoiBroadcast) {
      EXPECT_TRUE(level && !suppressed, "EOI broadcast for an edge or suppressed vector");
      EXPECT_EQ(*v, isrvBefore, "EOI broadcast carries the wrong vector");
    } else {
      EXPECT_TRUE(!(level && !suppressed), "level-triggered EOI was not broadcast");
    }
  }

  void eoi() {
    if (lapic.mode() == ApicMode::X2APIC) {
      msrWrite(regMsr(Reg::EOI), 0);
    } else {
      bool decoding = lapic.mmioDecoding();
      Observation before = Observation::of(lapic);
      int isrv = highestBit(lapic, Reg::ISR0);
      AccessResult r = lapic.mmioWrite(mmioBase() + regOffset(Reg::EOI), 4, 0);
      TRACE("%u: EOI -> status %u\n", step, unsigned(r.status));
      checkMmioResult(r, decoding, true, 4);
      if (decoding) checkEoi(r, isrv, before);
    }
  }

  void accept() {
    uint8_t vector = in.ConsumeIntegral<uint8_t>();
    TriggerMode trigger = in.ConsumeBool() ? TriggerMode::LEVEL : TriggerMode::EDGE;
    bool swEnabled = lapic.softwareEnabled();
    bool accepted = lapic.acceptInterrupt(vector, trigger);
    TRACE("%u: accept(%u, %s) -> %d\n", step, vector,
          trigger == TriggerMode::LEVEL ? "level" : "edge", accepted);
    if (vector < 16) EXPECT_TRUE(!accepted, "illegal vector 0-15 accepted");
    if (!swEnabled) EXPECT_TRUE(!accepted, "software-disabled APIC accepted a fixed interrupt");
    if (accepted) {
      EXPECT_TRUE(bitSet(lapic, Reg::IRR0, vector), "accepted vector not in IRR");
      EXPECT_EQ(bitSet(lapic, Reg::TMR0, vector), trigger == TriggerMode::LEVEL,
                "TMR bit does not follow the trigger mode");
    }
  }

  void acknowledge() {
    kj::Maybe<uint8_t> pending = lapic.pendingVector();
    kj::Maybe<uint8_t> taken = lapic.acknowledge();
    TRACE("%u: acknowledge() -> %d\n", step, taken == nullptr ? -1 : int(taken.orDefault(0)));
    EXPECT_EQ(taken.orDefault(0) + (taken == nullptr ? 0 : 0x100),
              pending.orDefault(0) + (pending == nullptr ? 0 : 0x100),
              "acknowledge() differs from pendingVector()");
    KJ_IF_MAYBE(v, taken) {
      EXPECT_TRUE(bitSet(lapic, Reg::ISR0, *v), "acknowledged vector not in ISR");
      EXPECT_TRUE(!bitSet(lapic, Reg::IRR0, *v), "acknowledged vector still in IRR");
    }
  }

  void checkLocalInterrupt(const LocalInterrupt& li, bool wasMasked, bool hwEnabled) {
    if (wasMasked && hwEnabled) {
      EXPECT_TRUE(li.kind == LocalInterrupt::Kind::NONE, "masked LVT delivered");
    }
    if (li.kind == LocalInterrupt::Kind::FIXED) {
      EXPECT_TRUE(li.vector >= 16 && bitSet(lapic, Reg::IRR0, li.vector),
                  "LVT FIXED result but vector not in IRR");
    }
  }

  void lint() {
    unsigned pin = in.ConsumeIntegralInRange<unsigned>(0, 1);
    bool level = in.ConsumeBool();
    bool masked = lapic.readRegister(pin ? Reg::LVT_LINT1 : Reg::LVT_LINT0) & kLvtMask;
    bool hw = lapic.hardwareEnabled();
    LocalInterrupt li = lapic.setLint(pin, level);
    TRACE("%u: setLint(%u, %d) -> kind %u vector %u\n", step, pin, level, unsigned(li.kind), li.vector);
    checkLocalInterrupt(li, masked, hw);
    EXPECT_EQ(lapic.lintLevel(pin), level, "LINT level not recorded");
  }

  void lvtSource() {
    static constexpr LvtSource kSources[] = {LvtSource::THERMAL, LvtSource::PMC, LvtSource::CMCI};
    static constexpr Reg kRegs[] = {Reg::LVT_THERMAL, Reg::LVT_PMC, Reg::LVT_CMCI};
    size_t i = in.ConsumeIntegralInRange<size_t>(0, 2);
    bool masked = lapic.readRegister(kRegs[i]) & kLvtMask;
    bool hw = lapic.hardwareEnabled();
    LocalInterrupt li = lapic.signalLvt(kSources[i]);
    TRACE("%u: signalLvt(%zu) -> kind %u vector %u\n", step, i, unsigned(li.kind), li.vector);
    if (i == 2 && config.lvtEntries < 7) {
      EXPECT_TRUE(li.kind == LocalInterrupt::Kind::NONE, "CMCI delivered without an LVT CMCI");
    }
    checkLocalInterrupt(li, masked, hw);
  }

  void initOrStartup() {
    if (in.ConsumeBool()) {
      uint64_t base = lapic.apicBase();
      uint32_t id = lapic.readRegister(Reg::ID);
      ApicMode mode = lapic.mode();
      lapic.init();
      TRACE("%u: init()\n", step);
      lint0ExtIntAllowed = true;
      // SDM "INIT" / lapic-facts.md: APIC ID and IA32_APIC_BASE survive INIT,
      // everything else takes its INIT value.
      EXPECT_EQ(lapic.apicBase(), base, "INIT changed IA32_APIC_BASE");
      EXPECT_EQ(lapic.readRegister(Reg::ID), id, "INIT changed the APIC ID");
      EXPECT_TRUE(lapic.mode() == mode, "INIT changed the APIC mode");
      EXPECT_TRUE(highestBit(lapic, Reg::IRR0) < 0 && highestBit(lapic, Reg::ISR0) < 0 &&
                      highestBit(lapic, Reg::TMR0) < 0,
                  "INIT left IRR/ISR/TMR bits");
      checkInitRegisters();
      EXPECT_TRUE(lapic.runState() == (lapic.isBsp() ? RunState::RUNNING : RunState::WAIT_FOR_SIPI),
                  "INIT run state wrong");
    } else {
      uint8_t vector = in.ConsumeIntegral<uint8_t>();
      bool waiting = lapic.runState() == RunState::WAIT_FOR_SIPI;
      kj::Maybe<uint8_t> started = lapic.startup(vector);
      TRACE("%u: startup(%u) -> %d\n", step, vector, started == nullptr ? -1 : int(started.orDefault(0)));
      if (waiting) {
        EXPECT_EQ(started.orDefault(0) | (started == nullptr ? 0x100 : 0), vector,
                  "SIPI to a waiting vCPU did not start it with its vector");
        EXPECT_TRUE(lapic.runState() == RunState::RUNNING, "SIPI left the vCPU waiting");
      } else {
        EXPECT_TRUE(started == nullptr, "SIPI to a running vCPU was not dropped");
      }
    }
  }

  void checkInitRegisters() {
    EXPECT_EQ(lapic.readRegister(Reg::TPR), 0, "TPR after INIT/RESET");
    EXPECT_EQ(lapic.readRegister(Reg::SVR), 0xFF, "SVR after INIT/RESET");
    EXPECT_EQ(lapic.readRegister(Reg::TIMER_INITIAL_COUNT), 0, "initial count after INIT/RESET");
    EXPECT_TRUE(lapic.timerDeadlineNs() == nullptr, "timer armed after INIT/RESET");
    for (Reg reg : lvtRegisters(config)) {
      if (reg == Reg::LVT_LINT0 && config.bspLint0ExtInt && bootVcpu) {
        EXPECT_EQ(lapic.readRegister(reg), 0x700, "BSP LVT LINT0 after INIT/RESET");
      } else {
        EXPECT_EQ(lapic.readRegister(reg), kLvtMask, "LVT after INIT/RESET");
      }
    }
  }

  void checkAfterReset() {
    EXPECT_EQ(lapic.apicBase(),
              kDefaultApicBase | kApicBaseEnable | (bootVcpu ? kApicBaseBsp : 0),
              "IA32_APIC_BASE after RESET");
    EXPECT_TRUE(lapic.mode() == ApicMode::XAPIC, "mode after RESET");
    EXPECT_EQ(lapic.readRegister(Reg::ID) >> 24, initialId & 0xFF, "APIC ID after RESET");
    EXPECT_TRUE(highestBit(lapic, Reg::IRR0) < 0 && highestBit(lapic, Reg::ISR0) < 0,
                "RESET left IRR/ISR bits");
    checkInitRegisters();
  }

  void timerStep() {
    uint64_t now = clock.nowNs();
    kj::Maybe<uint64_t> deadline = lapic.timerDeadlineNs();
    uint64_t advance;
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        advance = deadline == nullptr ? 0 : deadline.orDefault(0) - kj::min(now, deadline.orDefault(0));
        break;
      case 1:
        advance = deadline == nullptr ? 1
                                       : deadline.orDefault(0) - kj::min(now, deadline.orDefault(0) - 1) - 1;
        break;
      case 2: advance = in.ConsumeIntegralInRange<uint64_t>(0, 1u << 24); break;
      default: advance = in.ConsumeIntegralInRange<uint64_t>(0, 10'000'000'000ull); break;
    }
    clock.advance(advance);
    now = clock.nowNs();
    uint32_t lvt = lapic.readRegister(Reg::LVT_TIMER);
    bool due = deadline != nullptr && deadline.orDefault(0) <= now;
    bool hw = lapic.hardwareEnabled();
    uint32_t expiries = lapic.onTimer();
    TRACE("%u: advance %llu ns to %llu, onTimer() -> %u, next deadline %llu\n", step,
          (unsigned long long)advance, (unsigned long long)now, expiries,
          (unsigned long long)lapic.timerDeadlineNs().orDefault(0));
    if (!due) EXPECT_EQ(expiries, 0, "timer expired before its deadline");
    if (due) EXPECT_TRUE(expiries > 0, "timer did not expire at its deadline");
    KJ_IF_MAYBE(next, lapic.timerDeadlineNs()) {
      EXPECT_TRUE(*next > now, "timer still armed in the past after onTimer()");
    }
    uint8_t vector = lvt & 0xFF;
    if (expiries > 0 && hw && !(lvt & kLvtMask) && vector >= 16) {
      EXPECT_TRUE(bitSet(lapic, Reg::IRR0, vector), "unmasked timer expiry did not raise its vector");
    }
  }

  void tscDeadline() {
    int64_t delta = in.ConsumeIntegralInRange<int64_t>(-1'000'000'000, 1'000'000'000);
    uint64_t target = tsc.now() + delta;
    if (delta < 0 && uint64_t(-delta) > tsc.now()) target = 1;
    msrWrite(kMsrTscDeadline, target);
    // A deadline already past fires at once (lapic-facts.md "Timer").
    if (delta <= 0) {
      EXPECT_TRUE(lapic.timerDeadlineNs() == nullptr || lapic.timerDeadlineNs().orDefault(0) >
                      clock.nowNs(), "past TSC deadline left armed");
    }
  }

  void setCr8() {
    uint8_t cr8 = in.ConsumeIntegral<uint8_t>();
    lapic.setCr8(cr8);
    TRACE("%u: setCr8(%u)\n", step, cr8);
    EXPECT_EQ(lapic.tpr(), (cr8 & 0xF) << 4, "MOV to CR8 did not set TPR");
  }

  void saveRestoreRoundTrip() {
    Observation before = Observation::of(lapic);
    LapicSnapshot snapshot = lapic.save();
    TRACE("%u: restore(save()) (page: LVT Timer %#x, initial count %u; saved: %#x, %u)\n", step,
          lapic.readRegister(Reg::LVT_TIMER), lapic.readRegister(Reg::TIMER_INITIAL_COUNT),
          *reinterpret_cast<const uint32_t*>(snapshot.regs + regOffset(Reg::LVT_TIMER)),
          *reinterpret_cast<const uint32_t*>(snapshot.regs + regOffset(Reg::TIMER_INITIAL_COUNT)));
    KJ_IF_MAYBE(error, lapic.restore(snapshot)) {
      fprintf(stderr, "restore of an unmodified snapshot failed: %s\n", error->cStr());
      violated(step, "restore(save()) failed", 0, 1);
    }
    // The snapshot carries everything, the running count's length included,
    // so a restore of an unmodified snapshot is an identity.
    Observation after = Observation::of(lapic);
    EXPECT_EQ(after.differsFrom(before), -1, "restore(save()) is not an identity (field index)");
  }

  void restoreMutated() {
    LapicSnapshot snapshot = lapic.save();
    unsigned mutations = in.ConsumeIntegralInRange<unsigned>(1, 8);
    for (unsigned i = 0; i < mutations && in.remaining_bytes() > 0; ++i) {
      switch (in.ConsumeIntegralInRange<int>(0, 5)) {
        case 0: {  // a register slot of the 1 KiB page
          size_t at = in.ConsumeIntegralInRange<size_t>(0, 0xFF) * 4;
          uint32_t v = in.ConsumeIntegral<uint32_t>();
          memcpy(snapshot.regs + at, &v, 4);
          break;
        }
        case 1: snapshot.regs[in.ConsumeIntegralInRange<size_t>(0, 1023)] ^= 1u << in.ConsumeIntegralInRange<int>(0, 7); break;
        case 2: snapshot.apicBase = in.ConsumeBool() ? in.ConsumeIntegral<uint64_t>()
                                                     : snapshot.apicBase ^ (uint64_t(1) << in.ConsumeIntegralInRange<int>(0, 63));
                break;
        case 3: snapshot.x2apic32BitIds = !snapshot.x2apic32BitIds; break;
        case 4:
          if (snapshot.hidden.size() > 0) {
            snapshot.hidden[in.ConsumeIntegralInRange<size_t>(0, snapshot.hidden.size() - 1)] =
                in.ConsumeIntegral<uint8_t>();
          }
          break;
        case 5: {  // truncate or extend the hidden record
          size_t newSize = in.ConsumeIntegralInRange<size_t>(0, snapshot.hidden.size() + 16);
          auto hidden = kj::heapArray<kj::byte>(newSize);
          for (size_t j = 0; j < newSize; ++j) {
            hidden[j] = j < snapshot.hidden.size() ? snapshot.hidden[j] : in.ConsumeIntegral<uint8_t>();
          }
          snapshot.hidden = kj::mv(hidden);
          break;
        }
      }
    }
    Observation before = Observation::of(lapic);
    KJ_IF_MAYBE(error, lapic.restore(snapshot)) {
      TRACE("%u: restore(mutated) -> %s\n", step, error->cStr());
      int diff = Observation::of(lapic).differsFrom(before);
      EXPECT_EQ(diff, -1, "failed restore changed the vCPU (field index)");
    } else {
      TRACE("%u: restore(mutated) -> ok (LVT Timer %#x, initial count %u (timer's %u), DCR %#x, "
            "SVR %#x)\n", step,
            lapic.readRegister(Reg::LVT_TIMER), lapic.readRegister(Reg::TIMER_INITIAL_COUNT),
            lapic.timer().initialCount(),
            lapic.readRegister(Reg::TIMER_DIVIDE_CONFIG), lapic.readRegister(Reg::SVR));
      lint0ExtIntAllowed = true;
    }
    // On success the invariants checked after every step must hold for the
    // restored state too.
  }

  // An image as KVM's KVM_GET_LAPIC could write it for this state (no
  // hidden record, either x2APIC ID layout), with the fields KVM can hold
  // and this model does not: restore must accept it (issue 16: "restore(
  // export of any state KVM can produce) succeeds") and normalise them.
  void restoreKvmImage() {
    bool wideIds = in.ConsumeBool();
    LapicSnapshot image = lapic.save(wideIds);
    image.hidden = nullptr;
    auto word = [&](uint32_t offset) -> uint32_t* {
      return reinterpret_cast<uint32_t*>(image.regs + offset);
    };
    unsigned perturbations = in.ConsumeIntegralInRange<unsigned>(0, 6);
    for (unsigned i = 0; i < perturbations && in.remaining_bytes() > 0; ++i) {
      switch (in.ConsumeIntegralInRange<int>(0, 5)) {
        case 0: {  // delivery status in an LVT (KVM's LVT masks keep it)
          auto lvts = lvtRegisters(config);
          *word(regOffset(lvts[in.ConsumeIntegralInRange<size_t>(0, lvts.size() - 1)])) |= 1u << 12;
          break;
        }
        case 1:  // ICR low bits KVM stores and this model does not
          *word(regOffset(Reg::ICR_LOW)) |= in.ConsumeIntegral<uint32_t>() &
                                             ~registerInfo(Reg::ICR_LOW).writableMask & ~(1u << 12);
          break;
        case 2:  // vectors 0-15 requested
          *word(regOffset(Reg::IRR0)) |= in.ConsumeIntegral<uint16_t>();
          *word(regOffset(Reg::TMR0)) |= in.ConsumeIntegral<uint16_t>();
          break;
        case 3:  // the upper half of KVM's 64-bit ICR, stale or current
          *word(0x304) = in.ConsumeIntegral<uint32_t>();
          break;
        case 4:  // the legacy x2APIC layout's ID field, which KVM ignores
          if (lapic.mode() == ApicMode::X2APIC && !wideIds) {
            *word(regOffset(Reg::ID)) = in.ConsumeIntegral<uint32_t>();
          }
          break;
        case 5:  // a current count in KVM's terms, up to a clamped period's
          if (((*word(regOffset(Reg::LVT_TIMER)) >> 17) & 3) != 2) {
            *word(regOffset(Reg::TIMER_CURRENT_COUNT)) = in.ConsumeIntegral<uint32_t>();
          }
          break;
      }
    }
    TRACE("%u: restore(KVM image, %s IDs)\n", step, wideIds ? "32-bit" : "legacy");
    KJ_IF_MAYBE(error, lapic.restore(image)) {
      fprintf(stderr, "restore of a KVM-producible image failed: %s\n", error->cStr());
      violated(step, "restore(KVM export) failed", 0, 1);
    }
    lint0ExtIntAllowed = true;
    EXPECT_EQ(readWord(0x304), lapic.mode() == ApicMode::X2APIC ? lapic.readRegister(Reg::ICR_HIGH) : 0,
              "0x304 not rebuilt on restore");
  }

  uint32_t readWord(uint32_t offset) {
    uint32_t v;
    memcpy(&v, lapic.page().bytes().begin() + offset, 4);
    return v;
  }

  // ---- invariants after every step ----

  void checkAll() {
    if (lapic.readRegister(Reg::LVT_LINT0) != 0x700) lint0ExtIntAllowed = false;
    uint64_t base = lapic.apicBase();
    bool en = base & kApicBaseEnable, extd = base & kApicBaseExtd;
    ApicMode mode = lapic.mode();
    EXPECT_EQ(uint8_t(mode), uint8_t(!en ? ApicMode::DISABLED : extd ? ApicMode::X2APIC : ApicMode::XAPIC),
              "mode() disagrees with IA32_APIC_BASE");
    EXPECT_TRUE(en || !extd, "IA32_APIC_BASE has EXTD without EN");
    EXPECT_EQ(base & 0x2FF, 0, "IA32_APIC_BASE reserved bits 0-7/9 set");
    EXPECT_EQ(base >> config.maxPhysAddrBits, 0, "IA32_APIC_BASE bits above MAXPHYADDR set");
    EXPECT_TRUE(!extd || config.x2apicSupported, "x2APIC mode although the VM hides x2APIC");
    EXPECT_EQ(lapic.isBsp(), bool(base & kApicBaseBsp), "isBsp() disagrees with IA32_APIC_BASE");
    EXPECT_EQ(lapic.hardwareEnabled(), en, "hardwareEnabled() disagrees with IA32_APIC_BASE");
    EXPECT_EQ(lapic.mmioDecoding(), mode == ApicMode::XAPIC, "MMIO decodes outside xAPIC mode");

    uint32_t svr = lapic.readRegister(Reg::SVR);
    EXPECT_EQ(lapic.softwareEnabled(), bool(svr & 0x100), "softwareEnabled() disagrees with SVR");
    EXPECT_EQ(svr & ~uint32_t(config.eoiBroadcastSuppression ? 0x13FF : 0x03FF), 0,
              "SVR reserved bits set");
    uint32_t version = 0x14 | uint32_t(config.lvtEntries - 1) << 16 |
                       (config.eoiBroadcastSuppression ? 1u << 24 : 0);
    EXPECT_EQ(lapic.readRegister(Reg::VERSION), version, "Version register");

    // SDM "Spurious-Interrupt Vector Register": while software-disabled the
    // LVT mask bits are set and cannot be cleared.
    for (Reg reg : lvtRegisters(config)) {
      uint32_t lvt = lapic.readRegister(reg);
      bool resetQuirk = reg == Reg::LVT_LINT0 && lvt == 0x700 && lint0ExtIntAllowed;
      if (!(svr & 0x100) && !resetQuirk) {
        EXPECT_TRUE(lvt & kLvtMask, "LVT unmasked while software-disabled");
      }
      EXPECT_EQ(lvt & ~(registerInfo(reg).writableMask | (1u << 12) | (1u << 14) | kLvtMask), 0,
                "LVT has bits outside its fields");
      EXPECT_EQ(lvt & (1u << 12), 0, "LVT delivery status stuck");
    }
    uint32_t lvtTimer = lapic.readRegister(Reg::LVT_TIMER);
    uint32_t timerMode = (lvtTimer >> 17) & 3;
    if (!config.tscDeadlineSupported) {
      EXPECT_TRUE(timerMode < 2, "TSC-deadline mode bit set although not supported");
    }
    // The reserved mode 11b is stored as written (as KVM does) and is a mode
    // of its own in which the timer never starts.
    EXPECT_EQ(uint8_t(lapic.timer().mode()), timerMode, "timer mode disagrees with LVT Timer");
    if (timerMode == 2) {
      EXPECT_EQ(lapic.timer().currentCount(), 0, "current count in TSC-deadline mode");
      // Initial-count writes are ignored in TSC-deadline mode and entering
      // it clears the register (lapic-facts.md "Timer", as KVM does).
      EXPECT_EQ(lapic.readRegister(Reg::TIMER_INITIAL_COUNT), 0,
                "initial count non-zero in TSC-deadline mode");
    } else {
      EXPECT_EQ(lapic.timer().readTscDeadline(), 0, "IA32_TSC_DEADLINE reads non-zero outside its mode");
      EXPECT_TRUE(lapic.timer().currentCount() <= lapic.readRegister(Reg::TIMER_INITIAL_COUNT),
                  "current count above initial count");
    }
    EXPECT_EQ(lapic.readRegister(Reg::TIMER_DIVIDE_CONFIG) & ~0xBu, 0, "DCR reserved bits set");
    // The page shows the timer's initial count (the register a guest reads).
    EXPECT_EQ(lapic.readRegister(Reg::TIMER_INITIAL_COUNT), lapic.timer().initialCount(),
              "initial count on the page differs from the timer's");
    KJ_IF_MAYBE(deadline, lapic.timerDeadlineNs()) {
      EXPECT_TRUE(*deadline >= clock.nowNs(), "timer deadline in the past");
    }

    // Vectors 0-15 are illegal: never requested, never in service (SDM
    // "Valid Interrupt Vectors").
    EXPECT_EQ(lapic.readRegister(Reg::IRR0) & 0xFFFF, 0, "IRR bits 0-15 set");
    EXPECT_EQ(lapic.readRegister(Reg::ISR0) & 0xFFFF, 0, "ISR bits 0-15 set");

    // SDM "Processor Priority Register": PPR = TPR if TPR[7:4] >= ISRV[7:4],
    // else ISRV[7:4]:0.
    uint32_t tpr = lapic.readRegister(Reg::TPR);
    EXPECT_EQ(tpr & ~0xFFu, 0, "TPR bits above 7 set");
    int isrv = highestBit(lapic, Reg::ISR0);
    uint32_t isrvOr0 = isrv < 0 ? 0 : uint32_t(isrv);
    uint32_t ppr = (tpr >> 4) >= (isrvOr0 >> 4) ? tpr : (isrvOr0 & 0xF0);
    EXPECT_EQ(lapic.readRegister(Reg::PPR), ppr, "PPR on the page breaks the SDM formula");
    EXPECT_EQ(lapic.ppr(), ppr, "ppr() breaks the SDM formula");
    EXPECT_EQ(lapic.tpr(), tpr, "tpr() differs from the page");
    EXPECT_EQ(lapic.cr8(), tpr >> 4, "CR8 is not TPR[7:4]");

    // SDM "Interrupt Acceptance for Fixed Interrupts": the next vector is the
    // highest IRR bit, deliverable only when its class beats PPR's.
    int irrv = highestBit(lapic, Reg::IRR0);
    KJ_IF_MAYBE(v, lapic.pendingVector()) {
      EXPECT_EQ(*v, irrv, "pendingVector() is not the highest IRR bit");
      EXPECT_TRUE((*v >> 4) > (ppr >> 4), "pendingVector() does not beat PPR");
    } else if (en && (svr & 0x100) && irrv >= 0) {
      EXPECT_TRUE(uint32_t(irrv >> 4) <= (ppr >> 4), "deliverable IRR vector not pending");
    }

    // The ID and LDR match the mode (SDM "x2APIC ID", "Logical Destination
    // Mode in x2APIC Mode").
    uint32_t id = lapic.readRegister(Reg::ID);
    if (mode == ApicMode::X2APIC) {
      EXPECT_EQ(id, initialId, "x2APIC ID is not the initial APIC ID");
      EXPECT_EQ(lapic.apicId(), initialId, "apicId() in x2APIC mode");
      uint32_t ldr = ((initialId >> 4) << 16) | (1u << (initialId & 0xF));
      EXPECT_EQ(lapic.readRegister(Reg::LDR), ldr, "x2APIC LDR is not derived from the ID");
      EXPECT_EQ(lapic.ldr(), ldr, "ldr() in x2APIC mode");
    } else {
      EXPECT_EQ(lapic.apicId(), id >> 24, "apicId() is not ID[31:24] in xAPIC mode");
      uint32_t dfr = lapic.readRegister(Reg::DFR);
      EXPECT_EQ(dfr & 0x0FFFFFFF, 0x0FFFFFFF, "DFR bits 27:0 do not read as ones");
      EXPECT_EQ(lapic.dfr(), dfr, "dfr() differs from the page");
      EXPECT_EQ(lapic.ldr(), lapic.readRegister(Reg::LDR), "ldr() differs from the page");
    }
    EXPECT_EQ(lapic.initialApicId(), initialId, "initialApicId() changed");
    EXPECT_EQ(lapic.readRegister(Reg::ICR_LOW) & (1u << 12), 0, "ICR delivery status stuck at pending");
    EXPECT_EQ(lapic.readRegister(Reg::ESR) & ~0xFFu, 0, "ESR bits above 7 set");
  }
};

}  // namespace
}  // namespace vlapic

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vlapic::strictFindings = getenv("FUZZ_STRICT") != nullptr;
  atexit(vlapic::reportKnownFindings);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  try {
    vlapic::Harness harness(in);
    harness.run();
  } catch (const vlapic::AbandonInput&) {
    // A known finding: counted, reported at exit.
  }
  return 0;
}
