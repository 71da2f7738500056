/*
 * probe: calls one capability on every non-empty chunk and replaces the
 * chunk with a short text result, so tests can see a capability work or be
 * denied (an ungranted call faults the connection before anything returns).
 *
 * Config "call=CAP" (default "call=none"):
 *   log          log(info, "probe") ................. "log=ok\n"
 *   clock        wall-now (and monotonic-now) ........ "clock=<wall ns>\n"
 *   random       get-u64 ............................. "random=<16 hex digits>\n"
 *   kv           n = increment("probe", 1); set("probe-last", "<n>");
 *                get("probe-last") must give "<n>" .. "kv=<n>\n" (else "kv=mismatch\n")
 *   metadata     set("probe", "ok") .................. "metadata=ok\n"
 *   egress[:host:port]  send-datagram(host, port, chunk), default 127.0.0.1:9125
 *                ..................................... "egress=ok\n" / "egress=err<send-error>\n"
 *   attributes   connection.attributes ............... "attributes=<count>\n" then
 *   (connection) one "<name>=<value>\n" line per attribute
 *   none         nothing ............................. "none=ok\n"
 * Empty chunks (e.g. a bare end-of-stream) pass untouched. Bad config traps.
 */
#include "lightcell.h"

typedef enum { CAP_NONE, CAP_LOG, CAP_CLOCK, CAP_RANDOM, CAP_KV, CAP_METADATA, CAP_EGRESS, CAP_ATTRIBUTES } cap;

static cap call = CAP_NONE;
static uint8_t egress_host[256];
static lc_bytes host = {egress_host, 9};
static uint16_t port = 9125;
static uint8_t out[64];

static void parse_egress_target(lc_bytes target) {
    /* "host:port"; the host may itself contain ':' (IPv6), so split at the last one */
    size_t colon = target.len;
    while (colon > 0 && target.ptr[colon - 1] != ':') colon--;
    if (colon < 2 || colon - 1 > sizeof egress_host) __builtin_trap();
    lc_bytes port_text = {target.ptr + colon, target.len - colon};
    uint32_t p;
    if (!lc_parse_u32(port_text, &p) || p > 65535) __builtin_trap();
    lc_memcpy(egress_host, target.ptr, colon - 1);
    host.len = colon - 1;
    port = (uint16_t)p;
}

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    lc_memcpy(egress_host, "127.0.0.1", 9);
    lc_bytes rest = config, item, key, value;
    while (lc_next_item(&rest, ',', &item)) {
        if (item.len == 0) continue;
        lc_split_kv(item, &key, &value);
        if (!lc_eq(key, "call")) __builtin_trap();
        if (lc_eq(value, "none")) call = CAP_NONE;
        else if (lc_eq(value, "log")) call = CAP_LOG;
        else if (lc_eq(value, "clock")) call = CAP_CLOCK;
        else if (lc_eq(value, "random")) call = CAP_RANDOM;
        else if (lc_eq(value, "kv")) call = CAP_KV;
        else if (lc_eq(value, "metadata")) call = CAP_METADATA;
        else if (lc_eq(value, "egress")) call = CAP_EGRESS;
        else if (lc_eq(value, "attributes") || lc_eq(value, "connection")) call = CAP_ATTRIBUTES;
        else if (value.len > 7 && lc_memeq(value.ptr, "egress:", 7)) {
            call = CAP_EGRESS;
            lc_bytes target = {value.ptr + 7, value.len - 7};
            parse_egress_target(target);
        } else
            __builtin_trap();
    }
}

/* Appends the C string s at out[*n]. */
static void put(size_t *n, const char *s) {
    size_t len = lc_strlen(s);
    lc_memcpy(out + *n, s, len);
    *n += len;
}

/* "attributes=<count>\n" and one "<name>=<value>\n" line each, in an lc_alloc block. */
static lc_verdict attributes_text(void) {
    lc_attributes attrs = lc_connection_attributes();
    size_t size = 32;
    for (size_t i = 0; i < attrs.len; i++) size += attrs.ptr[i].name.len + attrs.ptr[i].value.len + 2;
    uint8_t *text = lc_alloc(size);
    if (!text) __builtin_trap();
    size_t n = 0;
    lc_memcpy(text, "attributes=", 11);
    n = 11 + lc_fmt_i64(text + 11, (int64_t)attrs.len);
    text[n++] = '\n';
    for (size_t i = 0; i < attrs.len; i++) {
        lc_attribute a = attrs.ptr[i];
        lc_memcpy(text + n, a.name.ptr, a.name.len);
        n += a.name.len;
        text[n++] = '=';
        lc_memcpy(text + n, a.value.ptr, a.value.len);
        n += a.value.len;
        text[n++] = '\n';
    }
    lc_attributes_free(attrs);
    return lc_replace(text, n); /* an lc_alloc block: the SDK frees it once read */
}

lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos) {
    (void)dir;
    (void)eos;
    if (data.len == 0) return lc_pass();
    if (call == CAP_ATTRIBUTES) return attributes_text();
    size_t n = 0;
    switch (call) {
    case CAP_NONE:
        put(&n, "none=ok\n");
        break;
    case CAP_LOG:
        lc_log_str(LC_INFO, "probe");
        put(&n, "log=ok\n");
        break;
    case CAP_CLOCK: {
        uint64_t wall = lc_wall_now();
        (void)lc_monotonic_now();
        put(&n, "clock=");
        n += lc_fmt_i64(out + n, (int64_t)wall);
        put(&n, "\n");
        break;
    }
    case CAP_RANDOM:
        put(&n, "random=");
        n += lc_fmt_hex64(out + n, lc_random_u64());
        put(&n, "\n");
        break;
    case CAP_KV: {
        int64_t count = lc_kv_increment("probe", 1);
        uint8_t text[24];
        size_t tlen = lc_fmt_i64(text, count);
        lc_kv_set("probe-last", text, tlen);
        lc_bytes got;
        bool ok = false;
        if (lc_kv_get("probe-last", &got)) {
            ok = got.len == tlen && lc_memeq(got.ptr, text, tlen);
            lc_free(got.ptr);
        }
        put(&n, ok ? "kv=" : "kv=mismatch\n");
        if (ok) {
            lc_memcpy(out + n, text, tlen);
            n += tlen;
            put(&n, "\n");
        }
        break;
    }
    case CAP_METADATA:
        lc_metadata_set("probe", "ok");
        put(&n, "metadata=ok\n");
        break;
    case CAP_ATTRIBUTES: /* handled above: its text does not fit `out` */
        break;
    case CAP_EGRESS: {
        lc_send_error err;
        if (lc_egress_send(host, port, data, &err)) {
            put(&n, "egress=ok\n");
        } else {
            put(&n, "egress=err");
            n += lc_fmt_i64(out + n, (int64_t)err);
            put(&n, "\n");
        }
        break;
    }
    }
    return lc_replace(out, n); /* static buffer: the SDK never frees it */
}

void lc_on_close(void) {}
