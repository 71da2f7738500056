/*
 * The plugin contract's exports, called at the canonical-ABI level
 * (plugins/wit/lightcell.wit; core view in coord plan / vmm/contract.py):
 *   on-open(lptr, llen, cptr, clen)
 *   on-data(dir, ptr, len, eos) -> retptr  [u8 tag @0, u32 ptr @4, u32 len @8]
 *   on-close()
 * and the http-filter hooks (http.c) for LC_OP_HTTP / LC_OP_PHASES.
 * Input bytes are lowered with the plugin's own cabi_realloc; the verdict is
 * lifted with every pointer and length checked against the memory size.
 *
 * The IN buffer is reused for host-call results and the OUT buffer for
 * host-call requests, so the request is fully consumed before the plugin
 * runs and the response is written only after it returns.
 */
#include <string.h>

#include "lc_imports.h"
#include "lc_rt.h"
#include "wasip2.h"

#ifndef LC_MAX_OUTPUT_BYTES /* passed by vmm/microvm/compile.py from vmm/contract.py */
#error "LC_MAX_OUTPUT_BYTES must be defined (vmm.contract.MAX_OUTPUT_BYTES)"
#endif

uint32_t lc_rt_alloc_in_plugin(uint32_t size, uint32_t align) {
    lc_rt_may_leave = 0;
    uint32_t ptr = lc_bind_realloc(0, 0, align, size);
    lc_rt_may_leave = 1;
    (void)lc_rt_guest(ptr, size);
    return ptr;
}

uint64_t lc_rt_host(uint32_t fn, uint64_t a0, const void *blob0, uint32_t len0,
                    const void *blob1, uint32_t len1, void *resp, uint32_t resp_cap,
                    uint32_t *resp_len) {
    if (!lc_rt_may_leave) {
        lc_fail(LC_STATUS_ABI, LC_ABI_NO_LEAVE);
    }
    uint64_t value = 0;
    uint32_t got = 0;
    uint32_t st = lc_hostcall(fn, a0, blob0, len0, blob1, len1, &value, resp, resp_cap, &got);
    if (st == LC_HOSTCALL_DENIED) {
        lc_fail(LC_STATUS_DENIED, fn);
    }
    if (st != LC_HOSTCALL_OK || got > resp_cap) {
        lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
    }
    if (resp_len) {
        *resp_len = got;
    }
    return value;
}

void lc_runtime_init(void) {
    lc_rt_heap_init();
    lc_rt_event_begin();
    lc_rt_scratch = lc_rt_alloc_top(LC_RT_SCRATCH_BYTES, 64);
    if (!lc_rt_scratch) {
        lc_fail(LC_STATUS_MEMORY, 0);
    }
    lc_bind_instantiate();
    lc_rt_memory = lc_bind_memory();
    lc_bind_initialize();
}

/* Copy `len` bytes into a fresh cabi_realloc'd block; returns its address. */
static uint32_t lower_bytes(const uint8_t *src, uint32_t len) {
    uint32_t ptr = lc_rt_alloc_in_plugin(len, 1);
    if (len) {
        memcpy(lc_rt_guest(ptr, len), src, len);
    }
    return ptr;
}

/* Lift on-data's return area into the response (tag, replace bytes). */
static void lift_verdict(uint32_t retptr, struct lc_response *out, uint32_t out_cap) {
    if (retptr & 3u) {
        lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
    }
    const uint8_t *area = lc_rt_guest(retptr, 12);
    uint32_t tag = area[0];
    if (tag > 3) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_VERDICT);
    }
    uint32_t len = 0;
    if (tag == 1) {
        uint32_t ptr = lc_rt_ld32(area + 4);
        len = lc_rt_ld32(area + 8);
        const uint8_t *data = lc_rt_guest(ptr, len);
        /* The contract's cap on one event's output (vmm/contract.py
         * MAX_OUTPUT_BYTES), checked before the bytes are touched. */
        if (len > LC_MAX_OUTPUT_BYTES || len > out_cap - sizeof(*out)) {
            lc_fail(LC_STATUS_ABI, LC_ABI_TOO_LARGE);
        }
        memcpy((uint8_t *)(out + 1), data, len);
    }
    /* Post-return may free the bytes just copied; imports are forbidden
     * there, so nothing can overwrite the OUT buffer before we report. */
    lc_rt_may_leave = 0;
    lc_bind_post_on_data(retptr);
    lc_rt_may_leave = 1;
    out->detail = tag;
    out->len = len;
}

/* Touch (read, write the same value back) each page of linear memory so the
 * first real event after a restore takes no page faults there. */
static uint32_t warm_up(void) {
    uint32_t pages = 0;
    if (lc_rt_memory) {
        for (uint64_t off = 0; off < lc_rt_memory->size; off += 4096) {
            volatile uint8_t *p = lc_rt_memory->data + off;
            *p = *p;
            pages++;
        }
    }
    return pages;
}

void lc_runtime_handle(const struct lc_request *req, uint32_t in_cap, struct lc_response *out,
                       uint32_t out_cap) {
    lc_rt_event_begin();
    lc_wasi_event_begin();
    lc_rt_may_leave = 1;
    lc_http_post_pending(); /* the last hook's result is read: it may be freed now */
    if (in_cap < sizeof(*req) || out_cap < sizeof(*out) || req->len > in_cap - sizeof(*req)) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
    }
    /* Read the request once: host calls overwrite the IN buffer. */
    const uint32_t op = req->op, arg0 = req->arg0, arg1 = req->arg1, len = req->len;
    const uint8_t *payload = (const uint8_t *)(req + 1);
    struct lc_response res = {LC_STATUS_OK, 0, 0, 0};

    switch (op) {
    case LC_OP_OPEN: {
        if ((uint64_t)arg0 + arg1 != len) {
            lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
        }
        uint32_t lptr = lower_bytes(payload, arg0);
        uint32_t cptr = lower_bytes(payload + arg0, arg1);
        lc_wasip2_startup_random(1); /* the instance's first export call (wasip2.c) */
        lc_bind_on_open(lptr, arg0, cptr, arg1);
        lc_wasip2_startup_random(0);
        lc_wasi_flush_output();
        break;
    }
    case LC_OP_DATA: {
        if (arg0 > 1 || arg1 > 1) {
            lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
        }
        uint32_t ptr = lower_bytes(payload, len);
        uint32_t retptr = lc_bind_on_data(arg0, ptr, len, arg1);
        /* The hook's unfinished stdout/stderr line is logged when it ends
         * (before lifting: a host call reuses the OUT buffer). */
        lc_wasi_flush_output();
        lift_verdict(retptr, out, out_cap);
        res.detail = out->detail;
        res.len = out->len;
        break;
    }
    case LC_OP_CLOSE:
        lc_bind_on_close();
        lc_wasi_flush_output();
        break;
    case LC_OP_WARMUP:
        res.detail = warm_up();
        break;
    case LC_OP_HTTP:
        res.len = lc_http_hook(arg0, arg1, payload, len, (uint8_t *)(out + 1), out_cap - sizeof(*out));
        break;
    case LC_OP_PHASES: /* load time, in a VM then restored: its first export call */
        lc_wasip2_startup_random(1);
        res.detail = lc_bind_wanted_phases();
        lc_wasip2_startup_random(0);
        lc_wasi_flush_output();
        break;
    default:
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
    }
    out->status = res.status;
    out->detail = res.detail;
    out->reserved = 0;
    out->len = res.len;
}
