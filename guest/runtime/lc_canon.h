/*
 * The canonical-ABI context of one `canon lower` (or lift) in a component:
 * the memory and realloc the lowering's options name. Generated component
 * glue (vmm/microvm/component_glue.py) passes one to every import
 * implementation that is not a lightcell:filter capability, in particular
 * the WASI 0.2 functions (wasip2.h), so pointers are checked against the
 * right instance's memory and results allocated with its realloc.
 *
 * WASI 0.2 naming (shared with wasip2.h, kept stable once used):
 *   import instance "wasi:<pkg>/<iface>@<ver>", function F  ->
 *     lc_wasip2_<pkg>_<iface>_<F'>(struct lc_canon *c, <flat core params>)
 *   F' : "[method]R.m" -> method_R_m, "[static]R.m" -> static_R_m,
 *        "[constructor]R" -> constructor_R, plain names as they are;
 *        every '-' and '.' becomes '_'.
 *   resource.drop of an imported resource R of that interface ->
 *     void lc_wasip2_<pkg>_<iface>_resource_drop_<R'>(struct lc_canon *c, uint32_t handle)
 *   (c has no memory/realloc there).
 * Core parameters are the canonical ABI's flattening (uint32_t, uint64_t,
 * float, double), a trailing return pointer when the results do not flatten
 * to one value, the one flat result as the C return value otherwise.
 * The glue declares nothing itself: it calls every such function that
 * wasip2.h declares, and for any other WASI import it generates a stub that
 * fails the event with LC_STATUS_DENIED (lc_canon_unsupported).
 */
#ifndef LC_CANON_H
#define LC_CANON_H

#include <stdint.h>

/* struct lc_canon { memory; realloc(instance, old, old_size, align, new_size);
 * instance; } is wasip2.h's (issue 9b), shared as is. */
#include "wasip2.h"

/* The host address of [ptr, ptr+len) in c's memory, or the event ends with
 * LC_STATUS_ABI / LC_ABI_BAD_POINTER (overflow-safe; also without memory). */
uint8_t *lc_canon_guest(const struct lc_canon *c, uint32_t ptr, uint64_t len);
/* Allocate with c's realloc (imports forbidden meanwhile), range-checked;
 * a missing realloc is an ABI fault. */
uint32_t lc_canon_alloc(const struct lc_canon *c, uint32_t size, uint32_t align);
/* A WASI function the guest does not implement: ends the event (DENIED). */
__attribute__((noreturn)) void lc_canon_unsupported(void);

/* ---- for the generated glue only (component.c) ------------------------ */
/* The context of the component's exports (their canon lift): the memory and
 * realloc the runtime (contract.c, http.c, imports.c) uses between imports. */
void lc_canon_set_default(const struct lc_canon *c);
/* Around a lightcell:filter import's implementation: make the lowering's
 * memory and realloc current (lc_rt_memory, lc_bind_realloc), then back. */
void lc_canon_enter(const struct lc_canon *c);
void lc_canon_leave(void);
/* cabi_realloc of the current context (lc_bind_realloc in a component). */
uint32_t lc_canon_realloc_current(uint32_t old_ptr, uint32_t old_size, uint32_t align, uint32_t new_size);

/* Resources the component defines (canon resource.new/rep/drop): one handle
 * table for the VM (a restore wipes it), each entry tagged with its type (the
 * glue's id of the resource type). A handle that is 0, out of range, free or
 * of another type traps (LC_STATUS_TRAP), as the canonical ABI requires. */
uint32_t lc_res_new(uint32_t type, uint32_t rep);
uint32_t lc_res_rep(uint32_t type, uint32_t handle);
/* Frees the handle and gives its rep (the glue then runs the destructor). */
uint32_t lc_res_take(uint32_t type, uint32_t handle);

#endif
