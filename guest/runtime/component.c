/*
 * The canonical-ABI contexts of a component (lc_canon.h), for the glue
 * vmm/microvm/component_glue.py generates. A component may lower imports
 * with another instance's memory and realloc than its exports lift with;
 * the runtime's import implementations (imports.c) use lc_rt_memory and
 * lc_bind_realloc, so the glue makes the lowering's pair current around each
 * call. Imports never nest (an import can reach wasm only through realloc,
 * where imports are forbidden), so one saved pair suffices.
 */
#include "lc_canon.h"
#include "lc_rt.h"

static const struct lc_canon *g_default;
static const struct lc_canon *g_current;
static const struct lc_canon *g_saved;
static wasm_rt_memory_t *g_saved_memory;
static int g_entered;

uint8_t *lc_canon_guest(const struct lc_canon *c, uint32_t ptr, uint64_t len) {
    wasm_rt_memory_t *mem = c ? c->memory : 0;
    if (!mem || len > mem->size || (uint64_t)ptr > mem->size - len) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_POINTER);
    }
    return mem->data + ptr;
}

uint32_t lc_canon_alloc(const struct lc_canon *c, uint32_t size, uint32_t align) {
    if (!c || !c->realloc) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
    }
    int leave = lc_rt_may_leave;
    lc_rt_may_leave = 0;
    uint32_t ptr = c->realloc(c->instance, 0, 0, align, size);
    lc_rt_may_leave = leave;
    if (align && (ptr & (align - 1u))) {
        lc_fail(LC_STATUS_ABI, LC_ABI_UNALIGNED);
    }
    (void)lc_canon_guest(c, ptr, size);
    return ptr;
}

void lc_canon_unsupported(void) {
    lc_fail(LC_STATUS_DENIED, 0);
}

void lc_canon_set_default(const struct lc_canon *c) {
    g_default = c;
    g_current = c;
    lc_rt_memory = c->memory;
}

void lc_canon_enter(const struct lc_canon *c) {
    if (g_entered) {
        lc_fail(LC_STATUS_ABI, LC_ABI_NO_LEAVE);
    }
    g_entered = 1;
    g_saved = g_current;
    g_saved_memory = lc_rt_memory;
    g_current = c;
    lc_rt_memory = c->memory;
}

void lc_canon_leave(void) {
    g_entered = 0;
    g_current = g_saved;
    lc_rt_memory = g_saved_memory;
}

uint32_t lc_canon_realloc_current(uint32_t old_ptr, uint32_t old_size, uint32_t align, uint32_t new_size) {
    const struct lc_canon *c = g_current ? g_current : g_default;
    if (!c || !c->realloc) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_REQUEST);
    }
    return c->realloc(c->instance, old_ptr, old_size, align, new_size);
}

/* ---- resources the component defines (lc_canon.h lc_res_*) ------------- */

#define LC_RES_MAX 4096u

static struct {
    uint32_t type; /* the glue's type id + 1; 0: free */
    uint32_t rep;
} g_res[LC_RES_MAX];

uint32_t lc_res_new(uint32_t type, uint32_t rep) {
    for (uint32_t i = 0; i < LC_RES_MAX; i++) {
        if (g_res[i].type == 0) {
            g_res[i].type = type + 1u;
            g_res[i].rep = rep;
            return i + 1u;
        }
    }
    lc_fail(LC_STATUS_TRAP, LC_TRAP_OTHER); /* wasmtime traps on a full table too */
}

static uint32_t res_index(uint32_t type, uint32_t handle) {
    if (handle == 0 || handle > LC_RES_MAX || g_res[handle - 1u].type != type + 1u) {
        lc_fail(LC_STATUS_TRAP, LC_TRAP_OTHER);
    }
    return handle - 1u;
}

uint32_t lc_res_rep(uint32_t type, uint32_t handle) {
    return g_res[res_index(type, handle)].rep;
}

uint32_t lc_res_take(uint32_t type, uint32_t handle) {
    uint32_t i = res_index(type, handle);
    g_res[i].type = 0;
    return g_res[i].rep;
}
