// SPDX-License-Identifier: MIT
#include "client/kvm/devices.h"

#include <cstring>

namespace vlapic::kvm {

namespace {
// 16550 register offsets and bits (National Semiconductor PC16550D).
constexpr uint8_t kRegData = 0, kRegInterruptEnable = 1, kRegInterruptId = 2, kRegLineControl = 3,
                  kRegModemControl = 4, kRegLineStatus = 5, kRegModemStatus = 6, kRegScratch = 7;
constexpr uint8_t kLineControlDivisorLatch = 0x80;
// THR empty (bit 5) and transmitter empty (bit 6): a polling driver may
// always send.
constexpr uint8_t kLineStatusIdle = 0x60;
constexpr uint8_t kInterruptIdNone = 0x01;
}  // namespace

uint8_t Serial16550::read(uint16_t port) {
  bool latch = lineControl & kLineControlDivisorLatch;
  switch (port - kBase) {
    case kRegData: return latch ? divisorLow : 0;  // no receiver: nothing to read
    case kRegInterruptEnable: return latch ? divisorHigh : interruptEnable;
    case kRegInterruptId: return kInterruptIdNone;
    case kRegLineControl: return lineControl;
    case kRegModemControl: return modemControl;
    case kRegLineStatus: return kLineStatusIdle;
    case kRegModemStatus: return 0;
    case kRegScratch: return scratch;
  }
  return 0xFF;
}

void Serial16550::write(uint16_t port, uint8_t value) {
  bool latch = lineControl & kLineControlDivisorLatch;
  switch (port - kBase) {
    case kRegData:
      if (latch) divisorLow = value; else output(char(value));
      break;
    case kRegInterruptEnable:
      if (latch) divisorHigh = value; else interruptEnable = value & 0x0F;
      break;
    case kRegInterruptId: break;  // FCR: FIFOs make no difference to a sink
    case kRegLineControl: lineControl = value; break;
    case kRegModemControl: modemControl = value & 0x1F; break;
    case kRegScratch: scratch = value; break;
    default: break;  // LSR/MSR writes are ignored
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
             kj::Function<void(uint32_t)> debugExit)
    : devices(Devices{Serial16550(kj::mv(serialOutput)), FwCfg(ramBytes, cpuCount)}),
      debugExit(kj::mv(debugExit)) {}

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
  } else if (port == FwCfg::kSelectorPort && data.size() == 2) {
    locked->fwCfg.select(value);
  }
}

}  // namespace vlapic::kvm
