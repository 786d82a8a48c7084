/* test_core.c — the core runtime: fp16/bf16/fp8 conversions against independent references (exhaustive
 * where the domain allows), the thread pool (every task exactly once, per-thread indices never shared by
 * two running tasks, nesting, resizing, concurrent callers), error messages, tensor allocation limits and
 * dtype names. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "test.h"

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* xorshift64*: deterministic test inputs. */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void) {
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return (uint32_t)((g_rng * 2685821657736338717ull) >> 32);
}

/* ---------------------------------------------------------------------------------------------- */
/* fp16                                                                                            */
/* ---------------------------------------------------------------------------------------------- */

/* The value of an fp16 bit pattern, computed from the IEEE definition in double (independent of the
 * library's bit manipulation). */
static double fp16_value_ref(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0) v = ldexp((double)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexp(1.0 + m / 1024.0, e - 15);
    return s ? -v : v;
}

/* Round x (a float, as double) to fp16 by search: the nearest finite fp16 value, ties to the even
 * pattern, overflow to inf when |x| >= 65520 (the midpoint between 65504 and the next step 65536). */
static uint16_t fp16_round_ref(float xf) {
    double x = xf;
    uint16_t sign = signbit(xf) ? 0x8000 : 0;
    double a = fabs(x);
    if (isnan(x)) return 0x7e00;
    if (a >= 65520.0) return sign | 0x7c00;
    /* binary search the largest positive pattern <= a among 0..0x7bff (values increase with the bits) */
    int lo = 0, hi = 0x7bff;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (fp16_value_ref((uint16_t)mid) <= a) lo = mid;
        else hi = mid - 1;
    }
    if (lo == 0x7bff) return sign | 0x7bff;
    double d0 = a - fp16_value_ref((uint16_t)lo), d1 = fp16_value_ref((uint16_t)(lo + 1)) - a;
    int pick = d0 < d1 ? lo : d1 < d0 ? lo + 1 : ((lo & 1) ? lo + 1 : lo);
    return sign | (uint16_t)pick;
}

static void test_fp16(void) {
    /* every pattern: value matches the definition, and converting back gives the same pattern */
    int bad_val = 0, bad_trip = 0, bad_nan = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fp16_to_f32((uint16_t)h);
        double ref = fp16_value_ref((uint16_t)h);
        if (isnan(ref)) {
            uint16_t back = f32_to_fp16(f);
            if (!isnan(f) || (back & 0x7c00) != 0x7c00 || !(back & 0x3ff) || (back & 0x8000) != (h & 0x8000)) bad_nan++;
            continue;
        }
        if ((double)f != ref || !signbit(f) != !signbit(ref)) bad_val++;
        if (f32_to_fp16(f) != h) bad_trip++;
    }
    CHECK(bad_val == 0, "fp16_to_f32 differs from the IEEE definition for %d patterns", bad_val);
    CHECK(bad_trip == 0, "fp16 -> f32 -> fp16 is not the identity for %d patterns", bad_trip);
    CHECK(bad_nan == 0, "fp16 NaN round trip lost NaN-ness or sign for %d patterns", bad_nan);

    /* known values */
    CHECK(f32_to_fp16(1.0f) == 0x3c00 && f32_to_fp16(-2.0f) == 0xc000 && f32_to_fp16(65504.0f) == 0x7bff, "basics");
    CHECK(f32_to_fp16(0.0f) == 0x0000 && f32_to_fp16(-0.0f) == 0x8000, "signed zeros");
    CHECK(f32_to_fp16(INFINITY) == 0x7c00 && f32_to_fp16(-INFINITY) == 0xfc00, "infinities");
    CHECK((f32_to_fp16(NAN) & 0x7fff) > 0x7c00, "nan stays nan");
    CHECK(f32_to_fp16(u2f(0x7f800001u)) != 0x7c00 && (f32_to_fp16(u2f(0x7f800001u)) & 0x7fff) > 0x7c00,
          "a NaN whose payload lives only in the low bits stays NaN");
    CHECK(f32_to_fp16(65519.996f) == 0x7bff, "just below the overflow midpoint rounds to 65504");
    CHECK(f32_to_fp16(65520.0f) == 0x7c00 && f32_to_fp16(1e10f) == 0x7c00 && f32_to_fp16(-1e10f) == 0xfc00, "overflow");
    CHECK(f32_to_fp16(ldexpf(1, -24)) == 0x0001, "smallest subnormal");
    CHECK(f32_to_fp16(ldexpf(1, -25)) == 0x0000, "half the smallest subnormal ties to even zero");
    CHECK(f32_to_fp16(ldexpf(1.0000001f, -25)) == 0x0001, "just above half rounds up");
    CHECK(f32_to_fp16(ldexpf(3, -25)) == 0x0002, "1.5 x smallest ties to even (2)");
    CHECK(f32_to_fp16(ldexpf(5, -25)) == 0x0002, "2.5 x smallest ties to even (2)");
    CHECK(f32_to_fp16(ldexpf(1, -30)) == 0x0000 && f32_to_fp16(-ldexpf(1, -30)) == 0x8000, "underflow keeps sign");
    CHECK(f32_to_fp16(ldexpf(1023.5f, -24)) == 0x0400, "largest subnormal + half rounds up into the normals");
    CHECK(f32_to_fp16(ldexpf(1, -14)) == 0x0400, "smallest normal");
    CHECK(f32_to_fp16(1.0f + ldexpf(1, -11)) == 0x3c00, "1 + half ulp ties to even (down)");
    CHECK(f32_to_fp16(1.0f + 3 * ldexpf(1, -11)) == 0x3c02, "1 + 1.5 ulp ties to even (up)");
    CHECK(f32_to_fp16(2047.0f / 1024.0f * 1.0f + ldexpf(1, -11)) == 0x4000, "rounding carries into the exponent");

    /* every midpoint between neighbouring fp16 values, and one float step either side of it */
    int bad_mid = 0;
    for (uint32_t h = 0; h < 0x7bff; h++) {
        double a = fp16_value_ref((uint16_t)h), b = fp16_value_ref((uint16_t)(h + 1));
        float mid = (float)((a + b) / 2); /* exact: fp16 midpoints are representable in float */
        float below = nextafterf(mid, 0), above = nextafterf(mid, INFINITY);
        uint16_t want_mid = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        if (f32_to_fp16(mid) != want_mid || f32_to_fp16(-mid) != (0x8000 | want_mid)) bad_mid++;
        if (f32_to_fp16(below) != h || f32_to_fp16(above) != h + 1) bad_mid++;
    }
    CHECK(bad_mid == 0, "ties-to-even at fp16 midpoints failed %d times", bad_mid);

    /* random floats in and around the fp16 range against the search reference */
    int bad_rand = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = rnd32();
        /* exponent spread over [2^-30, 2^17]: underflow, subnormal, normal and overflow */
        u = (u & 0x807fffffu) | ((uint32_t)(97 + (rnd32() % 48)) << 23);
        float x = u2f(u);
        if (f32_to_fp16(x) != fp16_round_ref(x)) bad_rand++;
    }
    CHECK(bad_rand == 0, "f32_to_fp16 differs from the reference for %d of 200000 random floats", bad_rand);

    /* row forms equal the scalar ones */
    float src[37], dst[37];
    uint16_t h16[37], h16b[37];
    for (int i = 0; i < 37; i++) src[i] = (float)(i - 18) * 0.377f;
    f32_to_fp16_row(src, h16, 37);
    fp16_to_f32_row(h16, dst, 37);
    int bad_row = 0;
    for (int i = 0; i < 37; i++) {
        h16b[i] = f32_to_fp16(src[i]);
        if (h16[i] != h16b[i] || dst[i] != fp16_to_f32(h16[i])) bad_row++;
    }
    CHECK(bad_row == 0, "fp16 row conversions differ from scalar (%d)", bad_row);
}

/* ---------------------------------------------------------------------------------------------- */
/* bf16                                                                                            */
/* ---------------------------------------------------------------------------------------------- */

/* Round to bf16 in double: the two neighbours by truncation, nearest wins, ties to the even pattern. */
static uint16_t bf16_round_ref(float x) {
    if (isnan(x)) return 0x7fc0;
    uint32_t u = f2u(x);
    uint32_t lo = u & 0xffff0000u;
    double a = fabs((double)x), vlo = fabs((double)u2f(lo));
    if (a == vlo) return (uint16_t)(lo >> 16);
    uint32_t hi = lo + 0x10000u; /* next pattern away from zero (may be inf) */
    double vhi = (hi & 0x7fffffffu) >= 0x7f800000u ? ldexp(1.0, 128) : fabs((double)u2f(hi));
    double d0 = a - vlo, d1 = vhi - a;
    uint32_t pick = d0 < d1 ? lo : d1 < d0 ? hi : (((lo >> 16) & 1) ? hi : lo);
    return (uint16_t)(pick >> 16);
}

static void test_bf16(void) {
    int bad_val = 0, bad_trip = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = bf16_to_f32((uint16_t)h);
        if (f2u(f) != h << 16) bad_val++;
        uint16_t back = f32_to_bf16(f);
        if (isnan(f)) { if (!isnan(bf16_to_f32(back)) || (back & 0x8000) != (h & 0x8000)) bad_trip++; }
        else if (back != h) bad_trip++;
    }
    CHECK(bad_val == 0, "bf16_to_f32 is not a 16-bit shift for %d patterns", bad_val);
    CHECK(bad_trip == 0, "bf16 -> f32 -> bf16 not the identity for %d patterns", bad_trip);

    CHECK(f32_to_bf16(1.0f) == 0x3f80 && f32_to_bf16(-2.0f) == 0xc000, "basics");
    CHECK(f32_to_bf16(1.0f + ldexpf(1, -8)) == 0x3f80, "1 + half ulp ties to even (down)");
    CHECK(f32_to_bf16(1.0f + 3 * ldexpf(1, -8)) == 0x3f82, "1 + 1.5 ulp ties to even (up)");
    CHECK(f32_to_bf16(nextafterf(1.0f + ldexpf(1, -8), 2)) == 0x3f81, "just above half ulp rounds up");
    CHECK(f32_to_bf16(INFINITY) == 0x7f80 && f32_to_bf16(-INFINITY) == 0xff80, "infinities");
    CHECK(f32_to_bf16(3.4028235e38f) == 0x7f80, "FLT_MAX rounds to inf (as torch does)");
    CHECK(isnan(bf16_to_f32(f32_to_bf16(u2f(0x7f800001u)))), "NaN with low payload stays NaN");
    CHECK(isnan(bf16_to_f32(f32_to_bf16(u2f(0xffffffffu)))), "all-ones NaN stays NaN");
    CHECK(f32_to_bf16(u2f(0x00000001u)) == 0x0000 && f32_to_bf16(u2f(0x00008000u)) == 0x0000 &&
              f32_to_bf16(u2f(0x00018000u)) == 0x0002,
          "subnormals round to nearest even");
    int bad_rand = 0;
    for (int i = 0; i < 500000; i++) {
        float x = u2f(rnd32());
        if (isnan(x)) continue;
        if (f32_to_bf16(x) != bf16_round_ref(x)) bad_rand++;
    }
    CHECK(bad_rand == 0, "f32_to_bf16 differs from the reference for %d random floats", bad_rand);
    float src[19], dst[19];
    uint16_t b[19];
    for (int i = 0; i < 19; i++) src[i] = (float)i * -1.13f;
    f32_to_bf16_row(src, b, 19);
    bf16_to_f32_row(b, dst, 19);
    int bad_row = 0;
    for (int i = 0; i < 19; i++) bad_row += b[i] != f32_to_bf16(src[i]) || dst[i] != bf16_to_f32(b[i]);
    CHECK(bad_row == 0, "bf16 rows differ from scalar (%d)", bad_row);
}

/* ---------------------------------------------------------------------------------------------- */
/* fp8                                                                                             */
/* ---------------------------------------------------------------------------------------------- */

static void test_fp8(void) {
    CHECK(fp8e4m3_to_f32(0x38) == 1.0f, "e4m3 0x38 = 1");
    CHECK(fp8e4m3_to_f32(0x7e) == 448.0f, "e4m3 0x7e = 448 (max)");
    CHECK(fp8e4m3_to_f32(0xfe) == -448.0f, "e4m3 0xfe = -448");
    CHECK(isnan(fp8e4m3_to_f32(0x7f)) && isnan(fp8e4m3_to_f32(0xff)), "e4m3 0x7f/0xff are NaN");
    CHECK(fp8e4m3_to_f32(0x78) == 256.0f, "e4m3 0x78 = 256 (exponent 15 is finite in e4m3fn)");
    CHECK(fp8e4m3_to_f32(0x40) == 2.0f && fp8e4m3_to_f32(0xb8) == -1.0f && fp8e4m3_to_f32(0x3c) == 1.5f, "e4m3 small");
    CHECK(fp8e4m3_to_f32(0x08) == ldexpf(1, -6), "e4m3 smallest normal 2^-6");
    CHECK(fp8e4m3_to_f32(0x01) == ldexpf(1, -9) && fp8e4m3_to_f32(0x07) == ldexpf(7, -9), "e4m3 subnormals");
    CHECK(fp8e4m3_to_f32(0x00) == 0.0f && signbit(fp8e4m3_to_f32(0x80)), "e4m3 signed zeros");
    /* monotonic over the positive finite range: a decoding table without holes */
    int mono = 1;
    for (int v = 1; v < 0x7f; v++) mono &= fp8e4m3_to_f32((uint8_t)v) > fp8e4m3_to_f32((uint8_t)(v - 1));
    CHECK(mono, "e4m3 positive values strictly increase with the pattern");
    CHECK(fp8e5m2_to_f32(0x3c) == 1.0f && fp8e5m2_to_f32(0x7b) == 57344.0f, "e5m2 1 and max 57344");
    CHECK(isinf(fp8e5m2_to_f32(0x7c)) && isnan(fp8e5m2_to_f32(0x7e)) && fp8e5m2_to_f32(0x01) == ldexpf(1, -16),
          "e5m2 inf, nan, smallest subnormal");
    tensor t = {.dt = DT_F8_E4M3, .ndim = 1, .shape = {3}};
    uint8_t raw[3] = {0x38, 0x7e, 0xb8};
    t.data = raw;
    float out[3];
    tensor_to_f32(&t, 0, 3, out);
    CHECK(out[0] == 1.0f && out[1] == 448.0f && out[2] == -1.0f, "tensor_to_f32 decodes F8_E4M3");
}

/* ---------------------------------------------------------------------------------------------- */
/* Thread pool                                                                                     */
/* ---------------------------------------------------------------------------------------------- */

#define MAXT 10000
typedef struct {
    atomic_int count[MAXT];
    atomic_int busy[256];      /* per thread index: a task is running with it */
    atomic_int shared_index;   /* two running tasks were given the same thread index */
    atomic_int bad_thread;     /* thread index outside [0, pool_threads()) */
    int nthreads;
} job;

/* Count the task and check that its thread index is in range and not in use by another running task. */
static void count_task(void *arg, int task, int thread) {
    job *j = arg;
    if (thread < 0 || thread >= j->nthreads || thread >= 256) { atomic_fetch_add(&j->bad_thread, 1); return; }
    if (atomic_exchange(&j->busy[thread], 1)) atomic_fetch_add(&j->shared_index, 1);
    atomic_fetch_add(&j->count[task], 1);
    for (volatile int spin = 0; spin < 200; spin++) {}
    atomic_store(&j->busy[thread], 0);
}

/* Run n_tasks and check every index ran exactly once. */
static void check_cover(job *j, int n_tasks) {
    memset(j, 0, sizeof *j);
    j->nthreads = pool_threads();
    pool_run(n_tasks, count_task, j);
    int wrong = 0;
    for (int i = 0; i < n_tasks; i++) wrong += atomic_load(&j->count[i]) != 1;
    for (int i = n_tasks; i < MAXT; i++) wrong += atomic_load(&j->count[i]) != 0;
    CHECK(wrong == 0, "threads=%d n_tasks=%d: %d tasks not run exactly once", j->nthreads, n_tasks, wrong);
    CHECK(atomic_load(&j->bad_thread) == 0, "threads=%d n_tasks=%d: thread index out of range", j->nthreads, n_tasks);
    CHECK(atomic_load(&j->shared_index) == 0, "threads=%d n_tasks=%d: a thread index was used by two running tasks",
          j->nthreads, n_tasks);
}

/* Nested: each outer task runs an inner pool_run; inner tasks must see the outer task's thread index
 * (a kernel's per-thread scratch is indexed by it, so handing out 0 from every worker would race). */
typedef struct {
    atomic_int count[64 * 33];
    atomic_int busy[256];
    atomic_int thread_mismatch, shared_index;
} nest_job;
typedef struct { nest_job *j; int outer, outer_thread; } inner_arg;

static void inner_task(void *arg, int task, int thread) {
    inner_arg *a = arg;
    atomic_fetch_add(&a->j->count[a->outer * 33 + task], 1);
    if (thread != a->outer_thread) atomic_fetch_add(&a->j->thread_mismatch, 1);
}

static void outer_task(void *arg, int task, int thread) {
    nest_job *j = arg;
    if (thread >= 0 && thread < 256 && atomic_exchange(&j->busy[thread], 1)) atomic_fetch_add(&j->shared_index, 1);
    inner_arg a = {j, task, thread};
    pool_run(33, inner_task, &a);
    if (thread >= 0 && thread < 256) atomic_store(&j->busy[thread], 0);
}

typedef struct { job j; int rounds; } caller_arg;
static void *external_caller(void *va) {
    caller_arg *c = va;
    for (int r = 0; r < c->rounds; r++) {
        memset(&c->j, 0, sizeof c->j);
        c->j.nthreads = pool_threads();
        pool_run(257, count_task, &c->j);
        for (int i = 0; i < 257; i++)
            if (atomic_load(&c->j.count[i]) != 1) return (void *)1;
    }
    return NULL;
}

static void test_pool(void) {
    static job j;
    static const int sizes[] = {0, 1, 2, 3, 5, 7, 16, 63, 64, 65, 100, 1000, 4097, MAXT};
    static const int threads[] = {1, 2, 3, 0};
    for (size_t ti = 0; ti < sizeof threads / sizeof threads[0]; ti++) {
        pool_set_threads(threads[ti]);
        if (threads[ti]) CHECK(pool_threads() == threads[ti], "pool_set_threads(%d) -> %d", threads[ti], pool_threads());
        else CHECK(pool_threads() == cpu_count() || pool_threads() == 256, "pool_set_threads(0) -> cores (%d vs %d)",
                   pool_threads(), cpu_count());
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) check_cover(&j, sizes[si]);
        for (int rep = 0; rep < 200; rep++) {  /* many small jobs back to back: wake-up races */
            memset(&j, 0, sizeof j);
            j.nthreads = pool_threads();
            pool_run(5, count_task, &j);
            int ok = 1;
            for (int i = 0; i < 5; i++) ok &= atomic_load(&j.count[i]) == 1;
            if (!ok) { CHECK(0, "threads=%d: repeated small job %d lost a task", threads[ti], rep); break; }
        }
        static nest_job nj;
        memset(&nj, 0, sizeof nj);
        pool_run(64, outer_task, &nj);
        int wrong = 0;
        for (int i = 0; i < 64 * 33; i++) wrong += atomic_load(&nj.count[i]) != 1;
        CHECK(wrong == 0, "threads=%d: nested pool_run: %d inner tasks not run exactly once", threads[ti], wrong);
        CHECK(atomic_load(&nj.shared_index) == 0, "threads=%d: nested: outer thread index shared", threads[ti]);
        CHECK(atomic_load(&nj.thread_mismatch) == 0,
              "threads=%d: nested pool_run hands inner tasks a thread index other than the caller's (%d times); "
              "per-thread scratch indexed by it would be shared between workers",
              threads[ti], atomic_load(&nj.thread_mismatch));
    }
    /* two outside threads calling pool_run at once are serialised, not mixed */
    pool_set_threads(3);
    static caller_arg ca[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) { ca[i].rounds = 50; pthread_create(&th[i], NULL, external_caller, &ca[i]); }
    void *r0, *r1;
    pthread_join(th[0], &r0);
    pthread_join(th[1], &r1);
    CHECK(r0 == NULL && r1 == NULL, "concurrent callers each got all their tasks");
    pool_set_threads(0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Errors                                                                                          */
/* ---------------------------------------------------------------------------------------------- */

static void test_errors(void) {
    sd3_err e;
    sd3_err_clear(&e);
    CHECK(e.status == SD3_OK && e.msg[0] == 0, "clear");
    CHECK(sd3_errf(&e, SD3_ERR_FORMAT, "%s: tensor '%s' bad (%d)", "a.safetensors", "w", 3) == SD3_ERR_FORMAT,
          "errf returns its status");
    CHECK(e.status == SD3_ERR_FORMAT && !strcmp(e.msg, "a.safetensors: tensor 'w' bad (3)"), "errf message: %s", e.msg);
    sd3_err_prefix(&e, "%s", "model/vae");
    CHECK(!strcmp(e.msg, "model/vae: a.safetensors: tensor 'w' bad (3)"), "prefix: %s", e.msg);
    CHECK(e.status == SD3_ERR_FORMAT, "prefix keeps the status");
    CHECK(sd3_errf(NULL, SD3_ERR_IO, "x %d", 1) == SD3_ERR_IO, "errf on NULL err returns the status");
    sd3_err_prefix(NULL, "x");
    sd3_err_clear(NULL);

    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    sd3_errf(&e, SD3_ERR_IO, "%s", big);
    CHECK(strlen(e.msg) == sizeof e.msg - 1, "long message truncated to %zu", strlen(e.msg));
    sd3_err_prefix(&e, "pre");
    CHECK(strlen(e.msg) == sizeof e.msg - 1 && !strncmp(e.msg, "pre: xxx", 8), "prefix on a full message stays bounded");
    sd3_errf(&e, SD3_ERR_IO, "tail");
    sd3_err_prefix(&e, "%s", big);
    CHECK(strlen(e.msg) < sizeof e.msg && e.msg[0] == 'x', "huge prefix stays bounded (%zu)", strlen(e.msg));
    sd3_err_clear(&e);
    sd3_err_prefix(&e, "only");
    CHECK(!strcmp(e.msg, "only: "), "prefix on an empty message: '%s'", e.msg);
    sd3_errf(&e, SD3_ERR_IO, "%s", "100% sure");
    sd3_err_prefix(&e, "%s", "%d%s");
    CHECK(!strcmp(e.msg, "%d%s: 100% sure"), "format characters in arguments are not re-interpreted: %s", e.msg);

    int distinct = 1;
    for (int a = SD3_OK; a <= SD3_ERR_INTERNAL; a++) {
        CHECK(sd3_status_str((sd3_status)a) && *sd3_status_str((sd3_status)a), "status %d has a name", a);
        for (int b = a + 1; b <= SD3_ERR_INTERNAL; b++)
            distinct &= strcmp(sd3_status_str((sd3_status)a), sd3_status_str((sd3_status)b)) != 0;
    }
    CHECK(distinct, "status names are distinct");
    CHECK(sd3_status_str((sd3_status)999) != NULL, "unknown status still has a string");
}

/* ---------------------------------------------------------------------------------------------- */
/* Tensors and dtypes                                                                              */
/* ---------------------------------------------------------------------------------------------- */

static void test_tensors(void) {
    sd3_err err = {0};
    tensor t;
    int64_t s23[2] = {2, 3};
    CHECK(tensor_alloc(&t, DT_F32, 2, s23, &err) == SD3_OK && t.owned && t.data, "alloc [2, 3]: %s", err.msg);
    CHECK(tensor_numel(&t) == 6 && tensor_nbytes(&t) == 24, "numel/nbytes");
    CHECK(((uintptr_t)t.data & 63) == 0, "64-byte aligned");
    int zero = 1;
    for (int i = 0; i < 6; i++) zero &= ((float *)t.data)[i] == 0.0f;
    CHECK(zero, "zeroed");
    char buf[64];
    CHECK(!strcmp(tensor_shape_str(&t, buf, sizeof buf), "[2, 3]"), "shape str %s", buf);
    char tiny[4];
    tensor_shape_str(&t, tiny, sizeof tiny);
    CHECK(strlen(tiny) == 3, "shape str truncates safely: '%s'", tiny);
    tensor_free(&t);
    CHECK(t.data == NULL && t.owned == 0 && t.ndim == 0, "free zeroes the descriptor");
    tensor_free(&t); /* twice is harmless */

    CHECK(tensor_alloc(&t, DT_F32, 0, NULL, &err) == SD3_OK && tensor_numel(&t) == 1 && t.data, "rank 0 scalar");
    tensor_free(&t);
    int64_t s05[2] = {0, 5};
    CHECK(tensor_alloc(&t, DT_BF16, 2, s05, &err) == SD3_OK && tensor_numel(&t) == 0 && tensor_nbytes(&t) == 0,
          "empty tensor allocates: %s", err.msg);
    tensor_free(&t);

    int64_t neg[2] = {4, -1};
    CHECK(tensor_alloc(&t, DT_F32, 2, neg, &err) != SD3_OK && t.data == NULL && !t.owned, "negative dim refused: %s",
          err.msg);
    int64_t ovf[2] = {INT64_MAX / 2, 3};
    CHECK(tensor_alloc(&t, DT_F32, 2, ovf, &err) == SD3_ERR_NOMEM && t.data == NULL, "numel overflow refused: %s",
          err.msg);
    int64_t ovf2[4] = {1ll << 31, 1ll << 31, 1ll << 31, 0};
    CHECK(tensor_alloc(&t, DT_F32, 3, ovf2, &err) == SD3_ERR_NOMEM && t.data == NULL, "2^93 elements refused: %s",
          err.msg);
    int64_t bytes_ovf[1] = {1ll << 62};
    CHECK(tensor_alloc(&t, DT_F32, 1, bytes_ovf, &err) == SD3_ERR_NOMEM && t.data == NULL,
          "numel fits int64 but bytes overflow size_t: refused: %s", err.msg);
    int64_t s5[5] = {1, 1, 1, 1, 1};
    CHECK(tensor_alloc(&t, DT_F32, 5, s5, &err) != SD3_OK && t.data == NULL, "rank 5 refused: %s", err.msg);
    CHECK(tensor_alloc(&t, DT_F32, -1, s5, &err) != SD3_OK && t.data == NULL, "rank -1 refused");
    CHECK(sd3_calloc(SIZE_MAX / 2, 4) == NULL && sd3_malloc(SIZE_MAX - 10) == NULL, "allocator overflow checks");

    /* dtype names */
    static const struct { const char *name; dtype dt; size_t size; } D[] = {
        {"F32", DT_F32, 4}, {"F16", DT_F16, 2}, {"BF16", DT_BF16, 2}, {"F64", DT_F64, 8}, {"I64", DT_I64, 8},
        {"I32", DT_I32, 4}, {"I16", DT_I16, 2}, {"I8", DT_I8, 1}, {"U8", DT_U8, 1}, {"BOOL", DT_BOOL, 1},
        {"F8_E4M3", DT_F8_E4M3, 1}, {"F8_E5M2", DT_F8_E5M2, 1},
    };
    for (size_t i = 0; i < sizeof D / sizeof D[0]; i++) {
        dtype dt = DT_COUNT;
        CHECK(dtype_parse(D[i].name, &dt) == 0 && dt == D[i].dt, "parse %s", D[i].name);
        CHECK(!strcmp(dtype_name(D[i].dt), D[i].name) && dtype_size(D[i].dt) == D[i].size, "name/size of %s", D[i].name);
    }
    static const char *bad[] = {"", "f32", "F32 ", " F32", "FLOAT", "Q8_ROW", "F8", "U16x", "?"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dtype dt = DT_F64;
        CHECK(dtype_parse(bad[i], &dt) == -1 && dt == DT_F64, "'%s' is not a dtype and *dt is untouched", bad[i]);
    }
    CHECK(dtype_size(DT_COUNT) == 0 && dtype_size((dtype)-1) == 0 && !strcmp(dtype_name(DT_COUNT), "?"),
          "out-of-range dtypes");

    /* element access across float dtypes */
    uint16_t h[2] = {0x3c00, 0xc000}, b[2] = {0x3f80, 0x4040};
    double d[2] = {0.25, -8};
    tensor th = {.dt = DT_F16, .ndim = 1, .shape = {2}, .data = h};
    tensor tb = {.dt = DT_BF16, .ndim = 1, .shape = {2}, .data = b};
    tensor td = {.dt = DT_F64, .ndim = 1, .shape = {2}, .data = d};
    CHECK(tensor_get_f32(&th, 1) == -2.0f && tensor_get_f32(&tb, 1) == 3.0f && tensor_get_f32(&td, 1) == -8.0f,
          "tensor_get_f32 over F16/BF16/F64");
    float o[2];
    tensor_to_f32(&tb, 0, 2, o);
    CHECK(o[0] == 1.0f && o[1] == 3.0f, "tensor_to_f32 BF16");
    tensor_to_f32(&td, 1, 1, o);
    CHECK(o[0] == -8.0f, "tensor_to_f32 F64 with offset");
}

int main(void) {
    test_fp16();
    test_bf16();
    test_fp8();
    test_pool();
    test_errors();
    test_tensors();
    TEST_MAIN_END("test_core");
}
