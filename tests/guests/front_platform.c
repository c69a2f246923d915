// SPDX-License-Identifier: MIT
/*
 * The platform vlapic-kvm offers a multiboot kernel, as QEMU's -kernel does:
 * multiboot entry state and info (memory size, command line, modules),
 * fw_cfg (signature, RAM size, CPU count), the 16550's line status and
 * divisor latch, and guest-physical addresses with nothing behind them
 * reading all-ones. Run with --smp 2 --memory 128M --append
 * vlapic-test-cmdline --initrd <file starting with VLAPIC-INITRD>.
 */
#include "runtime.h"

extern uint32_t multiboot_info_address, multiboot_magic;

#define COM1 0x3F8
#define UNBACKED_ADDRESS 0xE0000000u

static bool contains(const char *text, const char *word) {
  for (; *text; text++) {
    const char *a = text, *b = word;
    while (*a && *b && *a == *b) a++, b++;
    if (!*b) return true;
  }
  return false;
}

static uint64_t fw_cfg_u64(uint16_t key) {
  outw(0x510, key);
  uint64_t value = 0;
  for (int i = 0; i < 8; i++) value |= (uint64_t)inb(0x511) << (8 * i);
  return value;
}

void test_main(void) {
  check_eq(multiboot_magic, 0x2BADB002, "multiboot: EAX magic 0x2BADB002 at entry");
  const uint32_t *info = (const uint32_t *)(uint64_t)multiboot_info_address;
  uint32_t flags = info[0];
  check(flags & 1, "multiboot info: memory fields present");
  uint64_t ram = fw_cfg_u64(0x0003);
  check_eq(ram, 128ull << 20, "fw_cfg RAM size = --memory");
  check_eq(((uint64_t)info[2] << 10) + (1u << 20), ram, "multiboot mem_upper = RAM above 1 MiB");
  check((flags & 4) && contains((const char *)(uint64_t)info[4], "vlapic-test-cmdline"),
        "multiboot command line carries --append");
  check((flags & 8) && info[5] >= 1, "multiboot: one module (--initrd)");
  if ((flags & 8) && info[5] >= 1) {
    const uint32_t *module = (const uint32_t *)(uint64_t)info[6];
    check(contains((const char *)(uint64_t)module[0], "VLAPIC-INITRD"), "module 0 holds the initrd file");
    check(module[1] > module[0] && (module[0] & 0xFFF) == 0, "module page-aligned with its end after its start");
  }
  check(flags & (1u << 6), "multiboot: memory map present");

  outw(0x510, 0x0000);
  char signature[5] = {0};
  for (int i = 0; i < 4; i++) signature[i] = (char)inb(0x511);
  check(contains(signature, "QEMU"), "fw_cfg signature QEMU");
  check_eq(fw_cfg_u64(0x0005) & 0xFFFF, 2, "fw_cfg CPU count = --smp");
  check_eq(cpu_count(), 2, "runtime sees 2 CPUs");

  check_eq(inb(COM1 + 5), 0x60, "16550 LSR: transmitter empty (0x60)");
  /* Divisor latch: with LCR bit 7 set, 0x3F8/0x3F9 are DLL/DLM, not THR. */
  printf("LATCH[");
  outb(COM1 + 3, 0x83);
  outb(COM1 + 0, 'Z');
  outb(COM1 + 1, 0x00);
  uint8_t divisor = inb(COM1 + 0);
  outb(COM1 + 3, 0x03);
  printf("]\n");
  check_eq(divisor, 'Z', "16550 divisor latch reads back");

  check_eq(mmio_read(UNBACKED_ADDRESS), 0xFFFFFFFF, "unbacked GPA reads all-ones");
  mmio_write(UNBACKED_ADDRESS, 0x12345678);
  check_eq(mmio_read(UNBACKED_ADDRESS), 0xFFFFFFFF, "unbacked GPA drops writes");
  check_eq(*(volatile uint8_t *)(uint64_t)(UNBACKED_ADDRESS + 3), 0xFF, "unbacked GPA byte read all-ones");
}
