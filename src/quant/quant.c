/* quant.c — making, storing and binding quantised linear weights (see quant.h for the rules and format). */
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "kernels/kernels_q.h"
#include "quant/quant.h"

const char *quant_scheme_name(int bits) { return bits == 8 ? "q8_row" : bits == 4 ? "q4_block32" : NULL; }

int quant_scheme_bits(const char *name) {
    if (!name) return 0;
    if (!strcmp(name, "q8_row")) return 8;
    if (!strcmp(name, "q4_block32")) return 4;
    return 0;
}

static int is_float_dt(dtype dt) {
    return dt == DT_F32 || dt == DT_F16 || dt == DT_BF16 || dt == DT_F64 || dt == DT_F8_E4M3 || dt == DT_F8_E5M2;
}

int quant_supported(const tensor *src, int bits) {
    if (!is_float_dt(src->dt) || src->ndim != 2 || src->shape[0] < 1 || src->shape[1] < 1 || src->shape[1] > 65536)
        return 0;
    if (src->shape[0] > INT32_MAX) return 0;
    if (bits == 8) return 1;
    return bits == 4 && src->shape[1] % 32 == 0;
}

/* Bytes of the codes of an [N, K] tensor, rounded up so the scales that follow are 64-byte aligned. */
static size_t codes_bytes(int bits, int64_t N, int64_t K) {
    size_t b = (size_t)N * (size_t)(bits == 8 ? K : K / 2);
    return (b + 63) & ~(size_t)63;
}

typedef struct { const tensor *src; tensor *dst; int bits, chunk; int64_t N, K; int failed; } qt_job;

/* Quantise rows [t chunk, (t + 1) chunk) of the job: per block s = max|w| / qmax, q = nearbyint(w / s). */
static void qt_task(void *arg, int t, int thread) {
    (void)thread;
    qt_job *j = arg;
    int64_t K = j->K, r0 = (int64_t)t * j->chunk, r1 = r0 + j->chunk < j->N ? r0 + j->chunk : j->N;
    int qb = j->dst->qblock, nb = (int)(K / qb);
    float qmax = j->bits == 8 ? 127.0f : 7.0f;
    float *w = malloc(sizeof(float) * (size_t)K);
    int8_t *q = malloc((size_t)K);
    if (!w || !q) { j->failed = 1; free(w); free(q); return; }
    float *scales = (float *)j->dst->qscale;
    for (int64_t r = r0; r < r1; r++) {
        tensor_to_f32(j->src, r * K, K, w);
        k_quant_weight_row(w, (int)K, qb, (int)qmax, q, scales + r * nb);
        if (j->bits == 8) {
            memcpy((int8_t *)j->dst->data + r * K, q, (size_t)K);
        } else {
            uint8_t *o = (uint8_t *)j->dst->data + r * (K / 2);
            for (int64_t k0 = 0; k0 < K; k0 += 32)
                for (int i = 0; i < 16; i++)
                    o[k0 / 2 + i] = (uint8_t)((q[k0 + i] + 8) | ((q[k0 + 16 + i] + 8) << 4));
        }
    }
    free(w);
    free(q);
}

sd3_status quant_tensor(tensor *dst, const tensor *src, int bits, sd3_err *err) {
    memset(dst, 0, sizeof *dst);
    if (!quant_supported(src, bits))
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "cannot quantise a %s tensor of rank %d to int%d (2-D float, K <= 65536%s)",
                        dtype_name(src->dt), src->ndim, bits, bits == 4 ? ", K a multiple of 32" : "");
    int64_t N = src->shape[0], K = src->shape[1];
    int qb = bits == 8 ? (int)K : 32, nb = (int)(K / qb);
    size_t cb = codes_bytes(bits, N, K);
    char *buf = sd3_malloc(cb + sizeof(float) * (size_t)N * (size_t)nb);
    if (!buf) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory quantising a [%lld, %lld] tensor", (long long)N, (long long)K);
    dst->dt = bits == 8 ? DT_Q8 : DT_Q4;
    dst->ndim = 2;
    dst->shape[0] = N;
    dst->shape[1] = K;
    dst->data = buf;
    dst->owned = 1;
    dst->qscale = (const float *)(buf + cb);
    dst->qblock = qb;
    qt_job j = {src, dst, bits, 0, N, K, 0};
    int nt = pool_threads() * 4;
    j.chunk = (int)((N + nt - 1) / nt);
    if (j.chunk < 1) j.chunk = 1;
    pool_run((int)((N + j.chunk - 1) / j.chunk), qt_task, &j);
    if (j.failed) { tensor_free(dst); return sd3_errf(err, SD3_ERR_NOMEM, "out of memory quantising"); }
    for (int64_t i = 0; i < N * nb; i++)
        if (!isfinite(dst->qscale[i])) {
            tensor_free(dst);
            return sd3_errf(err, SD3_ERR_FORMAT, "row %lld holds Inf or NaN: cannot quantise", (long long)(i / nb));
        }
    return SD3_OK;
}

sd3_status quant_replace(tensor *t, int bits, const char *name, sd3_err *err) {
    tensor q;
    sd3_status s = quant_tensor(&q, t, bits, err);
    if (s != SD3_OK) { sd3_err_prefix(err, "tensor '%s'", name); return s; }
    tensor_free(t);
    *t = q;
    return SD3_OK;
}

void quant_row_view(tensor *t, int64_t r0, int64_t n) {
    SD3_ASSERT((t->dt == DT_Q8 || t->dt == DT_Q4) && t->ndim == 2 && r0 >= 0 && r0 + n <= t->shape[0]);
    int64_t K = t->shape[1], rb = t->dt == DT_Q8 ? K : K / 2, nb = K / t->qblock;
    t->data = (char *)t->data + r0 * rb;
    t->qscale += r0 * nb;
    t->shape[0] = n;
    t->owned = 0;
}

sd3_status quant_swap_halves(tensor *t, sd3_err *err) {
    SD3_ASSERT((t->dt == DT_Q8 || t->dt == DT_Q4) && t->ndim == 2);
    int64_t N = t->shape[0], K = t->shape[1], nb = K / t->qblock, h = N / 2;
    if (N % 2) return sd3_errf(err, SD3_ERR_SHAPE, "an odd number of rows (%lld) cannot be split in halves", (long long)N);
    int bits = t->dt == DT_Q8 ? 8 : 4;
    size_t rb = (size_t)(bits == 8 ? K : K / 2), cb = codes_bytes(bits, N, K);
    char *buf = sd3_malloc(cb + sizeof(float) * (size_t)(N * nb));
    if (!buf) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory copying a quantised tensor");
    float *sc = (float *)(buf + cb);
    memcpy(buf, (const char *)t->data + (size_t)h * rb, (size_t)h * rb);
    memcpy(buf + (size_t)h * rb, t->data, (size_t)h * rb);
    memcpy(sc, t->qscale + h * nb, sizeof(float) * (size_t)(h * nb));
    memcpy(sc + h * nb, t->qscale, sizeof(float) * (size_t)(h * nb));
    tensor_free(t);   /* frees only an owned copy; the descriptor is refilled below */
    t->dt = bits == 8 ? DT_Q8 : DT_Q4;
    t->ndim = 2;
    t->shape[0] = N;
    t->shape[1] = K;
    t->data = buf;
    t->owned = 1;
    t->qscale = sc;
    t->qblock = (int)(K / nb);
    return SD3_OK;
}

sd3_status quant_bind(const st_file *f, const st_entry *e, tensor *out, int *is_quant, sd3_err *err) {
    *is_quant = 0;
    if (e->dt != DT_I8 && e->dt != DT_U8) return SD3_OK;
    char sname[1100];
    snprintf(sname, sizeof sname, "%s%s", e->name, QUANT_SCALE_SUFFIX);
    const st_entry *se = st_find(f, sname);
    const char *scheme = st_meta(f, QUANT_META_KEY);
    if (!se && !scheme) return SD3_OK;   /* a plain integer tensor */
    if (!scheme)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: tensor '%s' has a scale tensor '%s' but the file has no '%s' metadata",
                        f->path, e->name, sname, QUANT_META_KEY);
    if (!quant_scheme_bits(scheme))
        return sd3_errf(err, SD3_ERR_FORMAT,
                        "%s: unknown quantisation scheme '%s' in the metadata (tensor '%s'; known: q8_row, q4_block32)",
                        f->path, scheme, e->name);
    if (!se)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: quantised tensor '%s' (%s) has no scale tensor '%s'", f->path, e->name,
                        dtype_name(e->dt), sname);
    if (e->ndim != 2 || e->shape[0] < 1 || e->shape[1] < 1)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: quantised tensor '%s' must be 2-D [N, K%s]", f->path, e->name,
                        e->dt == DT_U8 ? "/2" : "");
    int64_t N = e->shape[0], K = e->dt == DT_I8 ? e->shape[1] : 2 * e->shape[1];
    int64_t want_nb = e->dt == DT_U8 ? K / 32 : -1;
    if (se->dt != DT_F32 || se->ndim != 2 || se->shape[0] != N || se->shape[1] < 1 || K % se->shape[1] ||
        (want_nb > 0 && (se->shape[1] != want_nb || K % 32)) || K > 65536) {
        char have[128] = "[", d[32];
        for (int i = 0; i < se->ndim; i++) {
            snprintf(d, sizeof d, i ? ", %lld" : "%lld", (long long)se->shape[i]);
            strncat(have, d, sizeof have - strlen(have) - 1);
        }
        strncat(have, "]", sizeof have - strlen(have) - 1);
        if (want_nb > 0)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: scale tensor '%s' is %s %s, expected F32 [%lld, %lld] (int4, blocks of 32)",
                            f->path, sname, dtype_name(se->dt), have, (long long)N, (long long)want_nb);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: scale tensor '%s' is %s %s, expected F32 [%lld, n] with n dividing %lld",
                        f->path, sname, dtype_name(se->dt), have, (long long)N, (long long)K);
    }
    if (!st_entry_is_aligned(se))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: scale tensor '%s' is not 4-byte aligned in the file", f->path, sname);
    const float *sc = se->data;
    int64_t ns = N * se->shape[1];
    for (int64_t i = 0; i < ns; i++)
        if (!(sc[i] >= 0.0f) || !isfinite(sc[i]))
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: scale tensor '%s' holds %g at [%lld, %lld] (scales are finite and >= 0)",
                            f->path, sname, (double)sc[i], (long long)(i / se->shape[1]), (long long)(i % se->shape[1]));
    memset(out, 0, sizeof *out);
    out->dt = e->dt == DT_I8 ? DT_Q8 : DT_Q4;
    out->ndim = 2;
    out->shape[0] = N;
    out->shape[1] = K;
    out->data = (void *)e->data;
    out->qscale = sc;
    out->qblock = (int)(K / se->shape[1]);
    *is_quant = 1;
    return SD3_OK;
}

/* Whether s ends with suffix. */
static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

int quant_key_class(const char *key, const tensor *t, int mmdit_file) {
    if (t->ndim != 2 || !ends_with(key, ".weight")) return 0;
    static const char *t5_lin[] = {".SelfAttention.q.weight", ".SelfAttention.k.weight", ".SelfAttention.v.weight",
                                   ".SelfAttention.o.weight", ".DenseReluDense.wi_0.weight", ".DenseReluDense.wi_1.weight",
                                   ".DenseReluDense.wi.weight", ".DenseReluDense.wo.weight"};
    if (strstr(key, "encoder.block.")) {
        for (size_t i = 0; i < sizeof t5_lin / sizeof t5_lin[0]; i++)
            if (ends_with(key, t5_lin[i])) return 't';
        return 0;
    }
    if (mmdit_file || !strncmp(key, "model.diffusion_model.", 22)) return 'm';
    return 0;
}

/* Drop the resident pages wholly inside [p, p + n) of f's file mapping (a float weight already quantised: the
 * copy in memory is what gets written), so quantising a 10 GB T5 does not hold its pages. */
static void drop_mapped(const st_file *f, const void *p, size_t n) {
    if (f->fd < 0 || !f->map || (const char *)p < (const char *)f->map || (const char *)p + n > (const char *)f->map + f->size) return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a0 = ((uintptr_t)p + pg - 1) & ~(pg - 1), a1 = ((uintptr_t)p + n) & ~(pg - 1);
    if (a1 > a0) madvise((void *)a0, a1 - a0, MADV_DONTNEED);
}

sd3_status quant_file(const char *in, const char *out, int t5_bits, int mmdit_bits, int mmdit_file, int *n_quant,
                      sd3_err *err) {
    if (n_quant) *n_quant = 0;
    st_file *f = NULL;
    sd3_status s = st_open(&f, in, err);
    if (s != SD3_OK) return s;
    if (st_meta(f, QUANT_META_KEY)) {
        s = sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: already quantised (%s '%s')", in, QUANT_META_KEY, st_meta(f, QUANT_META_KEY));
        st_close(f);
        return s;
    }
    st_writer *w = st_writer_new();
    tensor *qs = sd3_calloc((size_t)f->n + 1, sizeof *qs);
    int nq = 0, any8 = 0, any4 = 0;
    if (!w || !qs) { s = sd3_errf(err, SD3_ERR_NOMEM, "out of memory"); goto done; }
    for (int i = 0; i < f->n && s == SD3_OK; i++) {
        const st_entry *e = &f->entries[i];
        tensor t;
        memset(&t, 0, sizeof t);
        int bits = 0;
        if (e->ndim == 2 && st_entry_tensor(f, e, &t, NULL) == SD3_OK) {
            int cls = quant_key_class(e->name, &t, mmdit_file);
            bits = cls == 't' ? t5_bits : cls == 'm' ? mmdit_bits : 0;
            if (bits && !quant_supported(&t, bits)) bits = 0;
        }
        if (!bits) {
            s = st_writer_add(w, e->name, e->dt, e->ndim, e->shape, e->data, err);
            continue;
        }
        tensor *q = &qs[nq];
        if ((s = quant_tensor(q, &t, bits, err)) != SD3_OK) { sd3_err_prefix(err, "%s: tensor '%s'", in, e->name); break; }
        drop_mapped(f, e->data, (size_t)(e->end - e->begin));
        nq++;
        any8 |= bits == 8, any4 |= bits == 4;
        int64_t N = q->shape[0], K = q->shape[1], cs[2] = {N, bits == 8 ? K : K / 2}, ss[2] = {N, K / q->qblock};
        char sname[1100];
        snprintf(sname, sizeof sname, "%s%s", e->name, QUANT_SCALE_SUFFIX);
        if (st_find(f, sname)) { s = sd3_errf(err, SD3_ERR_FORMAT, "%s: already holds a tensor named '%s'", in, sname); break; }
        if ((s = st_writer_add(w, e->name, bits == 8 ? DT_I8 : DT_U8, 2, cs, q->data, err)) != SD3_OK) break;
        s = st_writer_add(w, sname, DT_F32, 2, ss, q->qscale, err);
    }
    for (int i = 0; s == SD3_OK && i < f->n_meta; i++) s = st_writer_meta(w, f->meta_keys[i], f->meta_vals[i], err);
    if (s == SD3_OK && nq) {
        s = st_writer_meta(w, QUANT_META_KEY, quant_scheme_name(any4 ? 4 : 8), err);
        if (s == SD3_OK) s = st_writer_meta(w, QUANT_META_KEY ".version", "1", err);
    }
    (void)any8;
    if (s == SD3_OK) s = st_writer_write(w, out, err);
    if (s == SD3_OK && n_quant) *n_quant = nq;
done:
    for (int i = 0; i < nq; i++) tensor_free(&qs[i]);
    sd3_free(qs);
    st_writer_free(w);
    st_close(f);
    return s;
}
