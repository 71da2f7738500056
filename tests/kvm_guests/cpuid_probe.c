/*
 * A guest for tests/test_kvm_cpuid.py: it reports what the CPU tells ring 3.
 * A DATA request whose payload is u32 leaf, u32 subleaf is answered with the
 * four CPUID registers (eax, ebx, ecx, edx); a payload of "T" with the time
 * stamp counter (rdtsc); of "V" with "avx" after running one AVX instruction
 * (vpxor: #UD where AVX is really off); "W" sets ymm0's upper half to all ones and "R"
 * returns it (does vector state outlive a restore?); "F" divides 1 by 3 (inexact: #XM
 * unless MXCSR masks it). Every other request is answered OK
 * with nothing.
 */
#include <stdint.h>

#include "lc_guest.h"
#include "lightcell_abi.h"

void lc_runtime_init(void) {}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

void lc_runtime_handle(const struct lc_request *req, uint32_t in_cap, struct lc_response *out,
                       uint32_t out_cap)
{
    out->status = LC_STATUS_OK;
    out->detail = 0;
    out->reserved = 0;
    out->len = 0;
    if (req->op != LC_OP_DATA || req->len > in_cap - sizeof *req || out_cap < sizeof *out + 16)
        return;
    const uint8_t *src = (const uint8_t *)(req + 1);
    uint8_t *dst = (uint8_t *)(out + 1);
    if (req->len == 1 && src[0] == 'T') {
        uint32_t lo, hi;
        __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
        put32(dst, lo);
        put32(dst + 4, hi);
        out->len = 8;
        return;
    }
    if (req->len == 1 && src[0] == 'V') {
        __asm__ volatile(".byte 0xc5, 0xf9, 0xef, 0xc0" ::: "xmm0"); /* vpxor %xmm0, %xmm0, %xmm0 */
        dst[0] = 'a';
        dst[1] = 'v';
        dst[2] = 'x';
        out->len = 3;
        return;
    }
    if (req->len == 1 && src[0] == 'F') { /* an inexact division: #XM if MXCSR unmasks it */
        volatile double three = 3.0, third = 1.0 / three;
        dst[0] = third > 0.3 ? 'f' : '?';
        out->len = 1;
        return;
    }
    if (req->len == 1 && src[0] == 'W') { /* ymm0's upper half: all ones */
        __asm__ volatile(".byte 0xc5, 0xfd, 0x76, 0xc0" ::: "xmm0"); /* vpcmpeqd %ymm0, %ymm0, %ymm0 */
        return;
    }
    if (req->len == 1 && src[0] == 'R') { /* ymm0's upper half, 16 bytes */
        __asm__ volatile(".byte 0xc4, 0xe3, 0x7d, 0x19, 0x07, 0x01" /* vextractf128 $1, %ymm0, (%rdi) */
                         : : "D"(dst) : "memory");
        out->len = 16;
        return;
    }
    if (req->len != 8)
        return;
    uint32_t leaf = (uint32_t)src[0] | (uint32_t)src[1] << 8 | (uint32_t)src[2] << 16 | (uint32_t)src[3] << 24;
    uint32_t sub = (uint32_t)src[4] | (uint32_t)src[5] << 8 | (uint32_t)src[6] << 16 | (uint32_t)src[7] << 24;
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    put32(dst, a);
    put32(dst + 4, b);
    put32(dst + 8, c);
    put32(dst + 12, d);
    out->len = 16;
}
