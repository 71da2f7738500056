/*
 * A hostile guest for tests/test_http_microvm.py (no wasm, no plugin): it
 * stands for a guest the plugin has taken over. It answers LC_OP_HTTP with
 * whatever the host told it to say, so the test can forge every value the
 * host must check. The request's payload (a body hook's bytes) is:
 *   u32 n, then n bytes to answer with (the lc_http_result, or a bad length),
 *   then bytes to put at the start of the heap (a forged decision area).
 * Every other request is answered OK with nothing.
 */
#include <stdint.h>

#include "lc_guest.h"
#include "lightcell_abi.h"

void lc_runtime_init(void) {}

void lc_runtime_handle(const struct lc_request *req, uint32_t in_cap, struct lc_response *out,
                       uint32_t out_cap)
{
    out->status = LC_STATUS_OK;
    out->detail = 0;
    out->reserved = 0;
    out->len = 0;
    if (req->op != LC_OP_HTTP || req->len < 4 || req->len > in_cap - sizeof *req)
        return;
    const uint8_t *src = (const uint8_t *)(req + 1);
    uint32_t n = (uint32_t)src[0] | (uint32_t)src[1] << 8 | (uint32_t)src[2] << 16 | (uint32_t)src[3] << 24;
    if (n > req->len - 4 || n > out_cap - sizeof *out || req->len - 4 - n > lc_heap_size)
        return;
    uint8_t *answer = (uint8_t *)(out + 1);
    for (uint32_t i = 0; i < n; i++)
        answer[i] = src[4 + i];
    out->len = n;
    for (uint32_t i = 4 + n; i < req->len; i++)
        lc_heap_base[i - 4 - n] = src[i];
}
