# SPDX-License-Identifier: MIT
# vlapic_add_guest(<name> <sources...>): builds a multiboot v1 guest kernel
# <name>.elf (ELF32 wrapping 64-bit code, as QEMU's -kernel wants) from the
# shared runtime plus <sources>, with the system gcc: freestanding, no SSE,
# no red zone, not position independent, our own linker script. The path is
# stored in the global property VLAPIC_GUEST_<name>.
set(VLAPIC_GUEST_RUNTIME ${CMAKE_CURRENT_LIST_DIR}/runtime)
find_program(VLAPIC_GUEST_OBJCOPY NAMES objcopy REQUIRED)

function(vlapic_add_guest name)
  set(sources ${ARGN})
  set(elf64 ${CMAKE_CURRENT_BINARY_DIR}/${name}.elf64)
  set(elf ${CMAKE_CURRENT_BINARY_DIR}/${name}.elf)
  set(flags -m64 -O2 -std=gnu11 -g0 -ffreestanding -nostdlib -static -fno-pic -fno-pie -no-pie
      -mno-sse -mno-sse2 -mno-mmx -mno-80387 -mgeneral-regs-only -mno-red-zone -mcmodel=small
      -fno-stack-protector -fno-asynchronous-unwind-tables -fno-builtin -fcf-protection=none
      -Wall -Wextra -Werror -I${VLAPIC_GUEST_RUNTIME}
      -Wl,-T,${VLAPIC_GUEST_RUNTIME}/link.ld -Wl,--build-id=none -Wl,-z,max-page-size=0x1000
      -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments)
  add_custom_command(
    OUTPUT ${elf}
    COMMAND ${CMAKE_C_COMPILER} ${flags} -o ${elf64}
            ${VLAPIC_GUEST_RUNTIME}/entry.S ${VLAPIC_GUEST_RUNTIME}/runtime.c ${sources}
    COMMAND ${VLAPIC_GUEST_OBJCOPY} -O elf32-i386 ${elf64} ${elf}
    DEPENDS ${sources} ${VLAPIC_GUEST_RUNTIME}/entry.S ${VLAPIC_GUEST_RUNTIME}/runtime.c
            ${VLAPIC_GUEST_RUNTIME}/runtime.h ${VLAPIC_GUEST_RUNTIME}/layout.h
            ${VLAPIC_GUEST_RUNTIME}/link.ld
    COMMENT "Building guest kernel ${name}.elf"
    VERBATIM)
  add_custom_target(guest-${name} ALL DEPENDS ${elf})
  set_property(GLOBAL PROPERTY VLAPIC_GUEST_${name} ${elf})
endfunction()
