/* quant_models.c — quantising a loaded T5 or MMDiT's Linears in place (see quant_models.h). */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "quant/quant.h"
#include "quant/quant_models.h"

/* Drop the resident pages wholly inside [p, p + n) when the range lies in a file mapping of w (never in
 * anonymous memory, where MADV_DONTNEED would zero the data); the kernel re-reads them if used again. */
static void drop_range(const weights *w, const void *p, size_t n) {
    if (!w || !p || !n) return;
    for (int i = 0; i < w->n_files; i++) {
        const st_file *f = w->files[i];
        if (!f || f->fd < 0 || !f->map) continue;
        const char *b = f->map, *s = p;
        if (s < b || s + n > b + f->size) continue;
        uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t a0 = ((uintptr_t)s + pg - 1) & ~(pg - 1), a1 = ((uintptr_t)s + n) & ~(pg - 1);
        if (a1 > a0) madvise((void *)a0, a1 - a0, MADV_DONTNEED);
        return;
    }
}

/* Quantise one weight if it is a float tensor the scheme takes; counts it in *n; drops its float pages. */
static sd3_status quant_one(tensor *t, int bits, const weights *release, const char *label, const char *name, int *n,
                            sd3_err *err) {
    if (t->dt == DT_Q8 || t->dt == DT_Q4 || !quant_supported(t, bits)) return SD3_OK;
    const void *old = t->owned ? NULL : t->data;
    size_t old_n = tensor_nbytes(t);
    sd3_status s = quant_replace(t, bits, name, err);
    if (s != SD3_OK) { sd3_err_prefix(err, "%s", label); return s; }
    drop_range(release, old, old_n);
    (*n)++;
    return SD3_OK;
}

sd3_status quant_t5(t5_model *m, int bits, const weights *release, int *n_done, sd3_err *err) {
    int n = 0;
    if (n_done) *n_done = 0;
    if (bits != 8 && bits != 4) return sd3_errf(err, SD3_ERR_INVALID_ARG, "T5 quantisation: %d bits (8 or 4)", bits);
    static const char *names[7] = {"layer.0.SelfAttention.q.weight", "layer.0.SelfAttention.k.weight",
                                   "layer.0.SelfAttention.v.weight", "layer.0.SelfAttention.o.weight",
                                   "layer.1.DenseReluDense.wi_0.weight", "layer.1.DenseReluDense.wi_1.weight",
                                   "layer.1.DenseReluDense.wo.weight"};
    for (int i = 0; i < m->cfg.num_layers; i++) {
        t5_block *b = &m->blocks[i];
        tensor *ts[7] = {&b->q_w, &b->k_w, &b->v_w, &b->o_w, &b->wi0_w, &b->wi1_w, &b->wo_w};
        for (int k = 0; k < 7; k++) {
            char name[128];
            snprintf(name, sizeof name, "encoder.block.%d.%s", i, names[k]);
            sd3_status s = quant_one(ts[k], bits, release, m->label, name, &n, err);
            if (s != SD3_OK) return s;
        }
    }
    if (n_done) *n_done = n;
    return SD3_OK;
}

sd3_status quant_mmdit(mmdit_model *m, int bits, const weights *release, int *n_done, sd3_err *err) {
    if (n_done) *n_done = 0;
    if (bits != 8 && bits != 4) return sd3_errf(err, SD3_ERR_INVALID_ARG, "MMDiT quantisation: %d bits (8 or 4)", bits);
    int cnt = mmdit_list_linears(m, NULL, 0), n = 0;
    mmdit_named_linear *ls = sd3_calloc((size_t)cnt + 1, sizeof *ls);
    if (!ls) return sd3_errf(err, SD3_ERR_NOMEM, "out of memory listing the transformer's Linears");
    mmdit_list_linears(m, ls, cnt);
    sd3_status s = SD3_OK;
    for (int i = 0; i < cnt && s == SD3_OK; i++) s = quant_one(&ls[i].lin->weight, bits, release, "transformer", ls[i].diffusers, &n, err);
    sd3_free(ls);
    if (n_done) *n_done = n;
    return s;
}
