// SPDX-License-Identifier: MIT
// The C front's hot loop (c_front_loop.c), callable from the C++ driver.
#pragma once

#include <vlapic/vlapic.h>  // as an installed C front includes it

#ifdef __cplusplus
extern "C" {
#endif

// `calls` synchronous 4-byte MMIO reads of `gpa` over the vCPU's channel;
// 0, or -1 at the first that does not answer OK.
int cFrontMmioReads(vlapic_vcpu* vcpu, uint64_t gpa, unsigned calls);

#ifdef __cplusplus
}
#endif
