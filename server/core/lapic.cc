// SPDX-License-Identifier: MIT
// One vCPU's local APIC over the architectural virtual-APIC page (SDM Vol. 3A,
// chapter "Advanced Programmable Interrupt Controller (APIC)"; section numbers
// below are from the edition where it is chapter 11, older editions say 10).
//
// Every register value a guest can read lives in the page at its xAPIC
// offset, so the page is always what the guest (or an APIC-virtualising CPU)
// sees; the only exception is the timer's current count, which is computed at
// read time and reads as 0 in the page. MMIO and MSR accesses are decoded to a
// row of the register table (registers.cc) and then share one read path and
// one write path; which register exists in which mode, what it resets to and
// which bits a write may change all come from that table.
//
// Hot path rules: no allocation per access, bitmaps scanned a 32-bit word at
// a time, per-VM adjustments of the table's masks precomputed per vCPU.
//
// Where the SDM leaves a choice we follow KVM; where KVM departs from the
// SDM in ways a guest can see only by doing something unusual, we follow the
// SDM and say so here:
// - ESR is implemented (KVM's reads 0): illegal vectors set bits 5/6, and an
//   xAPIC access to a reserved register offset sets bit 7 "illegal register
//   address"; each new error raises LVT Error if unmasked.
// - Read-only bits stay read-only: LVT delivery status, LINT remote IRR and
//   the reserved bits of xAPIC ICR low are not stored from a guest write.
// - LVT Timer mode 11 (reserved) is stored as written and runs as one-shot.
// - With IA32_APIC_BASE.EN = 0 the LINT pins act as INTR and NMI.
// - After x2APIC -> disabled -> xAPIC, LDR and ICR high keep only their
//   xAPIC fields (the SDM preserves nothing but the x2APIC ID; KVM keeps the
//   32-bit values in registers that have no such bits in xAPIC mode).

#include "lapic.h"
#include "schema/model/regview.h"

#include <kj/debug.h>
#include <string.h>

namespace vlapic {

namespace {

// Registers live below offset 0x400: 64 slots of 16 bytes, the register in
// the first 4 bytes of its slot. Slot index = offset >> 4 = MSR - 0x800.
constexpr unsigned kSlots = 64;
constexpr unsigned kWordsPerSlot = 4;
constexpr size_t kKvmStateBytes = 1024;
static_assert(kSlots * kWordsPerSlot * sizeof(uint32_t) == kKvmStateBytes);

constexpr unsigned slotOf(Reg reg) { return uint16_t(reg); }

// In x2APIC mode the ICR is one 64-bit register. KVM's layout (and ours)
// keeps ICR[63:32] at 0x310; a CPU that virtualises x2APIC accesses reads and
// writes the 64-bit ICR at 0x300-0x307 of the virtual-APIC page (SDM Vol. 3C
// 30.5, "Virtualizing MSR-Based APIC Accesses"). The page keeps both copies
// so it is right for either reader; word 0x304 is 0 outside x2APIC mode.
constexpr unsigned kIcrUpperHalfWord = 0x304 / sizeof(uint32_t);

constexpr uint32_t kLvtMasked = 1u << 16;
constexpr uint32_t kLvtRemoteIrr = 1u << 14;
constexpr uint32_t kLvtDeliveryStatus = 1u << 12;
constexpr uint32_t kSvrSoftwareEnable = 1u << 8;
constexpr uint32_t kSvrSuppressEoiBroadcast = 1u << 12;
constexpr uint32_t kLvtTimerTscDeadlineBit = 1u << 18;
constexpr uint32_t kDfrLowOnes = 0x0FFFFFFF;
constexpr uint32_t kApicVersion = 0x14;  // integrated APIC (SDM 11.4.8)
constexpr uint32_t kLint0ExtInt = uint32_t(DeliveryMode::EXTINT) << 8;

// ESR bits (SDM 11.5.3, "Error Handling").
constexpr uint32_t kEsrSendIllegalVector = 1u << EsrValue::SEND_ILLEGAL_VECTOR;
constexpr uint32_t kEsrReceivedIllegalVector = 1u << EsrValue::RECEIVED_ILLEGAL_VECTOR;
constexpr uint32_t kEsrIllegalRegisterAddress = 1u << EsrValue::ILLEGAL_REGISTER_ADDRESS;
constexpr uint32_t kEsrArchitecturalBits = 0xFF;

// Vectors 0-15 are reserved for exceptions: illegal in fixed and
// lowest-priority messages, fixed LVT entries and SELF IPI (SDM 11.5.2).
constexpr bool illegalVector(uint8_t vector) { return vector < 16; }

constexpr Reg kLvtRegisters[] = {Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC,
                                 Reg::LVT_LINT0, Reg::LVT_LINT1, Reg::LVT_ERROR,
                                 Reg::LVT_CMCI};

constexpr bool isLvt(Reg reg) {
  for (Reg lvt : kLvtRegisters) {
    if (lvt == reg) return true;
  }
  return false;
}

// LVT Timer bits 18:17 (11 is reserved: the timer never starts in it, as
// KVM's; the bit 18 of 11 is only writable with TSC-deadline support).
TimerMode timerModeOf(uint32_t lvtTimer) { return TimerMode((lvtTimer >> 17) & 3); }

uint64_t onesOfSize(uint8_t size) {
  return size >= 8 ? ~uint64_t(0) : (uint64_t(1) << (size * 8)) - 1;
}

// ---- The hidden-state record (LapicSnapshot::hidden) ----
//
// Little-endian, fixed layout; version 3 is 72 bytes:
//   0 u32 magic "VLHS"        4 u16 version          6 u16 length (bytes)
//   8 u32 initial APIC ID    12 u32 ESR accumulator
//  16 u8  run state          17 u8  LINT levels (bit 0: LINT0, bit 1: LINT1)
//  18 u8  timer mode         19 u8  timer armed (0/1)
//  20 u32 timer DCR          24 u32 timer initial count
//  28 u32 timer expiries due but not yet delivered
//  32 u64 timer remaining ns 40 u64 TSC deadline
//  48 u64 timer remaining-time shortfall in 1/timerHz ns (TimerSnapshot)
//  56 u64 running count's length, ns  64 u64 its shortfall (TimerSnapshot)
// Older versions are still decoded. Version 2 (56 bytes) has no count
// length: the timer resumes with a full period's count (the current count
// can read back differently only after a one-shot <-> periodic switch moved
// the minimum-period clamp). Version 1 (48 bytes) has no shortfall either:
// its whole ns resume the timer at most a tick off with an input clock that
// does not divide 1 GHz.
constexpr uint32_t kHiddenMagic = 0x53484C56;  // "VLHS"
constexpr uint16_t kHiddenVersion = 3;
constexpr uint16_t kHiddenLength = 72;
// Indexed by version: the length each version's record has.
constexpr uint16_t kHiddenLengthOfVersion[] = {0, 48, 56, kHiddenLength};

struct HiddenState {
  uint32_t initialApicId = 0;
  uint32_t esrPending = 0;
  RunState runState = RunState::RUNNING;
  bool lint[2] = {false, false};
  TimerSnapshot timer;
};

template <typename T>
void put(kj::byte* out, size_t at, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out[at + i] = kj::byte(uint64_t(value) >> (8 * i));
}

template <typename T>
T get(const kj::byte* in, size_t at) {
  uint64_t value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= uint64_t(in[at + i]) << (8 * i);
  return T(value);
}

kj::Array<kj::byte> encodeHidden(const HiddenState& state) {
  auto record = kj::heapArray<kj::byte>(kHiddenLength);
  memset(record.begin(), 0, record.size());
  kj::byte* out = record.begin();
  put<uint32_t>(out, 0, kHiddenMagic);
  put<uint16_t>(out, 4, kHiddenVersion);
  put<uint16_t>(out, 6, kHiddenLength);
  put<uint32_t>(out, 8, state.initialApicId);
  put<uint32_t>(out, 12, state.esrPending);
  put<uint8_t>(out, 16, uint8_t(state.runState));
  put<uint8_t>(out, 17, uint8_t((state.lint[0] ? 1 : 0) | (state.lint[1] ? 2 : 0)));
  put<uint8_t>(out, 18, uint8_t(state.timer.mode));
  put<uint8_t>(out, 19, state.timer.armed ? 1 : 0);
  put<uint32_t>(out, 20, state.timer.divideConfig);
  put<uint32_t>(out, 24, state.timer.initialCount);
  put<uint32_t>(out, 28, state.timer.pendingExpiries);
  put<uint64_t>(out, 32, state.timer.remainingNs);
  put<uint64_t>(out, 40, state.timer.tscDeadline);
  put<uint64_t>(out, 48, state.timer.remainingShortfall);
  put<uint64_t>(out, 56, state.timer.countLengthNs);
  put<uint64_t>(out, 64, state.timer.countLengthShortfall);
  return record;
}

// Decodes and range-checks the record on its own; consistency with the
// register image is checked by the caller.
kj::Maybe<kj::String> decodeHidden(kj::ArrayPtr<const kj::byte> record, HiddenState& state) {
  if (record.size() < 8) {
    return kj::str("hidden-state record too short (", record.size(), " bytes)");
  }
  const kj::byte* in = record.begin();
  if (get<uint32_t>(in, 0) != kHiddenMagic) {
    return kj::str("hidden-state record has a bad magic number");
  }
  uint16_t version = get<uint16_t>(in, 4);
  if (version < 1 || version > kHiddenVersion) {
    return kj::str("hidden-state record version ", version, " is not supported (expected 1 to ",
                   kHiddenVersion, ")");
  }
  uint16_t expectedLength = kHiddenLengthOfVersion[version];
  uint16_t length = get<uint16_t>(in, 6);
  if (length != expectedLength || record.size() != expectedLength) {
    return kj::str("hidden-state record length ", record.size(), " (header says ", length,
                   "), expected ", expectedLength, " for version ", version);
  }
  state.initialApicId = get<uint32_t>(in, 8);
  state.esrPending = get<uint32_t>(in, 12);
  if ((state.esrPending & ~kEsrArchitecturalBits) != 0) {
    return kj::str("hidden ESR accumulator has bits outside 7:0 set");
  }
  uint8_t runState = get<uint8_t>(in, 16);
  if (runState > uint8_t(RunState::WAIT_FOR_SIPI)) {
    return kj::str("hidden run state ", runState, " out of range");
  }
  state.runState = RunState(runState);
  uint8_t lint = get<uint8_t>(in, 17);
  if ((lint & ~3u) != 0) return kj::str("hidden LINT levels have bits other than 0 and 1 set");
  state.lint[0] = lint & 1;
  state.lint[1] = lint & 2;
  uint8_t timerMode = get<uint8_t>(in, 18);
  if (timerMode > uint8_t(TimerMode::RESERVED)) {
    return kj::str("hidden timer mode ", timerMode, " out of range");
  }
  state.timer.mode = TimerMode(timerMode);
  uint8_t armed = get<uint8_t>(in, 19);
  if (armed > 1) return kj::str("hidden timer armed flag is not 0 or 1");
  state.timer.armed = armed;
  state.timer.divideConfig = get<uint32_t>(in, 20);
  state.timer.initialCount = get<uint32_t>(in, 24);
  state.timer.pendingExpiries = get<uint32_t>(in, 28);
  state.timer.remainingNs = get<uint64_t>(in, 32);
  state.timer.tscDeadline = get<uint64_t>(in, 40);
  state.timer.remainingShortfall = version >= 2 ? get<uint64_t>(in, 48) : 0;
  state.timer.countLengthNs = version >= 3 ? get<uint64_t>(in, 56) : 0;
  state.timer.countLengthShortfall = version >= 3 ? get<uint64_t>(in, 64) : 0;
  return nullptr;
}

}  // namespace

// ===========================================================================

struct Lapic::Impl {
  Impl(hal::Hal& hal, const GuestTsc& tsc, const LapicConfig& config, uint32_t initialApicId,
       bool bsp);

  const LapicConfig config;
  const uint32_t initialId;
  const bool bootVcpu;  // the VM's boot vCPU: BSP after RESET, LINT0 ExtINT option
  kj::Own<hal::Page> page;
  uint32_t* const words;  // the page as 32-bit words: register in slot s at words[4 s]
  ApicTimer timer;

  uint64_t apicBase = 0;
  ApicMode mode = ApicMode::XAPIC;
  // Errors detected since the last ESR write (SDM 11.5.3): a write to ESR
  // moves them into the register.
  uint32_t esrPending = 0;
  RunState run = RunState::RUNNING;
  bool lint[2] = {false, false};
  uint64_t routingGen = 0;
  LapicStats stats;

  // Per-VM view of the register table, precomputed so that an access costs
  // one array lookup: the row per slot (nullptr where the VM has no such
  // register, e.g. LVT CMCI with 6 LVT entries) and the writable masks with
  // the VM's options applied (SVR bit 12, LVT Timer bit 18).
  const RegisterInfo* rows[kSlots] = {};
  uint32_t xapicMask[kSlots] = {};
  uint32_t x2apicMask[kSlots] = {};
  uint64_t x2apicGpBits[kSlots] = {};
  uint32_t version = 0;
  uint64_t apicBaseReservedBits = 0;

  uint32_t& reg(Reg r) { return words[slotOf(r) * kWordsPerSlot]; }
  void setX2apicIcrHigh(uint32_t high) {
    reg(Reg::ICR_HIGH) = high;
    words[kIcrUpperHalfWord] = high;
  }
  uint32_t reg(Reg r) const { return words[slotOf(r) * kWordsPerSlot]; }
  uint32_t& bitmapWord(Reg first, unsigned word) {
    return words[(slotOf(first) + word) * kWordsPerSlot];
  }
  uint32_t bitmapWord(Reg first, unsigned word) const {
    return words[(slotOf(first) + word) * kWordsPerSlot];
  }

  bool hardwareEnabled() const { return mode != ApicMode::DISABLED; }
  bool softwareEnabled() const { return reg(Reg::SVR) & kSvrSoftwareEnable; }
  uint64_t windowBase() const { return ApicBaseValue(apicBase).base(); }
  bool windowContains(uint64_t gpa) const { return gpa - windowBase() < hal::kPageSize; }

  // ---- Vector bitmaps (ISR, TMR, IRR), scanned a 32-bit word at a time ----
  int highest(Reg first) const {
    for (int word = 7; word >= 0; --word) {
      uint32_t bits = bitmapWord(first, word);
      if (bits != 0) return word * 32 + 31 - __builtin_clz(bits);
    }
    return -1;
  }
  bool testBit(Reg first, uint8_t vector) const {
    return bitmapWord(first, vector >> 5) & (1u << (vector & 31));
  }
  void setBit(Reg first, uint8_t vector) { bitmapWord(first, vector >> 5) |= 1u << (vector & 31); }
  void clearBit(Reg first, uint8_t vector) {
    bitmapWord(first, vector >> 5) &= ~(1u << (vector & 31));
  }

  // ---- Access paths ----
  AccessResult mmioRead(uint64_t gpa, uint8_t size);
  AccessResult mmioWrite(uint64_t gpa, uint8_t size, uint64_t value);
  AccessResult msrRead(uint32_t msr);
  AccessResult msrWrite(uint32_t msr, uint64_t value);
  AccessResult tally(AccessResult result);
  const RegisterInfo* decodeMmio(uint32_t offset, AccessResult& refusal);
  const RegisterInfo* decodeMsr(uint32_t msr, AccessResult& refusal);
  uint64_t readValue(const RegisterInfo& info, bool x2apic) const;
  AccessResult writeValue(const RegisterInfo& info, uint64_t value, bool x2apic);
  AccessResult writeApicBase(uint64_t value);
  void enterMode(ApicMode newMode);

  // ---- Register semantics ----
  void updatePpr();
  void writeSvr(uint32_t value);
  void writeLvt(Reg lvt, uint32_t value);
  void writeLvtTimer(uint32_t value, AccessResult& result);
  void afterTimerWrite(AccessResult& result);
  void sendIcr(const InterruptMessage& message, AccessResult& result);
  void eoi(AccessResult& result);
  void reportError(uint32_t esrBits);

  // ---- Interrupts ----
  bool acceptInterrupt(uint8_t vector, TriggerMode trigger);
  kj::Maybe<uint8_t> pendingVector() const;
  kj::Maybe<uint8_t> acknowledge();
  LocalInterrupt deliverLvt(Reg lvt, bool edge, bool allowInitExtInt);
  LocalInterrupt setLint(unsigned pin, bool level);
  void redeliverLevelLint(unsigned pin);
  LocalInterrupt signalLvt(LvtSource source);
  uint32_t onTimer();

  // ---- State ----
  void loadInitState(bool keepIdentity);
  void reset();
  void init();
  LapicSnapshot save(bool x2apic32BitIds) const;
  void normaliseImage(uint32_t* image, ApicMode imageMode, bool x2apic32BitIds) const;
  kj::Maybe<kj::String> checkImage(const uint32_t* image, ApicMode imageMode,
                                   bool x2apic32BitIds) const;
  kj::Maybe<kj::String> restore(const LapicSnapshot& snapshot);
};

Lapic::Impl::Impl(hal::Hal& hal, const GuestTsc& tsc, const LapicConfig& config,
                  uint32_t initialApicId, bool bsp)
    : config(config), initialId(initialApicId), bootVcpu(bsp), page(hal.allocatePage()),
      words(reinterpret_cast<uint32_t*>(page->bytes().begin())), timer(tsc, config.timer) {
  KJ_REQUIRE(config.lvtEntries == 6 || config.lvtEntries == 7,
             "a LAPIC has 6 LVT entries, or 7 with CMCI", config.lvtEntries);
  KJ_REQUIRE(config.maxPhysAddrBits > 12 && config.maxPhysAddrBits <= 52,
             "MAXPHYADDR out of range", config.maxPhysAddrBits);
  KJ_REQUIRE(page->bytes().size() == hal::kPageSize);

  for (const RegisterInfo& info : registerTable()) {
    unsigned slot = slotOf(info.reg);
    if (config.lvtEntries < info.minLvtEntries) continue;  // absent in this VM
    rows[slot] = &info;
    xapicMask[slot] = info.writableMask;
    x2apicMask[slot] = info.x2apicWritableMask;
    x2apicGpBits[slot] = info.x2apicGpBits;
  }
  // SVR bit 12 is writable only when Version bit 24 advertises EOI-broadcast
  // suppression (SDM 11.8.5); LVT Timer bit 18 only with TSC-deadline
  // (SDM 11.5.1).
  unsigned svr = slotOf(Reg::SVR), lvtTimer = slotOf(Reg::LVT_TIMER);
  if (!config.eoiBroadcastSuppression) {
    xapicMask[svr] &= ~kSvrSuppressEoiBroadcast;
    x2apicMask[svr] &= ~kSvrSuppressEoiBroadcast;
  }
  if (!config.tscDeadlineSupported) {
    xapicMask[lvtTimer] &= ~kLvtTimerTscDeadlineBit;
    x2apicMask[lvtTimer] &= ~kLvtTimerTscDeadlineBit;
  }
  version = VersionValue()
                .setVersion(kApicVersion)
                .setMaxLvtEntry(config.lvtEntries - 1)
                .setEoiBroadcastSuppressionSupported(config.eoiBroadcastSuppression)
                .raw();
  // IA32_APIC_BASE reserved bits (SDM 11.4.4, Figure 11-5): 7:0, 9, those at
  // and above MAXPHYADDR, and EXTD when CPUID does not report x2APIC.
  apicBaseReservedBits = 0xFFull | (1ull << 9) | ~((1ull << config.maxPhysAddrBits) - 1);
  if (!config.x2apicSupported) apicBaseReservedBits |= kApicBaseExtd;

  reset();
}

// ---------------------------------------------------------------------------
// Accesses

AccessResult Lapic::Impl::tally(AccessResult result) {
  if (result.status == AccessStatus::GP) {
    ++stats.gpFaults;
  } else if (result.status == AccessStatus::IGNORED) {
    ++stats.ignoredAccesses;
  }
  return result;
}

// The row an xAPIC offset names, or nullptr with `refusal` filled in. A
// reserved offset also logs "illegal register address" (ESR bit 7, SDM
// 11.5.3), which only exists in xAPIC mode.
const RegisterInfo* Lapic::Impl::decodeMmio(uint32_t offset, AccessResult& refusal) {
  const RegisterInfo* info = offset < kSlots * 16 ? rows[offset >> 4] : nullptr;
  if (info == nullptr || info->xapic == RegAccess::NONE) {
    refusal = AccessResult::ignored(
        info == nullptr ? AccessReason::RESERVED_REGISTER : AccessReason::NOT_IN_MODE);
    reportError(kEsrIllegalRegisterAddress);
    return nullptr;
  }
  ++stats.perRegisterAccesses[slotOf(info->reg)];
  return info;
}

AccessResult Lapic::Impl::mmioRead(uint64_t gpa, uint8_t size) {
  ++stats.reads;
  // Outside the window nothing answers; a window that does not decode (APIC
  // disabled or in x2APIC mode) reads like unpopulated address space.
  if (!windowContains(gpa)) {
    return tally(AccessResult::ignored(AccessReason::OUTSIDE_WINDOW, onesOfSize(size)));
  }
  if (mode != ApicMode::XAPIC) {
    return tally(AccessResult::ignored(AccessReason::NOT_DECODING, onesOfSize(size)));
  }
  uint32_t offset = uint32_t(gpa - windowBase());
  AccessResult refusal;
  const RegisterInfo* info = decodeMmio(offset, refusal);
  if (info == nullptr) return tally(refusal);
  if (info->xapic == RegAccess::WRITE_ONLY) {
    return tally(AccessResult::ignored(AccessReason::WRITE_ONLY_REGISTER));
  }
  // Architecturally only aligned 32-bit reads are defined (SDM 11.4.1); as
  // KVM does, a 1-, 2- or 4-byte read that stays inside the register's
  // first 4 bytes returns those bytes, anything else reads 0.
  unsigned within = offset & 0xF;
  if ((size != 1 && size != 2 && size != 4) || within + size > 4) {
    return tally(AccessResult::ignored(AccessReason::BAD_SIZE_OR_ALIGNMENT));
  }
  uint64_t value = readValue(*info, false);
  return AccessResult::ok((value >> (within * 8)) & onesOfSize(size));
}

AccessResult Lapic::Impl::mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) {
  ++stats.writes;
  if (!windowContains(gpa)) return tally(AccessResult::ignored(AccessReason::OUTSIDE_WINDOW));
  if (mode != ApicMode::XAPIC) return tally(AccessResult::ignored(AccessReason::NOT_DECODING));
  uint32_t offset = uint32_t(gpa - windowBase());
  AccessResult refusal;
  const RegisterInfo* info = decodeMmio(offset, refusal);
  if (info == nullptr) return tally(refusal);
  // Only aligned 32-bit stores write a register (SDM 11.4.1); KVM drops the
  // rest silently, and so do we (reporting it to the caller).
  if (size != 4 || (offset & 0xF) != 0) {
    return tally(AccessResult::ignored(AccessReason::BAD_SIZE_OR_ALIGNMENT));
  }
  if (info->xapic == RegAccess::READ_ONLY) {
    return tally(AccessResult::ignored(AccessReason::READ_ONLY_REGISTER));
  }
  return tally(writeValue(*info, uint32_t(value), false));
}

// The row an x2APIC MSR names, or nullptr with `refusal` filled in.
const RegisterInfo* Lapic::Impl::decodeMsr(uint32_t msr, AccessResult& refusal) {
  if (msr < kMsrX2apicFirst || msr > kMsrX2apicLast) {
    refusal = AccessResult::gp(AccessReason::RESERVED_REGISTER);
    return nullptr;
  }
  // x2APIC MSRs fault unless the APIC is in x2APIC mode (SDM 11.12.1.2).
  if (mode != ApicMode::X2APIC) {
    refusal = AccessResult::gp(AccessReason::APIC_DISABLED);
    return nullptr;
  }
  uint32_t slot = msr - kMsrX2apicFirst;
  const RegisterInfo* info = slot < kSlots ? rows[slot] : nullptr;
  if (info == nullptr || info->x2apic == RegAccess::NONE) {
    refusal = AccessResult::gp(info == nullptr ? AccessReason::RESERVED_REGISTER
                                               : AccessReason::NOT_IN_MODE);
    return nullptr;
  }
  ++stats.perRegisterAccesses[slot];
  return info;
}

AccessResult Lapic::Impl::msrRead(uint32_t msr) {
  ++stats.reads;
  if (msr == kMsrApicBase) return AccessResult::ok(apicBase);
  if (msr == kMsrTscDeadline) {
    // The MSR exists only when CPUID reports TSC-deadline (SDM 11.5.4.1).
    if (!config.tscDeadlineSupported) {
      return tally(AccessResult::gp(AccessReason::RESERVED_REGISTER));
    }
    // A hardware-disabled APIC has no timer: the MSR reads 0 (KVM).
    if (mode == ApicMode::DISABLED) return AccessResult::ok(0);
    return AccessResult::ok(timer.readTscDeadline());
  }
  AccessResult refusal;
  const RegisterInfo* info = decodeMsr(msr, refusal);
  if (info == nullptr) return tally(refusal);
  if (info->x2apic == RegAccess::WRITE_ONLY) {
    return tally(AccessResult::gp(AccessReason::WRITE_ONLY_REGISTER));
  }
  return AccessResult::ok(readValue(*info, true));
}

AccessResult Lapic::Impl::msrWrite(uint32_t msr, uint64_t value) {
  ++stats.writes;
  if (msr == kMsrApicBase) return tally(writeApicBase(value));
  if (msr == kMsrTscDeadline) {
    if (!config.tscDeadlineSupported) {
      return tally(AccessResult::gp(AccessReason::RESERVED_REGISTER));
    }
    // With the APIC hardware-disabled the write is dropped, no fault (KVM
    // ignores it while the APIC is absent; the timer cannot be armed then).
    if (mode == ApicMode::DISABLED) {
      return tally(AccessResult::ignored(AccessReason::APIC_DISABLED));
    }
    // Outside TSC-deadline mode the write has no effect (SDM 11.5.4.1, KVM).
    AccessResult result = timer.mode() == TimerMode::TSC_DEADLINE
                              ? AccessResult::ok()
                              : AccessResult::ignored(AccessReason::TIMER_MODE);
    timer.writeTscDeadline(value);
    afterTimerWrite(result);
    return tally(kj::mv(result));
  }
  AccessResult refusal;
  const RegisterInfo* info = decodeMsr(msr, refusal);
  if (info == nullptr) return tally(refusal);
  unsigned slot = slotOf(info->reg);
  if (info->x2apic == RegAccess::READ_ONLY) {
    return tally(AccessResult::gp(AccessReason::READ_ONLY_REGISTER));
  }
  // SDM 11.12.1.2: bits 63:32 of every MSR but the ICR, SELF IPI 31:8 and
  // the ICR's reserved bits fault (as KVM does).
  if ((value & x2apicGpBits[slot]) != 0) {
    return tally(AccessResult::gp(AccessReason::RESERVED_BITS));
  }
  // SDM 11.12.1.2: "a write of a non-zero value to the EOI register / the
  // ESR causes #GP". KVM faults for the ESR but ignores the EOI value, and
  // guests are tested against KVM: the EOI rule is the strict option's
  // (lapic-facts.md, "our default; the strict option faults").
  if (info->reg == Reg::ESR && value != 0) {
    return tally(AccessResult::gp(AccessReason::NON_ZERO_WRITE));
  }
  if (info->reg == Reg::EOI && value != 0 && config.strictReservedBits) {
    return tally(AccessResult::gp(AccessReason::NON_ZERO_WRITE));
  }
  if (config.strictReservedBits) {
    // The SDM's rule, as Xen applies it: any reserved bit faults. KVM masks
    // the rest instead, which is the default.
    uint64_t allowed = x2apicMask[slot];
    if (info->reg == Reg::ICR_LOW) allowed |= 0xFFFFFFFF00000000ull;  // destination
    // The read-only status bits are not reserved: a read-modify-write
    // writes back what it read. Xen's x2APIC masks accept delivery status in
    // every LVT and remote IRR in LINT0/LINT1, so an RMW of LINT0 while a
    // level interrupt is in service does not fault.
    if (isLvt(info->reg)) allowed |= kLvtDeliveryStatus;
    if (info->reg == Reg::LVT_LINT0 || info->reg == Reg::LVT_LINT1) allowed |= kLvtRemoteIrr;
    if ((value & ~allowed) != 0) return tally(AccessResult::gp(AccessReason::RESERVED_BITS));
  }
  return tally(writeValue(*info, value, true));
}

uint64_t Lapic::Impl::readValue(const RegisterInfo& info, bool x2apic) const {
  switch (info.reg) {
    case Reg::TIMER_CURRENT_COUNT:
      return timer.currentCount();
    case Reg::ICR_LOW:
      // x2APIC: one 64-bit register; the page keeps ICR[63:32] at 0x310
      // (KVM's layout, SDM 11.12.9).
      if (x2apic) return uint64_t(reg(Reg::ICR_HIGH)) << 32 | reg(Reg::ICR_LOW);
      return reg(Reg::ICR_LOW);
    default:
      return reg(info.reg);
  }
}

AccessResult Lapic::Impl::writeValue(const RegisterInfo& info, uint64_t value, bool x2apic) {
  unsigned slot = slotOf(info.reg);
  uint32_t masked = uint32_t(value) & (x2apic ? x2apicMask[slot] : xapicMask[slot]);
  AccessResult result;
  switch (info.reg) {
    case Reg::ID:
    case Reg::LDR:
      // xAPIC only (read-only in x2APIC): routing changes.
      reg(info.reg) = masked;
      ++routingGen;
      break;
    case Reg::DFR:
      // Bits 27:0 always read as ones (SDM 11.6.2.2).
      reg(Reg::DFR) = masked | kDfrLowOnes;
      ++routingGen;
      break;
    case Reg::TPR:
      reg(Reg::TPR) = masked;
      updatePpr();
      break;
    case Reg::EOI:
      eoi(result);
      break;
    case Reg::SVR:
      writeSvr(masked);
      break;
    case Reg::ESR:
      // SDM 11.5.3: a write (the value is irrelevant) moves the errors
      // detected since the previous write into the register and clears them,
      // so each new error raises the LVT Error interrupt again.
      reg(Reg::ESR) = esrPending;
      esrPending = 0;
      break;
    case Reg::ICR_LOW:
      reg(Reg::ICR_LOW) = masked;  // delivery status stays 0: sent at once
      if (x2apic) {
        setX2apicIcrHigh(uint32_t(value >> 32));
        sendIcr(IcrValue(masked, uint32_t(value >> 32)).toMessage(true), result);
      } else {
        sendIcr(IcrValue(masked, reg(Reg::ICR_HIGH)).toMessage(false), result);
      }
      break;
    case Reg::ICR_HIGH:
      reg(Reg::ICR_HIGH) = masked;
      break;
    case Reg::LVT_TIMER:
      writeLvtTimer(masked, result);
      break;
    case Reg::LVT_CMCI:
    case Reg::LVT_THERMAL:
    case Reg::LVT_PMC:
    case Reg::LVT_ERROR:
    case Reg::LVT_LINT0:
    case Reg::LVT_LINT1:
      writeLvt(info.reg, masked);
      break;
    case Reg::TIMER_INITIAL_COUNT:
      // SDM 11.5.4.1: ignored in TSC-deadline mode (KVM keeps TMICT 0 then).
      if (timer.mode() == TimerMode::TSC_DEADLINE) {
        return AccessResult::ignored(AccessReason::TIMER_MODE);
      }
      reg(Reg::TIMER_INITIAL_COUNT) = masked;
      timer.writeInitialCount(masked);
      afterTimerWrite(result);
      break;
    case Reg::TIMER_DIVIDE_CONFIG:
      reg(Reg::TIMER_DIVIDE_CONFIG) = masked;
      timer.writeDivideConfig(masked);
      afterTimerWrite(result);
      break;
    case Reg::SELF_IPI: {
      // SDM 11.12.11: a fixed, edge-triggered IPI to self with this vector.
      InterruptMessage message;
      message.vector = uint8_t(masked);
      message.shorthand = Shorthand::SELF;
      message.x2apicFormat = true;
      sendIcr(message, result);
      break;
    }
    default:
      // Read-only registers never get here: both paths refuse them first.
      KJ_FAIL_ASSERT("write to a register without write semantics", info.name);
  }
  return result;
}

// IA32_APIC_BASE (SDM 11.4.4 and 11.12.5, Figure 11-27 "Local x2APIC State
// Transitions").
AccessResult Lapic::Impl::writeApicBase(uint64_t value) {
  if ((value & apicBaseReservedBits) != 0) return AccessResult::gp(AccessReason::RESERVED_BITS);
  ApicBaseValue next(value);
  if (!next.validState()) return AccessResult::gp(AccessReason::ILLEGAL_TRANSITION);
  ApicMode nextMode = next.mode();
  // x2APIC -> xAPIC must go through disabled; disabled -> x2APIC must go
  // through xAPIC.
  if ((mode == ApicMode::X2APIC && nextMode == ApicMode::XAPIC) ||
      (mode == ApicMode::DISABLED && nextMode == ApicMode::X2APIC)) {
    return AccessResult::gp(AccessReason::ILLEGAL_TRANSITION);
  }
  apicBase = value;
  if (nextMode != mode) enterMode(nextMode);
  return AccessResult::ok();
}

void Lapic::Impl::enterMode(ApicMode nextMode) {
  ApicMode previous = mode;
  mode = nextMode;
  ++routingGen;
  if (nextMode == ApicMode::X2APIC) {
    // SDM 11.12.5.1: the x2APIC ID is the initial APIC ID (an xAPIC ID the
    // guest wrote is not carried over) and the LDR is derived from it.
    reg(Reg::ID) = initialId;
    reg(Reg::LDR) = LdrValue::forX2apicId(initialId).raw();
    setX2apicIcrHigh(reg(Reg::ICR_HIGH));
  } else if (nextMode == ApicMode::XAPIC && previous == ApicMode::DISABLED) {
    // The SDM says a disabled APIC may lose its state; KVM keeps the
    // registers and re-enabling restores the initial xAPIC ID.
    reg(Reg::ID) = (initialId & 0xFF) << 24;
    // Coming from x2APIC (SDM 11.12.5.1: only the x2APIC ID is preserved),
    // LDR and ICR high may still hold 32-bit x2APIC values; keep just the
    // fields that exist in xAPIC mode, so every register holds only its
    // xAPIC bits again.
    for (Reg r : {Reg::LDR, Reg::ICR_HIGH}) reg(r) &= xapicMask[slotOf(r)];
  }
  if (previous == ApicMode::X2APIC) words[kIcrUpperHalfWord] = 0;
}

// ---------------------------------------------------------------------------
// Register semantics

// SDM 11.8.3.1: PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4.
void Lapic::Impl::updatePpr() {
  int isrv = highest(Reg::ISR0);
  uint32_t isrClass = isrv < 0 ? 0 : uint32_t(isrv) & 0xF0;
  uint32_t tpr = reg(Reg::TPR);
  reg(Reg::PPR) = (tpr & 0xF0) >= isrClass ? tpr : isrClass;
}

void Lapic::Impl::writeSvr(uint32_t value) {
  bool wasEnabled = softwareEnabled();
  reg(Reg::SVR) = value;
  if (!(value & kSvrSoftwareEnable)) {
    // SDM 11.4.7.2: software disable sets every LVT mask bit; they stay set
    // (and cannot be cleared) until software re-enables and unmasks them.
    for (Reg lvt : kLvtRegisters) {
      if (rows[slotOf(lvt)] != nullptr) reg(lvt) |= kLvtMasked;
    }
  }
  // Lowest-priority arbitration only picks software-enabled APICs, so the
  // per-VM destination map is rebuilt on this change too.
  if (wasEnabled != softwareEnabled()) ++routingGen;
}

void Lapic::Impl::writeLvt(Reg lvt, uint32_t value) {
  if (!softwareEnabled()) value |= kLvtMasked;
  bool isLint = lvt == Reg::LVT_LINT0 || lvt == Reg::LVT_LINT1;
  // Remote IRR is read-only: it belongs to the interrupt in service.
  if (isLint) value |= reg(lvt) & kLvtRemoteIrr;
  reg(lvt) = value;
  // A level-triggered input that is still asserted is seen as soon as its
  // entry can deliver it (e.g. when it is unmasked).
  if (isLint) redeliverLevelLint(lvt == Reg::LVT_LINT0 ? 0 : 1);
}

void Lapic::Impl::writeLvtTimer(uint32_t value, AccessResult& result) {
  if (!softwareEnabled()) value |= kLvtMasked;
  reg(Reg::LVT_TIMER) = value;
  timer.setMode(timerModeOf(value));
  // Switching into or out of TSC-deadline mode zeroes the initial count
  // (KVM); the timer holds the truth.
  reg(Reg::TIMER_INITIAL_COUNT) = timer.initialCount();
  afterTimerWrite(result);
}

// After anything that can move the timer: an expiry that is already due
// (a TSC deadline in the past, a count that ran out while reprogramming) is
// delivered before the access returns, so the guest sees the interrupt right
// after its write (SDM 11.5.4.1; KVM does the same).
void Lapic::Impl::afterTimerWrite(AccessResult& result) {
  result.timerChanged = true;
  if (timer.expiryDue()) onTimer();
}

// An IPI from ICR or SELF IPI (SDM 11.6.1).
void Lapic::Impl::sendIcr(const InterruptMessage& message, AccessResult& result) {
  bool fixedOrLowest = message.deliveryMode == DeliveryMode::FIXED ||
                       message.deliveryMode == DeliveryMode::LOWEST_PRIORITY;
  if (fixedOrLowest && illegalVector(message.vector)) {
    // SDM 11.5.3: the sender logs "Send Illegal Vector" and the message
    // still goes out: each receiver logs "Receive Illegal Vector" and
    // discards it (acceptInterrupt), so a self IPI logs both.
    reportError(kEsrSendIllegalVector);
  }
  ++stats.ipisSent;
  if (message.shorthand == Shorthand::SELF && message.deliveryMode == DeliveryMode::FIXED) {
    // Delivered here: the only target is this APIC. A level-triggered
    // message with level 0 is a de-assert and carries no interrupt.
    if (message.trigger == TriggerMode::LEVEL && !message.levelAssert) return;
    acceptInterrupt(message.vector, message.trigger);
    return;
  }
  result.ipi = message;
}

// SDM 11.8.5: EOI retires the highest-priority in-service vector.
void Lapic::Impl::eoi(AccessResult& result) {
  int vector = highest(Reg::ISR0);
  if (vector < 0) return;  // nothing in service: no effect
  uint8_t v = uint8_t(vector);
  clearBit(Reg::ISR0, v);
  updatePpr();
  ++stats.eois;
  if (!testBit(Reg::TMR0, v)) return;
  // A level-triggered fixed LINT input waiting on this vector may deliver
  // again (SDM 11.5.1, remote IRR).
  for (unsigned pin = 0; pin < 2; ++pin) {
    Reg lvt = pin == 0 ? Reg::LVT_LINT0 : Reg::LVT_LINT1;
    uint32_t entry = reg(lvt);
    if ((entry & kLvtRemoteIrr) && uint8_t(entry) == v) {
      reg(lvt) = entry & ~kLvtRemoteIrr;
      redeliverLevelLint(pin);
    }
  }
  // Level-triggered: the EOI goes to the I/O APICs unless the guest chose to
  // suppress the broadcast (SVR bit 12, SDM 11.8.5).
  if (!(reg(Reg::SVR) & kSvrSuppressEoiBroadcast)) result.eoiBroadcast = v;
}

// SDM 11.5.3: errors accumulate; the LVT Error interrupt fires when an error
// not yet pending is detected, if its entry is unmasked.
void Lapic::Impl::reportError(uint32_t esrBits) {
  uint32_t fresh = esrBits & ~esrPending;
  esrPending |= esrBits;
  if (fresh == 0 || !hardwareEnabled()) return;
  uint32_t entry = reg(Reg::LVT_ERROR);
  // An illegal LVT Error vector recurses at most once: its own error bit is
  // pending by then.
  if (!(entry & kLvtMasked)) acceptInterrupt(uint8_t(entry), TriggerMode::EDGE);
}

// ---------------------------------------------------------------------------
// Interrupts

// SDM 11.8.3 / 11.8.4: a fixed interrupt sets its IRR bit; TMR records the
// trigger mode.
bool Lapic::Impl::acceptInterrupt(uint8_t vector, TriggerMode trigger) {
  if (!hardwareEnabled()) return false;
  if (illegalVector(vector)) {
    reportError(kEsrReceivedIllegalVector);  // SDM 11.5.3: discarded
    return false;
  }
  // SDM 11.4.7.2: a software-disabled APIC does not accept fixed interrupts.
  if (!softwareEnabled()) return false;
  setBit(Reg::IRR0, vector);
  if (trigger == TriggerMode::LEVEL) {
    setBit(Reg::TMR0, vector);
  } else {
    clearBit(Reg::TMR0, vector);
  }
  ++stats.accepted;
  return true;
}

// SDM 11.8.3.1: the highest IRR vector is delivered when its priority class
// is above PPR's.
kj::Maybe<uint8_t> Lapic::Impl::pendingVector() const {
  if (!hardwareEnabled()) return nullptr;
  int vector = highest(Reg::IRR0);
  if (vector < 0 || (uint32_t(vector) & 0xF0) <= (reg(Reg::PPR) & 0xF0)) return nullptr;
  return uint8_t(vector);
}

kj::Maybe<uint8_t> Lapic::Impl::acknowledge() {
  KJ_IF_MAYBE(vector, pendingVector()) {
    clearBit(Reg::IRR0, *vector);
    setBit(Reg::ISR0, *vector);
    updatePpr();
    ++stats.acknowledged;
    return *vector;
  }
  return nullptr;
}

// One LVT entry delivering (SDM 11.5.1). `edge`: the source just became
// active (a rising LINT edge, a thermal/PMC/CMCI event, a timer expiry).
LocalInterrupt Lapic::Impl::deliverLvt(Reg lvt, bool edge, bool allowInitExtInt) {
  LocalInterrupt out;
  uint32_t entry = reg(lvt);
  if (entry & kLvtMasked) return out;
  LvtValue value(entry);
  switch (value.deliveryMode()) {
    case DeliveryMode::FIXED:
      if (edge && acceptInterrupt(value.vector(), TriggerMode::EDGE)) {
        out.kind = LocalInterrupt::Kind::FIXED;
        out.vector = value.vector();
      }
      break;
    case DeliveryMode::NMI:
      if (edge) out.kind = LocalInterrupt::Kind::NMI;
      break;
    case DeliveryMode::SMI:
      if (edge) out.kind = LocalInterrupt::Kind::SMI;
      break;
    case DeliveryMode::INIT:
      if (edge && allowInitExtInt) out.kind = LocalInterrupt::Kind::INIT;
      break;
    case DeliveryMode::EXTINT:
      if (edge && allowInitExtInt) out.kind = LocalInterrupt::Kind::EXTINT;
      break;
    default:
      break;  // reserved delivery modes deliver nothing
  }
  return out;
}

LocalInterrupt Lapic::Impl::setLint(unsigned pin, bool level) {
  KJ_REQUIRE(pin < 2, "a LAPIC has two LINT pins", pin);
  bool rising = level && !lint[pin];
  lint[pin] = level;
  LocalInterrupt out;
  if (mode == ApicMode::DISABLED) {
    // SDM 11.4.3: with the APIC globally disabled the processor behaves as
    // one without an APIC: LINT0 is the INTR pin, LINT1 the NMI pin.
    if (pin == 0 && level) out.kind = LocalInterrupt::Kind::EXTINT;
    if (pin == 1 && rising) out.kind = LocalInterrupt::Kind::NMI;
    return out;
  }
  Reg lvt = pin == 0 ? Reg::LVT_LINT0 : Reg::LVT_LINT1;
  LvtValue entry(reg(lvt));
  if (entry.masked()) return out;
  switch (entry.deliveryMode()) {
    case DeliveryMode::FIXED:
      if (entry.trigger() == TriggerMode::LEVEL) {
        // Level-sensitive: delivered while asserted, once per EOI (remote
        // IRR, SDM 11.5.1).
        if (level && !entry.remoteIrr() && acceptInterrupt(entry.vector(), TriggerMode::LEVEL)) {
          reg(lvt) |= kLvtRemoteIrr;
          out.kind = LocalInterrupt::Kind::FIXED;
          out.vector = entry.vector();
        }
        return out;
      }
      return deliverLvt(lvt, rising, true);
    case DeliveryMode::EXTINT:
      // SDM 11.5.1: ExtINT inputs are always level-sensitive: while the pin
      // is asserted the processor asks the external controller.
      if (level) out.kind = LocalInterrupt::Kind::EXTINT;
      return out;
    default:
      // NMI, SMI and INIT are always edge-sensitive.
      return deliverLvt(lvt, rising, true);
  }
}

void Lapic::Impl::redeliverLevelLint(unsigned pin) {
  Reg lvt = pin == 0 ? Reg::LVT_LINT0 : Reg::LVT_LINT1;
  LvtValue entry(reg(lvt));
  if (!lint[pin] || entry.masked() || entry.remoteIrr() || !hardwareEnabled() ||
      entry.deliveryMode() != DeliveryMode::FIXED || entry.trigger() != TriggerMode::LEVEL) {
    return;
  }
  if (acceptInterrupt(entry.vector(), TriggerMode::LEVEL)) reg(lvt) |= kLvtRemoteIrr;
}

LocalInterrupt Lapic::Impl::signalLvt(LvtSource source) {
  Reg lvt = source == LvtSource::THERMAL ? Reg::LVT_THERMAL
          : source == LvtSource::PMC     ? Reg::LVT_PMC
                                         : Reg::LVT_CMCI;
  if (rows[slotOf(lvt)] == nullptr || !hardwareEnabled()) return LocalInterrupt();
  // Thermal, PMC and CMCI entries support no INIT and no ExtINT (SDM 11.5.1).
  LocalInterrupt out = deliverLvt(lvt, true, false);
  // On Intel the PMC entry masks itself when it delivers (SDM 11.5.1;
  // KVM does the same for Intel guests).
  if (lvt == Reg::LVT_PMC && out.kind != LocalInterrupt::Kind::NONE) reg(lvt) |= kLvtMasked;
  return out;
}

// SDM 11.5.4: an expiry raises the LVT Timer vector as an edge interrupt
// unless the entry is masked (a masked timer still runs and expires).
uint32_t Lapic::Impl::onTimer() {
  uint32_t expiries = timer.expire();
  if (expiries == 0) return 0;
  stats.timerExpiries += expiries;
  uint32_t entry = reg(Reg::LVT_TIMER);
  if (!(entry & kLvtMasked)) acceptInterrupt(uint8_t(entry), TriggerMode::EDGE);
  return expiries;
}

// ---------------------------------------------------------------------------
// RESET, INIT, save and restore

// SDM 11.4.7.1 / 11.4.7.3: registers after RESET and INIT. INIT keeps the
// APIC ID (and in x2APIC mode the derived LDR) and IA32_APIC_BASE.
void Lapic::Impl::loadInitState(bool keepIdentity) {
  uint32_t id = reg(Reg::ID), ldr = reg(Reg::LDR);
  memset(words, 0, kKvmStateBytes);
  for (const RegisterInfo& info : registerTable()) {
    if (rows[slotOf(info.reg)] != nullptr) reg(info.reg) = info.resetValue;
  }
  reg(Reg::VERSION) = version;
  reg(Reg::ID) = keepIdentity ? id : (initialId & 0xFF) << 24;
  if (keepIdentity && mode == ApicMode::X2APIC) reg(Reg::LDR) = ldr;
  // PC firmware leaves the boot vCPU's LINT0 in virtual-wire mode (ExtINT,
  // unmasked); KVM's reset does the same, as an option here.
  if (bootVcpu && config.bspLint0ExtInt) reg(Reg::LVT_LINT0) = kLint0ExtInt;
  timer.reset();
  esrPending = 0;
  ++routingGen;
}

void Lapic::Impl::reset() {
  apicBase = kDefaultApicBase | kApicBaseEnable | (bootVcpu ? kApicBaseBsp : 0);
  mode = ApicMode::XAPIC;
  loadInitState(false);
  // After RESET the application processors wait for a SIPI (SDM 9.4.1).
  run = bootVcpu ? RunState::RUNNING : RunState::WAIT_FOR_SIPI;
}

void Lapic::Impl::init() {
  loadInitState(true);
  run = ApicBaseValue(apicBase).bsp() ? RunState::RUNNING : RunState::WAIT_FOR_SIPI;
}

LapicSnapshot Lapic::Impl::save(bool x2apic32BitIds) const {
  LapicSnapshot snapshot;
  snapshot.apicBase = apicBase;
  memcpy(snapshot.regs, words, kKvmStateBytes);
  auto setWord = [&](Reg r, uint32_t value) {
    memcpy(snapshot.regs + regOffset(r), &value, sizeof(value));
  };
  // KVM fills the current count at save time, in its own terms (time left
  // in counts), and restarts from it.
  setWord(Reg::TIMER_CURRENT_COUNT, timer.kvmCurrentCount());
  snapshot.x2apic32BitIds = x2apic32BitIds;
  if (mode == ApicMode::X2APIC && !x2apic32BitIds) setWord(Reg::ID, (initialId & 0xFF) << 24);

  HiddenState hidden;
  hidden.initialApicId = initialId;
  hidden.esrPending = esrPending;
  hidden.runState = run;
  hidden.lint[0] = lint[0];
  hidden.lint[1] = lint[1];
  hidden.timer = timer.save();
  snapshot.hidden = encodeHidden(hidden);
  return snapshot;
}

// What a real KVM's KVM_GET_LAPIC can put into an image that this model never
// holds, brought to the value this model would hold, so that migration from
// KVM imports (KVM's own KVM_SET_LAPIC accepts and fixes up the same):
// - the x2APIC ID in the legacy layout (no 32-bit IDs): KVM takes the ID
//   from the vCPU, whatever the image says; it becomes this vCPU's;
// - delivery status (bit 12) in the LVTs: KVM's LVT masks keep it, a
//   virtual LAPIC never has a send pending; cleared;
// - ICR low bits this model does not store (reserved bits such as 20, and
//   delivery status): KVM stores all but bit 12; cleared;
// - IRR and TMR bits of vectors 0-15: KVM accepts them, this model never
//   requests an illegal vector (SDM 11.5.2); cleared;
// - bytes 0x304-0x307, the upper half of KVM's 64-bit x2APIC ICR: KVM
//   rebuilds them from ICR high (0x310) on restore and leaves them stale
//   after x2APIC -> disabled -> xAPIC; dropped, restore rebuilds them too.
// The timer's current count above its initial count (a periodic count
// clamped to the minimum period) is taken as time left, see
// ApicTimer::snapshotFromCounts. Anything else is checked by checkImage.
void Lapic::Impl::normaliseImage(uint32_t* image, ApicMode imageMode,
                                 bool x2apic32BitIds) const {
  auto imageReg = [&](Reg r) -> uint32_t& { return image[slotOf(r) * kWordsPerSlot]; };
  if (imageMode == ApicMode::X2APIC && !x2apic32BitIds) {
    imageReg(Reg::ID) = (initialId & 0xFF) << 24;
  }
  for (Reg lvt : kLvtRegisters) {
    if (rows[slotOf(lvt)] != nullptr) imageReg(lvt) &= ~kLvtDeliveryStatus;
  }
  imageReg(Reg::ICR_LOW) &= xapicMask[slotOf(Reg::ICR_LOW)];
  imageReg(Reg::IRR0) &= 0xFFFF0000;
  imageReg(Reg::TMR0) &= 0xFFFF0000;
  image[kIcrUpperHalfWord] = 0;
}

// Every word of a kvm_lapic_state image must be one this vCPU could hold.
kj::Maybe<kj::String> Lapic::Impl::checkImage(const uint32_t* image, ApicMode imageMode,
                                              bool x2apic32BitIds) const {
  for (unsigned slot = 0; slot < kSlots; ++slot) {
    const uint32_t* slotWords = image + slot * kWordsPerSlot;
    for (unsigned i = 1; i < kWordsPerSlot; ++i) {
      // (normaliseImage has dropped the upper ICR half at 0x304.)
      if (slotWords[i] != 0) {
        return kj::str("bytes ", kj::hex(slot * 16 + i * 4), "..", kj::hex(slot * 16 + i * 4 + 3),
                       " lie between registers and must be 0");
      }
    }
    uint32_t value = slotWords[0];
    const RegisterInfo* info = rows[slot];
    if (info == nullptr) {
      if (value != 0) {
        return kj::str("offset ", kj::hex(slot * 16),
                       " is not a register of this vCPU and must be 0, not ", kj::hex(value));
      }
      continue;
    }
    // Bits a valid image may have set; registers the LAPIC recomputes on
    // restore (Version, APR, PPR, current count, x2APIC LDR) are skipped, as
    // KVM recomputes them.
    uint32_t allowed = xapicMask[slot];
    bool disabled = imageMode == ApicMode::DISABLED;
    switch (info->reg) {
      case Reg::VERSION:
      case Reg::APR:
      case Reg::PPR:
      case Reg::TIMER_CURRENT_COUNT:
        continue;
      case Reg::ID:
        if (imageMode == ApicMode::X2APIC) {
          uint32_t expected = x2apic32BitIds ? initialId : (initialId & 0xFF) << 24;
          if (value != expected) {
            return kj::str("x2APIC ID ", kj::hex(value), " in the image is not this vCPU's (",
                           kj::hex(expected), ")");
          }
          continue;
        }
        // A disabled APIC may still hold a 32-bit ID from x2APIC mode.
        if (disabled) continue;
        break;
      case Reg::LDR:
        if (imageMode == ApicMode::X2APIC || disabled) continue;
        break;
      case Reg::ICR_HIGH:
        if (imageMode == ApicMode::X2APIC || disabled) continue;  // ICR[63:32]
        break;
      case Reg::DFR:
        if ((value | 0xF0000000) != 0xFFFFFFFF) {
          return kj::str("DFR ", kj::hex(value), ": bits 27:0 must read as ones");
        }
        continue;
      case Reg::ESR:
        allowed = kEsrArchitecturalBits;
        break;
      case Reg::LVT_LINT0:
      case Reg::LVT_LINT1:
        allowed |= kLvtRemoteIrr;
        break;
      case Reg::ISR0:
      case Reg::TMR0:
      case Reg::IRR0:
        allowed = 0xFFFF0000;  // vectors 0-15 are never accepted
        break;
      case Reg::TIMER_INITIAL_COUNT:
        if (timerModeOf(image[slotOf(Reg::LVT_TIMER) * kWordsPerSlot]) ==
                TimerMode::TSC_DEADLINE && value != 0) {
          return kj::str("timer initial count ", value, " in TSC-deadline mode must be 0");
        }
        break;
      default:
        if (info->reg > Reg::ISR0 && info->reg < Reg::ESR) allowed = 0xFFFFFFFF;  // bitmaps
        break;
    }
    if ((value & ~allowed) != 0) {
      return kj::str(info->name, " ", kj::hex(value), " has reserved or read-only bits ",
                     kj::hex(value & ~allowed), " set");
    }
  }
  return nullptr;
}

kj::Maybe<kj::String> Lapic::Impl::restore(const LapicSnapshot& snapshot) {
  // Everything is validated before anything changes.
  if ((snapshot.apicBase & apicBaseReservedBits) != 0) {
    return kj::str("IA32_APIC_BASE ", kj::hex(snapshot.apicBase), " has reserved bits ",
                   kj::hex(snapshot.apicBase & apicBaseReservedBits), " set");
  }
  ApicBaseValue base(snapshot.apicBase);
  if (!base.validState()) {
    return kj::str("IA32_APIC_BASE ", kj::hex(snapshot.apicBase), " sets EXTD without EN");
  }
  ApicMode imageMode = base.mode();

  uint32_t image[kKvmStateBytes / sizeof(uint32_t)];
  memcpy(image, snapshot.regs, kKvmStateBytes);
  normaliseImage(image, imageMode, snapshot.x2apic32BitIds);
  KJ_IF_MAYBE(problem, checkImage(image, imageMode, snapshot.x2apic32BitIds)) {
    return kj::mv(*problem);
  }
  auto imageReg = [&](Reg r) { return image[slotOf(r) * kWordsPerSlot]; };
  if (!(imageReg(Reg::SVR) & kSvrSoftwareEnable)) {
    // SDM 11.4.7.2: software-disabled means every LVT is masked. The one
    // exception a LAPIC produces itself is the boot vCPU's LINT0 ExtINT
    // after RESET/INIT (KVM does it on every boot vCPU, so accept it there).
    for (Reg lvt : kLvtRegisters) {
      if (rows[slotOf(lvt)] == nullptr || (imageReg(lvt) & kLvtMasked)) continue;
      if (lvt == Reg::LVT_LINT0 && bootVcpu && imageReg(lvt) == kLint0ExtInt) continue;
      return kj::str(registerInfo(lvt).name, " is unmasked while SVR says software-disabled");
    }
  }
  TimerMode timerMode = timerModeOf(imageReg(Reg::LVT_TIMER));
  uint32_t dcr = imageReg(Reg::TIMER_DIVIDE_CONFIG);
  uint32_t initialCount = imageReg(Reg::TIMER_INITIAL_COUNT);

  HiddenState hidden;
  bool haveHidden = snapshot.hidden.size() != 0;
  if (haveHidden) {
    KJ_IF_MAYBE(problem, decodeHidden(snapshot.hidden, hidden)) return kj::mv(*problem);
    if (hidden.initialApicId != initialId) {
      return kj::str("hidden state belongs to initial APIC ID ", hidden.initialApicId,
                     ", this vCPU's is ", initialId);
    }
    if (hidden.timer.mode != timerMode) {
      return kj::str("hidden timer mode disagrees with LVT Timer");
    }
    if (hidden.timer.divideConfig != dcr) {
      return kj::str("hidden timer divide configuration disagrees with the DCR");
    }
    // In TSC-deadline mode too: the register reads 0 there and so must the
    // timer's count, or a later LVT Timer write would surface a stale count.
    if (hidden.timer.initialCount != initialCount) {
      return kj::str("hidden timer initial count disagrees with the register");
    }
  } else {
    // KVM's layout alone: restart the timer from the saved current count
    // (time left in counts; above the initial count for a clamped periodic
    // timer, as KVM saves it).
    uint32_t currentCount = imageReg(Reg::TIMER_CURRENT_COUNT);
    if (timerMode == TimerMode::TSC_DEADLINE && currentCount != 0) {
      return kj::str("timer current count ", currentCount, " in TSC-deadline mode must be 0");
    }
    hidden.timer = timer.snapshotFromCounts(timerMode, dcr, initialCount, currentCount);
  }
  KJ_IF_MAYBE(problem, timer.checkSnapshot(hidden.timer)) {
    return kj::str("timer state: ", *problem);
  }

  // Valid: apply.
  memcpy(words, image, kKvmStateBytes);
  apicBase = snapshot.apicBase;
  mode = imageMode;
  reg(Reg::VERSION) = version;
  reg(Reg::APR) = 0;
  reg(Reg::TIMER_CURRENT_COUNT) = 0;
  words[kIcrUpperHalfWord] = 0;
  if (mode == ApicMode::X2APIC) {
    reg(Reg::ID) = initialId;
    reg(Reg::LDR) = LdrValue::forX2apicId(initialId).raw();
    setX2apicIcrHigh(reg(Reg::ICR_HIGH));
  }
  updatePpr();
  timer.restore(hidden.timer);
  if (haveHidden) {
    esrPending = hidden.esrPending;
    run = hidden.runState;
    lint[0] = hidden.lint[0];
    lint[1] = hidden.lint[1];
  } else {
    esrPending = 0;
  }
  ++routingGen;
  if (timer.expiryDue()) onTimer();
  return nullptr;
}

// ===========================================================================
// The public face: thin forwards to Impl.

Lapic::Lapic(hal::Hal& hal, const GuestTsc& tsc, const LapicConfig& config,
             uint32_t initialApicId, bool bsp)
    : impl(kj::heap<Impl>(hal, tsc, config, initialApicId, bsp)) {}
Lapic::~Lapic() noexcept(false) {}

AccessResult Lapic::mmioRead(uint64_t gpa, uint8_t size) { return impl->mmioRead(gpa, size); }
AccessResult Lapic::mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) {
  return impl->mmioWrite(gpa, size, value);
}
AccessResult Lapic::msrRead(uint32_t msr) { return impl->msrRead(msr); }
AccessResult Lapic::msrWrite(uint32_t msr, uint64_t value) { return impl->msrWrite(msr, value); }
bool Lapic::mmioWindowContains(uint64_t gpa) const { return impl->windowContains(gpa); }
bool Lapic::mmioDecoding() const { return impl->mode == ApicMode::XAPIC; }

ApicMode Lapic::mode() const { return impl->mode; }
uint64_t Lapic::apicBase() const { return impl->apicBase; }
bool Lapic::isBsp() const { return ApicBaseValue(impl->apicBase).bsp(); }
uint32_t Lapic::apicId() const {
  uint32_t id = impl->reg(Reg::ID);
  return impl->mode == ApicMode::X2APIC ? id : id >> 24;
}
uint32_t Lapic::initialApicId() const { return impl->initialId; }
uint32_t Lapic::ldr() const { return impl->reg(Reg::LDR); }
uint32_t Lapic::dfr() const { return impl->reg(Reg::DFR); }
bool Lapic::hardwareEnabled() const { return impl->hardwareEnabled(); }
bool Lapic::softwareEnabled() const { return impl->softwareEnabled(); }
uint64_t Lapic::routingGeneration() const { return impl->routingGen; }

bool Lapic::acceptInterrupt(uint8_t vector, TriggerMode trigger) {
  return impl->acceptInterrupt(vector, trigger);
}
kj::Maybe<uint8_t> Lapic::pendingVector() const { return impl->pendingVector(); }
kj::Maybe<uint8_t> Lapic::acknowledge() { return impl->acknowledge(); }
uint8_t Lapic::tpr() const { return uint8_t(impl->reg(Reg::TPR)); }
uint8_t Lapic::ppr() const { return uint8_t(impl->reg(Reg::PPR)); }
uint8_t Lapic::cr8() const { return uint8_t(impl->reg(Reg::TPR) >> 4); }
void Lapic::setCr8(uint8_t cr8) {
  // SDM 10.8.6.1 / 11.8.6.1: CR8[3:0] is TPR[7:4]; TPR[3:0] becomes 0.
  impl->reg(Reg::TPR) = uint32_t(cr8 & 0xF) << 4;
  impl->updatePpr();
}

LocalInterrupt Lapic::setLint(unsigned pin, bool level) { return impl->setLint(pin, level); }
LocalInterrupt Lapic::signalLvt(LvtSource source) { return impl->signalLvt(source); }
bool Lapic::lintLevel(unsigned pin) const {
  KJ_REQUIRE(pin < 2, "a LAPIC has two LINT pins", pin);
  return impl->lint[pin];
}

void Lapic::reset() { impl->reset(); }
void Lapic::init() { impl->init(); }
RunState Lapic::runState() const { return impl->run; }
kj::Maybe<uint8_t> Lapic::startup(uint8_t vector) {
  // SDM 9.4.4: a SIPI only starts a processor that waits for one.
  if (impl->run != RunState::WAIT_FOR_SIPI) return nullptr;
  impl->run = RunState::RUNNING;
  return vector;
}

kj::Maybe<uint64_t> Lapic::timerDeadlineNs() const { return impl->timer.deadlineNs(); }
uint32_t Lapic::onTimer() { return impl->onTimer(); }
const ApicTimer& Lapic::timer() const { return impl->timer; }

LapicSnapshot Lapic::save() const { return impl->save(true); }
LapicSnapshot Lapic::save(bool x2apic32BitIds) const { return impl->save(x2apic32BitIds); }
kj::Maybe<kj::String> Lapic::restore(const LapicSnapshot& snapshot) {
  return impl->restore(snapshot);
}

const hal::Page& Lapic::page() const { return *impl->page; }
const LapicStats& Lapic::stats() const { return impl->stats; }
uint32_t Lapic::readRegister(Reg reg) const { return impl->reg(reg); }

}  // namespace vlapic
