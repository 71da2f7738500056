/*
 * redact: an http-filter plugin that masks a pattern in request and response
 * bodies, across chunk boundaries.
 *
 * Config "pattern=P" (required; 1..256 bytes; anything else makes on-open
 * trap). Every occurrence of P in a body (leftmost first, not overlapping) is
 * replaced by as many '*' as P has bytes, so body lengths never change (and
 * content-length stays right). A chunk's tail that could be the start of P is
 * held back and sent in front of the next chunk (or at end-of-stream), so an
 * occurrence split between two chunks is masked too.
 *
 * When the response body ends, the plugin sets the response header
 * `x-lightcell-redacted: N`, N = occurrences masked in the request and the
 * response bodies. Envoy applies it only while it still holds the response
 * headers (response body mode BUFFERED or BUFFERED_PARTIAL); in STREAMED
 * mode the headers have already gone and the host drops the change.
 */
#define LC_HTTP_PHASES (LC_PHASE_REQUEST_BODY | LC_PHASE_RESPONSE_BODY)
#include "lightcell_http.h"

#define MAX_PATTERN 256

static uint8_t pattern[MAX_PATTERN];
static size_t plen;
static uint64_t redacted; /* occurrences masked in this request (both directions) */

/* Per direction (0 request, 1 response): bytes held back from the last chunk. */
static uint8_t carry[2][MAX_PATTERN];
static size_t carry_len[2];

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    lc_bytes rest = config, item, key, value;
    while (lc_next_item(&rest, ',', &item)) {
        if (item.len == 0) continue;
        lc_split_kv(item, &key, &value);
        if (!lc_eq(key, "pattern") || value.len == 0 || value.len > MAX_PATTERN) __builtin_trap();
        lc_memcpy(pattern, value.ptr, value.len);
        plen = value.len;
    }
    if (plen == 0) __builtin_trap(); /* no pattern configured */
}

/* Masks `work` in place; returns how many of its bytes may be sent now (the rest is held). */
static size_t mask(uint8_t *work, size_t len, bool eos) {
    size_t i = 0, free_from = 0; /* bytes before free_from belong to a masked occurrence */
    while (i + plen <= len) {
        if (lc_memeq(work + i, pattern, plen)) {
            for (size_t j = 0; j < plen; j++) work[i + j] = '*';
            redacted++;
            i += plen;
            free_from = i;
        } else {
            i++;
        }
    }
    if (eos) return len;
    /* The earliest position that could still start an occurrence: hold from there. */
    size_t k = len >= plen ? len - plen + 1 : 0;
    if (k < free_from) k = free_from;
    for (; k < len; k++)
        if (lc_memeq(work + k, pattern, len - k)) return k;
    return len;
}

static lc_decision body(int dir, lc_bytes chunk, bool eos) {
    size_t held = carry_len[dir];
    uint8_t *work = chunk.ptr; /* masked in place when nothing is held */
    size_t len = chunk.len;
    if (held) {
        work = lc_temp_alloc(held + chunk.len);
        lc_memcpy(work, carry[dir], held);
        lc_memcpy(work + held, chunk.ptr, chunk.len);
        len += held;
    }
    uint64_t before = redacted;
    size_t send = mask(work, len, eos);
    carry_len[dir] = len - send;
    lc_memcpy(carry[dir], work + send, len - send);
    if (held == 0 && send == len && redacted == before) return lc_continue();
    return lc_replace_body(work, send);
}

lc_decision lc_on_request_body(lc_bytes chunk, bool eos) { return body(0, chunk, eos); }

lc_decision lc_on_response_body(lc_bytes chunk, bool eos) {
    lc_decision d = body(1, chunk, eos);
    if (eos) {
        uint8_t *digits = lc_temp_alloc(24);
        size_t n = lc_fmt_i64(digits, (int64_t)redacted);
        lc_set_header("x-lightcell-redacted", (lc_bytes){digits, n});
    }
    return d;
}

void lc_on_close(void) {}
