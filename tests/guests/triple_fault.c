// SPDX-License-Identifier: MIT
/* An exception with no usable IDT: #UD -> #DF -> triple fault. vlapic-kvm
 * must end the run with its triple-fault status (8). */
#include "runtime.h"

void test_main(void) {
  static const struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) empty_idt = {0, 0};
  printf("TRIPLE-FAULTING\n");
  __asm__ volatile("lidt %0; ud2" ::"m"(empty_idt));
}
