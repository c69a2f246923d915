// SPDX-License-Identifier: MIT
/* Memory layout shared by entry.S and the C runtime. */
#pragma once

#define MAX_CPUS 16
#define CPU_STACK_SHIFT 14
#define CPU_STACK_SIZE (1 << CPU_STACK_SHIFT)
/* The AP trampoline page: SIPI vector 0x08 starts APs at 0800:0000. */
#define TRAMPOLINE_ADDRESS 0x8000
#define TRAMPOLINE_VECTOR (TRAMPOLINE_ADDRESS >> 12)
