// SPDX-License-Identifier: MIT
// Register images for the regview tests: raw little-endian words at xAPIC
// offsets, written and read without the code under test.
#pragma once

#include "schema/model/regview.h"
#include <kj/array.h>
#include <cstring>

namespace vlapic::regview_test {

inline uint32_t wordAt(kj::ArrayPtr<const kj::byte> bytes, size_t offset) {
  return uint32_t(bytes[offset]) | uint32_t(bytes[offset + 1]) << 8 |
         uint32_t(bytes[offset + 2]) << 16 | uint32_t(bytes[offset + 3]) << 24;
}

inline void putWord(kj::ArrayPtr<kj::byte> bytes, size_t offset, uint32_t value) {
  for (size_t i = 0; i < 4; i++) bytes[offset + i] = kj::byte(value >> (8 * i));
}

inline kj::Array<kj::byte> zeroedImage(size_t size = kKvmLapicStateSize) {
  auto image = kj::heapArray<kj::byte>(size);
  memset(image.begin(), 0, image.size());
  return image;
}

// KVM_GET_LAPIC right after creating vCPU 1 (lapic-facts.md, measured):
// ID 1, Version 0x00050014, DFR flat, SVR 0xFF, every LVT masked.
inline kj::Array<kj::byte> kvmFreshXapicState() {
  auto regs = zeroedImage();
  putWord(regs, 0x020, 0x01000000);
  putWord(regs, 0x030, 0x00050014);
  putWord(regs, 0x0E0, 0xFFFFFFFF);
  putWord(regs, 0x0F0, 0x000000FF);
  for (size_t offset = 0x320; offset <= 0x370; offset += 0x10) putWord(regs, offset, 0x00010000);
  return regs;
}

}  // namespace vlapic::regview_test
