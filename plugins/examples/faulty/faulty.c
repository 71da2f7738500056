/*
 * faulty: misbehaves on purpose so tests can prove a fault stays in its
 * sandbox. Config "mode=trap|loop|grow|replace|ok[;after=N][;size=S]"
 * (default "mode=ok", after=1, size=0): the first N-1 non-empty chunks pass,
 * then every non-empty chunk
 *   trap     executes `unreachable`
 *   loop     spins forever (only the CPU budget stops it)
 *   grow     allocates and touches 64 KiB blocks until memory.grow fails at
 *            the memory cap, then traps
 *   replace  is replaced with S bytes 'x' (to test the output cap)
 *   ok       passes
 * Empty chunks pass and are not counted. Bad config traps in on-open.
 */
#include "lightcell.h"

typedef enum { MODE_OK, MODE_TRAP, MODE_LOOP, MODE_GROW, MODE_REPLACE } mode;

static mode how = MODE_OK;
static uint32_t after = 1;
static uint32_t size;
static uint32_t seen;

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    lc_bytes rest = config, item, key, value;
    while (lc_next_item(&rest, ';', &item)) {
        if (item.len == 0) continue;
        lc_split_kv(item, &key, &value);
        if (lc_eq(key, "mode")) {
            if (lc_eq(value, "ok")) how = MODE_OK;
            else if (lc_eq(value, "trap")) how = MODE_TRAP;
            else if (lc_eq(value, "loop")) how = MODE_LOOP;
            else if (lc_eq(value, "grow")) how = MODE_GROW;
            else if (lc_eq(value, "replace")) how = MODE_REPLACE;
            else __builtin_trap();
        } else if (lc_eq(key, "after")) {
            if (!lc_parse_u32(value, &after) || after == 0) __builtin_trap();
        } else if (lc_eq(key, "size")) {
            if (!lc_parse_u32(value, &size)) __builtin_trap();
        } else {
            __builtin_trap();
        }
    }
}

lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos) {
    (void)dir;
    (void)eos;
    if (data.len == 0 || ++seen < after) return lc_pass();
    switch (how) {
    case MODE_TRAP:
        __builtin_trap();
    case MODE_LOOP: {
        volatile uint64_t spin = 0;
        for (;;) spin++;
    }
    case MODE_GROW:
        for (;;) {
            volatile uint8_t *block = lc_alloc(65536);
            if (!block) __builtin_trap();
            for (size_t i = 0; i < 65536; i += 4096) block[i] = 1;
        }
    case MODE_REPLACE: {
        uint8_t *out = lc_alloc(size);
        if (!out) __builtin_trap();
        for (uint32_t i = 0; i < size; i++) out[i] = 'x';
        return lc_replace(out, size); /* an lc_alloc block: the SDK frees it */
    }
    case MODE_OK:
        break;
    }
    return lc_pass();
}

void lc_on_close(void) {}
