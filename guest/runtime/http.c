/*
 * The http-filter world's hooks in the micro-VM (lc_guest.h LC_OP_HTTP,
 * LC_OP_PHASES; core view in plugins/wit/README.md, "Core-module view of
 * http-filter").
 *
 * The guest only lowers: header and attribute lists go into the plugin's
 * memory with one cabi_realloc per array, name and value, exactly as
 * vmm/http_abi.lower_pairs does in the wasmtime tier (the plugin may free
 * each block on its own). The decision is NOT lifted here: the guest reports
 * the return-area pointer and where the linear memory lies, and the host
 * reads the decision with its one hardened lifter (vmm/http_abi.py), after
 * checking that range against the heap. The guest runs the plugin, so
 * nothing it says is trusted, and a second lifter in C would be a second
 * thing to get right.
 *
 * So the memory must stay as the hook left it until the host has read it:
 * the hook's cabi_post_* is deferred to the start of the next request
 * (lc_http_post_pending), which is still before any other export runs, as
 * the canonical ABI requires.
 */
#include <string.h>

#include "lc_imports.h"
#include "lc_rt.h"

enum { PH_REQ_HEADERS, PH_REQ_BODY, PH_REQ_TRAILERS, PH_RESP_HEADERS, PH_RESP_BODY,
       PH_RESP_TRAILERS, PH_COUNT };

/* The hook whose cabi_post_* has not run yet (part of the VM's state, so a
 * restore forgets it with everything else). */
static int g_post_pending;
static uint32_t g_post_phase, g_post_retptr;

/* The host's payload, read front to back; it is the host's, but a bad one
 * still only fails the event. */
struct reader {
    const uint8_t *p;
    uint32_t left;
};

static __attribute__((noreturn)) void bad_request(void) {
    lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
}

static uint32_t take32(struct reader *r) {
    if (r->left < 4) {
        bad_request();
    }
    uint32_t v = lc_rt_ld32(r->p);
    r->p += 4;
    r->left -= 4;
    return v;
}

static const uint8_t *take(struct reader *r, uint32_t n) {
    if (n > r->left) {
        bad_request();
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

/* A list<u8> the plugin owns (a body: always allocated, as on-data's data). */
static uint32_t lower_bytes(const uint8_t *src, uint32_t len) {
    uint32_t ptr = lc_rt_alloc_in_plugin(len, 1);
    if (len) {
        memcpy(lc_rt_guest(ptr, len), src, len);
    }
    return ptr;
}

/* A name or value: empty ones get no allocation (pointer 0), as lower_pairs. */
static uint32_t lower_string(const uint8_t *src, uint32_t len) {
    return len ? lower_bytes(src, len) : 0;
}

/* One lc_http list as a list<header> / list<attribute>: the 16-byte entries'
 * array first (align 4), then name and value of each entry in turn. */
static void lower_list(struct reader *r, uint32_t *ptr_out, uint32_t *count_out) {
    uint32_t n = take32(r);
    *ptr_out = 0;
    *count_out = n;
    if (n == 0) {
        return;
    }
    if (n > r->left / 8u) { /* every entry has 8 bytes of lengths: bounds 16 * n too */
        bad_request();
    }
    uint32_t array = lc_rt_alloc_in_plugin(16u * n, 4);
    if (array & 3u) {
        lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t nlen = take32(r), vlen = take32(r);
        const uint8_t *name = take(r, nlen);
        const uint8_t *value = take(r, vlen);
        uint32_t np = lower_string(name, nlen);
        uint32_t vp = lower_string(value, vlen);
        /* Checked again per entry: the plugin's allocator ran in between. */
        uint8_t *e = lc_rt_guest(array + 16u * i, 16);
        lc_rt_st32(e, np);
        lc_rt_st32(e + 4, nlen);
        lc_rt_st32(e + 8, vp);
        lc_rt_st32(e + 12, vlen);
    }
    *ptr_out = array;
}

void lc_http_post_pending(void) {
    if (!g_post_pending) {
        return;
    }
    g_post_pending = 0;
    lc_rt_may_leave = 0; /* the canonical ABI forbids imports in post-return */
    lc_bind_post_http_hook(g_post_phase, g_post_retptr);
    lc_rt_may_leave = 1;
}

uint32_t lc_http_hook(uint32_t phase, uint32_t eos, const uint8_t *payload, uint32_t len,
                      uint8_t *out, uint32_t out_cap) {
    if (phase >= PH_COUNT || eos > 1 || out_cap < sizeof(struct lc_http_result)) {
        bad_request();
    }
    struct reader r = {payload, len};
    uint32_t a[5] = {0, 0, 0, 0, 0};
    switch (phase) {
    case PH_REQ_HEADERS:
    case PH_RESP_HEADERS:
        lower_list(&r, &a[0], &a[1]);
        lower_list(&r, &a[2], &a[3]);
        a[4] = eos;
        break;
    case PH_REQ_BODY:
    case PH_RESP_BODY:
        a[0] = lower_bytes(take(&r, len), len);
        a[1] = len;
        a[2] = eos;
        break;
    default: /* trailers: no end_of_stream argument */
        if (eos) {
            bad_request();
        }
        lower_list(&r, &a[0], &a[1]);
        break;
    }
    if (r.left != 0) {
        bad_request();
    }
    uint32_t retptr = lc_bind_http_hook(phase, a[0], a[1], a[2], a[3], a[4]);
    lc_wasi_flush_output(); /* before the result: a host call reuses the OUT buffer */
    g_post_pending = 1;
    g_post_phase = phase;
    g_post_retptr = retptr;
    struct lc_http_result res = {0, 0, retptr, 0};
    if (lc_rt_memory) {
        res.memory_base = (uint64_t)(uintptr_t)lc_rt_memory->data;
        res.memory_size = lc_rt_memory->size;
    }
    memcpy(out, &res, sizeof res);
    return (uint32_t)sizeof res;
}
