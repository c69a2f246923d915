// SPDX-License-Identifier: MIT
/* The guest test runtime (see runtime.h). */
#include "runtime.h"

extern char cpu_stacks[];
extern char interrupt_stubs[];
extern char trampoline_start[], trampoline_end[];
extern volatile uint32_t next_cpu_index;
extern uint32_t multiboot_info_address, multiboot_magic;

#define COM1 0x3F8
#define DEBUG_EXIT_PORT 0xF4
#define FW_CFG_SELECTOR 0x510
#define FW_CFG_DATA 0x511

volatile uint64_t apic_mmio_base = APIC_DEFAULT_BASE;
volatile bool capture_ap_reset_state;

static volatile uint32_t print_lock;
static volatile uint32_t passed_count, failed_count;
static handler_fn handlers[256];
static unsigned announced_cpus = 1;
static volatile uint32_t online_cpus = 1;
static uint64_t tsc_frequency_khz, apic_frequency_khz;

struct idt_entry {
  uint16_t offset_low, selector;
  uint8_t ist, type;
  uint16_t offset_mid;
  uint32_t offset_high, reserved;
} __attribute__((packed));
static struct idt_entry idt[256] __attribute__((aligned(16)));
static struct {
  uint16_t limit;
  uint64_t base;
} __attribute__((packed)) idt_descriptor;

void *memcpy(void *dst, const void *src, size_t n) {
  char *d = dst;
  const char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  char *d = dst;
  while (n--) *d++ = (char)c;
  return dst;
}

/* ---- Per-CPU ---- */
struct cpu *this_cpu(void) {
  uint64_t rsp;
  __asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
  return (struct cpu *)(rsp & ~(uint64_t)(CPU_STACK_SIZE - 1));
}

struct cpu *cpu_at(unsigned index) { return (struct cpu *)(cpu_stacks + (uint64_t)index * CPU_STACK_SIZE); }
unsigned cpu_count(void) { return announced_cpus; }
unsigned cpus_online(void) { return online_cpus; }

/* ---- Serial and printf ---- */
static void serial_put(char c) {
  while (!(inb(COM1 + 5) & 0x20)) {
  }
  outb(COM1, (uint8_t)c);
}

static void lock_print(void) {
  while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE)) pause();
}
static void unlock_print(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }

static void put_number(uint64_t value, unsigned base, int width, char pad, bool negative) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = "0123456789abcdef"[value % base];
    value /= base;
  } while (value);
  if (negative) digits[n++] = '-';
  while (width-- > n) serial_put(pad);
  while (n--) serial_put(digits[n]);
}

void vprintf(const char *format, va_list args) {
  for (const char *p = format; *p; p++) {
    if (*p != '%') {
      serial_put(*p);
      continue;
    }
    p++;
    char pad = ' ';
    int width = 0, longs = 0;
    if (*p == '0') pad = '0', p++;
    while (*p >= '0' && *p <= '9') width = width * 10 + (*p++ - '0');
    while (*p == 'l') longs++, p++;
    switch (*p) {
      case 'd': {
        int64_t v = longs ? va_arg(args, int64_t) : va_arg(args, int);
        put_number(v < 0 ? -(uint64_t)v : (uint64_t)v, 10, width, pad, v < 0);
        break;
      }
      case 'u': put_number(longs ? va_arg(args, uint64_t) : va_arg(args, unsigned), 10, width, pad, false); break;
      case 'x': put_number(longs ? va_arg(args, uint64_t) : va_arg(args, unsigned), 16, width, pad, false); break;
      case 's': {
        const char *s = va_arg(args, const char *);
        while (*s) serial_put(*s++);
        break;
      }
      case 'c': serial_put((char)va_arg(args, int)); break;
      case '%': serial_put('%'); break;
      default: serial_put('?'); break;
    }
  }
}

void printf(const char *format, ...) {
  va_list args;
  va_start(args, format);
  lock_print();
  vprintf(format, args);
  unlock_print();
  va_end(args);
}

/* ---- Results ---- */
bool check(bool ok, const char *name) {
  if (ok) {
    __atomic_fetch_add(&passed_count, 1, __ATOMIC_RELAXED);
    printf("PASS %s\n", name);
  } else {
    __atomic_fetch_add(&failed_count, 1, __ATOMIC_RELAXED);
    printf("FAIL %s\n", name);
  }
  return ok;
}

bool check_eq(uint64_t got, uint64_t want, const char *name) {
  if (got == want) return check(true, name);
  __atomic_fetch_add(&failed_count, 1, __ATOMIC_RELAXED);
  printf("FAIL %s: got 0x%lx, want 0x%lx\n", name, got, want);
  return false;
}

bool check_range(uint64_t got, uint64_t low, uint64_t high, const char *name) {
  if (got >= low && got <= high) {
    __atomic_fetch_add(&passed_count, 1, __ATOMIC_RELAXED);
    printf("PASS %s (%lu in [%lu, %lu])\n", name, got, low, high);
    return true;
  }
  __atomic_fetch_add(&failed_count, 1, __ATOMIC_RELAXED);
  printf("FAIL %s: %lu outside [%lu, %lu]\n", name, got, low, high);
  return false;
}

void note(const char *format, ...) {
  va_list args;
  va_start(args, format);
  lock_print();
  for (const char *p = "NOTE "; *p; p++) serial_put(*p);
  vprintf(format, args);
  serial_put('\n');
  unlock_print();
  va_end(args);
}

void skip(const char *name, const char *why) { printf("SKIP %s: %s\n", name, why); }

unsigned failures(void) { return failed_count; }

void exit_guest(uint32_t value) {
  for (;;) {
    outl(DEBUG_EXIT_PORT, value);
    cli();
    __asm__ volatile("hlt");
  }
}

void finish(void) {
  printf("SUMMARY passed=%u failed=%u\n", passed_count, failed_count);
  exit_guest(failed_count ? 1 : 0);
}

/* ---- Interrupts ---- */
void set_handler(unsigned vector, handler_fn handler) { handlers[vector & 0xFF] = handler; }

static void unexpected(struct frame *f) {
  __atomic_fetch_add(&failed_count, 1, __ATOMIC_RELAXED);
  printf("FAIL unexpected vector %lu (error 0x%lx) at rip 0x%lx on cpu %u\n", f->vector, f->error,
         f->rip, this_cpu()->index);
}

void trap_dispatch(struct frame *f) {
  struct cpu *c = this_cpu();
  unsigned vector = (unsigned)f->vector;
  if (vector < 32 && vector != VECTOR_NMI) {
    if (c->fixup) {
      f->rip = c->fixup;
      f->rax = vector;
      c->fixup = 0;
      return;
    }
    unexpected(f);
    printf("SUMMARY passed=%u failed=%u\n", passed_count, failed_count);
    exit_guest(1);
  }
  if (vector == VECTOR_NMI) c->nmis++;
  else c->interrupts[vector]++;
  if (handlers[vector]) {
    handlers[vector](f);
  } else if (vector != VECTOR_NMI) {
    unexpected(f);
    if (vector != VECTOR_SPURIOUS) apic_eoi();
  }
}

static void load_idt(void) {
  __asm__ volatile("lidt %0" ::"m"(idt_descriptor));
}

static void setup_idt(void) {
  for (unsigned v = 0; v < 256; v++) {
    uint64_t address = (uint64_t)interrupt_stubs + 16 * v;
    idt[v].offset_low = (uint16_t)address;
    idt[v].selector = 0x08;
    idt[v].ist = 0;
    idt[v].type = 0x8E; /* present, DPL 0, 64-bit interrupt gate */
    idt[v].offset_mid = (uint16_t)(address >> 16);
    idt[v].offset_high = (uint32_t)(address >> 32);
    idt[v].reserved = 0;
  }
  idt_descriptor.limit = sizeof(idt) - 1;
  idt_descriptor.base = (uint64_t)idt;
  load_idt();
}

int rdmsr_checked(uint32_t msr, uint64_t *value) { return rdmsr_safe(msr, value, &this_cpu()->fixup); }
int wrmsr_checked(uint32_t msr, uint64_t value) { return wrmsr_safe(msr, value, &this_cpu()->fixup); }

/* ---- Time ---- */
uint64_t tsc_khz(void) { return tsc_frequency_khz; }
uint64_t apic_bus_khz(void) { return apic_frequency_khz; }

uint64_t tsc_after_us(uint64_t us) {
  uint64_t khz = tsc_frequency_khz ? tsc_frequency_khz : 2000000;
  return rdtsc() + us * khz / 1000;
}

void delay_us(uint64_t us) {
  uint64_t end = tsc_after_us(us);
  while (rdtsc() < end) pause();
}

uint64_t tsc_to_us(uint64_t cycles) {
  uint64_t khz = tsc_frequency_khz ? tsc_frequency_khz : 2000000;
  return cycles * 1000 / khz;
}

static void discover_timing(void) {
  /* The hypervisor timing leaf 0x40000010 (EAX: TSC kHz, EBX: APIC bus
   * kHz), offered by vlapic-kvm and by QEMU with invtsc. */
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (!(c & (1u << 31))) return;
  cpuid(0x40000000, 0, &a, &b, &c, &d);
  if (a < 0x40000010) return;
  cpuid(0x40000010, 0, &a, &b, &c, &d);
  tsc_frequency_khz = a;
  apic_frequency_khz = b;
}

/* ---- fw_cfg ---- */
static unsigned fw_cfg_cpu_count(void) {
  outw(FW_CFG_SELECTOR, 0x0000);
  char signature[4];
  for (int i = 0; i < 4; i++) signature[i] = (char)inb(FW_CFG_DATA);
  if (signature[0] != 'Q' || signature[1] != 'E' || signature[2] != 'M' || signature[3] != 'U') return 1;
  outw(FW_CFG_SELECTOR, 0x0005);
  unsigned count = inb(FW_CFG_DATA);
  count |= (unsigned)inb(FW_CFG_DATA) << 8;
  if (count < 1) count = 1;
  if (count > MAX_CPUS) count = MAX_CPUS;
  return count;
}

/* ---- Local APIC ---- */
uint32_t mmio_read(uint64_t address) { return *(volatile uint32_t *)address; }
void mmio_write(uint64_t address, uint32_t value) { *(volatile uint32_t *)address = value; }

uint32_t apic_read(uint32_t offset) {
  if (this_cpu()->x2apic) return (uint32_t)rdmsr(MSR_X2APIC(offset));
  return mmio_read(apic_mmio_base + offset);
}

void apic_write(uint32_t offset, uint32_t value) {
  if (this_cpu()->x2apic) wrmsr(MSR_X2APIC(offset), value);
  else mmio_write(apic_mmio_base + offset, value);
}

void apic_eoi(void) { apic_write(APIC_EOI, 0); }
void apic_software_enable(void) { apic_write(APIC_SVR, 0x100 | VECTOR_SPURIOUS); }

void apic_enable_x2apic(void) {
  uint64_t base = rdmsr(MSR_APIC_BASE);
  wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD);
  this_cpu()->x2apic = true;
}

void apic_disable_to_xapic(void) {
  uint64_t base = rdmsr(MSR_APIC_BASE);
  wrmsr(MSR_APIC_BASE, base & ~(uint64_t)(APIC_BASE_EN | APIC_BASE_EXTD));
  wrmsr(MSR_APIC_BASE, (base & ~(uint64_t)APIC_BASE_EXTD) | APIC_BASE_EN);
  this_cpu()->x2apic = false;
}

uint32_t apic_id_current(void) {
  uint32_t id = apic_read(APIC_ID);
  return this_cpu()->x2apic ? id : id >> 24;
}

void send_ipi(uint32_t destination, uint32_t low) {
  if (this_cpu()->x2apic) {
    wrmsr(MSR_X2APIC(APIC_ICR), ((uint64_t)destination << 32) | low);
    return;
  }
  mmio_write(apic_mmio_base + APIC_ICR_HIGH, destination << 24);
  mmio_write(apic_mmio_base + APIC_ICR, low);
  for (int i = 0; i < 1000 && (mmio_read(apic_mmio_base + APIC_ICR) & ICR_PENDING); i++) pause();
}

bool irr_bit(unsigned vector) { return (apic_read(APIC_IRR + (vector / 32) * 0x10) >> (vector % 32)) & 1; }
bool isr_bit(unsigned vector) { return (apic_read(APIC_ISR + (vector / 32) * 0x10) >> (vector % 32)) & 1; }

/* ---- SMP ---- */
static void wake_handler(struct frame *f) {
  (void)f;
  apic_eoi();
}

bool wait_for(volatile uint32_t *counter, uint32_t want, unsigned timeout_ms, bool open_window) {
  uint64_t end = tsc_after_us((uint64_t)timeout_ms * 1000);
  while (*counter < want) {
    if (rdtsc() > end) return false;
    if (open_window) interrupt_window();
    pause();
  }
  return true;
}

static void init_cpu(unsigned index) {
  struct cpu *c = this_cpu();
  memset(c, 0, sizeof(*c));
  c->index = index;
  uint32_t a, b, cc, d;
  cpuid(1, 0, &a, &b, &cc, &d);
  c->apic_id = b >> 24;
}

void runtime_ap_main(unsigned index) {
  load_idt();
  init_cpu(index);
  struct cpu *c = this_cpu();
  if (capture_ap_reset_state) {
    /* Every register a read is defined for (not EOI, RRD, reserved). */
    for (uint32_t offset = 0x20; offset <= 0x3E0; offset += 0x10) {
      bool readable = (offset >= 0x20 && offset <= 0x30) || (offset >= 0x80 && offset <= 0xA0) ||
                      (offset >= 0xD0 && offset <= 0x280) || (offset >= 0x2F0 && offset <= 0x390) ||
                      offset == 0x3E0;
      if (readable && offset != APIC_LVT_CMCI) c->reset_regs[offset >> 4] = mmio_read(apic_mmio_base + offset);
    }
  }
  apic_software_enable();
  __atomic_fetch_add(&online_cpus, 1, __ATOMIC_RELEASE);
  /* Idle: run queued work, otherwise halt until an interrupt. CLI before
   * the check and STI;HLT (the STI shadow) close the lost-wakeup race. */
  for (;;) {
    cli();
    void (*fn)(void) = c->work;
    if (fn) {
      c->work = 0;
      fn();
      __atomic_fetch_add(&c->work_done, 1, __ATOMIC_RELEASE);
      continue;
    }
    __asm__ volatile("sti; hlt" ::: "memory");
  }
}

unsigned start_aps(unsigned timeout_ms) {
  unsigned want = cpu_count() - 1;
  if (want == 0) return 0;
  memcpy((void *)(uint64_t)TRAMPOLINE_ADDRESS, trampoline_start, trampoline_end - trampoline_start);
  /* SDM "MP Initialization Example": INIT, 10 ms, SIPI, 200 us, SIPI. */
  send_ipi(0, ICR_ALL_EXCLUDING_SELF | ICR_INIT | ICR_ASSERT);
  delay_us(10000);
  send_ipi(0, ICR_ALL_EXCLUDING_SELF | ICR_STARTUP | TRAMPOLINE_VECTOR);
  delay_us(200);
  send_ipi(0, ICR_ALL_EXCLUDING_SELF | ICR_STARTUP | TRAMPOLINE_VECTOR);
  wait_for(&online_cpus, want + 1, timeout_ms, false);
  return online_cpus - 1;
}

bool run_on(unsigned index, void (*fn)(void), unsigned timeout_ms) {
  if (index == 0) {
    fn();
    return true;
  }
  struct cpu *c = cpu_at(index);
  uint32_t done = c->work_done;
  c->work = fn;
  send_ipi(c->apic_id, ICR_FIXED | ICR_ASSERT | VECTOR_WAKE);
  return wait_for(&c->work_done, done + 1, timeout_ms, false);
}

void runtime_main(void) {
  /* Firmware (QEMU runs SeaBIOS before -kernel) may leave the legacy PIC
   * unmasked behind LINT0 in ExtINT mode; mask it so that its timer does
   * not arrive as vector 8. */
  outb(0x21, 0xFF);
  outb(0xA1, 0xFF);
  setup_idt();
  init_cpu(0);
  set_handler(VECTOR_WAKE, wake_handler);
  discover_timing();
  announced_cpus = fw_cfg_cpu_count();
  printf("START cpus=%u tsc_khz=%lu apic_khz=%lu\n", announced_cpus, tsc_frequency_khz,
         apic_frequency_khz);
  test_main();
  finish();
}
