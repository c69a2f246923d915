// SPDX-License-Identifier: MIT
// Unit tests of vlapic-kvm's platform pieces that need no /dev/kvm: the
// multiboot v1 loader (Multiboot Specification 0.6.96), the 16550 UART
// (PC16550D data sheet) with its interrupt line, QEMU's fw_cfg I/O
// interface, pc-testdev's interrupt-line ports and the port bus.
#include "client/kvm/boot.h"
#include "client/kvm/devices.h"

#include <catch2/catch.hpp>
#include <kj/vector.h>
#include <cstring>
#include <elf.h>

using namespace vlapic::kvm;

namespace {

uint32_t read32(GuestMemory& memory, uint64_t gpa) {
  uint32_t value;
  memcpy(&value, memory.at(gpa, 4).begin(), 4);
  return value;
}

kj::String readString(GuestMemory& memory, uint64_t gpa) {
  auto bytes = memory.at(gpa, 256);
  return kj::str(reinterpret_cast<const char*>(bytes.begin()));
}

void put32(kj::Vector<kj::byte>& image, size_t offset, uint32_t value) {
  while (image.size() < offset + 4) image.add(0);
  memcpy(image.begin() + offset, &value, 4);
}

// A minimal ELF32 multiboot kernel: one PT_LOAD of `payload` at 1 MiB with
// `bss` extra zeroed bytes, the multiboot header at the start of the payload.
kj::Array<kj::byte> elf32Kernel(kj::ArrayPtr<const kj::byte> payload, uint32_t bss) {
  kj::Vector<kj::byte> image;
  Elf32_Ehdr header;
  memset(&header, 0, sizeof(header));
  memcpy(header.e_ident, ELFMAG, SELFMAG);
  header.e_ident[EI_CLASS] = ELFCLASS32;
  header.e_ident[EI_DATA] = ELFDATA2LSB;
  header.e_ident[EI_VERSION] = EV_CURRENT;
  header.e_type = ET_EXEC;
  header.e_machine = EM_386;
  header.e_entry = 0x100010;
  header.e_phoff = sizeof(Elf32_Ehdr);
  header.e_phentsize = sizeof(Elf32_Phdr);
  header.e_phnum = 1;
  Elf32_Phdr program;
  memset(&program, 0, sizeof(program));
  program.p_type = PT_LOAD;
  program.p_offset = 0x100;
  program.p_vaddr = program.p_paddr = 0x100000;
  program.p_filesz = payload.size();
  program.p_memsz = payload.size() + bss;
  image.addAll(kj::arrayPtr(reinterpret_cast<kj::byte*>(&header), sizeof(header)));
  image.addAll(kj::arrayPtr(reinterpret_cast<kj::byte*>(&program), sizeof(program)));
  while (image.size() < 0x100) image.add(0);
  image.addAll(payload);
  return image.releaseAsArray();
}

kj::Array<kj::byte> multibootPayload(uint32_t flags) {
  kj::Vector<kj::byte> payload;
  put32(payload, 0, 0x1BADB002);
  put32(payload, 4, flags);
  put32(payload, 8, uint32_t(-(0x1BADB002 + flags)));
  put32(payload, 12, 0xF4F4F4F4);  // code bytes: hlt
  return payload.releaseAsArray();
}

}  // namespace

TEST_CASE("Multiboot 3.2: entry state and info (memory, command line, map, loader name)") {
  GuestMemory memory(16 << 20);
  auto kernel = elf32Kernel(multibootPayload(0x3), 0x1000);
  // Dirty the BSS so we see the loader zero it.
  memset(memory.at(0x100000, 0x2000).begin(), 0xAA, 0x2000);
  auto state = loadMultiboot(memory, kernel, "kernel console=ttyS0", nullptr);
  CHECK(state.entry == 0x100010);
  CHECK(read32(memory, 0x100000) == 0x1BADB002);  // PT_LOAD copied to p_paddr
  CHECK(memory.at(0x100010, 1)[0] == 0x00);        // BSS zeroed
  uint32_t info = state.infoAddress;
  uint32_t flags = read32(memory, info);
  CHECK((flags & 1) != 0);                         // mem_lower / mem_upper
  CHECK(read32(memory, info + 4) == 639);          // KiB below the EBDA
  CHECK(read32(memory, info + 8) == (16 << 10) - 1024);  // KiB above 1 MiB
  CHECK((flags & 4) != 0);
  CHECK(readString(memory, read32(memory, info + 16)) == "kernel console=ttyS0");
  CHECK((flags & 8) == 0);                         // no modules given
  CHECK((flags & (1 << 6)) != 0);                  // memory map
  uint32_t mmapLength = read32(memory, info + 44);
  uint32_t mmap = read32(memory, info + 48);
  REQUIRE(mmapLength == 48);
  CHECK(read32(memory, mmap) == 20);               // entry size without the size field
  CHECK(read32(memory, mmap + 24 + 4) == 0x100000); // second range starts at 1 MiB
  CHECK((flags & (1 << 9)) != 0);
  CHECK(readString(memory, read32(memory, info + 64)) == "vlapic-kvm");
  CHECK(kMultibootBootMagic == 0x2BADB002);
}

TEST_CASE("Multiboot 3.3: modules are page-aligned after the kernel with their strings") {
  GuestMemory memory(16 << 20);
  auto kernel = elf32Kernel(multibootPayload(0x3), 0x3000);
  kj::Vector<BootModule> modules;
  modules.add(BootModule{kj::heapArray<kj::byte>(kj::StringPtr("INITRD-ONE").asBytes()), kj::str("one arg")});
  modules.add(BootModule{kj::heapArray<kj::byte>(kj::StringPtr("TWO").asBytes()), kj::str("two")});
  auto state = loadMultiboot(memory, kernel, "k", modules);
  uint32_t info = state.infoAddress;
  REQUIRE((read32(memory, info) & 8) != 0);
  REQUIRE(read32(memory, info + 20) == 2);
  uint32_t list = read32(memory, info + 24);
  uint32_t start0 = read32(memory, list), end0 = read32(memory, list + 4);
  uint32_t start1 = read32(memory, list + 16);
  CHECK(start0 % 4096 == 0);
  CHECK(start0 >= 0x100000 + 0x10 + 0x3000);       // after the kernel's BSS
  CHECK(end0 - start0 == 10);
  CHECK(memcmp(memory.at(start0, 10).begin(), "INITRD-ONE", 10) == 0);
  CHECK(readString(memory, read32(memory, list + 8)) == "one arg");
  CHECK(start1 % 4096 == 0);
  CHECK(start1 > end0);
  CHECK(memcmp(memory.at(start1, 3).begin(), "TWO", 3) == 0);
}

TEST_CASE("Multiboot 3.1.3: the a.out kludge loads the file at load_addr and enters at entry_addr") {
  GuestMemory memory(8 << 20);
  kj::Vector<kj::byte> image;
  uint32_t flags = 0x00010003;
  put32(image, 0, 0x1BADB002);
  put32(image, 4, flags);
  put32(image, 8, uint32_t(-(0x1BADB002 + flags)));
  put32(image, 12, 0x200000);  // header_addr: the header is at the file's start
  put32(image, 16, 0x200000);  // load_addr
  put32(image, 20, 0);         // load_end_addr 0: the whole file
  put32(image, 24, 0x202000);  // bss_end_addr
  put32(image, 28, 0x200020);  // entry_addr
  put32(image, 32, 0xDEADBEEF);
  auto state = loadMultiboot(memory, image, "", nullptr);
  CHECK(state.entry == 0x200020);
  CHECK(read32(memory, 0x200020) == 0xDEADBEEF);
  CHECK(read32(memory, 0x201FFC) == 0);
}

TEST_CASE("Multiboot 3.1.1: images without a valid header or that do not fit are refused") {
  GuestMemory memory(4 << 20);
  kj::Vector<kj::byte> noHeader;
  put32(noHeader, 0, 0x12345678);
  CHECK_THROWS_WITH(loadMultiboot(memory, noHeader, "", nullptr), Catch::Contains("no multiboot v1 header"));

  auto badChecksum = multibootPayload(0x3);
  badChecksum[8] ^= 1;
  CHECK_THROWS(loadMultiboot(memory, elf32Kernel(badChecksum, 0), "", nullptr));

  auto tooBig = elf32Kernel(multibootPayload(0x3), 8 << 20);  // BSS beyond RAM
  CHECK_THROWS_WITH(loadMultiboot(memory, tooBig, "", nullptr), Catch::Contains("does not fit"));
}

TEST_CASE("GuestMemory refuses sizes outside 2 MiB..3 GiB and out-of-range views") {
  CHECK_THROWS(GuestMemory(1 << 20));
  CHECK_THROWS(GuestMemory(GuestMemory::kMaxBytes + 4096));
  GuestMemory memory(2 << 20);
  CHECK(memory.contains(0, 2 << 20));
  CHECK_FALSE(memory.contains((2 << 20) - 4, 8));
  CHECK_THROWS(memory.at((2 << 20) - 4, 8));
}

TEST_CASE("16550: THR prints, LSR says idle (0x60), the divisor latch hides divisor bytes") {
  kj::Vector<char> out;
  Serial16550 serial([&out](char c) { out.add(c); });
  serial.write(0x3F8, 'h');
  serial.write(0x3F8, 'i');
  CHECK(serial.read(0x3FD) == 0x60);
  serial.write(0x3FB, 0x83);   // LCR: DLAB + 8N1
  serial.write(0x3F8, 0x01);   // DLL
  serial.write(0x3F9, 0x00);   // DLM
  CHECK(serial.read(0x3F8) == 0x01);
  CHECK(serial.read(0x3F9) == 0x00);
  serial.write(0x3FB, 0x03);   // DLAB off
  serial.write(0x3F8, '!');
  serial.write(0x3F9, 0x0F);   // IER, not DLM
  CHECK(serial.read(0x3F9) == 0x0F);
  CHECK(kj::str(kj::arrayPtr(out.begin(), out.size())) == "hi!");
  CHECK(serial.read(0x3FA) == 0x02);  // IIR: THR empty (just enabled)
  CHECK(serial.read(0x3FA) == 0x01);  // ...reset by that read: none pending
  serial.write(0x3FF, 0x5A);
  CHECK(serial.read(0x3FF) == 0x5A);  // scratch
}

TEST_CASE("fw_cfg: signature, interface ID, RAM size, CPU count, unknown items read 0") {
  FwCfg fwCfg(256ull << 20, 4);
  fwCfg.select(FwCfg::kSignature);
  char signature[4];
  for (auto& c : signature) c = char(fwCfg.readData());
  CHECK(memcmp(signature, "QEMU", 4) == 0);
  fwCfg.select(FwCfg::kId);
  CHECK(fwCfg.readData() == 1);
  fwCfg.select(FwCfg::kRamSize);
  uint64_t ram = 0;
  for (int i = 0; i < 8; i++) ram |= uint64_t(fwCfg.readData()) << (8 * i);
  CHECK(ram == 256ull << 20);
  fwCfg.select(FwCfg::kCpuCount);
  CHECK(fwCfg.readData() == 4);
  CHECK(fwCfg.readData() == 0);
  CHECK(fwCfg.readData() == 0);  // past the item
  fwCfg.select(0x1234);
  CHECK(fwCfg.readData() == 0);
  fwCfg.select(FwCfg::kSignature);  // selecting restarts at offset 0
  CHECK(fwCfg.readData() == 'Q');
}

TEST_CASE("IoBus: debug exit takes the 32-bit value, nothing-decoded ports float high") {
  kj::Vector<char> out;
  kj::Maybe<uint32_t> exited;
  IoBus bus(64 << 20, 2, [&out](char c) { out.add(c); }, [&exited](uint32_t v) { exited = v; });
  uint32_t value = 0x2A;
  bus.out(IoBus::kDebugExitPort, kj::arrayPtr(reinterpret_cast<const kj::byte*>(&value), 4));
  CHECK(KJ_ASSERT_NONNULL(exited) == 0x2A);
  kj::byte data[4] = {0, 0, 0, 0};
  bus.in(0x99, kj::arrayPtr(data, 4));
  CHECK(data[0] == 0xFF);
  CHECK(data[3] == 0xFF);
  kj::byte c = 'x';
  bus.out(0x3F8, kj::arrayPtr(&c, 1));
  CHECK(out.size() == 1);
  uint16_t key = FwCfg::kCpuCount;
  bus.out(FwCfg::kSelectorPort, kj::arrayPtr(reinterpret_cast<const kj::byte*>(&key), 2));
  kj::byte count = 0;
  bus.in(FwCfg::kDataPort, kj::arrayPtr(&count, 1));
  CHECK(count == 2);
}

// ---- The 16550's interrupt line (PC16550D Table IV) and the IRQ wires ----

namespace {

constexpr uint16_t kThr = 0x3F8, kIer = 0x3F9, kIir = 0x3FA, kLcr = 0x3FB, kMcr = 0x3FC,
                   kLsr = 0x3FD, kMsr = 0x3FE;
constexpr uint8_t kOut2 = 0x08, kLoop = 0x10;

// A UART whose IRQ line's changes are recorded in order.
struct LineProbe {
  kj::Vector<char> out;
  kj::Vector<bool> changes;
  Serial16550 serial{[this](char c) { out.add(c); }, [this](bool level) { changes.add(level); }};

  kj::String history() const {
    kj::Vector<char> text;
    for (bool level : changes) text.add(level ? 'H' : 'L');
    return kj::str(text.releaseAsArray());
  }
};

}  // namespace

TEST_CASE("16550 IRQ: THRE raises the line when enabled with OUT2, IIR read resets it") {
  LineProbe p;
  p.serial.write(kIer, 0x02);  // ETBEI, but OUT2 is off: the PC's buffer is closed
  CHECK(p.changes.size() == 0);
  CHECK_FALSE(p.serial.irqLevel());
  p.serial.write(kMcr, kOut2);
  CHECK(p.history() == "H");
  CHECK(p.serial.read(kIir) == 0x02);  // THRE is the source: this read resets it
  CHECK(p.history() == "HL");
  CHECK(p.serial.read(kIir) == 0x01);
  CHECK(p.history() == "HL");  // no change, no call
}

TEST_CASE("16550 IRQ: a THR write drops the line and THRE rises again once the byte is sent") {
  LineProbe p;
  p.serial.write(kMcr, kOut2);
  p.serial.write(kIer, 0x02);
  CHECK(p.history() == "H");
  p.serial.write(kThr, 'x');
  // One new edge per byte for an edge-triggered IRQ: low, then high again.
  CHECK(p.history() == "HLH");
  p.serial.read(kIir);
  CHECK(p.history() == "HLHL");
  p.serial.write(kThr, 'y');
  CHECK(p.history() == "HLHLH");
  CHECK(kj::str(kj::arrayPtr(p.out.begin(), p.out.size())) == "xy");
}

TEST_CASE("16550 IRQ: THRE is raised by enabling ETBEI, not by rewriting it") {
  LineProbe p;
  p.serial.write(kMcr, kOut2);
  p.serial.write(kIer, 0x02);
  CHECK(p.serial.read(kIir) == 0x02);
  p.serial.write(kIer, 0x02);  // still enabled: nothing new
  CHECK(p.serial.read(kIir) == 0x01);
  p.serial.write(kIer, 0x00);
  p.serial.write(kIer, 0x02);  // enabled again with THR empty: raised again
  CHECK(p.serial.read(kIir) == 0x02);
  CHECK(p.history() == "HLHL");
}

TEST_CASE("16550 IRQ: disabling the source or clearing OUT2 lowers the line") {
  LineProbe p;
  p.serial.write(kMcr, kOut2);
  p.serial.write(kIer, 0x02);
  p.serial.write(kMcr, 0x00);
  CHECK(p.history() == "HL");
  p.serial.write(kMcr, kOut2);  // THRE still pending: up again
  CHECK(p.history() == "HLH");
  p.serial.write(kIer, 0x00);
  CHECK(p.history() == "HLHL");
  CHECK(p.serial.read(kIir) == 0x01);  // disabled sources are not reported
}

TEST_CASE("16550 IRQ: received data is reported above THRE and reset by reading RBR") {
  LineProbe p;
  p.serial.write(kMcr, kOut2);
  p.serial.write(kIer, 0x03);  // ERBFI + ETBEI
  CHECK(p.serial.read(kIir) == 0x02);
  p.serial.write(kIer, 0x01);  // received data only
  CHECK(p.history() == "HL");
  p.serial.receive('a');
  CHECK(p.history() == "HLH");
  CHECK((p.serial.read(kLsr) & 0x01) == 0x01);  // DR
  p.serial.write(kIer, 0x03);  // THRE raised too; IIR names the higher one
  CHECK(p.serial.read(kIir) == 0x04);
  CHECK(p.serial.read(kIir) == 0x04);  // reading IIR does not reset RX data
  CHECK(p.serial.read(kThr) == 'a');
  CHECK(p.serial.read(kIir) == 0x02);  // then THRE, which this read resets
  CHECK(p.serial.read(kIir) == 0x01);
  CHECK(p.history() == "HLHL");  // the line stayed high from 'a' until the IIR read
}

TEST_CASE("16550 IRQ: an overrun is a line-status interrupt, the highest, reset by reading LSR") {
  LineProbe p;
  p.serial.write(kMcr, kOut2);
  p.serial.write(kIer, 0x05);  // ELSI + ERBFI
  p.serial.receive('a');
  p.serial.receive('b');  // RBR not read: overrun, 'b' replaces 'a'
  CHECK(p.serial.read(kIir) == 0x06);
  uint8_t lsr = p.serial.read(kLsr);
  CHECK((lsr & 0x03) == 0x03);  // DR + OE
  CHECK(p.serial.read(kIir) == 0x04);  // OE cleared by that read, data left
  CHECK(p.serial.read(kThr) == 'b');
  CHECK(p.serial.read(kIir) == 0x01);
  CHECK(p.history() == "HL");
}

TEST_CASE("16550 IRQ: loopback sends THR to the receiver, mirrors MCR in MSR and closes OUT2") {
  LineProbe p;
  p.serial.write(kMcr, kLoop | kOut2 | 0x03);
  CHECK(p.serial.read(kMsr) == 0xB0);  // DCD (OUT2), DSR (DTR), CTS (RTS)
  p.serial.write(kIer, 0x01);
  p.serial.write(kThr, 'z');
  CHECK(p.out.size() == 0);
  CHECK(p.serial.read(kIir) == 0x04);  // pending inside the UART...
  CHECK(p.changes.size() == 0);        // ...but no IRQ leaves it in loopback
  p.serial.write(kMcr, kOut2);
  CHECK(p.history() == "H");
  CHECK(p.serial.read(kThr) == 'z');
  CHECK(p.history() == "HL");
}

TEST_CASE("16550 IRQ: the divisor latch hides IER and THR from interrupts") {
  LineProbe p;
  p.serial.write(kMcr, kOut2);
  p.serial.write(kLcr, 0x80);
  p.serial.write(kIer, 0x02);  // DLM, not IER
  p.serial.write(kThr, 0x0C);  // DLL, not a byte
  CHECK(p.changes.size() == 0);
  CHECK(p.out.size() == 0);
  p.serial.write(kLcr, 0x03);
  CHECK(p.serial.read(kIer) == 0x00);
}

TEST_CASE("pc-testdev: a byte to 0x2000 + n drives pin n, n < 24, other accesses are not its") {
  auto line = KJ_ASSERT_NONNULL(PcTestdevIrq::decodeWrite(0x2000, 1, 1));
  CHECK(line.pin == 0);
  CHECK(line.level);
  line = KJ_ASSERT_NONNULL(PcTestdevIrq::decodeWrite(0x200A, 1, 0));
  CHECK(line.pin == 10);
  CHECK_FALSE(line.level);
  line = KJ_ASSERT_NONNULL(PcTestdevIrq::decodeWrite(0x2017, 1, 0x80));  // any non-zero byte
  CHECK(line.pin == 23);
  CHECK(line.level);
  CHECK(PcTestdevIrq::decodeWrite(0x2000, 1, 0x100) != nullptr);  // the byte is what counts
  CHECK_FALSE(KJ_ASSERT_NONNULL(PcTestdevIrq::decodeWrite(0x2000, 1, 0x100)).level);
  CHECK(PcTestdevIrq::decodeWrite(0x2018, 1, 1) == nullptr);  // past pin 23
  CHECK(PcTestdevIrq::decodeWrite(0x1FFF, 1, 1) == nullptr);
  CHECK(PcTestdevIrq::decodeWrite(0x2004, 2, 1) == nullptr);  // byte accesses only
  CHECK(PcTestdevIrq::decodeWrite(0x2004, 4, 1) == nullptr);
  CHECK(PcTestdevIrq::decodeWrite(0xE0, 1, 1) == nullptr);  // not implemented
}

TEST_CASE("IrqWires: only changes are driven, two sources on one pin are wired-OR") {
  kj::Vector<kj::String> driven;
  IrqWires wires([&driven](uint8_t pin, bool level) { driven.add(kj::str(pin, level ? "H" : "L")); });
  wires.set(IrqWires::Source::TESTDEV, 10, true);
  wires.set(IrqWires::Source::TESTDEV, 10, true);  // no change
  wires.set(IrqWires::Source::SERIAL, 4, true);
  wires.set(IrqWires::Source::TESTDEV, 4, true);   // already high through the UART
  wires.set(IrqWires::Source::SERIAL, 4, false);   // pc-testdev still holds it
  CHECK(wires.level(4));
  wires.set(IrqWires::Source::TESTDEV, 4, false);
  wires.set(IrqWires::Source::TESTDEV, 10, false);
  REQUIRE(driven.size() == 4);
  CHECK(driven[0] == "10H");
  CHECK(driven[1] == "4H");
  CHECK(driven[2] == "4L");
  CHECK(driven[3] == "10L");
  CHECK_THROWS(wires.set(IrqWires::Source::TESTDEV, 24, true));
}

TEST_CASE("IoBus: pc-testdev ports and the UART's IRQ 4 reach the irqLine callback") {
  kj::Vector<kj::String> driven;
  IoBus bus(64 << 20, 1, [](char) {}, [](uint32_t) {},
            [&driven](uint8_t pin, bool level) { driven.add(kj::str(pin, level ? "H" : "L")); });
  auto outByte = [&bus](uint16_t port, kj::byte value) { bus.out(port, kj::arrayPtr(&value, 1)); };
  outByte(0x200B, 1);
  outByte(0x200B, 0);
  uint16_t wide = 1;
  bus.out(0x200C, kj::arrayPtr(reinterpret_cast<const kj::byte*>(&wide), 2));  // ignored
  outByte(kMcr, kOut2);
  outByte(kIer, 0x02);
  kj::byte iir = 0;
  bus.in(kIir, kj::arrayPtr(&iir, 1));
  CHECK(iir == 0x02);
  kj::byte floating = 0;
  bus.in(0x2000, kj::arrayPtr(&floating, 1));  // write-only: reads float high
  CHECK(floating == 0xFF);
  REQUIRE(driven.size() == 4);
  CHECK(driven[0] == "11H");
  CHECK(driven[1] == "11L");
  CHECK(driven[2] == "4H");
  CHECK(driven[3] == "4L");
}
