/*
 * vae_load.c — the VAE's config (diffusers config.json, or inferred from a checkpoint's shapes) and its
 * weights, bound by checkpoint key in either layout (diffusers folder or original single file) with
 * every shape checked against the config.
 */
#include <stdarg.h>
#include <string.h>
#include "io/json_util.h"
#include "vae/vae.h"

/* ================================================================================================ */
/* Config                                                                                           */
/* ================================================================================================ */

/* The released SD3 / SD3.5 VAE. */
void vae_config_sd3(vae_config *c) {
    memset(c, 0, sizeof *c);
    c->in_channels = 3;
    c->out_channels = 3;
    c->latent_channels = 16;
    c->n_levels = 4;
    int boc[4] = {128, 256, 512, 512};
    memcpy(c->block_out_channels, boc, sizeof boc);
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->sample_size = 1024;
    c->scaling_factor = 1.5305;
    c->shift_factor = 0.0609;
    c->use_quant_conv = 0;
    c->use_post_quant_conv = 0;
    c->mid_block_add_attention = 1;
}

int vae_downscale(const vae_config *c) { return 1 << (c->n_levels - 1); }

/* Reject configs the model code cannot run: counts out of range, channels not divisible by the groups. */
sd3_status vae_config_validate(const vae_config *c, const char *label, sd3_err *err) {
    if (c->n_levels < 1 || c->n_levels > VAE_MAX_LEVELS)
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: block_out_channels has %d entries (1..%d supported)", label,
                        c->n_levels, VAE_MAX_LEVELS);
    if (c->layers_per_block < 1 || c->layers_per_block > VAE_MAX_RESNETS - 1)
        return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: layers_per_block %d (1..%d supported)", label,
                        c->layers_per_block, VAE_MAX_RESNETS - 1);
    if (c->norm_num_groups < 1)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: norm_num_groups %d must be positive", label, c->norm_num_groups);
    const int *ch[3] = {&c->in_channels, &c->out_channels, &c->latent_channels};
    const char *chn[3] = {"in_channels", "out_channels", "latent_channels"};
    for (int i = 0; i < 3; i++)
        if (*ch[i] < 1 || *ch[i] > 65536)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: %s %d out of range", label, chn[i], *ch[i]);
    for (int i = 0; i < c->n_levels; i++) {
        int b = c->block_out_channels[i];
        if (b < 1 || b > 65536 || b % c->norm_num_groups)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: block_out_channels[%d] = %d is not a positive multiple of "
                            "norm_num_groups %d", label, i, b, c->norm_num_groups);
    }
    if (!(c->scaling_factor > 0))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: scaling_factor %g must be positive", label, c->scaling_factor);
    if (c->sample_size < 1 || c->sample_size > 1 << 20)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: sample_size %d must be in 1..1048576", label, c->sample_size);
    return SD3_OK;
}

/* Every entry of a string array key must equal want (absent key: fine). */
static sd3_status check_str_array(const cJSON *j, const char *key, const char *want, const char *label, sd3_err *err) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!a || cJSON_IsNull(a)) return SD3_OK;
    if (!cJSON_IsArray(a)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s' is not an array", label, key);
    for (const cJSON *e = a->child; e; e = e->next)
        if (!cJSON_IsString(e) || strcmp(e->valuestring, want))
            return sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: %s entry '%s' is not supported (only %s)", label, key,
                            cJSON_IsString(e) ? e->valuestring : "?", want);
    return SD3_OK;
}

/* Parse config.json with diffusers' AutoencoderKL defaults for absent keys. */
sd3_status vae_config_load(vae_config *c, const char *path, sd3_err *err) {
    memset(c, 0, sizeof *c);
    cJSON *j = json_load_file(path, err);
    if (!j) return err ? err->status : SD3_ERR_FORMAT;
    sd3_status s = SD3_OK;
    int n = 0;
    if (!cJSON_IsObject(j)) { s = sd3_errf(err, SD3_ERR_FORMAT, "%s: not a JSON object", path); goto done; }
    if ((s = json_int_array(j, "block_out_channels", c->block_out_channels, VAE_MAX_LEVELS, &n, path, err))) goto done;
    if (n == 0) { n = 1; c->block_out_channels[0] = 64; }   /* diffusers default (64,) */
    c->n_levels = n;
    c->in_channels = json_int(j, "in_channels", 3);
    c->out_channels = json_int(j, "out_channels", 3);
    c->latent_channels = json_int(j, "latent_channels", 4);
    c->layers_per_block = json_int(j, "layers_per_block", 1);
    c->norm_num_groups = json_int(j, "norm_num_groups", 32);
    c->sample_size = json_int(j, "sample_size", 32);
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(j, "sample_size");
    if (cJSON_IsArray(ss) && cJSON_IsNumber(cJSON_GetArrayItem(ss, 0))) {  /* [h, w]: diffusers tiles with the first */
        double v = cJSON_GetArrayItem(ss, 0)->valuedouble;
        c->sample_size = (v >= 1 && v <= 1 << 20) ? (int)v : -1;  /* out of range: refused by the validation */
    }
    c->scaling_factor = json_num(j, "scaling_factor", 0.18215);
    c->shift_factor = json_num(j, "shift_factor", 0.0);     /* null in SD1/SDXL configs = no shift */
    c->use_quant_conv = json_bool(j, "use_quant_conv", 1);
    c->use_post_quant_conv = json_bool(j, "use_post_quant_conv", 1);
    c->mid_block_add_attention = json_bool(j, "mid_block_add_attention", 1);
    const char *act = json_str(j, "act_fn", "silu");
    if (strcmp(act, "silu")) { s = sd3_errf(err, SD3_ERR_UNSUPPORTED, "%s: act_fn '%s' (only silu)", path, act); goto done; }
    if ((s = check_str_array(j, "down_block_types", "DownEncoderBlock2D", path, err))) goto done;
    if ((s = check_str_array(j, "up_block_types", "UpDecoderBlock2D", path, err))) goto done;
    s = vae_config_validate(c, path, err);
done:
    cJSON_Delete(j);
    return s;
}

/* ================================================================================================ */
/* Key names: one place per layout                                                                  */
/* ================================================================================================ */

/* Prefix (ending in '.') of resnet j of level i; dec selects decoder up blocks (reversed in the
 * original layout). */
static void key_resnet(char *o, size_t n, vae_key_style st, int dec, int i, int j, int n_levels) {
    if (st == VAE_KEYS_DIFFUSERS)
        snprintf(o, n, dec ? "decoder.up_blocks.%d.resnets.%d." : "encoder.down_blocks.%d.resnets.%d.", i, j);
    else
        snprintf(o, n, dec ? "decoder.up.%d.block.%d." : "encoder.down.%d.block.%d.", dec ? n_levels - 1 - i : i, j);
}

/* Prefix of the resampling conv of level i (downsampler in the encoder, upsampler in the decoder). */
static void key_resample(char *o, size_t n, vae_key_style st, int dec, int i, int n_levels) {
    if (st == VAE_KEYS_DIFFUSERS)
        snprintf(o, n, dec ? "decoder.up_blocks.%d.upsamplers.0.conv." : "encoder.down_blocks.%d.downsamplers.0.conv.", i);
    else
        snprintf(o, n, dec ? "decoder.up.%d.upsample.conv." : "encoder.down.%d.downsample.conv.", dec ? n_levels - 1 - i : i);
}

/* Prefix of mid-block resnet k (0 or 1) of part ("encoder" / "decoder"). */
static void key_mid_resnet(char *o, size_t n, vae_key_style st, const char *part, int k) {
    if (st == VAE_KEYS_DIFFUSERS) snprintf(o, n, "%s.mid_block.resnets.%d.", part, k);
    else snprintf(o, n, "%s.mid.block_%d.", part, k + 1);
}

/* Names of the attention's parts: norm, q, k, v, out (diffusers, deprecated diffusers, original). */
static const char *const ATTN_NAMES[3][5] = {
    {"group_norm", "to_q", "to_k", "to_v", "to_out.0"},
    {"group_norm", "query", "key", "value", "proj_attn"},   /* diffusers files saved before 0.14 */
    {"norm", "q", "k", "v", "proj_out"},
};

/* ================================================================================================ */
/* Binding tensors                                                                                  */
/* ================================================================================================ */

/* Get the tensor at key prefix+suffix with the given shape (-1 = any). */
static sd3_status get_t(const weights *w, tensor *t, sd3_err *err, const char *prefix, const char *suffix, int nd,
                        int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    char key[256];
    snprintf(key, sizeof key, "%s%s", prefix, suffix);
    return weights_get_shape(w, key, t, err, nd, d0, d1, d2, d3);
}

/* A conv's weight (cout, cin, k, k) and bias (cout) at prefix "weight"/"bias". */
static sd3_status get_conv(const weights *w, tensor *wt, tensor *b, sd3_err *err, const char *prefix, int cout, int cin,
                           int k) {
    sd3_status s = get_t(w, wt, err, prefix, "weight", 4, cout, cin, k, k);
    if (s == SD3_OK) s = get_t(w, b, err, prefix, "bias", 1, cout, -1, -1, -1);
    return s;
}

/* A norm's weight and bias, both (C). */
static sd3_status get_norm(const weights *w, tensor *wt, tensor *b, sd3_err *err, const char *prefix, int C) {
    sd3_status s = get_t(w, wt, err, prefix, "weight", 1, C, -1, -1, -1);
    if (s == SD3_OK) s = get_t(w, b, err, prefix, "bias", 1, C, -1, -1, -1);
    return s;
}

/* A ResnetBlock2D cin -> cout at prefix (shortcut only when the channel count changes, as diffusers). */
static sd3_status load_resnet(const weights *w, vae_resnet *r, vae_key_style st, const char *prefix, int cin, int cout,
                              sd3_err *err) {
    char p[256];
    sd3_status s;
    memset(r, 0, sizeof *r);
    r->cin = cin;
    r->cout = cout;
    snprintf(p, sizeof p, "%snorm1.", prefix);
    if ((s = get_norm(w, &r->norm1_w, &r->norm1_b, err, p, cin))) return s;
    snprintf(p, sizeof p, "%sconv1.", prefix);
    if ((s = get_conv(w, &r->conv1_w, &r->conv1_b, err, p, cout, cin, 3))) return s;
    snprintf(p, sizeof p, "%snorm2.", prefix);
    if ((s = get_norm(w, &r->norm2_w, &r->norm2_b, err, p, cout))) return s;
    snprintf(p, sizeof p, "%sconv2.", prefix);
    if ((s = get_conv(w, &r->conv2_w, &r->conv2_b, err, p, cout, cout, 3))) return s;
    if (cin != cout) {
        snprintf(p, sizeof p, "%s%s.", prefix, st == VAE_KEYS_DIFFUSERS ? "conv_shortcut" : "nin_shortcut");
        if ((s = get_conv(w, &r->short_w, &r->short_b, err, p, cout, cin, 1))) return s;
    }
    return SD3_OK;
}

/* A projection of the attention: (C, C) linear or (C, C, 1, 1) conv kernel, viewed as (C, C). */
static sd3_status get_proj(const weights *w, tensor *wt, tensor *b, sd3_err *err, const char *prefix, const char *name,
                           int C) {
    char key[256];
    snprintf(key, sizeof key, "%s%s.weight", prefix, name);
    sd3_status s = weights_get(w, key, wt, err);
    if (s) return s;
    if (wt->ndim == 4) s = tensor_expect(wt, key, err, 4, C, C, 1, 1);
    else s = tensor_expect(wt, key, err, 2, C, C, -1, -1);
    if (s) { sd3_err_prefix(err, "%s", w->label); return s; }
    wt->ndim = 2;   /* same memory: a 1x1 conv kernel is the linear's matrix */
    snprintf(key, sizeof key, "%s.bias", name);
    return get_t(w, b, err, prefix, key, 1, C, -1, -1, -1);
}

/* The mid block of part ("encoder"/"decoder") with C channels. */
static sd3_status load_mid(const weights *w, vae_mid *m, vae_key_style st, const char *part, int C, int add_attn,
                           sd3_err *err) {
    char p[256];
    sd3_status s;
    for (int k = 0; k < 2; k++) {
        key_mid_resnet(p, sizeof p, st, part, k);
        if ((s = load_resnet(w, &m->res[k], st, p, C, C, err))) return s;
    }
    m->has_attn = add_attn;
    if (!add_attn) return SD3_OK;
    int names = 2;
    if (st == VAE_KEYS_DIFFUSERS) {
        snprintf(p, sizeof p, "%s.mid_block.attentions.0.", part);
        char probe[300];
        snprintf(probe, sizeof probe, "%sto_q.weight", p);
        names = weights_has(w, probe) ? 0 : 1;
        snprintf(probe, sizeof probe, "%squery.weight", p);
        if (names == 1 && !weights_has(w, probe)) names = 0;   /* neither: report the current name */
    } else {
        snprintf(p, sizeof p, "%s.mid.attn_1.", part);
    }
    vae_attn *a = &m->attn;
    a->C = C;
    char np[300];
    snprintf(np, sizeof np, "%s%s.", p, ATTN_NAMES[names][0]);
    if ((s = get_norm(w, &a->norm_w, &a->norm_b, err, np, C))) return s;
    if ((s = get_proj(w, &a->q_w, &a->q_b, err, p, ATTN_NAMES[names][1], C))) return s;
    if ((s = get_proj(w, &a->k_w, &a->k_b, err, p, ATTN_NAMES[names][2], C))) return s;
    if ((s = get_proj(w, &a->v_w, &a->v_b, err, p, ATTN_NAMES[names][3], C))) return s;
    return get_proj(w, &a->out_w, &a->out_b, err, p, ATTN_NAMES[names][4], C);
}

/* Encoder: conv_in, down levels, mid, norm_out, conv_out. */
static sd3_status load_encoder(const weights *w, vae_encoder *e, vae_key_style st, const vae_config *c, sd3_err *err) {
    const int *boc = c->block_out_channels, n = c->n_levels;
    char p[256];
    sd3_status s;
    if ((s = get_conv(w, &e->conv_in_w, &e->conv_in_b, err, "encoder.conv_in.", boc[0], c->in_channels, 3))) return s;
    for (int i = 0; i < n; i++) {
        vae_level *L = &e->down[i];
        int cin = i ? boc[i - 1] : boc[0], cout = boc[i];
        L->n_res = c->layers_per_block;
        for (int j = 0; j < L->n_res; j++) {
            key_resnet(p, sizeof p, st, 0, i, j, n);
            if ((s = load_resnet(w, &L->res[j], st, p, j ? cout : cin, cout, err))) return s;
        }
        L->has_resample = i < n - 1;
        if (L->has_resample) {
            key_resample(p, sizeof p, st, 0, i, n);
            if ((s = get_conv(w, &L->resample_w, &L->resample_b, err, p, cout, cout, 3))) return s;
        }
    }
    if ((s = load_mid(w, &e->mid, st, "encoder", boc[n - 1], c->mid_block_add_attention, err))) return s;
    const char *no = st == VAE_KEYS_DIFFUSERS ? "encoder.conv_norm_out." : "encoder.norm_out.";
    if ((s = get_norm(w, &e->norm_out_w, &e->norm_out_b, err, no, boc[n - 1]))) return s;
    return get_conv(w, &e->conv_out_w, &e->conv_out_b, err, "encoder.conv_out.", 2 * c->latent_channels, boc[n - 1], 3);
}

/* Decoder: conv_in, mid, up levels (channels reversed), norm_out, conv_out. */
static sd3_status load_decoder(const weights *w, vae_decoder *d, vae_key_style st, const vae_config *c, sd3_err *err) {
    const int *boc = c->block_out_channels, n = c->n_levels;
    char p[256];
    sd3_status s;
    if ((s = get_conv(w, &d->conv_in_w, &d->conv_in_b, err, "decoder.conv_in.", boc[n - 1], c->latent_channels, 3)))
        return s;
    if ((s = load_mid(w, &d->mid, st, "decoder", boc[n - 1], c->mid_block_add_attention, err))) return s;
    int prev = boc[n - 1];
    for (int i = 0; i < n; i++) {
        vae_level *L = &d->up[i];
        int cout = boc[n - 1 - i];
        L->n_res = c->layers_per_block + 1;
        for (int j = 0; j < L->n_res; j++) {
            key_resnet(p, sizeof p, st, 1, i, j, n);
            if ((s = load_resnet(w, &L->res[j], st, p, j ? cout : prev, cout, err))) return s;
        }
        L->has_resample = i < n - 1;
        if (L->has_resample) {
            key_resample(p, sizeof p, st, 1, i, n);
            if ((s = get_conv(w, &L->resample_w, &L->resample_b, err, p, cout, cout, 3))) return s;
        }
        prev = cout;
    }
    const char *no = st == VAE_KEYS_DIFFUSERS ? "decoder.conv_norm_out." : "decoder.norm_out.";
    if ((s = get_norm(w, &d->norm_out_w, &d->norm_out_b, err, no, boc[0]))) return s;
    return get_conv(w, &d->conv_out_w, &d->conv_out_b, err, "decoder.conv_out.", c->out_channels, boc[0], 3);
}

/* Bind everything; on failure m is left zeroed (it never owns anything here). */
sd3_status vae_load(vae_model *m, const weights *w, vae_key_style style, const vae_config *cfg, sd3_err *err) {
    memset(m, 0, sizeof *m);
    sd3_status s = vae_config_validate(cfg, w->label, err);
    if (s) return s;
    m->cfg = *cfg;
    int L = cfg->latent_channels;
    if ((s = load_encoder(w, &m->enc, style, cfg, err))) goto fail;
    if ((s = load_decoder(w, &m->dec, style, cfg, err))) goto fail;
    if (cfg->use_quant_conv && (s = get_conv(w, &m->quant_conv_w, &m->quant_conv_b, err, "quant_conv.", 2 * L, 2 * L, 1)))
        goto fail;
    if (cfg->use_post_quant_conv &&
        (s = get_conv(w, &m->post_quant_conv_w, &m->post_quant_conv_b, err, "post_quant_conv.", L, L, 1)))
        goto fail;
    m->tile_sample_min_size = cfg->sample_size;
    m->tile_latent_min_size = (int)(cfg->sample_size / (double)vae_downscale(cfg));
    m->tile_overlap_factor = 0.25;
    return SD3_OK;
fail:
    memset(m, 0, sizeof *m);
    return s;
}

/* ================================================================================================ */
/* Opening files                                                                                    */
/* ================================================================================================ */

sd3_status vae_open_dir(vae_model *m, const char *dir, sd3_err *err) {
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    vae_config cfg;
    sd3_status s = vae_config_load(&cfg, path, err);
    if (s) return s;
    weights w;
    if ((s = weights_open_dir(&w, dir, "diffusion_pytorch_model", err))) return s;
    if ((s = vae_load(m, &w, VAE_KEYS_DIFFUSERS, &cfg, err))) { weights_close(&w); return s; }
    m->files = w;        /* the tensors point into w's mappings, which stay put when the struct moves */
    m->owns_files = 1;
    return SD3_OK;
}

/* Shape dimension d of key, or -1 if absent or of lower rank. */
static int64_t key_dim(const weights *w, const char *key, int d) {
    const st_entry *e = weights_find(w, key, NULL);
    return e && e->ndim > d ? e->shape[d] : -1;
}

sd3_status vae_config_infer(vae_config *c, const weights *w, vae_key_style st, sd3_err *err) {
    memset(c, 0, sizeof *c);
    char p[256], key[300];
    int64_t cin = key_dim(w, "encoder.conv_in.weight", 1);
    int64_t lat = key_dim(w, "decoder.conv_in.weight", 1);
    int64_t out = key_dim(w, "decoder.conv_out.weight", 0);
    if (cin < 1 || lat < 1 || out < 1)
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: cannot infer the VAE config: tensor '%sencoder.conv_in.weight', "
                        "'decoder.conv_in.weight' or 'decoder.conv_out.weight' is missing; give a config", w->label, w->prefix);
    c->in_channels = (int)cin;
    c->latent_channels = (int)lat;
    c->out_channels = (int)out;
    int n = 0;
    for (; n < VAE_MAX_LEVELS; n++) {
        key_resnet(p, sizeof p, st, 0, n, 0, 0);
        snprintf(key, sizeof key, "%sconv1.weight", p);
        int64_t co = key_dim(w, key, 0);
        if (co < 1) break;
        c->block_out_channels[n] = (int)co;
    }
    int lpb = 0;
    for (; lpb < VAE_MAX_RESNETS; lpb++) {
        key_resnet(p, sizeof p, st, 0, 0, lpb, 0);
        snprintf(key, sizeof key, "%sconv1.weight", p);
        if (key_dim(w, key, 0) < 1) break;
    }
    c->n_levels = n;
    c->layers_per_block = lpb;
    c->norm_num_groups = 32;   /* not visible in the weights; 32 in every released SD VAE */
    c->use_quant_conv = weights_has(w, "quant_conv.weight");
    c->use_post_quant_conv = weights_has(w, "post_quant_conv.weight");
    c->mid_block_add_attention = weights_has(w, st == VAE_KEYS_DIFFUSERS ? "encoder.mid_block.attentions.0.group_norm.weight"
                                                                         : "encoder.mid.attn_1.norm.weight");
    if (c->latent_channels == 16) {
        c->scaling_factor = 1.5305;
        c->shift_factor = 0.0609;
        c->sample_size = 1024;
    } else {
        c->scaling_factor = 0.18215;
        c->shift_factor = 0.0;
        c->sample_size = 512;
    }
    return vae_config_validate(c, w->label, err);
}

sd3_status vae_open_file(vae_model *m, const char *path, const vae_config *cfg, sd3_err *err) {
    memset(m, 0, sizeof *m);
    weights base;
    sd3_status s = weights_open_file(&base, path, err);
    if (s) return s;
    weights w;
    vae_key_style st;
    const char *prefix = weights_has(&base, "first_stage_model.encoder.conv_in.weight") ? "first_stage_model."
                         : weights_has(&base, "vae.encoder.conv_in.weight")            ? "vae."
                                                                                        : "";
    weights_view(&w, &base, prefix);
    if (weights_has(&w, "encoder.down_blocks.0.resnets.0.conv1.weight")) st = VAE_KEYS_DIFFUSERS;
    else if (weights_has(&w, "encoder.down.0.block.0.conv1.weight")) st = VAE_KEYS_ORIGINAL;
    else {
        weights_close(&base);
        return sd3_errf(err, SD3_ERR_NOT_FOUND, "%s: no VAE found (neither 'first_stage_model.encoder.*' nor a bare "
                        "'encoder.down.0.block.0.conv1.weight' / 'encoder.down_blocks.0.resnets.0.conv1.weight')", path);
    }
    vae_config inferred;
    if (!cfg) {
        if ((s = vae_config_infer(&inferred, &w, st, err))) { weights_close(&base); return s; }
        cfg = &inferred;
    }
    if ((s = vae_load(m, &w, st, cfg, err))) { weights_close(&base); return s; }
    /* keep the file open under the model; the view's prefix is only needed for lookups, done now */
    m->files = base;
    m->owns_files = 1;
    return SD3_OK;
}

void vae_free(vae_model *m) {
    if (!m) return;
    if (m->owns_files) weights_close(&m->files);
    memset(m, 0, sizeof *m);
}
