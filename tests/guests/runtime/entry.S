// SPDX-License-Identifier: MIT
/*
 * Guest runtime entry: multiboot v1 header, 32-bit protected-mode entry ->
 * 64-bit long mode with the low 4 GiB identity-mapped (2 MiB pages), the AP
 * start-up trampoline (real mode -> long mode), interrupt stubs and
 * fault-tolerant MSR accessors. Baseline x86-64 only.
 */
#include "layout.h"

        .section .multiboot, "a"
        .align 4
multiboot_header:
        .long 0x1BADB002                /* magic */
        .long 0x00000003                /* page-align modules, memory info */
        .long -(0x1BADB002 + 0x00000003)

/* ------------------------------------------------------------------ */
        .section .data
        .align 16
gdt:
        .quad 0                         /* null */
        .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
        .quad 0x00CF9A000000FFFF        /* 0x10: 32-bit code */
        .quad 0x00CF92000000FFFF        /* 0x18: data */
gdt_end:
        .globl gdt_descriptor
gdt_descriptor:
        .word gdt_end - gdt - 1
        .quad gdt

        .globl multiboot_info_address
multiboot_info_address:
        .long 0
        .globl multiboot_magic
multiboot_magic:
        .long 0
        .globl next_cpu_index
next_cpu_index:
        .long 1

        .section .bss
        .align 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4096 * 4
        .align CPU_STACK_SIZE
        .globl cpu_stacks
cpu_stacks:
        .skip CPU_STACK_SIZE * MAX_CPUS

/* ------------------------------------------------------------------ */
        .section .text
        .code32
        .globl _start32
_start32:
        cli
        movl %eax, multiboot_magic
        movl %ebx, multiboot_info_address
        lgdt gdt_descriptor
        ljmp $0x10, $1f
1:      movw $0x18, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl $(cpu_stacks + CPU_STACK_SIZE), %esp

        /* Identity-map 4 GiB with 2 MiB pages (present, writable, PS). */
        movl $pd, %edi
        xorl %eax, %eax
        movl $2048, %ecx
2:      movl %eax, %edx
        orl $0x83, %edx
        movl %edx, (%edi)
        movl $0, 4(%edi)
        addl $0x200000, %eax
        addl $8, %edi
        loop 2b
        movl $(pd + 0x0003), pdpt
        movl $(pd + 0x1003), pdpt + 8
        movl $(pd + 0x2003), pdpt + 16
        movl $(pd + 0x3003), pdpt + 24
        movl $(pdpt + 3), pml4

        movl $start64, %esi
        jmp enter_long_mode32

/* PAE, CR3, EFER.LME, CR0.PG, then 64-bit code at %esi with flat data
 * segments: shared by the BSP and the APs, and needs no stack. */
enter_long_mode32:
        movl %cr4, %eax
        orl $0x20, %eax
        movl %eax, %cr4
        movl $pml4, %eax
        movl %eax, %cr3
        movl $0xC0000080, %ecx
        rdmsr
        orl $0x100, %eax
        wrmsr
        movl %cr0, %eax
        orl $0x80000000, %eax
        movl %eax, %cr0
        ljmp $0x08, $long_mode64

        .code64
long_mode64:
        movw $0x18, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        xorw %ax, %ax
        movw %ax, %fs
        movw %ax, %gs
        movl %esi, %esi                 /* upper half undefined after the switch */
        jmp *%rsi

start64:
        movq $(cpu_stacks + CPU_STACK_SIZE), %rsp
        xorl %edi, %edi
        call runtime_main
3:      cli
        hlt
        jmp 3b

/* APs arrive here from the trampoline, in long mode. */
ap_start64:
        lgdt gdt_descriptor
        movl $1, %eax
        lock xaddl %eax, next_cpu_index
        movl %eax, %edi                 /* CPU index (arrival order) */
        movq %rax, %rcx
        incq %rcx
        shlq $CPU_STACK_SHIFT, %rcx
        leaq cpu_stacks(%rip), %rsp
        addq %rcx, %rsp
        call runtime_ap_main
4:      cli
        hlt
        jmp 4b

/* ------------------------------------------------------------------ */
/* AP trampoline: copied to TRAMPOLINE_ADDRESS; the SIPI vector is
 * TRAMPOLINE_ADDRESS >> 12, so it starts at CS = vector << 8, IP = 0. */
        .globl trampoline_start, trampoline_end
        .code16
trampoline_start:
        cli
        xorw %ax, %ax
        movw %ax, %ds
        lgdtl (TRAMPOLINE_ADDRESS + trampoline_gdt - trampoline_start)
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $0x10, $(TRAMPOLINE_ADDRESS + trampoline32 - trampoline_start)
        .code32
trampoline32:
        movw $0x18, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl $ap_start64, %esi
        movl $enter_long_mode32, %eax
        jmp *%eax
        .align 4
trampoline_gdt:
        .word gdt_end - gdt - 1
        .long gdt
trampoline_end:
        .code64

/* ------------------------------------------------------------------ */
/* Interrupt stubs: 16 bytes each; vectors with a CPU-pushed error code
 * (8, 10-14, 17, 21, 29, 30) skip the dummy push. */
        .align 16
        .globl interrupt_stubs
interrupt_stubs:
        .set vector, 0
        .rept 256
        .align 16
        .if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
        .else
        pushq $0
        .endif
        pushq $vector
        jmp interrupt_common
        .set vector, vector + 1
        .endr

interrupt_common:
        pushq %rax
        pushq %rbx
        pushq %rcx
        pushq %rdx
        pushq %rsi
        pushq %rdi
        pushq %rbp
        pushq %r8
        pushq %r9
        pushq %r10
        pushq %r11
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        movq %rsp, %rdi
        call trap_dispatch
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        popq %r11
        popq %r10
        popq %r9
        popq %r8
        popq %rbp
        popq %rdi
        popq %rsi
        popq %rdx
        popq %rcx
        popq %rbx
        popq %rax
        addq $16, %rsp
        iretq

/* ------------------------------------------------------------------ */
/* int rdmsr_safe(uint32_t msr, uint64_t *value, uint64_t *fixup_slot)
 * int wrmsr_safe(uint32_t msr, uint64_t value, uint64_t *fixup_slot)
 * Return 0, or the exception vector the access raised: the trap handler
 * resumes at the address in *fixup_slot with RAX = vector. */
        .globl rdmsr_safe
rdmsr_safe:
        movq %rdx, %r8
        leaq 1f(%rip), %rax
        movq %rax, (%r8)
        movl %edi, %ecx
        rdmsr
        shlq $32, %rdx
        movl %eax, %eax
        orq %rdx, %rax
        movq %rax, (%rsi)
        xorl %eax, %eax
1:      movq $0, (%r8)
        ret

        .globl wrmsr_safe
wrmsr_safe:
        movq %rdx, %r8
        leaq 1f(%rip), %rax
        movq %rax, (%r8)
        movl %edi, %ecx
        movl %esi, %eax
        movq %rsi, %rdx
        shrq $32, %rdx
        wrmsr
        xorl %eax, %eax
1:      movq $0, (%r8)
        ret

        .section .note.GNU-stack, "", @progbits
