/*
 * The runtime half of the conformance runner (devtools/conformance.py):
 * replaces contract.c in images built from WebAssembly spec-test modules.
 * Instead of the plugin contract it offers two requests, dispatched to the
 * generated glue (conf_glue.c):
 *   LC_OP_CONF_INSTANTIATE  arg0 = module index
 *   LC_OP_CONF_INVOKE       arg0 = module index, arg1 = export index,
 *                           payload = argument slots (u64 each, v128 = 2);
 *                           response payload = result slots, detail = count
 * and the "spectest" host module the tests import (print functions, globals,
 * a table and a memory).
 */
#include <string.h>

#include "lc_rt.h"

#define LC_OP_CONF_INSTANTIATE 0x100u
#define LC_OP_CONF_INVOKE 0x101u
#define CONF_MAX_SLOTS 256u

/* conf_glue.c (generated) */
void lc_conf_instantiate(uint32_t module);
uint32_t lc_conf_invoke(uint32_t module, uint32_t export_index, const uint64_t *args,
                        uint32_t nargs, uint64_t *results, uint32_t cap);

/* spectest, as the reference interpreter defines it */
wasm_rt_memory_t lc_spectest_memory;
wasm_rt_funcref_table_t lc_spectest_table;
wasm_rt_funcref_table_t lc_spectest_table64;
uint32_t lc_spectest_global_i32 = 666;
uint64_t lc_spectest_global_i64 = 666;
float lc_spectest_global_f32 = 666.6f;
double lc_spectest_global_f64 = 666.6;

void lc_spectest_print(void) {}
void lc_spectest_print_i32(uint32_t a) { (void)a; }
void lc_spectest_print_i64(uint64_t a) { (void)a; }
void lc_spectest_print_f32(float a) { (void)a; }
void lc_spectest_print_f64(double a) { (void)a; }
void lc_spectest_print_i32_f32(uint32_t a, float b) {
    (void)a;
    (void)b;
}
void lc_spectest_print_f64_f64(double a, double b) {
    (void)a;
    (void)b;
}

void lc_runtime_init(void) {
    lc_rt_heap_init();
    lc_rt_event_begin();
    wasm_rt_allocate_memory(&lc_spectest_memory, 1, 2, false, WASM_DEFAULT_PAGE_SIZE);
    wasm_rt_allocate_funcref_table(&lc_spectest_table, 10, 20);
    wasm_rt_allocate_funcref_table(&lc_spectest_table64, 10, 20);
}

void lc_runtime_handle(const struct lc_request *req, uint32_t in_cap, struct lc_response *out,
                       uint32_t out_cap) {
    lc_rt_event_begin();
    if (in_cap < sizeof(*req) || out_cap < sizeof(*out) || req->len > in_cap - sizeof(*req) ||
        req->len % 8 || req->len / 8 > CONF_MAX_SLOTS) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
    }
    const uint32_t op = req->op, arg0 = req->arg0, arg1 = req->arg1, len = req->len;
    uint64_t args[CONF_MAX_SLOTS];
    uint64_t results[CONF_MAX_SLOTS] = {0};
    memcpy(args, req + 1, len);
    uint32_t n = 0;
    if (op == LC_OP_CONF_INSTANTIATE) {
        lc_conf_instantiate(arg0);
    } else if (op == LC_OP_CONF_INVOKE) {
        n = lc_conf_invoke(arg0, arg1, args, len / 8, results, CONF_MAX_SLOTS);
        if ((uint64_t)n * 8 > out_cap - sizeof(*out)) {
            lc_fail(LC_STATUS_ABI, LC_ABI_TOO_LARGE);
        }
        memcpy(out + 1, results, (uint64_t)n * 8);
    } else {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
    }
    out->status = LC_STATUS_OK;
    out->detail = n;
    out->reserved = 0;
    out->len = n * 8;
}
