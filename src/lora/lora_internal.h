/*
 * lora_internal.h — helpers lora.c shares with lora_clip.c (not part of the API).
 */
#ifndef SD3_LORA_INTERNAL_H
#define SD3_LORA_INTERNAL_H

#include "lora/lora.h"

/* Does an underscored name equal a dotted one with every '.' read as '_'? */
int lora_us_equal(const char *us, const char *dotted);
/* "'a', 'b', 'c', 'd' and 3 more (7 in all)" into buf. */
void lora_name_list(char *buf, size_t n, const char *const *names, int count);
/* W (any float dtype, [N, K]) + sum over the adapter list of s B A, as a fresh F32 buffer (NULL when out of
 * memory). */
float *lora_fused_copy(const tensor *W, const mmdit_lora_adapter *ad);

#endif /* SD3_LORA_INTERNAL_H */
