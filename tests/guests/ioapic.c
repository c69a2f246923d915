// SPDX-License-Identifier: MIT
/*
 * The VM's I/O APIC from inside a guest (Intel 82093AA I/O APIC datasheet,
 * section 3; SDM Vol. 3A "EOI" for the broadcast that clears remote IRR):
 *  - the ID and version registers: version 0x11 or 0x20, 24 pins
 *    (maximum redirection entry 23), the ID writable in bits 27:24;
 *  - an edge-triggered pin driven through QEMU's pc-testdev ports (a byte to
 *    0x2000 + n sets pin n's wire) sends once per rising edge, not while
 *    the wire stays high and not on the falling edge;
 *  - a level-triggered pin sends while asserted, sets remote IRR until the
 *    LAPIC's EOI, is sent again after each EOI while still asserted, and not
 *    after the wire is lowered;
 *  - a masked level pin that is asserted sends when unmasked;
 *  - the 16550's THR-empty interrupt (IER bit 1 with MCR OUT2) arrives on
 *    pin 4 as ISA IRQ 4 does, once per rising edge of the UART's line.
 * Each in xAPIC mode and, when CPUID offers it, again in x2APIC mode (the
 * I/O APIC's destination field is the xAPIC format in both).
 *
 * The serial port is also where this kernel prints: the THRE checks run
 * with nothing printed until the UART's interrupt is disabled again.
 */
#include "runtime.h"

#define IOAPIC_BASE 0xFEC00000u
#define IOREGSEL 0x00
#define IOWIN 0x10
#define IOAPIC_ID 0x00
#define IOAPIC_VERSION 0x01
#define IOAPIC_REDIRECTION(pin) (0x10 + 2 * (pin))

#define RTE_LEVEL (1u << 15)
#define RTE_REMOTE_IRR (1u << 14)
#define RTE_MASKED (1u << 16)

#define TESTDEV_IRQ_PORT(pin) (0x2000 + (pin))

#define COM1 0x3F8
#define UART_IER (COM1 + 1)
#define UART_IIR (COM1 + 2)
#define UART_LCR (COM1 + 3)
#define UART_MCR (COM1 + 4)
#define UART_IER_THRE 0x02
#define UART_MCR_OUT2 0x08
#define UART_IIR_THRE 0x02

#define PIN_SERIAL 4
#define PIN_EDGE 10
#define PIN_LEVEL 11
#define PIN_MASKED 12

#define V_SERIAL 0x60
#define V_EDGE 0x70
#define V_LEVEL 0x80
#define V_MASKED 0x90

/* How often the level handler EOIs with its pin still high before it
 * lowers the wire. */
#define LEVEL_REPEATS 3

static uint32_t ioapic_read(uint32_t index) {
  mmio_write(IOAPIC_BASE + IOREGSEL, index);
  return mmio_read(IOAPIC_BASE + IOWIN);
}

static void ioapic_write(uint32_t index, uint32_t value) {
  mmio_write(IOAPIC_BASE + IOREGSEL, index);
  mmio_write(IOAPIC_BASE + IOWIN, value);
}

/* Fixed delivery, physical destination = this CPU, active high. The high
 * half first, so the entry never names a stale destination unmasked. */
static void program_pin(unsigned pin, uint8_t vector, bool level, bool masked) {
  ioapic_write(IOAPIC_REDIRECTION(pin), RTE_MASKED);
  ioapic_write(IOAPIC_REDIRECTION(pin) + 1, this_cpu()->apic_id << 24);
  ioapic_write(IOAPIC_REDIRECTION(pin),
               vector | (level ? RTE_LEVEL : 0) | (masked ? RTE_MASKED : 0));
}

static void mask_pin(unsigned pin) {
  uint32_t low = ioapic_read(IOAPIC_REDIRECTION(pin));
  ioapic_write(IOAPIC_REDIRECTION(pin), low | RTE_MASKED);
}

static void unmask_pin(unsigned pin) {
  uint32_t low = ioapic_read(IOAPIC_REDIRECTION(pin));
  ioapic_write(IOAPIC_REDIRECTION(pin), low & ~RTE_MASKED);
}

static void set_wire(unsigned pin, bool high) { outb(TESTDEV_IRQ_PORT(pin), high ? 1 : 0); }

static uint32_t count_of(uint8_t vector) { return this_cpu()->interrupts[vector]; }

static bool wait_count(uint8_t vector, uint32_t want) {
  return wait_for(&this_cpu()->interrupts[vector], want, 1000, true);
}

/* A pin wired to `handler` at `vector`, its wire low; returns the vector's
 * count so far. */
static uint32_t arm_pin(unsigned pin, uint8_t vector, handler_fn handler, bool level, bool masked) {
  set_handler(vector, handler);
  set_wire(pin, false);
  program_pin(pin, vector, level, masked);
  return count_of(vector);
}

/* Keep interrupt windows open for `us` microseconds. */
static void run_for_us(uint64_t us) {
  uint64_t end = tsc_after_us(us);
  while (rdtsc() < end) interrupt_window();
}

/* ---- Handlers ---- */
static void eoi_handler(struct frame *f) {
  (void)f;
  apic_eoi();
}

static volatile uint32_t level_remote_irr_in_handler;

static void level_handler(struct frame *f) {
  (void)f;
  /* Remote IRR is set from the message's acceptance until the EOI. */
  if (ioapic_read(IOAPIC_REDIRECTION(PIN_LEVEL)) & RTE_REMOTE_IRR) level_remote_irr_in_handler++;
  if (count_of(V_LEVEL) >= LEVEL_REPEATS) set_wire(PIN_LEVEL, false);
  apic_eoi();
}

static void masked_handler(struct frame *f) {
  (void)f;
  set_wire(PIN_MASKED, false);
  apic_eoi();
}

static volatile uint32_t serial_iir_seen;

static void serial_handler(struct frame *f) {
  (void)f;
  /* Reading IIR while THRE is its source resets the THRE interrupt (PC16550D
   * Table IV): the UART's line drops. */
  serial_iir_seen = inb(UART_IIR) & 0x0F;
  apic_eoi();
}

/* ---- Checks ---- */
static void registers(void) {
  uint32_t version = ioapic_read(IOAPIC_VERSION);
  uint32_t v = version & 0xFF;
  check(v == 0x11 || v == 0x20, "version register: 0x11 or 0x20");
  check_eq((version >> 16) & 0xFF, 23, "version register: maximum redirection entry 23");
  check_eq((ioapic_read(IOAPIC_ID) >> 24) & 0xF, 0, "ID register: 0 after reset");
  ioapic_write(IOAPIC_ID, 5u << 24);
  check_eq((ioapic_read(IOAPIC_ID) >> 24) & 0xF, 5, "ID register: bits 27:24 writable");
  ioapic_write(IOAPIC_ID, 0);
  check_eq(ioapic_read(IOAPIC_REDIRECTION(PIN_EDGE)) & RTE_MASKED, RTE_MASKED,
           "redirection entry: masked after reset");
  note("I/O APIC version 0x%x", v);
}

static void edge_pin(const char *mode) {
  uint32_t before = arm_pin(PIN_EDGE, V_EDGE, eoi_handler, false, false);
  set_wire(PIN_EDGE, true);
  bool arrived = wait_count(V_EDGE, before + 1);
  run_for_us(2000);  /* the wire stays high: no second message */
  uint32_t after_high = count_of(V_EDGE) - before;
  set_wire(PIN_EDGE, false);
  run_for_us(2000);  /* the falling edge sends nothing */
  uint32_t after_low = count_of(V_EDGE) - before;
  set_wire(PIN_EDGE, true);
  bool again = wait_count(V_EDGE, before + 2);
  set_wire(PIN_EDGE, false);
  run_for_us(1000);
  mask_pin(PIN_EDGE);
  note("%s edge pin %u", mode, PIN_EDGE);
  check(arrived, "edge: a rising edge sends the vector");
  check_eq(after_high, 1, "edge: once while the wire stays high");
  check_eq(after_low, 1, "edge: nothing on the falling edge");
  check(again, "edge: the next rising edge sends again");
  check_eq(count_of(V_EDGE) - before, 2, "edge: two edges, two interrupts");
}

static void level_pin(const char *mode) {
  arm_pin(PIN_LEVEL, V_LEVEL, level_handler, true, false);
  this_cpu()->interrupts[V_LEVEL] = 0;  /* the handler counts from 0 */
  level_remote_irr_in_handler = 0;
  set_wire(PIN_LEVEL, true);
  bool all = wait_count(V_LEVEL, LEVEL_REPEATS);
  run_for_us(3000);  /* lowered in the last handler, before its EOI: no more */
  uint32_t got = count_of(V_LEVEL);
  uint32_t entry = ioapic_read(IOAPIC_REDIRECTION(PIN_LEVEL));
  mask_pin(PIN_LEVEL);
  note("%s level pin %u", mode, PIN_LEVEL);
  check(all, "level: sent again after each EOI while still asserted");
  check_eq(got, LEVEL_REPEATS, "level: not sent after the wire is lowered");
  check_eq(level_remote_irr_in_handler, LEVEL_REPEATS, "level: remote IRR set until the EOI");
  check_eq(entry & RTE_REMOTE_IRR, 0, "level: remote IRR clear after the last EOI");
}

static void masked_level_pin(const char *mode) {
  uint32_t before = arm_pin(PIN_MASKED, V_MASKED, masked_handler, true, true);
  set_wire(PIN_MASKED, true);
  run_for_us(2000);
  uint32_t while_masked = count_of(V_MASKED) - before;
  unmask_pin(PIN_MASKED);
  bool arrived = wait_count(V_MASKED, before + 1);
  run_for_us(2000);
  uint32_t total = count_of(V_MASKED) - before;
  mask_pin(PIN_MASKED);
  set_wire(PIN_MASKED, false);
  note("%s masked level pin %u", mode, PIN_MASKED);
  check_eq(while_masked, 0, "mask: an asserted masked pin sends nothing");
  check(arrived, "mask: unmasking the asserted level pin sends it");
  check_eq(total, 1, "mask: once (lowered before the EOI)");
}

static void serial_thre(const char *mode) {
  outb(UART_IER, 0);
  outb(UART_MCR, 0);
  outb(UART_LCR, 0x03);  /* 8N1, divisor latch off */
  inb(UART_IIR);
  uint32_t before = arm_pin(PIN_SERIAL, V_SERIAL, serial_handler, false, false);
  serial_iir_seen = 0;
  /* From here until IER is cleared, nothing may be printed: every byte
   * written to THR raises THRE again. */
  outb(UART_MCR, UART_MCR_OUT2);
  outb(UART_IER, UART_IER_THRE);
  bool arrived = wait_count(V_SERIAL, before + 1);
  uint32_t iir = serial_iir_seen;
  run_for_us(2000);  /* the handler's IIR read reset it: nothing more */
  uint32_t settled = count_of(V_SERIAL) - before;
  outb(COM1, '\n');  /* THR written and sent: THRE again, a new edge */
  bool again = wait_count(V_SERIAL, before + 2);
  outb(UART_IER, 0);
  outb(UART_MCR, 0);
  run_for_us(1000);
  mask_pin(PIN_SERIAL);
  note("%s serial THRE on pin %u", mode, PIN_SERIAL);
  check(arrived, "serial: enabling THRE with OUT2 raises IRQ 4");
  check_eq(iir, UART_IIR_THRE, "serial: IIR names THR empty");
  check_eq(settled, 1, "serial: one interrupt per THRE");
  check(again, "serial: a THR write raises THRE again");
  check_eq(count_of(V_SERIAL) - before, 2, "serial: two THREs, two interrupts");
}

static void all_pins(const char *mode) {
  edge_pin(mode);
  level_pin(mode);
  masked_level_pin(mode);
  serial_thre(mode);
}

void test_main(void) {
  apic_software_enable();
  registers();
  all_pins("xAPIC:");
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (c & (1u << 21)) {
    apic_enable_x2apic();
    all_pins("x2APIC:");
  } else {
    skip("x2APIC mode", "CPUID does not offer x2APIC");
  }
}
