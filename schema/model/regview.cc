// SPDX-License-Identifier: MIT
#include "schema/model/regview.h"
#include <kj/debug.h>
#include <kj/vector.h>

namespace vlapic {

kj::Maybe<DcrValue> DcrValue::fromDivisor(uint32_t divisor) {
  if (divisor == 1) return DcrValue().setCode(7);
  for (uint8_t code = 0; code < 7; code++) {
    if (divisor == 2u << code) return DcrValue().setCode(code);
  }
  return nullptr;
}

kj::Maybe<uint8_t> VectorSet::highest() const {
  for (int index = 7; index >= 0; index--) {
    if (words[index] != 0) {
      return uint8_t(index * 32 + 31 - __builtin_clz(words[index]));
    }
  }
  return nullptr;
}

kj::Array<uint8_t> VectorSet::vectors() const {
  kj::Vector<uint8_t> result;
  for (unsigned vector = 0; vector < 256; vector++) {
    if (contains(uint8_t(vector))) result.add(uint8_t(vector));
  }
  return result.releaseAsArray();
}

namespace {

// Registers are little-endian 32-bit words (x86 byte order, which is also
// how kvm_lapic_state stores them); assembling them byte by byte keeps the
// view correct for unaligned buffers.
uint32_t loadWord(const kj::byte* at) {
  return uint32_t(at[0]) | uint32_t(at[1]) << 8 | uint32_t(at[2]) << 16 | uint32_t(at[3]) << 24;
}

void storeWord(kj::byte* at, uint32_t value) {
  at[0] = kj::byte(value);
  at[1] = kj::byte(value >> 8);
  at[2] = kj::byte(value >> 16);
  at[3] = kj::byte(value >> 24);
}

constexpr size_t kRegisterImageMinimum = kKvmLapicStateSize;

// Vector v lives in bit v % 32 of the slice register first + v / 32.
Reg bitmapSlice(Reg first, unsigned index) {
  return Reg(uint16_t(first) + index);
}

}  // namespace

ConstRegisterView::ConstRegisterView(kj::ArrayPtr<const kj::byte> image, RegisterLayout layout)
    : image(image), regLayout(layout) {
  KJ_REQUIRE(image.size() >= kRegisterImageMinimum, "register image too small", image.size());
}

uint32_t ConstRegisterView::raw(Reg reg) const {
  return loadWord(image.begin() + regOffset(reg));
}

uint32_t ConstRegisterView::id() const {
  uint32_t value = raw(Reg::ID);
  return regLayout == RegisterLayout::X2APIC ? value : value >> 24;
}

LvtValue ConstRegisterView::lvt(Reg reg) const {
  KJ_REQUIRE(isLvtRegister(reg), "not an LVT register", uint16_t(reg));
  return LvtValue(raw(reg));
}

bool ConstRegisterView::bitmapBit(Reg first, uint8_t vector) const {
  return raw(bitmapSlice(first, vector / 32)) >> (vector % 32) & 1;
}

VectorSet ConstRegisterView::bitmap(Reg first) const {
  VectorSet set;
  for (unsigned index = 0; index < 8; index++) {
    set.setSlice(index, raw(bitmapSlice(first, index)));
  }
  return set;
}

RegisterView::RegisterView(kj::ArrayPtr<kj::byte> image, RegisterLayout layout)
    : ConstRegisterView(image.asConst(), layout), writable(image) {}

void RegisterView::setRaw(Reg reg, uint32_t value) {
  storeWord(writable.begin() + regOffset(reg), value);
}

void RegisterView::setId(uint32_t id) {
  if (layout() == RegisterLayout::X2APIC) {
    setRaw(Reg::ID, id);
  } else {
    KJ_REQUIRE(id <= 0xFF, "APIC ID does not fit this layout's 8-bit ID field", id);
    setRaw(Reg::ID, regview_detail::setField<uint32_t>(raw(Reg::ID), 24, 8, id));
  }
}

void RegisterView::setIcr(IcrValue v) {
  setRaw(Reg::ICR_LOW, v.low());
  setRaw(Reg::ICR_HIGH, v.high());
}

void RegisterView::setLvt(Reg reg, LvtValue v) {
  KJ_REQUIRE(isLvtRegister(reg), "not an LVT register", uint16_t(reg));
  setRaw(reg, v.raw());
}

void RegisterView::setBitmapBit(Reg first, uint8_t vector, bool present) {
  Reg slice = bitmapSlice(first, vector / 32);
  setRaw(slice, regview_detail::setFlag<uint32_t>(raw(slice), vector % 32, present));
}

void RegisterView::setBitmap(Reg first, const VectorSet& set) {
  for (unsigned index = 0; index < 8; index++) {
    setRaw(bitmapSlice(first, index), set.slice(index));
  }
}

ConstKvmLapicStateView::ConstKvmLapicStateView(kj::ArrayPtr<const kj::byte> regs, RegisterLayout layout)
    : ConstRegisterView(regs, layout) {
  KJ_REQUIRE(regs.size() == kKvmLapicStateSize, "kvm_lapic_state is 1024 bytes", regs.size());
}

KvmLapicStateView::KvmLapicStateView(kj::ArrayPtr<kj::byte> regs, RegisterLayout layout)
    : RegisterView(regs, layout) {
  KJ_REQUIRE(regs.size() == kKvmLapicStateSize, "kvm_lapic_state is 1024 bytes", regs.size());
}

ConstPageView::ConstPageView(kj::ArrayPtr<const kj::byte> page, RegisterLayout layout)
    : ConstRegisterView(page, layout) {
  KJ_REQUIRE(page.size() == hal::kPageSize, "a virtual-APIC page is 4 KiB", page.size());
}

PageView::PageView(kj::ArrayPtr<kj::byte> page, RegisterLayout layout)
    : RegisterView(page, layout) {
  KJ_REQUIRE(page.size() == hal::kPageSize, "a virtual-APIC page is 4 KiB", page.size());
}

}  // namespace vlapic
