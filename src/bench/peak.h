/* peak.h — the machine's arithmetic peak, measured in the same run as a benchmark: independent FMA (or
 * bf16 dot-product) accumulator chains on every pool thread, so each benchmark reports its GFLOP/s as a
 * ratio to what these cores can do right now. */
#ifndef SD3_BENCH_PEAK_H
#define SD3_BENCH_PEAK_H

enum { PEAK_FMA_AVX512 = 0, PEAK_FMA_AVX2 = 1, PEAK_BF16_DOT = 2 };

/* Whether this CPU can run chain `kind`. */
int peak_supported(int kind);
/* Flops one iteration of chain `kind` does on one thread (16 x 32, 12 x 16, 16 x 64). */
double peak_flops_per_iter(int kind);
/* Run chain `kind` for iters iterations on every pool thread at once (one task per thread). */
void peak_run(int kind, long iters);

#endif
