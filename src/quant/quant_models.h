/*
 * quant_models.h — on-the-fly quantisation of a loaded model's Linears (`--t5 int8`, `--precision int8|int4`):
 * each selected weight is replaced by an owned DT_Q8 / DT_Q4 copy (quant.h rules); the float originals stay
 * in the mapping, whose pages the caller may then release (weights_release_pages), so the resident set holds
 * only the quantised copies. Weights that are quantised already (a file written by `sd3 quantize`) or that
 * the scheme cannot take (int4 needs K % 32 == 0) are left as they are.
 */
#ifndef SD3_QUANT_MODELS_H
#define SD3_QUANT_MODELS_H

#include "mmdit/mmdit.h"
#include "text/t5.h"

/* T5: the encoder blocks' q, k, v, o, wi_0, wi_1, wo (embeddings, norms and the relative bias keep their
 * dtype). bits 8 or 4. release (may be NULL): the weight set the model's views point into; the pages of each
 * float weight that lie inside one of its file mappings are dropped (MADV_DONTNEED) as soon as the weight is
 * quantised, so the resident set never holds much more than the quantised copies. *n_done (may be NULL)
 * counts the weights quantised now. */
sd3_status quant_t5(t5_model *m, int bits, const weights *release, int *n_done, sd3_err *err);
/* MMDiT: every Linear of mmdit_list_linears (not the patch-embedding conv); release as for quant_t5 (the
 * model's own m->w when it owns its files). Call before attaching LoRAs. */
sd3_status quant_mmdit(mmdit_model *m, int bits, const weights *release, int *n_done, sd3_err *err);

#endif /* SD3_QUANT_MODELS_H */
