/* Freestanding <stdlib.h>: only abort(); there is no malloc in the guest
 * (wasm memory and tables come from lc_heap, see wasm_rt.c). */
#ifndef LC_STDLIB_H
#define LC_STDLIB_H
#include <stddef.h>
__attribute__((noreturn)) void abort(void);
#endif
