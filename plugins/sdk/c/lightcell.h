/*
 * lightcell.h: header-only C SDK for Lightcell tcp-filter plugins.
 *
 * Build, from the repository's root (no libc needed; see plugins/wit/README.md
 * for the ABI; tests/test_plugins_build.py runs these exact lines):
 *   python -m ziglang cc --target=wasm32-freestanding -mcpu=mvp -O2 -Iplugins/sdk/c \
 *       -nostdlib -Wl,--no-entry -Wl,-z,stack-size=65536 plugin.c -o core.wasm
 *   wasm-tools strip core.wasm -o core.wasm
 *   wasm-tools component embed plugins/wit --world tcp-filter core.wasm -o e.wasm
 *   wasm-tools component new e.wasm -o plugin.wasm
 *
 * The plugin includes this header in exactly one .c file and defines:
 *   void       lc_on_open(lc_bytes listener, lc_bytes config);
 *   lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos);
 *   void       lc_on_close(void);
 * The SDK exports the contract's core functions (`on-open`, `on-data`,
 * `on-close`, `cabi_post_on-data`, `cabi_realloc`) around them.
 *
 * lc_connection_attributes() (grant `connection`) reads what Envoy sent about
 * the connection (source.address, ...); it imports the function only if used.
 *
 * Memory ownership (canonical ABI): lists the host passes in were allocated
 * by the host through our cabi_realloc and now belong to the plugin. The SDK
 * frees `listener`/`config` after lc_on_open returns and `data` after
 * lc_on_data returns, so copy what must outlive the call. `data.ptr` may be
 * modified in place and returned with lc_replace(): the SDK then frees it
 * once the host has read it (cabi_post_on-data, or at the next on-data).
 * lc_replace() may also point into `data` (a slice), at the start of an
 * lc_alloc() block (freed the same way), or at static/constant data (never
 * freed: lc_free ignores non-heap pointers; not with LC_USE_LIBC_MALLOC).
 *
 * Define LC_USE_LIBC_MALLOC before including to back the allocator with
 * libc malloc/realloc/free (needed when linking wasi-libc, whose malloc
 * owns the heap).
 */
#ifndef LIGHTCELL_H
#define LIGHTCELL_H

#include "lightcell_common.h"

/* ---- Contract types (discriminants as in plugins/wit/lightcell.wit) ---- */

typedef enum { LC_READ = 0, LC_WRITE = 1 } lc_direction;
typedef enum { LC_PASS = 0, LC_REPLACE = 1, LC_CLOSE = 2, LC_RESET = 3 } lc_verdict_kind;
/* lc_log_level, lc_send_error and lc_bytes come from lightcell_common.h. */

/* What lc_on_data returns. Build with lc_pass()/lc_replace()/lc_close()/lc_reset(). */
typedef struct {
    lc_verdict_kind kind;
    uint8_t *ptr; /* LC_REPLACE only */
    size_t len;
} lc_verdict;

/* ---- Hooks the plugin defines ---- */

void lc_on_open(lc_bytes listener, lc_bytes config);
lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos);
void lc_on_close(void);

/* Imports, helpers, allocator, cabi_realloc, capability helpers: lightcell_common.h. */

/* ---- Connection attributes (grant `connection`, tcp-filter only) ---- */

/* One attribute: exactly the canonical-ABI element of list<attribute> (16 bytes:
 * name ptr, len, value ptr, len); both are UTF-8 text, not NUL-terminated. */
typedef struct {
    lc_bytes name;
    lc_bytes value;
} lc_attribute;
_Static_assert(sizeof(lc_attribute) == 16, "attribute is 16 bytes in the canonical ABI");

/* A list of attributes; also exactly connection.attributes' return area. */
typedef struct {
    lc_attribute *ptr;
    size_t len; /* number of attributes */
} lc_attributes;
_Static_assert(sizeof(lc_attributes) == 8, "list return area is 8 bytes");

/* ret -> { lc_attribute *ptr @0; u32 count @4 } (list<attribute>) */
LC_IMPORT("connection", "attributes") void lc__connection_attributes(lc_attributes *ret);

/* The connection's attributes, sorted by name (empty if the Envoy filter lists
 * none). Every block belongs to the plugin: release with lc_attributes_free. */
static inline lc_attributes lc_connection_attributes(void) {
    lc_attributes ret = {0, 0};
    lc__connection_attributes(&ret);
    return ret;
}

static inline void lc_attributes_free(lc_attributes attrs) {
    for (size_t i = 0; i < attrs.len; i++) {
        if (attrs.ptr[i].name.len) lc_free(attrs.ptr[i].name.ptr); /* empty: any pointer */
        if (attrs.ptr[i].value.len) lc_free(attrs.ptr[i].value.ptr);
    }
    if (attrs.len) lc_free(attrs.ptr);
}

/* True and the value (pointing into `attrs`) if attribute `name` is there. */
static inline bool lc_attribute_get(lc_attributes attrs, const char *name, lc_bytes *value) {
    for (size_t i = 0; i < attrs.len; i++) {
        if (lc_eq(attrs.ptr[i].name, name)) {
            *value = attrs.ptr[i].value;
            return true;
        }
    }
    return false;
}

/* ---- Verdict constructors ---- */

static inline lc_verdict lc_pass(void) { return (lc_verdict){LC_PASS, 0, 0}; }
static inline lc_verdict lc_close(void) { return (lc_verdict){LC_CLOSE, 0, 0}; }
static inline lc_verdict lc_reset(void) { return (lc_verdict){LC_RESET, 0, 0}; }
/* `ptr`: the input buffer, an lc_alloc() block, or static data (see top). */
static inline lc_verdict lc_replace(uint8_t *ptr, size_t len) { return (lc_verdict){LC_REPLACE, ptr, len}; }
/* Replace with the C string `s` itself (not a copy: it must be static data, never freed). */
static inline lc_verdict lc_replace_cstr(const char *s) {
    return lc_replace((uint8_t *)s, lc_strlen(s));
}

/* ---- Exported contract functions ---- */

/* on-data's return area: { u8 tag @0; u8 *ptr @4; u32 len @8 }. */
static struct {
    uint8_t tag;
    uint8_t *ptr;
    uint32_t len;
} __attribute__((aligned(4))) lc__ret;
_Static_assert(sizeof(lc__ret) == 12, "verdict return area is 12 bytes");

/* The replacement handed to the host last, freed once the host has read it. */
static uint8_t *lc__pending;

static inline void lc__release_pending(void) {
    lc_free(lc__pending);
    lc__pending = 0;
}

__attribute__((export_name("on-open"))) void lc__export_on_open(uint8_t *lptr, size_t llen, uint8_t *cptr,
                                                                size_t clen) {
    lc_bytes listener = {lptr, llen}, config = {cptr, clen};
    lc_on_open(listener, config);
    if (llen) lc_free(lptr); /* an empty list may come with any pointer */
    if (clen) lc_free(cptr);
}

__attribute__((export_name("on-data"))) void *lc__export_on_data(int32_t dir, uint8_t *ptr, size_t len,
                                                                 int32_t eos) {
    lc__release_pending(); /* in case the host did not call cabi_post_on-data */
    if (dir != LC_READ && dir != LC_WRITE) __builtin_trap();
    lc_bytes data = {ptr, len};
    lc_verdict v = lc_on_data((lc_direction)dir, data, eos != 0);
    lc__ret.tag = (uint8_t)v.kind;
    lc__ret.ptr = 0;
    lc__ret.len = 0;
    uint8_t *input = len ? ptr : 0; /* an empty list may come with any pointer */
    if (v.kind == LC_REPLACE) {
        lc__ret.ptr = v.ptr;
        lc__ret.len = (uint32_t)v.len;
        /* A slice of the input keeps the input alive until the host read it. */
        bool in_input = input && v.ptr >= input && v.ptr <= input + len;
        lc__pending = in_input ? input : v.ptr;
        if (in_input) input = 0;
    }
    lc_free(input);
    return &lc__ret;
}

__attribute__((export_name("cabi_post_on-data"))) void lc__export_post_on_data(void *ret) {
    (void)ret;
    lc__release_pending();
}

__attribute__((export_name("on-close"))) void lc__export_on_close(void) {
    lc__release_pending();
    lc_on_close();
}

#endif /* LIGHTCELL_H */
