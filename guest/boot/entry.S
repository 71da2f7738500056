/* Guest entry (ring 3) and the ring-0 exception stubs.
 * The host starts the vCPU at _start in ring 3 with rdi = heap base, rsi =
 * heap size, rdx = wasm memory cap in bytes (ABI 3) and rsp = top of the user
 * stack (16-byte aligned): the System V argument registers of lc_boot_main. */
#define __ASSEMBLER__ 1
#include "lightcell_abi.h"

    .section .text.lc_entry, "ax"
    .globl _start
_start:
    andq $-16, %rsp          /* System V: 16-byte aligned before the call */
    xorl %ebp, %ebp
    call lc_boot_main
1:  ud2                      /* lc_boot_main never returns */
    jmp 1b

/* Exception stubs: run at CPL0 on TSS.RSP0, which PVM emulates instruction
 * by instruction, so they are integer-only and short. Each reports vector,
 * error code, faulting rip and cr2 in registers through LC_PORT_FAULT; the
 * host poisons the VM and never resumes it (if it did, the stub repeats). */
    .section .text.lc_vectors, "ax"
    .globl lc_vectors
    .p2align 4
lc_vectors:
.macro STUB vec, has_error
    .p2align 4
    .if \has_error
    popq %rbx                /* error code pushed by the CPU */
    .else
    xorl %ebx, %ebx
    .endif
    movl $\vec, %eax
    jmp lc_fault_common
.endm
    STUB 0,0
    STUB 1,0
    STUB 2,0
    STUB 3,0
    STUB 4,0
    STUB 5,0
    STUB 6,0
    STUB 7,0
    STUB 8,1
    STUB 9,0
    STUB 10,1
    STUB 11,1
    STUB 12,1
    STUB 13,1
    STUB 14,1
    STUB 15,0
    STUB 16,0
    STUB 17,1
    STUB 18,0
    STUB 19,0
    STUB 20,0
    STUB 21,1
    STUB 22,0
    STUB 23,0
    STUB 24,0
    STUB 25,0
    STUB 26,0
    STUB 27,0
    STUB 28,0
    STUB 29,1
    STUB 30,1
    STUB 31,0

    .p2align 4
lc_fault_common:
    movq (%rsp), %rcx        /* faulting rip from the interrupt frame */
    movq %cr2, %rsi
    movl $LC_PORT_FAULT, %edx
2:  outl %eax, %dx
    jmp 2b

/* setjmp/longjmp for lc_fail: callee-saved registers, rsp and rip. */
    .section .text
    .globl lc_setjmp
lc_setjmp:
    movq %rbx, 0(%rdi)
    movq %rbp, 8(%rdi)
    movq %r12, 16(%rdi)
    movq %r13, 24(%rdi)
    movq %r14, 32(%rdi)
    movq %r15, 40(%rdi)
    leaq 8(%rsp), %rdx       /* rsp after our return */
    movq %rdx, 48(%rdi)
    movq (%rsp), %rdx        /* return address */
    movq %rdx, 56(%rdi)
    xorl %eax, %eax
    ret

    .globl lc_longjmp
lc_longjmp:
    movl %esi, %eax
    testl %eax, %eax
    jnz 3f
    incl %eax
3:  movq 0(%rdi), %rbx
    movq 8(%rdi), %rbp
    movq 16(%rdi), %r12
    movq 24(%rdi), %r13
    movq 32(%rdi), %r14
    movq 40(%rdi), %r15
    movq 48(%rdi), %rsp
    jmpq *56(%rdi)
