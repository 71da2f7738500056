/*
 * The seam inside the micro-guest between its two halves:
 *   boot/     (entry, ring-3 set-up, exception stubs, dispatch loop, host calls)
 *   runtime/  (the wasm-rt implementation for wasm2c output, the contract glue)
 * and the host<->guest protocol records, which the host mirrors in
 * vmm/microvm/abi.py. Memory layout, ports and the ABI version live in
 * lightcell_abi.h (owned by the monitor side); this file owns the records.
 *
 * One event costs one VM exit: the host writes an lc_request into the IN
 * buffer and runs the vCPU; the guest's dispatch loop calls the runtime, writes
 * an lc_response into the OUT buffer and exits through LC_PORT_DONE. A plugin's
 * host call is one more exit (LC_PORT_HOSTCALL): the guest writes an
 * lc_hostcall into OUT, the host answers with an lc_hostcall_result in IN.
 */
#ifndef LC_GUEST_H
#define LC_GUEST_H

#include <stdint.h>

/* ---- requests (host -> guest, at the start of the IN buffer) ---------- */
enum lc_op {
    LC_OP_OPEN = 1,  /* payload: listener (arg0 bytes) then config (arg1 bytes) */
    LC_OP_DATA = 2,  /* arg0: direction (0 read, 1 write); arg1: end_of_stream; payload: chunk */
    LC_OP_CLOSE = 3, /* no payload */
    LC_OP_WARMUP = 4, /* touch the pages the first event will use, then report done */
    LC_OP_HTTP = 5,   /* an http-filter hook. arg0: phase bit (0 request-headers .. 5
                         response-trailers); arg1: end_of_stream; payload: for headers,
                         two lc_http lists (headers, attributes); for trailers, one;
                         for a body, the bytes. OK answers an lc_http_result. */
    LC_OP_PHASES = 6  /* call wanted-phases once (load time); OK detail: the flags */
};

/* An lc_http list in a LC_OP_HTTP payload: u32 count, then per entry u32
 * name length, u32 value length, the name bytes, the value bytes. */

/* The payload of LC_OP_HTTP's OK response. The host lifts the decision from
 * the plugin's memory itself (vmm/http_abi.py) after checking that
 * [memory_base, memory_base + memory_size) lies inside the heap; the hook's
 * cabi_post_* runs at the start of the next request, once the host has read
 * the memory. */
struct lc_http_result {
    uint64_t memory_base; /* guest address of the wasm linear memory */
    uint64_t memory_size; /* its size in bytes */
    uint32_t retptr;      /* the hook's decision area, an offset in that memory */
    uint32_t reserved;
};

struct lc_request {
    uint32_t op;
    uint32_t arg0;
    uint32_t arg1;
    uint32_t len; /* payload bytes that follow this header */
};

/* ---- responses (guest -> host, at the start of the OUT buffer) -------- */
enum lc_status {
    LC_STATUS_OK = 0,
    LC_STATUS_TRAP = 1,    /* detail: enum lc_trap */
    LC_STATUS_MEMORY = 2,  /* memory cap hit (a refused memory.grow, then a trap) */
    LC_STATUS_DENIED = 3,  /* a host call was refused by the host (ungranted) */
    LC_STATUS_ABI = 4,     /* the plugin broke the contract (bad pointer, bad tag) */
    LC_STATUS_EXIT = 5     /* WASI proc_exit; detail: exit code */
};

struct lc_response {
    uint32_t status;  /* enum lc_status */
    uint32_t detail;  /* LC_STATUS_OK + on-data: verdict tag (0 pass 1 replace 2 close 3 reset) */
    uint32_t reserved;
    uint32_t len;     /* payload bytes that follow (replace data) */
};

/* wasm traps, mirroring wasm_rt_trap_t's meaning */
enum lc_trap {
    LC_TRAP_UNREACHABLE = 1,
    LC_TRAP_OOB = 2,
    LC_TRAP_INT_OVERFLOW = 3,
    LC_TRAP_DIV_BY_ZERO = 4,
    LC_TRAP_INVALID_CONVERSION = 5,
    LC_TRAP_CALL_INDIRECT = 6,
    LC_TRAP_EXHAUSTION = 7,  /* call stack depth */
    LC_TRAP_OTHER = 8
};

/* ---- host calls (guest -> host, at the start of the OUT buffer) ------- */
enum lc_hostfn {
    LC_HOST_LOG = 1,            /* a0 level; blob0 message */
    LC_HOST_WALL_NOW = 2,       /* -> value */
    LC_HOST_MONOTONIC_NOW = 3,  /* -> value */
    LC_HOST_RANDOM_U64 = 4,     /* -> value */
    LC_HOST_RANDOM_BYTES = 5,   /* a0 count -> payload (WASI random_get) */
    LC_HOST_KV_GET = 6,         /* blob0 key -> value 1 found / 0 missing, payload */
    LC_HOST_KV_SET = 7,         /* blob0 key, blob1 value */
    LC_HOST_KV_DELETE = 8,      /* blob0 key */
    LC_HOST_KV_INCREMENT = 9,   /* blob0 key, a0 delta (as u64) -> value */
    LC_HOST_METADATA_SET = 10,  /* blob0 key, blob1 value */
    LC_HOST_EGRESS_SEND = 11,   /* blob0 host, a0 port, blob1 payload -> value 0 ok / 1+send-error */
    LC_HOST_CONNECTION_ATTRIBUTES = 12, /* -> value count; payload per attribute: u32 name
                                          length, u32 value length, name, value */
    /* WASI 0.2 (guest/runtime/wasip2*.c). An address is 6 bytes: IPv4 octets, port (BE). */
    LC_HOST_GRANTED = 13,   /* a0 grant (wasip2_rt.h LC_GRANT_*) -> value 1/0; needs no grant,
                               records no denial */
    LC_HOST_ARGUMENTS = 14, /* -> value count; payload: each argument NUL-terminated */
    LC_HOST_UDP_BIND = 15,  /* blob0 address -> value socket id (1..) or 1<<32 | error-code */
    LC_HOST_UDP_RECV = 16,  /* a0 socket id -> value 1 (2: more queued) + payload address, data / 0 none;
                               socket 0: the egress grant check only */
    LC_HOST_UDP_SEND = 17,  /* a0 socket id (0 unbound: the egress allow list), blob0 address,
                               blob1 data -> value 0 ok / 1 + error-code */
    LC_HOST_POLL = 18       /* a0 timeout ns (the host waits at most 1 s), blob0 u32 socket ids
                               -> value 1 if one is readable */
};

struct lc_hostcall {
    uint32_t fn;      /* enum lc_hostfn */
    uint32_t len0;    /* blob0 bytes, following this header */
    uint32_t len1;    /* blob1 bytes, following blob0 */
    uint32_t reserved;
    uint64_t a0;
};

enum lc_hostcall_status {
    LC_HOSTCALL_OK = 0,
    LC_HOSTCALL_DENIED = 1,  /* capability not granted: the guest must fail the event (LC_STATUS_DENIED) */
    LC_HOSTCALL_MISUSE = 2   /* refused arguments: the guest must fail the event (LC_STATUS_ABI) */
};

struct lc_hostcall_result { /* at the start of the IN buffer */
    uint32_t status;  /* enum lc_hostcall_status */
    uint32_t len;     /* payload bytes that follow */
    uint64_t value;
};

/* ---- functions boot/ provides to runtime/ ----------------------------- */

/* Perform a host call: the request is built from the arguments, the result
 * is copied out. Returns the hostcall status; never returns on a host that
 * tore the VM down. `resp`/`resp_cap` may be 0 when no payload is expected;
 * a payload longer than resp_cap is an ABI fault (the host never sends one). */
uint32_t lc_hostcall(uint32_t fn, uint64_t a0,
                     const void *blob0, uint32_t len0,
                     const void *blob1, uint32_t len1,
                     uint64_t *value, void *resp, uint32_t resp_cap, uint32_t *resp_len);

/* End the current event with a failure status; never returns (longjmps to
 * the dispatch loop, which reports it through LC_PORT_DONE). */
__attribute__((noreturn)) void lc_fail(uint32_t status, uint32_t detail);

/* The region the runtime may use for wasm linear memory and its own heap
 * (fixed size from the listener's limits; never grows past it). */
extern uint8_t *lc_heap_base;
extern uint64_t lc_heap_size;
/* The listener's memory cap in bytes: no wasm memory may be larger (not at
 * instantiation, not by memory.grow). Less than lc_heap_size: the rest of
 * the heap is the runtime's own (tables, scratch), never wasm memory. */
extern uint64_t lc_memory_cap;

/* ---- functions runtime/ provides to boot/ ----------------------------- */

/* Instantiate the plugin's wasm module (call _initialize if exported).
 * Runs once at boot, before the snapshot. Fails through lc_fail. */
void lc_runtime_init(void);

/* Handle one request whose header and payload are in the IN buffer; write the
 * response into `out` (capacity out_cap, header included). Validates the
 * request's lengths against in_cap before use. Fails through lc_fail. */
void lc_runtime_handle(const struct lc_request *req, uint32_t in_cap,
                       struct lc_response *out, uint32_t out_cap);

#endif
