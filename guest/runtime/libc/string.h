/* Freestanding <string.h>: the memory functions wasm2c output and the
 * compiler's own lowering (struct copies) need. Implemented in lc_libc.c. */
#ifndef LC_STRING_H
#define LC_STRING_H
#include <stddef.h>
void *memcpy(void *restrict dst, const void *restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
#endif
