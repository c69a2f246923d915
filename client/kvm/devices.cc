// SPDX-License-Identifier: MIT
#include "client/kvm/devices.h"

#include <kj/debug.h>
#include <cstring>

namespace vlapic::kvm {

namespace {
// 16550 register offsets and bits (National Semiconductor PC16550D).
constexpr uint8_t kRegData = 0, kRegInterruptEnable = 1, kRegInterruptId = 2, kRegLineControl = 3,
                  kRegModemControl = 4, kRegLineStatus = 5, kRegModemStatus = 6, kRegScratch = 7;
constexpr uint8_t kLineControlDivisorLatch = 0x80;
constexpr uint8_t kIerReceivedData = 0x01, kIerThrEmpty = 0x02, kIerLineStatus = 0x04;
constexpr uint8_t kMcrOut2 = 0x08, kMcrLoopback = 0x10;
constexpr uint8_t kLsrDataReady = 0x01, kLsrOverrun = 0x02;
// THR empty (bit 5) and transmitter empty (bit 6): every byte is sent the
// moment it is written, so a polling driver may always send.
constexpr uint8_t kLsrTransmitterIdle = 0x60;
// IIR interrupt IDs, highest priority first (data sheet Table IV); bit 0
// set means "no interrupt pending".
constexpr uint8_t kIirLineStatus = 0x06, kIirReceivedData = 0x04, kIirThrEmpty = 0x02,
                  kIirNone = 0x01;
}  // namespace

uint8_t Serial16550::interruptId() const {
  if ((interruptEnable & kIerLineStatus) && overrun) return kIirLineStatus;
  if ((interruptEnable & kIerReceivedData) && dataReady) return kIirReceivedData;
  if ((interruptEnable & kIerThrEmpty) && thrEmptyPending) return kIirThrEmpty;
  return kIirNone;
}

void Serial16550::updateLine() {
  bool out2 = (modemControl & kMcrOut2) && !(modemControl & kMcrLoopback);
  bool level = out2 && interruptId() != kIirNone;
  if (level == lineLevel) return;
  lineLevel = level;
  irqLine(level);
}

uint8_t Serial16550::read(uint16_t port) {
  bool latch = lineControl & kLineControlDivisorLatch;
  switch (port - kBase) {
    case kRegData:
      if (latch) return divisorLow;
      dataReady = false;  // reading RBR resets the received-data interrupt
      updateLine();
      return receiveBuffer;
    case kRegInterruptEnable: return latch ? divisorHigh : interruptEnable;
    case kRegInterruptId: {
      uint8_t id = interruptId();
      // Reading IIR resets the THRE interrupt only when IIR names it.
      if (id == kIirThrEmpty) {
        thrEmptyPending = false;
        updateLine();
      }
      return id;
    }
    case kRegLineControl: return lineControl;
    case kRegModemControl: return modemControl;
    case kRegLineStatus: {
      uint8_t status = kLsrTransmitterIdle | (dataReady ? kLsrDataReady : 0) |
                       (overrun ? kLsrOverrun : 0);
      overrun = false;  // the error bits clear on an LSR read
      updateLine();
      return status;
    }
    case kRegModemStatus:
      // Loopback ties the modem outputs to the inputs: DTR->DSR (bit 5),
      // RTS->CTS (4), OUT1->RI (6), OUT2->DCD (7). Drivers probe for a UART
      // this way. Otherwise no modem is attached.
      if (modemControl & kMcrLoopback) {
        return uint8_t(((modemControl & 0x01) << 5) | ((modemControl & 0x02) << 3) |
                       ((modemControl & 0x04) << 4) | ((modemControl & 0x08) << 4));
      }
      return 0;
    case kRegScratch: return scratch;
  }
  return 0xFF;
}

void Serial16550::transmit(uint8_t byte) {
  // Writing THR resets the THRE interrupt; the byte leaves at once and THR
  // is empty again, which sets it again. The line drops and rises, as on
  // hardware where the byte takes a character time to shift out, so an
  // edge-triggered IRQ sees a new edge for the next byte.
  thrEmptyPending = false;
  updateLine();
  if (modemControl & kMcrLoopback) receive(byte); else output(char(byte));
  thrEmptyPending = true;
  updateLine();
}

void Serial16550::receive(uint8_t byte) {
  // A byte arriving while RBR is still full overwrites it (data sheet,
  // LSR bit 1 "Overrun Error").
  if (dataReady) overrun = true;
  receiveBuffer = byte;
  dataReady = true;
  updateLine();
}

void Serial16550::write(uint16_t port, uint8_t value) {
  bool latch = lineControl & kLineControlDivisorLatch;
  switch (port - kBase) {
    case kRegData:
      if (latch) divisorLow = value; else transmit(value);
      break;
    case kRegInterruptEnable:
      if (latch) {
        divisorHigh = value;
      } else {
        // Enabling the THRE interrupt while THR is empty (always, here)
        // raises it at once; Linux's 8250 driver checks a UART does this.
        if (!(interruptEnable & kIerThrEmpty) && (value & kIerThrEmpty)) thrEmptyPending = true;
        interruptEnable = value & 0x0F;
        updateLine();
      }
      break;
    case kRegInterruptId: break;  // FCR: the FIFOs stay off
    case kRegLineControl: lineControl = value; break;
    case kRegModemControl:
      modemControl = value & 0x1F;
      updateLine();  // OUT2 and loopback gate the IRQ line
      break;
    case kRegScratch: scratch = value; break;
    default: break;  // LSR/MSR writes are ignored
  }
}

kj::Maybe<PcTestdevIrq::Line> PcTestdevIrq::decodeWrite(uint16_t port, size_t size,
                                                        uint32_t value) {
  if (!decodes(port) || size != 1) return nullptr;
  return Line{uint8_t(port - kFirstPort), (value & 0xFF) != 0};
}

void IrqWires::set(Source source, uint8_t pin, bool level) {
  KJ_REQUIRE(pin < kPins, "no such I/O APIC input", pin);
  uint32_t& mine = driven[size_t(source)];
  uint32_t bit = 1u << pin;
  mine = level ? mine | bit : mine & ~bit;
  uint32_t now = driven[0] | driven[1];
  if ((now ^ levels) & bit) {
    levels = now;
    drive(pin, (now & bit) != 0);
  }
}

uint8_t FwCfg::readData() {
  uint8_t item[8] = {};
  uint32_t length = 0;
  switch (selector) {
    case kSignature: memcpy(item, "QEMU", 4); length = 4; break;
    case kId: item[0] = 1; length = 4; break;  // bit 0: traditional interface
    case kRamSize:
      for (int i = 0; i < 8; i++) item[i] = uint8_t(ramBytes >> (8 * i));
      length = 8;
      break;
    case kCpuCount:
    case kMaxCpus:
      item[0] = uint8_t(cpuCount);
      item[1] = uint8_t(cpuCount >> 8);
      length = 2;
      break;
    default: break;  // unknown items read as zeros, as QEMU does
  }
  uint8_t value = offset < length ? item[offset] : 0;
  offset++;
  return value;
}

IoBus::IoBus(uint64_t ramBytes, uint16_t cpuCount, kj::Function<void(char)> serialOutput,
             kj::Function<void(uint32_t)> debugExit,
             kj::Function<void(uint8_t pin, bool level)> irqLine)
    : devices(makeDevices(ramBytes, cpuCount, kj::mv(serialOutput), kj::mv(irqLine))),
      debugExit(kj::mv(debugExit)) {}

IoBus::Devices IoBus::makeDevices(uint64_t ramBytes, uint16_t cpuCount,
                                  kj::Function<void(char)> serialOutput,
                                  kj::Function<void(uint8_t, bool)> irqLine) {
  auto wires = kj::heap<IrqWires>(kj::mv(irqLine));
  IrqWires* serialWire = wires.get();  // heap: stays put as Devices moves
  Serial16550 serial(kj::mv(serialOutput), [serialWire](bool level) {
    serialWire->set(IrqWires::Source::SERIAL, Serial16550::kIsaIrq, level);
  });
  return Devices{kj::mv(wires), kj::mv(serial), FwCfg(ramBytes, cpuCount)};
}

void IoBus::in(uint16_t port, kj::ArrayPtr<kj::byte> data) {
  auto locked = devices.lockExclusive();
  if (locked->serial.decodes(port) && data.size() == 1) {
    data[0] = locked->serial.read(port);
  } else if (port == FwCfg::kDataPort && data.size() == 1) {
    data[0] = locked->fwCfg.readData();
  } else {
    memset(data.begin(), 0xFF, data.size());  // nothing decodes: the bus floats high
  }
}

void IoBus::out(uint16_t port, kj::ArrayPtr<const kj::byte> data) {
  uint32_t value = 0;
  memcpy(&value, data.begin(), kj::min(data.size(), sizeof(value)));
  if (port == kDebugExitPort) {
    debugExit(value);
    return;
  }
  auto locked = devices.lockExclusive();
  if (locked->serial.decodes(port) && data.size() == 1) {
    locked->serial.write(port, value);
  } else if (PcTestdevIrq::decodes(port)) {
    KJ_IF_MAYBE(line, PcTestdevIrq::decodeWrite(port, data.size(), value)) {
      locked->wires->set(IrqWires::Source::TESTDEV, line->pin, line->level);
    }
  } else if (port == FwCfg::kSelectorPort && data.size() == 2) {
    locked->fwCfg.select(value);
  }
}

}  // namespace vlapic::kvm
