// SPDX-License-Identifier: MIT
/*
 * The guest test runtime: serial output, PASS/FAIL reporting, exit through
 * QEMU's debug-exit port, interrupts, per-CPU data, the local APIC in xAPIC
 * and x2APIC mode, SMP start-up by INIT-SIPI-SIPI and TSC time.
 *
 * A test kernel defines `void test_main(void)`; the runtime calls it on the
 * boot CPU with interrupts disabled, the APIC hardware-enabled in xAPIC
 * mode and software-disabled (its reset state), and exits with the summary
 * when it returns.
 */
#pragma once

#include "layout.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Registers (SDM Vol. 3A, APIC chapter) ---- */
#define APIC_ID 0x020
#define APIC_VERSION 0x030
#define APIC_TPR 0x080
#define APIC_APR 0x090
#define APIC_PPR 0x0A0
#define APIC_EOI 0x0B0
#define APIC_RRD 0x0C0
#define APIC_LDR 0x0D0
#define APIC_DFR 0x0E0
#define APIC_SVR 0x0F0
#define APIC_ISR 0x100
#define APIC_TMR 0x180
#define APIC_IRR 0x200
#define APIC_ESR 0x280
#define APIC_LVT_CMCI 0x2F0
#define APIC_ICR 0x300
#define APIC_ICR_HIGH 0x310
#define APIC_LVT_TIMER 0x320
#define APIC_LVT_THERMAL 0x330
#define APIC_LVT_PMC 0x340
#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_LVT_ERROR 0x370
#define APIC_TIMER_INITIAL 0x380
#define APIC_TIMER_CURRENT 0x390
#define APIC_TIMER_DIVIDE 0x3E0
#define APIC_SELF_IPI 0x3F0 /* x2APIC only: MSR 0x83F */

#define MSR_APIC_BASE 0x1B
#define MSR_TSC_DEADLINE 0x6E0
#define MSR_X2APIC(offset) (0x800 + ((offset) >> 4))

#define APIC_BASE_BSP (1u << 8)
#define APIC_BASE_EXTD (1u << 10)
#define APIC_BASE_EN (1u << 11)
#define APIC_DEFAULT_BASE 0xFEE00000u

#define LVT_MASKED (1u << 16)
#define TIMER_ONE_SHOT (0u << 17)
#define TIMER_PERIODIC (1u << 17)
#define TIMER_TSC_DEADLINE (2u << 17)

#define ICR_FIXED (0u << 8)
#define ICR_LOWEST (1u << 8)
#define ICR_NMI (4u << 8)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_LOGICAL (1u << 11)
#define ICR_PENDING (1u << 12)
#define ICR_ASSERT (1u << 14)
#define ICR_LEVEL (1u << 15)
#define ICR_SELF (1u << 18)
#define ICR_ALL_INCLUDING_SELF (2u << 18)
#define ICR_ALL_EXCLUDING_SELF (3u << 18)

#define VECTOR_GP 13
#define VECTOR_NMI 2
/* The runtime's own vectors: wake an AP to run queued work; spurious. */
#define VECTOR_WAKE 0xF0
#define VECTOR_SPURIOUS 0xFF

/* ---- Interrupt frames and handlers ---- */
struct frame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error, rip, cs, rflags, rsp, ss;
};
typedef void (*handler_fn)(struct frame *frame);
/* Vectors 32-255 and NMI (2); runs with interrupts disabled. A handler
 * for an APIC interrupt must EOI itself. */
void set_handler(unsigned vector, handler_fn handler);

/* ---- Per-CPU data (at the bottom of each CPU's 16 KiB stack) ---- */
struct cpu {
  uint32_t index;    /* 0 = boot CPU, APs in arrival order */
  uint32_t apic_id;  /* initial APIC ID from CPUID */
  bool x2apic;       /* this CPU's APIC is in x2APIC mode */
  uint64_t fixup;    /* resume address for an expected fault */
  void (*volatile work)(void);
  volatile uint32_t work_done;
  volatile uint32_t interrupts[256];
  volatile uint32_t nmis;
  /* The xAPIC registers as the AP found them after INIT-SIPI, before the
   * runtime touched them (when capture_ap_reset_state is set), indexed by
   * offset >> 4. */
  uint32_t reset_regs[64];
};
/* Set before start_aps() to fill cpu->reset_regs on each AP. */
extern volatile bool capture_ap_reset_state;
struct cpu *this_cpu(void);
struct cpu *cpu_at(unsigned index);
unsigned cpu_count(void);        /* CPUs announced by fw_cfg */
unsigned cpus_online(void);

/* ---- Output, results, exit ---- */
void printf(const char *format, ...) __attribute__((format(printf, 1, 2)));
void vprintf(const char *format, va_list args);
/* One line "PASS name" or "FAIL name: ..." per check. */
bool check(bool ok, const char *name);
bool check_eq(uint64_t got, uint64_t want, const char *name);
bool check_range(uint64_t got, uint64_t low, uint64_t high, const char *name);
void note(const char *format, ...) __attribute__((format(printf, 1, 2)));
void skip(const char *name, const char *why);
unsigned failures(void);
/* Prints the summary and exits through port 0xF4 (0: all passed). */
__attribute__((noreturn)) void finish(void);
__attribute__((noreturn)) void exit_guest(uint32_t value);

/* ---- Port I/O, MSRs, CPUID, TSC, CR8 ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint64_t rdmsr(uint32_t msr) {
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v) {
  __asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
/* Return 0 or the vector raised (13 for #GP). */
int rdmsr_safe(uint32_t msr, uint64_t *value, uint64_t *fixup_slot);
int wrmsr_safe(uint32_t msr, uint64_t value, uint64_t *fixup_slot);
int rdmsr_checked(uint32_t msr, uint64_t *value);
int wrmsr_checked(uint32_t msr, uint64_t value);

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
  __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static inline void write_cr8(uint64_t v) { __asm__ volatile("mov %0, %%cr8" ::"r"(v) : "memory"); }
static inline uint64_t read_cr8(void) {
  uint64_t v;
  __asm__ volatile("mov %%cr8, %0" : "=r"(v));
  return v;
}
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
/* Open an interrupt window: pending interrupts are taken after STI's
 * one-instruction shadow. The OUT to the unused port 0x80 exits to the VMM
 * with IF=1 outside the shadow: on hosts whose KVM never reports an open
 * interrupt window to a user-space irqchip (this project's nested KVM, see
 * toolchain-facts.md), that exit is where the VMM can inject. On hardware
 * and with an in-kernel LAPIC it is just a slow no-op. */
static inline void interrupt_window(void) {
  __asm__ volatile("sti; nop; outb %%al, $0x80; cli" ::: "memory", "eax");
}

/* ---- Time ---- */
uint64_t tsc_khz(void);          /* 0 when the hypervisor does not say */
uint64_t apic_bus_khz(void);     /* LAPIC timer input clock */
uint64_t tsc_after_us(uint64_t us);
void delay_us(uint64_t us);
uint64_t tsc_to_us(uint64_t cycles);

/* ---- Local APIC ---- */
extern volatile uint64_t apic_mmio_base;
uint32_t apic_read(uint32_t offset);         /* MMIO or MSR per this CPU's mode */
void apic_write(uint32_t offset, uint32_t value);
uint32_t mmio_read(uint64_t address);
void mmio_write(uint64_t address, uint32_t value);
void apic_eoi(void);
void apic_software_enable(void);              /* SVR = 0x1FF */
void apic_enable_x2apic(void);                /* this CPU: xAPIC -> x2APIC */
void apic_disable_to_xapic(void);             /* this CPU: x2APIC -> disabled -> xAPIC */
uint32_t apic_id_current(void);               /* ID register, decoded per mode */
/* Send an IPI: `low` is ICR[31:0], `destination` an APIC ID (xAPIC: 8 bits,
 * x2APIC: 32 bits). Waits for the delivery-status bit in xAPIC mode. */
void send_ipi(uint32_t destination, uint32_t low);
bool irr_bit(unsigned vector);
bool isr_bit(unsigned vector);

/* ---- SMP ---- */
/* INIT-SIPI-SIPI to all others; returns the number of APs that came up
 * within `timeout_ms`. */
unsigned start_aps(unsigned timeout_ms);
/* Run `fn` on AP `index` (woken with VECTOR_WAKE) and wait for it. */
bool run_on(unsigned index, void (*fn)(void), unsigned timeout_ms);
/* Wait until `*counter >= want` (interrupts disabled outside short windows
 * when `open_window`); false on timeout. */
bool wait_for(volatile uint32_t *counter, uint32_t want, unsigned timeout_ms, bool open_window);

void test_main(void);

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
