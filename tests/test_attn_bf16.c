/* test_attn_bf16.c — the bf16 flash-attention tile (vdpbf16ps) against its portable twin.
 *
 * Both round q·scale·log2(e), k, v and the unnormalised weights P to bf16 at the same points, run the same
 * base-2 softmax with the lazily moved maximum, and accumulate in F32, so
 * they differ only by the order of F32 additions (bounded as in test_kernels' F32 attention test:
 * max|v|·(2·(D+2)·u·scale·Σ|q||k| + (4·sqrt(Tk) + 32)·u)) plus the rare P whose bf16 rounding flips
 * because its score moved by an ulp: each flip moves the output by <= 2^-8·w_j·max|v| (w_j that key's
 * softmax weight). We allow two flips at the row's largest weight, computed here in double (a flip needs
 * a score to move across a rounding boundary: ~1e-7 relative against a 2^-8 spacing, so even one per row
 * is rare). A twin that rounds q, P or v at other points (or not at all) fails most cases (checked by
 * mutation when this test was written). */
#include <math.h>
#include <stdlib.h>
#include "kernels/cpu/kcpu.h"
#include "test.h"

#define U 5.9604644775390625e-8 /* 2^-24 */

static unsigned g_seed = 12345u;
static float frand(float lo, float hi) {
    g_seed = g_seed * 1103515245u + 12345u;
    return lo + (hi - lo) * (float)((g_seed >> 8) & 0xffffff) / 16777216.0f;
}

/* Largest softmax weight of row i (batch b, head h), in double from the unrounded inputs. */
static double row_wmax(const float *q, const float *k, const attn_params *p, int b, int h, int i) {
    int nk = p->causal ? (i + 1 < p->Tk ? i + 1 : p->Tk) : p->Tk;
    double mx = -INFINITY, sum = 0, *s = malloc(sizeof(double) * (size_t)(nk > 0 ? nk : 1));
    for (int j = 0; j < nk; j++) {
        const float *qi = q + b * p->q_bstride + (int64_t)i * p->q_ld + (int64_t)h * p->D;
        const float *kj = k + b * p->k_bstride + (int64_t)j * p->k_ld + (int64_t)h * p->D;
        double a = 0;
        for (int d = 0; d < p->D; d++) a += (double)qi[d] * kj[d];
        a *= p->scale;
        if (p->bias) a += p->bias[((int64_t)h * p->Tq + i) * p->Tk + j];
        s[j] = a;
        if (a > mx) mx = a;
    }
    for (int j = 0; j < nk; j++) sum += exp(s[j] - mx);
    free(s);
    return nk ? 1.0 / sum : 0.0; /* the largest weight is e^0 / sum */
}

/* One case on separate, padded q/k/v buffers; values in [-amp, amp] (amp > 1 sharpens the softmax). */
static void twin_case(const kc_isa *isa, int B, int H, int Tq, int Tk, int D, int causal, int with_bias, float amp) {
    attn_params p = {.B = B, .H = H, .Tq = Tq, .Tk = Tk, .D = D, .scale = 1.0f / sqrtf((float)D), .causal = causal};
    int64_t HD = (int64_t)H * D;
    p.q_ld = HD + 3; p.k_ld = HD + 5; p.v_ld = HD;
    p.q_bstride = Tq * p.q_ld + 7; p.k_bstride = Tk * p.k_ld; p.v_bstride = Tk * p.v_ld + 1;
    p.o_ld = HD + 1; p.o_bstride = Tq * p.o_ld + 2;
    size_t nq = (size_t)(B * p.q_bstride), nk = (size_t)(B * p.k_bstride), nv = (size_t)(B * p.v_bstride), no = (size_t)(B * p.o_bstride);
    float *q = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nk), *v = malloc(sizeof(float) * nv);
    float *o = malloc(sizeof(float) * no), *ot = malloc(sizeof(float) * no), *bias = NULL;
    for (size_t i = 0; i < nq; i++) q[i] = frand(-amp, amp);
    for (size_t i = 0; i < nk; i++) k[i] = frand(-amp, amp);
    for (size_t i = 0; i < nv; i++) v[i] = frand(-1, 1);
    if (with_bias) {
        bias = malloc(sizeof(float) * (size_t)H * Tq * Tk);
        for (size_t i = 0; i < (size_t)H * Tq * Tk; i++) bias[i] = frand(-2, 2);
        p.bias = bias;
    }
    for (size_t i = 0; i < no; i++) o[i] = ot[i] = 0.125f; /* gaps stay untouched */
    kc_attention(isa, 1, o, q, k, v, &p);
    kc_attention(kc_isa_portable(), 1, ot, q, k, v, &p);
    double base = 2.0 * (D + 2) * U * p.scale * D * amp * amp + (4.0 * sqrt((double)Tk) + 32.0) * U;
    int bad = 0;
    double worst = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                double tol = base + 2.0 / 256.0 * row_wmax(q, k, &p, b, h, i);
                for (int d = 0; d < D; d++) {
                    size_t at = (size_t)(b * p.o_bstride + (int64_t)i * p.o_ld + (int64_t)h * D + d);
                    double diff = fabs((double)o[at] - ot[at]);
                    if (!(diff <= tol)) bad++;
                    if (diff / tol > worst) worst = diff / tol;
                }
            }
    size_t gaps_bad = 0;
    for (int b = 0; b < B; b++) /* outside the outputs nothing was written */
        for (int i = 0; i < Tq; i++)
            if (o[b * p.o_bstride + (int64_t)i * p.o_ld + HD] != 0.125f) gaps_bad++;
    CHECK(bad == 0 && gaps_bad == 0, "B=%d H=%d Tq=%d Tk=%d D=%d causal=%d bias=%d amp=%g: %d outputs off (worst %.2f of tol), %zu gaps written",
          B, H, Tq, Tk, D, causal, with_bias, amp, bad, worst, gaps_bad);
    free(q); free(k); free(v); free(o); free(ot); free(bias);
}

int main(void) {
    const kc_isa *isa = kc_isa_avx512();
    const cpu_features *f = cpu_get();
    if (!isa || !isa->attn_tile_bf16 || !(f->avx512f && f->avx512bw && f->avx512_bf16)) {
        printf("no AVX-512 BF16 on this CPU: the bf16 attention tile is not used here\n");
        /* the twin alone still has to agree with the F32 portable tile to the bf16 bound */
        attn_params p = {.B = 1, .H = 1, .Tq = 5, .Tk = 9, .D = 8, .scale = 0.35f, .q_ld = 8, .k_ld = 8, .v_ld = 8, .o_ld = 8,
                         .q_bstride = 40, .k_bstride = 72, .v_bstride = 72, .o_bstride = 40};
        float q[40], k[72], v[72], o[40], of[40];
        for (int i = 0; i < 72; i++) { k[i] = frand(-1, 1); v[i] = frand(-1, 1); if (i < 40) q[i] = frand(-1, 1); }
        kc_attention(kc_isa_portable(), 1, o, q, k, v, &p);
        kc_attention(kc_isa_portable(), 0, of, q, k, v, &p);
        double worst = 0;
        for (int i = 0; i < 40; i++) worst = fmax(worst, fabs((double)o[i] - of[i]));
        CHECK(worst < 2.0 * 0.35 * 8 / 256.0 + 3.0 / 512.0, "twin vs F32: %g", worst);
        TEST_MAIN_END("test_attn_bf16");
    }
    pool_set_threads(2);
    twin_case(isa, 1, 1, 1, 1, 8, 0, 0, 1.0f);
    twin_case(isa, 1, 1, 1, 1, 8, 1, 0, 1.0f);
    twin_case(isa, 2, 3, 37, 37, 64, 1, 0, 1.0f);
    twin_case(isa, 2, 3, 37, 37, 64, 0, 0, 3.0f);
    twin_case(isa, 2, 4, 50, 50, 16, 1, 0, 1.0f);
    twin_case(isa, 2, 2, 20, 77, 64, 0, 1, 1.0f);
    twin_case(isa, 1, 2, 130, 70, 64, 1, 0, 2.0f);   /* Tq > Tk, causal */
    twin_case(isa, 1, 2, 70, 130, 64, 1, 1, 1.0f);   /* Tq < Tk, causal + bias */
    twin_case(isa, 1, 1, 33, 65, 8, 0, 0, 1.0f);     /* odd Tk: a key pair with one key */
    twin_case(isa, 1, 2, 45, 29, 24, 0, 1, 1.0f);
    twin_case(isa, 1, 1, 17, 100, 80, 0, 0, 1.0f);   /* D = 80: a partial chunk of 64 */
    twin_case(isa, 1, 1, 9, 40, 7, 0, 0, 1.0f);      /* odd D: a pair with one element */
    twin_case(isa, 1, 1, 20, 300, 512, 0, 0, 0.3f);  /* VAE-like: one head of 512 */
    twin_case(isa, 2, 24, 70, 70, 64, 0, 0, 1.0f);   /* many heads: one task per head */
    TEST_MAIN_END("test_attn_bf16");
}
