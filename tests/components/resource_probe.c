/*
 * resource_probe: a tcp-filter plugin whose component also exports an
 * interface with a resource (`thing`), so the component defines a resource
 * type of its own and its core module calls canon resource.new/rep/drop
 * (imported as [export]lightcell:res-probe/things), for test_component_microvm.py.
 * Each chunk's first byte picks what to do; the reply is "<dtors run> <rep the
 * last destructor got>", or the rep for 'r':
 *   n  resource.new(100 + things made so far)
 *   r  resource.rep of the newest handle
 *   d  resource.drop of the newest handle (its destructor runs)
 *   b  resource.rep of handle 9999 (never made: a trap)
 *   o  resource.rep of the newest `thing` handle as an `other` (a trap: its type is thing)
 */
#include "lightcell.h"

#define RES(name) __attribute__((import_module("[export]lightcell:res-probe/things"), import_name(name)))
RES("[resource-new]thing") extern int32_t thing_new(int32_t rep);
RES("[resource-rep]thing") extern int32_t thing_rep(int32_t handle);
RES("[resource-drop]thing") extern void thing_drop(int32_t handle);
RES("[resource-rep]other") extern int32_t other_rep(int32_t handle);

static uint32_t dtors, last_dtor, made;
static int32_t newest;
static uint8_t out[32];

__attribute__((export_name("lightcell:res-probe/things#[dtor]thing"))) void thing_dtor(int32_t rep) {
    dtors++;
    last_dtor = (uint32_t)rep;
}

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    (void)config;
}

void lc_on_close(void) {}

lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos) {
    (void)dir;
    (void)eos;
    if (data.len == 0) return lc_pass();
    size_t n = 0;
    switch (data.ptr[0]) {
    case 'n': newest = thing_new((int32_t)(100 + made++)); break;
    case 'r': return lc_replace(out, (size_t)lc_fmt_i64(out, thing_rep(newest)));
    case 'd': thing_drop(newest); break;
    case 'b': (void)thing_rep(9999); break;
    case 'o': (void)other_rep(newest); break;
    default: return lc_pass();
    }
    n = (size_t)lc_fmt_i64(out, dtors);
    out[n++] = ' ';
    n += (size_t)lc_fmt_i64(out + n, last_dtor);
    return lc_replace(out, n);
}
