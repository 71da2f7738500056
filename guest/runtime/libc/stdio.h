/* Freestanding <stdio.h>: nothing; wasm2c includes it only under
 * configurations this runtime does not use (segue sanity checks). */
#ifndef LC_STDIO_H
#define LC_STDIO_H
#endif
