// SPDX-License-Identifier: MIT
// Guest RAM and the multiboot v1 loader: boots a kernel the way QEMU's
// -kernel does, so bare-metal test kernels run unchanged.
#pragma once

#include "client/kvm/multiboot.h"
#include <kj/array.h>
#include <kj/common.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::kvm {

// Guest RAM from guest-physical 0, below the 32-bit PCI/APIC hole.
class GuestMemory {
public:
  explicit GuestMemory(uint64_t bytes);
  ~GuestMemory() noexcept(false);
  KJ_DISALLOW_COPY(GuestMemory);

  uint64_t size() const { return bytes; }
  kj::byte* hostAddress() { return base; }
  bool contains(uint64_t gpa, uint64_t length) const {
    return gpa <= bytes && length <= bytes - gpa;
  }
  // Bounds-checked view of [gpa, gpa + length); throws if outside RAM.
  kj::ArrayPtr<kj::byte> at(uint64_t gpa, uint64_t length);

  // The largest RAM size we map: the rest of the 32-bit space is the PCI
  // hole, the I/O APIC and the LAPIC window.
  static constexpr uint64_t kMaxBytes = 0xC0000000ull;

private:
  uint64_t bytes;
  kj::byte* base;
};

struct BootModule {
  kj::Array<kj::byte> contents;
  kj::String commandLine;
};

// What the loader leaves for the boot CPU's entry state (Multiboot
// Specification 0.6.96 section 3.2, "Machine state": EAX = magic, EBX =
// info, flat 32-bit segments, paging off, interrupts off; the numbers are in
// multiboot.h, Machine::setBootState() applies them).
constexpr uint32_t kMultibootBootMagic = multiboot::kBootMagic;  // EAX at entry

struct BootState {
  uint32_t entry = 0;
  uint32_t infoAddress = 0;
};

// Loads a multiboot v1 kernel (ELF32, ELF64 with physical load addresses,
// or the a.out kludge) plus modules into RAM and builds the multiboot info
// (memory size, memory map, command line, modules). Throws with a clear
// message when the image is not a multiboot kernel or does not fit.
BootState loadMultiboot(GuestMemory& memory, kj::ArrayPtr<const kj::byte> kernel,
                        kj::StringPtr commandLine, kj::ArrayPtr<const BootModule> modules);

kj::Array<kj::byte> readWholeFile(kj::StringPtr path);

}  // namespace vlapic::kvm
