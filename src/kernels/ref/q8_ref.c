/* q8_ref.c — scalar reference twin of the quantised linear (DT_Q8 / DT_Q4 weights): the definition in
 * kernels_q.h written as plain loops. Every fast variant is tested against it bit for bit. */
#include <math.h>
#include <string.h>
#include "kernels/kernels_q.h"

/* Quantise one activation row: scale max|x| / 127, codes nearbyint(x * (127 / max|x|)) clamped to +-127
 * (the rule in kernels_q.h; the fast variants reproduce it exactly). */
float k_quant_act_row_ref(int8_t *q, const float *x, int K) {
    float amax = 0.0f;
    int finite = 1;
    for (int k = 0; k < K; k++) {
        float a = fabsf(x[k]);
        finite &= isfinite(a) != 0;
        if (a > amax) amax = a;
    }
    if (!finite || amax == 0.0f) {
        /* an all-zero row has scale 0; a row with Inf/NaN has no meaningful codes: scale NaN, so the
         * outputs are NaN as the float product's would be */
        memset(q, 0, (size_t)(K > 0 ? K : 0));
        return finite ? 0.0f : NAN;
    }
    float inv = 127.0f / amax;
    for (int k = 0; k < K; k++) {
        float v = nearbyintf(x[k] * inv);
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[k] = (int8_t)v;
    }
    return amax / 127.0f;
}

/* Weight code k of row n (q in [-127, 127] for Q8, [-8, 7] for Q4). */
static inline int wcode(const tensor *W, int64_t n, int64_t K, int64_t k) {
    if (W->dt == DT_Q8) return ((const int8_t *)W->data)[n * K + k];
    uint8_t byte = ((const uint8_t *)W->data)[n * (K / 2) + (k / 32) * 16 + (k % 16)];
    return ((k % 32) < 16 ? (byte & 15) : (byte >> 4)) - 8;
}

void k_linear_q_ref(float *y, const float *x, const tensor *W, const tensor *b, int M, int N, int K) {
    SD3_ASSERT(W->dt == DT_Q8 || W->dt == DT_Q4);
    SD3_ASSERT(W->qscale && W->qblock > 0 && K % W->qblock == 0 && K <= 65536);
    SD3_ASSERT(W->dt == DT_Q8 || (W->qblock == 32 && K % 32 == 0));
    int qb = W->qblock, nb = K / qb;
    int8_t *qa = malloc((size_t)(K > 0 ? K : 1));
    SD3_ASSERT(qa);
    for (int m = 0; m < M; m++) {
        float sa = k_quant_act_row_ref(qa, x + (int64_t)m * K, K);
        for (int n = 0; n < N; n++) {
            float acc = 0.0f;
            for (int bl = 0; bl < nb; bl++) {
                int32_t d = 0;
                for (int k = bl * qb; k < (bl + 1) * qb; k++) d += (int32_t)qa[k] * wcode(W, n, K, k);
                acc = fmaf((float)d, W->qscale[(int64_t)n * nb + bl], acc);
            }
            y[(int64_t)m * N + n] = fmaf(acc, sa, b ? tensor_get_f32(b, n) : 0.0f);
        }
    }
    free(qa);
}

void k_quant_weight_row_ref(const float *w, int K, int qb, int qmax, int8_t *q, float *s) {
    const float fq = (float)qmax;
    for (int b = 0; b < K / qb; b++) {
        float amax = 0.0f;
        for (int k = b * qb; k < (b + 1) * qb; k++) {
            float a = fabsf(w[k]);
            if (a > amax || isnan(a)) amax = isnan(a) ? INFINITY : a;
        }
        float sc = isfinite(amax) ? amax / fq : NAN;
        s[b] = sc;
        for (int k = b * qb; k < (b + 1) * qb; k++) {
            float v = sc > 0.0f ? nearbyintf(w[k] / sc) : 0.0f;
            v = v > fq ? fq : v < -fq ? -fq : v;
            q[k] = (int8_t)v;
        }
    }
}
