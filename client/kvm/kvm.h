// SPDX-License-Identifier: MIT
// Thin RAII wrappers over the /dev/kvm ioctl interface: the system, a VM, a
// vCPU and its mmap'ed kvm_run. Errors from KVM are logistics (exceptions);
// what the guest does is handled by the Machine.
#pragma once

#include <kj/common.h>
#include <kj/io.h>
#include <kj/string.h>
#include <linux/kvm.h>
#include <cstdint>

namespace vlapic::kvm {

// Thrown (as a kj::Exception description prefix) when /dev/kvm is missing or
// unusable, so main() can exit with its own status.
constexpr const char* kNoKvmMessage = "no usable /dev/kvm";

// Issue an ioctl, throwing with `what` and errno on failure.
int checkedIoctl(int fd, unsigned long request, void* arg, const char* what);
int checkedIoctl(int fd, unsigned long request, unsigned long arg, const char* what);

class KvmSystem {
public:
  // Throws kNoKvmMessage when /dev/kvm cannot be opened or has the wrong API.
  KvmSystem();
  int fd() const { return kvmFd.get(); }
  int checkExtension(long cap) const;
  size_t runSize() const { return vcpuMmapSize; }
  // KVM_GET_SUPPORTED_CPUID.
  kj::Array<kvm_cpuid_entry2> supportedCpuid() const;

private:
  kj::AutoCloseFd kvmFd;
  size_t vcpuMmapSize;
};

class VcpuFd {
public:
  VcpuFd(const KvmSystem& system, int vmFd, uint32_t index);
  ~VcpuFd() noexcept(false);
  KJ_DISALLOW_COPY(VcpuFd);

  int fd() const { return vcpuFd.get(); }
  kvm_run& run() { return *runPtr; }
  uint32_t index() const { return vcpuIndex; }

  kvm_regs getRegs();
  void setRegs(const kvm_regs& regs);
  kvm_sregs getSregs();
  void setSregs(const kvm_sregs& sregs);
  void setCpuid(kj::ArrayPtr<const kvm_cpuid_entry2> entries);
  void setMsr(uint32_t msr, uint64_t value);
  uint64_t getMsr(uint32_t msr);
  uint32_t tscKhz();

private:
  kj::AutoCloseFd vcpuFd;
  kvm_run* runPtr;
  size_t runSize;
  uint32_t vcpuIndex;
};

}  // namespace vlapic::kvm
