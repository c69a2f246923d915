// SPDX-License-Identifier: MIT
// The hardware abstraction layer: where vlapic gets its pages and its time.
//
// The LAPIC core never calls malloc for an architectural page and never reads
// a clock directly: a server object owns one Hal and hands it to everything it
// creates, so tests substitute a virtual clock and a front can map pages the
// server owns (SharedMemoryHal).
#pragma once

#include <kj/common.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::hal {

constexpr size_t kPageSize = 4096;

// One 4 KiB, 4 KiB-aligned, zero-initialised page. A resource type: it is
// freed when its kj::Own goes away.
class Page {
public:
  virtual ~Page() noexcept(false) = default;

  // The host-virtual mapping the server reads and writes.
  virtual kj::ArrayPtr<kj::byte> bytes() = 0;
  virtual kj::ArrayPtr<const kj::byte> bytes() const = 0;

  // The address a hypervisor would program into a VMCS field (virtual-APIC
  // address, APIC-access address). For the host-memory HAL it is the
  // host-virtual address; for the shared-memory HAL, the page's offset in its
  // memfd tagged with the HAL's arena id, since user space has no physical
  // addresses.
  virtual uint64_t physAddr() const = 0;

  // A file descriptor through which another process can map this page
  // (mmap(fd, fdOffset())), or nullptr if the page is private memory.
  virtual kj::Maybe<int> fd() const = 0;
  virtual uint64_t fdOffset() const = 0;

  template <typename T = uint32_t>
  T* at(size_t offset) {
    KJ_IREQUIRE(offset + sizeof(T) <= kPageSize);
    return reinterpret_cast<T*>(bytes().begin() + offset);
  }
};

// Monotonic time in nanoseconds. The guest TSC is derived from it per VM
// (frequency and offset are VM settings), so one clock serves both.
class Clock {
public:
  virtual ~Clock() noexcept(false) = default;
  virtual uint64_t nowNs() const = 0;
};

// CLOCK_MONOTONIC.
class MonotonicClock final : public Clock {
public:
  uint64_t nowNs() const override;
};

// A clock that moves only when told to: tests drive every timer edge case
// deterministically with it.
class ManualClock final : public Clock {
public:
  explicit ManualClock(uint64_t startNs = 1'000'000'000) : now(startNs) {}
  uint64_t nowNs() const override { return now; }
  void advance(uint64_t ns) { now += ns; }
  void set(uint64_t ns) { now = ns; }

private:
  uint64_t now;
};

class Hal {
public:
  virtual ~Hal() noexcept(false) = default;
  virtual kj::Own<Page> allocatePage() = 0;
  virtual Clock& clock() = 0;
  virtual kj::StringPtr name() const = 0;
  // Pages currently allocated through this HAL (for leak checks and stats).
  virtual size_t pagesInUse() const = 0;
};

// Pages from aligned host memory. The clock is borrowed, so tests can pass a
// ManualClock; the server passes a MonotonicClock it owns.
kj::Own<Hal> newHostMemoryHal(Clock& clock);

// Pages carved out of memfd arenas, so a front in another process can map a
// vCPU's virtual-APIC page (read-only) through the fd and offset.
kj::Own<Hal> newSharedMemoryHal(Clock& clock);

}  // namespace vlapic::hal
