/* SPDX-License-Identifier: MIT */
/*
 * The C API's error contract against a real vlapicd (run by
 * package_test.cc): bad arguments are VLAPIC_ERR_INVALID with a message,
 * requests vlapicd refuses are errors that leave the connection and the VM
 * usable, a guest's bad access is a result (VLAPIC_OK with status GP or
 * IGNORED), and once vlapicd is gone every call fails with an error instead
 * of crashing or hanging.
 *
 *   capi-errors SOCKET DAEMON_PID
 *
 * Exit status: 0 every check held, 1 one did not.
 */
#define _POSIX_C_SOURCE 200809L
#include <vlapic/vlapic.h>

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;

static void check(int ok, const char* what) {
  printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) failures++;
}

/* rc is `expected` and a message explains it. */
static void check_error(int rc, int expected, const char* what) {
  int ok = rc == expected && vlapic_last_error()[0] != '\0';
  printf("%s: %s (%s: %s)\n", ok ? "ok" : "FAILED", what, vlapic_error_name(rc),
         vlapic_last_error());
  if (!ok) failures++;
}

static vlapic_vm* make_vm(vlapic_client* client, uint32_t vcpus) {
  struct vlapic_vm_config config;
  vlapic_vm_config_init(&config);
  config.vcpu_count = vcpus;
  config.name = "capi-errors";
  vlapic_vm* vm = NULL;
  int rc = vlapic_vm_create(client, &config, &vm);
  if (rc != VLAPIC_OK) {
    fprintf(stderr, "capi-errors: vlapic_vm_create: %s: %s\n", vlapic_error_name(rc),
            vlapic_last_error());
    exit(1);
  }
  return vm;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: capi-errors SOCKET DAEMON_PID\n");
    return 64;
  }
  const char* socket_path = argv[1];
  pid_t daemon = (pid_t)atol(argv[2]);
  struct vlapic_result r;
  vlapic_client* client = NULL;

  /* Connecting to nothing is an error, not a crash. */
  int rc = vlapic_connect("/nonexistent/vlapicd.sock", &client);
  check(rc < 0 && client == NULL, "connect to a missing socket fails");
  check(vlapic_last_error()[0] != '\0', "with a message");

  check_error(vlapic_connect(socket_path, NULL), VLAPIC_ERR_INVALID, "connect with out NULL");
  rc = vlapic_connect(socket_path, &client);
  check(rc == VLAPIC_OK && client != NULL, "connect");
  if (client == NULL) return 1;

  /* VM configurations that cannot work. */
  struct vlapic_vm_config config;
  vlapic_vm* vm = NULL;
  vlapic_vm_config_init(&config);
  config.struct_size = 0;
  check_error(vlapic_vm_create(client, &config, &vm), VLAPIC_ERR_INVALID,
              "create without vlapic_vm_config_init");
  vlapic_vm_config_init(&config);
  config.vcpu_count = 0;
  check_error(vlapic_vm_create(client, &config, &vm), VLAPIC_ERR_INVALID, "create with 0 vCPUs");
  vlapic_vm_config_init(&config);
  config.vcpu_count = 1u << 30;
  check_error(vlapic_vm_create(client, &config, &vm), VLAPIC_ERR_FAILED,
              "vlapicd refuses 2^30 vCPUs");
  uint32_t same_ids[2] = {3, 3};
  vlapic_vm_config_init(&config);
  config.vcpu_count = 2;
  config.apic_ids = same_ids;
  check_error(vlapic_vm_create(client, &config, &vm), VLAPIC_ERR_FAILED,
              "vlapicd refuses duplicate APIC IDs");
  check(vm == NULL, "no VM handle after a failed create");

  /* The connection survived the refusals. */
  vm = make_vm(client, 2);
  check(vlapic_vm_vcpu_count(vm) == 2, "a good VM after the refusals");

  vlapic_vcpu* vcpu = NULL;
  check_error(vlapic_vcpu_open(vm, 2, &vcpu), VLAPIC_ERR_INVALID, "open vCPU 2 of 2");
  check_error(vlapic_vcpu_open(NULL, 0, &vcpu), VLAPIC_ERR_INVALID, "open on a NULL VM");
  rc = vlapic_vcpu_open(vm, 0, &vcpu);
  check(rc == VLAPIC_OK && vcpu != NULL, "open vCPU 0");
  if (vcpu == NULL) return 1;

  /* A guest's bad access is a result, not an error. */
  rc = vlapic_msr_read(vcpu, 0x808, 0, &r);  /* x2APIC TPR while in xAPIC mode */
  check(rc == VLAPIC_OK && r.status == VLAPIC_ACCESS_GP, "x2APIC MSR in xAPIC mode: #GP result");
  rc = vlapic_mmio_read(vcpu, 0xFEE00030, 3, 0, &r);  /* 3-byte read */
  check(rc == VLAPIC_OK && r.status == VLAPIC_ACCESS_IGNORED, "3-byte MMIO read: ignored result");
  rc = vlapic_mmio_write(vcpu, 0xFEE00030, 4, 0, 0, &r);  /* Version is read-only */
  check(rc == VLAPIC_OK && r.status == VLAPIC_ACCESS_IGNORED, "write to Version: ignored result");

  /* Bad arguments of the fast path. */
  check_error(vlapic_mmio_read(vcpu, 0xFEE00030, 4, 0x80, &r), VLAPIC_ERR_INVALID, "unknown flag");
  check_error(vlapic_mmio_read(vcpu, 0xFEE00030, 4, 0, NULL), VLAPIC_ERR_INVALID, "NULL result");
  check_error(vlapic_set_cr8(vcpu, 16, 0, &r), VLAPIC_ERR_INVALID, "CR8 16");
  check_error(vlapic_vm_set_lint(vm, 0, 2, true), VLAPIC_ERR_INVALID, "LINT pin 2");
  check_error(vlapic_vm_set_lint(vm, 7, 0, true), VLAPIC_ERR_FAILED, "LINT of vCPU 7 of 2");
  check_error(vlapic_vm_take_events(vm, NULL, 4), VLAPIC_ERR_INVALID, "take events into NULL");

  /* The I/O APIC's pins: 0-23 only, checked before anything is sent. */
  check_error(vlapic_vm_set_irq_line(vm, 24, true), VLAPIC_ERR_INVALID, "I/O APIC pin 24");
  check_error(vlapic_vm_set_irq_line(vm, 256, true), VLAPIC_ERR_INVALID, "I/O APIC pin 256 (not pin 0)");
  check_error(vlapic_vm_set_irq_line(NULL, 0, true), VLAPIC_ERR_INVALID, "set_irq_line on a NULL VM");
  struct vlapic_irq_line lines[2] = {{3, true}, {40, true}};
  check_error(vlapic_vm_set_irq_lines(vm, lines, 2), VLAPIC_ERR_INVALID, "set_irq_lines with pin 40");
  check_error(vlapic_vm_set_irq_lines(vm, NULL, 1), VLAPIC_ERR_INVALID, "set_irq_lines from NULL");
  check(vlapic_vm_set_irq_lines(vm, NULL, 0) == VLAPIC_OK, "set_irq_lines of nothing");
  struct vlapic_ioapic_status ioapic;
  memset(&ioapic, 0, sizeof(ioapic));
  check_error(vlapic_vm_ioapic_status(vm, &ioapic), VLAPIC_ERR_INVALID, "ioapic_status without struct_size");
  ioapic.struct_size = sizeof(ioapic);
  rc = vlapic_vm_ioapic_status(vm, &ioapic);
  check(rc == VLAPIC_OK && ioapic.present && ioapic.pins[3].level == false && ioapic.pins[3].assertions == 0,
        "the refused set_irq_lines applied none of its lines (pin 3 still low)");

  /* A VM whose front emulates its own I/O APIC: vlapicd refuses the pins. */
  vlapic_vm* bare = NULL;
  vlapic_vm_config_init(&config);
  check(config.ioapic_present && config.ioapic_base == 0xFEC00000u && config.ioapic_version == 0x11,
        "vlapic_vm_config_init: an I/O APIC at 0xFEC00000, version 0x11");
  config.ioapic_present = false;
  rc = vlapic_vm_create(client, &config, &bare);
  check(rc == VLAPIC_OK && bare != NULL, "create a VM without an I/O APIC");
  if (bare != NULL) {
    check_error(vlapic_vm_set_irq_line(bare, 0, true), VLAPIC_ERR_FAILED,
                "set_irq_line on a VM without an I/O APIC");
    check(strstr(vlapic_last_error(), "no I/O APIC") != NULL, "the message says there is no I/O APIC");
    rc = vlapic_vm_ioapic_status(bare, &ioapic);
    check(rc == VLAPIC_OK && !ioapic.present && ioapic.pin_count == 0, "its status: not present");
    check(vlapic_vm_deliver_ioapic_entry(bare, 0x30) == VLAPIC_OK, "its front still delivers entries itself");
    vlapic_vm_destroy(bare);
  }
  vlapic_vm_config_init(&config);
  config.ioapic_version = 0x12;
  check_error(vlapic_vm_create(client, &config, &bare), VLAPIC_ERR_FAILED, "vlapicd refuses I/O APIC version 0x12");

  /* A front built against API version 1 passes the shorter struct: it
   * gets the default I/O APIC. */
  vlapic_vm_config_init(&config);
  config.struct_size = (uint32_t)offsetof(struct vlapic_vm_config, ioapic_base);
  config.ioapic_present = false;   /* beyond its struct: not read */
  rc = vlapic_vm_create(client, &config, &bare);
  check(rc == VLAPIC_OK, "create with the version-1 struct_size");
  if (bare != NULL) {
    check(vlapic_vm_ioapic_status(bare, &ioapic) == VLAPIC_OK && ioapic.present,
          "a version-1 config gets the default I/O APIC");
    vlapic_vm_destroy(bare);
  }

  /* Hostile states: refused, and the vCPU keeps its own. */
  struct vlapic_lapic_state state;
  rc = vlapic_vcpu_save(vcpu, &state);
  check(rc == VLAPIC_OK, "save vCPU 0");
  struct vlapic_lapic_state bad = state;
  memset(bad.hidden, 0xA5, sizeof(bad.hidden));
  bad.hidden_size = 40;
  check_error(vlapic_vcpu_restore(vcpu, &bad), VLAPIC_ERR_FAILED, "restore a scribbled hidden record");
  bad = state;
  bad.hidden_size = VLAPIC_HIDDEN_MAX + 1;
  check_error(vlapic_vcpu_restore(vcpu, &bad), VLAPIC_ERR_INVALID, "restore hidden_size too large");
  check_error(vlapic_vcpu_save_layout(NULL, false, &state), VLAPIC_ERR_INVALID, "save_layout a NULL vCPU");
  check_error(vlapic_vcpu_save_layout(vcpu, false, NULL), VLAPIC_ERR_INVALID, "save_layout into NULL");
  struct vlapic_lapic_state legacy;
  rc = vlapic_vcpu_save_layout(vcpu, false, &legacy);
  check(rc == VLAPIC_OK && !legacy.x2apic_32bit_ids, "save in KVM's legacy x2APIC ID layout");
  rc = vlapic_vcpu_restore(vcpu, &legacy);
  check(rc == VLAPIC_OK, "restore the legacy-layout state");
  static const unsigned char junk[] = "not a VM state at all";
  check_error(vlapic_vm_restore(vm, junk, sizeof(junk)), VLAPIC_ERR_FAILED, "restore a junk VM blob");
  rc = vlapic_mmio_read(vcpu, 0xFEE00030, 4, 0, &r);
  check(rc == VLAPIC_OK && r.status == VLAPIC_ACCESS_OK && (r.value & 0xFF) == 0x14,
        "the vCPU still answers after the refused restores");

  /* vlapicd dies: every call fails cleanly. */
  kill(daemon, SIGKILL);
  struct timespec pause = {0, 100 * 1000 * 1000};
  nanosleep(&pause, NULL);
  rc = vlapic_mmio_read(vcpu, 0xFEE00030, 4, 0, &r);
  check(rc < 0, "an access after vlapicd died fails");
  printf("  (%s: %s)\n", vlapic_error_name(rc), vlapic_last_error());
  vlapic_vm* another = NULL;
  rc = vlapic_vm_create(client, &config, &another);
  check(rc < 0 && another == NULL, "creating a VM after vlapicd died fails");
  printf("  (%s: %s)\n", vlapic_error_name(rc), vlapic_last_error());
  rc = vlapic_vm_deliver_msi(vm, 0xFEE00000, 0x30);
  check(rc < 0, "an MSI after vlapicd died fails");

  vlapic_vcpu_close(vcpu);
  vlapic_vm_destroy(vm);
  vlapic_disconnect(client);
  printf("capi-errors: %d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
