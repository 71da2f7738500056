/*
 * The few C library functions the guest needs: the memory functions (called
 * by wasm2c output and emitted by the compiler for struct copies), the math
 * functions behind <math.h> (only reached if the compiler does not inline the
 * builtin), abort(), and setjmp/longjmp. Written with `rep movsb/stosb` and
 * SSE4.1 `round*` so the compiler cannot turn them back into calls to
 * themselves, and so they run natively at CPL3 under PVM.
 */
#include <stddef.h>
#include <stdint.h>

#include "lc_rt.h"

void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    void *d = dst;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    return dst;
}

/* Overlapping copies (memory.copy) go backwards when dst is above src. */
void *memmove(void *dst, const void *src, size_t n) {
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d <= s || d - s >= n) {
        return memcpy(dst, src, n);
    }
    if (n == 0) {
        return dst;
    }
    void *dl = (uint8_t *)dst + n - 1;
    const void *sl = (const uint8_t *)src + n - 1;
    __asm__ volatile("std\n\trep movsb\n\tcld" : "+D"(dl), "+S"(sl), "+c"(n) : : "memory");
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    void *d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) {
            return x[i] < y[i] ? -1 : 1;
        }
    }
    return 0;
}

size_t strlen(const char *s) {
    size_t n = 0;
    while (s[n]) {
        n++;
    }
    return n;
}

/* A failed assertion or an impossible state inside generated code. */
void abort(void) {
    lc_fail(LC_STATUS_TRAP, LC_TRAP_OTHER);
}

/* ---- math: roundsd/roundss immediates: 1 floor, 2 ceil, 3 trunc, 4 use
 * MXCSR (nearest-even), +8 suppress the precision exception. ------------ */
#define ROUND_D(name, imm)                                                  \
    double(name)(double x) {                                                \
        __asm__("roundsd %2, %1, %0" : "=x"(x) : "x"(x), "i"(imm));        \
        return x;                                                           \
    }
#define ROUND_F(name, imm)                                                  \
    float(name)(float x) {                                                  \
        __asm__("roundss %2, %1, %0" : "=x"(x) : "x"(x), "i"(imm));        \
        return x;                                                           \
    }
ROUND_D(floor, 9)
ROUND_F(floorf, 9)
ROUND_D(ceil, 10)
ROUND_F(ceilf, 10)
ROUND_D(trunc, 11)
ROUND_F(truncf, 11)
ROUND_D(nearbyint, 12)
ROUND_F(nearbyintf, 12)
ROUND_D(rint, 4)
ROUND_F(rintf, 4)

double(sqrt)(double x) {
    __asm__("sqrtsd %1, %0" : "=x"(x) : "x"(x));
    return x;
}
float(sqrtf)(float x) {
    __asm__("sqrtss %1, %0" : "=x"(x) : "x"(x));
    return x;
}
double(fabs)(double x) {
    uint64_t u;
    __builtin_memcpy(&u, &x, 8);
    u &= ~(1ull << 63);
    __builtin_memcpy(&x, &u, 8);
    return x;
}
float(fabsf)(float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    u &= ~(1u << 31);
    __builtin_memcpy(&x, &u, 4);
    return x;
}
double(copysign)(double x, double y) {
    uint64_t a, b;
    __builtin_memcpy(&a, &x, 8);
    __builtin_memcpy(&b, &y, 8);
    a = (a & ~(1ull << 63)) | (b & (1ull << 63));
    __builtin_memcpy(&x, &a, 8);
    return x;
}
float(copysignf)(float x, float y) {
    uint32_t a, b;
    __builtin_memcpy(&a, &x, 4);
    __builtin_memcpy(&b, &y, 4);
    a = (a & ~(1u << 31)) | (b & (1u << 31));
    __builtin_memcpy(&x, &a, 4);
    return x;
}

/* ---- setjmp/longjmp: callee-saved registers, stack pointer, return address
 * (System V x86-64). No signal mask, no shadow stack. Weak: guest/boot has
 * its own (entry.S) and the image uses that one; the native harness uses
 * these. --------------------------------------------------------------- */
__asm__(
    ".text\n"
    ".weak lc_setjmp\n"
    ".type lc_setjmp,@function\n"
    "lc_setjmp:\n"
    "  movq %rbx, 0(%rdi)\n"
    "  movq %rbp, 8(%rdi)\n"
    "  movq %r12, 16(%rdi)\n"
    "  movq %r13, 24(%rdi)\n"
    "  movq %r14, 32(%rdi)\n"
    "  movq %r15, 40(%rdi)\n"
    "  leaq 8(%rsp), %rdx\n"
    "  movq %rdx, 48(%rdi)\n"
    "  movq (%rsp), %rdx\n"
    "  movq %rdx, 56(%rdi)\n"
    "  xorl %eax, %eax\n"
    "  ret\n"
    ".size lc_setjmp, .-lc_setjmp\n"
    ".weak lc_longjmp\n"
    ".type lc_longjmp,@function\n"
    "lc_longjmp:\n"
    "  movl %esi, %eax\n"
    "  testl %eax, %eax\n"
    "  jnz 1f\n"
    "  incl %eax\n"
    "1:\n"
    "  movq 0(%rdi), %rbx\n"
    "  movq 8(%rdi), %rbp\n"
    "  movq 16(%rdi), %r12\n"
    "  movq 24(%rdi), %r13\n"
    "  movq 32(%rdi), %r14\n"
    "  movq 40(%rdi), %r15\n"
    "  movq 48(%rdi), %rsp\n"
    "  jmpq *56(%rdi)\n"
    ".size lc_longjmp, .-lc_longjmp\n");
