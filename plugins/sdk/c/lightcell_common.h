/*
 * lightcell_common.h: what every Lightcell C SDK header shares (tcp-filter:
 * lightcell.h; http-filter: lightcell_http.h): the capability imports with
 * their core signatures (plugins/wit/README.md), freestanding helpers, the
 * allocator and the canonical-ABI cabi_realloc export. Not included directly
 * by plugins: include lightcell.h or lightcell_http.h (exactly one of them).
 *
 * Define LC_USE_LIBC_MALLOC before including to back the allocator with
 * libc malloc/realloc/free (needed when linking wasi-libc, whose malloc
 * owns the heap).
 */
#ifndef LIGHTCELL_COMMON_H
#define LIGHTCELL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Shared contract types (discriminants as in plugins/wit/lightcell.wit) ---- */

typedef enum { LC_TRACE = 0, LC_DEBUG = 1, LC_INFO = 2, LC_WARN = 3, LC_ERROR = 4 } lc_log_level;
typedef enum { LC_SEND_DENIED = 0, LC_SEND_TOO_LARGE = 1, LC_SEND_UNREACHABLE = 2 } lc_send_error;

/* A byte string (UTF-8 for WIT strings; not NUL-terminated). */
typedef struct {
    uint8_t *ptr;
    size_t len;
} lc_bytes;

/* ---- Raw imports: core signatures exactly as in plugins/wit/README.md ---- */

#define LC_IMPORT(iface, name) \
    __attribute__((import_module("lightcell:filter/" iface "@0.1.0"), import_name(name)))

LC_IMPORT("log", "log") void lc__log(int32_t level, const uint8_t *msg, size_t len);
LC_IMPORT("clock", "wall-now") int64_t lc__wall_now(void);
LC_IMPORT("clock", "monotonic-now") int64_t lc__monotonic_now(void);
LC_IMPORT("random", "get-u64") int64_t lc__get_u64(void);
/* ret -> { u8 is_some @0; u8 *ptr @4; u32 len @8 } (option<list<u8>>) */
LC_IMPORT("kv", "get") void lc__kv_get(const uint8_t *key, size_t klen, void *ret);
LC_IMPORT("kv", "set") void lc__kv_set(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
LC_IMPORT("kv", "delete") void lc__kv_delete(const uint8_t *key, size_t klen);
LC_IMPORT("kv", "increment") int64_t lc__kv_increment(const uint8_t *key, size_t klen, int64_t delta);
LC_IMPORT("metadata", "set")
void lc__metadata_set(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
/* ret -> { u8 is_err @0; u8 send_error @1 } (result<_, send-error>) */
LC_IMPORT("egress", "send-datagram")
void lc__send_datagram(const uint8_t *host, size_t hlen, int32_t port, const uint8_t *payload, size_t plen,
                       void *ret);

/* ---- Small freestanding helpers ---- */

static inline size_t lc_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static inline void lc_memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    while (n--) *d++ = *s++;
}

static inline bool lc_memeq(const void *a, const void *b, size_t n) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return false;
    return true;
}

/* True if `hay` contains the C string `needle`. */
static inline bool lc_contains(lc_bytes hay, const char *needle) {
    size_t n = lc_strlen(needle);
    if (n > hay.len) return false;
    for (size_t i = 0; i + n <= hay.len; i++)
        if (lc_memeq(hay.ptr + i, needle, n)) return true;
    return false;
}

/* True if `b` equals the C string `s`. */
static inline bool lc_eq(lc_bytes b, const char *s) {
    size_t n = lc_strlen(s);
    return b.len == n && lc_memeq(b.ptr, s, n);
}

static inline lc_bytes lc_cstr(const char *s) {
    lc_bytes b = {(uint8_t *)s, lc_strlen(s)};
    return b;
}

/* Writes v in decimal at out (room for 20 digits + sign); returns digits written. */
static inline size_t lc_fmt_i64(uint8_t *out, int64_t v) {
    uint8_t tmp[20];
    size_t n = 0, w = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    if (v < 0) out[w++] = '-';
    do {
        tmp[n++] = (uint8_t)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n) out[w++] = tmp[--n];
    return w;
}

/* Writes v as 16 lowercase hex digits at out. */
static inline size_t lc_fmt_hex64(uint8_t *out, uint64_t v) {
    for (int i = 15; i >= 0; i--, v >>= 4) out[i] = (uint8_t)"0123456789abcdef"[v & 15];
    return 16;
}

/* Parses a non-negative decimal; returns false on anything else or overflow. */
static inline bool lc_parse_u32(lc_bytes b, uint32_t *out) {
    uint64_t v = 0;
    if (b.len == 0 || b.len > 10) return false;
    for (size_t i = 0; i < b.len; i++) {
        if (b.ptr[i] < '0' || b.ptr[i] > '9') return false;
        v = v * 10 + (uint64_t)(b.ptr[i] - '0');
    }
    if (v > 0xffffffffu) return false;
    *out = (uint32_t)v;
    return true;
}

/*
 * Splits off the next item of `*rest` at `sep` (e.g. "a=1,b=2" at ','),
 * advancing *rest. Returns false when nothing is left.
 */
static inline bool lc_next_item(lc_bytes *rest, uint8_t sep, lc_bytes *item) {
    if (rest->len == 0) return false;
    size_t i = 0;
    while (i < rest->len && rest->ptr[i] != sep) i++;
    item->ptr = rest->ptr;
    item->len = i;
    size_t skip = i < rest->len ? i + 1 : i;
    rest->ptr += skip;
    rest->len -= skip;
    return true;
}

/* Splits "key=value" into key and value (value empty if there is no '='). */
static inline void lc_split_kv(lc_bytes item, lc_bytes *key, lc_bytes *value) {
    lc_bytes rest = item;
    lc_next_item(&rest, '=', key);
    *value = rest;
}

/* ---- Allocator ---- */

#ifdef LC_USE_LIBC_MALLOC
#include <stdlib.h>
static inline void *lc_alloc(size_t n) { return malloc(n ? n : 1); }
/* Ignores the dummy pointers cabi_realloc hands out for empty lists. */
static inline void lc_free(void *p) {
    if ((uintptr_t)p > 8) free(p);
}
static inline void *lc__realloc(void *p, size_t n) { return realloc(p, n ? n : 1); }
#else
/*
 * Bump allocator with a first-fit free list. Blocks are 8-byte aligned and
 * carry an 8-byte header { u32 capacity; u32 magic }. Freed blocks are reused
 * (not coalesced): plugins allocate a few buffers per event, the same sizes
 * again and again, and a sandbox lives for one connection.
 */
extern unsigned char __heap_base;

#define LC__HDR 8u
#define LC__MAGIC_USED 0x4c43a110u
#define LC__MAGIC_FREE 0x4c43f4eeu

typedef struct lc__block {
    uint32_t cap;
    uint32_t magic;
} lc__block;

static uintptr_t lc__heap_top;  /* next unused byte (0: not yet set up) */
static uintptr_t lc__heap_end;  /* end of linear memory */
static lc__block *lc__free_list; /* free blocks; next pointer stored in the payload */

static inline bool lc__is_heap(const void *p) {
    uintptr_t a = (uintptr_t)p;
    return lc__heap_top && a >= (uintptr_t)&__heap_base + LC__HDR && a < lc__heap_top;
}

/* Returns NULL when memory cannot grow (the host's memory cap). */
static inline void *lc_alloc(size_t n) {
    if (!lc__heap_top) {
        lc__heap_top = ((uintptr_t)&__heap_base + 7u) & ~(uintptr_t)7u;
        lc__heap_end = (uintptr_t)__builtin_wasm_memory_size(0) * 65536u;
    }
    if (n > 0x7ffffff0u) return 0;
    uint32_t cap = (uint32_t)((n + 7u) & ~(size_t)7u);
    if (cap == 0) cap = 8;
    lc__block **link = &lc__free_list;
    while (*link) {
        lc__block *b = *link;
        if (b->cap >= cap && b->cap <= 2 * cap + 64) {
            *link = *(lc__block **)(b + 1);
            b->magic = LC__MAGIC_USED;
            return b + 1;
        }
        link = (lc__block **)(b + 1);
    }
    uintptr_t need = LC__HDR + cap;
    if (lc__heap_end - lc__heap_top < need) {
        uintptr_t missing = need - (lc__heap_end - lc__heap_top);
        uintptr_t pages = (missing + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
        lc__heap_end += pages * 65536u;
    }
    lc__block *b = (lc__block *)lc__heap_top;
    lc__heap_top += need;
    b->cap = cap;
    b->magic = LC__MAGIC_USED;
    return b + 1;
}

/* Frees a block from lc_alloc; ignores NULL and non-heap (static) pointers. */
static inline void lc_free(void *p) {
    if (!lc__is_heap(p)) return;
    lc__block *b = (lc__block *)p - 1;
    if (b->magic != LC__MAGIC_USED) __builtin_trap(); /* double free or wild pointer */
    b->magic = LC__MAGIC_FREE;
    *(lc__block **)p = lc__free_list;
    lc__free_list = b;
}

static inline void *lc__realloc(void *p, size_t n) {
    if (lc__is_heap(p) && ((lc__block *)p - 1)->cap >= n) return p;
    void *q = lc_alloc(n);
    if (!q) return 0;
    if (lc__is_heap(p)) {
        size_t old = ((lc__block *)p - 1)->cap;
        lc_memcpy(q, p, old < n ? old : n);
        lc_free(p);
    }
    return q;
}
#endif

/*
 * Canonical-ABI allocator the host calls to place lists/strings in our
 * memory (and that kv.get uses for its result). Alignment <= 8 only (all the
 * contract needs). Traps when memory is exhausted: the host sees a fault.
 */
__attribute__((export_name("cabi_realloc"))) void *cabi_realloc(void *old, size_t old_size, size_t align,
                                                                 size_t new_size) {
    (void)old_size;
    if (align > 8) __builtin_trap();
    if (new_size == 0) return (void *)align; /* canonical ABI: any aligned non-null pointer */
    void *p = old ? lc__realloc(old, new_size) : lc_alloc(new_size);
    if (!p) __builtin_trap();
    return p;
}

/* ---- Capability helpers (each needs its grant; ungranted calls fault) ---- */

static inline void lc_log(lc_log_level level, const char *msg, size_t len) {
    lc__log((int32_t)level, (const uint8_t *)msg, len);
}
static inline void lc_log_str(lc_log_level level, const char *msg) { lc_log(level, msg, lc_strlen(msg)); }

static inline uint64_t lc_wall_now(void) { return (uint64_t)lc__wall_now(); }
static inline uint64_t lc_monotonic_now(void) { return (uint64_t)lc__monotonic_now(); }
static inline uint64_t lc_random_u64(void) { return (uint64_t)lc__get_u64(); }

/* Returns true and the value (free it with lc_free) if `key` exists. */
static inline bool lc_kv_get(const char *key, lc_bytes *value) {
    struct {
        uint8_t is_some;
        uint8_t *ptr;
        uint32_t len;
    } __attribute__((aligned(4))) ret;
    _Static_assert(sizeof(ret) == 12, "option<list<u8>> return area is 12 bytes");
    lc__kv_get((const uint8_t *)key, lc_strlen(key), &ret);
    if (!ret.is_some) return false;
    value->ptr = ret.ptr;
    value->len = ret.len;
    return true;
}
static inline void lc_kv_set(const char *key, const uint8_t *val, size_t len) {
    lc__kv_set((const uint8_t *)key, lc_strlen(key), val, len);
}
static inline void lc_kv_delete(const char *key) { lc__kv_delete((const uint8_t *)key, lc_strlen(key)); }
static inline int64_t lc_kv_increment(const char *key, int64_t delta) {
    return lc__kv_increment((const uint8_t *)key, lc_strlen(key), delta);
}

static inline void lc_metadata_set(const char *key, const char *value) {
    lc__metadata_set((const uint8_t *)key, lc_strlen(key), (const uint8_t *)value, lc_strlen(value));
}

/* Returns true if queued; otherwise *err is the lc_send_error. */
static inline bool lc_egress_send(lc_bytes host, uint16_t port, lc_bytes payload, lc_send_error *err) {
    struct {
        uint8_t is_err;
        uint8_t error;
    } ret;
    _Static_assert(sizeof(ret) == 2, "result<_, send-error> return area is 2 bytes");
    lc__send_datagram(host.ptr, host.len, (int32_t)port, payload.ptr, payload.len, &ret);
    if (!ret.is_err) return true;
    *err = (lc_send_error)ret.error;
    return false;
}

#endif /* LIGHTCELL_COMMON_H */
