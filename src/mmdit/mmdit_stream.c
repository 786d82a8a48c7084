/*
 * mmdit_stream.c — layer streaming for the MMDiT (mmdit_model.stream_layers, see mmdit.h): the byte ranges
 * of one joint block's weights inside the model's own file mappings, advised in ahead of use
 * (MADV_WILLNEED) or dropped from the resident set after use (MADV_DONTNEED).
 *
 * Why this is safe: the safetensors mappings are PROT_READ + MAP_PRIVATE of a regular file, so their pages
 * are never written; MADV_DONTNEED on such a page only unmaps it, and the next access faults the same bytes
 * back in from the page cache (or the disk when the kernel evicted them). In-memory files (st_open_memory,
 * fd < 0) are skipped: there MADV_DONTNEED would zero heap memory.
 */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "mmdit/mmdit.h"

#define MAX_RANGES 128   /* tensors of one block: at most 22 Linears x (weight, bias, scales) + 6 norms */

typedef struct range {
    uintptr_t a, b;      /* [a, b) inside one file mapping */
} range;

/* Order ranges by start address (qsort). */
static int range_cmp(const void *x, const void *y) {
    const range *p = x, *q = y;
    return p->a < q->a ? -1 : p->a > q->a;
}

/* The file mapping of m's own weights that holds [a, b), or NULL. */
static const st_file *mapping_of(const mmdit_model *m, uintptr_t a, uintptr_t b) {
    if (!m->owns_weights) return NULL;
    for (int k = 0; k < m->w.n_files; k++) {
        const st_file *f = m->w.files[k];
        if (!f || f->fd < 0 || !f->map) continue;
        uintptr_t lo = (uintptr_t)f->map, hi = lo + f->size;
        if (a >= lo && b <= hi) return f;
    }
    return NULL;
}

/* Add the mapped range of tensor t (and of its borrowed quantisation scales) to r. */
static void add_tensor(const mmdit_model *m, const tensor *t, range *r, int *n) {
    if (!t->data || t->owned || *n >= MAX_RANGES - 1) return;
    uintptr_t a = (uintptr_t)t->data, b = a + tensor_nbytes(t);
    if (b > a && mapping_of(m, a, b)) r[(*n)++] = (range){a, b};
    if (t->qscale && t->qblock > 0 && t->ndim == 2) {
        uintptr_t sa = (uintptr_t)t->qscale;
        uintptr_t sb = sa + (uintptr_t)(t->shape[0] * ((t->shape[1] + t->qblock - 1) / t->qblock)) * sizeof(float);
        if (sb > sa && mapping_of(m, sa, sb)) r[(*n)++] = (range){sa, sb};
    }
}

/* Add a Linear's weight and bias. */
static void add_linear(const mmdit_model *m, const mmdit_linear *l, range *r, int *n) {
    add_tensor(m, &l->weight, r, n);
    add_tensor(m, &l->bias, r, n);
}

/* Collect block i's mapped ranges, merge them, and advise each (see mmdit.h). */
int64_t mmdit_stream_advise(const mmdit_model *m, int i, int advice) {
    if (!m || !m->blocks || i < 0 || i >= m->cfg.num_layers) return 0;
    const mmdit_block *bl = &m->blocks[i];
    range r[MAX_RANGES];
    int n = 0;
    const mmdit_linear *lin[] = {&bl->norm1_linear,   &bl->norm1_context_linear, &bl->attn_to_q,        &bl->attn_to_k,
                                 &bl->attn_to_v,      &bl->attn_add_q_proj,      &bl->attn_add_k_proj,  &bl->attn_add_v_proj,
                                 &bl->attn_to_out_0,  &bl->attn_to_add_out,      &bl->attn2_to_q,       &bl->attn2_to_k,
                                 &bl->attn2_to_v,     &bl->attn2_to_out_0,       &bl->ff_net_0_proj,    &bl->ff_net_2,
                                 &bl->ff_context_net_0_proj, &bl->ff_context_net_2};
    for (size_t k = 0; k < sizeof lin / sizeof lin[0]; k++) add_linear(m, lin[k], r, &n);
    const tensor *nrm[] = {&bl->attn_norm_q, &bl->attn_norm_k, &bl->attn_norm_added_q, &bl->attn_norm_added_k,
                           &bl->attn2_norm_q, &bl->attn2_norm_k};
    for (size_t k = 0; k < sizeof nrm / sizeof nrm[0]; k++) add_tensor(m, nrm[k], r, &n);
    if (!n) return 0;
    /* merge touching ranges (a block's tensors are usually one run of the file: keys sort by block) */
    qsort(r, (size_t)n, sizeof r[0], range_cmp);
    int nm = 0;
    for (int k = 0; k < n; k++) {
        if (nm && r[k].a <= r[nm - 1].b) {
            if (r[k].b > r[nm - 1].b) r[nm - 1].b = r[k].b;
        } else {
            r[nm++] = r[k];
        }
    }
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    int64_t done = 0;
    for (int k = 0; k < nm; k++) {
        uintptr_t a, b;
        if (advice == MMDIT_STREAM_RELEASE) {   /* pages wholly inside the range: never a neighbour's page */
            a = (r[k].a + page - 1) & ~(page - 1);
            b = r[k].b & ~(page - 1);
        } else {                                /* every page the range touches */
            a = r[k].a & ~(page - 1);
            b = r[k].b;
        }
        if (b <= a) continue;
        /* advice only: a failure (an old kernel) changes speed or memory, never results */
        if (madvise((void *)a, b - a, advice == MMDIT_STREAM_RELEASE ? MADV_DONTNEED : MADV_WILLNEED) == 0)
            done += (int64_t)(b - a);
    }
    return done;
}
