/* test_te_lora.c — text-encoder LoRAs through encode_prompt: a LoRA with text_encoder.* (CLIP-L) modules
 * changes the CLIP-L part of the prompt embeddings and nothing else; scale 0 changes nothing; the
 * CLIP weights are restored after the call (a second plain run is bit-identical to the first). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/model_store.h"
#include "io/safetensors.h"
#include "pipeline/encode_prompt.h"
#include "test.h"

static encode_out run(model_store *ms, const char *lora, float scale) {
    const char *p[1] = {"a photo of a cat"};
    const char *loras[1] = {lora};
    float scales[1] = {scale};
    encode_req r;
    memset(&r, 0, sizeof r);
    r.n_prompts = 1;
    r.prompt = p;
    r.num_images_per_prompt = 1;
    r.max_sequence_length = 16;
    r.cfg = 0;
    if (lora) { r.loras = loras; r.lora_scales = scales; r.n_loras = 1; }
    encode_out o;
    sd3_err err = {0};
    if (encode_prompt(ms, &r, &o, &err) != SD3_OK) { printf("encode_prompt: %s\n", err.msg); memset(&o, 0, sizeof o); }
    return o;
}

int main(void) {
    const char *g = getenv("SD3_GOLDEN");
    char dir[4096], path[256];
    snprintf(dir, sizeof dir, "%s/tiny-sd3", g ? g : "../shared/golden");
    model_store *ms;
    sd3_err err = {0};
    if (ms_open(&ms, dir, &err) != SD3_OK) { printf("%s\n", err.msg); return 1; }
    /* a rank-2 LoRA on CLIP-L's layer 0 q_proj (hidden 32) in diffusers' text_encoder.* naming */
    static float A[2 * 32], B[32 * 2];
    for (int i = 0; i < 64; i++) { A[i] = sinf(0.7f * i); B[i] = 0.3f * cosf(1.3f * i); }
    snprintf(path, sizeof path, "/tmp/sd3c_te_lora_%d.safetensors", (int)getpid());
    st_writer *w = st_writer_new();
    int64_t sa[2] = {2, 32}, sb[2] = {32, 2};
    CHECK(st_writer_add(w, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", DT_F32, 2, sa, A, &err) == SD3_OK &&
          st_writer_add(w, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", DT_F32, 2, sb, B, &err) == SD3_OK &&
          st_writer_write(w, path, &err) == SD3_OK, "%s", err.msg);
    st_writer_free(w);

    encode_out base = run(ms, NULL, 1), with = run(ms, path, 1), zero = run(ms, path, 0), again = run(ms, NULL, 1);
    CHECK(base.pe && with.pe && zero.pe && again.pe, "runs failed");
    if (base.pe && with.pe && zero.pe && again.pe) {
        int64_t n = (int64_t)base.S * base.J;
        int clip_l_changed = 0, other_same = 1;
        for (int64_t i = 0; i < n; i++) {
            int t = (int)(i / base.J), c = (int)(i % base.J);
            int in_clip_l = t < 77 && c < 32;  /* tiny CLIP-L is 32 wide: channels 0..31 of the first 77 tokens */
            if (in_clip_l) clip_l_changed |= with.pe[i] != base.pe[i];
            else other_same &= with.pe[i] == base.pe[i];
        }
        CHECK(clip_l_changed, "the CLIP-L LoRA changed nothing");
        CHECK(other_same, "the CLIP-L LoRA changed CLIP-G or T5 rows");
        CHECK(!memcmp(zero.pe, base.pe, sizeof(float) * n), "scale 0 changed the embeddings");
        CHECK(!memcmp(again.pe, base.pe, sizeof(float) * n), "weights not restored after the LoRA run");
        CHECK(with.pooled[0] != base.pooled[0] || with.pooled[5] != base.pooled[5], "pooled CLIP-L unchanged");
        CHECK(!memcmp(with.pooled + 32, base.pooled + 32, sizeof(float) * (base.P - 32)), "pooled CLIP-G changed");
    }
    encode_out_free(&base); encode_out_free(&with); encode_out_free(&zero); encode_out_free(&again);
    unlink(path);
    ms_close(ms);
    TEST_MAIN_END("test_te_lora");
}
