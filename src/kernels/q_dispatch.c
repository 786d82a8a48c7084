/* q_dispatch.c — k_linear_q: picks the quantised-linear variant (AVX-512 VNNI, AVX2, or the scalar reference
 * threaded over rows) for the CPU, the cap set by k_q_set_isa_cap and SD3_FORCE_REF / cpu_force_ref. */
#include <string.h>
#include "kernels/kernels.h"
#include "kernels/kernels_q.h"

static int g_qcap = K_ISA_ANY;

int k_q_set_isa_cap(int level) { int o = g_qcap; g_qcap = level; return o; }

/* Whether the AVX-512 / AVX2 variant takes this weight (the same conditions their entry points check). */
static int avx512_ok(const tensor *W, int K) {
    const cpu_features *f = cpu_get();
    if (cpu_ref_forced() || g_qcap < K_ISA_AVX512 || !f->avx512f || !f->avx512bw || !f->avx512_vnni) return 0;
    if (W->dt == DT_Q8 && W->qblock == K) return 1;
    return W->qblock > 0 && W->qblock % 4 == 0 && K % W->qblock == 0 && (W->dt == DT_Q8 || W->qblock == 32);
}
static int avx2_ok(const tensor *W, int K) {
    const cpu_features *f = cpu_get();
    if (cpu_ref_forced() || g_qcap < K_ISA_AVX2 || !f->avx2 || !f->fma) return 0;
    if (W->dt == DT_Q8 && W->qblock == K) return 1;
    return W->qblock > 0 && W->qblock % 32 == 0 && K % W->qblock == 0 && (W->dt == DT_Q8 || W->qblock == 32);
}

const char *k_linear_q_variant(const tensor *W) {
    int K = W->ndim >= 1 ? (int)W->shape[W->ndim - 1] : 0;
    if (cpu_ref_forced()) return "ref";
    if (avx512_ok(W, K)) return "avx512_vnni";
    if (avx2_ok(W, K)) return "avx2_maddubs";
    return "ref_threaded";
}

/* Reference fallback split over the pool by rows. */
typedef struct { float *y; const float *x; const tensor *W, *b; int M, N, K, chunk; } qref_job;

static void qref_task(void *a, int t, int thread) {
    (void)thread;
    qref_job *j = a;
    int m0 = t * j->chunk, m1 = m0 + j->chunk < j->M ? m0 + j->chunk : j->M;
    if (m0 < m1) k_linear_q_ref(j->y + (int64_t)m0 * j->N, j->x + (int64_t)m0 * j->K, j->W, j->b, m1 - m0, j->N, j->K);
}

void k_linear_q(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K) {
    SD3_ASSERT(W->dt == DT_Q8 || W->dt == DT_Q4);
    if (M <= 0 || N <= 0) return;
    if (cpu_ref_forced()) { k_linear_q_ref(y, x, W, b, M, N, K); return; }
    float stackb[2048], *bf = NULL;
    if (b) {
        bf = N <= 2048 ? stackb : sd3_malloc(sizeof(float) * (size_t)N);
        SD3_ASSERT(bf);
        tensor_to_f32(b, 0, N, bf);
    }
    int done = 0;
    if (avx512_ok(W, K)) done = kq_linear_avx512(y, x, W, bf, M, N, K);
    if (!done && avx2_ok(W, K)) done = kq_linear_avx2(y, x, W, bf, M, N, K);
    if (bf && bf != stackb) sd3_free(bf);
    if (done) return;
    int nt = pool_threads(), chunk = (M + nt - 1) / nt;
    if (chunk < 1) chunk = 1;
    qref_job j = {y, x, W, b, M, N, K, chunk};
    pool_run((M + chunk - 1) / chunk, qref_task, &j);
}

void k_quant_weight_row(const float *w, int K, int qb, int qmax, int8_t *q, float *s) {
    const cpu_features *f = cpu_get();
    if (!cpu_ref_forced() && g_qcap >= K_ISA_AVX512 && f->avx512f && f->avx512bw && kq_quant_weight_row_avx512(w, K, qb, qmax, q, s))
        return;
    k_quant_weight_row_ref(w, K, qb, qmax, q, s);
}
