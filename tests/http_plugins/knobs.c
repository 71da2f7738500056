/*
 * knobs: an http-filter test plugin (tests/test_envoy_http_scenarios.py) that
 * does, per phase, what its config says. It wants every phase unless built
 * with LC_HTTP_PHASES defined; a phase its config does not mention continues
 * unchanged. Config: items "PH.ACTION=ARG" separated by
 * ',' where PH is rqh rqb rqt rsh rsb rst (request/response headers, body,
 * trailers) and ACTION is
 *   set=NAME:VALUE     set a header (on a trailers phase: a trailer)
 *   append=NAME:VALUE  append a header value
 *   remove=NAME        remove a header
 *   respond=STATUS     answer the client now with STATUS and body "knobs PH\n"
 *   fault=trap|loop|grow  trap; spin until the CPU budget stops it; allocate
 *                      until the memory cap, then trap
 *   spin=MS            busy-wait MS milliseconds (monotonic clock; needs the
 *                      clock grant), then go on
 *   body=upper|double  body phases: uppercase the chunk (same length) or send
 *                      it twice (the length changes)
 *   meta=1             set the dynamic metadata lightcell:probe=ok (metadata grant)
 * Unknown items make on-open trap. A request header `x-knobs` adds items of
 * the same form for that request (read by the request-headers hook).
 *
 * State check: every request-headers hook counts in `calls` and remembers the
 * request path; the response headers get `x-knobs-calls: N` and, if a path
 * was already remembered before this request's, `x-knobs-leak: PATH`. In a
 * fresh sandbox per request N is 1 and there is never a leak header.
 */
#ifndef LC_HTTP_PHASES /* a test may build it with fewer (a wrapper that defines it first) */
#define LC_HTTP_PHASES LC_PHASE_ALL
#endif
#include "lightcell_http.h"

#define MAX_CONFIG 2048

static uint8_t config[MAX_CONFIG];
static size_t config_len;
static int64_t calls;
static uint8_t prev_path[256];
static size_t prev_len;
static uint8_t leak_path[256];
static size_t leak_len; /* a path remembered from before this request: state crossed requests */

static bool valid_action(lc_bytes action) {
    static const char *const known[] = {"set", "append", "remove", "respond", "fault", "spin", "body", "meta"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (lc_eq(action, known[i])) return true;
    return false;
}

void lc_on_open(lc_bytes listener, lc_bytes cfg) {
    (void)listener;
    if (cfg.len > MAX_CONFIG) __builtin_trap();
    lc_memcpy(config, cfg.ptr, cfg.len);
    config_len = cfg.len;
    lc_bytes rest = {config, config_len}, item, key, value;
    while (lc_next_item(&rest, ',', &item)) {
        if (item.len == 0) continue;
        lc_split_kv(item, &key, &value);
        if (key.len < 5 || key.ptr[3] != '.') __builtin_trap();
        if (!valid_action((lc_bytes){key.ptr + 4, key.len - 4})) __builtin_trap();
    }
}

void lc_on_close(void) {}

/* A NUL-terminated copy (the SDK's header queues take C strings for names). */
static const char *cstr(lc_bytes b) {
    uint8_t *out = lc_temp_alloc(b.len + 1);
    lc_memcpy(out, b.ptr, b.len);
    out[b.len] = 0;
    return (const char *)out;
}

static void split_colon(lc_bytes arg, lc_bytes *name, lc_bytes *value) {
    lc_bytes rest = arg;
    lc_next_item(&rest, ':', name);
    *value = rest;
}

static void fault(lc_bytes how) {
    if (lc_eq(how, "loop")) {
        volatile uint64_t spin = 0;
        for (;;) spin++;
    }
    if (lc_eq(how, "grow")) {
        for (;;) {
            volatile uint8_t *block = lc_alloc(65536);
            if (!block) __builtin_trap();
            for (size_t i = 0; i < 65536; i += 4096) block[i] = 1;
        }
    }
    __builtin_trap();
}

static void spin_ms(lc_bytes arg) {
    uint32_t ms;
    if (!lc_parse_u32(arg, &ms)) __builtin_trap();
    uint64_t until = lc_monotonic_now() + (uint64_t)ms * 1000000u;
    while (lc_monotonic_now() < until) {
    }
}

/* Runs the items of phase `ph`; a respond item answers at once. `body` may be rewritten. */
static lc_decision run(const char *ph, lc_bytes *body, bool *body_changed) {
    lc_bytes rest = {config, config_len}, item, key, value, name, hv;
    while (lc_next_item(&rest, ',', &item)) {
        if (item.len == 0) continue;
        lc_split_kv(item, &key, &value);
        if (key.len < 5 || key.ptr[3] != '.' || !lc_memeq(key.ptr, ph, 3)) continue;
        lc_bytes action = {key.ptr + 4, key.len - 4};
        if (lc_eq(action, "set") || lc_eq(action, "append")) {
            split_colon(value, &name, &hv);
            if (lc_eq(action, "set")) lc_set_header(cstr(name), hv);
            else lc_append_header(cstr(name), hv);
        } else if (lc_eq(action, "remove")) {
            lc_remove_header(cstr(value));
        } else if (lc_eq(action, "respond")) {
            uint32_t status;
            if (!lc_parse_u32(value, &status)) __builtin_trap();
            uint8_t *text = lc_temp_alloc(16);
            lc_memcpy(text, "knobs ", 6);
            lc_memcpy(text + 6, ph, 3);
            text[9] = '\n';
            lc_respond_header("content-type", lc_cstr("text/plain"));
            return lc_respond((uint16_t)status, text, 10);
        } else if (lc_eq(action, "fault")) {
            fault(value);
        } else if (lc_eq(action, "spin")) {
            spin_ms(value);
        } else if (lc_eq(action, "meta")) {
            lc_metadata_set("probe", "ok");
        } else if (lc_eq(action, "body") && body) {
            if (lc_eq(value, "upper")) {
                for (size_t i = 0; i < body->len; i++)
                    if (body->ptr[i] >= 'a' && body->ptr[i] <= 'z') body->ptr[i] -= 32;
            } else if (lc_eq(value, "double")) {
                uint8_t *twice = lc_temp_alloc(body->len * 2 + 1);
                lc_memcpy(twice, body->ptr, body->len);
                lc_memcpy(twice + body->len, body->ptr, body->len);
                body->ptr = twice;
                body->len *= 2;
            } else {
                __builtin_trap();
            }
            *body_changed = true;
        }
    }
    return lc_continue();
}

static lc_decision headers_phase(const char *ph) { return run(ph, 0, 0); }

static lc_decision body_phase(const char *ph, lc_bytes chunk) {
    bool changed = false;
    lc_decision d = run(ph, &chunk, &changed);
    if (d.kind == LC_RESPOND || !changed) return d;
    return lc_replace_body(chunk.ptr, chunk.len);
}

lc_decision lc_on_request_headers(lc_headers headers, lc_attributes attributes, bool eos) {
    (void)eos;
    calls++;
    lc_bytes extra;
    if (lc_header_get(headers, "x-knobs", &extra) && config_len + 1 + extra.len <= MAX_CONFIG) {
        config[config_len] = ',';
        lc_memcpy(config + config_len + 1, extra.ptr, extra.len);
        config_len += 1 + extra.len;
    }
    if (prev_len && !leak_len) {
        lc_memcpy(leak_path, prev_path, prev_len);
        leak_len = prev_len;
    }
    lc_bytes path;
    if (lc_header_get(attributes, "request.path", &path) || lc_header_get(headers, ":path", &path)) {
        prev_len = path.len < sizeof prev_path ? path.len : sizeof prev_path;
        lc_memcpy(prev_path, path.ptr, prev_len);
    } else {
        prev_len = 1;
        prev_path[0] = '?';
    }
    return headers_phase("rqh");
}

lc_decision lc_on_request_body(lc_bytes body, bool eos) {
    (void)eos;
    return body_phase("rqb", body);
}

lc_decision lc_on_request_trailers(lc_headers trailers) {
    (void)trailers;
    return headers_phase("rqt");
}

lc_decision lc_on_response_headers(lc_headers headers, lc_attributes attributes, bool eos) {
    (void)headers;
    (void)attributes;
    (void)eos;
    uint8_t *n = lc_temp_alloc(24);
    lc_set_header("x-knobs-calls", (lc_bytes){n, lc_fmt_i64(n, calls)});
    if (leak_len) lc_set_header("x-knobs-leak", (lc_bytes){leak_path, leak_len});
    return headers_phase("rsh");
}

lc_decision lc_on_response_body(lc_bytes body, bool eos) {
    (void)eos;
    return body_phase("rsb", body);
}

lc_decision lc_on_response_trailers(lc_headers trailers) {
    (void)trailers;
    return headers_phase("rst");
}
