/*
 * Internals shared by the guest's WASI 0.2 (wasip2.c: cli, io, clocks,
 * random; wasip2_fs.c: filesystem; wasip2_net.c: sockets): the handle
 * table, checked access to the lowering instance's memory, and the host
 * calls WASI 0.2 added (lc_guest.h LC_HOST_GRANTED .. LC_HOST_POLL).
 */
#ifndef LC_WASIP2_RT_H
#define LC_WASIP2_RT_H

#include <stdint.h>

#include "lc_rt.h"
#include "wasip2.h"

/* LC_STATUS_ABI details beyond lc_rt.h's (vmm/microvm/wasip2_faults.py
 * words them): */
#define LC_ABI_BAD_HANDLE 9u  /* a handle of the wrong type, dropped, or out of range */
#define LC_ABI_WASI_UNUSABLE 10u /* a WASI function with nothing to act on (an empty poll) */
#define LC_ABI_NO_REALLOC 11u /* a list result, but the lowering gave no cabi_realloc */
#define LC_ABI_TOO_MANY_HANDLES 12u /* the handle table is full */

/* Resource types (one table for all). */
enum lc_res {
    LC_RES_FREE = 0,
    LC_RES_ERROR,
    LC_RES_POLLABLE,
    LC_RES_INPUT_STREAM,
    LC_RES_OUTPUT_STREAM,
    LC_RES_TERMINAL_INPUT,
    LC_RES_TERMINAL_OUTPUT,
    LC_RES_DESCRIPTOR,
    LC_RES_DIRECTORY_ENTRY_STREAM,
    LC_RES_NETWORK,
    LC_RES_UDP_SOCKET,
    LC_RES_INCOMING_DATAGRAM_STREAM,
    LC_RES_OUTGOING_DATAGRAM_STREAM,
    LC_RES_TCP_SOCKET,
    LC_RES_RESOLVE_ADDRESS_STREAM
};

/* pollable kinds */
#define LC_POLL_READY 0u   /* always ready (streams, outgoing datagrams) */
#define LC_POLL_CLOCK 1u   /* ready at a monotonic instant (a) */
#define LC_POLL_UDP 2u     /* ready when the host socket (a) has a datagram */

struct lc_handle {
    uint8_t type;  /* enum lc_res */
    uint8_t kind;  /* pollable kind; output-stream: 1 stdout, 2 stderr */
    uint16_t port; /* udp-socket: bound / connected port */
    uint32_t b;    /* udp-socket: bound address; streams: the socket's handle */
    uint64_t a;    /* pollable: deadline or host socket; udp-socket: host socket id */
    uint32_t remote_addr; /* udp-socket: connected address (remote_port != 0) */
    uint16_t remote_port;
    uint8_t state; /* udp-socket: 0 new, 1 bound, 2 streams made */
};

#define LC_HANDLES_MAX 1024u

/* A new handle of `type` (1-based), or a trap when the table is full. */
uint32_t lc_h_new(uint8_t type);
/* The live entry of `type` behind `h`, or a trap (LC_ABI_BAD_HANDLE). */
struct lc_handle *lc_h_get(uint32_t h, uint8_t type);
/* Drop: checks like lc_h_get, then frees the slot. */
void lc_h_drop(uint32_t h, uint8_t type);

/* Checked (ptr, len) in the lowering instance's memory, else LC_ABI_BAD_POINTER. */
uint8_t *lc_cx_guest(struct lc_canon *cx, uint32_t ptr, uint64_t len);
/* A return area: aligned (else LC_ABI_UNALIGNED) and in memory. */
uint8_t *lc_cx_area(struct lc_canon *cx, uint32_t ptr, uint32_t size, uint32_t align);
/* cabi_realloc(0, 0, align, size) of the lowering instance with imports
 * forbidden; 0 for size 0; the block is bounds-checked. */
uint32_t lc_cx_alloc(struct lc_canon *cx, uint32_t size, uint32_t align);
/* Copy bytes into a fresh block (0 for len 0). */
uint32_t lc_cx_lower(struct lc_canon *cx, const void *src, uint32_t len);

static inline void lc_st16(uint8_t *p, uint16_t v) { __builtin_memcpy(p, &v, 2); }
static inline uint16_t lc_ld16(const uint8_t *p) {
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return v;
}

/* Capabilities LC_HOST_GRANTED answers for (vmm/microvm/hostcalls.py GRANT_QUERY). */
#define LC_GRANT_LOG 0u
#define LC_GRANT_CLOCK 1u
#define LC_GRANT_RANDOM 2u
#define LC_GRANT_EGRESS 3u
/* Whether the listener grants it (asked once per event; no denial recorded). */
int lc_wasip2_granted(uint32_t grant);

/* wasip2.c: monotonic now (the clock grant's host call). */
uint64_t lc_wasip2_mono_now(void);
/* wasip2.c: a new pollable. */
uint32_t lc_wasip2_pollable(uint32_t kind, uint64_t a);

/* wasip2_fs.c: a function of a resource type never made (descriptor,
 * tcp-socket, ...): traps on the handle (LC_ABI_BAD_HANDLE). */
__attribute__((noreturn)) void lc_wasip2_never(uint8_t type, uint32_t self);
/* wasip2.c: the lowering context of a single-module plugin (bind.c). */
struct lc_canon *lc_wasip2_plugin_canon(void);

/* wasi.c: stdout (1) / stderr (2) bytes into log lines (the grant is checked
 * by the caller). */
void lc_wasi_output(uint32_t fd, const uint8_t *data, uint32_t len);

#endif
