/*
 * The implementations behind every import a plugin may have: the contract
 * (imports.c) and the WASI preview1 subset (wasi.c). compile.py maps each
 * (module, name) to one of these and generates a forwarding function with
 * wasm2c's mangled name; the core signature is checked before that.
 */
#ifndef LC_IMPORTS_H
#define LC_IMPORTS_H

#include <stdint.h>

/* lightcell:filter/<iface>@0.1.0 */
void lc_imp_log_log(uint32_t level, uint32_t ptr, uint32_t len);
uint64_t lc_imp_clock_wall_now(void);
uint64_t lc_imp_clock_monotonic_now(void);
uint64_t lc_imp_random_get_u64(void);
void lc_imp_kv_get(uint32_t kptr, uint32_t klen, uint32_t retptr);
void lc_imp_kv_set(uint32_t kptr, uint32_t klen, uint32_t vptr, uint32_t vlen);
void lc_imp_kv_delete(uint32_t kptr, uint32_t klen);
uint64_t lc_imp_kv_increment(uint32_t kptr, uint32_t klen, uint64_t delta);
void lc_imp_metadata_set(uint32_t kptr, uint32_t klen, uint32_t vptr, uint32_t vlen);
void lc_imp_egress_send_datagram(uint32_t hptr, uint32_t hlen, uint32_t port, uint32_t pptr,
                                 uint32_t plen, uint32_t retptr);
void lc_imp_connection_attributes(uint32_t retptr);

/* wasi_snapshot_preview1 (the subset in vmm/contract.py WASI_P1_GRANTS) */
uint32_t lc_wasi_fd_write(uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nwritten);
uint32_t lc_wasi_clock_time_get(uint32_t id, uint64_t precision, uint32_t out);
uint32_t lc_wasi_clock_res_get(uint32_t id, uint32_t out);
uint32_t lc_wasi_random_get(uint32_t buf, uint32_t len);
uint32_t lc_wasi_args_sizes_get(uint32_t argc_out, uint32_t size_out);
uint32_t lc_wasi_args_get(uint32_t argv, uint32_t buf);
uint32_t lc_wasi_environ_sizes_get(uint32_t count_out, uint32_t size_out);
uint32_t lc_wasi_environ_get(uint32_t environ, uint32_t buf);
__attribute__((noreturn)) void lc_wasi_proc_exit(uint32_t code);
/* Log partial stdout/stderr lines at the end of a hook. */
void lc_wasi_flush_output(void);
/* Start of an event: forget what the host answered about grants. */
void lc_wasi_event_begin(void);

#endif
