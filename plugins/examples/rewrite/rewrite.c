/*
 * rewrite: transforms each chunk per direction.
 *
 * Config "read=OP,write=OP", OP in pass|upper|lower|rot13|drop|number.
 * Missing keys keep the defaults read=upper, write=pass (so "" means
 * read=upper,write=pass). Unknown keys or ops make on-open trap.
 * Any chunk containing "!close" gives verdict close, "!reset" gives reset
 * (checked on the original bytes, "!close" first). Empty chunks pass.
 * number: prefixes "<n>:" where n counts number-op chunks of this instance
 * in a static global, so a reused instance would not restart at 1.
 */
#include "lightcell.h"

typedef enum { OP_PASS, OP_UPPER, OP_LOWER, OP_ROT13, OP_DROP, OP_NUMBER } op;

static op ops[2] = {OP_UPPER, OP_PASS}; /* indexed by lc_direction */
static uint64_t number_count;           /* deliberately instance-global */

static op parse_op(lc_bytes v) {
    static const char *const names[] = {"pass", "upper", "lower", "rot13", "drop", "number"};
    for (int i = 0; i < 6; i++)
        if (lc_eq(v, names[i])) return (op)i;
    __builtin_trap(); /* bad config: fail the connection loudly */
}

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    lc_bytes rest = config, item, key, value;
    while (lc_next_item(&rest, ',', &item)) {
        if (item.len == 0) continue;
        lc_split_kv(item, &key, &value);
        if (lc_eq(key, "read"))
            ops[LC_READ] = parse_op(value);
        else if (lc_eq(key, "write"))
            ops[LC_WRITE] = parse_op(value);
        else
            __builtin_trap();
    }
}

static uint8_t rot13(uint8_t c) {
    if (c >= 'a' && c <= 'z') return (uint8_t)('a' + (c - 'a' + 13) % 26);
    if (c >= 'A' && c <= 'Z') return (uint8_t)('A' + (c - 'A' + 13) % 26);
    return c;
}

lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos) {
    (void)eos;
    if (data.len == 0) return lc_pass();
    if (lc_contains(data, "!close")) return lc_close();
    if (lc_contains(data, "!reset")) return lc_reset();
    switch (ops[dir]) {
    case OP_PASS:
        return lc_pass();
    case OP_DROP:
        return lc_replace(data.ptr, 0);
    case OP_NUMBER: {
        uint8_t prefix[24];
        size_t n = lc_fmt_i64(prefix, (int64_t)++number_count);
        prefix[n++] = ':';
        uint8_t *out = lc_alloc(n + data.len);
        if (!out) __builtin_trap();
        lc_memcpy(out, prefix, n);
        lc_memcpy(out + n, data.ptr, data.len);
        return lc_replace(out, n + data.len);
    }
    default: /* in-place byte maps */
        for (size_t i = 0; i < data.len; i++) {
            uint8_t c = data.ptr[i];
            if (ops[dir] == OP_UPPER && c >= 'a' && c <= 'z') c = (uint8_t)(c - 32);
            else if (ops[dir] == OP_LOWER && c >= 'A' && c <= 'Z') c = (uint8_t)(c + 32);
            else if (ops[dir] == OP_ROT13) c = rot13(c);
            data.ptr[i] = c;
        }
        return lc_replace(data.ptr, data.len);
    }
}

void lc_on_close(void) {}
