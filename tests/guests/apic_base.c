// SPDX-License-Identifier: MIT
/*
 * IA32_APIC_BASE from inside a guest: legal and illegal transitions, the
 * disabled state (MMIO window floats to all-ones, x2APIC MSRs #GP,
 * CPUID.1:EDX.APIC follows EN), re-enabling, and relocating the xAPIC
 * window. SDM Vol. 3A: "Local APIC Status and Location", "Relocating the
 * Local APIC Registers", "x2APIC State Transitions".
 */
#include "runtime.h"

/* An address nothing else decodes (the QEMU comparison runs -nodefaults). */
#define RELOCATED_BASE 0xFEA00000u

static bool cpuid_apic_bit(void) {
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  return d & (1u << 9);
}

static bool cpu_has_x2apic(void) {
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  return c & (1u << 21);
}

void test_main(void) {
  uint64_t base = rdmsr(MSR_APIC_BASE);
  check_eq(base & ~0xFFFull, APIC_DEFAULT_BASE, "reset: base address 0xFEE00000");
  check_eq(base & (APIC_BASE_EN | APIC_BASE_EXTD), APIC_BASE_EN, "reset: xAPIC mode (EN, no EXTD)");
  check(base & APIC_BASE_BSP, "boot CPU: BSP bit set");
  check(cpuid_apic_bit(), "enabled: CPUID.1:EDX.APIC set");
  uint32_t id = mmio_read(APIC_DEFAULT_BASE + APIC_ID);

  /* Reserved bits (0-7, 9, above MAXPHYADDR) raise #GP. */
  check_eq(wrmsr_checked(MSR_APIC_BASE, base | 0x1), VECTOR_GP, "reserved bit 0 #GP");
  check_eq(wrmsr_checked(MSR_APIC_BASE, base | (1u << 9)), VECTOR_GP, "reserved bit 9 #GP");
  check_eq(wrmsr_checked(MSR_APIC_BASE, base | (1ull << 63)), VECTOR_GP, "reserved bit 63 #GP");
  /* EN=0 with EXTD=1 is an invalid state. */
  if (cpu_has_x2apic()) {
    check_eq(wrmsr_checked(MSR_APIC_BASE, (base & ~(uint64_t)APIC_BASE_EN) | APIC_BASE_EXTD), VECTOR_GP,
             "EN=0 EXTD=1 #GP");
  }
  check_eq(rdmsr(MSR_APIC_BASE), base, "faulting writes left IA32_APIC_BASE unchanged");

  /* Disable: the window stops decoding, x2APIC MSRs fault. */
  apic_software_enable();
  check_eq(wrmsr_checked(MSR_APIC_BASE, base & ~(uint64_t)APIC_BASE_EN), 0, "xAPIC -> disabled");
  check(!cpuid_apic_bit(), "disabled: CPUID.1:EDX.APIC clear");
  check_eq(mmio_read(APIC_DEFAULT_BASE + APIC_ID), 0xFFFFFFFF, "disabled: MMIO ID reads all-ones");
  check_eq(mmio_read(APIC_DEFAULT_BASE + APIC_VERSION), 0xFFFFFFFF, "disabled: MMIO Version all-ones");
  mmio_write(APIC_DEFAULT_BASE + APIC_TPR, 0x20);
  uint64_t value;
  check_eq(rdmsr_checked(MSR_X2APIC(APIC_ID), &value), VECTOR_GP, "disabled: RDMSR 0x802 #GP");
  if (cpu_has_x2apic()) {
    int fault = wrmsr_checked(MSR_APIC_BASE, base | APIC_BASE_EXTD);
    check_eq(fault, VECTOR_GP, "disabled -> x2APIC directly #GP");
    if (fault == 0) wrmsr(MSR_APIC_BASE, base & ~(uint64_t)(APIC_BASE_EN | APIC_BASE_EXTD));
  }

  /* Re-enable: xAPIC again, ID back to the initial one, the write made
   * while disabled was dropped. */
  check_eq(wrmsr_checked(MSR_APIC_BASE, base), 0, "disabled -> xAPIC");
  check(cpuid_apic_bit(), "re-enabled: CPUID.1:EDX.APIC set");
  check_eq(mmio_read(APIC_DEFAULT_BASE + APIC_ID), id, "re-enabled: ID is the initial APIC ID");
  check_eq(mmio_read(APIC_DEFAULT_BASE + APIC_TPR) & 0xFF, 0, "write while disabled was dropped");
  check(mmio_read(APIC_DEFAULT_BASE + APIC_VERSION) != 0xFFFFFFFF, "re-enabled: window decodes");

  /* Relocation: the window follows the base address. */
  uint64_t relocated = (base & 0xFFF) | RELOCATED_BASE;
  check_eq(wrmsr_checked(MSR_APIC_BASE, relocated), 0, "relocate the xAPIC window");
  check_eq(rdmsr(MSR_APIC_BASE), relocated, "IA32_APIC_BASE reads the new base");
  check_eq(mmio_read(RELOCATED_BASE + APIC_ID), id, "relocated: ID at the new base");
  mmio_write(RELOCATED_BASE + APIC_TPR, 0x30);
  check_eq(mmio_read(RELOCATED_BASE + APIC_TPR), 0x30, "relocated: TPR write/read at the new base");
  mmio_write(RELOCATED_BASE + APIC_TPR, 0);
  check_eq(wrmsr_checked(MSR_APIC_BASE, base), 0, "move the window back");
  check_eq(mmio_read(APIC_DEFAULT_BASE + APIC_ID), id, "back at 0xFEE00000");

  if (cpu_has_x2apic()) {
    /* x2APIC window: MMIO stops decoding in x2APIC mode. */
    apic_enable_x2apic();
    check_eq(mmio_read(APIC_DEFAULT_BASE + APIC_VERSION), 0xFFFFFFFF, "x2APIC mode: MMIO reads all-ones");
    check(cpuid_apic_bit(), "x2APIC mode: CPUID.1:EDX.APIC set");
    /* x2APIC -> disabled -> xAPIC is the legal way back. */
    check_eq(wrmsr_checked(MSR_APIC_BASE, base & ~(uint64_t)(APIC_BASE_EN)), 0, "x2APIC -> disabled");
    check_eq(wrmsr_checked(MSR_APIC_BASE, base), 0, "disabled -> xAPIC after x2APIC");
    this_cpu()->x2apic = false;
    check_eq(mmio_read(APIC_DEFAULT_BASE + APIC_ID), id, "xAPIC after x2APIC: initial ID");
  }
}
