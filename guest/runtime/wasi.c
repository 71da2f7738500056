/*
 * The WASI preview1 subset that wasi-libc plugins import (vmm/contract.py
 * WASI_P1_GRANTS): stdout/stderr become log lines, clocks and random come
 * from the host (each refused unless granted), args and environ are empty,
 * proc_exit ends the event with LC_STATUS_EXIT. Nothing else of WASI exists.
 */
#include <string.h>

#include "lc_imports.h"
#include "lc_rt.h"

#define WASI_ESUCCESS 0u
#define WASI_EBADF 8u
#define WASI_EINVAL 28u

#define LOG_LEVEL_STDOUT 2u /* info */
#define LOG_LEVEL_STDERR 3u /* warn */

/* Log each complete line of scratch[0, *len) and keep the unfinished tail. */
static void log_lines(uint32_t level, uint32_t *len, int flush) {
    uint32_t start = 0;
    for (uint32_t i = 0; i < *len; i++) {
        if (lc_rt_scratch[i] == '\n') {
            lc_rt_host(LC_HOST_LOG, level, lc_rt_scratch + start, i - start, 0, 0, 0, 0, 0);
            start = i + 1;
        }
    }
    if (flush && start < *len) {
        lc_rt_host(LC_HOST_LOG, level, lc_rt_scratch + start, *len - start, 0, 0, 0, 0, 0);
        start = *len;
    }
    memmove(lc_rt_scratch, lc_rt_scratch + start, *len - start);
    *len -= start;
}

/* fd_write(fd, iovs: *ciovec, iovs_len, nwritten: *u32) -> errno. One log
 * line per '\n'; a trailing partial line is logged at the end of the call
 * (wasi-libc flushes whole lines, so this rarely splits a line). */
uint32_t lc_wasi_fd_write(uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nwritten) {
    const uint8_t *vec = lc_rt_guest(iovs, (uint64_t)iovs_len * 8u);
    uint8_t *nw = lc_rt_guest(nwritten, 4);
    if (fd != 1 && fd != 2) {
        return WASI_EBADF;
    }
    uint32_t level = fd == 1 ? LOG_LEVEL_STDOUT : LOG_LEVEL_STDERR;
    uint64_t total = 0;
    uint32_t have = 0;
    for (uint32_t i = 0; i < iovs_len; i++) {
        uint32_t buf = lc_rt_ld32(vec + 8u * i), blen = lc_rt_ld32(vec + 8u * i + 4);
        const uint8_t *src = lc_rt_guest(buf, blen);
        total += blen;
        while (blen) {
            uint32_t n = LC_RT_SCRATCH_BYTES - have;
            if (n > blen) {
                n = blen;
            }
            memcpy(lc_rt_scratch + have, src, n);
            have += n;
            src += n;
            blen -= n;
            log_lines(level, &have, have == LC_RT_SCRATCH_BYTES);
        }
    }
    log_lines(level, &have, 1);
    if (total > UINT32_MAX) {
        return WASI_EINVAL;
    }
    lc_rt_st32(lc_rt_guest(nwritten, 4), (uint32_t)total);
    (void)nw;
    return WASI_ESUCCESS;
}

/* clock ids: 0 realtime, 1 monotonic; the CPU-time clocks are not offered. */
uint32_t lc_wasi_clock_time_get(uint32_t id, uint64_t precision, uint32_t out) {
    (void)precision;
    (void)lc_rt_guest(out, 8);
    uint64_t t;
    if (id == 0) {
        t = lc_rt_host(LC_HOST_WALL_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
    } else if (id == 1) {
        t = lc_rt_host(LC_HOST_MONOTONIC_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
    } else {
        return WASI_EINVAL;
    }
    lc_rt_st64(lc_rt_guest(out, 8), t);
    return WASI_ESUCCESS;
}

/* Needs the clock grant like clock_time_get: the host call checks it. */
uint32_t lc_wasi_clock_res_get(uint32_t id, uint32_t out) {
    (void)lc_rt_guest(out, 8);
    if (id > 1) {
        return WASI_EINVAL;
    }
    (void)lc_rt_host(LC_HOST_MONOTONIC_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
    lc_rt_st64(lc_rt_guest(out, 8), 1);
    return WASI_ESUCCESS;
}

uint32_t lc_wasi_random_get(uint32_t buf, uint32_t len) {
    (void)lc_rt_guest(buf, len);
    uint32_t done = 0;
    while (done < len) {
        uint32_t n = len - done > 4096u ? 4096u : len - done;
        uint32_t got = 0;
        lc_rt_host(LC_HOST_RANDOM_BYTES, n, 0, 0, 0, 0, lc_rt_scratch, n, &got);
        if (got != n) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        memcpy(lc_rt_guest(buf + done, n), lc_rt_scratch, n);
        done += n;
    }
    return WASI_ESUCCESS;
}

/* No arguments and no environment: counts and sizes are zero. */
uint32_t lc_wasi_args_sizes_get(uint32_t argc_out, uint32_t size_out) {
    uint8_t *a = lc_rt_guest(argc_out, 4);
    uint8_t *b = lc_rt_guest(size_out, 4);
    lc_rt_st32(a, 0);
    lc_rt_st32(b, 0);
    return WASI_ESUCCESS;
}

uint32_t lc_wasi_args_get(uint32_t argv, uint32_t buf) {
    (void)argv;
    (void)buf;
    return WASI_ESUCCESS;
}

uint32_t lc_wasi_environ_sizes_get(uint32_t count_out, uint32_t size_out) {
    return lc_wasi_args_sizes_get(count_out, size_out);
}

uint32_t lc_wasi_environ_get(uint32_t environ, uint32_t buf) {
    return lc_wasi_args_get(environ, buf);
}

void lc_wasi_proc_exit(uint32_t code) {
    lc_fail(LC_STATUS_EXIT, code);
}
