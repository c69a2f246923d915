// SPDX-License-Identifier: MIT
/* Announces itself, then halts with interrupts on forever: the vlapicd-gone
 * test kills the server under it. */
#include "runtime.h"

void test_main(void) {
  printf("READY\n");
  for (;;) __asm__ volatile("sti; hlt; cli" ::: "memory");
}
