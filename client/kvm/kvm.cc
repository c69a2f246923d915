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

kj::Array<kvm_cpuid_entry2> KvmSystem::supportedCpuid() const {
  constexpr uint32_t kCapacity = 256;
  auto buffer = kj::heapArray<kj::byte>(sizeof(kvm_cpuid2) + kCapacity * sizeof(kvm_cpuid_entry2));
  memset(buffer.begin(), 0, buffer.size());
  auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buffer.begin());
  cpuid->nent = kCapacity;
  checkedIoctl(kvmFd.get(), KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID");
  auto entries = kj::heapArray<kvm_cpuid_entry2>(cpuid->nent);
  memcpy(entries.begin(), cpuid->entries, cpuid->nent * sizeof(kvm_cpuid_entry2));
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
  auto buffer = kj::heapArray<kj::byte>(sizeof(kvm_cpuid2) + entries.size() * sizeof(kvm_cpuid_entry2));
  memset(buffer.begin(), 0, buffer.size());
  auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buffer.begin());
  cpuid->nent = entries.size();
  memcpy(cpuid->entries, entries.begin(), entries.size() * sizeof(kvm_cpuid_entry2));
  checkedIoctl(fd(), KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
}

namespace {
// kvm_msrs with room for one entry (its entries[] is a flexible array).
struct OneMsr {
  alignas(kvm_msrs) kj::byte bytes[sizeof(kvm_msrs) + sizeof(kvm_msr_entry)];
  kvm_msrs& header() { return *reinterpret_cast<kvm_msrs*>(bytes); }
  kvm_msr_entry& entry() { return header().entries[0]; }
};
}  // namespace

void VcpuFd::setMsr(uint32_t msr, uint64_t value) {
  OneMsr msrs;
  memset(&msrs.bytes, 0, sizeof(msrs));
  msrs.header().nmsrs = 1;
  msrs.entry().index = msr;
  msrs.entry().data = value;
  int done = checkedIoctl(fd(), KVM_SET_MSRS, &msrs.bytes, "KVM_SET_MSRS");
  KJ_REQUIRE(done == 1, "KVM refused an MSR write", msr, value);
}

uint64_t VcpuFd::getMsr(uint32_t msr) {
  OneMsr msrs;
  memset(&msrs.bytes, 0, sizeof(msrs));
  msrs.header().nmsrs = 1;
  msrs.entry().index = msr;
  int done = checkedIoctl(fd(), KVM_GET_MSRS, &msrs.bytes, "KVM_GET_MSRS");
  KJ_REQUIRE(done == 1, "KVM refused an MSR read", msr);
  return msrs.entry().data;
}

uint32_t VcpuFd::tscKhz() {
  return checkedIoctl(fd(), KVM_GET_TSC_KHZ, 0ul, "KVM_GET_TSC_KHZ");
}

}  // namespace vlapic::kvm
