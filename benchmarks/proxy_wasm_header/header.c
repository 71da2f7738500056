/*
 * header: a proxy-wasm (ABI v0.2.1) HTTP filter that adds the request header
 * `x-bench: lightcell` and does nothing else. The in-process counterpart of
 * Lightcell's addheader plugin with config `x-bench=lightcell`, for
 * bench_envoy_http.py. Freestanding C (no libc), built with zig cc for
 * wasm32-freestanding; Envoy loads it in envoy.filters.http.wasm (V8).
 *
 * Like benchmarks/proxy_wasm_upper/upper.c it exports the ABI marker and
 * proxy_on_memory_allocate, which Envoy 1.40 requires, and the per-stream
 * callbacks an SDK-built filter would, so Envoy does the same per-request
 * work. The host never hands this filter a buffer, so the allocator is a
 * bump arena that is never reset (each call to it would be a bug here).
 */
#include <stddef.h>
#include <stdint.h>

#define EXPORT(name) __attribute__((export_name(#name))) __attribute__((used))
#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

enum { MAP_REQUEST_HEADERS = 0 }; /* proxy_map_type_t */
enum { ACTION_CONTINUE = 0 };     /* proxy_action_t */
enum { PAGE = 65536 };

IMPORT(proxy_add_header_map_value)
uint32_t proxy_add_header_map_value(uint32_t map, const char *key, size_t key_len, const char *value,
                                    size_t value_len);

extern unsigned char __heap_base;
static uintptr_t arena_top;

static const char NAME[] = "x-bench";
static const char VALUE[] = "lightcell";

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

EXPORT(proxy_on_request_headers) uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t headers, uint32_t eos) {
    (void)ctx, (void)headers, (void)eos;
    proxy_add_header_map_value(MAP_REQUEST_HEADERS, NAME, sizeof NAME - 1, VALUE, sizeof VALUE - 1);
    return ACTION_CONTINUE;
}

EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t ctx) { (void)ctx; return 1; }
EXPORT(proxy_on_log) void proxy_on_log(uint32_t ctx) { (void)ctx; }
EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t ctx) { (void)ctx; }
