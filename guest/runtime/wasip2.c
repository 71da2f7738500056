/*
 * WASI 0.2 in the guest (wasip2.h): the handle table, wasi:cli, wasi:io,
 * wasi:clocks and wasi:random. Filesystem: wasip2_fs.c; sockets: wasip2_net.c.
 *
 * Grants match the wasmtime tier (vmm/wasmtime_tier/_component.py _WasiGate):
 * clocks need `clock`, random needs `random` (except STARTUP_RANDOM_BYTES
 * zero bytes during on-open), each refused call ends the event DENIED through
 * the host call that checks it; stdout/stderr become log lines when `log` is
 * granted and are dropped otherwise (asked with LC_HOST_GRANTED, which records
 * no denial: the wasmtime tier then gives the component a closed-stdio sink).
 * A granted read is one host call to the clock/random capability, as in the
 * wasmtime tier (vmm/wasmtime_tier/_component_wasi.py), so a host records the
 * same calls in both; a function that reads nothing (resolution) makes none.
 * Every pointer is checked against the lowering instance's memory (lc_cx_*);
 * every handle against the table (type, liveness, range).
 */
#include <string.h>

#include "lc_imports.h"
#include "wasip2_rt.h"

#ifndef LC_WASIP2_STARTUP_RANDOM_BYTES /* vmm/wasmtime_tier/_component.py STARTUP_RANDOM_BYTES */
#define LC_WASIP2_STARTUP_RANDOM_BYTES (624u * 4u)
#endif
#define MAX_RANDOM_BYTES (16u * 1024u * 1024u) /* one get-random-bytes call */
#define RANDOM_CHUNK 65536u /* one LC_HOST_RANDOM_BYTES (hostcalls.py MAX_RANDOM_BYTES) */
#define WRITE_PERMIT 65536u                    /* what check-write allows at a time */
#define POLL_MAX 1024u                         /* pollables in one poll call */

/* ---- the handle table (one per VM; a restore wipes it) ----------------- */

static struct lc_handle g_handles[LC_HANDLES_MAX];

uint32_t lc_h_new(uint8_t type) {
    for (uint32_t i = 0; i < LC_HANDLES_MAX; i++) {
        if (g_handles[i].type == LC_RES_FREE) {
            memset(&g_handles[i], 0, sizeof(g_handles[i]));
            g_handles[i].type = type;
            return i + 1;
        }
    }
    lc_fail(LC_STATUS_ABI, LC_ABI_TOO_MANY_HANDLES);
}

struct lc_handle *lc_h_get(uint32_t h, uint8_t type) {
    if (h == 0 || h > LC_HANDLES_MAX || g_handles[h - 1].type != type) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_HANDLE);
    }
    return &g_handles[h - 1];
}

void lc_h_drop(uint32_t h, uint8_t type) {
    lc_h_get(h, type)->type = LC_RES_FREE;
}

/* ---- the lowering instance's memory ------------------------------------ */

uint8_t *lc_cx_guest(struct lc_canon *cx, uint32_t ptr, uint64_t len) {
    wasm_rt_memory_t *mem = cx ? cx->memory : 0;
    if (!mem || len > mem->size || (uint64_t)ptr > mem->size - len) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_POINTER);
    }
    return mem->data + ptr;
}

uint8_t *lc_cx_area(struct lc_canon *cx, uint32_t ptr, uint32_t size, uint32_t align) {
    if (ptr & (align - 1u)) {
        lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
    }
    return lc_cx_guest(cx, ptr, size);
}

uint32_t lc_cx_alloc(struct lc_canon *cx, uint32_t size, uint32_t align) {
    if (size == 0) {
        return 0;
    }
    if (!cx->realloc) {
        lc_fail(LC_STATUS_ABI, LC_ABI_NO_REALLOC);
    }
    lc_rt_may_leave = 0;
    uint32_t ptr = cx->realloc(cx->instance, 0, 0, align, size);
    lc_rt_may_leave = 1;
    if (ptr & (align - 1u)) {
        lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
    }
    (void)lc_cx_guest(cx, ptr, size);
    return ptr;
}

uint32_t lc_cx_lower(struct lc_canon *cx, const void *src, uint32_t len) {
    uint32_t ptr = lc_cx_alloc(cx, len, 1);
    if (len) {
        memcpy(lc_cx_guest(cx, ptr, len), src, len);
    }
    return ptr;
}

/* ---- per-event state --------------------------------------------------- */

static int8_t g_granted[4]; /* -1 not asked in this event, else 0/1 */
static uint32_t g_startup_random;

void lc_wasip2_event_begin(void) {
    memset(g_granted, 0xff, sizeof(g_granted));
    g_startup_random = 0; /* also after an on-open that failed midway */
}

void lc_wasip2_flush_output(void) {
    lc_wasi_flush_output();
}

void lc_wasip2_startup_random(int allowed) {
    g_startup_random = allowed ? LC_WASIP2_STARTUP_RANDOM_BYTES : 0;
}

int lc_wasip2_granted(uint32_t grant) {
    if (g_granted[grant] < 0) {
        g_granted[grant] = lc_rt_host(LC_HOST_GRANTED, grant, 0, 0, 0, 0, 0, 0, 0) ? 1 : 0;
    }
    return g_granted[grant];
}

/* A WASI function that needs `grant` but reads nothing from the host: granted,
 * no host call (the host's record shows only what the plugin read, as in the
 * wasmtime tier); refused, host call `fn` makes (and records) the denial and
 * ends the event. */
static void need_grant(uint32_t grant, uint32_t fn) {
    if (!lc_wasip2_granted(grant)) {
        (void)lc_rt_host(fn, 0, 0, 0, 0, 0, 0, 0, 0);
        lc_fail(LC_STATUS_DENIED, fn); /* not reached: the host denies */
    }
}

/* ---- wasi:cli ------------------------------------------------------------ */

/* No environment; arguments only from `lightcell run` (none for plugins). */
void lc_wasip2_cli_environment_get_environment(struct lc_canon *cx, uint32_t retptr) {
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
    lc_rt_st32(area, 0);
    lc_rt_st32(area + 4, 0);
}

void lc_wasip2_cli_environment_get_arguments(struct lc_canon *cx, uint32_t retptr) {
    (void)lc_cx_area(cx, retptr, 8, 4);
    uint32_t got = 0;
    uint64_t count = lc_rt_host(LC_HOST_ARGUMENTS, 0, 0, 0, 0, 0, lc_rt_scratch, LC_RT_SCRATCH_BYTES, &got);
    if (count > got) { /* each argument takes at least its NUL */
        lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
    }
    uint32_t n = (uint32_t)count;
    uint32_t array = lc_cx_alloc(cx, 8u * n, 4);
    uint32_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = 0;
        while (at + len < got && lc_rt_scratch[at + len]) {
            len++;
        }
        if (at + len >= got) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        uint32_t ptr = lc_cx_lower(cx, lc_rt_scratch + at, len);
        uint8_t *entry = lc_cx_guest(cx, array + 8u * i, 8);
        lc_rt_st32(entry, ptr);
        lc_rt_st32(entry + 4, len);
        at += len + 1;
    }
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4); /* memory may have grown */
    lc_rt_st32(area, array);
    lc_rt_st32(area + 4, n);
}

void lc_wasip2_cli_environment_initial_cwd(struct lc_canon *cx, uint32_t retptr) {
    lc_cx_area(cx, retptr, 12, 4)[0] = 0; /* none */
}

/* As proc_exit: the event ends with LC_STATUS_EXIT (ok 0, err 1). */
void lc_wasip2_cli_exit_exit(struct lc_canon *cx, uint32_t status) {
    (void)cx;
    lc_wasi_flush_output(); /* the unfinished line, as the wasmtime tier flushes */
    lc_fail(LC_STATUS_EXIT, status ? 1u : 0u);
}

void lc_wasip2_cli_exit_exit_with_code(struct lc_canon *cx, uint32_t status_code) {
    (void)cx;
    lc_wasi_flush_output();
    lc_fail(LC_STATUS_EXIT, status_code & 0xffu);
}

uint32_t lc_wasip2_cli_stdin_get_stdin(struct lc_canon *cx) {
    (void)cx;
    return lc_h_new(LC_RES_INPUT_STREAM);
}

static uint32_t output_stream(uint8_t fd) {
    uint32_t h = lc_h_new(LC_RES_OUTPUT_STREAM);
    lc_h_get(h, LC_RES_OUTPUT_STREAM)->kind = fd;
    return h;
}

uint32_t lc_wasip2_cli_stdout_get_stdout(struct lc_canon *cx) {
    (void)cx;
    return output_stream(1);
}

uint32_t lc_wasip2_cli_stderr_get_stderr(struct lc_canon *cx) {
    (void)cx;
    return output_stream(2);
}

/* Not a terminal: none (terminal-input/-output handles never exist). */
void lc_wasip2_cli_terminal_stdin_get_terminal_stdin(struct lc_canon *cx, uint32_t retptr) {
    lc_cx_area(cx, retptr, 8, 4)[0] = 0;
}

void lc_wasip2_cli_terminal_stdout_get_terminal_stdout(struct lc_canon *cx, uint32_t retptr) {
    lc_cx_area(cx, retptr, 8, 4)[0] = 0;
}

void lc_wasip2_cli_terminal_stderr_get_terminal_stderr(struct lc_canon *cx, uint32_t retptr) {
    lc_cx_area(cx, retptr, 8, 4)[0] = 0;
}

void lc_wasip2_cli_terminal_input_resource_drop_terminal_input(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_TERMINAL_INPUT);
}

void lc_wasip2_cli_terminal_output_resource_drop_terminal_output(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_TERMINAL_OUTPUT);
}

/* ---- wasi:io/error ---------------------------------------------------------- */
/* No operation here fails with an error resource: none is ever made. */

void lc_wasip2_io_error_method_error_to_debug_string(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_ERROR);
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
    lc_rt_st32(area, 0);
    lc_rt_st32(area + 4, 0);
}

void lc_wasip2_io_error_resource_drop_error(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_ERROR);
}

/* ---- wasi:clocks ------------------------------------------------------------ */

uint64_t lc_wasip2_mono_now(void) {
    return lc_rt_host(LC_HOST_MONOTONIC_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
}

uint32_t lc_wasip2_pollable(uint32_t kind, uint64_t a) {
    uint32_t h = lc_h_new(LC_RES_POLLABLE);
    struct lc_handle *e = lc_h_get(h, LC_RES_POLLABLE);
    e->kind = (uint8_t)kind;
    e->a = a;
    return h;
}

uint64_t lc_wasip2_clocks_monotonic_clock_now(struct lc_canon *cx) {
    (void)cx;
    return lc_wasip2_mono_now();
}

uint64_t lc_wasip2_clocks_monotonic_clock_resolution(struct lc_canon *cx) {
    (void)cx;
    need_grant(LC_GRANT_CLOCK, LC_HOST_MONOTONIC_NOW); /* as every clock function */
    return 1;
}

uint32_t lc_wasip2_clocks_monotonic_clock_subscribe_instant(struct lc_canon *cx, uint64_t when) {
    (void)cx;
    need_grant(LC_GRANT_CLOCK, LC_HOST_MONOTONIC_NOW);
    return lc_wasip2_pollable(LC_POLL_CLOCK, when);
}

uint32_t lc_wasip2_clocks_monotonic_clock_subscribe_duration(struct lc_canon *cx, uint64_t when) {
    (void)cx;
    uint64_t now = lc_wasip2_mono_now();
    uint64_t at = now + when < now ? UINT64_MAX : now + when;
    return lc_wasip2_pollable(LC_POLL_CLOCK, at);
}

/* datetime { seconds: u64 @0, nanoseconds: u32 @8 } */
void lc_wasip2_clocks_wall_clock_now(struct lc_canon *cx, uint32_t retptr) {
    (void)lc_cx_area(cx, retptr, 16, 8);
    uint64_t ns = lc_rt_host(LC_HOST_WALL_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
    uint8_t *area = lc_cx_area(cx, retptr, 16, 8);
    lc_rt_st64(area, ns / 1000000000u);
    lc_rt_st32(area + 8, (uint32_t)(ns % 1000000000u));
}

void lc_wasip2_clocks_wall_clock_resolution(struct lc_canon *cx, uint32_t retptr) {
    (void)lc_cx_area(cx, retptr, 16, 8);
    need_grant(LC_GRANT_CLOCK, LC_HOST_WALL_NOW);
    uint8_t *area = lc_cx_area(cx, retptr, 16, 8);
    lc_rt_st64(area, 0);
    lc_rt_st32(area + 8, 1);
}

/* ---- wasi:random -------------------------------------------------------------- */

/* Fill [ptr, ptr+len) from LC_HOST_RANDOM_BYTES, RANDOM_CHUNK at a time (the
 * wasmtime tier asks its host in the same pieces: _component.py WASI_RANDOM_CHUNK). */
static void fill_random(struct lc_canon *cx, uint32_t ptr, uint32_t len) {
    uint32_t done = 0;
    do {
        uint32_t n = len - done > RANDOM_CHUNK ? RANDOM_CHUNK : len - done;
        uint32_t got = 0;
        lc_rt_host(LC_HOST_RANDOM_BYTES, n, 0, 0, 0, 0, lc_rt_scratch, n, &got);
        if (got != n) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        if (n) {
            memcpy(lc_cx_guest(cx, ptr + done, n), lc_rt_scratch, n);
        }
        done += n;
    } while (done < len);
}

static void random_list(struct lc_canon *cx, uint64_t len, uint32_t retptr, int startup_ok) {
    (void)lc_cx_area(cx, retptr, 8, 4);
    if (startup_ok && !lc_wasip2_granted(LC_GRANT_RANDOM) && len <= g_startup_random) {
        /* Zeros, not randomness: see STARTUP_RANDOM_BYTES. */
        g_startup_random -= (uint32_t)len;
        uint32_t ptr = lc_cx_alloc(cx, (uint32_t)len, 1);
        if (len) {
            memset(lc_cx_guest(cx, ptr, len), 0, len);
        }
        uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
        lc_rt_st32(area, ptr);
        lc_rt_st32(area + 4, (uint32_t)len);
        return;
    }
    need_grant(LC_GRANT_RANDOM, LC_HOST_RANDOM_U64); /* the grant first, whatever the length */
    if (len > MAX_RANDOM_BYTES) {
        lc_fail(LC_STATUS_ABI, LC_ABI_TOO_LARGE);
    }
    uint32_t ptr = lc_cx_alloc(cx, (uint32_t)len, 1);
    if (len) {
        fill_random(cx, ptr, (uint32_t)len);
    }
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
    lc_rt_st32(area, ptr);
    lc_rt_st32(area + 4, (uint32_t)len);
}

void lc_wasip2_random_random_get_random_bytes(struct lc_canon *cx, uint64_t len, uint32_t retptr) {
    random_list(cx, len, retptr, 1);
}

uint64_t lc_wasip2_random_random_get_random_u64(struct lc_canon *cx) {
    (void)cx;
    return lc_rt_host(LC_HOST_RANDOM_U64, 0, 0, 0, 0, 0, 0, 0, 0);
}

void lc_wasip2_random_insecure_get_insecure_random_bytes(struct lc_canon *cx, uint64_t len, uint32_t retptr) {
    random_list(cx, len, retptr, 0);
}

uint64_t lc_wasip2_random_insecure_get_insecure_random_u64(struct lc_canon *cx) {
    (void)cx;
    return lc_rt_host(LC_HOST_RANDOM_U64, 0, 0, 0, 0, 0, 0, 0, 0);
}

void lc_wasip2_random_insecure_seed_insecure_seed(struct lc_canon *cx, uint32_t retptr) {
    (void)lc_cx_area(cx, retptr, 16, 8);
    uint64_t a = lc_rt_host(LC_HOST_RANDOM_U64, 0, 0, 0, 0, 0, 0, 0, 0);
    uint64_t b = lc_rt_host(LC_HOST_RANDOM_U64, 0, 0, 0, 0, 0, 0, 0, 0);
    uint8_t *area = lc_cx_area(cx, retptr, 16, 8);
    lc_rt_st64(area, a);
    lc_rt_st64(area + 8, b);
}

/* ---- wasi:io/poll ----------------------------------------------------------- */

/* Whether pollable `e` is ready now; *deadline / ids collect what to wait for. */
static int ready(struct lc_handle *e, uint64_t *now, int *have_now, uint64_t *deadline,
                 uint32_t *ids, uint32_t *nids) {
    switch (e->kind) {
    case LC_POLL_CLOCK:
        if (!*have_now) {
            *now = lc_wasip2_mono_now();
            *have_now = 1;
        }
        if (*now >= e->a) {
            return 1;
        }
        if (e->a < *deadline) {
            *deadline = e->a;
        }
        return 0;
    case LC_POLL_UDP:
        if (*nids < POLL_MAX) {
            ids[(*nids)++] = (uint32_t)e->a;
        }
        return 0;
    default:
        return 1;
    }
}

/* Wait (host call, at most 1 s per call) for a socket or the deadline;
 * nonzero when a socket became readable. */
static uint64_t wait_some(const uint32_t *ids, uint32_t nids, uint64_t deadline, uint64_t now) {
    uint64_t timeout = deadline == UINT64_MAX ? UINT64_MAX : deadline - now;
    return lc_rt_host(LC_HOST_POLL, timeout, ids, 4u * nids, 0, 0, 0, 0, 0);
}

static uint32_t g_poll_ids[POLL_MAX];
static uint32_t g_poll_ready[POLL_MAX];

/* A UDP pollable is ready when the host has a datagram (a zero-timeout poll). */
static int udp_ready_now(const uint32_t *ids, uint32_t nids) {
    return nids && lc_rt_host(LC_HOST_POLL, 0, ids, 4u * nids, 0, 0, 0, 0, 0) != 0;
}

/* The indices of `hs` that are ready, waiting until one is. */
static uint32_t poll_handles(const uint32_t *hs, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        (void)lc_h_get(hs[i], LC_RES_POLLABLE);
    }
    for (;;) {
        uint64_t now = 0, deadline = UINT64_MAX;
        int have_now = 0;
        uint32_t count = 0, nids = 0, udp_at = 0;
        for (uint32_t i = 0; i < n; i++) {
            struct lc_handle *e = lc_h_get(hs[i], LC_RES_POLLABLE);
            uint32_t before = nids;
            int now_ready = ready(e, &now, &have_now, &deadline, g_poll_ids, &nids);
            if (nids > before) {
                udp_at = i;
                now_ready = udp_ready_now(g_poll_ids + before, 1);
            }
            if (now_ready) {
                g_poll_ready[count++] = i;
            }
        }
        if (count) {
            return count;
        }
        if (!have_now && deadline != UINT64_MAX) {
            now = lc_wasip2_mono_now();
        }
        if (wait_some(g_poll_ids, nids, deadline, now) && nids == 1) {
            g_poll_ready[0] = udp_at; /* the one socket waited on is readable: no re-poll */
            return 1;
        }
    }
}

static uint32_t g_poll_in[POLL_MAX];

void lc_wasip2_io_poll_poll(struct lc_canon *cx, uint32_t in_ptr, uint32_t in_len, uint32_t retptr) {
    if (in_len == 0 || in_len > POLL_MAX) { /* wasmtime traps on an empty list too */
        lc_fail(LC_STATUS_ABI, LC_ABI_WASI_UNUSABLE);
    }
    (void)lc_cx_area(cx, retptr, 8, 4);
    const uint8_t *in = lc_cx_area(cx, in_ptr, 4u * in_len, 4);
    for (uint32_t i = 0; i < in_len; i++) {
        g_poll_in[i] = lc_rt_ld32(in + 4u * i);
    }
    uint32_t count = poll_handles(g_poll_in, in_len);
    uint32_t out = lc_cx_alloc(cx, 4u * count, 4);
    for (uint32_t i = 0; i < count; i++) {
        lc_rt_st32(lc_cx_guest(cx, out + 4u * i, 4), g_poll_ready[i]);
    }
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
    lc_rt_st32(area, out);
    lc_rt_st32(area + 4, count);
}

uint32_t lc_wasip2_io_poll_method_pollable_ready(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    struct lc_handle *e = lc_h_get(self, LC_RES_POLLABLE);
    uint64_t now = 0, deadline = UINT64_MAX;
    int have_now = 0;
    uint32_t ids[1], nids = 0;
    return ready(e, &now, &have_now, &deadline, ids, &nids) || udp_ready_now(ids, nids);
}

void lc_wasip2_io_poll_method_pollable_block(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    (void)poll_handles(&self, 1);
}

void lc_wasip2_io_poll_resource_drop_pollable(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_POLLABLE);
}

/* ---- wasi:io/streams -------------------------------------------------------- */
/* result<T, stream-error>: tag @0; ok payload @ its alignment; err: stream-error
 * (variant: u8 tag @4 or @8, 0 last-operation-failed(error), 1 closed). */

static void stream_closed(uint8_t *area, uint32_t payload_at) {
    area[0] = 1;
    area[payload_at] = 1; /* closed */
}

/* stdin: always closed (empty), as the wasmtime tier's closed stdin. */
void lc_wasip2_io_streams_method_input_stream_read(struct lc_canon *cx, uint32_t self, uint64_t len,
                                                   uint32_t retptr) {
    (void)len;
    (void)lc_h_get(self, LC_RES_INPUT_STREAM);
    stream_closed(lc_cx_area(cx, retptr, 12, 4), 4);
}

void lc_wasip2_io_streams_method_input_stream_blocking_read(struct lc_canon *cx, uint32_t self, uint64_t len,
                                                            uint32_t retptr) {
    lc_wasip2_io_streams_method_input_stream_read(cx, self, len, retptr);
}

void lc_wasip2_io_streams_method_input_stream_skip(struct lc_canon *cx, uint32_t self, uint64_t len,
                                                   uint32_t retptr) {
    (void)len;
    (void)lc_h_get(self, LC_RES_INPUT_STREAM);
    stream_closed(lc_cx_area(cx, retptr, 16, 8), 8);
}

void lc_wasip2_io_streams_method_input_stream_blocking_skip(struct lc_canon *cx, uint32_t self, uint64_t len,
                                                            uint32_t retptr) {
    lc_wasip2_io_streams_method_input_stream_skip(cx, self, len, retptr);
}

uint32_t lc_wasip2_io_streams_method_input_stream_subscribe(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    (void)lc_h_get(self, LC_RES_INPUT_STREAM);
    return lc_wasip2_pollable(LC_POLL_READY, 0);
}

void lc_wasip2_io_streams_resource_drop_input_stream(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_INPUT_STREAM);
}

/* result<u64, stream-error>: ok u64 @8 */
void lc_wasip2_io_streams_method_output_stream_check_write(struct lc_canon *cx, uint32_t self,
                                                           uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_OUTPUT_STREAM);
    uint8_t *area = lc_cx_area(cx, retptr, 16, 8);
    area[0] = 0;
    lc_rt_st64(area + 8, WRITE_PERMIT);
}

/* Log lines when `log` is granted, else dropped (the wasmtime tier's sink). */
static void write_out(struct lc_canon *cx, uint32_t self, uint32_t ptr, uint32_t len, uint32_t retptr) {
    struct lc_handle *e = lc_h_get(self, LC_RES_OUTPUT_STREAM);
    uint8_t fd = e->kind;
    uint8_t *area = lc_cx_area(cx, retptr, 12, 4);
    const uint8_t *data = lc_cx_guest(cx, ptr, len);
    area[0] = 0;
    if (len && lc_wasip2_granted(LC_GRANT_LOG)) {
        lc_wasi_output(fd, data, len);
    }
}

void lc_wasip2_io_streams_method_output_stream_write(struct lc_canon *cx, uint32_t self, uint32_t contents_ptr,
                                                     uint32_t contents_len, uint32_t retptr) {
    write_out(cx, self, contents_ptr, contents_len, retptr);
}

void lc_wasip2_io_streams_method_output_stream_blocking_write_and_flush(struct lc_canon *cx, uint32_t self,
                                                                        uint32_t contents_ptr,
                                                                        uint32_t contents_len, uint32_t retptr) {
    write_out(cx, self, contents_ptr, contents_len, retptr);
}

/* Lines are logged whole; a flush does not cut one (the tier flushes when the hook ends). */
void lc_wasip2_io_streams_method_output_stream_flush(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_OUTPUT_STREAM);
    lc_cx_area(cx, retptr, 12, 4)[0] = 0;
}

void lc_wasip2_io_streams_method_output_stream_blocking_flush(struct lc_canon *cx, uint32_t self,
                                                              uint32_t retptr) {
    lc_wasip2_io_streams_method_output_stream_flush(cx, self, retptr);
}

uint32_t lc_wasip2_io_streams_method_output_stream_subscribe(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    (void)lc_h_get(self, LC_RES_OUTPUT_STREAM);
    return lc_wasip2_pollable(LC_POLL_READY, 0);
}

static const uint8_t g_zeros[256];

static void write_zeroes(struct lc_canon *cx, uint32_t self, uint64_t len, uint32_t retptr) {
    struct lc_handle *e = lc_h_get(self, LC_RES_OUTPUT_STREAM);
    uint8_t fd = e->kind;
    lc_cx_area(cx, retptr, 12, 4)[0] = 0;
    if (len > WRITE_PERMIT) {
        lc_fail(LC_STATUS_ABI, LC_ABI_TOO_LARGE);
    }
    if (len && lc_wasip2_granted(LC_GRANT_LOG)) {
        for (uint64_t done = 0; done < len;) {
            uint32_t n = len - done > sizeof(g_zeros) ? sizeof(g_zeros) : (uint32_t)(len - done);
            lc_wasi_output(fd, g_zeros, n);
            done += n;
        }
    }
}

void lc_wasip2_io_streams_method_output_stream_write_zeroes(struct lc_canon *cx, uint32_t self, uint64_t len,
                                                            uint32_t retptr) {
    write_zeroes(cx, self, len, retptr);
}

void lc_wasip2_io_streams_method_output_stream_blocking_write_zeroes_and_flush(struct lc_canon *cx,
                                                                               uint32_t self, uint64_t len,
                                                                               uint32_t retptr) {
    write_zeroes(cx, self, len, retptr);
}

/* The only input stream is stdin, which is closed: nothing to splice. */
void lc_wasip2_io_streams_method_output_stream_splice(struct lc_canon *cx, uint32_t self, uint32_t src,
                                                      uint64_t len, uint32_t retptr) {
    (void)len;
    (void)lc_h_get(self, LC_RES_OUTPUT_STREAM);
    (void)lc_h_get(src, LC_RES_INPUT_STREAM);
    stream_closed(lc_cx_area(cx, retptr, 16, 8), 8);
}

void lc_wasip2_io_streams_method_output_stream_blocking_splice(struct lc_canon *cx, uint32_t self, uint32_t src,
                                                               uint64_t len, uint32_t retptr) {
    lc_wasip2_io_streams_method_output_stream_splice(cx, self, src, len, retptr);
}

void lc_wasip2_io_streams_resource_drop_output_stream(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_OUTPUT_STREAM);
}

/* ---- the single-module binding (bind.c) ------------------------------------ */

static uint32_t plugin_realloc(void *instance, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    (void)instance;
    return lc_bind_realloc(a, b, c, d);
}

struct lc_canon *lc_wasip2_plugin_canon(void) {
    static struct lc_canon cx;
    cx.memory = lc_rt_memory;
    cx.realloc = plugin_realloc;
    cx.instance = 0;
    return &cx;
}
