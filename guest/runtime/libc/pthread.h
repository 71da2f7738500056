/* Freestanding <pthread.h>: wasm-rt.h names a mutex type for shared
 * memories; the guest is single-threaded and refuses shared memories. */
#ifndef LC_PTHREAD_H
#define LC_PTHREAD_H
typedef int pthread_mutex_t;
#endif
