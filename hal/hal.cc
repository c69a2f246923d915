// SPDX-License-Identifier: MIT
#include "hal.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
#include <cerrno>

namespace vlapic::hal {

uint64_t MonotonicClock::nowNs() const {
  struct timespec ts;
  KJ_SYSCALL(clock_gettime(CLOCK_MONOTONIC, &ts));
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

namespace {

class HostPage final : public Page {
public:
  HostPage(size_t& inUse) : inUse(inUse) {
    void* p = aligned_alloc(kPageSize, kPageSize);
    KJ_ASSERT(p != nullptr, "out of memory allocating an APIC page");
    memset(p, 0, kPageSize);
    memory = static_cast<kj::byte*>(p);
    ++inUse;
  }
  ~HostPage() noexcept(false) {
    free(memory);
    --inUse;
  }
  KJ_DISALLOW_COPY(HostPage);

  kj::ArrayPtr<kj::byte> bytes() override { return {memory, kPageSize}; }
  kj::ArrayPtr<const kj::byte> bytes() const override { return {memory, kPageSize}; }
  uint64_t physAddr() const override { return reinterpret_cast<uintptr_t>(memory); }
  kj::Maybe<int> fd() const override { return nullptr; }
  uint64_t fdOffset() const override { return 0; }

private:
  size_t& inUse;
  kj::byte* memory;
};

class HostMemoryHal final : public Hal {
public:
  explicit HostMemoryHal(Clock& clock) : clockRef(clock) {}
  ~HostMemoryHal() noexcept(false) {
    KJ_ASSERT(inUse == 0, "pages outlived their HAL", inUse) { break; }
  }
  kj::Own<Page> allocatePage() override { return kj::heap<HostPage>(inUse); }
  Clock& clock() override { return clockRef; }
  kj::StringPtr name() const override { return "host-memory"; }
  size_t pagesInUse() const override { return inUse; }

private:
  Clock& clockRef;
  size_t inUse = 0;
};

// One memfd per page keeps freeing trivial (close + munmap) and lets the
// server hand exactly one page to a front: a front that maps the fd can see
// nothing but that vCPU's page.
class SharedPage final : public Page {
public:
  SharedPage(size_t& inUse, uint64_t serial) : inUse(inUse), serial(serial) {
    memfd = memfd_create("vlapic-page", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    KJ_SYSCALL(memfd, "memfd_create");
    KJ_SYSCALL(ftruncate(memfd, kPageSize));
    // The size is fixed for good: a front cannot shrink the file under us
    // (which would turn our accesses into SIGBUS).
    KJ_SYSCALL(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
    void* p = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (p == MAP_FAILED) {
      int error = errno;
      close(memfd);
      KJ_FAIL_SYSCALL("mmap", error);
    }
    memory = static_cast<kj::byte*>(p);
    ++inUse;
  }
  ~SharedPage() noexcept(false) {
    munmap(memory, kPageSize);
    close(memfd);
    --inUse;
  }
  KJ_DISALLOW_COPY(SharedPage);

  kj::ArrayPtr<kj::byte> bytes() override { return {memory, kPageSize}; }
  kj::ArrayPtr<const kj::byte> bytes() const override { return {memory, kPageSize}; }
  // No physical address exists in user space: a stable, page-aligned token.
  uint64_t physAddr() const override { return (uint64_t(1) << 46) | (serial << 12); }
  kj::Maybe<int> fd() const override { return memfd; }
  uint64_t fdOffset() const override { return 0; }

private:
  size_t& inUse;
  uint64_t serial;
  int memfd;
  kj::byte* memory;
};

class SharedMemoryHal final : public Hal {
public:
  explicit SharedMemoryHal(Clock& clock) : clockRef(clock) {}
  ~SharedMemoryHal() noexcept(false) {
    KJ_ASSERT(inUse == 0, "pages outlived their HAL", inUse) { break; }
  }
  kj::Own<Page> allocatePage() override { return kj::heap<SharedPage>(inUse, nextSerial++); }
  Clock& clock() override { return clockRef; }
  kj::StringPtr name() const override { return "shared-memory"; }
  size_t pagesInUse() const override { return inUse; }

private:
  Clock& clockRef;
  size_t inUse = 0;
  uint64_t nextSerial = 1;
};

}  // namespace

kj::Own<Hal> newHostMemoryHal(Clock& clock) { return kj::heap<HostMemoryHal>(clock); }
kj::Own<Hal> newSharedMemoryHal(Clock& clock) { return kj::heap<SharedMemoryHal>(clock); }

}  // namespace vlapic::hal
