/*
 * A stand-in runtime for the monitor's tests (no wasm): it uppercases data
 * chunks, makes host calls, and on "!command" chunks misbehaves on purpose so
 * the escape tests can check that every misdeed ends in a poisoned VM.
 */
#include <stddef.h>
#include <stdint.h>

#include "lc_guest.h"
#include "lightcell_abi.h"

static uint64_t events;     /* counts DATA events: must restart at 0 after a restore */
static volatile uint64_t sink;

static int starts(const uint8_t *p, uint32_t len, const char *word)
{
    uint32_t i = 0;
    for (; word[i] != 0; i++) {
        if (i >= len || p[i] != (uint8_t)word[i])
            return 0;
    }
    return 1;
}

static uint32_t put_u64(uint8_t *dst, uint64_t v)
{
    char tmp[24];
    uint32_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (uint32_t i = 0; i < n; i++)
        dst[i] = (uint8_t)tmp[n - 1 - i];
    return n;
}

static void reply_u64(struct lc_response *out, const char *prefix, uint64_t v)
{
    uint8_t *p = (uint8_t *)(out + 1);
    uint32_t n = 0;
    while (prefix[n] != 0) {
        p[n] = (uint8_t)prefix[n];
        n++;
    }
    n += put_u64(p + n, v);
    out->detail = 1; /* replace */
    out->len = n;
}

static volatile int keep_going = 1;

static int recurse(int depth)
{
    volatile uint8_t pad[256];
    pad[0] = (uint8_t)depth;
    if (!keep_going)
        return 0;
    return recurse(depth + 1) + pad[0];
}

/* Each misdeed is one an untrusted guest could attempt. */
static int misbehave(const uint8_t *p, uint32_t len, struct lc_response *out)
{
    if (starts(p, len, "!ud2")) {
        __asm__ volatile("ud2");
    } else if (starts(p, len, "!hlt")) {
        __asm__ volatile("hlt");
    } else if (starts(p, len, "!cli")) {
        __asm__ volatile("cli");
    } else if (starts(p, len, "!wrmsr")) {
        __asm__ volatile("wrmsr" : : "c"(0xc0000080u), "a"(0u), "d"(0u));
    } else if (starts(p, len, "!rdtsc")) {
        uint32_t lo, hi;
        __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
        sink = ((uint64_t)hi << 32) | lo;
    } else if (starts(p, len, "!cr3")) {
        __asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)0x1000) : "memory");
    } else if (starts(p, len, "!null")) {
        sink = *(volatile uint64_t *)(uintptr_t)8;
    } else if (starts(p, len, "!wpt")) {
        *(volatile uint64_t *)(uintptr_t)LC_PAGE_TABLES = 0x7;
    } else if (starts(p, len, "!wgdt")) {
        *(volatile uint64_t *)(uintptr_t)LC_GDT = 0;
    } else if (starts(p, len, "!wcode")) {
        *(volatile uint8_t *)(uintptr_t)(LC_IMAGE_BASE + 0x100) = 0xcc;
    } else if (starts(p, len, "!kstack")) {
        *(volatile uint64_t *)(uintptr_t)LC_KSTACK = 1;
    } else if (starts(p, len, "!exec")) {
        uint8_t *code = lc_heap_base;
        code[0] = 0xc3; /* ret */
        ((void (*)(void))(uintptr_t)code)();
    } else if (starts(p, len, "!stack")) {
        sink = (uint64_t)recurse(0);
    } else if (starts(p, len, "!heapend")) {
        sink = lc_heap_base[lc_heap_size]; /* one past the heap */
    } else if (starts(p, len, "!loop")) {
        for (;;)
            sink++;
    } else if (starts(p, len, "!portbad")) {
        __asm__ volatile("outl %0, %w1" : : "a"(0u), "Nd"((uint16_t)0x3f8));
    } else if (starts(p, len, "!portodd")) {
        /* allowed by the I/O map (within the hypercall range) but no port */
        __asm__ volatile("outl %0, %w1" : : "a"(0u), "Nd"((uint16_t)(LC_PORT_DONE + 1)));
    } else if (starts(p, len, "!portin")) {
        uint32_t v;
        __asm__ volatile("inl %w1, %0" : "=a"(v) : "Nd"((uint16_t)LC_PORT_DONE));
        sink = v;
    } else if (starts(p, len, "!portbyte")) {
        __asm__ volatile("outb %0, %w1" : : "a"((uint8_t)0), "Nd"((uint16_t)LC_PORT_DONE));
    } else if (starts(p, len, "!ready")) {
        __asm__ volatile("outl %0, %w1" : : "a"(LC_ABI_VERSION), "Nd"((uint16_t)LC_PORT_READY));
    } else if (starts(p, len, "!forgecall")) {
        struct lc_hostcall *call = (struct lc_hostcall *)(uintptr_t)LC_OUT_BASE;
        call->fn = LC_HOST_LOG;
        call->len0 = 0xfffffff0u;
        call->len1 = 0x20u; /* wraps a 32-bit sum */
        __asm__ volatile("outl %0, %w1" : : "a"(0u), "Nd"((uint16_t)LC_PORT_HOSTCALL) : "memory");
    } else if (starts(p, len, "!forgefn")) {
        struct lc_hostcall *call = (struct lc_hostcall *)(uintptr_t)LC_OUT_BASE;
        call->fn = 999;
        call->len0 = 0;
        call->len1 = 0;
        __asm__ volatile("outl %0, %w1" : : "a"(0u), "Nd"((uint16_t)LC_PORT_HOSTCALL) : "memory");
    } else if (starts(p, len, "!forgeresp")) {
        out->status = LC_STATUS_OK;
        out->detail = 1;
        out->len = 0xffffffffu;
        return 1;
    } else if (starts(p, len, "!badverdict")) {
        out->detail = 77;
        return 1;
    } else if (starts(p, len, "!badstatus")) {
        out->status = 1234;
        return 1;
    } else if (starts(p, len, "!fail")) {
        lc_fail(LC_STATUS_TRAP, LC_TRAP_UNREACHABLE);
    } else if (starts(p, len, "!sse")) {
        volatile double x = 1.5;
        reply_u64(out, "sse=", (uint64_t)(x * x * 4.0));
        return 1;
    } else if (starts(p, len, "!count")) {
        reply_u64(out, "count=", events);
        return 1;
    } else if (starts(p, len, "!heapmark")) {
        /* report then overwrite a heap word: a restored VM must report 0 */
        volatile uint64_t *w = (volatile uint64_t *)(lc_heap_base + 4 * 4096 * 100);
        uint64_t old = *w;
        *w = 0x5eed;
        reply_u64(out, "heap=", old);
        return 1;
    } else if (starts(p, len, "!kv")) {
        uint64_t v = 0;
        uint32_t st = lc_hostcall(LC_HOST_KV_INCREMENT, 1, "hits", 4, NULL, 0, &v, NULL, 0, NULL);
        if (st == LC_HOSTCALL_DENIED)
            lc_fail(LC_STATUS_DENIED, 0);
        if (st != LC_HOSTCALL_OK)
            lc_fail(LC_STATUS_ABI, st);
        reply_u64(out, "kv=", v);
        return 1;
    } else if (starts(p, len, "!get")) {
        uint8_t *dst = (uint8_t *)(out + 1);
        uint64_t found = 0;
        uint32_t got = 0;
        uint32_t st = lc_hostcall(LC_HOST_KV_GET, 0, "hits", 4, NULL, 0, &found, dst, 64, &got);
        if (st != LC_HOSTCALL_OK)
            lc_fail(st == LC_HOSTCALL_DENIED ? LC_STATUS_DENIED : LC_STATUS_ABI, st);
        out->detail = 1;
        out->len = found ? got : 0;
        return 1;
    } else if (starts(p, len, "!log")) {
        uint32_t st = lc_hostcall(LC_HOST_LOG, 2, p, len, NULL, 0, NULL, NULL, 0, NULL);
        if (st != LC_HOSTCALL_OK)
            lc_fail(st == LC_HOSTCALL_DENIED ? LC_STATUS_DENIED : LC_STATUS_ABI, st);
        return 1;
    } else {
        return 0;
    }
    return 1;
}

void lc_runtime_init(void)
{
    events = 0;
}

void lc_runtime_handle(const struct lc_request *req, uint32_t in_cap,
                       struct lc_response *out, uint32_t out_cap)
{
    uint32_t len = req->len;
    if ((uint64_t)len > in_cap - sizeof *req || (uint64_t)len > out_cap - sizeof *out)
        lc_fail(LC_STATUS_ABI, 1);
    const uint8_t *src = (const uint8_t *)(req + 1);
    uint8_t *dst = (uint8_t *)(out + 1);
    switch (req->op) {
    case LC_OP_OPEN:
    case LC_OP_CLOSE:
        return;
    case LC_OP_WARMUP:
        /* touch what a first 1 KiB event touches: 1 KiB of OUT */
        for (uint32_t i = 0; i < 1024; i++)
            dst[i] = 0;
        return;
    case LC_OP_DATA:
        events++;
        if (len > 0 && src[0] == '!' && misbehave(src, len, out))
            return;
        for (uint32_t i = 0; i < len; i++) {
            uint8_t c = src[i];
            dst[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 32) : c;
        }
        out->detail = 1; /* replace */
        out->len = len;
        return;
    default:
        lc_fail(LC_STATUS_ABI, 2);
    }
}
