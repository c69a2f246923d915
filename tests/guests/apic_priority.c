// SPDX-License-Identifier: MIT
/*
 * Priorities from inside a guest: TPR and CR8 block lower-priority vectors
 * and release them when lowered, PPR follows ISR, nested interrupts are
 * delivered and EOIed in priority order, the spurious-vector register and
 * the software-disabled APIC. SDM Vol. 3A "Task and Processor Priorities",
 * "Interrupt Acceptance for Fixed Interrupts", "Signaling Interrupt
 * Servicing Completion", "Spurious Interrupt", "Local APIC State After It
 * Has Been Software Disabled", and "Task Priority in IA-32e Mode" (CR8).
 */
#include "runtime.h"

#define V_LOW 0x45    /* class 4 */
#define V_MID 0x55    /* class 5 */
#define V_HIGH 0x65   /* class 6 */
#define V_OUTER 0x40
#define V_NESTED 0x80
#define V_BELOW 0x30

static volatile uint32_t order[8];
static volatile uint32_t order_count;
static volatile uint32_t ppr_in_outer, ppr_in_nested, isr_outer_in_nested, below_pending_in_outer;
static volatile uint32_t below_delivered_in_outer, below_before;

static void record(uint32_t vector) {
  if (order_count < 8) order[order_count] = vector;
  order_count++;
}

static void eoi_handler(struct frame *f) {
  record((uint32_t)f->vector);
  apic_eoi();
}

static void self_ipi(uint32_t vector) {
  if (this_cpu()->x2apic) wrmsr(0x83F, vector);
  else send_ipi(0, ICR_SELF | ICR_FIXED | ICR_ASSERT | vector);
}

static void nested_handler(struct frame *f) {
  record((uint32_t)f->vector);
  ppr_in_nested = apic_read(APIC_PPR);
  isr_outer_in_nested = isr_bit(V_OUTER);
  apic_eoi();  /* clears the highest ISR bit: ours, not the outer one */
}

static void outer_handler(struct frame *f) {
  record((uint32_t)f->vector);
  ppr_in_outer = apic_read(APIC_PPR);
  /* A higher class nests... */
  self_ipi(V_NESTED);
  interrupt_window();
  /* ...a lower class waits for our EOI. */
  self_ipi(V_BELOW);
  interrupt_window();
  below_pending_in_outer = irr_bit(V_BELOW);
  below_delivered_in_outer = this_cpu()->interrupts[V_BELOW] - below_before;
  apic_eoi();
}

static void tpr_blocking(const char *mode) {
  printf("NOTE TPR blocking in %s mode\n", mode);
  uint32_t low_before = this_cpu()->interrupts[V_LOW];
  uint32_t high_before = this_cpu()->interrupts[V_HIGH];
  apic_write(APIC_TPR, 0x50);
  check_eq(apic_read(APIC_PPR), 0x50, "PPR = TPR with nothing in service");
  self_ipi(V_LOW);
  interrupt_window();
  check_eq(this_cpu()->interrupts[V_LOW] - low_before, 0, "TPR 0x50 blocks vector 0x45");
  check(irr_bit(V_LOW), "blocked vector 0x45 waits in IRR");
  self_ipi(V_HIGH);
  interrupt_window();
  check_eq(this_cpu()->interrupts[V_HIGH] - high_before, 1, "TPR 0x50 lets vector 0x65 through");
  apic_write(APIC_TPR, 0x00);
  interrupt_window();
  check_eq(this_cpu()->interrupts[V_LOW] - low_before, 1, "lowering TPR delivers vector 0x45");
  check(!irr_bit(V_LOW), "vector 0x45 left IRR");
}

static void cr8_blocking(void) {
  uint32_t before = this_cpu()->interrupts[V_MID];
  write_cr8(6);
  check_eq(apic_read(APIC_TPR), 0x60, "MOV to CR8 6 sets TPR 0x60");
  self_ipi(V_MID);
  interrupt_window();
  check_eq(this_cpu()->interrupts[V_MID] - before, 0, "CR8 6 blocks vector 0x55");
  write_cr8(0);
  interrupt_window();
  check_eq(this_cpu()->interrupts[V_MID] - before, 1, "CR8 0 delivers vector 0x55");
  apic_write(APIC_TPR, 0x70);
  check_eq(read_cr8(), 7, "TPR write 0x70 reads back as CR8 7");
  apic_write(APIC_TPR, 0);
  check_eq(read_cr8(), 0, "TPR write 0 reads back as CR8 0");
}

static void nested_eoi(void) {
  order_count = 0;
  below_before = this_cpu()->interrupts[V_BELOW];
  self_ipi(V_OUTER);
  interrupt_window();  /* outer runs, nests V_NESTED, leaves V_BELOW pending */
  interrupt_window();  /* V_BELOW after the outer EOI */
  check_eq(order_count, 3, "three interrupts delivered");
  check_eq(order[0], V_OUTER, "order: 0x40 first");
  check_eq(order[1], V_NESTED, "order: higher 0x80 nests inside 0x40");
  check_eq(order[2], V_BELOW, "order: lower 0x30 only after 0x40's EOI");
  check_eq(ppr_in_outer & 0xF0, 0x40, "PPR in 0x40's handler is 0x40");
  check_eq(ppr_in_nested & 0xF0, 0x80, "PPR in nested 0x80's handler is 0x80");
  check(isr_outer_in_nested, "0x40 stays in service while 0x80 runs");
  check(below_pending_in_outer, "0x30 pending in IRR during 0x40's handler");
  check_eq(below_delivered_in_outer, 0, "0x30 not delivered during 0x40's handler");
  bool isr_clean = true;
  for (unsigned i = 0; i < 8; i++) isr_clean &= apic_read(APIC_ISR + i * 0x10) == 0;
  check(isr_clean, "ISR empty after all EOIs");
  check_eq(apic_read(APIC_PPR), 0, "PPR back to 0");
}

static void spurious_and_software_disable(void) {
  apic_write(APIC_SVR, 0x100 | 0xEF);
  check_eq(apic_read(APIC_SVR) & 0x1FF, 0x1EF, "SVR: spurious vector 0xEF programmable");
  apic_write(APIC_SVR, 0x100 | VECTOR_SPURIOUS);

  /* Software disable: LVTs are forced masked and cannot be unmasked;
   * fixed interrupts are not accepted. */
  apic_write(APIC_LVT_TIMER, 0x60);
  apic_write(APIC_SVR, VECTOR_SPURIOUS);
  check(apic_read(APIC_LVT_TIMER) & LVT_MASKED, "software disable masks LVT Timer");
  apic_write(APIC_LVT_LINT1, 0x61);
  check(apic_read(APIC_LVT_LINT1) & LVT_MASKED, "software disabled: LVT unmask ignored");
  uint32_t before = this_cpu()->interrupts[V_HIGH];
  self_ipi(V_HIGH);
  interrupt_window();
  check(!irr_bit(V_HIGH), "software disabled: fixed self IPI not accepted");
  check_eq(this_cpu()->interrupts[V_HIGH] - before, 0, "software disabled: nothing delivered");
  apic_write(APIC_SVR, 0x100 | VECTOR_SPURIOUS);
  check(apic_read(APIC_LVT_TIMER) & LVT_MASKED, "re-enable does not unmask the LVTs");
  apic_write(APIC_LVT_TIMER, LVT_MASKED);
  apic_write(APIC_LVT_LINT1, LVT_MASKED);
}

void test_main(void) {
  set_handler(V_LOW, eoi_handler);
  set_handler(V_MID, eoi_handler);
  set_handler(V_HIGH, eoi_handler);
  set_handler(V_OUTER, outer_handler);
  set_handler(V_NESTED, nested_handler);
  set_handler(V_BELOW, eoi_handler);
  apic_software_enable();
  tpr_blocking("xAPIC");
  cr8_blocking();
  nested_eoi();
  spurious_and_software_disable();
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (c & (1u << 21)) {
    apic_enable_x2apic();
    tpr_blocking("x2APIC");
    cr8_blocking();
    nested_eoi();
  }
}
