/*
 * wasip2_probe: a tcp-filter plugin that calls WASI 0.2 directly at the
 * canonical-ABI level (one core module importing `wasi:*@0.2.9` functions by
 * their component-model names), for the guest's WASI 0.2 (guest/runtime/
 * wasip2*.c) and the wasmtime tier's to be compared on (test_wasip2.py).
 *
 * on-open writes "hello from wasip2\n" and an unfinished "open-partial" to
 * stdout; with config "seed=N" it first reads N bytes of get-random-bytes in
 * pieces of at most 256, as componentize-py's start-up reseed does (chunk
 * 's' then answers "s=1" if they were all zero, else "s=0"). Each non-empty chunk's first byte picks what to call; the
 * replacement says what came back:
 *   w  stdout "w1\nw" (write) + "2" (blocking-write-and-flush), stderr "e1\n" .. "w=ok"
 *   c  monotonic now x2, subscribe-duration(0) + block, wall-clock now .. "c=ok"
 *   r  get-random-bytes(16) .................. "r=16"
 *   u  get-random-u64 ........................ "u=ok"
 *   f  preopens.get-directories .............. "f=<count>"
 *   e  environment, arguments, initial-cwd ... "e=<env> <args> <cwd tag>"
 *   i  stdin read ............................ "i=closed" / "i=other"
 *   x  exit(err) (the connection faults)
 *   h  output-stream.write on handle 4242 (a bad handle: the connection faults)
 *   n  instance-network (needs `egress`) ..... "n=ok"
 *   p  poll on [] (an empty list: the connection faults)
 *   t  terminal-stdout ....................... "t=<option tag>"
 *   g/G  an unbound UDP socket sends "dgram" to 127.0.0.1:9125 (g) or :9999 (G)
 *      (needs `egress`; the allow list decides) .. "g=ok" / "g=err<error-code>"
 * anything else passes.
 */
#include "lightcell.h"

#define WASI(iface, name) __attribute__((import_module("wasi:" iface "@0.2.9"), import_name(name)))

WASI("cli/stdout", "get-stdout") extern int32_t wasi_get_stdout(void);
WASI("cli/stderr", "get-stderr") extern int32_t wasi_get_stderr(void);
WASI("cli/stdin", "get-stdin") extern int32_t wasi_get_stdin(void);
WASI("io/streams", "[method]output-stream.blocking-write-and-flush")
extern void wasi_write_flush(int32_t self, int32_t ptr, int32_t len, int32_t ret);
WASI("io/streams", "[method]output-stream.write")
extern void wasi_write(int32_t self, int32_t ptr, int32_t len, int32_t ret);
WASI("io/streams", "[method]input-stream.read") extern void wasi_read(int32_t self, int64_t len, int32_t ret);
WASI("io/streams", "[resource-drop]output-stream") extern void wasi_drop_output(int32_t self);
WASI("io/streams", "[resource-drop]input-stream") extern void wasi_drop_input(int32_t self);
WASI("io/poll", "[method]pollable.block") extern void wasi_block(int32_t self);
WASI("io/poll", "poll") extern void wasi_poll(int32_t ptr, int32_t len, int32_t ret);
WASI("io/poll", "[resource-drop]pollable") extern void wasi_drop_pollable(int32_t self);
WASI("clocks/monotonic-clock", "now") extern int64_t wasi_mono_now(void);
WASI("clocks/monotonic-clock", "subscribe-duration") extern int32_t wasi_subscribe_duration(int64_t d);
WASI("clocks/wall-clock", "now") extern void wasi_wall_now(int32_t ret);
WASI("random/random", "get-random-bytes") extern void wasi_random_bytes(int64_t len, int32_t ret);
WASI("random/random", "get-random-u64") extern int64_t wasi_random_u64(void);
WASI("filesystem/preopens", "get-directories") extern void wasi_get_directories(int32_t ret);
WASI("cli/environment", "get-environment") extern void wasi_get_environment(int32_t ret);
WASI("cli/environment", "get-arguments") extern void wasi_get_arguments(int32_t ret);
WASI("cli/environment", "initial-cwd") extern void wasi_initial_cwd(int32_t ret);
WASI("cli/exit", "exit") extern void wasi_exit(int32_t status);
WASI("sockets/instance-network", "instance-network") extern int32_t wasi_instance_network(void);
WASI("sockets/network", "[resource-drop]network") extern void wasi_drop_network(int32_t self);
WASI("cli/terminal-stdout", "get-terminal-stdout") extern void wasi_terminal_stdout(int32_t ret);
WASI("sockets/udp-create-socket", "create-udp-socket") extern void wasi_create_udp(int32_t family, int32_t ret);
WASI("sockets/udp", "[method]udp-socket.stream")
extern void wasi_udp_stream(int32_t self, int32_t some, int32_t tag, int32_t port, int32_t a, int32_t b, int32_t c,
                            int32_t d, int32_t x0, int32_t x1, int32_t x2, int32_t x3, int32_t x4, int32_t x5,
                            int32_t ret);
WASI("sockets/udp", "[method]outgoing-datagram-stream.send")
extern void wasi_udp_send(int32_t self, int32_t ptr, int32_t len, int32_t ret);
WASI("sockets/udp", "[resource-drop]udp-socket") extern void wasi_drop_udp(int32_t self);
WASI("sockets/udp", "[resource-drop]incoming-datagram-stream") extern void wasi_drop_in(int32_t self);
WASI("sockets/udp", "[resource-drop]outgoing-datagram-stream") extern void wasi_drop_out(int32_t self);

static uint32_t area[16] __attribute__((aligned(8)));
static uint8_t dgram[44] __attribute__((aligned(4)));
static int seed_zero = -1;
static uint8_t out[64];

#define PTR(p) ((int32_t)(uintptr_t)(p))

static void write_text(int32_t stream, const char *s, int flush) {
    if (flush) wasi_write_flush(stream, PTR(s), (int32_t)lc_strlen(s), PTR(area));
    else wasi_write(stream, PTR(s), (int32_t)lc_strlen(s), PTR(area));
    if (((uint8_t *)area)[0] != 0) __builtin_trap();
}

void lc_on_open(lc_bytes listener, lc_bytes config) {
    (void)listener;
    lc_bytes key, value;
    lc_split_kv(config, &key, &value);
    uint32_t seed = 0;
    if (lc_eq(key, "seed") && !lc_parse_u32(value, &seed)) __builtin_trap();
    if (seed) seed_zero = 1;
    while (seed) {
        uint32_t n = seed > 256 ? 256 : seed;
        wasi_random_bytes(n, PTR(area));
        const uint8_t *bytes = (const uint8_t *)(uintptr_t)area[0];
        for (uint32_t i = 0; i < area[1]; i++) seed_zero &= bytes[i] == 0;
        lc_free((void *)(uintptr_t)area[0]);
        seed -= n;
    }
    int32_t so = wasi_get_stdout();
    write_text(so, "hello from wasip2\n", 1);
    write_text(so, "open-partial", 1);
    wasi_drop_output(so);
}

static lc_verdict text(const char *s, uint32_t num, int with_num) {
    size_t n = lc_strlen(s);
    lc_memcpy(out, s, n);
    if (with_num) n += lc_fmt_i64(out + n, (int64_t)num);
    return lc_replace(out, n);
}

lc_verdict lc_on_data(lc_direction dir, lc_bytes data, bool eos) {
    (void)dir;
    (void)eos;
    if (data.len == 0) return lc_pass();
    switch (data.ptr[0]) {
    case 'w': {
        int32_t so = wasi_get_stdout(), se = wasi_get_stderr();
        write_text(so, "w1\nw", 0); /* a write, then a flush: delivered in order in both tiers */
        write_text(so, "2", 1);
        write_text(se, "e1\n", 1);
        wasi_drop_output(so);
        wasi_drop_output(se);
        return text("w=ok", 0, 0);
    }
    case 'c': {
        uint64_t a = (uint64_t)wasi_mono_now(), b = (uint64_t)wasi_mono_now();
        if (b < a) __builtin_trap();
        int32_t p = wasi_subscribe_duration(0);
        wasi_block(p);
        wasi_drop_pollable(p);
        wasi_wall_now(PTR(area));
        if (area[0] == 0 && area[1] == 0) __builtin_trap(); /* 1970 */
        return text("c=ok", 0, 0);
    }
    case 'r':
        wasi_random_bytes(16, PTR(area));
        lc_free((void *)(uintptr_t)area[0]);
        return text("r=", area[1], 1);
    case 'u':
        (void)wasi_random_u64();
        return text("u=ok", 0, 0);
    case 'f':
        wasi_get_directories(PTR(area));
        return text("f=", area[1], 1);
    case 'e': {
        wasi_get_environment(PTR(area));
        uint32_t env = area[1];
        wasi_get_arguments(PTR(area));
        uint32_t args = area[1];
        wasi_initial_cwd(PTR(area));
        size_t n = 0;
        lc_memcpy(out, "e=", 2);
        n = 2 + lc_fmt_i64(out + 2, env);
        out[n++] = ' ';
        n += lc_fmt_i64(out + n, args);
        out[n++] = ' ';
        n += lc_fmt_i64(out + n, ((uint8_t *)area)[0]);
        return lc_replace(out, n);
    }
    case 'i': {
        int32_t si = wasi_get_stdin();
        wasi_read(si, 16, PTR(area));
        wasi_drop_input(si);
        uint8_t *a = (uint8_t *)area;
        return text(a[0] == 1 && a[4] == 1 ? "i=closed" : "i=other", 0, 0);
    }
    case 'x':
        wasi_exit(1);
        return lc_pass();
    case 'h':
        write_text(4242, "nope", 0);
        return lc_pass();
    case 'n':
        wasi_drop_network(wasi_instance_network());
        return text("n=ok", 0, 0);
    case 'p':
        wasi_poll(PTR(area), 0, PTR(area + 4));
        return lc_pass();
    case 'g':
    case 'G': {
        uint32_t port = data.ptr[0] == 'g' ? 9125 : 9999;
        wasi_create_udp(0, PTR(area));
        int32_t sock = (int32_t)area[1];
        wasi_udp_stream(sock, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, PTR(area));
        int32_t in = (int32_t)area[1], outs = (int32_t)area[2];
        static const char payload[] = "dgram";
        uint32_t *d = (uint32_t *)dgram;
        d[0] = (uint32_t)(uintptr_t)payload;
        d[1] = 5;
        dgram[8] = 1;  /* some */
        dgram[12] = 0; /* ipv4 */
        dgram[16] = (uint8_t)port;
        dgram[17] = (uint8_t)(port >> 8);
        dgram[18] = 127, dgram[19] = 0, dgram[20] = 0, dgram[21] = 1;
        wasi_udp_send(outs, PTR(dgram), 1, PTR(area));
        uint8_t *a = (uint8_t *)area;
        uint32_t tag = a[0], err = a[8];
        wasi_drop_in(in);
        wasi_drop_out(outs);
        wasi_drop_udp(sock);
        return tag ? text("g=err", err, 1) : text("g=ok", 0, 0);
    }
    case 's':
        return text("s=", (uint32_t)seed_zero, 1);
    case 't':
        wasi_terminal_stdout(PTR(area));
        return text("t=", ((uint8_t *)area)[0], 1);
    default:
        return lc_pass();
    }
}

void lc_on_close(void) {}
