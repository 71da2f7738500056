/*
 * addheader: the smallest useful http-filter plugin. It adds one header to
 * every request before Envoy sends it upstream, and does nothing else (it
 * asks only for the request-headers phase, so Envoy is told to send nothing
 * more).
 *
 * Config: `NAME=VALUE` (default `x-lightcell=1`). NAME must be a lower-case
 * header name; a bad config makes on-open trap, which the listener's failure
 * mode handles. The host refuses names Envoy would reject (pseudo-headers,
 * hop-by-hop, host) as a plugin fault, so the plugin need not check them.
 */
#define LC_HTTP_PHASES LC_PHASE_REQUEST_HEADERS
#include "lightcell_http.h"

static char name[64] = "x-lightcell";
static uint8_t value_buf[256] = "1";
static lc_bytes value = {value_buf, 1};

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    if (config.len == 0) return;
    lc_bytes key, val;
    lc_split_kv(config, &key, &val);
    if (key.len == 0 || key.len >= sizeof name || val.len > sizeof value_buf) __builtin_trap();
    /* Copied: the SDK frees on-open's arguments when it returns. */
    lc_memcpy(name, key.ptr, key.len);
    name[key.len] = 0;
    lc_memcpy(value_buf, val.ptr, val.len);
    value.len = val.len;
}

void lc_on_close(void) {}

lc_decision lc_on_request_headers(lc_headers headers, lc_attributes attributes, bool eos) {
    (void)headers, (void)attributes, (void)eos;
    lc_set_header(name, value);
    return lc_continue(); /* with a queued change this becomes `modify` */
}
