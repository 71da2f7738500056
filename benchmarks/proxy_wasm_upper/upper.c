/*
 * upper: a proxy-wasm (ABI v0.2.1) network filter that upper-cases the bytes
 * a client sends (downstream data) and passes the upstream's bytes through.
 * The in-process counterpart of Lightcell's rewrite plugin with read=upper,
 * for bench_envoy.py. Freestanding: no libc, built with zig cc for
 * wasm32-freestanding; Envoy loads it in envoy.filters.network.wasm (V8).
 *
 * Envoy 1.40 refuses to load a module without an ABI version marker ("Missing
 * or unknown Proxy-Wasm ABI version") or without proxy_on_memory_allocate or
 * malloc ("Wasm module is missing malloc function"), also in --mode validate;
 * every proxy_on_* callback is optional. This one exports all that a network
 * filter built with a proxy-wasm SDK would, so Envoy does the same per-
 * connection work (context create, new connection, done, log, delete).
 *
 * Memory: the host asks for buffers through proxy_on_memory_allocate while a
 * callback runs (proxy_get_buffer_bytes copies into one). They live in a bump
 * arena above __heap_base that each data callback resets first, since no
 * buffer outlives the callback that fetched it.
 */
#include <stddef.h>
#include <stdint.h>

#define EXPORT(name) __attribute__((export_name(#name))) __attribute__((used))
#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

enum { BUFFER_DOWNSTREAM_DATA = 2 }; /* proxy_buffer_type_t */
enum { ACTION_CONTINUE = 0 };        /* proxy_action_t */
enum { PAGE = 65536 };

IMPORT(proxy_get_buffer_bytes)
uint32_t proxy_get_buffer_bytes(uint32_t buffer, size_t start, size_t max_size, uint8_t **data, size_t *size);
IMPORT(proxy_set_buffer_bytes)
uint32_t proxy_set_buffer_bytes(uint32_t buffer, size_t start, size_t size, const uint8_t *data, size_t len);

extern unsigned char __heap_base;
static uintptr_t arena_top;

EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) {
    if (arena_top == 0) arena_top = (uintptr_t)&__heap_base;
    uintptr_t p = (arena_top + 15) & ~(uintptr_t)15;
    uintptr_t end = p + size;
    size_t have = __builtin_wasm_memory_size(0) * PAGE;
    if (end > have && __builtin_wasm_memory_grow(0, (end - have + PAGE - 1) / PAGE) == (size_t)-1) return 0;
    arena_top = end;
    return (void *)p;
}

EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t ctx, uint32_t parent) { (void)ctx, (void)parent; }
EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t ctx, size_t size) { (void)ctx, (void)size; return 1; }
EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t ctx, size_t size) { (void)ctx, (void)size; return 1; }
EXPORT(proxy_on_new_connection) uint32_t proxy_on_new_connection(uint32_t ctx) { (void)ctx; return ACTION_CONTINUE; }

EXPORT(proxy_on_downstream_data) uint32_t proxy_on_downstream_data(uint32_t ctx, size_t size, uint32_t eos) {
    (void)ctx, (void)eos;
    arena_top = 0; /* buffers from earlier callbacks are dead */
    uint8_t *data = 0;
    size_t len = 0;
    if (size == 0 || proxy_get_buffer_bytes(BUFFER_DOWNSTREAM_DATA, 0, size, &data, &len) != 0 || !data)
        return ACTION_CONTINUE;
    for (size_t i = 0; i < len; i++)
        if (data[i] >= 'a' && data[i] <= 'z') data[i] = (uint8_t)(data[i] - 32);
    proxy_set_buffer_bytes(BUFFER_DOWNSTREAM_DATA, 0, len, data, len);
    return ACTION_CONTINUE;
}

EXPORT(proxy_on_upstream_data) uint32_t proxy_on_upstream_data(uint32_t ctx, size_t size, uint32_t eos) {
    (void)ctx, (void)size, (void)eos;
    return ACTION_CONTINUE;
}

EXPORT(proxy_on_downstream_connection_close) void proxy_on_downstream_connection_close(uint32_t ctx, uint32_t peer) { (void)ctx, (void)peer; }
EXPORT(proxy_on_upstream_connection_close) void proxy_on_upstream_connection_close(uint32_t ctx, uint32_t peer) { (void)ctx, (void)peer; }
EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t ctx) { (void)ctx; return 1; }
EXPORT(proxy_on_log) void proxy_on_log(uint32_t ctx) { (void)ctx; }
EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t ctx) { (void)ctx; }
