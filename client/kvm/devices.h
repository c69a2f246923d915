// SPDX-License-Identifier: MIT
// The few PC devices a bare-metal test kernel expects: a 16550 UART at
// 0x3F8 on IRQ 4, QEMU's isa-debug-exit port, QEMU's fw_cfg I/O interface
// and pc-testdev's interrupt-line ports. Ports nobody decodes read all-ones
// and drop writes, as on a PC's ISA bus.
#pragma once

#include <kj/common.h>
#include <kj/function.h>
#include <kj/mutex.h>
#include <kj/string.h>
#include <cstdint>

namespace vlapic::kvm {

// A 16550 UART (National Semiconductor PC16550D data sheet) in character
// mode: THR goes to `output` and is "sent" at once, so LSR always says the
// transmitter is empty (THRE and TEMT, 0x60); the divisor latch (LCR bit 7)
// is honoured so divisor bytes written to 0x3F8/0x3F9 are not printed.
// Nothing feeds the receiver but receive() (loopback mode, tests). FIFOs
// stay off (FCR is ignored, IIR bits 7:6 read 00: a guest sees a 16450-class
// UART), and the modem inputs never change, so there is no modem-status
// interrupt.
//
// Interrupts (data sheet Table IV, "Interrupt Control Functions"): the
// INTR output is high while an enabled source is pending:
//   line status (IER bit 2): overrun, reset by reading LSR;
//   received data (IER bit 0): RBR full, reset by reading RBR;
//   THR empty (IER bit 1): set when THR empties (a write is sent at once)
//     and when IER bit 1 is enabled while THR is empty; reset by reading
//     IIR while it is the source reported there, or by writing THR.
// On a PC the INTR output reaches the ISA IRQ line (4 for COM1) only
// through a buffer enabled by OUT2 (MCR bit 3); in loopback mode (MCR bit
// 4) the data sheet forces OUT2 inactive, so no IRQ then. `irqLine` is
// called with that IRQ line's level whenever it changes, and only then.
class Serial16550 {
public:
  static constexpr uint16_t kBase = 0x3F8;
  static constexpr uint8_t kIsaIrq = 4;  // COM1's ISA IRQ: I/O APIC pin 4
  explicit Serial16550(kj::Function<void(char)> output,
                       kj::Function<void(bool)> irqLine = [](bool) {})
      : output(kj::mv(output)), irqLine(kj::mv(irqLine)) {}

  bool decodes(uint16_t port) const { return port >= kBase && port < kBase + 8; }
  uint8_t read(uint16_t port);
  void write(uint16_t port, uint8_t value);
  // A byte arrives at the receiver (from the line or, in loopback, from THR).
  void receive(uint8_t byte);
  // The level this device drives on its IRQ line now.
  bool irqLevel() const { return lineLevel; }

private:
  kj::Function<void(char)> output;
  kj::Function<void(bool)> irqLine;
  uint8_t interruptEnable = 0, lineControl = 0, modemControl = 0, scratch = 0;
  uint8_t divisorLow = 1, divisorHigh = 0;
  uint8_t receiveBuffer = 0;
  bool dataReady = false;       // LSR bit 0
  bool overrun = false;         // LSR bit 1
  bool thrEmptyPending = false; // the THRE interrupt's own latch
  bool lineLevel = false;

  // The IIR's interrupt ID (bits 3:0) for the highest-priority pending
  // enabled source, 0x01 when none.
  uint8_t interruptId() const;
  void transmit(uint8_t byte);
  // Recomputes the IRQ line and reports a change.
  void updateLine();
};

// QEMU's pc-testdev interrupt-line ports, so bare-metal interrupt tests
// written for QEMU (kvm-unit-tests' ioapic test does this) run unchanged: a
// byte written to port 0x2000 + n, n < 24, drives I/O APIC input n to
// (value != 0). QEMU accepts only byte accesses there; wider writes and
// every read are not decoded by this device. The rest of pc-testdev (the
// scratch register at 0xE0/0xE8, the page flush at 0xE4, the scratch memory
// at 0xFF000000) is not implemented: no test of ours uses it.
struct PcTestdevIrq {
  static constexpr uint16_t kFirstPort = 0x2000;
  static constexpr uint8_t kLines = 24;
  struct Line {
    uint8_t pin;
    bool level;
  };
  static bool decodes(uint16_t port) { return port >= kFirstPort && port < kFirstPort + kLines; }
  // The line a `size`-byte write of `value` to `port` drives, or nullptr
  // when this device ignores it.
  static kj::Maybe<Line> decodeWrite(uint16_t port, size_t size, uint32_t value);
};

// The wires from the platform's devices to the I/O APIC's 24 inputs. Two
// devices on one pin (pc-testdev's port 0x2004 and the UART) are wired-OR,
// so one cannot lower a line the other holds high. `drive` is called with
// a pin's level whenever it changes, and only then.
class IrqWires {
public:
  enum class Source : uint8_t { SERIAL, TESTDEV };
  static constexpr uint8_t kPins = 24;
  explicit IrqWires(kj::Function<void(uint8_t pin, bool level)> drive) : drive(kj::mv(drive)) {}
  void set(Source source, uint8_t pin, bool level);
  bool level(uint8_t pin) const { return pin < kPins && (levels >> pin) & 1; }

private:
  kj::Function<void(uint8_t, bool)> drive;
  uint32_t driven[2] = {0, 0};  // per source, bit n: it holds pin n high
  uint32_t levels = 0;
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

  // `irqLine` drives an I/O APIC input (pin < 24) to a level; called with
  // the bus's lock held, in the order the changes happen, and only on
  // changes.
  IoBus(uint64_t ramBytes, uint16_t cpuCount, kj::Function<void(char)> serialOutput,
        kj::Function<void(uint32_t)> debugExit,
        kj::Function<void(uint8_t pin, bool level)> irqLine = [](uint8_t, bool) {});

  // One port access of `size` bytes (1, 2 or 4); reads fill `data`.
  void in(uint16_t port, kj::ArrayPtr<kj::byte> data);
  void out(uint16_t port, kj::ArrayPtr<const kj::byte> data);

private:
  struct Devices {
    // Declared before the UART, whose line changes it forwards.
    kj::Own<IrqWires> wires;
    Serial16550 serial;
    FwCfg fwCfg;
  };
  static Devices makeDevices(uint64_t ramBytes, uint16_t cpuCount,
                             kj::Function<void(char)> serialOutput,
                             kj::Function<void(uint8_t, bool)> irqLine);
  kj::MutexGuarded<Devices> devices;
  kj::Function<void(uint32_t)> debugExit;
};

}  // namespace vlapic::kvm
