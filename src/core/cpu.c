/* cpu.c — CPU feature detection (cpuid + xgetbv on x86, compile-time on arm64), once per process. */
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include "core/core.h"
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static cpu_features g_cpu;
static pthread_once_t g_cpu_once = PTHREAD_ONCE_INIT;
static int g_force_ref = -1;

#if defined(__x86_64__) || defined(__i386__)
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

static void cpu_detect(void) {
    memset(&g_cpu, 0, sizeof g_cpu);
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    g_cpu.fma = (c >> 12) & 1;
    g_cpu.f16c = (c >> 29) & 1;
    uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    int ymm_ok = avx && (xcr0 & 6) == 6;
    int zmm_ok = ymm_ok && (xcr0 & 0xe0) == 0xe0;
    if (!ymm_ok) { g_cpu.fma = g_cpu.f16c = 0; return; }
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        g_cpu.avx2 = (b >> 5) & 1;
        if (zmm_ok) {
            g_cpu.avx512f = (b >> 16) & 1;
            g_cpu.avx512bw = (b >> 30) & 1;
            g_cpu.avx512vl = (b >> 31) & 1;
            g_cpu.avx512_vnni = (c >> 11) & 1;
        }
    }
    if (zmm_ok && __get_cpuid_count(7, 1, &a, &b, &c, &d)) g_cpu.avx512_bf16 = (a >> 5) & 1;
#elif defined(__aarch64__)
    g_cpu.neon = 1;
#endif
}

const cpu_features *cpu_get(void) {
    pthread_once(&g_cpu_once, cpu_detect);
    return &g_cpu;
}

void cpu_force_ref(int on) { g_force_ref = on; }

int cpu_ref_forced(void) {
    if (g_force_ref < 0) {
        const char *e = getenv("SD3_FORCE_REF");
        g_force_ref = (e && *e && strcmp(e, "0") != 0);
    }
    return g_force_ref;
}

int cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

const char *sd3_cpu_features(void) {
    static char buf[256];
    const cpu_features *f = cpu_get();
    snprintf(buf, sizeof buf, "%s%s%s%s%s%s%s%s%s", f->avx2 ? "avx2 " : "", f->fma ? "fma " : "",
             f->f16c ? "f16c " : "", f->avx512f ? "avx512f " : "", f->avx512bw ? "avx512bw " : "",
             f->avx512_bf16 ? "avx512_bf16 " : "", f->avx512_vnni ? "avx512_vnni " : "",
             f->neon ? "neon " : "", cpu_ref_forced() ? "(forced portable) " : "");
    size_t n = strlen(buf);
    if (n && buf[n - 1] == ' ') buf[n - 1] = 0;
    if (!buf[0]) snprintf(buf, sizeof buf, "portable");
    return buf;
}
