// SPDX-License-Identifier: MIT
// Which guest register reads the front answers from the vCPU's virtual-APIC
// page (mapped read-only from vlapicd's shared-memory HAL) instead of asking
// the server: software APIC-register virtualisation. README.md ("Reads
// served from the page") explains the choice and why it is safe.
#pragma once

#include <kj/common.h>
#include <cstdint>

namespace vlapic::kvm {

// The page as 32-bit words, read with single aligned loads: the server
// stores each register with one aligned 32-bit store, so a read never sees
// half of an update.
class VirtualApicPageReader {
public:
  // `page`: at least 1 KiB (every register lives below 0x400). `lvtEntries`:
  // the VM's LVT count (6, or 7 with CMCI).
  VirtualApicPageReader(kj::ArrayPtr<const kj::byte> page, uint8_t lvtEntries);

  // An xAPIC MMIO read at `offset` in the 4 KiB window (xAPIC layout), or
  // nullptr when the server must answer it.
  kj::Maybe<uint64_t> mmioRead(uint64_t offset, uint8_t size) const;
  // An x2APIC RDMSR (x2APIC layout), or nullptr when the server must
  // answer it (including every read that raises #GP).
  kj::Maybe<uint64_t> msrRead(uint32_t msr) const;

private:
  const uint32_t* words;
  uint8_t lvtEntries;

  uint32_t load(uint32_t byteOffset) const;
};

}  // namespace vlapic::kvm
