/*
 * tok_util.h — small containers shared by the tokenizers: a string -> int32 hash map whose keys live
 * in one arena, a uint64 -> uint64 hash map, and a growable int64 id vector.
 * Not thread-safe; each tokenizer owns its own.
 */
#ifndef SD3_TOK_UTIL_H
#define SD3_TOK_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* ---- string -> int32 ---- */
typedef struct tok_strmap {
    uint32_t *slots;     /* 0 = empty, else entry index + 1 */
    size_t cap;          /* power of two */
    struct tok_strent { uint64_t hash; size_t off; uint32_t len; int32_t val; } *ent;
    size_t n, ent_cap;
    char *arena;         /* keys, each followed by a NUL */
    size_t arena_len, arena_cap;
} tok_strmap;

uint64_t tok_hash(const void *p, size_t n);
/* Value of key (len bytes) in *val; returns 1 if present, 0 if not. */
int tok_strmap_get(const tok_strmap *m, const char *key, size_t len, int32_t *val);
/* Insert or overwrite; returns the entry index (>= 0) or -1 when out of memory. */
long tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val);
/* The NUL-terminated key of entry i (valid until the next put). */
static inline const char *tok_strmap_key(const tok_strmap *m, size_t i) { return m->arena + m->ent[i].off; }
void tok_strmap_free(tok_strmap *m);

/* ---- uint64 -> uint64 (keys must not be UINT64_MAX) ---- */
typedef struct tok_u64map {
    uint64_t *keys, *vals;
    size_t cap, n;
} tok_u64map;
int tok_u64map_get(const tok_u64map *m, uint64_t key, uint64_t *val);
int tok_u64map_put(tok_u64map *m, uint64_t key, uint64_t val);  /* 0 ok, -1 out of memory */
void tok_u64map_free(tok_u64map *m);

/* ---- growable int64 vector ---- */
typedef struct tok_ids { int64_t *v; size_t n, cap; } tok_ids;
int tok_ids_push(tok_ids *a, int64_t x);  /* 0 ok, -1 out of memory */
void tok_ids_free(tok_ids *a);

#endif
