// SPDX-License-Identifier: MIT
// Typed views over register images (regview.h): KVM's 1 KiB kvm_lapic_state
// and the 4 KiB virtual-APIC page. Registers sit at their xAPIC offsets (SDM
// "Local APIC Register Address Map") as little-endian 32-bit words; ID and
// 0x310 change meaning in x2APIC mode (SDM "x2APIC Register Address Space",
// KVM_X2APIC_API_USE_32BIT_IDS).
#include "images.h"
#include <catch2/catch.hpp>
#include <kj/array.h>
#include <kj/exception.h>

using namespace vlapic;

using namespace vlapic::regview_test;

TEST_CASE("kvm_lapic_state view: a fresh KVM vCPU 1 decodes by name", "[regview][view][kvm]") {
  auto regs = kvmFreshXapicState();
  ConstKvmLapicStateView view(regs.asPtr().asConst(), RegisterLayout::XAPIC);
  CHECK(view.id() == 1);
  CHECK(view.version().version() == 0x14);
  CHECK(view.version().lvtEntries() == 6);
  CHECK(view.dfr().flat());
  CHECK(view.svr().spuriousVector() == 0xFF);
  CHECK_FALSE(view.svr().apicEnabled());
  for (Reg lvt: {Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC, Reg::LVT_LINT0, Reg::LVT_LINT1,
                 Reg::LVT_ERROR}) {
    CHECK(view.lvt(lvt).masked());
    CHECK(view.lvt(lvt).vector() == 0);
  }
  CHECK(view.tpr().raw() == 0);
  CHECK(view.isr().empty());
  CHECK(view.irr().empty());
  CHECK(view.tmr().empty());
}

TEST_CASE("view: each register is read at its SDM offset", "[regview][view]") {
  auto regs = kj::heapArray<kj::byte>(kKvmLapicStateSize);
  // Give every 16-byte slot a distinct word: its offset times 0x10001.
  for (size_t offset = 0; offset < kKvmLapicStateSize; offset += 0x10) {
    memset(regs.begin() + offset, 0, 0x10);
    putWord(regs, offset, uint32_t(offset) * 0x10001);
  }
  ConstKvmLapicStateView view(regs.asPtr().asConst(), RegisterLayout::XAPIC);
  const struct { Reg reg; uint32_t offset; } offsets[] = {
    {Reg::ID, 0x020}, {Reg::VERSION, 0x030}, {Reg::TPR, 0x080}, {Reg::APR, 0x090},
    {Reg::PPR, 0x0A0}, {Reg::EOI, 0x0B0}, {Reg::RRD, 0x0C0}, {Reg::LDR, 0x0D0},
    {Reg::DFR, 0x0E0}, {Reg::SVR, 0x0F0}, {Reg::ISR0, 0x100}, {Reg::TMR0, 0x180},
    {Reg::IRR0, 0x200}, {Reg::ESR, 0x280}, {Reg::LVT_CMCI, 0x2F0}, {Reg::ICR_LOW, 0x300},
    {Reg::ICR_HIGH, 0x310}, {Reg::LVT_TIMER, 0x320}, {Reg::LVT_THERMAL, 0x330},
    {Reg::LVT_PMC, 0x340}, {Reg::LVT_LINT0, 0x350}, {Reg::LVT_LINT1, 0x360},
    {Reg::LVT_ERROR, 0x370}, {Reg::TIMER_INITIAL_COUNT, 0x380},
    {Reg::TIMER_CURRENT_COUNT, 0x390}, {Reg::TIMER_DIVIDE_CONFIG, 0x3E0},
  };
  for (auto& entry: offsets) {
    CHECK(view.raw(entry.reg) == entry.offset * 0x10001);
  }
  CHECK(view.version().raw() == 0x030 * 0x10001);
  CHECK(view.tpr().raw() == 0x080 * 0x10001);
  CHECK(view.apr().raw() == 0x090 * 0x10001);
  CHECK(view.ppr().raw() == 0x0A0 * 0x10001);
  CHECK(view.ldr().raw() == 0x0D0 * 0x10001);
  CHECK(view.dfr().raw() == 0x0E0 * 0x10001);
  CHECK(view.svr().raw() == 0x0F0 * 0x10001);
  CHECK(view.esr().raw() == 0x280 * 0x10001);
  CHECK(view.icr().low() == 0x300 * 0x10001);
  CHECK(view.icr().high() == 0x310 * 0x10001);
  CHECK(view.lvt(Reg::LVT_CMCI).raw() == 0x2F0 * 0x10001);
  CHECK(view.lvt(Reg::LVT_LINT1).raw() == 0x360 * 0x10001);
  CHECK(view.timerInitialCount() == 0x380 * 0x10001);
  CHECK(view.timerCurrentCount() == 0x390 * 0x10001);
  CHECK(view.timerDivideConfig().raw() == 0x3E0 * 0x10001);
}

TEST_CASE("view: typed setters store at the SDM offset and read back (round trip)", "[regview][view]") {
  auto regs = zeroedImage();
  KvmLapicStateView view(regs, RegisterLayout::XAPIC);

  view.setId(7);
  view.setVersion(VersionValue(0x01060014));
  view.setTpr(PriorityValue(0x20));
  view.setApr(PriorityValue(0x30));
  view.setPpr(PriorityValue(0x40));
  view.setLdr(LdrValue().setXapicLogicalId(0x08));
  view.setDfr(DfrValue(0x0FFFFFFF));
  view.setSvr(SvrValue().setSpuriousVector(0xFF).setApicEnabled(true));
  view.setEsr(EsrValue().setSendIllegalVector(true));
  view.setIcr(IcrValue().setVector(0x40).setXapicDestination(3));
  view.setLvt(Reg::LVT_TIMER, LvtValue().setVector(0x30).setTimerMode(TimerMode::PERIODIC));
  view.setLvt(Reg::LVT_LINT0, LvtValue().setDeliveryMode(DeliveryMode::EXTINT));
  view.setTimerInitialCount(1000000);
  view.setTimerCurrentCount(12345);
  view.setTimerDivideConfig(DcrValue(0xB));

  CHECK(wordAt(regs, 0x020) == 0x07000000);
  CHECK(wordAt(regs, 0x030) == 0x01060014);
  CHECK(wordAt(regs, 0x080) == 0x20);
  CHECK(wordAt(regs, 0x090) == 0x30);
  CHECK(wordAt(regs, 0x0A0) == 0x40);
  CHECK(wordAt(regs, 0x0D0) == 0x08000000);
  CHECK(wordAt(regs, 0x0E0) == 0x0FFFFFFF);
  CHECK(wordAt(regs, 0x0F0) == 0x1FF);
  CHECK(wordAt(regs, 0x280) == 0x20);
  CHECK(wordAt(regs, 0x300) == 0x40);
  CHECK(wordAt(regs, 0x310) == 0x03000000);
  CHECK(wordAt(regs, 0x320) == 0x00020030);
  CHECK(wordAt(regs, 0x350) == 0x00000700);
  CHECK(wordAt(regs, 0x380) == 1000000);
  CHECK(wordAt(regs, 0x390) == 12345);
  CHECK(wordAt(regs, 0x3E0) == 0xB);

  CHECK(view.id() == 7);
  CHECK(view.version().lvtEntries() == 7);
  CHECK(view.tpr().priorityClass() == 2);
  CHECK(view.apr().priorityClass() == 3);
  CHECK(view.ppr().priorityClass() == 4);
  CHECK(view.ldr().xapicLogicalId() == 0x08);
  CHECK(view.dfr().cluster());
  CHECK(view.svr().apicEnabled());
  CHECK(view.esr().sendIllegalVector());
  CHECK(view.icr().vector() == 0x40);
  CHECK(view.lvt(Reg::LVT_TIMER).timerMode() == TimerMode::PERIODIC);
  CHECK(view.lvt(Reg::LVT_LINT0).deliveryMode() == DeliveryMode::EXTINT);
  CHECK(view.timerInitialCount() == 1000000);
  CHECK(view.timerCurrentCount() == 12345);
  CHECK(view.timerDivideConfig().divisor() == 1);

  // setRaw/raw are the untyped escape hatch over the same words.
  view.setRaw(Reg::LVT_ERROR, 0x000100FE);
  CHECK(view.lvt(Reg::LVT_ERROR).vector() == 0xFE);
  CHECK(wordAt(regs, 0x370) == 0x000100FE);
}

TEST_CASE("view: ISR/TMR/IRR bit for every vector 0..255 (SDM IRR, ISR and TMR figure)", "[regview][view]") {
  auto regs = kj::heapArray<kj::byte>(kKvmLapicStateSize);
  KvmLapicStateView view(regs, RegisterLayout::XAPIC);
  const struct { size_t base; void (RegisterView::*set)(uint8_t, bool);
                 bool (ConstRegisterView::*test)(uint8_t) const; } bitmaps[] = {
    {0x100, &RegisterView::setInIsr, &ConstRegisterView::inIsr},
    {0x180, &RegisterView::setInTmr, &ConstRegisterView::inTmr},
    {0x200, &RegisterView::setInIrr, &ConstRegisterView::inIrr},
  };
  for (auto& bitmap: bitmaps) {
    for (unsigned vector = 0; vector < 256; vector++) {
      memset(regs.begin(), 0, regs.size());
      (view.*bitmap.set)(uint8_t(vector), true);
      // Exactly one bit in the whole image: bit vector%32 of the word at
      // base + 0x10 * (vector / 32).
      size_t offset = bitmap.base + 0x10 * (vector / 32);
      CHECK(wordAt(regs, offset) == 1u << (vector % 32));
      unsigned setBits = 0;
      for (kj::byte b: regs) setBits += __builtin_popcount(b);
      CHECK(setBits == 1);
      CHECK((view.*bitmap.test)(uint8_t(vector)));
      if (vector > 0) CHECK_FALSE((view.*bitmap.test)(uint8_t(vector - 1)));
      (view.*bitmap.set)(uint8_t(vector), false);
      CHECK(wordAt(regs, offset) == 0);
    }
  }
}

TEST_CASE("view: whole ISR/TMR/IRR sets are independent bitmaps", "[regview][view]") {
  auto regs = zeroedImage();
  KvmLapicStateView view(regs, RegisterLayout::XAPIC);
  view.setIrr(VectorSet().set(0x31, true).set(0xEF, true));
  view.setIsr(VectorSet().set(0x20, true));
  view.setTmr(VectorSet().set(0x31, true));
  CHECK(view.irr() == VectorSet().set(0x31, true).set(0xEF, true));
  CHECK(view.isr() == VectorSet().set(0x20, true));
  CHECK(view.tmr() == VectorSet().set(0x31, true));
  CHECK(view.irr().highest() == uint8_t(0xEF));
  CHECK(wordAt(regs, 0x210) == 1u << 0x11);
  CHECK(wordAt(regs, 0x270) == 1u << 0xF);
  CHECK(wordAt(regs, 0x110) == 1u);
  CHECK(wordAt(regs, 0x190) == 1u << 0x11);
}

TEST_CASE("kvm_lapic_state x2APIC layouts: 32-bit IDs vs the legacy 31:24 ID", "[regview][view][kvm][x2apic]") {
  // KVM_GET_LAPIC after setting EXTD on vCPU 1 with
  // KVM_X2APIC_API_USE_32BIT_IDS: ID = 1, LDR = 0x00000002 (lapic-facts.md).
  auto regs = kvmFreshXapicState();
  putWord(regs, 0x020, 0x00000001);
  putWord(regs, 0x0D0, 0x00000002);
  ConstKvmLapicStateView x2(regs.asPtr().asConst(), RegisterLayout::X2APIC);
  CHECK(x2.id() == 1);
  CHECK(x2.ldr() == LdrValue::forX2apicId(1));
  // The same bytes read with the xAPIC layout give a different ID: the
  // layout is part of the state's meaning.
  CHECK(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::XAPIC).id() == 0);

  // Without USE_32BIT_IDS KVM stores the x2APIC ID shifted into 31:24.
  putWord(regs, 0x020, 0x01000000);
  CHECK(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::X2APIC_LEGACY_ID).id() == 1);
}

TEST_CASE("view: setId encodes the ID per layout", "[regview][view][x2apic]") {
  auto regs = zeroedImage();

  KvmLapicStateView x2(regs, RegisterLayout::X2APIC);
  x2.setId(0x12345);
  CHECK(wordAt(regs, 0x020) == 0x00012345);
  CHECK(x2.id() == 0x12345);

  KvmLapicStateView legacy(regs, RegisterLayout::X2APIC_LEGACY_ID);
  legacy.setId(0x42);
  CHECK(wordAt(regs, 0x020) == 0x42012345);  // 23:0 kept
  CHECK(legacy.id() == 0x42);

  KvmLapicStateView x(regs, RegisterLayout::XAPIC);
  putWord(regs, 0x020, 0);
  x.setId(0xFF);
  CHECK(wordAt(regs, 0x020) == 0xFF000000);
  // An ID above 255 has no encoding in an 8-bit ID field: a caller bug.
  CHECK_THROWS_AS(x.setId(0x100), kj::Exception);
  CHECK_THROWS_AS(legacy.setId(0x100), kj::Exception);
  CHECK(wordAt(regs, 0x020) == 0xFF000000);
}

TEST_CASE("view: ICR in xAPIC (dest in 0x310 31:24) and x2APIC (0x310 = ICR[63:32])", "[regview][view][icr][x2apic]") {
  auto regs = zeroedImage();
  IcrValue icr = IcrValue().setVector(0x50).setDeliveryMode(DeliveryMode::FIXED)
      .setLevelAssert(true).setX2apicDestination(0x00000123);

  KvmLapicStateView x2(regs, RegisterLayout::X2APIC);
  x2.setIcr(icr);
  CHECK(wordAt(regs, 0x300) == 0x00004050);
  CHECK(wordAt(regs, 0x310) == 0x00000123);
  CHECK(x2.icr() == icr);
  CHECK(x2.icrMessage().destination == 0x123);
  CHECK(x2.icrMessage().x2apicFormat);
  CHECK(x2.icrMessage().vector == 0x50);
  // The legacy-ID layout still splits the 64-bit ICR the same way.
  CHECK(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::X2APIC_LEGACY_ID).icrMessage().destination
        == 0x123);

  KvmLapicStateView x(regs, RegisterLayout::XAPIC);
  x.setIcr(IcrValue().setVector(0x50).setXapicDestination(0x0F));
  CHECK(wordAt(regs, 0x310) == 0x0F000000);
  CHECK(x.icrMessage().destination == 0x0F);
  CHECK_FALSE(x.icrMessage().x2apicFormat);
}

TEST_CASE("view: sizes are checked (kvm_lapic_state 1 KiB, page 4 KiB)", "[regview][view]") {
  auto small = kj::heapArray<kj::byte>(1020);
  auto kib = kj::heapArray<kj::byte>(kKvmLapicStateSize);
  auto page = kj::heapArray<kj::byte>(hal::kPageSize);
  CHECK_THROWS_AS(KvmLapicStateView(small, RegisterLayout::XAPIC), kj::Exception);
  CHECK_THROWS_AS(KvmLapicStateView(page, RegisterLayout::XAPIC), kj::Exception);
  CHECK_THROWS_AS(ConstKvmLapicStateView(small.asPtr().asConst(), RegisterLayout::XAPIC), kj::Exception);
  CHECK_THROWS_AS(PageView(kib, RegisterLayout::XAPIC), kj::Exception);
  CHECK_THROWS_AS(ConstPageView(kib.asPtr().asConst(), RegisterLayout::XAPIC), kj::Exception);
  CHECK_NOTHROW(KvmLapicStateView(kib, RegisterLayout::XAPIC));
  CHECK_NOTHROW(PageView(page, RegisterLayout::XAPIC));
}

TEST_CASE("view: LVT accessors accept only LVT registers", "[regview][view][lvt]") {
  auto regs = zeroedImage();
  KvmLapicStateView view(regs, RegisterLayout::XAPIC);
  CHECK_THROWS_AS(view.lvt(Reg::TPR), kj::Exception);
  CHECK_THROWS_AS(view.setLvt(Reg::ICR_LOW, LvtValue(0x30)), kj::Exception);
  CHECK(wordAt(regs, 0x300) == 0);
  for (Reg lvt: {Reg::LVT_CMCI, Reg::LVT_TIMER, Reg::LVT_THERMAL, Reg::LVT_PMC, Reg::LVT_LINT0,
                 Reg::LVT_LINT1, Reg::LVT_ERROR}) {
    CHECK(isLvtRegister(lvt));
  }
  CHECK_FALSE(isLvtRegister(Reg::TIMER_INITIAL_COUNT));
  CHECK_FALSE(isLvtRegister(Reg::ESR));
}

TEST_CASE("page view over a HAL page: same offsets - unaligned kvm_lapic_state buffers work", "[regview][view][page]") {
  hal::ManualClock clock;
  auto hal = hal::newHostMemoryHal(clock);
  auto page = hal->allocatePage();
  PageView view(*page, RegisterLayout::XAPIC);
  view.setLvt(Reg::LVT_TIMER, LvtValue(0x00030030));
  view.setInIrr(0xEF, true);
  CHECK(*page->at<uint32_t>(0x320) == 0x00030030);
  CHECK(*page->at<uint32_t>(0x270) == 1u << (0xEF - 0xE0));
  ConstPageView readBack(static_cast<const hal::Page&>(*page), RegisterLayout::XAPIC);
  CHECK(readBack.lvt(Reg::LVT_TIMER).timerMode() == TimerMode::PERIODIC);
  CHECK(readBack.inIrr(0xEF));

  // kvm_lapic_state is a char array: it may sit at any alignment.
  auto storage = zeroedImage(kKvmLapicStateSize + 1);
  KvmLapicStateView unaligned(storage.slice(1, storage.size()), RegisterLayout::XAPIC);
  unaligned.setSvr(SvrValue(0x1FF));
  CHECK(wordAt(storage, 0x0F1) == 0x1FF);
  CHECK(unaligned.svr().apicEnabled());
}

TEST_CASE("layoutFor: mode and KVM's 32-bit-ID flag pick the layout", "[regview][view][x2apic]") {
  static_assert(layoutFor(ApicMode::XAPIC) == RegisterLayout::XAPIC);
  static_assert(layoutFor(ApicMode::DISABLED, true) == RegisterLayout::XAPIC);
  CHECK(layoutFor(ApicMode::X2APIC, true) == RegisterLayout::X2APIC);
  CHECK(layoutFor(ApicMode::X2APIC, false) == RegisterLayout::X2APIC_LEGACY_ID);
  CHECK(layoutFor(ApicMode::XAPIC, false) == RegisterLayout::XAPIC);
}
