/*
 * The LAPIC timer from inside a guest: one-shot, periodic and TSC-deadline
 * interrupts arrive never early, not too late and in the right count;
 * masked and stopped timers raise nothing; an expired TSC deadline fires at
 * once; the divider scales the period. SDM Vol. 3A "APIC Timer",
 * "TSC-Deadline Mode".
 *
 * Lateness bounds are generous (the host is shared and nested); earliness
 * is checked exactly against the guest TSC, which is the point: the guest's
 * clock and the LAPIC's must agree.
 */
#include "runtime.h"

#define V_TIMER 0x60
#define MAX_LATE_US 30000  /* a loaded, nested host may be late; never early */
#define DIVIDE_BY_1 0xB
#define DIVIDE_BY_2 0x0

static volatile uint32_t ticks;
static volatile uint64_t tick_tsc[64];

static void timer_handler(struct frame *f) {
  (void)f;
  uint64_t now = rdtsc();
  if (ticks < 64) tick_tsc[ticks] = now;
  ticks++;
  apic_eoi();
}

static uint64_t us_to_ticks(uint64_t us) { return us * (apic_bus_khz() ? apic_bus_khz() : 1000000) / 1000; }

static void reset_ticks(void) {
  ticks = 0;
  for (unsigned i = 0; i < 64; i++) tick_tsc[i] = 0;
}

/* Keep interrupt windows open for `us` microseconds. */
static void run_for_us(uint64_t us) {
  uint64_t end = tsc_after_us(us);
  while (rdtsc() < end) interrupt_window();
}

static bool timing_known(void) { return tsc_khz() != 0; }

static void check_arrival(uint64_t start_tsc, uint64_t want_us, const char *name) {
  if (!timing_known()) {
    skip(name, "no TSC frequency from the hypervisor");
    return;
  }
  uint64_t elapsed_us = tsc_to_us(tick_tsc[0] - start_tsc);
  check_range(elapsed_us, want_us, want_us + MAX_LATE_US, name);
}

static void one_shot(void) {
  reset_ticks();
  apic_write(APIC_TIMER_DIVIDE, DIVIDE_BY_1);
  apic_write(APIC_LVT_TIMER, TIMER_ONE_SHOT | V_TIMER);
  uint64_t start = rdtsc();
  apic_write(APIC_TIMER_INITIAL, (uint32_t)us_to_ticks(2000));
  check(wait_for(&ticks, 1, 1000, true), "one-shot: interrupt arrives");
  check_arrival(start, 2000, "one-shot 2 ms: on time (us)");
  run_for_us(5000);
  check_eq(ticks, 1, "one-shot: exactly one interrupt");
  check_eq(apic_read(APIC_TIMER_CURRENT), 0, "one-shot: current count 0 after expiry");
}

static void one_shot_divided(void) {
  reset_ticks();
  apic_write(APIC_TIMER_DIVIDE, DIVIDE_BY_2);
  apic_write(APIC_LVT_TIMER, TIMER_ONE_SHOT | V_TIMER);
  uint64_t start = rdtsc();
  apic_write(APIC_TIMER_INITIAL, (uint32_t)us_to_ticks(1000));
  check(wait_for(&ticks, 1, 1000, true), "divide by 2: interrupt arrives");
  check_arrival(start, 2000, "divide by 2: 1 ms of ticks takes 2 ms (us)");
  apic_write(APIC_TIMER_DIVIDE, DIVIDE_BY_1);
}

static void periodic(void) {
  reset_ticks();
  apic_write(APIC_LVT_TIMER, TIMER_PERIODIC | V_TIMER);
  uint64_t start = rdtsc();
  apic_write(APIC_TIMER_INITIAL, (uint32_t)us_to_ticks(2000));
  check(wait_for(&ticks, 10, 2000, true), "periodic: ten interrupts arrive");
  apic_write(APIC_TIMER_INITIAL, 0);
  /* A tick accepted into IRR before the stop is still delivered. */
  interrupt_window();
  uint32_t seen = ticks;
  if (timing_known()) {
    /* The k-th tick is due at k periods: never before, and the ten ticks
     * may not take longer than ten periods plus the lateness bound. */
    bool never_early = true;
    for (unsigned k = 0; k < 10 && k < 64; k++) {
      never_early &= tsc_to_us(tick_tsc[k] - start) >= 2000 * (k + 1);
    }
    check(never_early, "periodic: no tick before its period boundary");
    check_range(tsc_to_us(tick_tsc[9] - start), 20000, 20000 + MAX_LATE_US, "periodic: ten 2 ms periods (us)");
  }
  run_for_us(6000);
  check_eq(ticks, seen, "periodic: initial count 0 stops the timer");
}

static void masked(void) {
  reset_ticks();
  apic_write(APIC_LVT_TIMER, LVT_MASKED | TIMER_ONE_SHOT | V_TIMER);
  apic_write(APIC_TIMER_INITIAL, (uint32_t)us_to_ticks(1000));
  run_for_us(3000);
  check_eq(ticks, 0, "masked one-shot: no interrupt");
  check_eq(apic_read(APIC_TIMER_CURRENT), 0, "masked one-shot: still counts down to 0");
  check(!irr_bit(V_TIMER), "masked one-shot: vector not pending");
}

static void tsc_deadline(void) {
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (!(c & (1u << 24))) {
    skip("TSC-deadline", "CPUID hides TSC-deadline");
    return;
  }
  uint64_t cycles_per_ms = tsc_khz() ? tsc_khz() : 2000000;
  apic_write(APIC_LVT_TIMER, TIMER_TSC_DEADLINE | V_TIMER);

  /* Arm far ahead (no slow host can reach it), read back, disarm. */
  reset_ticks();
  uint64_t far = rdtsc() + 1000 * cycles_per_ms;
  wrmsr(MSR_TSC_DEADLINE, far);
  check_eq(rdmsr(MSR_TSC_DEADLINE), far, "TSC-deadline: MSR reads the armed deadline");
  wrmsr(MSR_TSC_DEADLINE, 0);
  check_eq(rdmsr(MSR_TSC_DEADLINE), 0, "TSC-deadline: writing 0 disarms (reads 0)");
  run_for_us(5000);
  check_eq(ticks, 0, "TSC-deadline: writing 0 disarms (no interrupt)");

  reset_ticks();
  uint64_t deadline = rdtsc() + 2 * cycles_per_ms;
  wrmsr(MSR_TSC_DEADLINE, deadline);
  check(wait_for(&ticks, 1, 1000, true), "TSC-deadline: interrupt arrives");
  check(tick_tsc[0] >= deadline, "TSC-deadline: not before the deadline (guest TSC)");
  if (timing_known()) {
    check_range(tsc_to_us(tick_tsc[0] - deadline), 0, MAX_LATE_US, "TSC-deadline: lateness (us)");
  }
  check_eq(rdmsr(MSR_TSC_DEADLINE), 0, "TSC-deadline: MSR reads 0 after firing");
  run_for_us(3000);
  check_eq(ticks, 1, "TSC-deadline: exactly one interrupt");

  /* A deadline already past fires at once. */
  reset_ticks();
  wrmsr(MSR_TSC_DEADLINE, rdtsc() - 1000);
  interrupt_window();
  check_eq(ticks, 1, "TSC-deadline in the past: interrupt right after WRMSR");
  wait_for(&ticks, 1, 100, true);

  check_eq(apic_read(APIC_TIMER_CURRENT), 0, "TSC-deadline mode: current count reads 0");
  apic_write(APIC_LVT_TIMER, LVT_MASKED);
}

void test_main(void) {
  set_handler(V_TIMER, timer_handler);
  apic_software_enable();
  one_shot();
  one_shot_divided();
  periodic();
  masked();
  tsc_deadline();
  /* The same in x2APIC mode (the timer is the same; access path differs). */
  uint32_t a, b, c, d;
  cpuid(1, 0, &a, &b, &c, &d);
  if (c & (1u << 21)) {
    apic_enable_x2apic();
    one_shot();
    periodic();
    tsc_deadline();
  }
}
