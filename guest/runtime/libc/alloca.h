#ifndef LC_ALLOCA_H
#define LC_ALLOCA_H
#define alloca(n) __builtin_alloca(n)
#endif
