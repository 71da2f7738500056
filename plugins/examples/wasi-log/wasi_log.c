/*
 * wasi-log: a plugin written against ordinary libc (wasi-libc), to exercise
 * the WASI preview1 subset. For every chunk it formats one line with
 * snprintf and clock_gettime and writes it to stdout, then passes the chunk:
 *   "wasi-log: <listener> <read|write> <len> bytes eos=<0|1> t=<ns>\n"
 * (t: CLOCK_MONOTONIC nanoseconds). Output is written with write(1, ...)
 * rather than printf so the only stdio import is fd_write (printf's stdout
 * also probes the descriptor with fd_fdstat_get, outside the subset).
 * It is a bare core module importing wasi_snapshot_preview1 (fd_write needs
 * grant `log`, clock_time_get grant `clock`), not a component.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, write under -std=c11 */
#define LC_USE_LIBC_MALLOC
#include "lightcell.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char listener_name[64];

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)config;
    size_t n = listener.len < sizeof listener_name - 1 ? listener.len : sizeof listener_name - 1;
    memcpy(listener_name, listener.ptr, n);
    listener_name[n] = '\0';
}

lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    char line[160];
    int n = snprintf(line, sizeof line, "wasi-log: %s %s %zu bytes eos=%d t=%lld\n", listener_name,
                     dir == LC_READ ? "read" : "write", data.len, eos ? 1 : 0, ns);
    if (n > 0) (void)write(1, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    return lc_pass();
}

void lc_on_close(void) {}
