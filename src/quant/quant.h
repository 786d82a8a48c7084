/*
 * quant.h — quantised linear weights: making them (from any float tensor), storing them in safetensors
 * files, and binding stored ones as tensors of dtype DT_Q8 / DT_Q4 (core.h) that k_linear computes with
 * integer dot products (kernels_q.h).
 *
 * Rules (both schemes symmetric, no zero point):
 *   scale per block of qblock consecutive K-elements of a row: s = max|w| / qmax (qmax 127 for int8, 7 for
 *   int4), s = 0 for an all-zero block; codes q = nearbyint(w / s) (round half to even, IEEE default mode),
 *   clamped to [-qmax, qmax]; q = 0 where s = 0. Dequantised w ~ s q; |w - s q| <= s / 2.
 *   Schemes: "q8_row"     DT_Q8, qblock = K (one scale per output row)
 *            "q4_block32" DT_Q4, qblock = 32 (K % 32 == 0), nibble layout in core.h
 *
 * File format (what `sd3 quantize` writes; safetensors, every other tensor unchanged):
 *   <key>          the codes: I8 [N, K] (q8) or U8 [N, K/2] (q4, the packed bytes)
 *   <key>.qscale   F32 [N, K / qblock]
 *   __metadata__   {"sd3c.quant": "q8_row" | "q4_block32" (the scheme of the file's main weights; a file may
 *                   hold both kinds), "sd3c.quant.version": "1"}
 * weights_get (io/weights.h) presents such a pair as ONE tensor named <key> of dtype DT_Q8 / DT_Q4 with the
 * logical shape [N, K] and qscale pointing into the mapping, so model loaders see the keys and shapes of the
 * float checkpoint. A damaged pair (scale tensor missing, wrong scale shape or dtype, non-finite or negative
 * scale, unknown scheme, codes without the metadata) is SD3_ERR_FORMAT naming the file and the tensor.
 */
#ifndef SD3_QUANT_H
#define SD3_QUANT_H

#include "io/safetensors.h"

#define QUANT_META_KEY "sd3c.quant"
#define QUANT_SCALE_SUFFIX ".qscale"

/* Scheme name of bits 8 / 4 ("q8_row" / "q4_block32"); NULL for anything else. */
const char *quant_scheme_name(int bits);
/* Bits of a scheme name (8 or 4), 0 if unknown. */
int quant_scheme_bits(const char *name);

/* Whether a float tensor can be quantised with `bits`: 2-D [N, K] of a float dtype, 1 <= K <= 65536, and
 * K % 32 == 0 for int4. */
int quant_supported(const tensor *src, int bits);
/* Quantise src [N, K] (any float dtype) into dst: an owned DT_Q8 / DT_Q4 tensor whose single allocation
 * holds the codes then the scales (tensor_free frees both). Threaded over rows. */
sd3_status quant_tensor(tensor *dst, const tensor *src, int bits, sd3_err *err);
/* Replace *t by its quantised copy (freeing *t's data if owned); name is used in errors. */
sd3_status quant_replace(tensor *t, int bits, const char *name, sd3_err *err);

/* Restrict a quantised [N, K] view to rows [r0, r0 + n) (data and qscale move; no copy). */
void quant_row_view(tensor *t, int64_t r0, int64_t n);
/* Replace a quantised [N, K] tensor (N even) by an owned copy with its two row halves exchanged. */
sd3_status quant_swap_halves(tensor *t, sd3_err *err);

/* weights_get's hook: if entry e of f is the code tensor of a stored quantised pair, bind the logical
 * tensor into *out and return SD3_OK with *is_quant = 1; *is_quant = 0 (and SD3_OK) for any other tensor;
 * an error naming f and the tensor for a damaged pair. */
sd3_status quant_bind(const st_file *f, const st_entry *e, tensor *out, int *is_quant, sd3_err *err);

/* Which tensors of a checkpoint get quantised: a T5 encoder-block linear (q, k, v, o, wi_0, wi_1, wi, wo),
 * under any prefix; MMDiT linears (2-D ".weight" of a transformer, under "model.diffusion_model." in a
 * single file or anywhere when mmdit_file is set). Returns 't' (T5), 'm' (MMDiT) or 0. */
int quant_key_class(const char *key, const tensor *t, int mmdit_file);

/* Write a quantised copy of the safetensors file in to out: T5 linears with t5_bits, MMDiT linears with
 * mmdit_bits (0 = leave that kind as it is); everything else (and tensors quant_supported refuses) copied
 * unchanged, metadata kept. mmdit_file: the file is a transformer (diffusers or original keys) whose 2-D
 * weights are all linears. *n_quant receives the count of quantised tensors (may be NULL). A file that is
 * already quantised is refused. */
sd3_status quant_file(const char *in, const char *out, int t5_bits, int mmdit_bits, int mmdit_file, int *n_quant,
                      sd3_err *err);

/* What `sd3 quantize` does: in is a .safetensors file, a component folder or a diffusers pipeline folder
 * (model_index.json); out (a file, or a folder that is created) receives the quantised copy. In a pipeline,
 * transformer/ gets mmdit_bits and text_encoder_3/ t5_bits; every other file is copied. A component folder
 * is quantised as `component` says ('m' MMDiT, 't' T5, 0: from the folder name, then from its keys); every
 * .safetensors file of it (shards included: each quantised tensor's scales stay in its shard, so the index
 * is copied as it is) is quantised, other files copied. A single file: MMDiT keys (diffusers, original, or
 * under model.diffusion_model.) and T5 keys (any prefix) as the bits say, the rest copied. out must not
 * exist yet (no overwriting). log (may be NULL) receives one line per written file. */
sd3_status quant_path(const char *in, const char *out, int t5_bits, int mmdit_bits, int component,
                      void (*log)(const char *line, void *user), void *user, sd3_err *err);

#endif /* SD3_QUANT_H */
