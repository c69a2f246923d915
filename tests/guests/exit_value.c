// SPDX-License-Identifier: MIT
/* Exits through the debug-exit port with 0x2A: vlapic-kvm must exit with
 * (0x2A << 1) | 1 = 85. */
#include "runtime.h"

void test_main(void) {
  printf("EXITING with 0x2a\n");
  exit_guest(0x2A);
}
