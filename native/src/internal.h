/* internal.h: declarations shared by the engine's C files; never installed or included by users. */
#ifndef SOV_INTERNAL_H
#define SOV_INTERNAL_H

#include "sov.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------------
 * Errors and logging (status.c)
 * ------------------------------------------------------------------------------------- */

/* Records a detail for sov_last_error() and returns status, so that callers can write
 * `return sov_fail(SOV_ERR_FORMAT, "...", ...)`. */
sov_status sov_fail(sov_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sov_log(sov_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---------------------------------------------------------------------------------------
 * Numbers (tensor.c)
 * ------------------------------------------------------------------------------------- */

float sov_fp16_to_fp32(uint16_t h);
float sov_bf16_to_fp32(uint16_t h);
/* Block size (elements) and block bytes of a known type; 0 for unknown types. */
uint32_t sov_type_block_elems(uint32_t type);
uint32_t sov_type_block_bytes(uint32_t type);
/* True when every scale or value of n elements is finite. */
bool sov_tensor_all_finite(uint32_t type, const void *data, uint64_t n);

/* Kernel sets, picked once per model. */
typedef enum sov_isa { SOV_ISA_SCALAR = 0, SOV_ISA_AVX2 = 1, SOV_ISA_AVX512 = 2 } sov_isa;
sov_isa sov_isa_detect(int force_scalar);
const char *sov_isa_name(sov_isa isa);

/* Activations quantised to 8 bits in blocks of 32, for the quantised weight types. */
typedef struct sov_q8_block {
    float d;            /* scale */
    float s;            /* d * sum(q) */
    int8_t q[32];
} sov_q8_block;

/* Activations quantised as llama.cpp's Q8_K, for the K-quant weight types: 8 bits in blocks of 256
 * with one scale, and the sums of each 16 quants. */
typedef struct sov_q8k_block {
    float d;
    int8_t q[256];
    int16_t bsums[16];
} sov_q8k_block;

/* Y[t, r] = dot(W row r, X row t) for t < n_tok, r in [r0, r1). W is `rows` x `cols` of type
 * wtype; X is float32 [n_tok, cols]; Xq the same rows quantised as the type needs (sov_q8_block
 * when sov_type_uses_q8, sov_q8k_block when sov_type_uses_q8k; NULL for float weights). */
void sov_matmul_rows(sov_isa isa, uint32_t wtype, const void *w, uint64_t cols, int64_t r0, int64_t r1,
                     const float *x, const void *xq, int64_t n_tok, float *y, int64_t ldy);
void sov_quantize_row_q8(sov_isa isa, const float *x, sov_q8_block *out, uint64_t n);
/* n a multiple of 256. */
void sov_quantize_row_q8k(const float *x, sov_q8k_block *out, uint64_t n);
/* One query row's attention over n_pos cached positions: out = softmax(scale * K q) V, where key p
 * is keys + p * stride and value p values + p * stride (hd floats each); scores is scratch of
 * n_pos floats. Every kernel set gives the same bits. */
void sov_attention(sov_isa isa, const float *q, const float *keys, const float *values, uint64_t stride, uint32_t hd, int32_t n_pos,
                   float scale, float *scores, float *out);
/* g = g / (1 + expf(-g)) * u (SiLU of the gate times up) over n, with libm's expf; every kernel set
 * gives the same bits. */
void sov_swiglu(sov_isa isa, float *g, const float *u, uint64_t n);
/* x += add (when not NULL), then out = w * x / sqrt(mean(x^2) + eps) over n; every kernel set gives
 * the same bits. */
void sov_add_rms_norm(sov_isa isa, float *x, const float *add, const float *w, float *out, uint64_t n, float eps);
/* Whether a weight type is multiplied against sov_q8_block (sov_q8k_block) activations. */
bool sov_type_uses_q8(uint32_t type);
bool sov_type_uses_q8k(uint32_t type);

/* ---------------------------------------------------------------------------------------
 * Thread pool (threads.c)
 * ------------------------------------------------------------------------------------- */

typedef struct sov_pool sov_pool;
/* Runs fn(arg, i, n) for i in 0..n-1 on n threads (the caller is thread 0) and returns when all end. */
typedef void (*sov_pool_fn)(void *arg, int thread_index, int n_threads);
sov_status sov_pool_init(int n_threads, sov_pool **out);
void sov_pool_free(sov_pool *pool);
int sov_pool_size(const sov_pool *pool);
void sov_pool_run(sov_pool *pool, sov_pool_fn fn, void *arg);

#endif /* SOV_INTERNAL_H */
