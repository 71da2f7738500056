/*
 * The micro-VM ABI shared by the guest and the host monitor (mirrored in
 * vmm/microvm/abi.py, checked by tests/test_kvm_abi.py): ABI version, I/O
 * ports, and the guest memory layout. Guest virtual == guest physical.
 *
 *   address       size        what                       ring-3 access  slot
 *   0x00000000    4 KiB       null page                  not mapped     -
 *   0x00001000    ...         page tables                none           RO, shared per image
 *   0x00080000    4 KiB       GDT                        none           RO
 *   0x00081000    4 KiB       IDT                        none           RO
 *   0x00082000    4 KiB       TSS + I/O permission map   none           RO
 *   0x00100000    ...         image: header, .text       read+exec      RO
 *                             .rodata                    read           RO
 *   0x40000000    16 KiB      ring-0 exception stack     none           RW, per VM
 *   0x40010000    <= 896 KiB  image .data/.bss           read+write     RW
 *   0x400f0000    64 KiB      stack guard                not mapped     RW
 *   0x40100000    1 MiB       user stack (guard below)   read+write     RW
 *   0x40200000    16 MiB      IN buffer  (host -> guest) read+write     RW
 *   0x41200000    16 MiB      OUT buffer (guest -> host) read+write     RW
 *   0x42200000    heap size   heap (wasm memory, runtime) read+write    RW
 *
 * IN/OUT are as large as the default wasm memory cap: a chunk must fit in
 * the plugin's memory anyway. Only the pages an event touches are allocated.
 *
 * The heap is the wasm memory cap (page-rounded) plus a runtime reserve for
 * tables and the host-call scratch buffer. The vCPU starts at the image's
 * entry in ring 3 with rdi = heap base, rsi = heap size, rdx = wasm memory
 * cap in bytes (the listener's limit: no wasm memory may exceed it, so it
 * never grows into the reserve), rsp = top of the user stack.
 *
 * Every ring-3 page is mapped no-execute except .text; the page tables,
 * descriptor tables and code live in a read-only memory slot.
 * The heap is zero at boot: the runtime need not clear it.
 */
#ifndef LIGHTCELL_ABI_H
#define LIGHTCELL_ABI_H

/* 3: the boot registers gained rdx = the wasm memory cap (see entry.S).
 * 4: LC_OP_HTTP and LC_OP_PHASES (http-filter hooks, lc_guest.h). */
#define LC_ABI_VERSION 4u
#define LC_IMAGE_MAGIC 0x4c4c4543u /* "CELL" little-endian */

/* Ports (ring 3 may use only these, 32-bit `out`, through the TSS I/O map). */
#define LC_PORT_READY    0x100u /* once after boot: eax = LC_ABI_VERSION */
#define LC_PORT_DONE     0x104u /* the event's lc_response is in OUT */
#define LC_PORT_HOSTCALL 0x108u /* an lc_hostcall is in OUT; the result comes in IN */
/* Ring-0 only (not in the I/O map): an exception. rax vector, rbx error
 * code, rcx faulting rip, rsi cr2. */
#define LC_PORT_FAULT    0x1f0u

#define LC_PAGE_TABLES   0x00001000ull
#define LC_GDT           0x00080000ull
#define LC_IDT           0x00081000ull
#define LC_TSS           0x00082000ull
#define LC_IMAGE_BASE    0x00100000ull
#define LC_RO_LIMIT      0x40000000ull /* the image's read-only part ends below */

#define LC_RW_BASE       0x40000000ull
#define LC_KSTACK        0x40000000ull
#define LC_KSTACK_SIZE   0x4000ull
#define LC_DATA_BASE     0x40010000ull
#define LC_DATA_LIMIT    0x400f0000ull
#define LC_STACK_BASE    0x40100000ull
#define LC_STACK_SIZE    0x100000ull
#define LC_IN_BASE       0x40200000ull
#define LC_IN_SIZE       0x1000000ull
#define LC_OUT_BASE      0x41200000ull
#define LC_OUT_SIZE      0x1000000ull
#define LC_HEAP_BASE     0x42200000ull

/* Segment selectors in the GDT. */
#define LC_SEL_KCODE 0x08u
#define LC_SEL_KDATA 0x10u
#define LC_SEL_UDATA 0x1bu /* 0x18 | RPL 3 */
#define LC_SEL_UCODE 0x23u /* 0x20 | RPL 3 */
#define LC_SEL_TSS   0x28u

#ifndef __ASSEMBLER__
#include <stdint.h>
/* At LC_IMAGE_BASE (section .lc_header, first in the image). */
struct lc_image_header {
    uint32_t magic;       /* LC_IMAGE_MAGIC */
    uint32_t abi_version; /* LC_ABI_VERSION */
    uint64_t vectors;     /* 32 ring-0 exception stubs, LC_VECTOR_STUB_SIZE apart */
};
#endif
#define LC_VECTOR_STUB_SIZE 16
#ifndef __ASSEMBLER__
#endif

#endif
