// SPDX-License-Identifier: MIT
// The MMIO window and the indirect registers (82093AA datasheet 3.0
// "Register Description", 3.1 "Memory Mapped Registers", 3.2 "IOAPIC
// Registers"; KVM's ioapic_mmio_read/write where the datasheet is silent).
#include "ioapic-test-util.h"

namespace vlapic::test {
namespace {

void checkIgnored(const AccessResult& result, AccessReason reason, uint64_t value = 0) {
  CHECK(result.status == AccessStatus::IGNORED);
  CHECK(result.reason == reason);
  CHECK(result.value == value);
}

TEST_CASE("82093AA 3.1: IOREGSEL holds 8 bits and reads back (KVM keeps data & 0xFF)",
          "[ioapic][registers]") {
  TestIoApic t;
  CHECK(t.read(kIoRegSel).value == 0);
  CHECK(t.write(kIoRegSel, 0x12345617).status == AccessStatus::OK);
  auto r = t.read(kIoRegSel);
  CHECK(r.status == AccessStatus::OK);
  CHECK(r.value == 0x17);
  // An 8-byte write takes the low 32 bits.
  CHECK(t.ioapic.mmioWrite(t.base() + kIoRegSel, 8, 0xABCD'0000'0000'0021ull).status ==
        AccessStatus::OK);
  CHECK(t.read(kIoRegSel).value == 0x21);
  CHECK(t->save().ioregsel == 0x21);
  // All 8 bits are kept, even where they select no register.
  t.write(kIoRegSel, 0xFFFFFFFF);
  CHECK(t.read(kIoRegSel).value == 0xFF);
}

TEST_CASE("82093AA 3.2.1: the ID register holds a 4-bit ID in bits 27:24", "[ioapic][registers]") {
  TestIoApic t(configWith(kIoApicVersion11, 5));
  CHECK(t.readIndirect(kIoApicIdIndex).value == 0x05000000);
  CHECK(t.writeIndirect(kIoApicIdIndex, 0xFFFFFFFF).status == AccessStatus::OK);
  // Bits other than 27:24 read 0.
  CHECK(t.readIndirect(kIoApicIdIndex).value == 0x0F000000);
  CHECK(t.writeIndirect(kIoApicIdIndex, 0x0A000000).status == AccessStatus::OK);
  CHECK(t.readIndirect(kIoApicIdIndex).value == 0x0A000000);
  CHECK(t->save().id == 0xA);
}

TEST_CASE("82093AA 3.2.2: the version register reads 23 << 16 | version and is read-only",
          "[ioapic][registers]") {
  for (uint8_t version: {kIoApicVersion11, kIoApicVersion20}) {
    TestIoApic t(configWith(version));
    auto r = t.readIndirect(kIoApicVersionIndex);
    CHECK(r.status == AccessStatus::OK);
    CHECK(r.value == (0x170000u | version));
    checkIgnored(t.writeIndirect(kIoApicVersionIndex, 0), AccessReason::READ_ONLY_REGISTER);
    CHECK(t.readIndirect(kIoApicVersionIndex).value == (0x170000u | version));
  }
}

TEST_CASE("82093AA 3.2.3: the arbitration register reads the ID in bits 27:24 (KVM) and is "
          "read-only",
          "[ioapic][registers]") {
  for (uint8_t version: {kIoApicVersion11, kIoApicVersion20}) {
    TestIoApic t(configWith(version, 3));
    CHECK(t.readIndirect(kIoApicArbitrationIndex).value == 0x03000000);
    checkIgnored(t.writeIndirect(kIoApicArbitrationIndex, 0x0F000000),
                 AccessReason::READ_ONLY_REGISTER);
    CHECK(t.readIndirect(kIoApicArbitrationIndex).value == 0x03000000);
    // It follows the ID register.
    t.writeIndirect(kIoApicIdIndex, 0x0C000000);
    CHECK(t.readIndirect(kIoApicArbitrationIndex).value == 0x0C000000);
  }
}

TEST_CASE("KVM: an indirect index that names no register reads all ones and ignores writes",
          "[ioapic][registers]") {
  TestIoApic t;
  for (uint32_t index: {0x03u, 0x0Fu, 0x10u + 48, 0x40u, 0xFFu}) {
    INFO("index " << index);
    checkIgnored(t.readIndirect(index), AccessReason::RESERVED_REGISTER, 0xFFFFFFFF);
    checkIgnored(t.writeIndirect(index, 0), AccessReason::RESERVED_REGISTER);
    checkIgnored(t.readIndirect(index), AccessReason::RESERVED_REGISTER, 0xFFFFFFFF);
  }
  // Nothing else moved.
  CHECK(t.readIndirect(kIoApicIdIndex).value == 0);
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    CHECK(t->redirectionEntry(pin) == rte::kResetValue);
  }
}

TEST_CASE("82093AA 3.2.4: entry n is indices 0x10 + 2n (low) and 0x11 + 2n (high), reset "
          "masked",
          "[ioapic][registers]") {
  TestIoApic t;
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    CHECK(t.readIndirect(kIoApicRedirectionIndex + 2 * pin).value == 0x00010000);
    CHECK(t.readIndirect(kIoApicRedirectionIndex + 2 * pin + 1).value == 0);
  }
  // Each pin's dwords land in that pin's entry only.
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    t.writeIndirect(kIoApicRedirectionIndex + 2 * pin, 0x00010020 + pin);
    t.writeIndirect(kIoApicRedirectionIndex + 2 * pin + 1, 0x01000000u * pin);
  }
  for (uint32_t pin = 0; pin < kIoApicPins; pin++) {
    INFO("pin " << pin);
    CHECK(t->redirectionEntry(pin) == ((uint64_t(pin) << 56) | 0x00010020 | pin));
    CHECK(t.readEntry(pin) == t->redirectionEntry(pin));
  }
  CHECK(t.sink.messages.empty());
}

TEST_CASE("82093AA 3.2.4: delivery status and remote IRR are read-only in an entry write",
          "[ioapic][registers]") {
  TestIoApic t;
  // Every writable bit of the low dword, and the two read-only ones.
  t.writeIndirect(kIoApicRedirectionIndex, 0xFFFFFFFF);
  CHECK(t->redirectionEntry(0) == 0xFFFFAFFFull);
  // A level entry's remote IRR, set by a delivery, survives an attempt to
  // clear it.
  t.writeEntry(1, levelEntry(0x31));
  t->setPinLevel(1, true);
  REQUIRE(t.remoteIrr(1));
  t.writeIndirect(kIoApicRedirectionIndex + 2, uint32_t(levelEntry(0x32)));
  CHECK(t->redirectionEntry(1) == (levelEntry(0x32) | rte::kRemoteIrr));
  CHECK(t.sink.vectors() == Vectors{0x31});
}

TEST_CASE("KVM: writing an entry as edge-triggered clears its remote IRR", "[ioapic][registers]") {
  TestIoApic t;
  t.writeEntry(2, levelEntry(0x40));
  t->setPinLevel(2, true);
  REQUIRE(t.remoteIrr(2));
  t.writeEntry(2, edgeEntry(0x40));
  CHECK(t->redirectionEntry(2) == edgeEntry(0x40));
  // Back to level with the wire still asserted: remote IRR is clear, so it
  // sends again.
  t.writeEntry(2, levelEntry(0x40));
  CHECK(t.remoteIrr(2));
  CHECK(t.sink.vectors() == Vectors{0x40, 0x40});
}

TEST_CASE("82093AA 3.1: the window decodes 4 KiB from the base", "[ioapic][registers]") {
  TestIoApic t;
  CHECK(t->windowContains(kIoApicDefaultBase));
  CHECK(t->windowContains(kIoApicDefaultBase + 0xFFF));
  CHECK_FALSE(t->windowContains(kIoApicDefaultBase + 0x1000));
  CHECK_FALSE(t->windowContains(kIoApicDefaultBase - 1));
  checkIgnored(t->mmioRead(kIoApicDefaultBase + 0x1000, 4), AccessReason::OUTSIDE_WINDOW);
  checkIgnored(t->mmioWrite(kIoApicDefaultBase - 4, 4, 0), AccessReason::OUTSIDE_WINDOW);
}

TEST_CASE("82093AA 3.1: a read within a slot sees the register shifted to its offset",
          "[ioapic][registers]") {
  TestIoApic t;
  t.writeIndirect(kIoApicRedirectionIndex + 1, 0xA1B2C3D4);
  // IOREGSEL still selects pin 0's high dword.
  auto full = t.read(kIoWin, 4);
  CHECK(full.status == AccessStatus::OK);
  CHECK(full.value == 0xA1B2C3D4);
  CHECK(t.read(kIoWin, 1).value == 0xD4);
  CHECK(t.read(kIoWin + 1, 1).value == 0xC3);
  CHECK(t.read(kIoWin + 2, 2).value == 0xA1B2);
  CHECK(t.read(kIoWin + 3, 1).value == 0xA1);
  CHECK(t.read(kIoWin, 8).value == 0xA1B2C3D4);
  // Past the 32-bit register, the slot reads 0.
  auto past = t.read(kIoWin + 4, 4);
  CHECK(past.status == AccessStatus::OK);
  CHECK(past.value == 0);
  CHECK(t.read(kIoWin + 8, 8).value == 0);
  CHECK(t.read(kIoWin + 0xF, 1).value == 0);
  CHECK(t.read(kIoRegSel, 1).value == kIoApicRedirectionIndex + 1);
  CHECK(t.read(kIoRegSel + 1, 1).value == 0);
}

TEST_CASE("82093AA 3.1: reads of a bad size or across slots are ignored and read 0",
          "[ioapic][registers]") {
  TestIoApic t;
  t.writeIndirect(kIoApicVersionIndex, 0);  // leaves IOREGSEL on the version
  for (uint8_t size: {0, 3, 5, 6, 7, 16}) {
    INFO("size " << int(size));
    checkIgnored(t.read(kIoWin, size), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  }
  checkIgnored(t.read(kIoWin + 0xE, 4), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  checkIgnored(t.read(kIoWin + 0xC, 8), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  checkIgnored(t.read(kIoRegSel + 0xF, 2), AccessReason::BAD_SIZE_OR_ALIGNMENT);
}

TEST_CASE("KVM: only 4- and 8-byte writes at a register's start take effect",
          "[ioapic][registers]") {
  TestIoApic t;
  t.write(kIoRegSel, 0x05);
  for (uint8_t size: {1, 2, 3, 16}) {
    INFO("size " << int(size));
    checkIgnored(t.write(kIoRegSel, 0x22, size), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  }
  for (uint64_t offset: {kIoRegSel + 1, kIoRegSel + 4, kIoRegSel + 8}) {
    INFO("offset " << offset);
    checkIgnored(t.write(offset, 0x22, 4), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  }
  checkIgnored(t.write(kIoWin + 4, 0x22, 4), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  checkIgnored(t.write(kIoWin, 0x22, 2), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  CHECK(t.read(kIoRegSel).value == 0x05);
  CHECK(t->redirectionEntry(0) == rte::kResetValue);
}

TEST_CASE("82093AA 3.1: offsets outside the register slots read 0 and ignore writes",
          "[ioapic][registers]") {
  TestIoApic t;
  t.write(kIoRegSel, 0x01);
  for (uint64_t offset: {0x20ull, 0x30ull, 0x50ull, 0x100ull, 0xFF0ull, 0xFFCull}) {
    INFO("offset " << offset);
    checkIgnored(t.read(offset), AccessReason::RESERVED_REGISTER);
    checkIgnored(t.write(offset, 0x11), AccessReason::RESERVED_REGISTER);
  }
  CHECK(t.read(kIoRegSel).value == 0x01);
}

TEST_CASE("version 0x11 (82093AA): offset 0x40 is no register", "[ioapic][registers]") {
  TestIoApic t(configWith(kIoApicVersion11));
  checkIgnored(t.read(kIoEoi), AccessReason::RESERVED_REGISTER);
  checkIgnored(t.write(kIoEoi, 0x30), AccessReason::RESERVED_REGISTER);
}

TEST_CASE("version 0x20: the EOI register at 0x40 is write-only and takes 4 or 8 bytes",
          "[ioapic][registers]") {
  TestIoApic t(configWith(kIoApicVersion20));
  checkIgnored(t.read(kIoEoi), AccessReason::WRITE_ONLY_REGISTER);
  CHECK(t.write(kIoEoi, 0x30).status == AccessStatus::OK);
  CHECK(t.write(kIoEoi, 0x30, 8).status == AccessStatus::OK);
  checkIgnored(t.write(kIoEoi, 0x30, 1), AccessReason::BAD_SIZE_OR_ALIGNMENT);
  checkIgnored(t.write(kIoEoi + 4, 0x30), AccessReason::BAD_SIZE_OR_ALIGNMENT);
}

}  // namespace
}  // namespace vlapic::test
