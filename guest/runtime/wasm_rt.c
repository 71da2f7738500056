/*
 * The wasm-rt functions that wasm2c output needs (wabt's wasm2c/README.md,
 * "Symbols that must be defined by the embedder"), for a guest with no
 * mmap, no signals and no malloc: memories and tables live in lc_heap (layout
 * in lc_rt.h), each memory at most lc_memory_cap bytes (the listener's
 * limit), bounds are checked explicitly by the generated code
 * (WASM_RT_MEMCHECK_BOUNDS_CHECK), call depth is counted
 * (WASM_RT_STACK_DEPTH_COUNT), and a trap ends the event through lc_fail.
 */
#include <string.h>

#include "lc_rt.h"

#define HEAP_ALIGN 4096u

static uint8_t *g_up;    /* next free byte for a memory (grows up) */
static uint8_t *g_down;  /* lowest byte used by the top allocator (grows down) */
static uint8_t *g_lo;    /* heap bounds, page aligned */
static wasm_rt_memory_t *g_last_mem; /* the memory just below g_up: grows in place */
static int g_grow_refused;

/* With WASM_RT_STACK_DEPTH_COUNT the generated code counts calls here.
 * _Thread_local is compiled away (-D_Thread_local=): one vCPU, one thread,
 * and FS base is 0 in the guest. */
uint32_t wasm_rt_call_stack_depth;
uint32_t wasm_rt_saved_call_stack_depth;

wasm_rt_memory_t *lc_rt_memory;
uint8_t *lc_rt_scratch;
int lc_rt_may_leave = 1;

void lc_rt_heap_init(void) {
    if (g_lo) {
        return;
    }
    uintptr_t lo = ((uintptr_t)lc_heap_base + HEAP_ALIGN - 1) & ~(uintptr_t)(HEAP_ALIGN - 1);
    uintptr_t hi = ((uintptr_t)lc_heap_base + lc_heap_size) & ~(uintptr_t)(HEAP_ALIGN - 1);
    if (hi < lo) {
        hi = lo;
    }
    g_lo = g_up = (uint8_t *)lo;
    g_down = (uint8_t *)hi;
}

/* Forget every allocation (the host-native test harness re-instantiates a
 * plugin in the same process; the guest never calls this). */
void lc_rt_heap_reset(void) {
    g_lo = g_up = g_down = 0;
    g_last_mem = 0;
}

void *lc_rt_alloc_top(uint64_t size, uint64_t align) {
    lc_rt_heap_init();
    uintptr_t room = (uintptr_t)(g_down - g_up);
    if (align == 0 || (align & (align - 1)) != 0 || size > room) {
        return 0;
    }
    uintptr_t p = ((uintptr_t)g_down - size) & ~(uintptr_t)(align - 1);
    if (p < (uintptr_t)g_up) {
        return 0;
    }
    g_down = (uint8_t *)p;
    return g_down; /* never used before: zero (see the heap note above) */
}

void lc_rt_event_begin(void) {
    wasm_rt_call_stack_depth = 0;
    wasm_rt_saved_call_stack_depth = 0;
    g_grow_refused = 0;
}

int lc_rt_grow_was_refused(void) {
    return g_grow_refused;
}

static uint32_t trap_detail(wasm_rt_trap_t code) {
    switch (code) {
    case WASM_RT_TRAP_OOB:
        return LC_TRAP_OOB;
    case WASM_RT_TRAP_INT_OVERFLOW:
        return LC_TRAP_INT_OVERFLOW;
    case WASM_RT_TRAP_DIV_BY_ZERO:
        return LC_TRAP_DIV_BY_ZERO;
    case WASM_RT_TRAP_INVALID_CONVERSION:
        return LC_TRAP_INVALID_CONVERSION;
    case WASM_RT_TRAP_UNREACHABLE:
        return LC_TRAP_UNREACHABLE;
    case WASM_RT_TRAP_CALL_INDIRECT:
        return LC_TRAP_CALL_INDIRECT;
    case WASM_RT_TRAP_EXHAUSTION:
        return LC_TRAP_EXHAUSTION;
    default:
        return LC_TRAP_OTHER;
    }
}

/* Every trap ends the event; after a refused memory.grow it is reported as
 * the memory cap being hit (a C plugin's malloc failing ends in a trap). */
void wasm_rt_trap(wasm_rt_trap_t code) {
    wasm_rt_call_stack_depth = 0;
    lc_fail(g_grow_refused ? LC_STATUS_MEMORY : LC_STATUS_TRAP, trap_detail(code));
}

const char *wasm_rt_strerror(wasm_rt_trap_t trap) {
    (void)trap;
    return "trap";
}

void wasm_rt_init(void) { lc_rt_heap_init(); }
bool wasm_rt_is_initialized(void) { return g_lo != 0; }
void wasm_rt_free(void) {}
void wasm_rt_init_thread(void) {}
void wasm_rt_free_thread(void) {}

/* ---- memories ---------------------------------------------------------- */

static uint64_t round_up_page(uint64_t n) {
    return (n + HEAP_ALIGN - 1) & ~(uint64_t)(HEAP_ALIGN - 1);
}

/* Bytes for `pages` pages, or UINT64_MAX when that cannot be a wasm32 size. */
static uint64_t pages_bytes(uint64_t pages, uint32_t page_size) {
    if (pages > (1ull << 32) / (page_size ? page_size : 1)) {
        return UINT64_MAX;
    }
    return pages * page_size;
}

void wasm_rt_allocate_memory(wasm_rt_memory_t *mem, uint64_t initial_pages, uint64_t max_pages,
                             bool is64, uint32_t page_size) {
    lc_rt_heap_init();
    uint64_t bytes = pages_bytes(initial_pages, page_size);
    if (is64 || page_size == 0 || bytes == UINT64_MAX || bytes > lc_memory_cap ||
        round_up_page(bytes) > (uint64_t)(g_down - g_up)) {
        /* The module's initial memory is over the listener's cap (or, with
         * several memories, no longer fits the heap). */
        lc_fail(LC_STATUS_MEMORY, 0);
    }
    mem->data = g_up;
    mem->size = bytes;
    mem->data_end = g_up + bytes;
    mem->pages = initial_pages;
    mem->max_pages = max_pages;
    mem->page_size = page_size;
    mem->is64 = is64;
    g_up += round_up_page(bytes);
    g_last_mem = mem;
}

uint64_t wasm_rt_grow_memory(wasm_rt_memory_t *mem, uint64_t delta) {
    uint64_t old_pages = mem->pages;
    if (delta > mem->max_pages - old_pages || mem->max_pages < old_pages) {
        return UINT64_MAX; /* the module's own maximum: a normal failure */
    }
    uint64_t new_bytes = pages_bytes(old_pages + delta, mem->page_size);
    if (new_bytes == UINT64_MAX) {
        return UINT64_MAX;
    }
    if (delta == 0) {
        return old_pages;
    }
    if (new_bytes > lc_memory_cap) {
        /* The listener's cap, per memory, as wasmtime's store limit. */
        g_grow_refused = 1;
        return UINT64_MAX;
    }
    uint64_t room = (uint64_t)(g_down - g_up);
    if (g_last_mem == mem) {
        /* The last memory grows in place. */
        uint64_t have = round_up_page(mem->size);
        if (round_up_page(new_bytes) - have > room) {
            g_grow_refused = 1;
            return UINT64_MAX;
        }
        g_up = mem->data + round_up_page(new_bytes);
    } else {
        /* An earlier memory (spec tests with several modules) moves to the
         * top of the memory region; generated code reloads mem->data. */
        if (round_up_page(new_bytes) > room) {
            g_grow_refused = 1;
            return UINT64_MAX;
        }
        memcpy(g_up, mem->data, mem->size);
        mem->data = g_up;
        g_up += round_up_page(new_bytes);
        g_last_mem = mem;
    }
    mem->size = new_bytes;
    mem->pages = old_pages + delta;
    mem->data_end = mem->data + new_bytes;
    return old_pages;
}

void wasm_rt_free_memory(wasm_rt_memory_t *mem) {
    (void)mem;
}

uint8_t *lc_rt_guest(uint32_t ptr, uint64_t len) {
    wasm_rt_memory_t *mem = lc_rt_memory;
    if (!mem || len > mem->size || (uint64_t)ptr > mem->size - len) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_POINTER);
    }
    return mem->data + ptr;
}

/* ---- tables ------------------------------------------------------------ */

/* Table elements come from the top allocator; growth takes a new block and
 * copies (the old block is not reused: tables rarely grow). */
#define DEFINE_TABLE(kind, elem_t, null_value)                                                   \
    void wasm_rt_allocate_##kind##_table(wasm_rt_##kind##_table_t *table, uint32_t elements,      \
                                         uint32_t max_elements) {                                 \
        table->data = 0;                                                                         \
        if (elements) {                                                                          \
            table->data = lc_rt_alloc_top((uint64_t)elements * sizeof(elem_t), 16);               \
            if (!table->data) {                                                                  \
                lc_fail(LC_STATUS_MEMORY, 0);                                                    \
            }                                                                                    \
        }                                                                                        \
        for (uint32_t i = 0; i < elements; i++) {                                                \
            table->data[i] = null_value;                                                         \
        }                                                                                        \
        table->size = elements;                                                                  \
        table->max_size = max_elements;                                                          \
    }                                                                                            \
    void wasm_rt_free_##kind##_table(wasm_rt_##kind##_table_t *table) { (void)table; }            \
    uint32_t wasm_rt_grow_##kind##_table(wasm_rt_##kind##_table_t *table, uint32_t delta,         \
                                         elem_t init) {                                          \
        uint32_t old = table->size;                                                              \
        if (delta > table->max_size - old || table->max_size < old) {                            \
            return UINT32_MAX;                                                                   \
        }                                                                                        \
        if (delta == 0) {                                                                        \
            return old;                                                                          \
        }                                                                                        \
        uint64_t n = (uint64_t)old + delta;                                                      \
        elem_t *data = lc_rt_alloc_top(n * sizeof(elem_t), 16);                                  \
        if (!data) {                                                                             \
            g_grow_refused = 1;                                                                  \
            return UINT32_MAX;                                                                   \
        }                                                                                        \
        if (old) {                                                                               \
            memcpy(data, table->data, (uint64_t)old * sizeof(elem_t));                            \
        }                                                                                        \
        for (uint64_t i = old; i < n; i++) {                                                     \
            data[i] = init;                                                                      \
        }                                                                                        \
        table->data = data;                                                                      \
        table->size = (uint32_t)n;                                                               \
        return old;                                                                              \
    }

DEFINE_TABLE(funcref, wasm_rt_funcref_t, wasm_rt_funcref_null_value)
DEFINE_TABLE(externref, wasm_rt_externref_t, wasm_rt_externref_null_value)
