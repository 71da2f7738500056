/*
 * Internal interface of the guest's wasm runtime (guest/runtime/):
 *   wasm_rt.c    the wasm-rt functions wasm2c output calls (memory, tables, traps)
 *   contract.c   lc_runtime_init / lc_runtime_handle: the plugin contract's exports
 *   imports.c    the contract's imports (log, clock, random, kv, metadata, egress)
 *   wasi.c       the WASI preview1 subset
 *   http.c       the http-filter world's hooks (LC_OP_HTTP, LC_OP_PHASES)
 *   lc_libc.c    memcpy family, math, abort, setjmp/longjmp
 * and the per-plugin binding that vmm/microvm/compile.py generates (bind.c):
 * the only code that names the plugin's wasm2c symbols.
 *
 * lc_heap layout (fixed size: the listener's memory cap, page-rounded, plus
 * a runtime reserve; vmm/microvm/layout.py):
 *
 *   lc_heap_base                                      lc_heap_base + lc_heap_size
 *   | linear memory (grows up) ... free ... | scratch, tables (bump down) |
 *   ^ g_up (next memory)                    ^ g_down (lowest table byte)
 *
 * The listener's cap is lc_memory_cap, not the heap size: a memory is never
 * instantiated larger than it, and memory.grow is refused past it (exactly
 * where wasmtime's store limit refuses), so the reserve stays the runtime's.
 * Growth is also refused if the memory would reach g_down (only possible
 * when tables outgrow the reserve, or with several memories in spec tests).
 * A refused growth is remembered for the rest of the event so that the trap
 * that usually follows is reported as LC_STATUS_MEMORY rather than a plain
 * trap.
 */
#ifndef LC_RT_H
#define LC_RT_H

#include <stdint.h>

#include "lc_guest.h"
#include "wasm-rt.h"

/* LC_STATUS_ABI details: which rule of the contract the plugin broke. */
enum lc_abi_detail {
    LC_ABI_BAD_POINTER = 1,  /* a (pointer, length) outside linear memory */
    LC_ABI_BAD_VERDICT = 2,  /* on-data returned an unknown verdict tag */
    LC_ABI_BAD_REQUEST = 3,  /* the host's request was malformed (host bug) */
    LC_ABI_TOO_LARGE = 4,    /* replace data over LC_MAX_OUTPUT_BYTES or the OUT buffer */
    LC_ABI_BAD_ENUM = 5,     /* an enum argument out of range (log level) */
    LC_ABI_HOST_MISUSE = 6,  /* the host refused the arguments of a host call */
    LC_ABI_NO_LEAVE = 7,     /* an import called from cabi_realloc or post-return */
    LC_ABI_UNALIGNED = 8     /* a return area not aligned as the ABI requires */
};

/* log levels (WIT log-level) used for WASI stdout / stderr lines */
#define LC_LOG_INFO 2u
#define LC_LOG_WARN 3u
/* Not a level: a LOG host call with this a0 only checks the `log` grant and
 * logs nothing (vmm/microvm/hostcalls.py LOG_GRANT_CHECK; WASI fd_write). */
#define LC_LOG_GRANT_CHECK 255u

/* Bytes of the scratch buffer for host-call results (kv.get values, WASI
 * random_get, fd_write line assembly). Larger kv values are an ABI fault. */
#define LC_RT_SCRATCH_BYTES 65536u

/* The plugin's linear memory (set once instantiated). */
extern wasm_rt_memory_t *lc_rt_memory;
/* The scratch buffer (LC_RT_SCRATCH_BYTES, from the top of lc_heap). */
extern uint8_t *lc_rt_scratch;
/* Cleared while the plugin runs cabi_realloc or a post-return function:
 * the canonical ABI forbids calling imports there. */
extern int lc_rt_may_leave;

/* Set up the heap allocator (idempotent). */
void lc_rt_heap_init(void);
/* Forget every allocation (host-native harness only). */
void lc_rt_heap_reset(void);
/* Allocate from the top of lc_heap; 0 when it does not fit. */
void *lc_rt_alloc_top(uint64_t size, uint64_t align);
/* Start of an event: reset per-event state (call depth, refused growth). */
void lc_rt_event_begin(void);
/* Whether a memory.grow was refused during this event. */
int lc_rt_grow_was_refused(void);

/* The one accessor for plugin-supplied (pointer, length) pairs: returns the
 * host address, or ends the event with LC_STATUS_ABI (overflow-safe). */
uint8_t *lc_rt_guest(uint32_t ptr, uint64_t len);

/* Call the plugin's cabi_realloc(0, 0, align, size) with imports forbidden;
 * the returned range is bounds-checked. */
uint32_t lc_rt_alloc_in_plugin(uint32_t size, uint32_t align);

/* Little-endian stores/loads into checked host addresses. */
static inline void lc_rt_st32(uint8_t *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void lc_rt_st64(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
static inline uint32_t lc_rt_ld32(const uint8_t *p) {
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

/* A host call on behalf of the plugin: refused from realloc/post-return,
 * DENIED ends the event with LC_STATUS_DENIED, MISUSE with LC_STATUS_ABI. */
uint64_t lc_rt_host(uint32_t fn, uint64_t a0, const void *blob0, uint32_t len0,
                    const void *blob1, uint32_t len1, void *resp, uint32_t resp_cap,
                    uint32_t *resp_len);

/* ---- the per-plugin binding (generated bind.c) ------------------------ */
void lc_bind_instantiate(void);
wasm_rt_memory_t *lc_bind_memory(void);
uint32_t lc_bind_realloc(uint32_t old_ptr, uint32_t old_size, uint32_t align, uint32_t new_size);
int lc_bind_initialize(void); /* 0 if the plugin has no _initialize */
void lc_bind_on_open(uint32_t lptr, uint32_t llen, uint32_t cptr, uint32_t clen);
uint32_t lc_bind_on_data(uint32_t dir, uint32_t ptr, uint32_t len, uint32_t eos);
void lc_bind_on_close(void);
int lc_bind_post_on_data(uint32_t retptr); /* 0 if not exported */
/* http-filter (a tcp-filter image fails these with LC_ABI_BAD_REQUEST, and
 * the tcp-filter ones in an http-filter image). `phase`: the phase's bit
 * index (0 request-headers .. 5 response-trailers); unused arguments are 0. */
uint32_t lc_bind_wanted_phases(void); /* runs cabi_post_wanted-phases too */
uint32_t lc_bind_http_hook(uint32_t phase, uint32_t a, uint32_t b, uint32_t c, uint32_t d,
                           uint32_t e);
int lc_bind_post_http_hook(uint32_t phase, uint32_t retptr); /* 0 if not exported */

/* ---- http.c, called by contract.c ------------------------------------- */
/* Run the previous hook's deferred cabi_post_* (if any): first thing in
 * every request, so the host has read the memory it frees. */
void lc_http_post_pending(void);
/* LC_OP_HTTP: lower the payload, call the hook, fill the lc_http_result
 * behind `out`; returns its length. */
uint32_t lc_http_hook(uint32_t phase, uint32_t eos, const uint8_t *payload, uint32_t len,
                      uint8_t *out, uint32_t out_cap);

#endif
