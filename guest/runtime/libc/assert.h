/* Freestanding <assert.h>: a failed assertion in generated code is a trap. */
#ifndef LC_ASSERT_H
#define LC_ASSERT_H
__attribute__((noreturn)) void abort(void);
#define assert(x) ((x) ? (void)0 : abort())
#ifndef static_assert
#define static_assert _Static_assert
#endif
#endif
