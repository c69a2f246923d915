/* SPDX-License-Identifier: MIT */
/*
 * A hypervisor front in C using only the installed C API (<vlapic/vlapic.h>,
 * pkg-config vlapic). It plays the part of a VMM's exit handlers for a
 * two-vCPU VM: every LAPIC and I/O APIC access of "the guest" goes over
 * vCPU 0's shared-memory channel, a device raises an I/O APIC pin, and the
 * answers are checked against the SDM and the 82093AA datasheet.
 *
 *   cc -std=c11 front.c $(pkg-config --cflags --libs vlapic) -o c-front
 *   ./c-front [SOCKET]              run the checks, exit 0 if all pass
 *   ./c-front --bench N [SOCKET]    time N channel accesses (MMIO read of
 *                                   the version register), print the median
 *
 * Exit status: 0 all checks passed, 1 a check failed, 2 a vlapic call
 * failed (message on stderr), 64 bad usage.
 */
#define _POSIX_C_SOURCE 200809L
#include <vlapic/vlapic.h>

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define APIC_BASE_GPA 0xFEE00000ull
#define REG(offset) (APIC_BASE_GPA + (offset))
#define MSR_APIC_BASE 0x1Bu
#define MSR_X2APIC(offset) (0x800u + ((offset) >> 4))
/* The VM's I/O APIC at its default base: the register select and window,
 * and the low half of pin n's redirection entry's index. */
#define IOAPIC_IOREGSEL 0xFEC00000ull
#define IOAPIC_IOWIN 0xFEC00010ull
#define IOAPIC_RTE_LOW(pin) (0x10u + 2u * (pin))

static int failures = 0;

#define CALL(expr)                                                                \
  do {                                                                            \
    int rc_ = (expr);                                                             \
    if (rc_ < 0) {                                                                \
      fprintf(stderr, "c-front: %s failed: %s: %s\n", #expr,                      \
              vlapic_error_name(rc_), vlapic_last_error());                       \
      exit(2);                                                                    \
    }                                                                             \
  } while (0)

#define CHECK(cond, ...)                                                          \
  do {                                                                            \
    if (cond) {                                                                   \
      printf("ok: ");                                                             \
    } else {                                                                      \
      printf("FAILED: ");                                                         \
      failures++;                                                                 \
    }                                                                             \
    printf(__VA_ARGS__);                                                          \
    printf("\n");                                                                 \
  } while (0)

/* Takes the vCPU's collected events; returns whether one of `kind` (and
 * `vector`, if >= 0) was among them. */
static int saw_event(vlapic_vcpu* vcpu, int kind, int vector) {
  struct vlapic_event events[64];
  int found = 0, n;
  while ((n = vlapic_vcpu_take_events(vcpu, events, 64)) > 0) {
    for (int i = 0; i < n; i++) {
      if (events[i].kind == kind && (vector < 0 || events[i].vector == vector)) found = 1;
    }
  }
  return found;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int compare_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static vlapic_vm* create_vm(vlapic_client* client, uint32_t vcpus) {
  struct vlapic_vm_config config;
  vlapic_vm_config_init(&config);
  config.vcpu_count = vcpus;
  config.name = "c-front";
  vlapic_vm* vm;
  CALL(vlapic_vm_create(client, &config, &vm));
  return vm;
}

static int bench(const char* socket, long count) {
  vlapic_client* client;
  CALL(vlapic_connect(socket, &client));
  vlapic_vm* vm = create_vm(client, 1);
  vlapic_vcpu* vcpu;
  CALL(vlapic_vcpu_open(vm, 0, &vcpu));
  uint64_t* samples = calloc((size_t)count, sizeof(uint64_t));
  if (samples == NULL) return 2;
  struct vlapic_result r;
  for (long i = 0; i < count / 10; i++) CALL(vlapic_mmio_read(vcpu, REG(0x30), 4, 0, &r));  /* warm-up */
  for (long i = 0; i < count; i++) {
    uint64_t start = now_ns();
    CALL(vlapic_mmio_read(vcpu, REG(0x30), 4, 0, &r));
    samples[i] = now_ns() - start;
  }
  qsort(samples, (size_t)count, sizeof(uint64_t), compare_u64);
  printf("c-front bench: accesses=%ld median_ns=%" PRIu64 " p10_ns=%" PRIu64 " p90_ns=%" PRIu64 "\n",
         count, samples[count / 2], samples[count / 10], samples[count * 9 / 10]);
  free(samples);
  vlapic_vcpu_close(vcpu);
  vlapic_vm_destroy(vm);
  vlapic_disconnect(client);
  return 0;
}

int main(int argc, char** argv) {
  const char* socket = NULL;
  long bench_count = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      printf("usage: c-front [--bench N] [SOCKET]\n"
             "exit: 0 checks passed, 1 a check failed, 2 a vlapic call failed, 64 usage\n");
      return 0;
    } else if (strcmp(argv[i], "--bench") == 0 && i + 1 < argc) {
      bench_count = strtol(argv[++i], NULL, 10);
      if (bench_count < 10) return 64;
    } else if (argv[i][0] == '-') {
      fprintf(stderr, "c-front: unknown option %s\n", argv[i]);
      return 64;
    } else {
      socket = argv[i];
    }
  }
  if (bench_count > 0) return bench(socket, bench_count);

  vlapic_client* client;
  CALL(vlapic_connect(socket, &client));
  vlapic_vm* vm = create_vm(client, 2);
  printf("VM %" PRIu64 " with %u vCPUs\n", vlapic_vm_id(vm), vlapic_vm_vcpu_count(vm));

  /* This thread is vCPU 0's thread: its channel carries every access. */
  vlapic_vcpu* vcpu;
  CALL(vlapic_vcpu_open(vm, 0, &vcpu));
  struct vlapic_result r;

  /* MMIO read of the version register (SDM 11.4.8): 0x14, 6 LVT entries. */
  CALL(vlapic_mmio_read(vcpu, REG(0x30), 4, 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_OK && (r.value & 0xFF) == 0x14 && ((r.value >> 16) & 0xFF) == 5,
        "APIC version 0x%02" PRIx64 ", max LVT entry %" PRIu64, r.value & 0xFF, (r.value >> 16) & 0xFF);

  /* Software-enable the APIC (SVR bit 8, spurious vector 0xFF). */
  CALL(vlapic_mmio_write(vcpu, REG(0xF0), 4, 0x1FF, 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_OK, "SVR write taken");

  /* An x2APIC MSR in xAPIC mode faults (SDM 11.12.1.2). */
  CALL(vlapic_msr_read(vcpu, MSR_X2APIC(0x80), 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_GP, "x2APIC TPR MSR in xAPIC mode: #GP");

  /* A self-IPI with the exit ready for injection: the vector comes back in
   * the same call (or from an acknowledge right after). */
  CALL(vlapic_mmio_write(vcpu, REG(0x300), 4, (1u << 18) | 0x40, VLAPIC_INJECT_IF_PENDING, &r));
  int injected = r.inject;
  if (injected < 0) {
    CALL(vlapic_acknowledge(vcpu, &r));
    injected = r.inject;
  }
  CHECK(injected == 0x40, "self-IPI 0x40 injected (got %d)", injected);
  CALL(vlapic_mmio_write(vcpu, REG(0xB0), 4, 0, 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_OK, "EOI");

  /* The VM's I/O APIC, programmed by "the guest" through the same MMIO
   * path: pin 4 (a UART's IRQ) as vector 0x41, fixed, physical destination
   * APIC ID 0, edge, active high, unmasked (82093AA datasheet 3.2.4). */
  CALL(vlapic_mmio_write(vcpu, IOAPIC_IOREGSEL, 4, IOAPIC_RTE_LOW(4), 0, &r));
  CALL(vlapic_mmio_write(vcpu, IOAPIC_IOWIN, 4, 0x41, 0, &r));
  CALL(vlapic_mmio_write(vcpu, IOAPIC_IOREGSEL, 4, IOAPIC_RTE_LOW(4) + 1, 0, &r));
  CALL(vlapic_mmio_write(vcpu, IOAPIC_IOWIN, 4, 0, 0, &r));
  CALL(vlapic_mmio_write(vcpu, IOAPIC_IOREGSEL, 4, IOAPIC_RTE_LOW(4), 0, &r));
  CALL(vlapic_mmio_read(vcpu, IOAPIC_IOWIN, 4, 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_OK && r.value == 0x41, "I/O APIC pin 4 entry 0x%08" PRIx64, r.value);

  /* The device raises its wire: the message reaches vCPU 0 at once. */
  CALL(vlapic_vm_set_irq_line(vm, 4, true));
  CALL(vlapic_acknowledge(vcpu, &r));
  CHECK(r.inject == 0x41, "I/O APIC pin 4 delivered vector 0x41 (got %d)", r.inject);
  CALL(vlapic_mmio_write(vcpu, REG(0xB0), 4, 0, 0, &r));
  struct vlapic_ioapic_status ioapic;
  ioapic.struct_size = sizeof(ioapic);
  CALL(vlapic_vm_ioapic_status(vm, &ioapic));
  CHECK(ioapic.present && ioapic.base == 0xFEC00000u && ioapic.pin_count == VLAPIC_IOAPIC_PINS &&
            ioapic.pins[4].level && ioapic.pins[4].asserted && ioapic.pins[4].assertions == 1 &&
            ioapic.pins[4].messages == 1,
        "I/O APIC status: pin 4 high, asserted, %" PRIu64 " assertion(s), %" PRIu64 " message(s)",
        ioapic.pins[4].assertions, ioapic.pins[4].messages);
  /* A pulse (the wire back low) in one call; the edge entry sends again. */
  struct vlapic_irq_line pulse[3] = {{4, false}, {4, true}, {4, false}};
  CALL(vlapic_vm_set_irq_lines(vm, pulse, 3));
  CALL(vlapic_acknowledge(vcpu, &r));
  CHECK(r.inject == 0x41, "a pulse on pin 4 delivered 0x41 again (got %d)", r.inject);
  CALL(vlapic_mmio_write(vcpu, REG(0xB0), 4, 0, 0, &r));
  /* The channel's replies also said so (and the timer below must not
   * take these for its own). */
  CHECK(saw_event(vcpu, VLAPIC_EVENT_DELIVERABLE, 0x41), "DELIVERABLE 0x41 events in the channel replies");
  int refused = vlapic_vm_set_irq_line(vm, VLAPIC_IOAPIC_PINS, true);
  CHECK(refused == VLAPIC_ERR_INVALID, "pin 24 refused: %s", vlapic_last_error());

  /* MOV to CR8 is TPR[7:4] (SDM 10.8.6.1). */
  CALL(vlapic_set_cr8(vcpu, 5, 0, &r));
  CHECK(r.cr8 == 5, "CR8 5 after MOV to CR8");
  CALL(vlapic_mmio_read(vcpu, REG(0x80), 4, 0, &r));
  CHECK(r.value == 0x50, "TPR 0x%02" PRIx64 " after CR8 = 5", r.value);

  /* Save, change, restore: the TPR comes back. */
  struct vlapic_lapic_state saved;
  CALL(vlapic_vcpu_save(vcpu, &saved));
  CHECK(saved.regs[0x80] == 0x50 && saved.hidden_size > 0,
        "saved kvm_lapic_state has TPR 0x%02x, hidden record %u bytes", saved.regs[0x80], saved.hidden_size);
  CALL(vlapic_set_cr8(vcpu, 9, 0, &r));
  CALL(vlapic_vcpu_restore(vcpu, &saved));
  CALL(vlapic_mmio_read(vcpu, REG(0x80), 4, 0, &r));
  CHECK(r.value == 0x50, "TPR 0x%02" PRIx64 " after restore", r.value);
  CALL(vlapic_set_cr8(vcpu, 0, 0, &r));

  /* Enter x2APIC mode: IA32_APIC_BASE.EXTD (SDM 11.12.1). */
  CALL(vlapic_msr_read(vcpu, MSR_APIC_BASE, 0, &r));
  uint64_t base = r.value;
  CALL(vlapic_msr_write(vcpu, MSR_APIC_BASE, base | (1u << 10), 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_OK, "x2APIC enabled");
  CALL(vlapic_msr_read(vcpu, MSR_X2APIC(0x20), 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_OK && r.value == 0, "x2APIC ID %" PRIu64, r.value);
  CALL(vlapic_mmio_read(vcpu, REG(0x30), 4, 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_IGNORED, "MMIO in x2APIC mode ignored");

  /* One-shot timer, 1 ms at the 1 GHz default clock with divide by 1: park
   * on the channel's attention, then fetch what it raised. */
  CALL(vlapic_msr_write(vcpu, MSR_X2APIC(0x3E0), 0xB, 0, &r));
  CALL(vlapic_msr_write(vcpu, MSR_X2APIC(0x320), 0x41, 0, &r));
  CALL(vlapic_msr_write(vcpu, MSR_X2APIC(0x380), 1000000, 0, &r));
  int woke = 0;
  uint64_t start = now_ns();
  while (now_ns() - start < 5000000000ull) {
    if (saw_event(vcpu, VLAPIC_EVENT_DELIVERABLE, 0x41)) {
      woke = 1;
      break;
    }
    CALL(vlapic_vcpu_wait_attention(vcpu, 1000000000));
    CALL(vlapic_fetch_events(vcpu, 0, &r));
  }
  CHECK(woke, "timer vector 0x41 deliverable through the channel");
  CALL(vlapic_fetch_events(vcpu, VLAPIC_INJECT_IF_PENDING, &r));
  if (r.inject < 0) CALL(vlapic_acknowledge(vcpu, &r));
  CHECK(r.inject == 0x41, "timer vector injected (got %d)", r.inject);
  CALL(vlapic_msr_write(vcpu, MSR_X2APIC(0xB0), 0, 0, &r));

  /* An NMI by MSI to vCPU 1 (no channel open): it comes through the VM's
   * event fd, which a VMM's own poll loop watches. */
  CALL(vlapic_vm_deliver_msi(vm, APIC_BASE_GPA | (1u << 12), 4u << 8));
  struct pollfd pfd = {.fd = vlapic_vm_event_fd(vm), .events = POLLIN};
  int nmi = 0;
  start = now_ns();
  while (!nmi && now_ns() - start < 5000000000ull) {
    if (poll(&pfd, 1, 1000) <= 0) continue;
    struct vlapic_event events[16];
    int n;
    CALL(n = vlapic_vm_take_events(vm, events, 16));
    for (int i = 0; i < n; i++) {
      if (events[i].vcpu == 1 && events[i].kind == VLAPIC_EVENT_NMI) nmi = 1;
    }
  }
  CHECK(nmi, "MSI NMI to vCPU 1 arrived on the VM event fd");

  /* The whole VM as a blob, restored in place. */
  void* blob;
  size_t size;
  CALL(vlapic_vm_save(vm, &blob, &size));
  /* vlapicctl save's format: packed Cap'n Proto, so mostly-zero pages are small. */
  CHECK(size > 0, "VM state saved (%zu bytes)", size);
  /* The blob holds the I/O APIC too: mask pin 4 now, and the restore
   * brings its entry back. */
  CALL(vlapic_mmio_write(vcpu, IOAPIC_IOREGSEL, 4, IOAPIC_RTE_LOW(4), 0, &r));
  CALL(vlapic_mmio_write(vcpu, IOAPIC_IOWIN, 4, 0x10041, 0, &r));
  CALL(vlapic_vm_restore(vm, blob, size));
  vlapic_free(blob);
  CALL(vlapic_msr_read(vcpu, MSR_X2APIC(0x20), 0, &r));
  CHECK(r.status == VLAPIC_ACCESS_OK, "x2APIC mode kept across VM restore");
  CALL(vlapic_vm_ioapic_status(vm, &ioapic));
  CHECK(ioapic.pins[4].entry == 0x41, "I/O APIC pin 4 entry 0x%" PRIx64 " back after VM restore",
        ioapic.pins[4].entry);

  /* A bad argument is an error code with a message, not a crash. */
  int bad = vlapic_set_cr8(vcpu, 16, 0, &r);
  CHECK(bad == VLAPIC_ERR_INVALID && strlen(vlapic_last_error()) > 0, "CR8 16 refused: %s",
        vlapic_last_error());

  vlapic_vcpu_close(vcpu);
  vlapic_vm_destroy(vm);
  vlapic_disconnect(client);
  if (failures == 0) printf("c-front: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
