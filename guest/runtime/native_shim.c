/*
 * Host-native test harness: stands in for guest/boot so the runtime and a
 * compiled plugin run as a shared library in the test process (driven from
 * Python by devtools/native.py). It provides what boot/ provides -- the
 * heap, lc_fail, lc_hostcall -- with plain functions: lc_fail longjmps back
 * to the entry point, lc_hostcall calls a function pointer set by the driver.
 * Never linked into a guest image.
 */
#include <setjmp.h>
#include <string.h>

#include "lc_guest.h"
#include "lc_rt.h"

typedef uint32_t (*lcn_host_fn)(uint32_t fn, uint64_t a0, const void *blob0, uint32_t len0,
                                const void *blob1, uint32_t len1, uint64_t *value, void *resp,
                                uint32_t resp_cap, uint32_t *resp_len);

uint8_t *lc_heap_base;
uint64_t lc_heap_size;
uint64_t lc_memory_cap;

static lcn_host_fn g_host;
static jmp_buf g_env;
static int g_armed;
static uint32_t g_status, g_detail;

uint32_t lc_hostcall(uint32_t fn, uint64_t a0, const void *blob0, uint32_t len0,
                     const void *blob1, uint32_t len1, uint64_t *value, void *resp,
                     uint32_t resp_cap, uint32_t *resp_len) {
    *value = 0;
    if (resp_len) {
        *resp_len = 0;
    }
    if (!g_host) {
        return LC_HOSTCALL_DENIED;
    }
    return g_host(fn, a0, blob0, len0, blob1, len1, value, resp, resp_cap, resp_len);
}

void lc_fail(uint32_t status, uint32_t detail) {
    g_status = status;
    g_detail = detail;
    if (!g_armed) {
        for (;;) {
        }
    }
    g_armed = 0;
    longjmp(g_env, 1);
}

/* Give the runtime a fresh heap, the wasm memory cap (as the guest gets it
 * from boot) and a host-call handler. */
void lcn_setup(uint8_t *heap, uint64_t heap_size, uint64_t memory_cap, lcn_host_fn host) {
    lc_heap_base = heap;
    lc_heap_size = heap_size;
    lc_memory_cap = memory_cap;
    g_host = host;
    lc_rt_heap_reset();
}

/* Instantiate; returns an lc_status, *detail its detail. */
uint32_t lcn_init(uint32_t *detail) {
    if (setjmp(g_env)) {
        *detail = g_detail;
        return g_status;
    }
    g_armed = 1;
    lc_runtime_init();
    g_armed = 0;
    *detail = 0;
    return LC_STATUS_OK;
}

/* One request (header + payload in `in`); the response goes to `out`, as
 * boot's dispatch loop would write it (a failure: status/detail, no payload). */
uint32_t lcn_handle(const void *in, uint32_t in_cap, void *out, uint32_t out_cap) {
    struct lc_response *res = out;
    if (setjmp(g_env)) {
        res->status = g_status;
        res->detail = g_detail;
        res->reserved = 0;
        res->len = 0;
        return g_status;
    }
    g_armed = 1;
    lc_runtime_handle(in, in_cap, out, out_cap);
    g_armed = 0;
    return res->status;
}
