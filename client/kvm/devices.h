// SPDX-License-Identifier: MIT
// The few PC devices a bare-metal test kernel expects: a 16550 UART at
// 0x3F8, QEMU's isa-debug-exit port and QEMU's fw_cfg I/O interface. Ports
// nobody decodes read all-ones and drop writes, as on a PC's ISA bus.
#pragma once

#include <kj/common.h>
#include <kj/function.h>
#include <kj/mutex.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::kvm {

// Transmit-only 16550: THR goes to `output`, LSR always says the
// transmitter is empty (0x60), and the divisor latch (LCR bit 7) is honoured
// so divisor bytes written to 0x3F8/0x3F9 are not printed.
class Serial16550 {
public:
  static constexpr uint16_t kBase = 0x3F8;
  explicit Serial16550(kj::Function<void(char)> output) : output(kj::mv(output)) {}

  bool decodes(uint16_t port) const { return port >= kBase && port < kBase + 8; }
  uint8_t read(uint16_t port);
  void write(uint16_t port, uint8_t value);

private:
  kj::Function<void(char)> output;
  uint8_t interruptEnable = 0, lineControl = 0, modemControl = 0, scratch = 0;
  uint8_t divisorLow = 1, divisorHigh = 0;
};

// QEMU's fw_cfg legacy I/O interface: a 16-bit selector at 0x510, data
// bytes at 0x511 (QEMU docs/specs/fw_cfg.rst). Items: signature "QEMU",
// interface ID (traditional), RAM size, CPU count and max CPU count.
class FwCfg {
public:
  static constexpr uint16_t kSelectorPort = 0x510;
  static constexpr uint16_t kDataPort = 0x511;
  static constexpr uint16_t kSignature = 0x00;
  static constexpr uint16_t kId = 0x01;
  static constexpr uint16_t kRamSize = 0x03;
  static constexpr uint16_t kCpuCount = 0x05;
  static constexpr uint16_t kMaxCpus = 0x0F;

  FwCfg(uint64_t ramBytes, uint16_t cpuCount) : ramBytes(ramBytes), cpuCount(cpuCount) {}
  bool decodes(uint16_t port) const { return port == kSelectorPort || port == kDataPort; }
  void select(uint16_t key) { selector = key; offset = 0; }
  uint8_t readData();

private:
  uint64_t ramBytes;
  uint16_t cpuCount;
  uint16_t selector = 0;
  uint32_t offset = 0;
};

// Everything behind port I/O, shared by the vCPU threads.
class IoBus {
public:
  static constexpr uint16_t kDebugExitPort = 0xF4;

  IoBus(uint64_t ramBytes, uint16_t cpuCount, kj::Function<void(char)> serialOutput,
        kj::Function<void(uint32_t)> debugExit);

  // One port access of `size` bytes (1, 2 or 4); reads fill `data`.
  void in(uint16_t port, kj::ArrayPtr<kj::byte> data);
  void out(uint16_t port, kj::ArrayPtr<const kj::byte> data);

private:
  struct Devices {
    Serial16550 serial;
    FwCfg fwCfg;
  };
  kj::MutexGuarded<Devices> devices;
  kj::Function<void(uint32_t)> debugExit;
};

}  // namespace vlapic::kvm
