// SPDX-License-Identifier: MIT
// Decoded dumps (dump.h): one representative value per RegisterInfo::format,
// exact text, with the fields the SDM names for each register; and the full
// table over a kvm_lapic_state in both layouts.
#include "schema/model/dump.h"
#include "images.h"
#include <catch2/catch.hpp>
#include <kj/array.h>
#include <cstring>
#include <string>

using namespace vlapic;
using namespace vlapic::regview_test;

namespace {

kj::String line(Reg reg, uint32_t value, RegisterLayout layout = RegisterLayout::XAPIC) {
  return dumpRegister(registerInfo(reg), value, layout);
}

}  // namespace

TEST_CASE("dump: the issue's example line", "[dump]") {
  CHECK(line(Reg::LVT_TIMER, 0x00030030) == "LVT Timer: vector 0x30, mode periodic, masked");
}

TEST_CASE("dump: LVT Timer names the timer mode of bits 18:17", "[dump][lvt]") {
  CHECK(line(Reg::LVT_TIMER, 0x00000030) == "LVT Timer: vector 0x30, mode one-shot");
  CHECK(line(Reg::LVT_TIMER, 0x000400EC) == "LVT Timer: vector 0xEC, mode TSC-deadline");
  CHECK(line(Reg::LVT_TIMER, 0x00060000) == "LVT Timer: vector 0x00, mode reserved");
  CHECK(line(Reg::LVT_TIMER, 0x00011030) == "LVT Timer: vector 0x30, mode one-shot, send pending, masked");
}

TEST_CASE("dump: LVT LINT0/LINT1 with delivery mode, polarity, trigger, remote IRR", "[dump][lvt]") {
  CHECK(line(Reg::LVT_LINT0, 0x00000700) == "LVT LINT0: vector 0x00, delivery ExtINT, active high, edge");
  CHECK(line(Reg::LVT_LINT1, 0x00000400) == "LVT LINT1: vector 0x00, delivery NMI, active high, edge");
  CHECK(line(Reg::LVT_LINT0, 0x0001F031)
        == "LVT LINT0: vector 0x31, delivery fixed, active low, level, remote IRR, send pending, masked");
}

TEST_CASE("dump: LVT Thermal/PMC/CMCI have a delivery mode - LVT Error only a vector", "[dump][lvt]") {
  CHECK(line(Reg::LVT_THERMAL, 0x00010200) == "LVT Thermal: vector 0x00, delivery SMI, masked");
  CHECK(line(Reg::LVT_PMC, 0x00000400) == "LVT PMC: vector 0x00, delivery NMI");
  CHECK(line(Reg::LVT_CMCI, 0x000000F1) == "LVT CMCI: vector 0xF1, delivery fixed");
  CHECK(line(Reg::LVT_ERROR, 0x000000FE) == "LVT Error: vector 0xFE");
  CHECK(line(Reg::LVT_ERROR, 0x000110FE) == "LVT Error: vector 0xFE, send pending, masked");
}

TEST_CASE("dump: APIC ID per layout", "[dump][id]") {
  CHECK(line(Reg::ID, 0x01000000) == "ID: APIC ID 0x01");
  CHECK(line(Reg::ID, 0x00012345, RegisterLayout::X2APIC) == "ID: x2APIC ID 0x00012345");
  CHECK(line(Reg::ID, 0x05000000, RegisterLayout::X2APIC_LEGACY_ID) == "ID: x2APIC ID 0x05");
}

TEST_CASE("dump: Version, priorities, LDR, DFR", "[dump]") {
  CHECK(line(Reg::VERSION, 0x00050014) == "Version: version 0x14, 6 LVT entries");
  CHECK(line(Reg::VERSION, 0x01060014)
        == "Version: version 0x14, 7 LVT entries, EOI-broadcast suppression supported");
  CHECK(line(Reg::TPR, 0x0000002A) == "TPR: priority 0x2A (class 2, subclass 10)");
  CHECK(line(Reg::PPR, 0x000000F0) == "PPR: priority 0xF0 (class 15, subclass 0)");
  CHECK(line(Reg::APR, 0) == "APR: priority 0x00 (class 0, subclass 0)");
  CHECK(line(Reg::LDR, 0x08000000) == "LDR: logical ID 0x08");
  CHECK(line(Reg::LDR, 0x00020008, RegisterLayout::X2APIC) == "LDR: cluster 0x0002, members 0x0008");
  CHECK(line(Reg::DFR, 0xFFFFFFFF) == "DFR: model flat");
  CHECK(line(Reg::DFR, 0x0FFFFFFF) == "DFR: model cluster");
  CHECK(line(Reg::DFR, 0x5FFFFFFF) == "DFR: model reserved (0x5)");
}

TEST_CASE("dump: SVR fields", "[dump][svr]") {
  CHECK(line(Reg::SVR, 0x000000FF) == "SVR: spurious vector 0xFF, APIC software-disabled");
  CHECK(line(Reg::SVR, 0x000001EF) == "SVR: spurious vector 0xEF, APIC software-enabled");
  CHECK(line(Reg::SVR, 0x000013FF)
        == "SVR: spurious vector 0xFF, APIC software-enabled, focus checking disabled, "
           "EOI broadcast suppressed");
}

TEST_CASE("dump: ISR/TMR/IRR slices list their vectors (slice n covers 32n..32n+31)", "[dump][bitmap]") {
  CHECK(line(Reg::ISR0, 0) == "ISR[0]: none");
  CHECK(line(Reg(uint16_t(Reg::ISR0) + 1), 0x00020001) == "ISR[1]: vectors 0x20, 0x31");
  CHECK(line(Reg(uint16_t(Reg::IRR0) + 7), 0x80000000) == "IRR[7]: vectors 0xFF");
  CHECK(line(Reg(uint16_t(Reg::TMR0) + 2), 0x00000003) == "TMR[2]: vectors 0x40, 0x41");
}

TEST_CASE("dump: ESR names each error bit", "[dump][esr]") {
  CHECK(line(Reg::ESR, 0) == "ESR: no errors");
  CHECK(line(Reg::ESR, 0x60) == "ESR: send illegal vector, received illegal vector");
  CHECK(line(Reg::ESR, 0xFF)
        == "ESR: send checksum error, receive checksum error, send accept error, "
           "receive accept error, redirectable IPI, send illegal vector, "
           "received illegal vector, illegal register address");
}

TEST_CASE("dump: ICR low, ICR high and the whole ICR", "[dump][icr]") {
  CHECK(line(Reg::ICR_LOW, 0x000C4830)
        == "ICR low: vector 0x30, delivery fixed, logical, assert, edge, shorthand all excluding self");
  CHECK(line(Reg::ICR_LOW, 0x00008500) == "ICR low: vector 0x00, delivery INIT, physical, de-assert, level");
  CHECK(line(Reg::ICR_LOW, 0x00045608)
        == "ICR low: vector 0x08, delivery start-up, physical, assert, edge, shorthand self, send pending");
  CHECK(line(Reg::ICR_HIGH, 0x05000000) == "ICR high: destination 0x05");
  CHECK(line(Reg::ICR_HIGH, 0x00000123, RegisterLayout::X2APIC) == "ICR high: destination 0x00000123");
  CHECK(decodeIcr(IcrValue(0x00004131u, 0x05000000u), RegisterLayout::XAPIC)
        == "vector 0x31, delivery lowest priority, physical, assert, edge, destination 0x05");
  CHECK(decodeIcr(IcrValue(0x00004031u, 0xFFFFFFFFu), RegisterLayout::X2APIC)
        == "vector 0x31, delivery fixed, physical, assert, edge, destination 0xFFFFFFFF");
}

TEST_CASE("dump: timer counts and divide configuration", "[dump][timer]") {
  CHECK(line(Reg::TIMER_INITIAL_COUNT, 1000000) == "Timer initial count: 1000000");
  CHECK(line(Reg::TIMER_CURRENT_COUNT, 0xFFFFFFFF) == "Timer current count: 4294967295");
  CHECK(line(Reg::TIMER_DIVIDE_CONFIG, 0x0) == "Timer divide config: divide by 2");
  CHECK(line(Reg::TIMER_DIVIDE_CONFIG, 0xA) == "Timer divide config: divide by 128");
  CHECK(line(Reg::TIMER_DIVIDE_CONFIG, 0xB) == "Timer divide config: divide by 1");
}

TEST_CASE("dump: plain registers as hex", "[dump]") {
  CHECK(line(Reg::EOI, 0) == "EOI: 0x00000000");
  CHECK(line(Reg::RRD, 0xDEADBEEF) == "RRD: 0xDEADBEEF");
  CHECK(decodeRegister(registerInfo(Reg::SELF_IPI), 0x40) == "0x00000040");
}

TEST_CASE("dump: IA32_APIC_BASE", "[dump][apic-base]") {
  CHECK(decodeApicBase(ApicBaseValue(0xFEE00900)) == "base 0xFEE00000, mode xAPIC, BSP");
  CHECK(decodeApicBase(ApicBaseValue(0xFEE00C00)) == "base 0xFEE00000, mode x2APIC");
  CHECK(decodeApicBase(ApicBaseValue(0xFEE00000)) == "base 0xFEE00000, mode disabled");
  CHECK(decodeApicBase(ApicBaseValue(0xFEE00400)) == "base 0xFEE00000, mode invalid (EXTD without EN)");
  CHECK(decodeApicBase(ApicBaseValue(0x123456789800ull)) == "base 0x123456789000, mode xAPIC");
}

TEST_CASE("dump: names of delivery modes, shorthands, timer and APIC modes", "[dump]") {
  CHECK(deliveryModeName(DeliveryMode::FIXED) == "fixed");
  CHECK(deliveryModeName(DeliveryMode::LOWEST_PRIORITY) == "lowest priority");
  CHECK(deliveryModeName(DeliveryMode::SMI) == "SMI");
  CHECK(deliveryModeName(DeliveryMode::RESERVED_3) == "reserved");
  CHECK(deliveryModeName(DeliveryMode::NMI) == "NMI");
  CHECK(deliveryModeName(DeliveryMode::INIT) == "INIT");
  CHECK(deliveryModeName(DeliveryMode::STARTUP) == "start-up");
  CHECK(deliveryModeName(DeliveryMode::EXTINT) == "ExtINT");
  CHECK(shorthandName(Shorthand::ALL_INCLUDING_SELF) == "all including self");
  CHECK(timerModeName(TimerMode::TSC_DEADLINE) == "TSC-deadline");
  CHECK(apicModeName(ApicMode::X2APIC) == "x2APIC");
}

namespace {

// A vCPU mid-run, as KVM_GET_LAPIC would return it in xAPIC mode: APIC
// software-enabled, a periodic timer, LINT0 in virtual-wire ExtINT, LINT1 NMI,
// one vector in service and two pending (one level-triggered).
kj::Array<kj::byte> runningXapicState() {
  auto regs = kvmFreshXapicState();
  putWord(regs, 0x080, 0x00000020);
  putWord(regs, 0x0A0, 0x00000040);
  putWord(regs, 0x0D0, 0x02000000);
  putWord(regs, 0x0F0, 0x000001FF);
  putWord(regs, 0x120, 1u << 1);             // ISR: 0x41
  putWord(regs, 0x190, 1u << 17);            // TMR: 0x31
  putWord(regs, 0x210, 1u << 17);            // IRR: 0x31
  putWord(regs, 0x270, 1u << 15);            // IRR: 0xEF
  putWord(regs, 0x300, 0x000040FD);
  putWord(regs, 0x310, 0x02000000);
  putWord(regs, 0x320, 0x000200EC);
  putWord(regs, 0x350, 0x00000700);
  putWord(regs, 0x360, 0x00000400);
  putWord(regs, 0x380, 1000000);
  putWord(regs, 0x390, 250000);
  putWord(regs, 0x3E0, 0x3);
  return regs;
}

}  // namespace

TEST_CASE("dump table: xAPIC kvm_lapic_state, every readable register in offset order", "[dump][table]") {
  auto regs = runningXapicState();
  // Not listed: EOI (write-only), RRD (not decoded, as KVM), LVT CMCI
  // (Version says 6 LVT entries), SELF IPI (x2APIC only).
  CHECK(std::string(dumpRegisters(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::XAPIC)).cStr()) ==
    "Register             Offset       MSR          Raw         Decoded\n"
    "ID                   0x020        0x802        0x01000000  APIC ID 0x01\n"
    "Version              0x030        0x803        0x00050014  version 0x14, 6 LVT entries\n"
    "TPR                  0x080        0x808        0x00000020  priority 0x20 (class 2, subclass 0)\n"
    "APR                  0x090        -            0x00000000  priority 0x00 (class 0, subclass 0)\n"
    "PPR                  0x0A0        0x80A        0x00000040  priority 0x40 (class 4, subclass 0)\n"
    "LDR                  0x0D0        0x80D        0x02000000  logical ID 0x02\n"
    "DFR                  0x0E0        -            0xFFFFFFFF  model flat\n"
    "SVR                  0x0F0        0x80F        0x000001FF  spurious vector 0xFF, APIC software-enabled\n"
    "ISR                  0x100-0x170  0x810-0x817  -           vectors 0x41\n"
    "TMR                  0x180-0x1F0  0x818-0x81F  -           vectors 0x31\n"
    "IRR                  0x200-0x270  0x820-0x827  -           vectors 0x31, 0xEF\n"
    "ESR                  0x280        0x828        0x00000000  no errors\n"
    "ICR low              0x300        0x830        0x000040FD  vector 0xFD, delivery fixed, physical, assert, edge\n"
    "ICR high             0x310        -            0x02000000  destination 0x02\n"
    "LVT Timer            0x320        0x832        0x000200EC  vector 0xEC, mode periodic\n"
    "LVT Thermal          0x330        0x833        0x00010000  vector 0x00, delivery fixed, masked\n"
    "LVT PMC              0x340        0x834        0x00010000  vector 0x00, delivery fixed, masked\n"
    "LVT LINT0            0x350        0x835        0x00000700  vector 0x00, delivery ExtINT, active high, edge\n"
    "LVT LINT1            0x360        0x836        0x00000400  vector 0x00, delivery NMI, active high, edge\n"
    "LVT Error            0x370        0x837        0x00010000  vector 0x00, masked\n"
    "Timer initial count  0x380        0x838        0x000F4240  1000000\n"
    "Timer current count  0x390        0x839        0x0003D090  250000\n"
    "Timer divide config  0x3E0        0x83E        0x00000003  divide by 16\n");
}

TEST_CASE("dump table: x2APIC (32-bit IDs) shows x2APIC registers, one 64-bit ICR and CMCI with 7 LVTs", "[dump][table][x2apic]") {
  auto regs = runningXapicState();
  // After EXTD: 32-bit ID 1, derived LDR, 0x310 = ICR[63:32]; a VM with 7
  // LVT entries and EOI-broadcast suppression.
  putWord(regs, 0x020, 0x00000001);
  putWord(regs, 0x0D0, 0x00000002);
  putWord(regs, 0x030, 0x01060014);
  putWord(regs, 0x2F0, 0x00010000);
  putWord(regs, 0x310, 0x00000001);
  // Not listed: APR, RRD, DFR and ICR high (absent in x2APIC mode), EOI and
  // SELF IPI (write-only).
  CHECK(std::string(dumpRegisters(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::X2APIC)).cStr()) ==
    "Register             Offset       MSR          Raw                 Decoded\n"
    "ID                   0x020        0x802        0x00000001          x2APIC ID 0x00000001\n"
    "Version              0x030        0x803        0x01060014          version 0x14, 7 LVT entries, EOI-broadcast suppression supported\n"
    "TPR                  0x080        0x808        0x00000020          priority 0x20 (class 2, subclass 0)\n"
    "PPR                  0x0A0        0x80A        0x00000040          priority 0x40 (class 4, subclass 0)\n"
    "LDR                  0x0D0        0x80D        0x00000002          cluster 0x0000, members 0x0002\n"
    "SVR                  0x0F0        0x80F        0x000001FF          spurious vector 0xFF, APIC software-enabled\n"
    "ISR                  0x100-0x170  0x810-0x817  -                   vectors 0x41\n"
    "TMR                  0x180-0x1F0  0x818-0x81F  -                   vectors 0x31\n"
    "IRR                  0x200-0x270  0x820-0x827  -                   vectors 0x31, 0xEF\n"
    "ESR                  0x280        0x828        0x00000000          no errors\n"
    "LVT CMCI             0x2F0        0x82F        0x00010000          vector 0x00, delivery fixed, masked\n"
    "ICR                  0x300-0x310  0x830        0x00000001000040FD  vector 0xFD, delivery fixed, physical, assert, edge, destination 0x00000001\n"
    "LVT Timer            0x320        0x832        0x000200EC          vector 0xEC, mode periodic\n"
    "LVT Thermal          0x330        0x833        0x00010000          vector 0x00, delivery fixed, masked\n"
    "LVT PMC              0x340        0x834        0x00010000          vector 0x00, delivery fixed, masked\n"
    "LVT LINT0            0x350        0x835        0x00000700          vector 0x00, delivery ExtINT, active high, edge\n"
    "LVT LINT1            0x360        0x836        0x00000400          vector 0x00, delivery NMI, active high, edge\n"
    "LVT Error            0x370        0x837        0x00010000          vector 0x00, masked\n"
    "Timer initial count  0x380        0x838        0x000F4240          1000000\n"
    "Timer current count  0x390        0x839        0x0003D090          250000\n"
    "Timer divide config  0x3E0        0x83E        0x00000003          divide by 16\n");
}

TEST_CASE("dump table: xAPIC LDR decodes by the DFR model (SDM Logical Destination Mode)", "[dump][table]") {
  auto regs = runningXapicState();
  putWord(regs, 0x0E0, 0x0FFFFFFF);
  putWord(regs, 0x0D0, 0x21000000);
  std::string cluster = dumpRegisters(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::XAPIC)).cStr();
  CHECK(cluster.find("LDR                  0x0D0        0x80D        0x21000000  cluster 0x2, members 0x1\n")
        != std::string::npos);
  CHECK(cluster.find("DFR                  0x0E0        -            0x0FFFFFFF  model cluster\n")
        != std::string::npos);
  putWord(regs, 0x0E0, 0xFFFFFFFF);
  std::string flat = dumpRegisters(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::XAPIC)).cStr();
  CHECK(flat.find("0x21000000  logical ID 0x21\n") != std::string::npos);
}

TEST_CASE("dump table: the same over a 4 KiB page view", "[dump][table][page]") {
  auto regs = runningXapicState();
  auto page = zeroedImage(hal::kPageSize);
  memcpy(page.begin(), regs.begin(), regs.size());
  CHECK(dumpRegisters(ConstPageView(page.asPtr().asConst(), RegisterLayout::XAPIC)) ==
        dumpRegisters(ConstKvmLapicStateView(regs.asPtr().asConst(), RegisterLayout::XAPIC)));
}

TEST_CASE("dump table: IA32_APIC_BASE as the first row of a saved vCPU", "[dump][table][apic-base]") {
  auto regs = runningXapicState();
  ConstKvmLapicStateView view(regs.asPtr().asConst(), RegisterLayout::XAPIC);
  std::string withBase = dumpRegisters(view, ApicBaseValue(0xFEE00900)).cStr();
  std::string without = dumpRegisters(view).cStr();
  // "Timer initial count" stays the longest name, so the extra row leaves
  // every other row as it was.
  std::string header = without.substr(0, without.find('\n') + 1);
  CHECK(withBase ==
        header +
        "IA32_APIC_BASE       -            0x01B        0xFEE00900  base 0xFEE00000, mode xAPIC, BSP\n" +
        without.substr(header.size()));
}
