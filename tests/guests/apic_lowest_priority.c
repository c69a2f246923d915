// SPDX-License-Identifier: MIT
/*
 * Lowest-priority IPIs (ICR delivery mode 001) between real vCPUs, in xAPIC
 * flat logical mode and then x2APIC cluster logical mode. SDM Vol. 3A
 * "Lowest Priority Delivery Mode", "Determining IPI Destination" (logical
 * destination mode), "Processor Priority Register (PPR)", "Error Handling".
 *
 * The SDM leaves the choice among the candidates model-specific; this
 * kernel checks vlapicd's documented policy (server/vm/README.md, "Lowest
 * priority: our policy vs KVM's"): the matching hardware- and
 * software-enabled LAPICs with the lowest PPR are the candidates, ties go to
 * a fair rotation (over k messages each of n tied candidates gets floor(k/n)
 * or ceil(k/n)). Priority is PPR, so an interrupt in service counts as well
 * as TPR. KVM's in-kernel LAPIC hashes the vector instead, so this
 * kernel is not one of compare-qemu.sh's architectural checks.
 *
 * Each check: the BSP has the APs set their TPR (each reports its PPR back
 * through shared memory when done), then sends lowest-priority IPIs to a
 * logical destination set one at a time, waiting until some vCPU has
 * handled and EOIed each one, and checks which vCPU took it. The handler
 * counts after its EOI, so when the BSP sends the next IPI every PPR is
 * back to its TPR. Run with --smp 4 (works with 3 to 8 vCPUs).
 */
#include "runtime.h"

#define MAX_LOGICAL_CPUS 8 /* xAPIC flat model: one LDR bit per CPU */
#define FIRST_XAPIC_VECTOR 0x80
#define FIRST_X2APIC_VECTOR 0xA0
#define VECTORS_PER_MODE 0x20
#define V_ILLEGAL 0x0A   /* vectors 0-15 are illegal in fixed and lowest-priority messages */
#define ESR_SEND_ILLEGAL_VECTOR (1u << 5)
#define IPI_TIMEOUT_MS 1000

typedef uint32_t cpu_set; /* bit i: the CPU with runtime index i */

/* Written by each CPU for the BSP. */
static volatile uint32_t handled[MAX_LOGICAL_CPUS][256]; /* IPIs handled (counted after EOI) */
static volatile uint32_t handled_total[256];
static volatile uint32_t logical_id[MAX_LOGICAL_CPUS];   /* LDR as each CPU reads it */
static volatile uint32_t reported_ppr[MAX_LOGICAL_CPUS];
static volatile uint32_t reported_esr[MAX_LOGICAL_CPUS];
/* Written by the BSP for each CPU. */
static volatile uint32_t wanted_tpr[MAX_LOGICAL_CPUS];

struct mode {
  const char *name; /* "xAPIC flat" or "x2APIC cluster" */
  unsigned cpus;
  unsigned next_vector; /* each scenario its own vector: no leftovers across scenarios */
};

/* ---- Check names (no snprintf in the runtime) ---- */
struct text {
  char chars[160];
  unsigned length;
};

static void text_add(struct text *t, const char *s) {
  for (; *s && t->length < sizeof(t->chars) - 1; s++) t->chars[t->length++] = *s;
  t->chars[t->length] = 0;
}

static void text_add_number(struct text *t, unsigned value) {
  char digits[12];
  unsigned n = 0;
  do {
    digits[n++] = (char)('0' + value % 10);
    value /= 10;
  } while (value);
  while (n && t->length < sizeof(t->chars) - 1) t->chars[t->length++] = digits[--n];
  t->chars[t->length] = 0;
}

/* "<prefix><number>" */
static const char *numbered(struct text *t, const char *prefix, unsigned number) {
  t->length = 0;
  text_add(t, prefix);
  text_add_number(t, number);
  return t->chars;
}

/* "<mode>: <scenario>: <what>", followed by " cpu<N>" unless cpu < 0. */
static const char *label(const struct mode *m, const char *scenario, const char *what, int cpu) {
  static struct text name;
  name.length = 0;
  text_add(&name, m->name);
  text_add(&name, ": ");
  text_add(&name, scenario);
  text_add(&name, ": ");
  text_add(&name, what);
  if (cpu >= 0) {
    text_add(&name, " cpu");
    text_add_number(&name, (unsigned)cpu);
  }
  return name.chars;
}

/* ---- Work run on each CPU (run_on) ---- */
static void count_handled(struct frame *f) {
  unsigned vector = (unsigned)f->vector;
  apic_eoi();
  /* Counted after the EOI: once the BSP sees it, this CPU's PPR is its TPR
   * again for the next arbitration. */
  handled[this_cpu()->index][vector]++;
  __atomic_fetch_add(&handled_total[vector], 1, __ATOMIC_RELEASE);
}

static void apply_wanted_tpr(void) {
  unsigned i = this_cpu()->index;
  apic_write(APIC_TPR, wanted_tpr[i]);
  reported_ppr[i] = apic_read(APIC_PPR);
}

/* xAPIC flat model (DFR 0xFFFFFFFF), LDR bit 24 + index. */
static void become_flat_logical(void) {
  unsigned i = this_cpu()->index;
  apic_write(APIC_DFR, 0xFFFFFFFF);
  apic_write(APIC_LDR, 1u << (24 + i));
  logical_id[i] = apic_read(APIC_LDR);
}

/* x2APIC: LDR is read-only, derived from the x2APIC ID. */
static void become_x2apic(void) {
  apic_enable_x2apic();
  logical_id[this_cpu()->index] = apic_read(APIC_LDR);
}

/* SDM "Error Handling": a write latches the errors collected since the
 * previous write; two writes leave the register and the collector empty. */
static void clear_esr(void) {
  apic_write(APIC_ESR, 0);
  apic_write(APIC_ESR, 0);
}

static void latch_esr(void) {
  apic_write(APIC_ESR, 0);
  reported_esr[this_cpu()->index] = apic_read(APIC_ESR);
}

static bool on_every_cpu(unsigned cpus, void (*fn)(void)) {
  bool ok = true;
  for (unsigned i = 0; i < cpus; i++) ok &= run_on(i, fn, IPI_TIMEOUT_MS);
  return ok;
}

/* ---- Destinations ---- */
static bool is_x2apic_mode(void) { return this_cpu()->x2apic; }

/* The logical destination addressing exactly the CPUs in `set` (by the
 * LDRs they reported); false when one message cannot (x2APIC: the CPUs
 * must share a cluster). */
static bool destination_of(cpu_set set, unsigned cpus, uint32_t *destination) {
  uint32_t bits = 0, cluster = 0;
  bool first = true;
  for (unsigned i = 0; i < cpus; i++) {
    if (!(set & (1u << i))) continue;
    if (!is_x2apic_mode()) {
      bits |= logical_id[i] >> 24;
      continue;
    }
    if (!first && logical_id[i] >> 16 != cluster) return false;
    cluster = logical_id[i] >> 16;
    bits |= logical_id[i] & 0xFFFF;
    first = false;
  }
  *destination = is_x2apic_mode() ? (cluster << 16) | bits : bits;
  return true;
}

/* A logical destination no CPU's LDR matches (and not a broadcast). */
static bool empty_destination(unsigned cpus, uint32_t *destination) {
  if (!is_x2apic_mode()) {
    uint32_t used = 0;
    for (unsigned i = 0; i < cpus; i++) used |= logical_id[i] >> 24;
    *destination = ~used & 0xFF;
    return *destination != 0;
  }
  uint32_t highest_cluster = 0;
  for (unsigned i = 0; i < cpus; i++) {
    if (logical_id[i] >> 16 > highest_cluster) highest_cluster = logical_id[i] >> 16;
  }
  if (highest_cluster >= 0xFFFE) return false;
  *destination = ((highest_cluster + 1) << 16) | 0xFFFF;
  return true;
}

static void send_lowest_priority(uint32_t destination, unsigned vector) {
  send_ipi(destination, ICR_LOWEST | ICR_LOGICAL | ICR_ASSERT | vector);
}

/* Give stray or duplicate deliveries time to show up before counting. */
static void settle(void) {
  uint64_t end = tsc_after_us(20000);
  while (rdtsc() < end) interrupt_window();
}

#define NOBODY (-1)
#define SEVERAL (-2)

/* Sends one lowest-priority IPI and returns the index of the CPU that
 * handled it: NOBODY within the timeout, SEVERAL when more than one did. */
static int send_one(uint32_t destination, unsigned vector, unsigned cpus) {
  uint32_t before[MAX_LOGICAL_CPUS];
  for (unsigned i = 0; i < cpus; i++) before[i] = handled[i][vector];
  uint32_t want = handled_total[vector] + 1;
  send_lowest_priority(destination, vector);
  /* The BSP opens interrupt windows while waiting: it may be the target. */
  if (!wait_for(&handled_total[vector], want, IPI_TIMEOUT_MS, true)) return NOBODY;
  int taker = NOBODY;
  for (unsigned i = 0; i < cpus; i++) {
    uint32_t got = handled[i][vector] - before[i];
    if (got == 0) continue;
    if (got > 1 || taker != NOBODY) return SEVERAL;
    taker = (int)i;
  }
  return taker;
}

static unsigned members(cpu_set set) {
  unsigned n = 0;
  for (; set; set &= set - 1) n++;
  return n;
}

/* Each CPU sets its TPR to tprs[i] and reports its PPR when done. */
static bool set_tprs(const struct mode *m, const char *scenario, const uint8_t *tprs) {
  for (unsigned i = 0; i < m->cpus; i++) wanted_tpr[i] = tprs[i];
  bool ready = on_every_cpu(m->cpus, apply_wanted_tpr);
  for (unsigned i = 0; i < m->cpus; i++) ready &= reported_ppr[i] == tprs[i];
  return check(ready, label(m, scenario, "every vCPU set its TPR and reports PPR = TPR", NOBODY));
}

/* Sends `count` lowest-priority IPIs to the logical destination of `set`
 * and checks that each was taken by exactly one CPU, always one of
 * `winners`, the winners taking turns: after k IPIs each of the n winners
 * has floor(k/n) or ceil(k/n) of them (with one winner: all of them). */
static void expect_winners(struct mode *m, const char *scenario, cpu_set set, unsigned count, cpu_set winners) {
  unsigned cpus = m->cpus;
  unsigned vector = m->next_vector++;
  uint32_t destination = 0;
  if (!check(destination_of(set, cpus, &destination), label(m, scenario, "one logical destination", NOBODY)))
    return;

  unsigned n = members(winners);
  unsigned strays = 0, fairness_breaks = 0;
  uint32_t start[MAX_LOGICAL_CPUS];
  for (unsigned i = 0; i < cpus; i++) start[i] = handled[i][vector];
  for (unsigned k = 1; k <= count; k++) {
    int taker = send_one(destination, vector, cpus);
    if (taker < 0 || !(winners & (1u << taker))) {
      if (strays++ == 0) note("%s: %s: IPI %u of %u taken by %d (destination 0x%x)", m->name, scenario, k, count,
                              taker, destination);
      continue;
    }
    for (unsigned i = 0; i < cpus; i++) {
      if (!(winners & (1u << i))) continue;
      uint32_t got = handled[i][vector] - start[i];
      if (got < k / n || got > (k + n - 1) / n) {
        if (fairness_breaks++ == 0) note("%s: %s: after %u IPIs cpu%u has %u", m->name, scenario, k, i, got);
      }
    }
  }
  check_eq(strays, 0, label(m, scenario, "each IPI taken by one vCPU of the lowest priority in the set", NOBODY));
  if (n > 1) check_eq(fairness_breaks, 0, label(m, scenario, "tied vCPUs take turns (floor/ceil of k/n after each IPI)", NOBODY));
  settle();
  uint32_t total = 0;
  for (unsigned i = 0; i < cpus; i++) {
    uint32_t got = handled[i][vector] - start[i];
    total += got;
    if (!(winners & (1u << i))) check_eq(got, 0, label(m, scenario, "took none", (int)i));
    else if (n > 1) check_range(got, count / n, (count + n - 1) / n, label(m, scenario, "took its share", (int)i));
    else check_eq(got, count, label(m, scenario, "took every one", (int)i));
  }
  check_eq(total, count, label(m, scenario, "delivered exactly once each in total", NOBODY));
}

static void arbitrate(struct mode *m, const char *scenario, cpu_set set, const uint8_t *tprs, unsigned count,
                      cpu_set winners) {
  if (set_tprs(m, scenario, tprs)) expect_winners(m, scenario, set, count, winners);
}

/* TPRs: the BSP 0 (outside the AP set), cpu1 0, cpu2 0x10, the rest 0x30:
 * by TPR cpu1 would win among the APs, and cpu2 is next. */
static bool set_cpu1_lowest_tprs(struct mode *m, const char *scenario) {
  uint8_t tprs[MAX_LOGICAL_CPUS];
  tprs[0] = 0;
  for (unsigned i = 1; i < m->cpus; i++) tprs[i] = i == 1 ? 0x00 : i == 2 ? 0x10 : 0x30;
  return set_tprs(m, scenario, tprs);
}

static volatile uint32_t parked, release_parked;

/* Runs on an AP (interrupts disabled): software-disables its APIC and
 * stays so until the BSP releases it. */
static void park_software_disabled(void) {
  apic_write(APIC_SVR, VECTOR_SPURIOUS); /* bit 8 clear */
  __atomic_store_n(&parked, 1, __ATOMIC_RELEASE);
  while (!__atomic_load_n(&release_parked, __ATOMIC_ACQUIRE)) pause();
  apic_software_enable();
}

/* Only software-enabled LAPICs are candidates (server/vm/README.md; SDM
 * 11.4.7.2: a software-disabled LAPIC accepts no fixed interrupt): cpu1,
 * with the lowest TPR but software-disabled, is passed over. */
static void software_disabled_member(struct mode *m) {
  const char *scenario = "cpu1 software-disabled, lowest TPR";
  unsigned cpus = m->cpus;
  if (!set_cpu1_lowest_tprs(m, scenario)) return;
  /* run_on() cannot be used: it waits for the work to finish, and a
   * software-disabled APIC does not take the runtime's wake-up vector. */
  struct cpu *c = cpu_at(1);
  uint32_t done = c->work_done;
  parked = 0;
  release_parked = 0;
  c->work = park_software_disabled;
  send_ipi(c->apic_id, ICR_FIXED | ICR_ASSERT | VECTOR_WAKE);
  if (!check(wait_for(&parked, 1, IPI_TIMEOUT_MS, false), label(m, scenario, "cpu1 software-disabled", NOBODY)))
    return;
  expect_winners(m, scenario, (1u << cpus) - 2, 3, 1u << 2);
  __atomic_store_n(&release_parked, 1, __ATOMIC_RELEASE);
  check(wait_for(&c->work_done, done + 1, IPI_TIMEOUT_MS, false), label(m, scenario, "cpu1 software-enabled again", NOBODY));
}

#define V_HOLD 0xE0 /* held in service on cpu1: its PPR class becomes 0xE */
static volatile uint32_t holding, release_hold, held_ppr;

/* cpu1's handler for V_HOLD (interrupts stay disabled in it): reports PPR
 * and keeps the vector in service until the BSP releases it. */
static void hold_in_service(struct frame *f) {
  (void)f;
  held_ppr = apic_read(APIC_PPR);
  __atomic_store_n(&holding, 1, __ATOMIC_RELEASE);
  while (!__atomic_load_n(&release_hold, __ATOMIC_ACQUIRE)) pause();
  apic_eoi();
  __atomic_store_n(&holding, 0, __ATOMIC_RELEASE);
}

/* Arbitration goes by processor priority, not task priority: PPR =
 * max(TPR, the in-service class) (SDM "Processor Priority Register (PPR)"),
 * so cpu1, with the lowest TPR but a higher-class interrupt in service, is
 * passed over for the next lowest. */
static void in_service_member(struct mode *m) {
  const char *scenario = "cpu1 lowest TPR, interrupt in service";
  unsigned cpus = m->cpus;
  if (!set_cpu1_lowest_tprs(m, scenario)) return;
  holding = 0;
  release_hold = 0;
  held_ppr = 0;
  /* cpu1 idles in STI;HLT and takes the fixed IPI at once. */
  send_ipi(cpu_at(1)->apic_id, ICR_FIXED | ICR_ASSERT | V_HOLD);
  if (!check(wait_for(&holding, 1, IPI_TIMEOUT_MS, false), label(m, scenario, "cpu1 holds 0xE0 in service", NOBODY)))
    return;
  check_eq(held_ppr, V_HOLD & 0xF0, label(m, scenario, "cpu1 PPR = the in-service class", NOBODY));
  expect_winners(m, scenario, (1u << cpus) - 2, 3, 1u << 2);
  __atomic_store_n(&release_hold, 1, __ATOMIC_RELEASE);
  uint64_t end = tsc_after_us((uint64_t)IPI_TIMEOUT_MS * 1000);
  while (__atomic_load_n(&holding, __ATOMIC_ACQUIRE) && rdtsc() < end) pause();
  check(!holding, label(m, scenario, "cpu1 ends the held interrupt (EOI)", NOBODY));
}

/* A lowest-priority IPI to a logical destination nobody matches is
 * accepted by no one (SDM "Lowest Priority Delivery Mode": the message
 * goes to the matching processors only) and the sender logs nothing: the
 * accept errors (ESR bits 2/3) are P6 and Pentium only (SDM "Error
 * Handling"; lapic-facts.md lists bits 5-7, which our core implements).
 * With an illegal vector the sender logs Send Illegal Vector (bit 5) and,
 * nobody receiving it, no CPU logs Receive Illegal Vector. */
static void empty_set(struct mode *m) {
  const char *scenario = "lowest priority to an empty logical set";
  unsigned cpus = m->cpus;
  unsigned vector = m->next_vector++;
  uint8_t tprs[MAX_LOGICAL_CPUS] = {0};
  for (unsigned i = 0; i < cpus; i++) wanted_tpr[i] = tprs[i];
  on_every_cpu(cpus, apply_wanted_tpr);
  uint32_t destination = 0;
  if (!empty_destination(cpus, &destination)) {
    skip(label(m, scenario, "", NOBODY), "every logical ID is in use");
    return;
  }
  note("%s: empty destination 0x%x", m->name, destination);
  on_every_cpu(cpus, clear_esr);
  uint32_t before = handled_total[vector];
  send_lowest_priority(destination, vector);
  if (!is_x2apic_mode()) {
    check_eq(apic_read(APIC_ICR) & ICR_PENDING, 0, label(m, scenario, "ICR delivery status idle", NOBODY));
  }
  settle();
  check_eq(handled_total[vector] - before, 0, label(m, scenario, "nobody took it", NOBODY));
  latch_esr();
  check_eq(reported_esr[0], 0, label(m, scenario, "sender ESR stays 0 (no accept error)", NOBODY));

  send_lowest_priority(destination, V_ILLEGAL);
  settle();
  on_every_cpu(cpus, latch_esr);
  check_eq(reported_esr[0], ESR_SEND_ILLEGAL_VECTOR,
           label(m, scenario, "illegal vector: sender ESR = Send Illegal Vector only", NOBODY));
  for (unsigned i = 1; i < cpus; i++) {
    check_eq(reported_esr[i], 0, label(m, scenario, "illegal vector: no receiver logged an error", (int)i));
  }
}

static void run_scenarios(struct mode *m) {
  unsigned cpus = m->cpus;
  cpu_set all = (1u << cpus) - 1;
  cpu_set aps = all & ~1u;
  unsigned last = cpus - 1;
  uint8_t tprs[MAX_LOGICAL_CPUS];

  /* Distinct TPRs: the AP with the lowest one takes every IPI; the BSP,
   * with TPR 0 but outside the set, none. Each AP in turn is the lowest. */
  for (unsigned lowest = 1; lowest < cpus; lowest++) {
    tprs[0] = 0;
    for (unsigned i = 1; i < cpus; i++) tprs[i] = (uint8_t)(0x10 * (1 + (i + cpus - 1 - lowest) % (cpus - 1)));
    struct text scenario;
    arbitrate(m, numbered(&scenario, "distinct TPRs, lowest cpu", lowest), aps, tprs, 3, 1u << lowest);
  }

  /* Two APs tie for the lowest TPR: they alternate; the higher one (and
   * the BSP outside the set) take none. */
  tprs[0] = 0;
  for (unsigned i = 1; i < cpus; i++) tprs[i] = i <= 2 ? 0x20 : 0x40;
  arbitrate(m, "cpu1 and cpu2 tie lowest", aps, tprs, 4, (1u << 1) | (1u << 2));

  /* A CPU outside the destination set never takes one, however idle:
   * the set is cpu2.., cpu1 and the BSP have TPR 0. */
  tprs[0] = 0;
  tprs[1] = 0;
  for (unsigned i = 2; i < cpus; i++) tprs[i] = i == last ? 0x20 : 0x30;
  arbitrate(m, "set without cpu1, cpu1 idlest", aps & ~(1u << 1), tprs, 3, 1u << last);

  /* The BSP in the set: it takes them when its priority is lowest... */
  tprs[0] = 0;
  for (unsigned i = 1; i < cpus; i++) tprs[i] = 0x10;
  arbitrate(m, "BSP included and lowest", all, tprs, 3, 1u << 0);
  /* ...and none when it is not. */
  tprs[0] = 0x40;
  for (unsigned i = 1; i < cpus; i++) tprs[i] = i == 1 ? 0x10 : 0x30;
  arbitrate(m, "BSP included, not lowest", all, tprs, 3, 1u << 1);

  /* Equal TPRs: many IPIs, each delivered once, the APs taking turns. */
  tprs[0] = 0;
  for (unsigned i = 1; i < cpus; i++) tprs[i] = 0x20;
  arbitrate(m, "equal TPRs", aps, tprs, 10 * (cpus - 1), aps);

  software_disabled_member(m);
  in_service_member(m);
  empty_set(m);

  for (unsigned i = 0; i < cpus; i++) wanted_tpr[i] = 0;
  on_every_cpu(cpus, apply_wanted_tpr);
}

void test_main(void) {
  unsigned cpus = cpu_count();
  if (cpus < 3 || cpus > MAX_LOGICAL_CPUS) {
    check(false, "apic-lowest-priority needs 3 to 8 vCPUs (--smp 4)");
    return;
  }
  for (unsigned v = FIRST_XAPIC_VECTOR; v < FIRST_X2APIC_VECTOR + VECTORS_PER_MODE; v++) set_handler(v, count_handled);
  set_handler(V_HOLD, hold_in_service);

  unsigned started = start_aps(2000);
  check_eq(started, cpus - 1, "INIT-SIPI-SIPI started every AP");
  if (started != cpus - 1) return;
  apic_software_enable();

  struct mode xapic = {"xAPIC flat", cpus, FIRST_XAPIC_VECTOR};
  bool ok = on_every_cpu(cpus, become_flat_logical);
  for (unsigned i = 0; i < cpus; i++) ok &= logical_id[i] == 1u << (24 + i);
  if (check(ok, "xAPIC flat: every vCPU set DFR flat and its own LDR bit")) run_scenarios(&xapic);

  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (!(c & (1u << 21))) {
    skip("x2APIC cluster lowest priority", "CPUID hides x2APIC");
    return;
  }
  struct mode x2apic = {"x2APIC cluster", cpus, FIRST_X2APIC_VECTOR};
  ok = on_every_cpu(cpus, become_x2apic);
  /* SDM "Logical Destination Mode in x2APIC Mode": LDR = cluster (ID[19:4])
   * << 16 | 1 << ID[3:0]. */
  for (unsigned i = 0; i < cpus; i++) {
    uint32_t id = cpu_at(i)->apic_id;
    ok &= logical_id[i] == (((id >> 4) << 16) | (1u << (id & 0xF)));
  }
  if (check(ok, "x2APIC cluster: every vCPU's LDR is derived from its x2APIC ID")) run_scenarios(&x2apic);
}
