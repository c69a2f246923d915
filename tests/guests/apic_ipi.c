// SPDX-License-Identifier: MIT
/*
 * Interprocessor interrupts between real vCPUs: SMP start-up of every AP by
 * INIT-SIPI-SIPI, APIC IDs matching CPUID, self IPIs, fixed IPIs both ways,
 * broadcasts, logical destinations (xAPIC flat, x2APIC cluster) and NMI
 * IPIs, in xAPIC and then x2APIC mode. Run with --smp 4 (works with >= 2).
 * SDM Vol. 3A: "MP Initialization Protocol Algorithm", "Issuing
 * Interprocessor Interrupts", "Determining IPI Destination", "x2APIC
 * Logical Destination Mode".
 */
#include "runtime.h"

#define V_SELF 0x40
#define V_FIXED 0x41
#define V_TO_BSP 0x42
#define V_BROADCAST_EXCL 0x43
#define V_BROADCAST_ALL 0x44
#define V_LOGICAL 0x45
#define V_X2_SELF 0x50
#define V_X2_FIXED 0x51
#define V_X2_BROADCAST 0x52
#define V_X2_LOGICAL 0x53
#define V_X2_TO_BSP 0x54

static volatile uint32_t reported_id[MAX_CPUS];
static volatile uint32_t reply_vector;

static void eoi_handler(struct frame *f) {
  (void)f;
  apic_eoi();
}

static void report_id(void) { reported_id[this_cpu()->index] = apic_id_current(); }
static void send_to_bsp(void) { send_ipi(0, ICR_FIXED | ICR_ASSERT | reply_vector); }
static void set_flat_ldr(void) { apic_write(APIC_LDR, 1u << (24 + this_cpu()->index)); }
static void go_x2apic(void) { apic_enable_x2apic(); }

static uint32_t count_on(unsigned cpu, unsigned vector) { return cpu_at(cpu)->interrupts[vector]; }

/* Waits until `cpu` saw `vector` `want` times (the BSP opens interrupt
 * windows while waiting). */
static bool arrived(unsigned cpu, unsigned vector, uint32_t want) {
  return wait_for(&cpu_at(cpu)->interrupts[vector], want, 1000, cpu == 0);
}

static void settle(void) {
  /* Give stray deliveries time to show up before checking "not delivered". */
  uint64_t end = tsc_after_us(20000);
  while (rdtsc() < end) interrupt_window();
}

static void name_check(bool ok, const char *what, unsigned cpu) {
  char name[96];
  unsigned n = 0;
  for (const char *p = what; *p && n < sizeof(name) - 8; p++) name[n++] = *p;
  name[n++] = ' ';
  name[n++] = 'c';
  name[n++] = 'p';
  name[n++] = 'u';
  if (cpu >= 10) name[n++] = (char)('0' + cpu / 10);
  name[n++] = (char)('0' + cpu % 10);
  name[n] = 0;
  check(ok, name);
}

static void xapic_phase(unsigned cpus) {
  apic_software_enable();
  /* Self IPI via the shorthand. */
  send_ipi(0, ICR_SELF | ICR_FIXED | ICR_ASSERT | V_SELF);
  check(arrived(0, V_SELF, 1), "xAPIC self IPI (shorthand self) delivered");

  /* Fixed, physical destination, to each AP; and each AP back to the BSP. */
  for (unsigned i = 1; i < cpus; i++) {
    send_ipi(cpu_at(i)->apic_id, ICR_FIXED | ICR_ASSERT | V_FIXED);
    name_check(arrived(i, V_FIXED, 1), "xAPIC fixed IPI BSP -> AP", i);
    reply_vector = V_TO_BSP;
    run_on(i, send_to_bsp, 1000);
    name_check(arrived(0, V_TO_BSP, i), "xAPIC fixed IPI AP -> BSP from", i);
  }

  /* All excluding self: every AP once, not the BSP. */
  send_ipi(0, ICR_ALL_EXCLUDING_SELF | ICR_FIXED | ICR_ASSERT | V_BROADCAST_EXCL);
  for (unsigned i = 1; i < cpus; i++) name_check(arrived(i, V_BROADCAST_EXCL, 1), "xAPIC all-excluding-self reached", i);
  settle();
  check_eq(count_on(0, V_BROADCAST_EXCL), 0, "xAPIC all-excluding-self skipped the sender");

  /* Physical destination 0xFF is a broadcast, sender included. */
  send_ipi(0xFF, ICR_FIXED | ICR_ASSERT | V_BROADCAST_ALL);
  for (unsigned i = 0; i < cpus; i++) name_check(arrived(i, V_BROADCAST_ALL, 1), "xAPIC destination 0xFF reached", i);

  /* Logical flat model: LDR bit per CPU; a mask picks the odd CPUs. */
  for (unsigned i = 0; i < cpus; i++) run_on(i, set_flat_ldr, 1000);
  uint32_t mask = 0;
  for (unsigned i = 1; i < cpus; i += 2) mask |= 1u << i;
  send_ipi(mask, ICR_LOGICAL | ICR_FIXED | ICR_ASSERT | V_LOGICAL);
  for (unsigned i = 1; i < cpus; i += 2) name_check(arrived(i, V_LOGICAL, 1), "xAPIC logical flat reached", i);
  settle();
  for (unsigned i = 0; i < cpus; i += 2) name_check(count_on(i, V_LOGICAL) == 0, "xAPIC logical flat skipped", i);

  /* NMI IPI: not a vector, counted by the NMI handler. */
  uint32_t before = cpu_at(1)->nmis;
  send_ipi(cpu_at(1)->apic_id, ICR_NMI | ICR_ASSERT);
  check(wait_for(&cpu_at(1)->nmis, before + 1, 1000, false), "xAPIC NMI IPI delivered to AP 1");
  check_eq(count_on(1, VECTOR_NMI), 0, "NMI did not arrive as a fixed vector");
}

static void x2apic_phase(unsigned cpus) {
  for (unsigned i = 1; i < cpus; i++) run_on(i, go_x2apic, 1000);
  apic_enable_x2apic();
  for (unsigned i = 0; i < cpus; i++) {
    run_on(i, report_id, 1000);
    name_check(reported_id[i] == cpu_at(i)->apic_id, "x2APIC ID matches CPUID on", i);
  }

  /* SELF IPI register (MSR 0x83F). */
  wrmsr(0x83F, V_X2_SELF);
  check(arrived(0, V_X2_SELF, 1), "x2APIC SELF IPI MSR delivered");

  for (unsigned i = 1; i < cpus; i++) {
    send_ipi(cpu_at(i)->apic_id, ICR_FIXED | ICR_ASSERT | V_X2_FIXED);
    name_check(arrived(i, V_X2_FIXED, 1), "x2APIC fixed IPI BSP -> AP", i);
    reply_vector = V_X2_TO_BSP;
    run_on(i, send_to_bsp, 1000);
    name_check(arrived(0, V_X2_TO_BSP, i), "x2APIC fixed IPI AP -> BSP from", i);
  }

  /* Destination 0xFFFFFFFF is a broadcast in x2APIC mode. */
  send_ipi(0xFFFFFFFF, ICR_FIXED | ICR_ASSERT | V_X2_BROADCAST);
  for (unsigned i = 0; i < cpus; i++) name_check(arrived(i, V_X2_BROADCAST, 1), "x2APIC destination 0xFFFFFFFF reached", i);

  /* Logical x2APIC (cluster ID << 16 | bit): IDs 0-15 form cluster 0. */
  uint32_t bits = 0;
  for (unsigned i = 1; i < cpus; i += 2) bits |= 1u << (cpu_at(i)->apic_id & 0xF);
  send_ipi(bits, ICR_LOGICAL | ICR_FIXED | ICR_ASSERT | V_X2_LOGICAL);
  for (unsigned i = 1; i < cpus; i += 2) name_check(arrived(i, V_X2_LOGICAL, 1), "x2APIC logical cluster reached", i);
  settle();
  for (unsigned i = 0; i < cpus; i += 2) name_check(count_on(i, V_X2_LOGICAL) == 0, "x2APIC logical cluster skipped", i);

  uint32_t before = cpu_at(cpus - 1)->nmis;
  send_ipi(cpu_at(cpus - 1)->apic_id, ICR_NMI | ICR_ASSERT);
  check(wait_for(&cpu_at(cpus - 1)->nmis, before + 1, 1000, false), "x2APIC NMI IPI delivered to the last AP");
}

void test_main(void) {
  unsigned cpus = cpu_count();
  if (cpus < 2) {
    check(false, "apic-ipi needs at least 2 vCPUs (--smp 4)");
    return;
  }
  unsigned vectors[] = {V_SELF, V_FIXED, V_TO_BSP, V_BROADCAST_EXCL, V_BROADCAST_ALL, V_LOGICAL,
                        V_X2_SELF, V_X2_FIXED, V_X2_BROADCAST, V_X2_LOGICAL, V_X2_TO_BSP};
  for (unsigned i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) set_handler(vectors[i], eoi_handler);

  unsigned started = start_aps(2000);
  check_eq(started, cpus - 1, "INIT-SIPI-SIPI started every AP");
  if (started != cpus - 1) return;
  bool distinct = true;
  for (unsigned i = 0; i < cpus; i++) {
    run_on(i, report_id, 1000);
    name_check(reported_id[i] == cpu_at(i)->apic_id, "xAPIC ID register matches CPUID on", i);
    for (unsigned j = 0; j < i; j++) distinct &= cpu_at(i)->apic_id != cpu_at(j)->apic_id;
  }
  check(distinct, "every vCPU has its own APIC ID");

  xapic_phase(cpus);
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (c & (1u << 21)) x2apic_phase(cpus);
  else skip("x2APIC IPIs", "CPUID hides x2APIC");
}
