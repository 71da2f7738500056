/*
 * The micro-guest's boot half: the image header, the dispatch loop, host
 * calls and lc_fail. Runs in ring 3 (see lightcell_abi.h for the layout and
 * ../shared notes: ring-0 code is emulated slowly on PVM).
 */
#include <stddef.h>
#include <stdint.h>

#include "lc_guest.h"
#include "lightcell_abi.h"

/* setjmp/longjmp of our own (entry.S): wasm2c's sigsetjmp is not available. */
typedef uint64_t lc_jmp_buf[8];
__attribute__((returns_twice)) int lc_setjmp(lc_jmp_buf env);
__attribute__((noreturn)) void lc_longjmp(lc_jmp_buf env, int value);
extern char lc_vectors[];
void lc_boot_main(uint64_t heap_base, uint64_t heap_size, uint64_t memory_cap);

/* The host reads this before it boots the image and refuses other versions. */
__attribute__((section(".lc_header"), used))
const struct lc_image_header lc_image_header = {
    .magic = LC_IMAGE_MAGIC,
    .abi_version = LC_ABI_VERSION,
    .vectors = (uint64_t)(uintptr_t)lc_vectors,
};

uint8_t *lc_heap_base;
uint64_t lc_heap_size;
uint64_t lc_memory_cap;

static lc_jmp_buf lc_event_env;

#define IN_REQ ((const struct lc_request *)(uintptr_t)LC_IN_BASE)
#define OUT_RESP ((struct lc_response *)(uintptr_t)LC_OUT_BASE)

/* One VM exit: the host handles the port, then resumes after the `out`. */
static inline void lc_out(uint32_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %w1" : : "a"(value), "Nd"((uint16_t)port) : "memory");
}

/* Byte copy that tolerates overlap; boot must not depend on the runtime's libc. */
static void lc_move(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d == s || n == 0)
        return;
    if (d < s) {
        for (size_t i = 0; i < n; i++)
            d[i] = s[i];
    } else {
        for (size_t i = n; i > 0; i--)
            d[i - 1] = s[i - 1];
    }
}

static void lc_set_response(uint32_t status, uint32_t detail)
{
    struct lc_response *out = OUT_RESP;
    out->status = status;
    out->detail = detail;
    out->reserved = 0;
    out->len = 0;
}

/* End the current event (or boot) with a failure status. */
__attribute__((noreturn)) void lc_fail(uint32_t status, uint32_t detail)
{
    lc_set_response(status, detail);
    lc_longjmp(lc_event_env, 1);
}

/* Host call: header and blobs into OUT, one exit, result from IN. Lengths are
 * checked here as well as by the host so a runtime bug fails only the event.
 * Clobbers both buffers: the request payload in IN and anything written to
 * OUT so far; the response header is reset to OK/0/0 afterwards. */
uint32_t lc_hostcall(uint32_t fn, uint64_t a0,
                     const void *blob0, uint32_t len0,
                     const void *blob1, uint32_t len1,
                     uint64_t *value, void *resp, uint32_t resp_cap, uint32_t *resp_len)
{
    struct lc_hostcall *call = (struct lc_hostcall *)(uintptr_t)LC_OUT_BASE;
    const uint64_t room = LC_OUT_SIZE - sizeof *call;
    if ((uint64_t)len0 > room || (uint64_t)len1 > room - len0)
        lc_fail(LC_STATUS_ABI, 0);
    uint8_t *blobs = (uint8_t *)(call + 1);
    /* Blobs first: they may point into OUT itself. */
    lc_move(blobs, blob0, len0);
    lc_move(blobs + len0, blob1, len1);
    call->fn = fn;
    call->len0 = len0;
    call->len1 = len1;
    call->reserved = 0;
    call->a0 = a0;
    lc_out(LC_PORT_HOSTCALL, fn);

    const volatile struct lc_hostcall_result *res =
        (const volatile struct lc_hostcall_result *)(uintptr_t)LC_IN_BASE;
    uint32_t status = res->status;
    uint32_t len = res->len;
    uint64_t v = res->value;
    if ((uint64_t)len > LC_IN_SIZE - sizeof *res || (len != 0 && (resp == NULL || len > resp_cap)))
        lc_fail(LC_STATUS_ABI, 0);
    if (len != 0)
        lc_move(resp, (const void *)(uintptr_t)(LC_IN_BASE + sizeof *res), len);
    if (value != NULL)
        *value = v;
    if (resp_len != NULL)
        *resp_len = len;
    /* The call overwrote OUT (and IN): the event's response starts afresh. */
    lc_set_response(LC_STATUS_OK, 0);
    return status;
}

/* Entered from _start in ring 3 (rdi, rsi, rdx set by the host). Initialises
 * the runtime, reports ready, then serves one request per LC_PORT_DONE exit
 * forever. */
__attribute__((noreturn)) void lc_boot_main(uint64_t heap_base, uint64_t heap_size,
                                            uint64_t memory_cap)
{
    lc_heap_base = (uint8_t *)(uintptr_t)heap_base;
    lc_heap_size = heap_size;
    lc_memory_cap = memory_cap;
    lc_set_response(LC_STATUS_OK, 0);
    if (lc_setjmp(lc_event_env) == 0)
        lc_runtime_init();
    lc_out(LC_PORT_READY, LC_ABI_VERSION); /* init's status is in OUT */
    for (;;) {
        if (lc_setjmp(lc_event_env) == 0) {
            lc_set_response(LC_STATUS_OK, 0);
            lc_runtime_handle(IN_REQ, (uint32_t)LC_IN_SIZE, OUT_RESP, (uint32_t)LC_OUT_SIZE);
        }
        lc_out(LC_PORT_DONE, 0);
    }
}
