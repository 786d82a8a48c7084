/* tok_util.c — hash maps and vectors for the tokenizers (see tok_util.h). */
#include "text/tok_util.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a, 64-bit: short keys (BPE symbols, words) dominate, so a simple byte hash is enough. */
uint64_t tok_hash(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ull; }
    return h;
}

/* Slot of key in the table: its slot if present, else the empty slot where it would go. */
static size_t strmap_find(const tok_strmap *m, const char *key, size_t len, uint64_t h) {
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    for (;;) {
        uint32_t s = m->slots[i];
        if (!s) return i;
        const struct tok_strent *e = &m->ent[s - 1];
        if (e->hash == h && e->len == len && memcmp(m->arena + e->off, key, len) == 0) return i;
        i = (i + 1) & mask;
    }
}

/* Look a key up (linear probing). */
int tok_strmap_get(const tok_strmap *m, const char *key, size_t len, int32_t *val) {
    if (!m->cap) return 0;
    uint64_t h = tok_hash(key, len);
    uint32_t s = m->slots[strmap_find(m, key, len, h)];
    if (!s) return 0;
    if (val) *val = m->ent[s - 1].val;
    return 1;
}

/* Double the slot table (load factor kept under 1/2). */
static int strmap_grow(tok_strmap *m) {
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    uint32_t *ns = calloc(ncap, sizeof *ns);
    if (!ns) return -1;
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (size_t)m->ent[k].hash & (ncap - 1);
        while (ns[i]) i = (i + 1) & (ncap - 1);
        ns[i] = (uint32_t)(k + 1);
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return 0;
}

long tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val) {
    if (len > UINT32_MAX) return -1;
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    uint64_t h = tok_hash(key, len);
    size_t i = strmap_find(m, key, len, h);
    if (m->slots[i]) { m->ent[m->slots[i] - 1].val = val; return (long)(m->slots[i] - 1); }
    if (m->n == m->ent_cap) {
        size_t nc = m->ent_cap ? m->ent_cap * 2 : 1024;
        void *ne = realloc(m->ent, nc * sizeof *m->ent);
        if (!ne) return -1;
        m->ent = ne;
        m->ent_cap = nc;
    }
    if (m->arena_len + len + 1 > m->arena_cap) {
        size_t nc = m->arena_cap ? m->arena_cap : 65536;
        while (m->arena_len + len + 1 > nc) nc *= 2;
        char *na = realloc(m->arena, nc);
        if (!na) return -1;
        m->arena = na;
        m->arena_cap = nc;
    }
    memcpy(m->arena + m->arena_len, key, len);
    m->arena[m->arena_len + len] = 0;
    m->ent[m->n] = (struct tok_strent){ h, m->arena_len, (uint32_t)len, val };
    m->arena_len += len + 1;
    m->slots[i] = (uint32_t)(m->n + 1);
    return (long)m->n++;
}

/* Release the table, entries and key arena. */
void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    free(m->ent);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

/* Murmur-style finaliser so sequential keys spread over the table. */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

/* Look a key up (linear probing). */
int tok_u64map_get(const tok_u64map *m, uint64_t key, uint64_t *val) {
    if (!m->cap) return 0;
    size_t mask = m->cap - 1, i = (size_t)mix64(key) & mask;
    while (m->keys[i] != UINT64_MAX) {
        if (m->keys[i] == key) { if (val) *val = m->vals[i]; return 1; }
        i = (i + 1) & mask;
    }
    return 0;
}

/* Insert or overwrite, doubling the table past half full. */
int tok_u64map_put(tok_u64map *m, uint64_t key, uint64_t val) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 1024;
        uint64_t *nk = malloc(ncap * sizeof *nk), *nv = malloc(ncap * sizeof *nv);
        if (!nk || !nv) { free(nk); free(nv); return -1; }
        memset(nk, 0xFF, ncap * sizeof *nk);
        for (size_t k = 0; k < m->cap; k++) {
            if (m->keys[k] == UINT64_MAX) continue;
            size_t i = (size_t)mix64(m->keys[k]) & (ncap - 1);
            while (nk[i] != UINT64_MAX) i = (i + 1) & (ncap - 1);
            nk[i] = m->keys[k];
            nv[i] = m->vals[k];
        }
        free(m->keys);
        free(m->vals);
        m->keys = nk;
        m->vals = nv;
        m->cap = ncap;
    }
    size_t mask = m->cap - 1, i = (size_t)mix64(key) & mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & mask;
    if (m->keys[i] == UINT64_MAX) { m->keys[i] = key; m->n++; }
    m->vals[i] = val;
    return 0;
}

/* Release the table. */
void tok_u64map_free(tok_u64map *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* Append one id, doubling the capacity when full. */
int tok_ids_push(tok_ids *a, int64_t x) {
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        int64_t *nv = realloc(a->v, nc * sizeof *nv);
        if (!nv) return -1;
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = x;
    return 0;
}

/* Release the vector. */
void tok_ids_free(tok_ids *a) {
    free(a->v);
    memset(a, 0, sizeof *a);
}
