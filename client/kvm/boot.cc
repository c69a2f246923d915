// SPDX-License-Identifier: MIT
#include "client/kvm/boot.h"

#include <kj/debug.h>
#include <kj/io.h>
#include <kj/vector.h>
#include <cerrno>
#include <cstring>
#include <elf.h>
#include <tuple>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vlapic::kvm {

GuestMemory::GuestMemory(uint64_t bytes) : bytes(bytes) {
  KJ_REQUIRE(bytes >= (2u << 20), "guest memory must be at least 2 MiB", bytes);
  KJ_REQUIRE(bytes <= kMaxBytes, "guest memory above 3 GiB is not supported", bytes);
  KJ_REQUIRE(bytes % 4096 == 0, "guest memory must be a multiple of 4 KiB", bytes);
  void* mapping = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapping == MAP_FAILED) {
    int error = errno;
    KJ_FAIL_SYSCALL("mmap(guest memory)", error, bytes);
  }
  base = reinterpret_cast<kj::byte*>(mapping);
}

GuestMemory::~GuestMemory() noexcept(false) { munmap(base, bytes); }

kj::ArrayPtr<kj::byte> GuestMemory::at(uint64_t gpa, uint64_t length) {
  KJ_REQUIRE(contains(gpa, length), "guest range outside RAM", gpa, length, bytes);
  return kj::arrayPtr(base + gpa, length);
}

kj::Array<kj::byte> readWholeFile(kj::StringPtr path) {
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int error = errno;
    KJ_FAIL_REQUIRE("cannot open file", path, strerror(error));
  }
  kj::AutoCloseFd owner(fd);
  kj::Vector<kj::byte> contents;
  kj::byte buffer[65536];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      KJ_FAIL_REQUIRE("cannot read file", path, strerror(error));
    }
    if (n == 0) break;
    contents.addAll(kj::arrayPtr(buffer, n));
  }
  return contents.releaseAsArray();
}

namespace {

// Where the loader puts the multiboot info, memory map, module list and
// strings: conventional memory below the EBDA, above the real-mode IVT/BDA
// (and above the page at 0x8000 our own guests use for their AP trampoline).
constexpr uint32_t kInfoAddress = 0x9000;
constexpr uint32_t kMmapAddress = 0x9100;
constexpr uint32_t kModulesAddress = 0x9200;
constexpr uint32_t kStringsAddress = 0x9400;
constexpr uint32_t kStringsEnd = 0x9FC00;
constexpr uint32_t kLowMemoryTop = 0x9FC00;

template <typename T>
T readAt(kj::ArrayPtr<const kj::byte> image, uint64_t offset) {
  KJ_REQUIRE(offset <= image.size() && sizeof(T) <= image.size() - offset,
             "kernel image truncated", offset);
  T value;
  memcpy(&value, image.begin() + offset, sizeof(T));
  return value;
}

void put32(GuestMemory& memory, uint64_t gpa, uint32_t value) {
  memcpy(memory.at(gpa, 4).begin(), &value, 4);
}
void put64(GuestMemory& memory, uint64_t gpa, uint64_t value) {
  memcpy(memory.at(gpa, 8).begin(), &value, 8);
}

struct Segment {
  uint64_t fileOffset, paddr, fileSize, memSize;
};

// Copies one loadable segment, zeroing its BSS; returns the end address.
uint64_t loadSegment(GuestMemory& memory, kj::ArrayPtr<const kj::byte> image, const Segment& s) {
  KJ_REQUIRE(s.fileSize <= s.memSize, "ELF segment file size exceeds memory size");
  KJ_REQUIRE(s.fileOffset <= image.size() && s.fileSize <= image.size() - s.fileOffset,
             "ELF segment outside the file");
  KJ_REQUIRE(memory.contains(s.paddr, s.memSize), "kernel segment does not fit in guest RAM",
             s.paddr, s.memSize, memory.size());
  auto target = memory.at(s.paddr, s.memSize);
  memcpy(target.begin(), image.begin() + s.fileOffset, s.fileSize);
  memset(target.begin() + s.fileSize, 0, s.memSize - s.fileSize);
  return s.paddr + s.memSize;
}

// Returns {entry, end of loaded image}.
std::pair<uint64_t, uint64_t> loadElf(GuestMemory& memory, kj::ArrayPtr<const kj::byte> image) {
  KJ_REQUIRE(image.size() >= EI_NIDENT && memcmp(image.begin(), ELFMAG, SELFMAG) == 0,
             "kernel is neither an ELF image nor a multiboot a.out-kludge image");
  uint64_t end = 0;
  if (image[EI_CLASS] == ELFCLASS32) {
    auto header = readAt<Elf32_Ehdr>(image, 0);
    for (uint32_t i = 0; i < header.e_phnum; i++) {
      auto ph = readAt<Elf32_Phdr>(image, header.e_phoff + uint64_t(i) * header.e_phentsize);
      if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
      end = kj::max(end, loadSegment(memory, image, {ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz}));
    }
    return {header.e_entry, end};
  }
  KJ_REQUIRE(image[EI_CLASS] == ELFCLASS64, "unknown ELF class");
  auto header = readAt<Elf64_Ehdr>(image, 0);
  for (uint32_t i = 0; i < header.e_phnum; i++) {
    auto ph = readAt<Elf64_Phdr>(image, header.e_phoff + uint64_t(i) * header.e_phentsize);
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    end = kj::max(end, loadSegment(memory, image, {ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz}));
  }
  KJ_REQUIRE(header.e_entry < (1ull << 32), "ELF64 entry point must be a 32-bit physical address");
  return {header.e_entry, end};
}

class StringArea {
public:
  explicit StringArea(GuestMemory& memory) : memory(memory) {}
  uint32_t add(kj::StringPtr text) {
    KJ_REQUIRE(next + text.size() + 1 <= kStringsEnd, "command lines too long for the boot area");
    uint32_t address = next;
    memcpy(memory.at(address, text.size() + 1).begin(), text.cStr(), text.size() + 1);
    next += text.size() + 1;
    return address;
  }

private:
  GuestMemory& memory;
  uint32_t next = kStringsAddress;
};

}  // namespace

BootState loadMultiboot(GuestMemory& memory, kj::ArrayPtr<const kj::byte> kernel,
                        kj::StringPtr commandLine, kj::ArrayPtr<const BootModule> modules) {
  // Multiboot 0.6.96 section 3.1.1: the header is 32-bit aligned within
  // the first 8192 bytes, and magic + flags + checksum == 0.
  kj::Maybe<size_t> headerOffset;
  for (size_t offset = 0;
       offset + multiboot::kHeaderChecksummedBytes <= kj::min(kernel.size(), multiboot::kHeaderSearchBytes);
       offset += 4) {
    uint32_t magic = readAt<uint32_t>(kernel, offset + multiboot::header::kMagic);
    uint32_t flags = readAt<uint32_t>(kernel, offset + multiboot::header::kFlags);
    uint32_t checksum = readAt<uint32_t>(kernel, offset + multiboot::header::kChecksum);
    if (magic == multiboot::kHeaderMagic && uint32_t(magic + flags + checksum) == 0) {
      headerOffset = offset;
      break;
    }
  }
  size_t header = KJ_REQUIRE_NONNULL(headerOffset, "no multiboot v1 header in the kernel's first 8 KiB");
  uint32_t flags = readAt<uint32_t>(kernel, header + multiboot::header::kFlags);

  uint64_t entry, end;
  if (flags & multiboot::kFlagAoutKludge) {
    // Section 3.1.3: the address fields say where the file goes.
    uint32_t headerAddr = readAt<uint32_t>(kernel, header + multiboot::header::kHeaderAddr);
    uint32_t loadAddr = readAt<uint32_t>(kernel, header + multiboot::header::kLoadAddr);
    uint32_t loadEndAddr = readAt<uint32_t>(kernel, header + multiboot::header::kLoadEndAddr);
    uint32_t bssEndAddr = readAt<uint32_t>(kernel, header + multiboot::header::kBssEndAddr);
    KJ_REQUIRE(headerAddr >= loadAddr && headerAddr - loadAddr <= header,
               "multiboot header address fields are inconsistent");
    uint64_t fileStart = header - (headerAddr - loadAddr);
    uint64_t loadSize = loadEndAddr ? loadEndAddr - loadAddr : kernel.size() - fileStart;
    uint64_t memSize = bssEndAddr ? kj::max<uint64_t>(bssEndAddr - loadAddr, loadSize) : loadSize;
    end = loadSegment(memory, kernel, {fileStart, loadAddr, loadSize, memSize});
    entry = readAt<uint32_t>(kernel, header + multiboot::header::kEntryAddr);
  } else {
    std::tie(entry, end) = loadElf(memory, kernel);
  }

  // Section 3.3: the boot information, every field we do not fill zero.
  namespace info = multiboot::info;
  StringArea strings(memory);
  uint32_t infoFlags = 0;
  memset(memory.at(kInfoAddress, kMmapAddress - kInfoAddress).begin(), 0, kMmapAddress - kInfoAddress);

  infoFlags |= info::kFlagMemory;
  put32(memory, kInfoAddress + info::kMemLower, kLowMemoryTop / 1024);
  put32(memory, kInfoAddress + info::kMemUpper, uint32_t((memory.size() - 0x100000) / 1024));

  infoFlags |= info::kFlagCommandLine;
  put32(memory, kInfoAddress + info::kCommandLine, strings.add(commandLine));

  // Modules, each page-aligned after the kernel (as QEMU places them).
  if (modules.size() > 0) {
    KJ_REQUIRE(modules.size() * info::kModuleEntryBytes <= kStringsAddress - kModulesAddress,
               "too many modules");
    uint64_t next = (end + 4095) & ~4095ull;
    for (size_t i = 0; i < modules.size(); i++) {
      auto& module = modules[i];
      KJ_REQUIRE(memory.contains(next, module.contents.size()), "module does not fit in guest RAM",
                 module.contents.size());
      memcpy(memory.at(next, module.contents.size()).begin(), module.contents.begin(),
             module.contents.size());
      uint32_t slot = kModulesAddress + i * info::kModuleEntryBytes;
      put32(memory, slot + info::kModuleStart, next);
      put32(memory, slot + info::kModuleEnd, next + module.contents.size());
      put32(memory, slot + info::kModuleString, strings.add(module.commandLine));
      put32(memory, slot + info::kModuleReserved, 0);
      next = (next + module.contents.size() + 4095) & ~4095ull;
    }
    infoFlags |= info::kFlagModules;
    put32(memory, kInfoAddress + info::kModsCount, modules.size());
    put32(memory, kInfoAddress + info::kModsAddr, kModulesAddress);
  }

  // Memory map: conventional memory and RAM above 1 MiB.
  struct Range { uint64_t base, length; };
  Range ranges[] = {{0, kLowMemoryTop}, {0x100000, memory.size() - 0x100000}};
  uint32_t mmapBytes = 0;
  for (auto& range : ranges) {
    uint32_t mapEntry = kMmapAddress + mmapBytes;
    // The size field counts the entry without itself.
    put32(memory, mapEntry + info::kMmapEntrySize, info::kMmapEntryBytes - 4);
    put64(memory, mapEntry + info::kMmapEntryBase, range.base);
    put64(memory, mapEntry + info::kMmapEntryLength, range.length);
    put32(memory, mapEntry + info::kMmapEntryType, info::kMmapTypeRam);
    mmapBytes += info::kMmapEntryBytes;
  }
  infoFlags |= info::kFlagMemoryMap;
  put32(memory, kInfoAddress + info::kMmapLength, mmapBytes);
  put32(memory, kInfoAddress + info::kMmapAddr, kMmapAddress);

  infoFlags |= info::kFlagLoaderName;
  put32(memory, kInfoAddress + info::kLoaderName, strings.add("vlapic-kvm"));

  put32(memory, kInfoAddress + info::kFlags, infoFlags);
  BootState state;
  state.entry = entry;
  state.infoAddress = kInfoAddress;
  return state;
}

}  // namespace vlapic::kvm
