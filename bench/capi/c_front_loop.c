// SPDX-License-Identifier: MIT
// The C front's hot loop, compiled as C against the public vlapic.h only:
// what a C VMM's exit handler does for each xAPIC MMIO read.
#include "c_front_loop.h"

int cFrontMmioReads(vlapic_vcpu* vcpu, uint64_t gpa, unsigned calls) {
  for (unsigned i = 0; i < calls; ++i) {
    struct vlapic_result result;
    int rc = vlapic_mmio_read(vcpu, gpa, 4, 0, &result);
    if (rc != VLAPIC_OK || result.status != VLAPIC_ACCESS_OK) return -1;
  }
  return 0;
}
