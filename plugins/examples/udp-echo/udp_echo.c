/*
 * udp-echo: a wasi:cli/command (WASI 0.2) UDP echo server in freestanding C,
 * calling wasi:sockets/udp at the canonical-ABI level (no bindings generator).
 * Run it in a micro-VM with
 *
 *   lightcell run udp-echo.wasm --grant egress --grant log \
 *       --udp-bind 127.0.0.1:8080 -- 127.0.0.1:8080 [FORWARD_IP:PORT]
 *
 * Argument 1: where to bind. Every datagram goes back to its sender; with
 * argument 2 a copy also goes to FORWARD (a send `lightcell run` refuses
 * unless --allow lists it). A datagram "quit" ends the program (exit 0).
 * stdout: "listening on IP:PORT", then per datagram "echo N bytes" and, with
 * a forward, "forward ok" or "forward failed: error E"; stderr: errors
 * (E is the wasi:sockets error-code number, 1 = access-denied).
 */
#include <stdint.h>

#define WASI(iface, name) __attribute__((import_module("wasi:" iface "@0.2.9"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

WASI("cli/environment", "get-arguments") extern void get_arguments(int32_t ret);
WASI("cli/stdout", "get-stdout") extern int32_t get_stdout(void);
WASI("cli/stderr", "get-stderr") extern int32_t get_stderr(void);
WASI("io/streams", "[method]output-stream.blocking-write-and-flush")
extern void write_flush(int32_t self, int32_t ptr, int32_t len, int32_t ret);
WASI("io/poll", "[method]pollable.block") extern void block(int32_t self);
WASI("io/poll", "[resource-drop]pollable") extern void drop_pollable(int32_t self);
WASI("sockets/instance-network", "instance-network") extern int32_t instance_network(void);
WASI("sockets/udp-create-socket", "create-udp-socket") extern void create_udp_socket(int32_t family, int32_t ret);
WASI("sockets/udp", "[method]udp-socket.start-bind")
extern void start_bind(int32_t self, int32_t net, int32_t tag, int32_t port, int32_t a, int32_t b, int32_t c,
                       int32_t d, int32_t x0, int32_t x1, int32_t x2, int32_t x3, int32_t x4, int32_t x5,
                       int32_t ret);
WASI("sockets/udp", "[method]udp-socket.finish-bind") extern void finish_bind(int32_t self, int32_t ret);
WASI("sockets/udp", "[method]udp-socket.stream")
extern void udp_stream(int32_t self, int32_t some, int32_t tag, int32_t port, int32_t a, int32_t b, int32_t c,
                       int32_t d, int32_t x0, int32_t x1, int32_t x2, int32_t x3, int32_t x4, int32_t x5,
                       int32_t ret);
WASI("sockets/udp", "[method]incoming-datagram-stream.subscribe") extern int32_t subscribe_in(int32_t self);
WASI("sockets/udp", "[method]incoming-datagram-stream.receive")
extern void receive(int32_t self, int64_t max, int32_t ret);
WASI("sockets/udp", "[method]outgoing-datagram-stream.check-send") extern void check_send(int32_t self, int32_t ret);
WASI("sockets/udp", "[method]outgoing-datagram-stream.send")
extern void send(int32_t self, int32_t ptr, int32_t len, int32_t ret);

/* cabi_realloc: a bump arena, emptied at the top of each receive loop. */
static uint8_t arena[256 * 1024] __attribute__((aligned(8)));
static uint32_t arena_used;

EXPORT("cabi_realloc") void *cabi_realloc(void *old, uint32_t old_size, uint32_t align, uint32_t size) {
    (void)old_size;
    if (old || align > 8) __builtin_trap();
    uint32_t at = (arena_used + align - 1) & ~(align - 1);
    if (size > sizeof arena - at) __builtin_trap();
    arena_used = at + size;
    return arena + at;
}

static uint32_t ret[12] __attribute__((aligned(8)));
static uint8_t outgoing[44] __attribute__((aligned(4)));
static char line[128];
static int32_t out_stream, err_stream;

#define PTR(p) ((int32_t)(uintptr_t)(p))

static uint32_t put(uint32_t n, const char *s) {
    while (*s && n < sizeof line) line[n++] = *s++;
    return n;
}

static uint32_t put_u(uint32_t n, uint32_t v) {
    char digits[10];
    uint32_t k = 0;
    do digits[k++] = (char)('0' + v % 10); while ((v /= 10) && k < 10);
    while (k && n < sizeof line) line[n++] = digits[--k];
    return n;
}

static void say(int32_t stream, uint32_t n) {
    if (n < sizeof line) line[n++] = '\n';
    write_flush(stream, PTR(line), (int32_t)n, PTR(ret));
}

/* "a.b.c.d:port" -> octets (a in the low byte) and port; 0 if malformed. */
static int parse_addr(const uint8_t *s, uint32_t len, uint32_t *octets, uint32_t *port) {
    uint32_t part = 0, value = 0, digits = 0, o = 0;
    for (uint32_t i = 0; i <= len; i++) {
        uint8_t ch = i < len ? s[i] : 0;
        if (ch >= '0' && ch <= '9') {
            value = value * 10 + (ch - '0');
            if (++digits > 5) return 0;
        } else if ((ch == '.' && part < 3) || (ch == ':' && part == 3) || (ch == 0 && part == 4)) {
            if (!digits || (part < 4 && value > 255) || value > 65535) return 0;
            if (part < 4) o |= value << (8 * part);
            else *port = value;
            part++, value = 0, digits = 0;
        } else {
            return 0;
        }
    }
    *octets = o;
    return part == 5;
}

static uint32_t put_addr(uint32_t n, uint32_t octets, uint32_t port) {
    for (int i = 0; i < 4; i++) {
        n = put_u(n, (octets >> (8 * i)) & 0xff);
        n = put(n, i < 3 ? "." : ":");
    }
    return put_u(n, port);
}

static int32_t in_stream, out_dgrams;

/* Send one datagram; 0 or the error code. */
static uint32_t send_to(uint32_t data, uint32_t len, uint32_t octets, uint32_t port) {
    check_send(out_dgrams, PTR(ret));
    uint32_t *o = (uint32_t *)outgoing;
    o[0] = data;
    o[1] = len;
    outgoing[8] = 1;  /* some */
    outgoing[12] = 0; /* ipv4 */
    outgoing[16] = (uint8_t)port;
    outgoing[17] = (uint8_t)(port >> 8);
    for (int i = 0; i < 4; i++) outgoing[18 + i] = (uint8_t)(octets >> (8 * i));
    send(out_dgrams, PTR(outgoing), 1, PTR(ret));
    return ((uint8_t *)ret)[0] ? ((uint8_t *)ret)[8] : 0;
}

EXPORT("wasi:cli/run@0.2.9#run") int32_t run(void) {
    out_stream = get_stdout();
    err_stream = get_stderr();
    get_arguments(PTR(ret));
    uint32_t argc = ret[1];
    const uint32_t *argv = (const uint32_t *)(uintptr_t)ret[0];
    uint32_t octets = 0, port = 0, fwd_octets = 0, fwd_port = 0;
    if (argc < 1 || !parse_addr((const uint8_t *)(uintptr_t)argv[0], argv[1], &octets, &port)) {
        say(err_stream, put(0, "usage: udp-echo IP:PORT [FORWARD_IP:PORT]"));
        return 1;
    }
    if (argc > 1 && !parse_addr((const uint8_t *)(uintptr_t)argv[2], argv[3], &fwd_octets, &fwd_port)) {
        say(err_stream, put(0, "bad forward address"));
        return 1;
    }
    int32_t net = instance_network();
    create_udp_socket(0, PTR(ret));
    if (((uint8_t *)ret)[0]) {
        say(err_stream, put_u(put(0, "create-udp-socket failed: error "), ((uint8_t *)ret)[4]));
        return 1;
    }
    int32_t sock = (int32_t)ret[1];
    start_bind(sock, net, 0, (int32_t)port, octets & 0xff, (octets >> 8) & 0xff, (octets >> 16) & 0xff,
               octets >> 24, 0, 0, 0, 0, 0, 0, PTR(ret));
    if (((uint8_t *)ret)[0] == 0) finish_bind(sock, PTR(ret));
    if (((uint8_t *)ret)[0]) {
        uint32_t n = put_addr(put(0, "bind "), octets, port);
        say(err_stream, put_u(put(n, " failed: error "), ((uint8_t *)ret)[1]));
        return 1;
    }
    udp_stream(sock, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, PTR(ret));
    if (((uint8_t *)ret)[0]) {
        say(err_stream, put_u(put(0, "stream failed: error "), ((uint8_t *)ret)[4]));
        return 1;
    }
    in_stream = (int32_t)ret[1];
    out_dgrams = (int32_t)ret[2];
    say(out_stream, put_addr(put(0, "listening on "), octets, port));
    for (;;) {
        arena_used = 0;
        int32_t p = subscribe_in(in_stream);
        block(p);
        drop_pollable(p);
        receive(in_stream, 16, PTR(ret));
        if (((uint8_t *)ret)[0]) {
            say(err_stream, put_u(put(0, "receive failed: error "), ((uint8_t *)ret)[4]));
            return 1;
        }
        const uint8_t *list = (const uint8_t *)(uintptr_t)ret[1];
        uint32_t count = ret[2];
        for (uint32_t i = 0; i < count; i++) {
            const uint8_t *d = list + 40 * i;
            uint32_t data = *(const uint32_t *)d, len = *(const uint32_t *)(d + 4);
            uint32_t from_port = d[12] | (uint32_t)d[13] << 8;
            uint32_t from = d[14] | (uint32_t)d[15] << 8 | (uint32_t)d[16] << 16 | (uint32_t)d[17] << 24;
            const uint8_t *bytes = (const uint8_t *)(uintptr_t)data;
            if (len == 4 && bytes[0] == 'q' && bytes[1] == 'u' && bytes[2] == 'i' && bytes[3] == 't') return 0;
            uint32_t err = send_to(data, len, from, from_port);
            if (err) say(err_stream, put_u(put(0, "echo failed: error "), err));
            else say(out_stream, put(put_u(put(0, "echo "), len), " bytes"));
            if (fwd_port) {
                err = send_to(data, len, fwd_octets, fwd_port);
                say(out_stream, err ? put_u(put(0, "forward failed: error "), err) : put(0, "forward ok"));
            }
        }
    }
}
