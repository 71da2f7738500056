/*
 * wasi:sockets in the guest: UDP over IPv4 only, only with the `egress`
 * grant (instance-network and create-*-socket ask for it with a host call
 * that ends the event DENIED without it, as the wasmtime tier's gate does).
 * Where a datagram may go, and where a socket may bind, the host decides
 * (vmm/microvm/wasip2_host.py): the listener's egress allow list for plugins;
 * `lightcell run --udp-bind` and the reply rule for commands. TCP: every
 * create is refused with access-denied; ip-name-lookup with not-supported.
 *
 * start-bind binds at once (finish-bind only reports it). An unbound socket's
 * datagrams go through the egress allow list (host socket 0) and it receives
 * nothing. A dropped socket's streams trap on their next use.
 */
#include <string.h>

#include "wasip2_rt.h"

/* wasi:sockets/network error-code */
#define E_ACCESS_DENIED 1u
#define E_NOT_SUPPORTED 2u
#define E_INVALID_ARGUMENT 3u
#define E_NOT_IN_PROGRESS 7u
#define E_INVALID_STATE 9u
#define E_MAX 20u

#define SEND_PERMIT 64u  /* datagrams per send call (check-send) */
#define RECV_MAX 64u     /* datagrams per receive call */
#define ADDR_BYTES 6u    /* host-call address: IPv4 octets, port big-endian */

/* The egress grant: a LC_HOST_UDP_RECV for socket 0 checks it and does nothing. */
static void check_egress(void) {
    (void)lc_rt_host(LC_HOST_UDP_RECV, 0, 0, 0, 0, 0, 0, 0, 0);
}

static void pack_addr(uint8_t out[ADDR_BYTES], uint32_t octets, uint16_t port) {
    lc_rt_st32(out, octets); /* octets as they lie in memory: a.b.c.d */
    out[4] = (uint8_t)(port >> 8);
    out[5] = (uint8_t)port;
}

/* result<_, error-code>: tag @0, code @1 */
static void unit_result(struct lc_canon *cx, uint32_t retptr, uint32_t err) {
    uint8_t *area = lc_cx_area(cx, retptr, 2, 1);
    area[0] = err ? 1 : 0;
    area[1] = (uint8_t)err;
}

/* result<own<..>, error-code>: tag @0, handle or code @4 */
static void handle_error(struct lc_canon *cx, uint32_t retptr, uint32_t err) {
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
    area[0] = 1;
    area[4] = (uint8_t)err;
}

/* An ip-socket-address in memory (32 bytes at p): ipv4 only. */
static void store_addr(uint8_t *p, uint32_t octets, uint16_t port) {
    memset(p, 0, 32);
    p[0] = 0; /* ipv4 */
    lc_st16(p + 4, port);
    lc_rt_st32(p + 6, octets);
}

/* A flat ipv4 ip-socket-address (tag, port, 4 octets) -> octets; 0 if not ipv4. */
static int flat_ipv4(const uint32_t *f, uint32_t *octets, uint16_t *port) {
    if (f[0] > 1) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_ENUM);
    }
    if (f[0] != 0) {
        return 0;
    }
    *port = (uint16_t)f[1];
    *octets = (f[2] & 0xffu) | (f[3] & 0xffu) << 8 | (f[4] & 0xffu) << 16 | (f[5] & 0xffu) << 24;
    return 1;
}

/* ---- network ------------------------------------------------------------ */

uint32_t lc_wasip2_sockets_instance_network_instance_network(struct lc_canon *cx) {
    (void)cx;
    check_egress();
    return lc_h_new(LC_RES_NETWORK);
}

void lc_wasip2_sockets_network_resource_drop_network(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_NETWORK);
}

/* ---- udp-socket ---------------------------------------------------------- */

void lc_wasip2_sockets_udp_create_socket_create_udp_socket(struct lc_canon *cx, uint32_t address_family,
                                                           uint32_t retptr) {
    if (address_family > 1) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_ENUM);
    }
    (void)lc_cx_area(cx, retptr, 8, 4);
    check_egress();
    if (address_family != 0) {
        handle_error(cx, retptr, E_NOT_SUPPORTED);
        return;
    }
    uint32_t h = lc_h_new(LC_RES_UDP_SOCKET);
    uint8_t *area = lc_cx_area(cx, retptr, 8, 4);
    area[0] = 0;
    lc_rt_st32(area + 4, h);
}

void lc_wasip2_sockets_udp_method_udp_socket_start_bind(
    struct lc_canon *cx, uint32_t self, uint32_t network, uint32_t local_address_0, uint32_t local_address_1,
    uint32_t local_address_2, uint32_t local_address_3, uint32_t local_address_4, uint32_t local_address_5,
    uint32_t local_address_6, uint32_t local_address_7, uint32_t local_address_8, uint32_t local_address_9,
    uint32_t local_address_10, uint32_t local_address_11, uint32_t retptr) {
    (void)local_address_6, (void)local_address_7, (void)local_address_8, (void)local_address_9;
    (void)local_address_10, (void)local_address_11;
    struct lc_handle *e = lc_h_get(self, LC_RES_UDP_SOCKET);
    (void)lc_h_get(network, LC_RES_NETWORK);
    (void)lc_cx_area(cx, retptr, 2, 1);
    const uint32_t flat[6] = {local_address_0, local_address_1, local_address_2,
                              local_address_3, local_address_4, local_address_5};
    uint32_t octets = 0;
    uint16_t port = 0;
    if (!flat_ipv4(flat, &octets, &port)) {
        unit_result(cx, retptr, E_INVALID_ARGUMENT); /* an ipv4 socket */
        return;
    }
    if (e->state != 0) {
        unit_result(cx, retptr, E_INVALID_STATE);
        return;
    }
    uint8_t addr[ADDR_BYTES];
    pack_addr(addr, octets, port);
    uint64_t r = lc_rt_host(LC_HOST_UDP_BIND, 0, addr, ADDR_BYTES, 0, 0, 0, 0, 0);
    if (r >> 32) {
        if ((r & 0xffffffffu) > E_MAX || (r & 0xffffffffu) == 0) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        unit_result(cx, retptr, (uint32_t)r);
        return;
    }
    if (r == 0 || r > 0x7fffffffu) {
        lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
    }
    e = lc_h_get(self, LC_RES_UDP_SOCKET);
    e->a = r;
    e->b = octets;
    e->port = port;
    e->state = 1;
    unit_result(cx, retptr, 0);
}

void lc_wasip2_sockets_udp_method_udp_socket_finish_bind(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    struct lc_handle *e = lc_h_get(self, LC_RES_UDP_SOCKET);
    unit_result(cx, retptr, e->state ? 0 : E_NOT_IN_PROGRESS);
}

/* stream(remote: option<ip-socket-address>) -> result<tuple<incoming, outgoing>, error-code> */
void lc_wasip2_sockets_udp_method_udp_socket_stream(
    struct lc_canon *cx, uint32_t self, uint32_t remote_address_0, uint32_t remote_address_1,
    uint32_t remote_address_2, uint32_t remote_address_3, uint32_t remote_address_4, uint32_t remote_address_5,
    uint32_t remote_address_6, uint32_t remote_address_7, uint32_t remote_address_8, uint32_t remote_address_9,
    uint32_t remote_address_10, uint32_t remote_address_11, uint32_t remote_address_12, uint32_t retptr) {
    (void)remote_address_7, (void)remote_address_8, (void)remote_address_9, (void)remote_address_10;
    (void)remote_address_11, (void)remote_address_12;
    struct lc_handle *e = lc_h_get(self, LC_RES_UDP_SOCKET);
    uint8_t *area = lc_cx_area(cx, retptr, 12, 4);
    if (remote_address_0 > 1) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_ENUM);
    }
    uint32_t octets = 0;
    uint16_t port = 0;
    if (remote_address_0) {
        const uint32_t flat[6] = {remote_address_1, remote_address_2, remote_address_3,
                                  remote_address_4, remote_address_5, remote_address_6};
        if (!flat_ipv4(flat, &octets, &port) || port == 0) {
            area[0] = 1;
            area[4] = E_INVALID_ARGUMENT;
            return;
        }
    }
    uint32_t in = lc_h_new(LC_RES_INCOMING_DATAGRAM_STREAM);
    uint32_t out = lc_h_new(LC_RES_OUTGOING_DATAGRAM_STREAM);
    lc_h_get(in, LC_RES_INCOMING_DATAGRAM_STREAM)->b = self;
    lc_h_get(out, LC_RES_OUTGOING_DATAGRAM_STREAM)->b = self;
    e = lc_h_get(self, LC_RES_UDP_SOCKET);
    e->remote_addr = octets;
    e->remote_port = port; /* 0: not connected */
    if (e->state < 2) {
        e->state = 2;
    }
    area = lc_cx_area(cx, retptr, 12, 4);
    area[0] = 0;
    lc_rt_st32(area + 4, in);
    lc_rt_st32(area + 8, out);
}

/* result<ip-socket-address, error-code>: tag @0, address @4 (32 bytes) */
static void address_result(struct lc_canon *cx, uint32_t retptr, int have, uint32_t octets, uint16_t port) {
    uint8_t *area = lc_cx_area(cx, retptr, 36, 4);
    if (!have) {
        area[0] = 1;
        area[4] = E_INVALID_STATE;
        return;
    }
    area[0] = 0;
    store_addr(area + 4, octets, port);
}

void lc_wasip2_sockets_udp_method_udp_socket_local_address(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    struct lc_handle *e = lc_h_get(self, LC_RES_UDP_SOCKET);
    address_result(cx, retptr, e->a != 0, e->b, e->port);
}

void lc_wasip2_sockets_udp_method_udp_socket_remote_address(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    struct lc_handle *e = lc_h_get(self, LC_RES_UDP_SOCKET);
    address_result(cx, retptr, e->remote_port != 0, e->remote_addr, e->remote_port);
}

uint32_t lc_wasip2_sockets_udp_method_udp_socket_address_family(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    return 0; /* ipv4 */
}

/* result<u8, error-code>: tag @0, value @1 */
void lc_wasip2_sockets_udp_method_udp_socket_unicast_hop_limit(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    uint8_t *area = lc_cx_area(cx, retptr, 2, 1);
    area[0] = 0;
    area[1] = 64;
}

/* Socket options are the host's: accepted, not applied. */
void lc_wasip2_sockets_udp_method_udp_socket_set_unicast_hop_limit(struct lc_canon *cx, uint32_t self,
                                                                   uint32_t value, uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    unit_result(cx, retptr, (value & 0xffu) ? 0 : E_INVALID_ARGUMENT);
}

/* result<u64, error-code>: tag @0, value @8 */
static void u64_result(struct lc_canon *cx, uint32_t retptr, uint64_t value) {
    uint8_t *area = lc_cx_area(cx, retptr, 16, 8);
    area[0] = 0;
    lc_rt_st64(area + 8, value);
}

void lc_wasip2_sockets_udp_method_udp_socket_receive_buffer_size(struct lc_canon *cx, uint32_t self,
                                                                 uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    u64_result(cx, retptr, 65536);
}

void lc_wasip2_sockets_udp_method_udp_socket_set_receive_buffer_size(struct lc_canon *cx, uint32_t self,
                                                                     uint64_t value, uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    unit_result(cx, retptr, value ? 0 : E_INVALID_ARGUMENT);
}

void lc_wasip2_sockets_udp_method_udp_socket_send_buffer_size(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    u64_result(cx, retptr, 65536);
}

void lc_wasip2_sockets_udp_method_udp_socket_set_send_buffer_size(struct lc_canon *cx, uint32_t self,
                                                                  uint64_t value, uint32_t retptr) {
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    unit_result(cx, retptr, value ? 0 : E_INVALID_ARGUMENT);
}

uint32_t lc_wasip2_sockets_udp_method_udp_socket_subscribe(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    (void)lc_h_get(self, LC_RES_UDP_SOCKET);
    return lc_wasip2_pollable(LC_POLL_READY, 0);
}

void lc_wasip2_sockets_udp_resource_drop_udp_socket(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_UDP_SOCKET);
}

/* ---- incoming-datagram-stream ---------------------------------------------- */

static uint32_t g_rx_ptr[RECV_MAX], g_rx_len[RECV_MAX], g_rx_addr[RECV_MAX];
static uint16_t g_rx_port[RECV_MAX];

/* receive(max-results) -> result<list<incoming-datagram>, error-code>; an
 * incoming-datagram is data (ptr, len) @0, remote-address @8: 40 bytes. */
void lc_wasip2_sockets_udp_method_incoming_datagram_stream_receive(struct lc_canon *cx, uint32_t self,
                                                                   uint64_t max_results, uint32_t retptr) {
    struct lc_handle *s = lc_h_get(self, LC_RES_INCOMING_DATAGRAM_STREAM);
    struct lc_handle *sock = lc_h_get(s->b, LC_RES_UDP_SOCKET);
    uint64_t id = sock->a;
    uint32_t want_addr = sock->remote_addr;
    uint16_t want_port = sock->remote_port;
    (void)lc_cx_area(cx, retptr, 12, 4);
    uint32_t n = 0, limit = max_results < RECV_MAX ? (uint32_t)max_results : RECV_MAX;
    while (id && n < limit) {
        uint32_t got = 0;
        uint64_t r = lc_rt_host(LC_HOST_UDP_RECV, id, 0, 0, 0, 0, lc_rt_scratch, LC_RT_SCRATCH_BYTES, &got);
        if (r == 0) {
            break;
        }
        if (r > 2 || got < ADDR_BYTES) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        uint32_t octets = lc_rt_ld32(lc_rt_scratch);
        uint16_t port = (uint16_t)(lc_rt_scratch[4] << 8 | lc_rt_scratch[5]);
        if (want_port && (octets != want_addr || port != want_port)) {
            continue; /* a connected socket hears its peer only */
        }
        g_rx_len[n] = got - ADDR_BYTES;
        g_rx_ptr[n] = lc_cx_lower(cx, lc_rt_scratch + ADDR_BYTES, g_rx_len[n]);
        g_rx_addr[n] = octets;
        g_rx_port[n] = port;
        n++;
        if (r == 1) {
            break; /* nothing more queued: spare the host call that would say so */
        }
    }
    uint32_t array = lc_cx_alloc(cx, 40u * n, 4);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *entry = lc_cx_guest(cx, array + 40u * i, 40);
        lc_rt_st32(entry, g_rx_ptr[i]);
        lc_rt_st32(entry + 4, g_rx_len[i]);
        store_addr(entry + 8, g_rx_addr[i], g_rx_port[i]);
    }
    uint8_t *area = lc_cx_area(cx, retptr, 12, 4);
    area[0] = 0;
    lc_rt_st32(area + 4, array);
    lc_rt_st32(area + 8, n);
}

uint32_t lc_wasip2_sockets_udp_method_incoming_datagram_stream_subscribe(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    struct lc_handle *s = lc_h_get(self, LC_RES_INCOMING_DATAGRAM_STREAM);
    uint64_t id = lc_h_get(s->b, LC_RES_UDP_SOCKET)->a;
    return lc_wasip2_pollable(LC_POLL_UDP, id);
}

void lc_wasip2_sockets_udp_resource_drop_incoming_datagram_stream(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_INCOMING_DATAGRAM_STREAM);
}

/* ---- outgoing-datagram-stream ------------------------------------------------ */

void lc_wasip2_sockets_udp_method_outgoing_datagram_stream_check_send(struct lc_canon *cx, uint32_t self,
                                                                      uint32_t retptr) {
    struct lc_handle *s = lc_h_get(self, LC_RES_OUTGOING_DATAGRAM_STREAM);
    (void)lc_h_get(s->b, LC_RES_UDP_SOCKET);
    u64_result(cx, retptr, SEND_PERMIT);
}

/* send(list<outgoing-datagram>) -> result<u64, error-code>; an outgoing-datagram
 * is data (ptr, len) @0, option tag @8, remote-address @12: 44 bytes. Stops at
 * the first refused datagram: its error if it was the first, else the count. */
void lc_wasip2_sockets_udp_method_outgoing_datagram_stream_send(struct lc_canon *cx, uint32_t self,
                                                                uint32_t datagrams_ptr, uint32_t datagrams_len,
                                                                uint32_t retptr) {
    struct lc_handle *s = lc_h_get(self, LC_RES_OUTGOING_DATAGRAM_STREAM);
    struct lc_handle *sock = lc_h_get(s->b, LC_RES_UDP_SOCKET);
    (void)lc_cx_area(cx, retptr, 16, 8);
    if (datagrams_len > SEND_PERMIT) { /* more than check-send allowed */
        lc_fail(LC_STATUS_ABI, LC_ABI_TOO_LARGE);
    }
    const uint8_t *list = lc_cx_area(cx, datagrams_ptr, 44u * datagrams_len, 4);
    uint32_t sent = 0, err = 0;
    for (uint32_t i = 0; i < datagrams_len && !err; i++) {
        const uint8_t *d = list + 44u * i;
        uint32_t ptr = lc_rt_ld32(d), len = lc_rt_ld32(d + 4);
        const uint8_t *data = lc_cx_guest(cx, ptr, len);
        uint32_t octets = sock->remote_addr;
        uint16_t port = sock->remote_port;
        if (d[8] > 1 || (d[8] && d[12] > 1)) {
            lc_fail(LC_STATUS_ABI, LC_ABI_BAD_ENUM);
        }
        if (d[8]) {
            if (d[12] != 0) {
                err = E_INVALID_ARGUMENT; /* ipv6 on an ipv4 socket */
                break;
            }
            uint32_t to = lc_rt_ld32(d + 18);
            uint16_t to_port = lc_ld16(d + 16);
            if (sock->remote_port && (to != octets || to_port != port)) {
                err = E_INVALID_ARGUMENT; /* a connected socket sends to its peer only */
                break;
            }
            octets = to;
            port = to_port;
        }
        if (port == 0) {
            err = E_INVALID_ARGUMENT;
            break;
        }
        uint8_t addr[ADDR_BYTES];
        pack_addr(addr, octets, port);
        uint64_t r = lc_rt_host(LC_HOST_UDP_SEND, sock->a, addr, ADDR_BYTES, data, len, 0, 0, 0);
        if (r > E_MAX + 1) {
            lc_fail(LC_STATUS_ABI, LC_ABI_HOST_MISUSE);
        }
        if (r) {
            err = (uint32_t)r - 1;
            if (err == 0) {
                err = E_ACCESS_DENIED; /* `unknown` is never the host's answer */
            }
            break;
        }
        sent++;
        sock = lc_h_get(s->b, LC_RES_UDP_SOCKET);
    }
    uint8_t *area = lc_cx_area(cx, retptr, 16, 8);
    if (err && sent == 0) {
        area[0] = 1;
        area[8] = (uint8_t)err;
        return;
    }
    area[0] = 0;
    lc_rt_st64(area + 8, sent);
}

uint32_t lc_wasip2_sockets_udp_method_outgoing_datagram_stream_subscribe(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    (void)lc_h_get(self, LC_RES_OUTGOING_DATAGRAM_STREAM);
    return lc_wasip2_pollable(LC_POLL_READY, 0);
}

void lc_wasip2_sockets_udp_resource_drop_outgoing_datagram_stream(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_OUTGOING_DATAGRAM_STREAM);
}

/* ---- tcp and name lookup: refused ---------------------------------------------- */

void lc_wasip2_sockets_tcp_create_socket_create_tcp_socket(struct lc_canon *cx, uint32_t address_family,
                                                           uint32_t retptr) {
    if (address_family > 1) {
        lc_fail(LC_STATUS_ABI, LC_ABI_BAD_ENUM);
    }
    (void)lc_cx_area(cx, retptr, 8, 4);
    check_egress();
    handle_error(cx, retptr, E_ACCESS_DENIED);
}

void lc_wasip2_sockets_ip_name_lookup_resolve_addresses(struct lc_canon *cx, uint32_t network, uint32_t name_ptr,
                                                        uint32_t name_len, uint32_t retptr) {
    (void)lc_h_get(network, LC_RES_NETWORK);
    (void)lc_cx_guest(cx, name_ptr, name_len);
    handle_error(cx, retptr, E_NOT_SUPPORTED);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_start_bind(struct lc_canon *cx, uint32_t self, uint32_t network, uint32_t local_address_0, uint32_t local_address_1, uint32_t local_address_2, uint32_t local_address_3, uint32_t local_address_4, uint32_t local_address_5, uint32_t local_address_6, uint32_t local_address_7, uint32_t local_address_8, uint32_t local_address_9, uint32_t local_address_10, uint32_t local_address_11, uint32_t retptr) {
    (void)cx;
    (void)network;
    (void)local_address_0;
    (void)local_address_1;
    (void)local_address_2;
    (void)local_address_3;
    (void)local_address_4;
    (void)local_address_5;
    (void)local_address_6;
    (void)local_address_7;
    (void)local_address_8;
    (void)local_address_9;
    (void)local_address_10;
    (void)local_address_11;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_finish_bind(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_start_connect(struct lc_canon *cx, uint32_t self, uint32_t network, uint32_t remote_address_0, uint32_t remote_address_1, uint32_t remote_address_2, uint32_t remote_address_3, uint32_t remote_address_4, uint32_t remote_address_5, uint32_t remote_address_6, uint32_t remote_address_7, uint32_t remote_address_8, uint32_t remote_address_9, uint32_t remote_address_10, uint32_t remote_address_11, uint32_t retptr) {
    (void)cx;
    (void)network;
    (void)remote_address_0;
    (void)remote_address_1;
    (void)remote_address_2;
    (void)remote_address_3;
    (void)remote_address_4;
    (void)remote_address_5;
    (void)remote_address_6;
    (void)remote_address_7;
    (void)remote_address_8;
    (void)remote_address_9;
    (void)remote_address_10;
    (void)remote_address_11;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_finish_connect(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_start_listen(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_finish_listen(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_accept(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_local_address(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_remote_address(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

uint32_t lc_wasip2_sockets_tcp_method_tcp_socket_is_listening(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

uint32_t lc_wasip2_sockets_tcp_method_tcp_socket_address_family(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_listen_backlog_size(struct lc_canon *cx, uint32_t self, uint64_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_keep_alive_enabled(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_keep_alive_enabled(struct lc_canon *cx, uint32_t self, uint32_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_keep_alive_idle_time(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_keep_alive_idle_time(struct lc_canon *cx, uint32_t self, uint64_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_keep_alive_interval(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_keep_alive_interval(struct lc_canon *cx, uint32_t self, uint64_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_keep_alive_count(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_keep_alive_count(struct lc_canon *cx, uint32_t self, uint32_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_hop_limit(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_hop_limit(struct lc_canon *cx, uint32_t self, uint32_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_receive_buffer_size(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_receive_buffer_size(struct lc_canon *cx, uint32_t self, uint64_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_send_buffer_size(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_set_send_buffer_size(struct lc_canon *cx, uint32_t self, uint64_t value, uint32_t retptr) {
    (void)cx;
    (void)value;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

uint32_t lc_wasip2_sockets_tcp_method_tcp_socket_subscribe(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_method_tcp_socket_shutdown(struct lc_canon *cx, uint32_t self, uint32_t shutdown_type, uint32_t retptr) {
    (void)cx;
    (void)shutdown_type;
    (void)retptr;
    lc_wasip2_never(LC_RES_TCP_SOCKET, self);
}

void lc_wasip2_sockets_tcp_resource_drop_tcp_socket(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_TCP_SOCKET);
}

void lc_wasip2_sockets_ip_name_lookup_method_resolve_address_stream_resolve_next_address(struct lc_canon *cx, uint32_t self, uint32_t retptr) {
    (void)cx;
    (void)retptr;
    lc_wasip2_never(LC_RES_RESOLVE_ADDRESS_STREAM, self);
}

uint32_t lc_wasip2_sockets_ip_name_lookup_method_resolve_address_stream_subscribe(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_wasip2_never(LC_RES_RESOLVE_ADDRESS_STREAM, self);
}

void lc_wasip2_sockets_ip_name_lookup_resource_drop_resolve_address_stream(struct lc_canon *cx, uint32_t self) {
    (void)cx;
    lc_h_drop(self, LC_RES_RESOLVE_ADDRESS_STREAM);
}
