/*
 * A test http-filter plugin (tests/test_http_wasmtime.py), built with
 * plugins/sdk/c/lightcell_http.h:
 * - request headers: `request.path` attribute "/blocked" answers 403 at once
 *   (and sets the metadata blocked=yes, which needs the `metadata` grant);
 *   a header `x-echo: V` is appended back as `x-echoed: V`;
 * - every other wanted hook sets `x-hooks-run: N`, N counting the hooks this
 *   instance ran (a fresh instance starts at 0: state never crosses requests).
 */
#define LC_HTTP_PHASES (LC_PHASE_REQUEST_HEADERS | LC_PHASE_RESPONSE_HEADERS)
#include "lightcell_http.h"

static int64_t hooks_run;

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    (void)config;
}

void lc_on_close(void) {}

static lc_decision count(void) {
    hooks_run++;
    uint8_t *n = lc_temp_alloc(24);
    lc_set_header("x-hooks-run", (lc_bytes){n, lc_fmt_i64(n, hooks_run)});
    return lc_continue();
}

lc_decision lc_on_request_headers(lc_headers headers, lc_attributes attributes, bool eos) {
    (void)eos;
    lc_bytes v;
    if (lc_header_get(attributes, "request.path", &v) && lc_eq(v, "/blocked")) {
        lc_metadata_set("blocked", "yes");
        lc_respond_header("content-type", lc_cstr("text/plain"));
        return lc_respond_cstr(403, "blocked\n");
    }
    if (lc_header_get(headers, "x-echo", &v)) lc_append_header("x-echoed", v);
    return count();
}

lc_decision lc_on_response_headers(lc_headers headers, lc_attributes attributes, bool eos) {
    (void)headers;
    (void)attributes;
    (void)eos;
    return count();
}
