/*
 * The contract's imports (module "lightcell:filter/<iface>@0.1.0"), each one
 * host call. The generated bind.c forwards wasm2c's w2c_<module>_<name>
 * symbols here after compile.py checked each import's core signature.
 * Every (pointer, length) from the plugin goes through lc_rt_guest before
 * use; return areas are checked before the host call so a bad one causes
 * no side effect.
 */
#include <string.h>

#include "lc_imports.h"
#include "lc_rt.h"

/* log.log(level: log-level, message: string) */
void lc_imp_log_log(uint32_t level, uint32_t ptr, uint32_t len) {
    if (level > 4) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_ENUM);
    }
    const uint8_t *msg = lc_rt_guest(ptr, len);
    lc_rt_host(LC_HOST_LOG, level, msg, len, 0, 0, 0, 0, 0);
}

uint64_t lc_imp_clock_wall_now(void) {
    return lc_rt_host(LC_HOST_WALL_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
}

uint64_t lc_imp_clock_monotonic_now(void) {
    return lc_rt_host(LC_HOST_MONOTONIC_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
}

uint64_t lc_imp_random_get_u64(void) {
    return lc_rt_host(LC_HOST_RANDOM_U64, 0, 0, 0, 0, 0, 0, 0, 0);
}

/* kv.get(key) -> option<list<u8>>: the list is allocated in the plugin with
 * its cabi_realloc, then tag/ptr/len are stored in the return area. */
void lc_imp_kv_get(uint32_t kptr, uint32_t klen, uint32_t retptr) {
    const uint8_t *key = lc_rt_guest(kptr, klen);
    if (retptr & 3u) {
        lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
    }
    (void)lc_rt_guest(retptr, 12);
    uint32_t vlen = 0;
    uint64_t found = lc_rt_host(LC_HOST_KV_GET, 0, key, klen, 0, 0, lc_rt_scratch,
                                LC_RT_SCRATCH_BYTES, &vlen);
    if (!found) {
        lc_rt_guest(retptr, 12)[0] = 0;
        return;
    }
    uint32_t vptr = lc_rt_alloc_in_plugin(vlen, 1);
    if (vlen) {
        memcpy(lc_rt_guest(vptr, vlen), lc_rt_scratch, vlen);
    }
    uint8_t *area = lc_rt_guest(retptr, 12); /* memory may have grown: re-check */
    area[0] = 1;
    lc_rt_st32(area + 4, vptr);
    lc_rt_st32(area + 8, vlen);
}

void lc_imp_kv_set(uint32_t kptr, uint32_t klen, uint32_t vptr, uint32_t vlen) {
    const uint8_t *key = lc_rt_guest(kptr, klen);
    const uint8_t *val = lc_rt_guest(vptr, vlen);
    lc_rt_host(LC_HOST_KV_SET, 0, key, klen, val, vlen, 0, 0, 0);
}

void lc_imp_kv_delete(uint32_t kptr, uint32_t klen) {
    const uint8_t *key = lc_rt_guest(kptr, klen);
    lc_rt_host(LC_HOST_KV_DELETE, 0, key, klen, 0, 0, 0, 0, 0);
}

uint64_t lc_imp_kv_increment(uint32_t kptr, uint32_t klen, uint64_t delta) {
    const uint8_t *key = lc_rt_guest(kptr, klen);
    return lc_rt_host(LC_HOST_KV_INCREMENT, delta, key, klen, 0, 0, 0, 0, 0);
}

void lc_imp_metadata_set(uint32_t kptr, uint32_t klen, uint32_t vptr, uint32_t vlen) {
    const uint8_t *key = lc_rt_guest(kptr, klen);
    const uint8_t *val = lc_rt_guest(vptr, vlen);
    lc_rt_host(LC_HOST_METADATA_SET, 0, key, klen, val, vlen, 0, 0, 0);
}

/* egress.send-datagram(host, port: u16, payload) -> result<_, send-error>:
 * u8 tag @0 (0 ok, 1 err), u8 error @1. The u16 is lifted by truncation, as
 * the canonical ABI does. */
void lc_imp_egress_send_datagram(uint32_t hptr, uint32_t hlen, uint32_t port, uint32_t pptr,
                                 uint32_t plen, uint32_t retptr) {
    const uint8_t *host = lc_rt_guest(hptr, hlen);
    const uint8_t *payload = lc_rt_guest(pptr, plen);
    (void)lc_rt_guest(retptr, 2);
    uint64_t r = lc_rt_host(LC_HOST_EGRESS_SEND, port & 0xffffu, host, hlen, payload, plen, 0, 0, 0);
    if (r > 3) {
        lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
    }
    uint8_t *area = lc_rt_guest(retptr, 2);
    area[0] = r ? 1 : 0;
    if (r) {
        area[1] = (uint8_t)(r - 1);
    }
}

/* connection.attributes() -> list<attribute>: laid out as an http-filter hook
 * argument (plugins/wit/README.md): the 16-byte-per-entry array (align 4)
 * first, then each name and value (align 1), all with the plugin's
 * cabi_realloc; (array, count) go to the 8-byte return area. The host's
 * answer is checked like a plugin's: every length against what it sent. */
#define LC_MAX_CONNECTION_ATTRIBUTES 64u /* vmm/contract.py MAX_CONNECTION_ATTRIBUTES */

static uint32_t lower_text(const uint8_t *src, uint32_t len) {
    if (!len) {
        return 0; /* an empty string may come with any pointer */
    }
    uint32_t ptr = lc_rt_alloc_in_plugin(len, 1);
    memcpy(lc_rt_guest(ptr, len), src, len);
    return ptr;
}

void lc_imp_connection_attributes(uint32_t retptr) {
    if (retptr & 3u) {
        lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
    }
    (void)lc_rt_guest(retptr, 8);
    uint32_t got = 0;
    uint64_t count = lc_rt_host(LC_HOST_CONNECTION_ATTRIBUTES, 0, 0, 0, 0, 0, lc_rt_scratch,
                                LC_RT_SCRATCH_BYTES, &got);
    if (count > LC_MAX_CONNECTION_ATTRIBUTES) {
        lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
    }
    uint32_t n = (uint32_t)count, array = 0;
    if (n) {
        array = lc_rt_alloc_in_plugin(16u * n, 4);
        if (array & 3u) {
            lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
        }
    }
    uint32_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (got - at < 8) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        uint32_t nlen = lc_rt_ld32(lc_rt_scratch + at), vlen = lc_rt_ld32(lc_rt_scratch + at + 4);
        at += 8;
        if (nlen > got - at || vlen > got - at - nlen) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        uint32_t nptr = lower_text(lc_rt_scratch + at, nlen);
        uint32_t vptr = lower_text(lc_rt_scratch + at + nlen, vlen);
        at += nlen + vlen;
        uint8_t *entry = lc_rt_guest(array + 16u * i, 16); /* memory may have grown: re-check */
        lc_rt_st32(entry, nptr);
        lc_rt_st32(entry + 4, nlen);
        lc_rt_st32(entry + 8, vptr);
        lc_rt_st32(entry + 12, vlen);
    }
    if (at != got) {
        lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
    }
    uint8_t *area = lc_rt_guest(retptr, 8);
    lc_rt_st32(area, array);
    lc_rt_st32(area + 4, n);
}
