/*
 * The WASI preview1 subset that wasi-libc plugins import (vmm/contract.py
 * WASI_P1_GRANTS): stdout/stderr become log lines, clocks and random come
 * from the host (each refused unless granted), args and environ are empty,
 * proc_exit ends the event with LC_STATUS_EXIT. Nothing else of WASI exists.
 *
 * Grant first: a granted function's first host call (which the host answers
 * DENIED unless granted) comes before any of its arguments is looked at, so
 * an ungranted call is denied whatever it passes, as in the wasmtime tier.
 */
#include <string.h>

#include "lc_imports.h"
#include "lc_rt.h"
#include "wasip2_rt.h"

#define WASI_ESUCCESS 0u
#define WASI_EBADF 8u
#define WASI_EINVAL 28u

#define WASI_IOV_MAX 1024u
#define LINE_MAX_BYTES 4096u /* as the wasmtime tier's MAX_PENDING_LINE */

/* stdout (1) and stderr (2) become log lines: INFO and WARN, as in the
 * wasmtime tier. Partial lines wait here until a newline, 4 KiB, or the end
 * of the hook (lc_wasi_flush_output, called by contract.c). */
static uint8_t g_line[2][LINE_MAX_BYTES];
static uint32_t g_line_len[2];
/* Whether the host answered the `log` grant check in this event (the host is
 * the authority; lc_wasi_event_begin forgets the answer). */
static int g_log_checked;

void lc_wasi_event_begin(void) {
    g_log_checked = 0;
    lc_wasip2_event_begin(); /* WASI 0.2 (wasip2.c) forgets its answers too */
}

/* Ask the host once per event whether `log` is granted: a LOG host call that
 * logs nothing. Refused, it ends the event with LC_STATUS_DENIED. */
static void check_log_grant(void) {
    if (!g_log_checked) {
        lc_rt_host(LC_HOST_LOG, LC_LOG_GRANT_CHECK, 0, 0, 0, 0, 0, 0, 0);
        g_log_checked = 1;
    }
}

static void emit_line(uint32_t fd) {
    uint32_t i = fd - 1;
    lc_rt_host(LC_HOST_LOG, fd == 1 ? LC_LOG_INFO : LC_LOG_WARN, g_line[i], g_line_len[i], 0, 0, 0, 0, 0);
    g_line_len[i] = 0;
}

void lc_wasi_flush_output(void) {
    for (uint32_t fd = 1; fd <= 2; fd++) {
        if (g_line_len[fd - 1]) {
            emit_line(fd);
        }
    }
}

/* Shared with WASI 0.2's stdout/stderr output-streams (wasip2.c). */
void lc_wasi_output(uint32_t fd, const uint8_t *src, uint32_t n) {
    uint8_t *line = g_line[fd - 1];
    uint32_t *len = &g_line_len[fd - 1];
    for (uint32_t j = 0; j < n; j++) {
        if (src[j] == '\n') {
            emit_line(fd);
            continue;
        }
        line[(*len)++] = src[j];
        if (*len == LINE_MAX_BYTES) {
            emit_line(fd);
        }
    }
}

/* fd_write(fd, iovs: *ciovec, iovs_len, nwritten: *u32) -> errno. */
uint32_t lc_wasi_fd_write(uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nwritten) {
    check_log_grant(); /* before the fd, the iovecs, anything */
    if (fd != 1 && fd != 2) {
        return WASI_EBADF;
    }
    if (iovs_len > WASI_IOV_MAX) {
        return WASI_EINVAL;
    }
    const uint8_t *vec = lc_rt_guest(iovs, (uint64_t)iovs_len * 8u);
    (void)lc_rt_guest(nwritten, 4);
    uint64_t total = 0;
    for (uint32_t i = 0; i < iovs_len; i++) {
        uint32_t buf = lc_rt_ld32(vec + 8u * i), blen = lc_rt_ld32(vec + 8u * i + 4);
        lc_wasi_output(fd, lc_rt_guest(buf, blen), blen);
        total += blen;
    }
    if (total > UINT32_MAX) {
        return WASI_EINVAL;
    }
    lc_rt_st32(lc_rt_guest(nwritten, 4), (uint32_t)total);
    return WASI_ESUCCESS;
}

/* clock ids: 0 realtime, 1 monotonic, 2/3 process/thread CPU time
 * (approximated by the monotonic clock, as in the wasmtime tier). Unknown
 * ids still need the grant (the host call checks it), then EINVAL. */
uint32_t lc_wasi_clock_time_get(uint32_t id, uint64_t precision, uint32_t out) {
    (void)precision;
    uint64_t t = lc_rt_host(id == 0 ? LC_HOST_WALL_NOW : LC_HOST_MONOTONIC_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
    if (id > 3) {
        return WASI_EINVAL;
    }
    lc_rt_st64(lc_rt_guest(out, 8), t);
    return WASI_ESUCCESS;
}

/* Needs the clock grant like clock_time_get: the host call checks it. */
uint32_t lc_wasi_clock_res_get(uint32_t id, uint32_t out) {
    (void)lc_rt_host(LC_HOST_MONOTONIC_NOW, 0, 0, 0, 0, 0, 0, 0, 0);
    if (id > 3) {
        return WASI_EINVAL;
    }
    lc_rt_st64(lc_rt_guest(out, 8), 1000);
    return WASI_ESUCCESS;
}

/* The first host call (made even for len 0) checks the grant before `buf` is
 * looked at; the whole buffer is checked before any of it is written. */
uint32_t lc_wasi_random_get(uint32_t buf, uint32_t len) {
    uint32_t done = 0;
    do {
        uint32_t n = len - done > 4096u ? 4096u : len - done;
        uint32_t got = 0;
        lc_rt_host(LC_HOST_RANDOM_BYTES, n, 0, 0, 0, 0, lc_rt_scratch, n, &got);
        if (got != n) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        if (done == 0) {
            (void)lc_rt_guest(buf, len);
        }
        if (n) {
            memcpy(lc_rt_guest(buf + done, n), lc_rt_scratch, n);
        }
        done += n;
    } while (done < len);
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
