/*
 * lora.c — LoRA files (parse, group per module, detect the key format), mapping onto the transformer's
 * Linears (mmdit_list_linears gives each Linear's diffusers and original names), run-time attachment
 * through the mmdit_linear LoRA hook, and fusing / unfusing. See lora.h for the semantics.
 *
 * Bookkeeping on the model (m->lora_state): one slot per Linear that ever received an adapter, holding
 * the weight view as loaded (restored by unfuse) and the adapters folded into a fused copy; the files
 * the adapters borrow tensors from, each with one reference per attach.
 */
#include <ctype.h>
#include <math.h>
#include <string.h>
#include "kernels/kernels.h"
#include "lora/lora.h"
#include "lora/lora_internal.h"

/* ================================================================================================ */
/* Files                                                                                            */
/* ================================================================================================ */

enum { PART_A, PART_B, PART_ALPHA, PART_DORA };

/* Tensor suffixes of a LoRA module (PEFT / diffusers, kohya, older diffusers attention processors). */
static const struct { const char *suffix; int part; } SUFFIXES[] = {
    {".lora_A.weight", PART_A},
    {".lora_B.weight", PART_B},
    {".lora_down.weight", PART_A},
    {".lora_up.weight", PART_B},
    {".lora.down.weight", PART_A},
    {".lora.up.weight", PART_B},
    {".lora_linear_layer.down.weight", PART_A},
    {".lora_linear_layer.up.weight", PART_B},
    {".alpha", PART_ALPHA},
    {".dora_scale", PART_DORA},
    {".lora_magnitude_vector", PART_DORA},        /* PEFT's DoRA magnitude */
    {".lora_magnitude_vector.weight", PART_DORA},
};

/* Module stem prefixes: which model and how the rest of the name is spelled. */
static const struct { const char *prefix; lora_target target; lora_naming naming; } PREFIXES[] = {
    {"transformer.", LORA_TARGET_TRANSFORMER, LORA_NAME_DIFFUSERS},
    {"base_model.model.", LORA_TARGET_TRANSFORMER, LORA_NAME_DIFFUSERS},
    {"lora_transformer_", LORA_TARGET_TRANSFORMER, LORA_NAME_DIFFUSERS_US},
    {"lora_unet_", LORA_TARGET_TRANSFORMER, LORA_NAME_ORIGINAL_US},
    {"model.diffusion_model.", LORA_TARGET_TRANSFORMER, LORA_NAME_ORIGINAL},
    {"diffusion_model.", LORA_TARGET_TRANSFORMER, LORA_NAME_ORIGINAL},
    {"text_encoder.", LORA_TARGET_CLIP_L, LORA_NAME_DIFFUSERS},
    {"text_encoder_2.", LORA_TARGET_CLIP_G, LORA_NAME_DIFFUSERS},
    {"text_encoder_3.", LORA_TARGET_T5, LORA_NAME_DIFFUSERS},
    {"lora_te1_", LORA_TARGET_CLIP_L, LORA_NAME_DIFFUSERS_US},
    {"lora_te2_", LORA_TARGET_CLIP_G, LORA_NAME_DIFFUSERS_US},
    {"lora_te3_", LORA_TARGET_T5, LORA_NAME_DIFFUSERS_US},
    {"lora_te_", LORA_TARGET_CLIP_L, LORA_NAME_DIFFUSERS_US},
};

static const char *TARGET_NAMES[LORA_TARGET_COUNT] = {"transformer", "CLIP-L text encoder", "CLIP-G text encoder",
                                                      "T5 text encoder"};

/* strdup through sd3_malloc (NULL on failure). */
static char *dup_str(const char *s, size_t n) {
    char *d = sd3_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Free everything a file owns. */
static void file_free(lora_file *f) {
    for (int i = 0; i < f->n_mods; i++) {
        sd3_free(f->mods[i].stem);
        sd3_free(f->mods[i].key_a);
        sd3_free(f->mods[i].key_b);
    }
    sd3_free(f->mods);
    for (int i = 0; i < f->n_stray; i++) sd3_free(f->stray[i]);
    sd3_free(f->stray);
    for (int i = 0; i < f->n_copies; i++) sd3_free(f->copies[i]);
    sd3_free(f->copies);
    if (f->st) st_close(f->st);
    sd3_free(f->path);
    sd3_free(f);
}

void lora_close(lora_file *f) {
    if (f && --f->refs <= 0) file_free(f);
}

/* The module with this stem, created if new (NULL when out of memory). */
static lora_module *module_for(lora_file *f, const char *stem, size_t n, int *cap) {
    for (int i = f->n_mods - 1; i >= 0; i--)
        if (strlen(f->mods[i].stem) == n && !memcmp(f->mods[i].stem, stem, n)) return &f->mods[i];
    if (f->n_mods == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        lora_module *nm = sd3_calloc((size_t)nc, sizeof *nm);
        if (!nm) return NULL;
        if (f->n_mods) memcpy(nm, f->mods, (size_t)f->n_mods * sizeof *nm);
        sd3_free(f->mods);
        f->mods = nm;
        *cap = nc;
    }
    lora_module *md = &f->mods[f->n_mods];
    memset(md, 0, sizeof *md);
    if (!(md->stem = dup_str(stem, n))) return NULL;
    f->n_mods++;
    md->target = LORA_TARGET_TRANSFORMER;
    md->naming = LORA_NAME_ANY;
    md->path = md->stem;
    for (size_t k = 0; k < sizeof PREFIXES / sizeof PREFIXES[0]; k++) {
        size_t pl = strlen(PREFIXES[k].prefix);
        if (n > pl && !strncmp(md->stem, PREFIXES[k].prefix, pl)) {
            md->target = PREFIXES[k].target;
            md->naming = PREFIXES[k].naming;
            md->path = md->stem + pl;
            break;
        }
    }
    return md;
}

/* A view of entry e (an aligned owned copy when the file stores it misaligned), checked to be a float
 * matrix (rank 2, or rank 4 with a 1x1 kernel, viewed as rank 2) unless scalar is set (then one float). */
static sd3_status entry_view(lora_file *f, const st_entry *e, int scalar, tensor *t, sd3_err *err) {
    sd3_status s = st_entry_tensor(f->st, e, t, err);
    if (s != SD3_OK) return s;
    if (t->dt != DT_F32 && t->dt != DT_F16 && t->dt != DT_BF16 && !(scalar && t->dt == DT_F64))
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: LoRA tensor '%s' has dtype %s (F32, F16 or BF16 expected)", f->path,
                        e->name, dtype_name(t->dt));
    char sb[64];
    if (scalar) {
        if (tensor_numel(t) != 1)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: LoRA alpha '%s' has shape %s (one value expected)", f->path,
                            e->name, tensor_shape_str(t, sb, sizeof sb));
        return SD3_OK;
    }
    if (t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1) t->ndim = 2;
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: LoRA tensor '%s' has shape %s (a non-empty matrix expected)",
                        f->path, e->name, tensor_shape_str(t, sb, sizeof sb));
    if (!st_entry_is_aligned(e)) {
        void **nc = sd3_malloc((size_t)(f->n_copies + 1) * sizeof *nc);
        void *buf = sd3_malloc(tensor_nbytes(t));
        if (!nc || !buf) {
            sd3_free(nc);
            sd3_free(buf);
            return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory copying '%s'", f->path, e->name);
        }
        if (f->n_copies) memcpy(nc, f->copies, (size_t)f->n_copies * sizeof *nc);
        sd3_free(f->copies);
        f->copies = nc;
        memcpy(buf, t->data, tensor_nbytes(t));
        f->copies[f->n_copies++] = buf;
        t->data = buf;
    }
    return SD3_OK;
}

/* Record a tensor name that belongs to no LoRA module. */
static sd3_status add_stray(lora_file *f, const char *name, sd3_err *err) {
    char **ns = sd3_malloc((size_t)(f->n_stray + 1) * sizeof *ns);
    char *d = dup_str(name, strlen(name));
    if (!ns || !d) {
        sd3_free(ns);
        sd3_free(d);
        return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", f->path);
    }
    if (f->n_stray) memcpy(ns, f->stray, (size_t)f->n_stray * sizeof *ns);
    sd3_free(f->stray);
    f->stray = ns;
    f->stray[f->n_stray++] = d;
    return SD3_OK;
}

/* Sort one entry of the file into its module (or the stray list). */
static sd3_status parse_entry(lora_file *f, const st_entry *e, int *cap, sd3_err *err) {
    size_t len = strlen(e->name);
    for (size_t k = 0; k < sizeof SUFFIXES / sizeof SUFFIXES[0]; k++) {
        size_t sl = strlen(SUFFIXES[k].suffix);
        if (len <= sl || strcmp(e->name + len - sl, SUFFIXES[k].suffix)) continue;
        lora_module *md = module_for(f, e->name, len - sl, cap);
        if (!md) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", f->path);
        tensor t;
        sd3_status s;
        switch (SUFFIXES[k].part) {
        case PART_A:
        case PART_B: {
            char **key = SUFFIXES[k].part == PART_A ? &md->key_a : &md->key_b;
            if (*key)
                return sd3_errf(err, SD3_ERR_FORMAT, "%s: LoRA module '%s' has two %s tensors ('%s' and '%s')",
                                f->path, md->stem, SUFFIXES[k].part == PART_A ? "down (A)" : "up (B)", *key, e->name);
            if ((s = entry_view(f, e, 0, &t, err)) != SD3_OK) return s;
            if (!(*key = dup_str(e->name, len))) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", f->path);
            if (SUFFIXES[k].part == PART_A) md->A = t;
            else md->B = t;
            break;
        }
        case PART_ALPHA:
            if ((s = entry_view(f, e, 1, &t, err)) != SD3_OK) return s;
            md->alpha = tensor_get_f32(&t, 0);
            md->has_alpha = 1;
            if (!isfinite(md->alpha))
                return sd3_errf(err, SD3_ERR_FORMAT, "%s: LoRA alpha '%s' is not finite", f->path, e->name);
            break;
        default:
            md->has_dora = 1;
            break;
        }
        return SD3_OK;
    }
    return add_stray(f, e->name, err);
}

sd3_status lora_open(lora_file **out, const char *path, sd3_err *err) {
    SD3_ASSERT(out && path);
    *out = NULL;
    lora_file *f = sd3_calloc(1, sizeof *f);
    if (!f || !(f->path = dup_str(path, strlen(path)))) {
        sd3_free(f);
        return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    f->refs = 1;
    sd3_status s = st_open(&f->st, path, err);
    int cap = 0;
    for (int i = 0; s == SD3_OK && i < f->st->n; i++) s = parse_entry(f, &f->st->entries[i], &cap, err);
    for (int i = 0; s == SD3_OK && i < f->n_mods; i++) {
        lora_module *md = &f->mods[i];
        if (!md->has_alpha && md->key_a) md->alpha = (float)md->A.shape[0];
    }
    if (s == SD3_OK && f->n_mods == 0 && f->n_stray == 0)
        s = sd3_errf(err, SD3_ERR_FORMAT, "%s: the file holds no tensors (not a LoRA)", path);
    if (s != SD3_OK) {
        file_free(f);
        return s;
    }
    *out = f;
    return SD3_OK;
}

int lora_count(const lora_file *f, lora_target t) {
    int n = 0;
    for (int i = 0; f && i < f->n_mods; i++) n += f->mods[i].target == t;
    return n;
}

/* ================================================================================================ */
/* Model bookkeeping                                                                                */
/* ================================================================================================ */

/* One Linear that received adapters. */
typedef struct lora_slot {
    mmdit_linear *lin;
    tensor original;              /* the weight as loaded (valid while fused) */
    int fused;                    /* lin->weight is our owned F32 copy W + sum s B A */
    mmdit_lora_adapter *folded;   /* adapters folded into that copy (off lin->lora while fused) */
} lora_slot;

typedef struct lora_state {
    lora_slot *slots;
    int n_slots, cap_slots;
    lora_file **files;            /* one entry (= one reference) per successful attach */
    int n_files, cap_files;
} lora_state;

/* Grow an array of elem-sized items to hold at least need (0 or -1 when out of memory). */
static int reserve(void **arr, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 16;
    while (nc < need) nc *= 2;
    void *na = sd3_calloc((size_t)nc, elem);
    if (!na) return -1;
    if (*arr) memcpy(na, *arr, (size_t)*cap * elem);
    sd3_free(*arr);
    *arr = na;
    *cap = nc;
    return 0;
}

/* Free a list of adapters (and their owned B copies). */
static void free_adapters(mmdit_lora_adapter *ad) {
    while (ad) {
        mmdit_lora_adapter *next = ad->next;
        tensor_free(&ad->B);
        sd3_free(ad);
        ad = next;
    }
}

/* Append list b at the end of list *a. */
static void append_list(mmdit_lora_adapter **a, mmdit_lora_adapter *b) {
    while (*a) a = &(*a)->next;
    *a = b;
}

void lora_unfuse(mmdit_model *m) {
    lora_state *st = m ? m->lora_state : NULL;
    for (int i = 0; st && i < st->n_slots; i++) {
        lora_slot *sl = &st->slots[i];
        if (!sl->fused) continue;
        tensor_free(&sl->lin->weight);
        sl->lin->weight = sl->original;
        append_list(&sl->folded, sl->lin->lora);
        sl->lin->lora = sl->folded;
        sl->folded = NULL;
        sl->fused = 0;
    }
}

/* The model's release hook (mmdit_free calls it). */
static void release_hook(mmdit_model *m) { lora_detach_all(m); }

void lora_detach_all(mmdit_model *m) {
    lora_state *st = m ? m->lora_state : NULL;
    if (!st) return;
    lora_unfuse(m);
    for (int i = 0; i < st->n_slots; i++) {
        free_adapters(st->slots[i].lin->lora);
        st->slots[i].lin->lora = NULL;
    }
    for (int i = 0; i < st->n_files; i++) lora_close(st->files[i]);
    sd3_free(st->slots);
    sd3_free(st->files);
    sd3_free(st);
    m->lora_state = NULL;
    m->lora_release = NULL;
}

int lora_adapter_count(const mmdit_model *m, int *n_fused) {
    const lora_state *st = m ? m->lora_state : NULL;
    int n = 0, nf = 0;
    for (int i = 0; st && i < st->n_slots; i++) {
        for (const mmdit_lora_adapter *a = st->slots[i].lin->lora; a; a = a->next) n++;
        for (const mmdit_lora_adapter *a = st->slots[i].folded; a; a = a->next) nf++;
    }
    if (n_fused) *n_fused = nf;
    return n;
}

/* ================================================================================================ */
/* Attach                                                                                           */
/* ================================================================================================ */

/* Does an underscored name equal a dotted one with every '.' read as '_'? */
int lora_us_equal(const char *us, const char *dotted) {
    for (; *us && *dotted; us++, dotted++)
        if (*us != (*dotted == '.' ? '_' : *dotted)) return 0;
    return !*us && !*dotted;
}

/* Does module md name Linear nl? *by_original says whether the original name matched. */
static int names_linear(const lora_module *md, const mmdit_named_linear *nl, int *by_original) {
    *by_original = 0;
    switch (md->naming) {
    case LORA_NAME_DIFFUSERS: return !strcmp(md->path, nl->diffusers);
    case LORA_NAME_DIFFUSERS_US: return lora_us_equal(md->path, nl->diffusers);
    case LORA_NAME_ORIGINAL: return (*by_original = !strcmp(md->path, nl->original));
    case LORA_NAME_ORIGINAL_US: return (*by_original = lora_us_equal(md->path, nl->original));
    default:
        if (!strcmp(md->path, nl->diffusers)) return 1;
        return (*by_original = !strcmp(md->path, nl->original));
    }
}

/* "'a', 'b', 'c' and 4 more (7 in all)" into buf. */
void lora_name_list(char *buf, size_t n, const char *const *names, int count) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < count && i < 4 && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s'%s'", i ? ", " : "", names[i]);
    if (count > 4 && o < n) snprintf(buf + o, n - o, " and %d more (%d in all)", count - 4, count);
}

/* One planned adapter: module md onto Linear lin, using B's row third `part` (or -1) / swapped halves. */
typedef struct plan {
    const lora_module *md;
    mmdit_linear *lin;
    int part, swap;
} plan;

/* Check the shapes of md against Linear nl (part: md's B covers a fused [q; k; v]). */
static sd3_status check_shapes(const lora_file *f, const lora_module *md, const mmdit_named_linear *nl, int part,
                               sd3_err *err) {
    const tensor *W = &nl->lin->weight;
    const int64_t N = W->shape[0], K = W->shape[1], rows = part >= 0 ? 3 * N : N;
    const int64_t r = md->A.shape[0];
    if (md->A.shape[1] == K && md->B.shape[1] == r && md->B.shape[0] == rows && (!nl->swap || rows % 2 == 0))
        return SD3_OK;
    char sa[64], sb[64];
    return sd3_errf(err, SD3_ERR_SHAPE,
                    "%s: LoRA module '%s' does not fit the model: '%s' is %s and '%s' is %s, but %s%s has weight "
                    "[%lld, %lld]%s, so A must be [r, %lld] and B [%lld, r] with the same rank r",
                    f->path, md->stem, md->key_a, tensor_shape_str(&md->A, sa, sizeof sa), md->key_b,
                    tensor_shape_str(&md->B, sb, sizeof sb), part >= 0 ? "each third of " : "", nl->diffusers,
                    (long long)N, (long long)K, part >= 0 ? " (the fused qkv has 3x the rows)" : "", (long long)K,
                    (long long)rows);
}

/* Build the run-time adapter of plan p (B a row slice, or a copy with its halves swapped). */
static mmdit_lora_adapter *make_adapter(const plan *p, float user_scale) {
    const lora_module *md = p->md;
    mmdit_lora_adapter *ad = sd3_calloc(1, sizeof *ad);
    if (!ad) return NULL;
    const int64_t r = md->A.shape[0];
    ad->A = md->A;
    ad->A.owned = 0;
    ad->B = md->B;
    ad->B.owned = 0;
    ad->scale = user_scale * md->alpha / (float)r;
    const size_t row_bytes = (size_t)r * dtype_size(md->B.dt);
    if (p->part >= 0) {
        int64_t N = md->B.shape[0] / 3;
        ad->B.shape[0] = N;
        ad->B.data = (char *)md->B.data + (size_t)p->part * (size_t)N * row_bytes;
    } else if (p->swap) {
        size_t half = (size_t)(md->B.shape[0] / 2) * row_bytes;
        char *buf = sd3_malloc(2 * half);
        if (!buf) {
            sd3_free(ad);
            return NULL;
        }
        memcpy(buf, (const char *)md->B.data + half, half);
        memcpy(buf + half, md->B.data, half);
        ad->B.data = buf;
        ad->B.owned = 1;
    }
    return ad;
}

sd3_status lora_attach(mmdit_model *m, lora_file *f, float scale, int lenient, sd3_err *err) {
    SD3_ASSERT(m && f);
    if (!m->blocks) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: LoRA attach to a model that is not loaded", f->path);
    if (!isfinite(scale)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: LoRA scale %g is not finite", f->path, scale);
    sd3_status s = SD3_OK;
    int n_lin = mmdit_list_linears(m, NULL, 0);
    mmdit_named_linear *lins = sd3_calloc((size_t)n_lin, sizeof *lins);
    plan *plans = sd3_calloc((size_t)f->n_mods * 3 + 1, sizeof *plans);
    const char **unmatched = sd3_calloc((size_t)f->n_mods + (size_t)f->n_stray + 1, sizeof *unmatched);
    const char **skipped = sd3_calloc((size_t)f->n_mods + 1, sizeof *skipped);
    mmdit_lora_adapter **made = sd3_calloc((size_t)f->n_mods * 3 + 1, sizeof *made);
    int n_plans = 0, n_unmatched = 0, n_skipped = 0, n_dora = 0, n_te = 0;
    if (!lins || !plans || !unmatched || !skipped || !made) {
        s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory attaching the LoRA", f->path);
        goto done;
    }
    mmdit_list_linears(m, lins, n_lin);

    /* Plan: every transformer module onto its Linear(s), checking shapes; nothing is changed yet. */
    for (int i = 0; i < f->n_mods; i++) {
        const lora_module *md = &f->mods[i];
        if (md->target != LORA_TARGET_TRANSFORMER) {
            n_te++;
            continue;
        }
        if (!md->key_a || !md->key_b) {
            if (!lenient) {
                s = sd3_errf(err, SD3_ERR_FORMAT, "%s: LoRA module '%s' has %s but no %s tensor", f->path, md->stem,
                             md->key_a ? "a down (A)" : md->key_b ? "an up (B)" : "only an alpha",
                             md->key_a ? "up (B)" : "down (A)");
                goto done;
            }
            skipped[n_skipped++] = md->stem;
            continue;
        }
        if (md->has_dora) {
            if (!lenient) {
                s = sd3_errf(err, SD3_ERR_UNSUPPORTED,
                             "%s: LoRA module '%s' is a DoRA (.dora_scale), which is not supported (lenient mode "
                             "applies it as a plain LoRA, as diffusers does)",
                             f->path, md->stem);
                goto done;
            }
            n_dora++;
        }
        int found = 0;
        for (int j = 0; j < n_lin; j++) {
            int by_orig;
            if (!names_linear(md, &lins[j], &by_orig)) continue;
            int part = by_orig ? lins[j].part : -1, swap = by_orig && lins[j].swap;
            if ((s = check_shapes(f, md, &lins[j], part, err)) != SD3_OK) goto done;
            if (found == 3) { /* a name matching more than a fused triple would be a table bug */
                s = sd3_errf(err, SD3_ERR_INTERNAL, "%s: LoRA module '%s' matches more than three Linears", f->path,
                             md->stem);
                goto done;
            }
            plans[n_plans++] = (plan){md, lins[j].lin, part, swap};
            found++;
        }
        if (!found) unmatched[n_unmatched++] = md->stem;
    }
    for (int i = 0; i < f->n_stray; i++) unmatched[n_unmatched++] = f->stray[i];

    char list[1024];
    if (n_unmatched) {
        lora_name_list(list, sizeof list, unmatched, n_unmatched);
        if (!lenient) {
            s = sd3_errf(err, SD3_ERR_NOT_FOUND,
                         "%s: %d LoRA module(s)/tensor(s) match no Linear of the transformer: %s (use lenient mode "
                         "to skip them)",
                         f->path, n_unmatched, list);
            goto done;
        }
        LOG_WARN("%s: skipping %d LoRA module(s)/tensor(s) that match no Linear of the transformer: %s", f->path,
                 n_unmatched, list);
    }
    if (n_skipped) {
        lora_name_list(list, sizeof list, skipped, n_skipped);
        LOG_WARN("%s: skipping %d incomplete LoRA module(s) (A or B missing): %s", f->path, n_skipped, list);
    }
    if (n_dora) LOG_WARN("%s: %d DoRA module(s) applied as plain LoRA (magnitude ignored)", f->path, n_dora);
    /* Text-encoder modules: the CLIPs' are applied by lora_clip_fuse (lora_clip.h); T5 LoRAs are not supported. */
    if (n_te) {
        int n_clip = lora_count(f, LORA_TARGET_CLIP_L) + lora_count(f, LORA_TARGET_CLIP_G);
        if (n_clip)
            LOG_INFO("%s: %d module(s) for the %s and %d for the %s are left to lora_clip_fuse", f->path,
                     lora_count(f, LORA_TARGET_CLIP_L), TARGET_NAMES[LORA_TARGET_CLIP_L],
                     lora_count(f, LORA_TARGET_CLIP_G), TARGET_NAMES[LORA_TARGET_CLIP_G]);
        if (lora_count(f, LORA_TARGET_T5))
            LOG_WARN("%s: %d LoRA module(s) for the %s are not applied (T5 LoRAs are not supported)", f->path,
                     lora_count(f, LORA_TARGET_T5), TARGET_NAMES[LORA_TARGET_T5]);
    }

    /* Build every adapter and reserve the bookkeeping, then link: the last step cannot fail. */
    for (int i = 0; i < n_plans; i++)
        if (!(made[i] = make_adapter(&plans[i], scale))) {
            s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory attaching the LoRA", f->path);
            goto done;
        }
    lora_state *st = m->lora_state;
    if (!st) {
        if (!(st = sd3_calloc(1, sizeof *st))) {
            s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory attaching the LoRA", f->path);
            goto done;
        }
        m->lora_state = st;
        m->lora_release = release_hook;
    }
    if (reserve((void **)&st->slots, &st->cap_slots, st->n_slots + n_plans, sizeof *st->slots) ||
        reserve((void **)&st->files, &st->cap_files, st->n_files + 1, sizeof *st->files)) {
        s = sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory attaching the LoRA", f->path);
        goto done;
    }
    for (int i = 0; i < n_plans; i++) {
        lora_slot *sl = NULL;
        for (int k = 0; k < st->n_slots && !sl; k++)
            if (st->slots[k].lin == plans[i].lin) sl = &st->slots[k];
        if (!sl) {
            sl = &st->slots[st->n_slots++];
            memset(sl, 0, sizeof *sl);
            sl->lin = plans[i].lin;
        }
        append_list(&sl->lin->lora, made[i]);
        made[i] = NULL;
    }
    st->files[st->n_files++] = f;
    f->refs++;
    LOG_INFO("%s: %d LoRA adapter(s) attached at scale %g", f->path, n_plans, scale);

done:
    for (int i = 0; made && i < n_plans; i++) free_adapters(made[i]);
    if (s != SD3_OK && m->lora_state && !((lora_state *)m->lora_state)->n_files) lora_detach_all(m);
    sd3_free(made);
    sd3_free(skipped);
    sd3_free(unmatched);
    sd3_free(plans);
    sd3_free(lins);
    return s;
}

/* ================================================================================================ */
/* Fuse                                                                                             */
/* ================================================================================================ */

/* W (any float dtype) + sum over the list of s B A, as a fresh F32 [N, K] buffer (NULL when out of memory). */
float *lora_fused_copy(const tensor *W, const mmdit_lora_adapter *ad) {
    const int64_t N = W->shape[0], K = W->shape[1];
    float *w = sd3_malloc((size_t)(N * K) * sizeof(float));
    float *d = sd3_malloc((size_t)(N * K) * sizeof(float));
    if (!w || !d) goto fail;
    tensor_to_f32(W, 0, N * K, w);
    for (; ad; ad = ad->next) {
        const int64_t r = ad->A.shape[0];
        float *a = sd3_malloc((size_t)(r * K) * sizeof(float)), *b = sd3_malloc((size_t)(N * r) * sizeof(float));
        if (!a || !b) {
            sd3_free(a);
            sd3_free(b);
            goto fail;
        }
        tensor_to_f32(&ad->A, 0, r * K, a);
        tensor_to_f32(&ad->B, 0, N * r, b);
        k_matmul(d, b, a, 1, (int)N, (int)K, (int)r, 0); /* B [N, r] . A [r, K] */
        k_axpy(w, ad->scale, d, (size_t)(N * K));
        sd3_free(a);
        sd3_free(b);
    }
    sd3_free(d);
    return w;
fail:
    sd3_free(w);
    sd3_free(d);
    return NULL;
}

sd3_status lora_fuse(mmdit_model *m, sd3_err *err) {
    lora_state *st = m ? m->lora_state : NULL;
    if (!st) return SD3_OK;
    for (int i = 0; i < st->n_slots; i++) {
        const tensor *W = &st->slots[i].lin->weight;
        if (st->slots[i].lin->lora && W->dt != DT_F32 && W->dt != DT_F16 && W->dt != DT_BF16)
            return sd3_errf(err, SD3_ERR_UNSUPPORTED,
                            "lora: cannot fuse into a %s weight (only F32/F16/BF16 weights; run-time LoRA works on "
                            "any weight)",
                            dtype_name(W->dt));
    }
    float **copies = sd3_calloc((size_t)st->n_slots + 1, sizeof *copies);
    if (!copies) return sd3_errf(err, SD3_ERR_NOMEM, "lora: out of memory fusing");
    for (int i = 0; i < st->n_slots; i++) {
        if (!st->slots[i].lin->lora) continue;
        if (!(copies[i] = lora_fused_copy(&st->slots[i].lin->weight, st->slots[i].lin->lora))) {
            for (int k = 0; k < i; k++) sd3_free(copies[k]);
            sd3_free(copies);
            return sd3_errf(err, SD3_ERR_NOMEM, "lora: out of memory fusing");
        }
    }
    for (int i = 0; i < st->n_slots; i++) {
        lora_slot *sl = &st->slots[i];
        if (!copies[i]) continue;
        tensor nw;
        memset(&nw, 0, sizeof nw);
        nw.dt = DT_F32;
        nw.ndim = 2;
        nw.shape[0] = sl->lin->weight.shape[0];
        nw.shape[1] = sl->lin->weight.shape[1];
        nw.data = copies[i];
        nw.owned = 1;
        if (sl->fused) tensor_free(&sl->lin->weight); /* our previous copy: the original stays saved */
        else sl->original = sl->lin->weight;
        sl->lin->weight = nw;
        sl->fused = 1;
        append_list(&sl->folded, sl->lin->lora);
        sl->lin->lora = NULL;
    }
    sd3_free(copies);
    return SD3_OK;
}

/* ================================================================================================ */
/* Command line                                                                                     */
/* ================================================================================================ */

sd3_status lora_parse_spec(const char *spec, char *path, size_t path_size, float *scale, sd3_err *err) {
    SD3_ASSERT(spec && path && path_size && scale);
    size_t len = strlen(spec);
    *scale = 1.0f;
    const char *colon = strrchr(spec, ':');
    if (colon && colon > spec && colon[1]) {
        char *end;
        float v = strtof(colon + 1, &end);
        while (*end && isspace((unsigned char)*end)) end++;
        if (!*end && end != colon + 1) {
            if (!isfinite(v)) return sd3_errf(err, SD3_ERR_INVALID_ARG, "--lora %s: the scale is not finite", spec);
            *scale = v;
            len = (size_t)(colon - spec);
        }
    }
    if (len == 0) return sd3_errf(err, SD3_ERR_INVALID_ARG, "--lora '%s': no file name", spec);
    if (len >= path_size) return sd3_errf(err, SD3_ERR_INVALID_ARG, "--lora %s: the path is too long", spec);
    memcpy(path, spec, len);
    path[len] = 0;
    return SD3_OK;
}
