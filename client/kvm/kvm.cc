// SPDX-License-Identifier: MIT
#include "client/kvm/kvm.h"

#include <kj/debug.h>
#include <kj/vector.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace vlapic::kvm {

int checkedIoctl(int fd, unsigned long request, void* arg, const char* what) {
  int result;
  do {
    result = ioctl(fd, request, arg);
  } while (result < 0 && errno == EINTR);
  if (result < 0) {
    int error = errno;
    KJ_FAIL_SYSCALL(what, error);
  }
  return result;
}

int checkedIoctl(int fd, unsigned long request, unsigned long arg, const char* what) {
  return checkedIoctl(fd, request, reinterpret_cast<void*>(arg), what);
}

static kj::AutoCloseFd openKvm() {
  int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int error = errno;
    KJ_FAIL_REQUIRE(kNoKvmMessage, "open(/dev/kvm)", strerror(error));
  }
  return kj::AutoCloseFd(fd);
}

KvmSystem::KvmSystem() : kvmFd(openKvm()) {
  int version = ioctl(kvmFd.get(), KVM_GET_API_VERSION, 0);
  KJ_REQUIRE(version == KVM_API_VERSION, kNoKvmMessage, "unexpected KVM API version", version);
  int size = ioctl(kvmFd.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  KJ_REQUIRE(size > 0, kNoKvmMessage, "KVM_GET_VCPU_MMAP_SIZE failed");
  vcpuMmapSize = size;
}

int KvmSystem::checkExtension(long cap) const {
  int result = ioctl(kvmFd.get(), KVM_CHECK_EXTENSION, cap);
  return result < 0 ? 0 : result;
}

namespace {

// kvm_cpuid2 and kvm_msrs end in a flexible array that the UAPI header
// declares with __DECLARE_FLEX_ARRAY, which C++ lays out differently from C
// (sizeof 12/16, entries at offset 12/16). The kernel expects the C layout:
// an 8-byte header followed by the entries. So we build the buffers by hand
// and compute the ioctl numbers from the C header size.
struct FlexHeader {
  uint32_t count;
  uint32_t padding;
};
constexpr unsigned long kIoctlGetSupportedCpuid = _IOWR(KVMIO, 0x05, FlexHeader);
constexpr unsigned long kIoctlSetCpuid2 = _IOW(KVMIO, 0x90, FlexHeader);
constexpr unsigned long kIoctlGetMsrs = _IOWR(KVMIO, 0x88, FlexHeader);
constexpr unsigned long kIoctlSetMsrs = _IOW(KVMIO, 0x89, FlexHeader);

template <typename Entry>
kj::Array<kj::byte> flexBuffer(uint32_t count) {
  static_assert(sizeof(FlexHeader) % alignof(Entry) == 0);
  auto buffer = kj::heapArray<kj::byte>(sizeof(FlexHeader) + count * sizeof(Entry));
  memset(buffer.begin(), 0, buffer.size());
  reinterpret_cast<FlexHeader*>(buffer.begin())->count = count;
  return buffer;
}

template <typename Entry>
Entry* flexEntries(kj::Array<kj::byte>& buffer) {
  return reinterpret_cast<Entry*>(buffer.begin() + sizeof(FlexHeader));
}

uint32_t flexCount(kj::Array<kj::byte>& buffer) {
  return reinterpret_cast<FlexHeader*>(buffer.begin())->count;
}

}  // namespace

kj::Array<kvm_cpuid_entry2> KvmSystem::supportedCpuid() const {
  constexpr uint32_t kCapacity = 256;
  auto buffer = flexBuffer<kvm_cpuid_entry2>(kCapacity);
  checkedIoctl(kvmFd.get(), kIoctlGetSupportedCpuid, buffer.begin(), "KVM_GET_SUPPORTED_CPUID");
  uint32_t count = flexCount(buffer);
  auto entries = kj::heapArray<kvm_cpuid_entry2>(count);
  memcpy(entries.begin(), flexEntries<kvm_cpuid_entry2>(buffer), count * sizeof(kvm_cpuid_entry2));
  return entries;
}

VcpuFd::VcpuFd(const KvmSystem& system, int vmFd, uint32_t index)
    : vcpuFd(checkedIoctl(vmFd, KVM_CREATE_VCPU, (unsigned long)index, "KVM_CREATE_VCPU")),
      runSize(system.runSize()), vcpuIndex(index) {
  void* mapping = mmap(nullptr, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFd.get(), 0);
  if (mapping == MAP_FAILED) {
    int error = errno;
    KJ_FAIL_SYSCALL("mmap(kvm_run)", error);
  }
  runPtr = reinterpret_cast<kvm_run*>(mapping);
}

VcpuFd::~VcpuFd() noexcept(false) { munmap(runPtr, runSize); }

kvm_regs VcpuFd::getRegs() {
  kvm_regs regs;
  checkedIoctl(fd(), KVM_GET_REGS, &regs, "KVM_GET_REGS");
  return regs;
}

void VcpuFd::setRegs(const kvm_regs& regs) {
  checkedIoctl(fd(), KVM_SET_REGS, const_cast<kvm_regs*>(&regs), "KVM_SET_REGS");
}

kvm_sregs VcpuFd::getSregs() {
  kvm_sregs sregs;
  checkedIoctl(fd(), KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
  return sregs;
}

void VcpuFd::setSregs(const kvm_sregs& sregs) {
  checkedIoctl(fd(), KVM_SET_SREGS, const_cast<kvm_sregs*>(&sregs), "KVM_SET_SREGS");
}

void VcpuFd::setCpuid(kj::ArrayPtr<const kvm_cpuid_entry2> entries) {
  auto buffer = flexBuffer<kvm_cpuid_entry2>(entries.size());
  memcpy(flexEntries<kvm_cpuid_entry2>(buffer), entries.begin(), entries.size() * sizeof(kvm_cpuid_entry2));
  checkedIoctl(fd(), kIoctlSetCpuid2, buffer.begin(), "KVM_SET_CPUID2");
}

void VcpuFd::setMsr(uint32_t msr, uint64_t value) {
  auto buffer = flexBuffer<kvm_msr_entry>(1);
  flexEntries<kvm_msr_entry>(buffer)->index = msr;
  flexEntries<kvm_msr_entry>(buffer)->data = value;
  int done = checkedIoctl(fd(), kIoctlSetMsrs, buffer.begin(), "KVM_SET_MSRS");
  KJ_REQUIRE(done == 1, "KVM refused an MSR write", msr, value);
}

uint64_t VcpuFd::getMsr(uint32_t msr) {
  auto buffer = flexBuffer<kvm_msr_entry>(1);
  flexEntries<kvm_msr_entry>(buffer)->index = msr;
  int done = checkedIoctl(fd(), kIoctlGetMsrs, buffer.begin(), "KVM_GET_MSRS");
  KJ_REQUIRE(done == 1, "KVM refused an MSR read", msr);
  return flexEntries<kvm_msr_entry>(buffer)->data;
}

uint32_t VcpuFd::tscKhz() {
  return checkedIoctl(fd(), KVM_GET_TSC_KHZ, 0ul, "KVM_GET_TSC_KHZ");
}

}  // namespace vlapic::kvm
