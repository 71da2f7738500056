/* Freestanding <setjmp.h>: the runtime's own setjmp/longjmp (lc_setjmp.c),
 * callee-saved registers only (no signal mask: the guest has no signals). */
#ifndef LC_SETJMP_H
#define LC_SETJMP_H
/* rbx rbp r12 r13 r14 r15 rsp rip */
typedef unsigned long jmp_buf[8];
typedef unsigned long sigjmp_buf[8];
__attribute__((returns_twice)) int lc_setjmp(unsigned long *env);
__attribute__((noreturn)) void lc_longjmp(unsigned long *env, int val);
#define setjmp(env) lc_setjmp(env)
#define longjmp(env, v) lc_longjmp(env, v)
#define sigsetjmp(env, savemask) lc_setjmp(env)
#define siglongjmp(env, v) lc_longjmp(env, v)
#endif
