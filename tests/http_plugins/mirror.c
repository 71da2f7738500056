/*
 * A test http-filter plugin that shows the host exactly what it was given
 * (tests/test_http_microvm.py, the lowering differential): every hook is
 * wanted; a headers or trailers hook answers 200 with a body listing each
 * entry as `H<name length>:<name><value length>:<value>` (`A` for an
 * attribute) and the end_of_stream flag; a body hook replaces the body with
 * `B<length>:` + the bytes reversed + the flag. Binary values pass as they
 * are: every part is length-prefixed.
 */
#define LC_HTTP_PHASES 0x3f
#include "lightcell_http.h"

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    (void)config;
}

void lc_on_close(void) {}

static size_t put(uint8_t *out, const char *tag, lc_bytes b) {
    size_t n = 0;
    out[n++] = (uint8_t)tag[0];
    n += lc_fmt_i64(out + n, (int64_t)b.len);
    out[n++] = ':';
    lc_memcpy(out + n, b.ptr, b.len);
    return n + b.len;
}

static size_t need(lc_headers h) {
    size_t n = 0;
    for (size_t i = 0; i < h.len; i++) n += h.ptr[i].name.len + h.ptr[i].value.len + 2 * 24;
    return n;
}

static size_t list(uint8_t *out, const char *tag, lc_headers h) {
    size_t n = 0;
    for (size_t i = 0; i < h.len; i++) {
        n += put(out + n, tag, h.ptr[i].name);
        n += put(out + n, tag, h.ptr[i].value);
    }
    return n;
}

static lc_decision show(lc_headers headers, lc_attributes attributes, int eos) {
    uint8_t *out = lc_temp_alloc(need(headers) + need(attributes) + 8);
    size_t n = list(out, "H", headers);
    n += list(out + n, "A", attributes);
    out[n++] = eos < 0 ? '-' : (uint8_t)('0' + eos);
    return lc_respond(200, out, n);
}

static lc_decision mirror(lc_bytes body, bool eos) {
    uint8_t *out = lc_temp_alloc(body.len + 32);
    size_t n = 0;
    out[n++] = 'B';
    n += lc_fmt_i64(out + n, (int64_t)body.len);
    out[n++] = ':';
    for (size_t i = 0; i < body.len; i++) out[n++] = body.ptr[body.len - 1 - i];
    out[n++] = eos ? '1' : '0';
    return lc_replace_body(out, n);
}

static const lc_headers none = {0, 0};

lc_decision lc_on_request_headers(lc_headers h, lc_attributes a, bool eos) { return show(h, a, eos); }
lc_decision lc_on_response_headers(lc_headers h, lc_attributes a, bool eos) { return show(h, a, eos); }
lc_decision lc_on_request_trailers(lc_headers t) { return show(t, none, -1); }
lc_decision lc_on_response_trailers(lc_headers t) { return show(t, none, -1); }
lc_decision lc_on_request_body(lc_bytes b, bool eos) { return mirror(b, eos); }
lc_decision lc_on_response_body(lc_bytes b, bool eos) { return mirror(b, eos); }
