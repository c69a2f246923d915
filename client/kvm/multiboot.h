// SPDX-License-Identifier: MIT
// The numbers of the Multiboot Specification 0.6.96 that vlapic-kvm uses, in
// one place: the loader (boot.cc) reads the OS image header and writes the
// boot information with them, the machine (machine.cc) sets up the boot
// vCPU's entry state with them, so the two cannot drift apart.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vlapic::kvm::multiboot {

// Section 3.1.1, "The layout of Multiboot header": 32-bit aligned within the
// first 8192 bytes of the image, magic + flags + checksum == 0 (mod 2^32).
constexpr uint32_t kHeaderMagic = 0x1BADB002;
constexpr size_t kHeaderSearchBytes = 8192;
constexpr size_t kHeaderChecksummedBytes = 12;  // magic, flags, checksum

// Byte offsets of the header's fields (sections 3.1.2 and 3.1.3).
namespace header {
constexpr uint32_t kMagic = 0;
constexpr uint32_t kFlags = 4;
constexpr uint32_t kChecksum = 8;
// Valid only with kFlagAoutKludge:
constexpr uint32_t kHeaderAddr = 12;
constexpr uint32_t kLoadAddr = 16;
constexpr uint32_t kLoadEndAddr = 20;
constexpr uint32_t kBssEndAddr = 24;
constexpr uint32_t kEntryAddr = 28;
}  // namespace header

// Header flags bit 16 (section 3.1.2): the address fields say where the
// image goes and where it starts (the "a.out kludge").
constexpr uint32_t kFlagAoutKludge = 1u << 16;

// Section 3.2, "Machine state": EAX holds this magic at entry, EBX the
// physical address of the boot information; CR0.PE set and CR0.PG clear;
// EFLAGS.VM and EFLAGS.IF clear.
constexpr uint32_t kBootMagic = 0x2BADB002;
constexpr uint64_t kEntryCr0 = 0x11;     // PE, ET: protected mode, paging off
constexpr uint64_t kEntryRflags = 0x2;   // only the always-one bit: IF = 0, VM = 0

// Section 3.3, "Boot information format": the flags word says which fields
// are present ...
namespace info {
constexpr uint32_t kFlagMemory = 1u << 0;       // mem_lower, mem_upper
constexpr uint32_t kFlagCommandLine = 1u << 2;  // cmdline
constexpr uint32_t kFlagModules = 1u << 3;      // mods_count, mods_addr
constexpr uint32_t kFlagMemoryMap = 1u << 6;    // mmap_length, mmap_addr
constexpr uint32_t kFlagLoaderName = 1u << 9;   // boot_loader_name

// ... and these are the fields' byte offsets.
constexpr uint32_t kFlags = 0;
constexpr uint32_t kMemLower = 4;   // KiB of conventional memory
constexpr uint32_t kMemUpper = 8;   // KiB of RAM above 1 MiB
constexpr uint32_t kCommandLine = 16;
constexpr uint32_t kModsCount = 20;
constexpr uint32_t kModsAddr = 24;
constexpr uint32_t kMmapLength = 44;
constexpr uint32_t kMmapAddr = 48;
constexpr uint32_t kLoaderName = 64;

// A module list entry: mod_start, mod_end, string, reserved.
constexpr uint32_t kModuleEntryBytes = 16;
constexpr uint32_t kModuleStart = 0;
constexpr uint32_t kModuleEnd = 4;
constexpr uint32_t kModuleString = 8;
constexpr uint32_t kModuleReserved = 12;

// A memory map entry: size (of the rest of the entry, not counting itself),
// base_addr, length, type; type 1 is available RAM.
constexpr uint32_t kMmapEntrySize = 0;
constexpr uint32_t kMmapEntryBase = 4;
constexpr uint32_t kMmapEntryLength = 12;
constexpr uint32_t kMmapEntryType = 20;
constexpr uint32_t kMmapEntryBytes = 24;
constexpr uint32_t kMmapTypeRam = 1;
}  // namespace info

}  // namespace vlapic::kvm::multiboot
