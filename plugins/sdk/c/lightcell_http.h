/*
 * lightcell_http.h: header-only C SDK for Lightcell http-filter plugins
 * (one sandbox per HTTP request; see plugins/wit/README.md, "The
 * http-filter world", for the ABI this file implements).
 *
 * Build, from the repository's root (no libc needed; tests/test_http_contract.py
 * runs these exact lines):
 *   python -m ziglang cc --target=wasm32-freestanding -mcpu=mvp -O2 -Iplugins/sdk/c \
 *       -nostdlib -Wl,--no-entry -Wl,-z,stack-size=65536 plugin.c -o core.wasm
 *   wasm-tools strip core.wasm -o core.wasm
 *   wasm-tools component embed plugins/wit --world http-filter core.wasm -o e.wasm
 *   wasm-tools component new e.wasm -o plugin.wasm
 *
 * The plugin defines LC_HTTP_PHASES (the phases it wants, an OR of the
 * LC_PHASE_* macros below) before including this header in exactly one .c
 * file, and defines:
 *   void lc_on_open(lc_bytes listener, lc_bytes config);
 *   void lc_on_close(void);
 * plus the hook of every phase it asked for (and only those):
 *   LC_PHASE_REQUEST_HEADERS   lc_decision lc_on_request_headers(lc_headers h, lc_attributes a, bool eos);
 *   LC_PHASE_REQUEST_BODY      lc_decision lc_on_request_body(lc_bytes body, bool eos);
 *   LC_PHASE_REQUEST_TRAILERS  lc_decision lc_on_request_trailers(lc_headers trailers);
 *   LC_PHASE_RESPONSE_HEADERS  lc_decision lc_on_response_headers(lc_headers h, lc_attributes a, bool eos);
 *   LC_PHASE_RESPONSE_BODY     lc_decision lc_on_response_body(lc_bytes body, bool eos);
 *   LC_PHASE_RESPONSE_TRAILERS lc_decision lc_on_response_trailers(lc_headers trailers);
 * The SDK exports every core function of the world (`wanted-phases`, which
 * compiles to the constant `i32.const LC_HTTP_PHASES` the host reads without
 * running anything; the six hooks, the unwanted ones answering `continue`;
 * `on-open`, `on-close`, the `cabi_post_*` functions and `cabi_realloc`).
 *
 * A hook returns a decision:
 *   lc_continue()                 forward unchanged; with header changes
 *                                 queued (below) it becomes `modify`
 *   lc_modify()                   forward with the queued header changes
 *   lc_replace_body(ptr, len)     body hooks: forward these bytes instead of
 *                                 the chunk, plus the queued header changes
 *   lc_respond(status, ptr, len)  answer the client now, with the headers
 *                                 queued by lc_respond_header()
 * Header changes are queued during the hook with lc_set_header(),
 * lc_append_header(), lc_remove_header() (applied remove, set, append) and
 * lc_respond_header(); at most LC_HTTP_MAX_HEADERS of each kind (define it
 * to change the default, 32); more traps.
 *
 * Memory ownership. Everything the host passes in (header arrays, names,
 * values, bodies, attributes) belongs to the plugin and stays valid until the
 * host has read the hook's result; the SDK frees it then (cabi_post_<hook>,
 * or at the next hook). Bodies may be modified in place. Every pointer in a
 * decision (replacement body, header names and values, response body) must
 * point into the hook's input, at static/constant data, or into memory from
 * lc_temp_alloc(), which the SDK frees once the host has read the result.
 * Never put lc_alloc() memory in a decision (it would leak); use lc_alloc()
 * and lc_free() only for state the plugin keeps across hooks.
 */
#ifndef LIGHTCELL_HTTP_H
#define LIGHTCELL_HTTP_H

#ifdef LIGHTCELL_H
#error "include lightcell.h (tcp-filter) or lightcell_http.h (http-filter), not both: a plugin implements one world"
#endif

#include "lightcell_common.h"

/* ---- Phases (bits of the `phases` flags, plugins/wit/lightcell.wit) ---- */

#define LC_PHASE_REQUEST_HEADERS 0x01u
#define LC_PHASE_REQUEST_BODY 0x02u
#define LC_PHASE_REQUEST_TRAILERS 0x04u
#define LC_PHASE_RESPONSE_HEADERS 0x08u
#define LC_PHASE_RESPONSE_BODY 0x10u
#define LC_PHASE_RESPONSE_TRAILERS 0x20u
#define LC_PHASE_ALL 0x3fu

#ifndef LC_HTTP_PHASES
#error "define LC_HTTP_PHASES (e.g. LC_PHASE_REQUEST_BODY | LC_PHASE_RESPONSE_BODY) before including lightcell_http.h"
#endif
_Static_assert(((LC_HTTP_PHASES) & ~LC_PHASE_ALL) == 0, "LC_HTTP_PHASES has bits outside LC_PHASE_ALL");

#ifndef LC_HTTP_MAX_HEADERS
#define LC_HTTP_MAX_HEADERS 32
#endif

/* ---- Types ---- */

/*
 * One header (or attribute): exactly the canonical-ABI element of
 * list<header> / list<attribute> (16 bytes: name ptr, len, value ptr, len),
 * so the host's arrays are read in place.
 */
typedef struct {
    lc_bytes name;
    lc_bytes value;
} lc_header;
_Static_assert(sizeof(lc_header) == 16, "header is 16 bytes in the canonical ABI");

typedef struct {
    lc_header *ptr;
    size_t len; /* number of headers */
} lc_headers;

/* Attributes: name and value are UTF-8 text (README: "Attributes"). */
typedef lc_headers lc_attributes;

typedef enum { LC_CONTINUE = 0, LC_MODIFY = 1, LC_RESPOND = 2 } lc_decision_kind;

/* What a hook returns; build with lc_continue()/lc_modify()/lc_replace_body()/lc_respond(). */
typedef struct {
    lc_decision_kind kind;
    bool has_body;  /* LC_MODIFY: replace the chunk with ptr/len */
    uint16_t status; /* LC_RESPOND */
    const uint8_t *ptr;
    size_t len;
} lc_decision;

/* ---- Hooks the plugin defines ---- */

void lc_on_open(lc_bytes listener, lc_bytes config);
void lc_on_close(void);
lc_decision lc_on_request_headers(lc_headers headers, lc_attributes attributes, bool eos);
lc_decision lc_on_request_body(lc_bytes body, bool eos);
lc_decision lc_on_request_trailers(lc_headers trailers);
lc_decision lc_on_response_headers(lc_headers headers, lc_attributes attributes, bool eos);
lc_decision lc_on_response_body(lc_bytes body, bool eos);
lc_decision lc_on_response_trailers(lc_headers trailers);

/* ---- Decision constructors ---- */

static inline lc_decision lc_continue(void) { return (lc_decision){LC_CONTINUE, false, 0, 0, 0}; }
static inline lc_decision lc_modify(void) { return (lc_decision){LC_MODIFY, false, 0, 0, 0}; }
/* Body hooks only. `ptr`: input, static data or lc_temp_alloc() memory. */
static inline lc_decision lc_replace_body(const uint8_t *ptr, size_t len) {
    return (lc_decision){LC_MODIFY, true, 0, ptr, len};
}
/* status 200..599; body: input, static data or lc_temp_alloc() memory. */
static inline lc_decision lc_respond(uint16_t status, const uint8_t *body, size_t len) {
    return (lc_decision){LC_RESPOND, false, status, body, len};
}
static inline lc_decision lc_respond_cstr(uint16_t status, const char *body) {
    return lc_respond(status, (const uint8_t *)body, lc_strlen(body));
}

/* ---- Temporary memory, freed once the host has read the hook's result ---- */

static void *lc__temps; /* singly linked: each block starts with the next pointer */

static inline uint8_t *lc_temp_alloc(size_t n) {
    void **block = (void **)lc_alloc(n + 8);
    if (!block) __builtin_trap();
    block[0] = lc__temps;
    lc__temps = block;
    return (uint8_t *)block + 8;
}

/* ---- Header helpers ---- */

static inline uint8_t lc_lower(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c; }

/* True if `b` equals the C string `s`, ASCII case-insensitively. */
static inline bool lc_eq_nocase(lc_bytes b, const char *s) {
    size_t n = lc_strlen(s);
    if (b.len != n) return false;
    for (size_t i = 0; i < n; i++)
        if (lc_lower(b.ptr[i]) != lc_lower((uint8_t)s[i])) return false;
    return true;
}

/* The first value of header `name` (case-insensitive), if present. */
static inline bool lc_header_get(lc_headers headers, const char *name, lc_bytes *value) {
    for (size_t i = 0; i < headers.len; i++)
        if (lc_eq_nocase(headers.ptr[i].name, name)) {
            *value = headers.ptr[i].value;
            return true;
        }
    return false;
}

/* ---- Header changes, queued for the current hook's decision ---- */

typedef struct {
    lc_header items[LC_HTTP_MAX_HEADERS];
    uint32_t len;
} lc__header_queue;

static lc__header_queue lc__set, lc__append, lc__respond_headers;
static struct {
    lc_bytes items[LC_HTTP_MAX_HEADERS]; /* list<string>: 8-byte {ptr, len} */
    uint32_t len;
} lc__remove;

static inline void lc__push(lc__header_queue *q, const char *name, lc_bytes value) {
    if (q->len >= LC_HTTP_MAX_HEADERS) __builtin_trap();
    q->items[q->len].name = lc_cstr(name);
    q->items[q->len].value = value;
    q->len++;
}

/* Replace every value of `name` with `value` (or add it). `name`: static, lower case. */
static inline void lc_set_header(const char *name, lc_bytes value) { lc__push(&lc__set, name, value); }
static inline void lc_set_header_cstr(const char *name, const char *value) {
    lc_set_header(name, lc_cstr(value));
}
/* Add a value, keeping existing ones. */
static inline void lc_append_header(const char *name, lc_bytes value) { lc__push(&lc__append, name, value); }
/* Remove every value of `name`. */
static inline void lc_remove_header(const char *name) {
    if (lc__remove.len >= LC_HTTP_MAX_HEADERS) __builtin_trap();
    lc__remove.items[lc__remove.len++] = lc_cstr(name);
}
/* A header of the immediate response built by lc_respond(). */
static inline void lc_respond_header(const char *name, lc_bytes value) {
    lc__push(&lc__respond_headers, name, value);
}

/* ---- Exported contract functions ---- */

/* The canonical-ABI list/string in memory: { u32 ptr; u32 len }. */
typedef struct {
    const void *ptr;
    uint32_t len;
} lc__list;

/* The decision return area, exactly as plugins/wit/README.md lays it out. */
static struct {
    uint8_t tag; /* 0 continue, 1 modify, 2 respond */
    union {
        struct {
            lc__list set, append, remove;
            uint8_t body_tag; /* option<list<u8>>: 0 none, 1 some */
            lc__list body;
        } modify;
        struct {
            uint16_t status;
            lc__list headers;
            lc__list body;
        } respond;
    } u;
} __attribute__((aligned(4))) lc__decision_area;
_Static_assert(sizeof(lc__decision_area) == 40, "decision return area is 40 bytes");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.modify.set) == 4, "set @4");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.modify.append) == 12, "append @12");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.modify.remove) == 20, "remove @20");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.modify.body_tag) == 28, "body tag @28");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.modify.body) == 32, "body @32");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.respond.status) == 4, "status @4");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.respond.headers) == 8, "headers @8");
_Static_assert(__builtin_offsetof(__typeof__(lc__decision_area), u.respond.body) == 16, "body @16");

/* The current hook's inputs, freed once the host has read its result. */
static lc_headers lc__in_headers, lc__in_attributes;
static lc_bytes lc__in_body;

static inline void lc__free_headers(lc_headers *h) {
    for (size_t i = 0; i < h->len; i++) {
        if (h->ptr[i].name.len) lc_free(h->ptr[i].name.ptr);
        if (h->ptr[i].value.len) lc_free(h->ptr[i].value.ptr);
    }
    if (h->len) lc_free(h->ptr); /* an empty list may come with any pointer */
    h->ptr = 0;
    h->len = 0;
}

static inline void lc__http_release(void) {
    lc__free_headers(&lc__in_headers);
    lc__free_headers(&lc__in_attributes);
    if (lc__in_body.len) lc_free(lc__in_body.ptr);
    lc__in_body.ptr = 0;
    lc__in_body.len = 0;
    while (lc__temps) {
        void **block = (void **)lc__temps;
        lc__temps = block[0];
        lc_free(block);
    }
    lc__set.len = lc__append.len = lc__respond_headers.len = lc__remove.len = 0;
}

static inline void *lc__encode(lc_decision d) {
    lc__decision_area.tag = LC_CONTINUE;
    bool changes = lc__set.len || lc__append.len || lc__remove.len;
    if (d.kind == LC_RESPOND) {
        lc__decision_area.tag = LC_RESPOND;
        lc__decision_area.u.respond.status = d.status;
        lc__decision_area.u.respond.headers = (lc__list){lc__respond_headers.items, lc__respond_headers.len};
        lc__decision_area.u.respond.body = (lc__list){d.ptr, (uint32_t)d.len};
    } else if (d.kind == LC_MODIFY || changes) {
        lc__decision_area.tag = LC_MODIFY;
        lc__decision_area.u.modify.set = (lc__list){lc__set.items, lc__set.len};
        lc__decision_area.u.modify.append = (lc__list){lc__append.items, lc__append.len};
        lc__decision_area.u.modify.remove = (lc__list){lc__remove.items, lc__remove.len};
        lc__decision_area.u.modify.body_tag = d.kind == LC_MODIFY && d.has_body;
        lc__decision_area.u.modify.body =
            d.kind == LC_MODIFY && d.has_body ? (lc__list){d.ptr, (uint32_t)d.len} : (lc__list){0, 0};
    }
    return &lc__decision_area;
}

#define LC__WANTS(phase) (((LC_HTTP_PHASES) & (phase)) != 0)

__attribute__((export_name("wanted-phases"))) int32_t lc__export_wanted_phases(void) {
    return (int32_t)(LC_HTTP_PHASES);
}

__attribute__((export_name("on-open"))) void lc__export_on_open(uint8_t *lptr, size_t llen, uint8_t *cptr,
                                                                size_t clen) {
    lc_bytes listener = {lptr, llen}, config = {cptr, clen};
    lc_on_open(listener, config);
    if (llen) lc_free(lptr);
    if (clen) lc_free(cptr);
}

__attribute__((export_name("on-request-headers"))) void *lc__export_on_request_headers(
    lc_header *hptr, size_t hlen, lc_header *aptr, size_t alen, int32_t eos) {
    lc__http_release(); /* in case the host did not call cabi_post_* */
    lc__in_headers = (lc_headers){hptr, hlen};
    lc__in_attributes = (lc_attributes){aptr, alen};
#if LC__WANTS(LC_PHASE_REQUEST_HEADERS)
    return lc__encode(lc_on_request_headers(lc__in_headers, lc__in_attributes, eos != 0));
#else
    (void)eos;
    return lc__encode(lc_continue());
#endif
}

__attribute__((export_name("on-request-body"))) void *lc__export_on_request_body(uint8_t *ptr, size_t len,
                                                                                 int32_t eos) {
    lc__http_release();
    lc__in_body = (lc_bytes){ptr, len};
#if LC__WANTS(LC_PHASE_REQUEST_BODY)
    return lc__encode(lc_on_request_body(lc__in_body, eos != 0));
#else
    (void)eos;
    return lc__encode(lc_continue());
#endif
}

__attribute__((export_name("on-request-trailers"))) void *lc__export_on_request_trailers(lc_header *ptr,
                                                                                         size_t len) {
    lc__http_release();
    lc__in_headers = (lc_headers){ptr, len};
#if LC__WANTS(LC_PHASE_REQUEST_TRAILERS)
    return lc__encode(lc_on_request_trailers(lc__in_headers));
#else
    return lc__encode(lc_continue());
#endif
}

__attribute__((export_name("on-response-headers"))) void *lc__export_on_response_headers(
    lc_header *hptr, size_t hlen, lc_header *aptr, size_t alen, int32_t eos) {
    lc__http_release();
    lc__in_headers = (lc_headers){hptr, hlen};
    lc__in_attributes = (lc_attributes){aptr, alen};
#if LC__WANTS(LC_PHASE_RESPONSE_HEADERS)
    return lc__encode(lc_on_response_headers(lc__in_headers, lc__in_attributes, eos != 0));
#else
    (void)eos;
    return lc__encode(lc_continue());
#endif
}

__attribute__((export_name("on-response-body"))) void *lc__export_on_response_body(uint8_t *ptr, size_t len,
                                                                                   int32_t eos) {
    lc__http_release();
    lc__in_body = (lc_bytes){ptr, len};
#if LC__WANTS(LC_PHASE_RESPONSE_BODY)
    return lc__encode(lc_on_response_body(lc__in_body, eos != 0));
#else
    (void)eos;
    return lc__encode(lc_continue());
#endif
}

__attribute__((export_name("on-response-trailers"))) void *lc__export_on_response_trailers(lc_header *ptr,
                                                                                           size_t len) {
    lc__http_release();
    lc__in_headers = (lc_headers){ptr, len};
#if LC__WANTS(LC_PHASE_RESPONSE_TRAILERS)
    return lc__encode(lc_on_response_trailers(lc__in_headers));
#else
    return lc__encode(lc_continue());
#endif
}

/* One post-return for every hook: the host has read the result. */
static inline void lc__export_post(void *ret) {
    (void)ret;
    lc__http_release();
}
__attribute__((export_name("cabi_post_on-request-headers"))) void lc__post_rq_h(void *r) { lc__export_post(r); }
__attribute__((export_name("cabi_post_on-request-body"))) void lc__post_rq_b(void *r) { lc__export_post(r); }
__attribute__((export_name("cabi_post_on-request-trailers"))) void lc__post_rq_t(void *r) { lc__export_post(r); }
__attribute__((export_name("cabi_post_on-response-headers"))) void lc__post_rs_h(void *r) { lc__export_post(r); }
__attribute__((export_name("cabi_post_on-response-body"))) void lc__post_rs_b(void *r) { lc__export_post(r); }
__attribute__((export_name("cabi_post_on-response-trailers"))) void lc__post_rs_t(void *r) { lc__export_post(r); }

__attribute__((export_name("on-close"))) void lc__export_on_close(void) {
    lc__http_release();
    lc_on_close();
}

#undef LC__WANTS

#endif /* LIGHTCELL_HTTP_H */
