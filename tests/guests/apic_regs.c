// SPDX-License-Identifier: MIT
/*
 * Every LAPIC register from inside a guest: reset values, writable bits and
 * access rules in xAPIC mode (MMIO) and in x2APIC mode (MSRs, #GP rules).
 * SDM Vol. 3A, APIC chapter: "Local APIC Register Address Map", "x2APIC
 * Register Address Space", "Reserved Bit Checking".
 */
#include "runtime.h"

static uint32_t initial_apic_id(void) {
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  return b >> 24;
}

static bool cpu_has_x2apic(void) {
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  return c & (1u << 21);
}

/* Writes `value`, expects `want` back (the writable mask at work). */
static void write_expect(uint32_t offset, uint32_t value, uint32_t want, const char *name) {
  apic_write(offset, value);
  check_eq(apic_read(offset), want, name);
}

/* Reset values (SDM "Local APIC State After Power-Up or Reset" and "After
 * an INIT Reset"): read on an AP right after INIT-SIPI, since firmware may
 * have programmed the boot CPU's APIC before the kernel runs (QEMU runs
 * SeaBIOS); on a single-vCPU VM, on the boot CPU. */
static uint32_t reset_value(uint32_t offset) {
  if (cpus_online() > 1) return cpu_at(1)->reset_regs[offset >> 4];
  return apic_read(offset);
}

static void check_reset_values(void) {
  uint32_t version = reset_value(APIC_VERSION);
  uint32_t max_lvt = (version >> 16) & 0xFF;
  printf("NOTE reset values read on %s; version 0x%x\n", cpus_online() > 1 ? "AP 1 after INIT" : "the boot CPU", version);
  check_eq(version & 0xFF, 0x14, "version: integrated APIC 0x14");
  check(max_lvt == 5 || max_lvt == 6, "version: max LVT entry 5 or 6");
  check_eq(reset_value(APIC_TPR), 0, "reset: TPR 0");
  check_eq(reset_value(APIC_PPR), 0, "reset: PPR 0");
  check_eq(reset_value(APIC_SVR), 0xFF, "reset: SVR 0xFF (software disabled)");
  bool clean = true;
  for (uint32_t i = 0; i < 8; i++) {
    clean &= reset_value(APIC_ISR + i * 0x10) == 0;
    clean &= reset_value(APIC_TMR + i * 0x10) == 0;
    clean &= reset_value(APIC_IRR + i * 0x10) == 0;
  }
  check(clean, "reset: ISR, TMR, IRR all 0");
  check_eq(reset_value(APIC_ESR), 0, "reset: ESR 0");
  check_eq(reset_value(APIC_LVT_TIMER), LVT_MASKED, "reset: LVT Timer masked");
  check_eq(reset_value(APIC_LVT_THERMAL), LVT_MASKED, "reset: LVT Thermal masked");
  check_eq(reset_value(APIC_LVT_PMC), LVT_MASKED, "reset: LVT PMC masked");
  uint32_t lint0 = reset_value(APIC_LVT_LINT0);
  /* PC firmware (and KVM) leave the BSP's LINT0 as ExtINT: accept both. */
  check(lint0 == LVT_MASKED || lint0 == 0x700, "reset: LVT LINT0 masked (or ExtINT on the BSP)");
  check_eq(reset_value(APIC_LVT_LINT1), LVT_MASKED, "reset: LVT LINT1 masked");
  check_eq(reset_value(APIC_LVT_ERROR), LVT_MASKED, "reset: LVT Error masked");
  check_eq(reset_value(APIC_TIMER_INITIAL), 0, "reset: timer initial count 0");
  check_eq(reset_value(APIC_TIMER_CURRENT), 0, "reset: timer current count 0");
  check_eq(reset_value(APIC_TIMER_DIVIDE), 0, "reset: divide configuration 0");
  check_eq(reset_value(APIC_LDR), 0, "xAPIC reset: LDR 0");
  check_eq(reset_value(APIC_DFR), 0xFFFFFFFF, "xAPIC reset: DFR flat (all ones)");
  if (cpus_online() > 1) check_eq(reset_value(APIC_ID) >> 24, cpu_at(1)->apic_id, "AP reset: ID = its initial APIC ID");
}

static void check_writable_masks(void) {
  apic_software_enable();
  write_expect(APIC_TPR, 0xFFFFFFFF, 0xFF, "TPR: bits 7:0 writable");
  write_expect(APIC_TPR, 0, 0, "TPR: back to 0");
  write_expect(APIC_SVR, 0x1FF, 0x1FF, "SVR: vector and enable writable");
  /* Reserved bits of LVT entries are dropped; delivery status reads 0. */
  write_expect(APIC_LVT_TIMER, 0x801300EF, 0x000300EF, "LVT Timer: vector, mask, periodic mode");
  write_expect(APIC_LVT_TIMER, LVT_MASKED, LVT_MASKED, "LVT Timer: one-shot masked");
  write_expect(APIC_LVT_THERMAL, 0x801104EF, 0x000104EF, "LVT Thermal: vector, NMI mode, mask");
  write_expect(APIC_LVT_PMC, 0x801104EF, 0x000104EF, "LVT PMC: vector, NMI mode, mask");
  write_expect(APIC_LVT_LINT0, 0x8011A0EF, 0x0001A0EF, "LVT LINT0: vector, polarity, trigger, mask");
  write_expect(APIC_LVT_LINT1, 0x8011A0EF, 0x0001A0EF, "LVT LINT1: vector, polarity, trigger, mask");
  write_expect(APIC_LVT_ERROR, 0x801107EF, 0x000100EF, "LVT Error: vector and mask only");
  write_expect(APIC_TIMER_DIVIDE, 0xFFFFFFFF, 0xB, "divide configuration: bits 0, 1, 3");
  write_expect(APIC_TIMER_DIVIDE, 0, 0, "divide configuration: back to 0");
  apic_write(APIC_LVT_LINT0, LVT_MASKED);
  apic_write(APIC_LVT_LINT1, LVT_MASKED);
  apic_write(APIC_LVT_THERMAL, LVT_MASKED);
  apic_write(APIC_LVT_PMC, LVT_MASKED);
  apic_write(APIC_LVT_ERROR, LVT_MASKED);

  /* A masked one-shot timer counts down from the initial count. */
  apic_write(APIC_TIMER_INITIAL, 0x7FFFFFFF);
  check_eq(apic_read(APIC_TIMER_INITIAL), 0x7FFFFFFF, "timer initial count reads back");
  uint32_t current = apic_read(APIC_TIMER_CURRENT);
  check(current > 0 && current <= 0x7FFFFFFF, "timer current count running below initial");
  apic_write(APIC_TIMER_INITIAL, 0);
  check_eq(apic_read(APIC_TIMER_CURRENT), 0, "timer: initial count 0 stops it");

  apic_write(APIC_ESR, 0);
  check_eq(apic_read(APIC_ESR), 0, "ESR: write then read 0");
}

static void xapic_phase(void) {
  uint32_t id = initial_apic_id();
  check_eq(apic_read(APIC_ID) >> 24, id, "xAPIC ID[31:24] = CPUID initial APIC ID");
  check_reset_values();
  write_expect(APIC_LDR, 0xFFFFFFFF, 0xFF000000, "xAPIC LDR: bits 31:24 writable");
  write_expect(APIC_LDR, 0, 0, "xAPIC LDR: back to 0");
  write_expect(APIC_DFR, 0x0FFFFFFF, 0x0FFFFFFF, "xAPIC DFR: cluster model");
  write_expect(APIC_DFR, 0xFFFFFFFF, 0xFFFFFFFF, "xAPIC DFR: flat model");
  write_expect(APIC_ICR_HIGH, 0xFFFFFFFF, 0xFF000000, "xAPIC ICR high: destination 31:24");
  apic_write(APIC_ICR_HIGH, 0);
  uint32_t version = apic_read(APIC_VERSION);
  apic_write(APIC_VERSION, ~version);
  check_eq(apic_read(APIC_VERSION), version, "xAPIC: write to read-only Version ignored");
  check_writable_masks();
}

struct gp_case {
  uint32_t msr;
  const char *name;
};

static void x2apic_phase(void) {
  uint32_t a, b, c, d;
  cpuid(0xB, 0, &a, &b, &c, &d);
  uint32_t x2id = d;
  apic_enable_x2apic();
  check_eq(rdmsr(MSR_APIC_BASE) & (APIC_BASE_EN | APIC_BASE_EXTD), APIC_BASE_EN | APIC_BASE_EXTD,
           "x2APIC: IA32_APIC_BASE EN and EXTD set");
  check_eq(rdmsr(MSR_X2APIC(APIC_ID)), x2id, "x2APIC ID (MSR 0x802) = CPUID.0BH:EDX");
  check_eq(rdmsr(MSR_X2APIC(APIC_LDR)), ((x2id >> 4) << 16) | (1u << (x2id & 0xF)),
           "x2APIC LDR derived from the ID");
  check_writable_masks();

  /* SDM "x2APIC Register Address Space": registers absent in x2APIC mode
   * and reserved MSRs raise #GP on RDMSR. */
  static const struct gp_case absent[] = {
      {0x801, "RDMSR 0x801 (reserved) #GP"},    {0x804, "RDMSR 0x804 (reserved) #GP"},
      {0x809, "RDMSR 0x809 (APR absent) #GP"},  {0x80C, "RDMSR 0x80C (RRD absent) #GP"},
      {0x80E, "RDMSR 0x80E (DFR absent) #GP"},  {0x831, "RDMSR 0x831 (ICR high absent) #GP"},
      {0x83A, "RDMSR 0x83A (reserved) #GP"},    {0x840, "RDMSR 0x840 (reserved) #GP"},
      {0x8FF, "RDMSR 0x8FF (reserved) #GP"},    {0x80B, "RDMSR 0x80B (EOI is write-only) #GP"},
      {0x83F, "RDMSR 0x83F (SELF IPI is write-only) #GP"},
  };
  for (unsigned i = 0; i < sizeof(absent) / sizeof(absent[0]); i++) {
    uint64_t value;
    check_eq(rdmsr_checked(absent[i].msr, &value), VECTOR_GP, absent[i].name);
  }
  static const struct gp_case read_only[] = {
      {0x802, "WRMSR 0x802 (ID read-only) #GP"},      {0x803, "WRMSR 0x803 (Version) #GP"},
      {0x80A, "WRMSR 0x80A (PPR) #GP"},               {0x80D, "WRMSR 0x80D (LDR read-only) #GP"},
      {0x810, "WRMSR 0x810 (ISR) #GP"},               {0x820, "WRMSR 0x820 (IRR) #GP"},
      {0x839, "WRMSR 0x839 (current count) #GP"},     {0x801, "WRMSR 0x801 (reserved) #GP"},
  };
  for (unsigned i = 0; i < sizeof(read_only) / sizeof(read_only[0]); i++) {
    check_eq(wrmsr_checked(read_only[i].msr, 0), VECTOR_GP, read_only[i].name);
  }
  /* SDM "Reserved Bit Checking": bits 63:32 of most MSRs. A non-zero EOI
   * faults only under vlapicd's strict option: KVM ignores the value, and so
   * does our default (nothing is in service here, so the EOI is harmless). */
  check_eq(wrmsr_checked(MSR_X2APIC(APIC_TPR), 1ull << 32), VECTOR_GP, "WRMSR TPR bits 63:32 #GP");
  check_eq(wrmsr_checked(MSR_X2APIC(APIC_EOI), 1), 0, "WRMSR EOI non-zero ignored (KVM)");
  check_eq(wrmsr_checked(0x83F, 0x100 | 0x40), VECTOR_GP, "WRMSR SELF IPI bits 31:8 #GP");
  check_eq(wrmsr_checked(MSR_X2APIC(APIC_ICR), (1u << 20) | ICR_SELF | 0x40), VECTOR_GP,
           "WRMSR ICR reserved bit 20 #GP");
  check_eq(rdmsr(MSR_X2APIC(APIC_IRR) + 2) & 1, 0, "rejected writes sent nothing");
  /* An INIT level de-assert is ignored by every target: a harmless ICR. */
  check_eq(wrmsr_checked(MSR_X2APIC(APIC_ICR), (5ull << 32) | ICR_LEVEL | ICR_INIT), 0,
           "WRMSR ICR 64-bit value accepted");
  check_eq(rdmsr(MSR_X2APIC(APIC_ICR)) >> 32, 5, "x2APIC ICR bits 63:32 read back");
  /* Direct x2APIC -> xAPIC is illegal (SDM "x2APIC State Transitions"). */
  uint64_t base = rdmsr(MSR_APIC_BASE);
  check_eq(wrmsr_checked(MSR_APIC_BASE, base & ~(uint64_t)APIC_BASE_EXTD), VECTOR_GP,
           "IA32_APIC_BASE x2APIC -> xAPIC directly #GP");
  apic_disable_to_xapic();
  check_eq(rdmsr(MSR_APIC_BASE) & (APIC_BASE_EN | APIC_BASE_EXTD), APIC_BASE_EN,
           "x2APIC -> disabled -> xAPIC");
}

void test_main(void) {
  if (cpu_count() > 1) {
    capture_ap_reset_state = true;
    check_eq(start_aps(2000), cpu_count() - 1, "APs started for the reset-state checks");
  }
  xapic_phase();
  if (cpu_has_x2apic()) {
    x2apic_phase();
  } else {
    uint64_t base = rdmsr(MSR_APIC_BASE);
    check_eq(wrmsr_checked(MSR_APIC_BASE, base | APIC_BASE_EXTD), VECTOR_GP,
             "no x2APIC in CPUID: setting EXTD #GP");
    uint64_t value;
    check_eq(rdmsr_checked(MSR_X2APIC(APIC_ID), &value), VECTOR_GP,
             "no x2APIC mode: RDMSR 0x802 #GP");
  }
}
