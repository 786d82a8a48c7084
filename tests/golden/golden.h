/*
 * golden.h — the data-driven golden runner's case interface.
 *
 * The runner walks a golden root, and for every case JSON (an object with string "kind" and "file")
 * calls the function registered for that kind. A kind's function lives in its own file
 * (tests/golden/kind_<kind>.c) and is declared weak here: a kind nobody implemented yet is reported as
 * "not implemented: <kind>" and counts as a failure.
 *
 * A case function loads its inputs from gc->st (the case's .safetensors), runs the component, and
 * compares every expected tensor with golden_check (which uses the tensor's suggested_atol from the
 * JSON). It returns 0, or non-zero after golden_fail when it could not run. A case that checks no
 * tensor at all fails.
 */
#ifndef SD3_GOLDEN_H
#define SD3_GOLDEN_H

#include <cjson/cJSON.h>
#include "core/core.h"
#include "io/safetensors.h"

typedef struct golden_case {
    const char *root;          /* golden root directory */
    char json_path[4096];
    char dir[4096];            /* folder of the case JSON */
    const char *kind;
    cJSON *json;               /* the whole case JSON */
    st_file *st;               /* the case's tensors */
    int verbose;
    int n_checked, n_failed;
    char first_failure[1024];
} golden_case;

/* Path of something relative to the golden root (e.g. the case's "model_dir"). */
void golden_root_path(const golden_case *gc, const char *rel, char *out, size_t n);
/* Path of something relative to the case's folder. */
void golden_case_path(const golden_case *gc, const char *rel, char *out, size_t n);
/* The case's model folder ("model_dir" resolved against the root) or NULL if the case has none. */
const char *golden_model_dir(golden_case *gc);

/* A tensor of the case file (view); records a failure and returns non-zero if missing. */
int golden_tensor(golden_case *gc, const char *name, tensor *out);
/* A float tensor of the case file copied to a malloc'd F32 buffer (NULL + failure if missing). */
float *golden_f32(golden_case *gc, const char *name, int64_t *n);
/* The JSON object describing tensor `name` (under "tensors"), or NULL. */
const cJSON *golden_tensor_json(const golden_case *gc, const char *name);
/* The tensor's suggested_atol, or -1 if it has none. */
double golden_atol(const golden_case *gc, const char *name);

/* Compare n floats with expected tensor `name` within its suggested_atol (failure if it has none). */
int golden_check(golden_case *gc, const char *name, const float *got, int64_t n);
/* Same with an explicit tolerance (0 = bit-exact). */
int golden_check_atol(golden_case *gc, const char *name, const float *got, int64_t n, double atol);
/* Integers (ids, indices): must match exactly. */
int golden_check_i64(golden_case *gc, const char *name, const int64_t *got, int64_t n);
/* Record a failure with a message (the first one is printed on the case's line). */
void golden_fail(golden_case *gc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The inputs of an MMDiT case (hidden_states (B, C, H, W), encoder_hidden_states (B, S, J),
 * pooled_projections (B, P), timestep (B)) as F32 copies, shape-checked against each other. */
typedef struct golden_mmdit_inputs {
    float *x, *ctx, *pooled, *t;
    int B, C, H, W, S, J, P;
} golden_mmdit_inputs;
/* Load them (records a failure and returns non-zero if one is missing or the shapes disagree). */
int golden_mmdit_inputs_load(golden_case *gc, golden_mmdit_inputs *in);
void golden_mmdit_inputs_free(golden_mmdit_inputs *in);

/* The registered kinds (weak: NULL until a kind_<kind>.c defines one). */
typedef int (*golden_fn)(golden_case *gc);
#define GOLDEN_KINDS(X)                                                                                 \
    X(torch_cpu_randn) X(tokenizers) X(text_encoders) X(encode_prompt) X(transformer_forward)            \
    X(vae_decode) X(vae_encode) X(scheduler_set_timesteps) X(scheduler_img2img) X(scheduler_step)        \
    X(txt2img) X(img2img) X(lora_forward) X(dreambooth_lora_sd3_train_step) X(training_helpers)
#define GOLDEN_DECLARE(k) int golden_##k(golden_case *gc) __attribute__((weak));
GOLDEN_KINDS(GOLDEN_DECLARE)

#endif
