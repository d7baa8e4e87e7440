/* test_sov.c: unit tests of the C engine, component by component (status, tensor types and
 * kernels, GGUF parsing, the thread pool, a tiny model's decoding, sampling). */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------
 * A minimal test harness
 * ------------------------------------------------------------------------------------- */

static int failures, checks;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond, sov_last_error()); \
        }                                                                            \
    } while (0)

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* ---------------------------------------------------------------------------------------
 * A tiny GGUF writer (enough for tests: scalars, strings, arrays, tensors)
 * ------------------------------------------------------------------------------------- */

typedef struct buf {
    uint8_t *data;
    size_t size, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->size + n > b->cap) {
        b->cap = (b->size + n) * 2;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->size, p, n);
    b->size += n;
}
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void kv_u32(buf *b, const char *k, uint32_t v) {
    put_str(b, k);
    put_u32(b, SOV_GGUF_UINT32);
    put_u32(b, v);
}
static void kv_f32(buf *b, const char *k, float v) {
    put_str(b, k);
    put_u32(b, SOV_GGUF_FLOAT32);
    put(b, &v, 4);
}
static void kv_str(buf *b, const char *k, const char *v) {
    put_str(b, k);
    put_u32(b, SOV_GGUF_STRING);
    put_str(b, v);
}
static void array_header(buf *b, sov_gguf_type element_type, uint64_t n) {
    put_u32(b, element_type);
    put_u64(b, n);
}

typedef struct tensor_spec {
    char name[64];
    uint64_t cols, rows; /* rows 0: a vector */
    float *values;
} tensor_spec;

/* Writes header, metadata (already in kv), tensor infos and F32 data to a buffer. */
static buf gguf_build(const buf *kv, uint64_t n_kv, const tensor_spec *t, uint64_t n_t) {
    buf b = {0};
    put_u32(&b, 0x46554747u);
    put_u32(&b, 3);
    put_u64(&b, n_t);
    put_u64(&b, n_kv);
    put(&b, kv->data, kv->size);
    uint64_t offset = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        put_str(&b, t[i].name);
        put_u32(&b, t[i].rows ? 2 : 1);
        put_u64(&b, t[i].cols);
        if (t[i].rows) put_u64(&b, t[i].rows);
        put_u32(&b, SOV_TYPE_F32);
        put_u64(&b, offset);
        offset += (t[i].cols * (t[i].rows ? t[i].rows : 1) * 4 + 31) / 32 * 32;
    }
    while (b.size % 32) put(&b, "", 1);
    for (uint64_t i = 0; i < n_t; i++) {
        uint64_t n = t[i].cols * (t[i].rows ? t[i].rows : 1);
        put(&b, t[i].values, n * 4);
        while (b.size % 32) put(&b, "", 1);
    }
    return b;
}

/* ---------------------------------------------------------------------------------------
 * Status and tensor types
 * ------------------------------------------------------------------------------------- */

static void test_status(void) {
    CHECK(strcmp(sov_status_message(SOV_OK), "ok") == 0);
    CHECK(strlen(sov_status_message(SOV_ERR_CONTEXT_FULL)) > 0);
    CHECK(sov_fail(SOV_ERR_FORMAT, "detail %d", 7) == SOV_ERR_FORMAT);
    CHECK(strcmp(sov_last_error(), "detail 7") == 0);
}

static void test_fp16(void) {
    CHECK(sov_fp16_to_fp32(0x3c00) == 1.0f);
    CHECK(sov_fp16_to_fp32(0xc000) == -2.0f);
    CHECK(sov_fp16_to_fp32(0x0001) == 5.9604644775390625e-8f);
    CHECK(isinf(sov_fp16_to_fp32(0x7c00)));
    CHECK(isnan(sov_fp16_to_fp32(0x7e00)));
    CHECK(sov_bf16_to_fp32(0x3f80) == 1.0f);
}

static void test_dequantize(void) {
    /* Q4_1: d = 0.5, m = -1, nibbles 0..15 then 15..0 */
    uint8_t q41[20];
    uint16_t d = 0x3800, m = 0xbc00;
    memcpy(q41, &d, 2);
    memcpy(q41 + 2, &m, 2);
    for (int j = 0; j < 16; j++) q41[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    float out[32];
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q4_1, q41, out, 32) == SOV_OK);
    CHECK(out[0] == -1.0f && out[15] == 6.5f && out[16] == 6.5f && out[31] == -1.0f);
    /* Q4_0: d = 2, nibble 8 is zero */
    uint8_t q40[18];
    uint16_t two = 0x4000;
    memcpy(q40, &two, 2);
    memset(q40 + 2, 0x98, 16);
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q4_0, q40, out, 32) == SOV_OK);
    CHECK(out[0] == 0.0f && out[16] == 2.0f);
    /* Q5_0: d = 2, nibbles 0x98 as for Q4_0, qh sets the fifth bit of elements 0, 9 and 31 */
    uint8_t q50[22];
    memcpy(q50, &two, 2);
    uint32_t high = 1u | 1u << 9 | 1u << 31;
    memcpy(q50 + 2, &high, 4);
    memset(q50 + 6, 0x98, 16);
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q5_0, q50, out, 32) == SOV_OK);
    CHECK(out[0] == 16.0f && out[1] == -16.0f && out[9] == 16.0f && out[16] == -14.0f && out[31] == 18.0f);
    /* Q5_1: d = 0.5, m = -1, the Q4_1 nibbles, fifth bit on elements 15 and 16 */
    uint8_t q51[24];
    memcpy(q51, &d, 2);
    memcpy(q51 + 2, &m, 2);
    high = 1u << 15 | 1u << 16;
    memcpy(q51 + 4, &high, 4);
    memcpy(q51 + 8, q41 + 4, 16);
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q5_1, q51, out, 32) == SOV_OK);
    CHECK(out[0] == -1.0f && out[14] == 6.0f && out[15] == 14.5f && out[16] == 14.5f && out[17] == 6.0f && out[31] == -1.0f);
    /* Q4_K and Q5_K: d = 1, dmin = 0.5; sub-block 0 has scale 1 and min 2, sub-block 4 scale 19
     * and min 37 (their top bits in bytes 0 and 4), the others zero; every nibble pair is 0x53 */
    uint8_t qk[176] = {0x00, 0x3c, 0x00, 0x38, 0x41, 0, 0, 0, 0x82, 0, 0, 0, 0x53, 0, 0, 0};
    static float outk[256];
    memset(qk + 16, 0x53, 160);
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q4_K, qk, outk, 256) == SOV_OK);
    CHECK(outk[0] == 2.0f && outk[31] == 2.0f && outk[32] == 0.0f && outk[128] == 38.5f && outk[160] == 0.0f);
    /* Q5_K: qh (bytes 16-47) sets the fifth bit of sub-block 4 only; nibbles follow at 48 */
    memset(qk + 16, 0x10, 32);
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q5_K, qk, outk, 256) == SOV_OK);
    CHECK(outk[0] == 2.0f && outk[128] == 342.5f && outk[159] == 342.5f && outk[160] == 0.0f);
    /* Q6_K: ql 0x53, qh 0xe4 (top bits 0, 1, 2, 3 for the four 32-element rows of a half), d = 0.5,
     * scales 2 (sub-block 0), 4 (4), -3 (9), 1 (14) */
    uint8_t q6[210] = {0};
    memset(q6, 0x53, 128);
    memset(q6 + 128, 0xe4, 64);
    q6[192] = 2, q6[196] = 4, q6[201] = (uint8_t)-3, q6[206] = 1, q6[209] = 0x38;
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q6_K, q6, outk, 256) == SOV_OK);
    CHECK(outk[0] == -29.0f && outk[64] == 10.0f && outk[144] == 43.5f && outk[224] == 10.5f && outk[16] == 0.0f);
    uint64_t bytes;
    CHECK(sov_tensor_row_size(SOV_TYPE_Q4_K, 512, &bytes) == SOV_OK && bytes == 288);
    CHECK(sov_tensor_row_size(SOV_TYPE_Q6_K, 256, &bytes) == SOV_OK && bytes == 210);
    CHECK(sov_tensor_row_size(SOV_TYPE_Q5_K, 288, &bytes) == SOV_ERR_INVALID_ARGUMENT);
    CHECK(sov_tensor_row_size(SOV_TYPE_Q8_0, 64, &bytes) == SOV_OK && bytes == 68);
    CHECK(sov_tensor_row_size(SOV_TYPE_Q8_0, 33, &bytes) == SOV_ERR_INVALID_ARGUMENT);
    CHECK(sov_tensor_row_size(SOV_TYPE_Q5_0, 576, &bytes) == SOV_OK && bytes == 18 * 22);
    CHECK(sov_tensor_row_size(SOV_TYPE_Q5_1, 896, &bytes) == SOV_OK && bytes == 28 * 24);
    CHECK(sov_tensor_row_size(SOV_TYPE_Q5_1, 48, &bytes) == SOV_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(sov_tensor_type_name(SOV_TYPE_Q5_0), "Q5_0") == 0 && strcmp(sov_tensor_type_name(SOV_TYPE_Q5_1), "Q5_1") == 0);
    CHECK(sov_tensor_row_size(99, 32, &bytes) == SOV_ERR_UNSUPPORTED);
}

/* Every kernel set gives the same products within a small tolerance. 10 rows x 11 tokens cover the
 * register-blocked tiles (4 rows x 8 tokens) and both remainders, rows and tokens. */
static void test_kernels_agree(void) {
    enum { COLS = 256, ROWS = 10, TOK = 11 };
    static const uint32_t types[] = {SOV_TYPE_F32, SOV_TYPE_F16, SOV_TYPE_BF16, SOV_TYPE_Q4_0, SOV_TYPE_Q4_1, SOV_TYPE_Q5_0, SOV_TYPE_Q5_1, SOV_TYPE_Q8_0};
    float x[TOK * COLS];
    for (int i = 0; i < TOK * COLS; i++) x[i] = frand();
    uint8_t w[ROWS * COLS * 4];
    sov_q8_block xq[TOK * COLS / 32];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        uint32_t t = types[k];
        uint64_t bytes;
        sov_tensor_row_size(t, (uint64_t)ROWS * COLS, &bytes);
        for (uint64_t i = 0; i < bytes; i++) w[i] = (uint8_t)(rng = rng * 6364136223846793005ull + 1442695040888963407ull) >> 0;
        /* keep the fp16/bf16 scales and values finite and small */
        if (t == SOV_TYPE_F32) for (int i = 0; i < ROWS * COLS; i++) ((float *)(void *)w)[i] = frand();
        if (t == SOV_TYPE_F16 || t == SOV_TYPE_BF16) for (uint64_t i = 0; i < bytes; i += 2) w[i + 1] = t == SOV_TYPE_F16 ? 0x38 : 0x3e;
        if (sov_type_uses_q8(t)) {
            uint32_t bb = sov_type_block_bytes(t);
            for (uint64_t b = 0; b < bytes / bb; b++) {
                w[b * bb + 1] = 0x20;
                if (t == SOV_TYPE_Q4_1 || t == SOV_TYPE_Q5_1) w[b * bb + 3] = 0xa0;
            }
        }
        float y[3][TOK * ROWS];
        for (int isa = SOV_ISA_SCALAR; isa <= SOV_ISA_AVX512; isa++) {
            sov_isa use = (sov_isa)isa;
            if (use != SOV_ISA_SCALAR && sov_isa_detect(0) < use) use = SOV_ISA_SCALAR;
            for (int tok = 0; tok < TOK; tok++) sov_quantize_row_q8(use, x + tok * COLS, xq + tok * (COLS / 32), COLS);
            sov_matmul_rows(use, t, w, COLS, 0, ROWS, x, xq, TOK, y[isa], ROWS);
        }
        /* the float reference: dequantised weights times the float activations */
        float ref[ROWS * COLS];
        sov_tensor_dequantize(t, w, ref, (uint64_t)ROWS * COLS);
        for (int tok = 0; tok < TOK; tok++) {
            for (int r = 0; r < ROWS; r++) {
                double exact = 0;
                for (int c = 0; c < COLS; c++) exact += (double)ref[r * COLS + c] * x[tok * COLS + c];
                float s = y[0][tok * ROWS + r];
                CHECK(fabsf(s - y[1][tok * ROWS + r]) <= 1e-4f * (1 + fabsf(s)));
                CHECK(fabsf(s - y[2][tok * ROWS + r]) <= 1e-4f * (1 + fabsf(s)));
                /* 8-bit activations cost at most about 1% of the magnitude */
                CHECK(fabs(s - exact) <= 0.02 * (1 + fabs(exact)) + (sov_type_uses_q8(t) ? 0.05 : 1e-4) * sqrt(COLS));
            }
        }
    }
}

/* Q5_0 and Q5_1 (random blocks: every fifth-bit pattern, scales and mins of either sign): every
 * kernel set gives the same bits, and the products equal the dequantised weights times the dequantised
 * Q8 activations up to float rounding. Rows 2..8 of 9 and 19 tokens, past one tile of 16 tokens. */
static void test_q5_kernels(void) {
    enum { COLS = 576, ROWS = 9, TOK = 19, R0 = 2 };
    static const uint32_t types[] = {SOV_TYPE_Q5_0, SOV_TYPE_Q5_1};
    static float x[TOK * COLS], ref[ROWS * COLS], y[3][TOK * ROWS];
    static uint8_t w[ROWS * COLS];
    static sov_q8_block xq[TOK * COLS / 32];
    for (int i = 0; i < TOK * COLS; i++) x[i] = frand() * (i % 89 == 0 ? 8.0f : 1.0f);
    for (int tok = 0; tok < TOK; tok++) sov_quantize_row_q8(SOV_ISA_SCALAR, x + tok * COLS, xq + tok * (COLS / 32), COLS);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        uint32_t t = types[k];
        uint64_t bytes;
        CHECK(sov_type_uses_q8(t) && !sov_type_uses_q8k(t));
        CHECK(sov_tensor_row_size(t, (uint64_t)ROWS * COLS, &bytes) == SOV_OK);
        for (uint64_t i = 0; i < bytes; i++) w[i] = (uint8_t)((rng = rng * 6364136223846793005ull + 1442695040888963407ull) >> 56);
        uint32_t bb = sov_type_block_bytes(t);
        for (uint64_t b = 0; b < bytes / bb; b++) {
            uint8_t *blk = w + b * bb;
            blk[1] = (uint8_t)(0x20 | (blk[1] & 0x80));
            if (t == SOV_TYPE_Q5_1) blk[3] = (uint8_t)(0x24 | (blk[3] & 0x80));
        }
        CHECK(sov_tensor_all_finite(t, w, (uint64_t)ROWS * COLS));
        for (int isa = SOV_ISA_SCALAR; isa <= SOV_ISA_AVX512; isa++) {
            sov_isa use = (sov_isa)isa;
            if (use != SOV_ISA_SCALAR && sov_isa_detect(0) < use) use = SOV_ISA_SCALAR;
            for (int i = 0; i < TOK * ROWS; i++) y[isa][i] = -1234.5f;
            sov_matmul_rows(use, t, w, COLS, R0, ROWS, x, xq, TOK, y[isa], ROWS);
        }
        CHECK(sov_tensor_dequantize(t, w, ref, (uint64_t)ROWS * COLS) == SOV_OK);
        int bad_bits = 0, bad_value = 0, touched = 0;
        for (int tok = 0; tok < TOK; tok++) {
            for (int r = 0; r < ROWS; r++) {
                float s = y[0][tok * ROWS + r];
                if (r < R0) {
                    touched += s != -1234.5f || y[1][tok * ROWS + r] != -1234.5f || y[2][tok * ROWS + r] != -1234.5f;
                    continue;
                }
                bad_bits += memcmp(&s, &y[1][tok * ROWS + r], 4) != 0 || memcmp(&s, &y[2][tok * ROWS + r], 4) != 0;
                double exact = 0, magnitude = 0;
                for (int c = 0; c < COLS; c++) {
                    const sov_q8_block *xb = &xq[tok * (COLS / 32) + c / 32];
                    double term = (double)ref[r * COLS + c] * xb->d * xb->q[c % 32];
                    exact += term;
                    magnitude += fabs(term);
                }
                bad_value += fabs(s - exact) > 1e-5 * magnitude + 1e-6;
            }
        }
        CHECK(bad_bits == 0);
        CHECK(bad_value == 0);
        CHECK(touched == 0);
        if (bad_bits || bad_value) fprintf(stderr, "  %s: %d products differ across kernel sets, %d from the reference\n", sov_tensor_type_name(t), bad_bits, bad_value);
    }
    /* one flipped fifth bit changes one block's dequantisation by 16 d */
    float before[32], after[32];
    uint8_t blk[22] = {0x00, 0x3c};
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q5_0, blk, before, 32) == SOV_OK);
    blk[2 + 2] ^= 0x08; /* bit 19: element 19 */
    CHECK(sov_tensor_dequantize(SOV_TYPE_Q5_0, blk, after, 32) == SOV_OK);
    int changed = 0;
    for (int j = 0; j < 32; j++) changed += before[j] != after[j];
    CHECK(changed == 1 && after[19] - before[19] == 16.0f);
}

/* Products of 1..19 tokens are bit-identical across the kernel sets: the SIMD kernels (row blocks
 * for a few tokens, register tiles of 8 tokens) sum in the scalar path's order. Rows 1..14 of 15
 * start a range inside the matrix and leave rows over after the blocks of four; 576 columns keep
 * the tiles' scales on the stack, 2240 (70 blocks) put them on the heap. */
static void test_kernels_bitwise_few_tokens(void) {
    enum { MAX_COLS = 2240, ROWS = 15, TOK = 19 };
    static const uint32_t types[] = {SOV_TYPE_Q4_0, SOV_TYPE_Q4_1, SOV_TYPE_Q8_0};
    static const uint64_t widths[] = {576, MAX_COLS};
    static float x[TOK * MAX_COLS];
    static sov_q8_block xq[TOK * MAX_COLS / 32];
    static uint8_t w[ROWS * MAX_COLS / 32 * 34];
    for (int i = 0; i < TOK * MAX_COLS; i++) x[i] = frand();
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
            uint64_t cols = widths[wi];
            uint32_t t = types[k], bb = sov_type_block_bytes(t);
            uint64_t bytes = (uint64_t)ROWS * cols / 32 * bb;
            for (uint64_t i = 0; i < bytes; i++) w[i] = (uint8_t)((rng = rng * 6364136223846793005ull + 1442695040888963407ull) >> 33);
            for (uint64_t b = 0; b < bytes / bb; b++) {
                w[b * bb + 1] = 0x20;
                if (t == SOV_TYPE_Q4_1) w[b * bb + 3] = 0xa0;
            }
            /* 1, 4 and 7 tokens take the row kernels; 8 and more the tiles of 8 tokens, then the rows */
            static const int token_counts[] = {1, 4, 7, 8, 11, 16, 19};
            for (size_t c = 0; c < sizeof token_counts / sizeof token_counts[0]; c++) {
                int n_tok = token_counts[c];
                static float y[3][TOK * ROWS];
                memset(y, 0, sizeof y);
                for (int isa = SOV_ISA_SCALAR; isa <= SOV_ISA_AVX512; isa++) {
                    sov_isa use = (sov_isa)isa;
                    if (use != SOV_ISA_SCALAR && sov_isa_detect(0) < use) use = SOV_ISA_SCALAR;
                    for (int tok = 0; tok < n_tok; tok++) sov_quantize_row_q8(use, x + tok * cols, xq + tok * (cols / 32), cols);
                    sov_matmul_rows(use, t, w, cols, 1, ROWS - 1, x, xq, n_tok, y[isa], ROWS);
                }
                CHECK(memcmp(y[0], y[1], sizeof y[0]) == 0);
                CHECK(memcmp(y[0], y[2], sizeof y[0]) == 0);
            }
        }
    }
}

/* Attention: every kernel set gives the same bits (head sizes that take the SIMD path, 64 and 80,
 * and ones that do not, 24 and 20; position counts around the kernel's four and eight), and the
 * result is within float rounding (1e-5) of a double-precision reference. */
static void test_attention(void) {
    enum { MAX_HD = 80, MAX_POS = 77, STRIDE = MAX_HD + 8 };
    static const uint32_t hds[] = {64, 80, 24, 20};
    static const int32_t positions[] = {1, 3, 4, 7, 8, 9, 19, 77};
    static float q[MAX_HD], keys[MAX_POS * STRIDE], values[MAX_POS * STRIDE], scores[MAX_POS], out[3][MAX_HD];
    for (int i = 0; i < MAX_POS * STRIDE; i++) {
        keys[i] = 2.0f * frand();
        values[i] = frand();
    }
    for (int i = 0; i < MAX_HD; i++) q[i] = 2.0f * frand();
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++) {
        uint32_t hd = hds[h];
        float scale = 1.0f / sqrtf((float)hd);
        for (size_t k = 0; k < sizeof positions / sizeof positions[0]; k++) {
            int32_t n_pos = positions[k];
            for (int isa = SOV_ISA_SCALAR; isa <= SOV_ISA_AVX512; isa++) {
                sov_isa use = (sov_isa)isa;
                if (use != SOV_ISA_SCALAR && sov_isa_detect(0) < use) use = SOV_ISA_SCALAR;
                sov_attention(use, q, keys, values, STRIDE, hd, n_pos, scale, scores, out[isa]);
            }
            CHECK(memcmp(out[0], out[1], hd * sizeof(float)) == 0);
            CHECK(memcmp(out[0], out[2], hd * sizeof(float)) == 0);
            double w[MAX_POS], max = -INFINITY, sum = 0;
            for (int32_t p = 0; p < n_pos; p++) {
                double dot = 0;
                for (uint32_t d = 0; d < hd; d++) dot += (double)q[d] * keys[p * STRIDE + d];
                w[p] = dot * scale;
                if (w[p] > max) max = w[p];
            }
            for (int32_t p = 0; p < n_pos; p++) sum += (w[p] = exp(w[p] - max));
            for (uint32_t d = 0; d < hd; d++) {
                double ref = 0;
                for (int32_t p = 0; p < n_pos; p++) ref += w[p] / sum * values[p * STRIDE + d];
                CHECK(fabs(out[0][d] - ref) <= 1e-5);
            }
        }
    }
}

/* SwiGLU: the same bits from every kernel set (lengths with whole chunks of 64 and a tail), and
 * within float rounding of a double-precision reference. */
static void test_swiglu(void) {
    enum { N = 203 };
    static const uint64_t lengths[] = {N, 128, 5};
    static float g0[N], u[N], g[3][N];
    for (int i = 0; i < N; i++) {
        g0[i] = 12.0f * frand();
        u[i] = frand();
    }
    for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
        uint64_t n = lengths[k];
        for (int isa = SOV_ISA_SCALAR; isa <= SOV_ISA_AVX512; isa++) {
            sov_isa use = (sov_isa)isa;
            if (use != SOV_ISA_SCALAR && sov_isa_detect(0) < use) use = SOV_ISA_SCALAR;
            memcpy(g[isa], g0, sizeof g0);
            sov_swiglu(use, g[isa], u, n);
        }
        CHECK(memcmp(g[0], g[1], sizeof g[0]) == 0 && memcmp(g[0], g[2], sizeof g[0]) == 0);
        for (uint64_t i = 0; i < n; i++) {
            double ref = (double)g0[i] / (1.0 + exp(-(double)g0[i])) * u[i];
            CHECK(fabs(g[0][i] - ref) <= 4e-7 * fabs(ref) + 1e-30);
        }
    }
}

/* The residual add and RMS norm: the same bits from every kernel set (widths with and without a
 * tail past the last eight), and within float rounding of a double-precision reference. */
static void test_add_rms_norm(void) {
    enum { MAX_N = 203 };
    static const uint64_t widths[] = {576, 203, 8, 3};
    static float x0[MAX_N], add[MAX_N], w[MAX_N], x[3][MAX_N], out[3][MAX_N];
    for (int i = 0; i < MAX_N; i++) {
        x0[i] = 3.0f * frand();
        add[i] = frand();
        w[i] = 1.0f + 0.5f * frand();
    }
    for (size_t k = 0; k < sizeof widths / sizeof widths[0]; k++) {
        uint64_t n = widths[k] < MAX_N ? widths[k] : MAX_N;
        for (int with_add = 0; with_add < 2; with_add++) {
            for (int isa = SOV_ISA_SCALAR; isa <= SOV_ISA_AVX512; isa++) {
                sov_isa use = (sov_isa)isa;
                if (use != SOV_ISA_SCALAR && sov_isa_detect(0) < use) use = SOV_ISA_SCALAR;
                memcpy(x[isa], x0, sizeof x0);
                sov_add_rms_norm(use, x[isa], with_add ? add : NULL, w, out[isa], n, 1e-5f);
            }
            CHECK(memcmp(x[0], x[1], n * sizeof(float)) == 0 && memcmp(x[0], x[2], n * sizeof(float)) == 0);
            CHECK(memcmp(out[0], out[1], n * sizeof(float)) == 0 && memcmp(out[0], out[2], n * sizeof(float)) == 0);
            double ss = 0;
            for (uint64_t i = 0; i < n; i++) {
                double v = (double)x0[i] + (with_add ? add[i] : 0.0f);
                ss += v * v;
            }
            double r = 1.0 / sqrt(ss / (double)n + 1e-5);
            for (uint64_t i = 0; i < n; i++) {
                double ref = w[i] * ((double)x0[i] + (with_add ? add[i] : 0.0f)) * r;
                CHECK(fabs(out[0][i] - ref) <= 1e-6 * (1 + fabs(ref)));
            }
        }
    }
}

/* Q8_K activations: the value of largest magnitude maps to -127, every quant is within half a step
 * of its value, the sums of 16 add up, and an all-zero block has scale 0. */
static void test_quantize_q8k(void) {
    enum { N = 512 };
    float x[N];
    for (int i = 0; i < N; i++) x[i] = frand();
    x[37] = 3.0f;       /* block 0's largest magnitude, positive */
    x[300] = -2.0f;     /* block 1's, negative */
    x[301] = 2.0f;      /* a tie after it: the first one sets the sign */
    sov_q8k_block q[N / 256];
    sov_quantize_row_q8k(x, q, N);
    CHECK(q[0].q[37] == -127 && q[0].d == 1.0f / (-127.0f / 3.0f));
    CHECK(q[1].q[300 - 256] == -127 && q[1].q[301 - 256] == 127 && q[1].d > 0.0f && q[0].d < 0.0f);
    int bad = 0;
    for (int i = 0; i < N; i++) bad += fabsf(q[i / 256].d * (float)q[i / 256].q[i % 256] - x[i]) > fabsf(q[i / 256].d) * 0.5001f;
    for (int b = 0; b < N / 256; b++)
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += q[b].q[16 * g + j];
            bad += sum != q[b].bsums[g];
        }
    CHECK(bad == 0);
    memset(x, 0, sizeof x);
    sov_quantize_row_q8k(x, q, 256);
    CHECK(q[0].d == 0.0f && q[0].q[5] == 0 && q[0].bsums[3] == 0);
}

/* K-quants: every kernel set gives the same bits, and the products equal the dequantised weights
 * times the dequantised Q8_K activations up to float rounding. Three super-blocks per row; rows 3..12
 * of 13 (a range that starts inside the matrix) and 19 tokens, past one tile of 16 tokens. */
static void test_kquant_kernels(void) {
    enum { COLS = 768, ROWS = 13, TOK = 19, R0 = 3 };
    static const uint32_t types[] = {SOV_TYPE_Q4_K, SOV_TYPE_Q5_K, SOV_TYPE_Q6_K};
    static float x[TOK * COLS], ref[ROWS * COLS], y[3][TOK * ROWS];
    static uint8_t w[ROWS * COLS];
    static sov_q8k_block xq[TOK * COLS / 256];
    for (int i = 0; i < TOK * COLS; i++) x[i] = frand() * (i % 97 == 0 ? 8.0f : 1.0f);
    sov_quantize_row_q8k(x, xq, (uint64_t)TOK * COLS);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        uint32_t t = types[k];
        uint64_t bytes, row_bytes;
        CHECK(sov_type_uses_q8k(t) && !sov_type_uses_q8(t));
        CHECK(sov_tensor_row_size(t, (uint64_t)ROWS * COLS, &bytes) == SOV_OK);
        CHECK(sov_tensor_row_size(t, COLS, &row_bytes) == SOV_OK && row_bytes * ROWS == bytes);
        for (uint64_t i = 0; i < bytes; i++) w[i] = (uint8_t)((rng = rng * 6364136223846793005ull + 1442695040888963407ull) >> 56);
        /* finite fp16 scales of either sign around 2^-7 (d, and dmin where there is one) */
        uint32_t bb = sov_type_block_bytes(t);
        for (uint64_t b = 0; b < bytes / bb; b++) {
            uint8_t *blk = w + b * bb;
            if (t == SOV_TYPE_Q6_K) blk[bb - 1] = (uint8_t)(0x20 | (blk[bb - 1] & 0x80));
            else blk[1] = (uint8_t)(0x20 | (blk[1] & 0x80)), blk[3] = (uint8_t)(0x1c | (blk[3] & 0x80));
        }
        CHECK(sov_tensor_all_finite(t, w, (uint64_t)ROWS * COLS));
        for (int isa = SOV_ISA_SCALAR; isa <= SOV_ISA_AVX512; isa++) {
            sov_isa use = (sov_isa)isa;
            if (use != SOV_ISA_SCALAR && sov_isa_detect(0) < use) use = SOV_ISA_SCALAR;
            for (int i = 0; i < TOK * ROWS; i++) y[isa][i] = -1234.5f;
            sov_matmul_rows(use, t, w, COLS, R0, ROWS, x, xq, TOK, y[isa], ROWS);
        }
        CHECK(sov_tensor_dequantize(t, w, ref, (uint64_t)ROWS * COLS) == SOV_OK);
        int bad_bits = 0, bad_value = 0, touched = 0;
        for (int tok = 0; tok < TOK; tok++) {
            for (int r = 0; r < ROWS; r++) {
                float s = y[0][tok * ROWS + r];
                if (r < R0) {
                    touched += s != -1234.5f || y[1][tok * ROWS + r] != -1234.5f || y[2][tok * ROWS + r] != -1234.5f;
                    continue;
                }
                bad_bits += memcmp(&s, &y[1][tok * ROWS + r], 4) != 0 || memcmp(&s, &y[2][tok * ROWS + r], 4) != 0;
                double exact = 0, magnitude = 0;
                for (int c = 0; c < COLS; c++) {
                    const sov_q8k_block *xb = &xq[tok * (COLS / 256) + c / 256];
                    double term = (double)ref[r * COLS + c] * xb->d * xb->q[c % 256];
                    exact += term;
                    magnitude += fabs(term);
                }
                bad_value += fabs(s - exact) > 1e-5 * magnitude + 1e-6;
            }
        }
        CHECK(bad_bits == 0);
        CHECK(bad_value == 0);
        CHECK(touched == 0);
        if (bad_bits || bad_value) fprintf(stderr, "  %s: %d products differ across kernel sets, %d from the reference\n", sov_tensor_type_name(t), bad_bits, bad_value);
    }
}

/* ---------------------------------------------------------------------------------------
 * GGUF parsing
 * ------------------------------------------------------------------------------------- */

static void test_gguf_metadata(void) {
    buf kv = {0};
    kv_str(&kv, "general.architecture", "llama");
    kv_u32(&kv, "u32", 7);
    kv_f32(&kv, "f32", 1.5f);
    put_str(&kv, "arr");
    put_u32(&kv, SOV_GGUF_ARRAY);
    put_u32(&kv, SOV_GGUF_STRING);
    put_u64(&kv, 2);
    put_str(&kv, "ab");
    put_str(&kv, "cde");
    put_str(&kv, "i16s");
    put_u32(&kv, SOV_GGUF_ARRAY);
    put_u32(&kv, SOV_GGUF_INT16);
    put_u64(&kv, 3);
    int16_t v16[3] = {-1, 2, -3};
    put(&kv, v16, 6);
    float vec[32];
    for (int i = 0; i < 32; i++) vec[i] = (float)i;
    tensor_spec t = {"v", 32, 0, vec};
    buf file = gguf_build(&kv, 5, &t, 1);
    sov_gguf *g;
    CHECK(sov_gguf_open_memory(file.data, file.size, &g) == SOV_OK);
    if (g) {
        uint64_t i;
        sov_gguf_value v;
        CHECK(sov_gguf_version(g) == 3 && sov_gguf_kv_count(g) == 5 && sov_gguf_alignment(g) == 32);
        CHECK(sov_gguf_kv_find(g, "u32", &i) == SOV_OK && sov_gguf_kv_value(g, i, 0, &v) == SOV_OK && v.as.u64 == 7);
        CHECK(sov_gguf_kv_find(g, "f32", &i) == SOV_OK && sov_gguf_kv_value(g, i, 0, &v) == SOV_OK && v.as.f64 == 1.5);
        CHECK(sov_gguf_kv_find(g, "arr", &i) == SOV_OK && sov_gguf_kv_value(g, i, 1, &v) == SOV_OK && v.as.str.size == 3 && memcmp(v.as.str.data, "cde", 3) == 0);
        CHECK(sov_gguf_kv_value(g, i, 2, &v) == SOV_ERR_INVALID_ARGUMENT);
        CHECK(sov_gguf_kv_find(g, "i16s", &i) == SOV_OK && sov_gguf_kv_value(g, i, 2, &v) == SOV_OK && v.as.i64 == -3);
        CHECK(sov_gguf_kv_find(g, "missing", &i) == SOV_ERR_NOT_FOUND);
        sov_gguf_tensor_info ti;
        CHECK(sov_gguf_tensor_find(g, "v", &ti) == SOV_OK && ti.size == 128 && ((const float *)ti.data)[31] == 31.0f);
        sov_gguf_free(g);
    }
    /* every truncation is refused cleanly */
    for (size_t n = 0; n < file.size; n++) {
        g = NULL;
        CHECK(sov_gguf_open_memory(file.data, n, &g) != SOV_OK && g == NULL);
    }
    /* wrong magic, absurd counts */
    file.data[0] = 'X';
    CHECK(sov_gguf_open_memory(file.data, file.size, &g) == SOV_ERR_FORMAT);
    file.data[0] = 'G';
    uint64_t absurd = UINT64_MAX;
    memcpy(file.data + 16, &absurd, 8);
    CHECK(sov_gguf_open_memory(file.data, file.size, &g) == SOV_ERR_FORMAT);
    free(kv.data);
    free(file.data);
}

/* Arrays nested `depth` deep (1: a flat array) around the single uint8 element 7. */
static void put_deep_array(buf *b, uint32_t depth) {
    for (uint32_t d = 1; d < depth; d++) array_header(b, SOV_GGUF_ARRAY, 1);
    array_header(b, SOV_GGUF_UINT8, 1);
    put(b, "\x07", 1);
}

static void test_gguf_nested_arrays(void) {
    buf kv = {0};
    /* [["ab", "cde"], []] */
    put_str(&kv, "strings");
    put_u32(&kv, SOV_GGUF_ARRAY);
    array_header(&kv, SOV_GGUF_ARRAY, 2);
    array_header(&kv, SOV_GGUF_STRING, 2);
    put_str(&kv, "ab");
    put_str(&kv, "cde");
    array_header(&kv, SOV_GGUF_STRING, 0);
    /* [[1, -2], [3]] as int32 */
    put_str(&kv, "ints");
    put_u32(&kv, SOV_GGUF_ARRAY);
    array_header(&kv, SOV_GGUF_ARRAY, 2);
    array_header(&kv, SOV_GGUF_INT32, 2);
    int32_t ints[3] = {1, -2, 3};
    put(&kv, ints, 8);
    array_header(&kv, SOV_GGUF_INT32, 1);
    put(&kv, ints + 2, 4);
    /* [[[1.5], [2.5]]]: arrays of arrays of arrays */
    put_str(&kv, "floats3");
    put_u32(&kv, SOV_GGUF_ARRAY);
    array_header(&kv, SOV_GGUF_ARRAY, 1);
    array_header(&kv, SOV_GGUF_ARRAY, 2);
    float fl[2] = {1.5f, 2.5f};
    array_header(&kv, SOV_GGUF_FLOAT32, 1);
    put(&kv, fl, 4);
    array_header(&kv, SOV_GGUF_FLOAT32, 1);
    put(&kv, fl + 1, 4);
    /* eight deep, the limit */
    put_str(&kv, "deep");
    put_u32(&kv, SOV_GGUF_ARRAY);
    put_deep_array(&kv, 8);
    /* a scalar after them: the reader's position survived the nesting */
    kv_u32(&kv, "after", 9);
    buf file = gguf_build(&kv, 5, NULL, 0);
    sov_gguf *g = NULL;
    CHECK(sov_gguf_open_memory(file.data, file.size, &g) == SOV_OK);
    if (g) {
        uint64_t i, n;
        sov_gguf_type type, et;
        sov_gguf_value v, w;
        const sov_gguf_array *a;
        CHECK(sov_gguf_kv_find(g, "strings", &i) == SOV_OK && sov_gguf_kv_type(g, i, &type, &et, &n) == SOV_OK);
        CHECK(type == SOV_GGUF_ARRAY && et == SOV_GGUF_ARRAY && n == 2);
        CHECK(sov_gguf_kv_value(g, i, 0, &v) == SOV_OK && v.type == SOV_GGUF_ARRAY);
        CHECK(sov_gguf_array_type(v.as.array, &et, &n) == SOV_OK && et == SOV_GGUF_STRING && n == 2);
        CHECK(sov_gguf_array_value(v.as.array, 1, &w) == SOV_OK && w.type == SOV_GGUF_STRING && w.as.str.size == 3 &&
              memcmp(w.as.str.data, "cde", 3) == 0);
        CHECK(sov_gguf_array_value(v.as.array, 2, &w) == SOV_ERR_INVALID_ARGUMENT && strstr(sov_last_error(), "no element 2"));
        CHECK(sov_gguf_kv_value(g, i, 1, &v) == SOV_OK && sov_gguf_array_type(v.as.array, &et, &n) == SOV_OK && n == 0);
        CHECK(sov_gguf_kv_array(g, i, &a) == SOV_OK && sov_gguf_array_type(a, &et, &n) == SOV_OK && et == SOV_GGUF_ARRAY && n == 2);

        CHECK(sov_gguf_kv_find(g, "ints", &i) == SOV_OK && sov_gguf_kv_value(g, i, 0, &v) == SOV_OK);
        CHECK(sov_gguf_array_value(v.as.array, 1, &w) == SOV_OK && w.type == SOV_GGUF_INT32 && w.as.i64 == -2);
        CHECK(sov_gguf_kv_value(g, i, 1, &v) == SOV_OK && sov_gguf_array_value(v.as.array, 0, &w) == SOV_OK && w.as.i64 == 3);

        CHECK(sov_gguf_kv_find(g, "floats3", &i) == SOV_OK && sov_gguf_kv_value(g, i, 0, &v) == SOV_OK);
        CHECK(sov_gguf_array_value(v.as.array, 1, &w) == SOV_OK && w.type == SOV_GGUF_ARRAY);
        CHECK(sov_gguf_array_value(w.as.array, 0, &v) == SOV_OK && v.type == SOV_GGUF_FLOAT32 && v.as.f64 == 2.5);

        CHECK(sov_gguf_kv_find(g, "deep", &i) == SOV_OK && sov_gguf_kv_array(g, i, &a) == SOV_OK);
        int levels = 1;
        while (sov_gguf_array_value(a, 0, &v) == SOV_OK && v.type == SOV_GGUF_ARRAY) {
            a = v.as.array;
            levels++;
        }
        CHECK(levels == 8 && v.type == SOV_GGUF_UINT8 && v.as.u64 == 7);

        CHECK(sov_gguf_kv_find(g, "after", &i) == SOV_OK && sov_gguf_kv_value(g, i, 0, &v) == SOV_OK && v.as.u64 == 9);
        CHECK(sov_gguf_kv_array(g, i, &a) == SOV_ERR_INVALID_ARGUMENT);
        sov_gguf_free(g);
    }
    /* every truncation of the header and metadata (the padding after them is optional without
     * tensors) is refused cleanly, freeing the part-built nodes (the sanitizer build checks leaks) */
    for (size_t n = 0; n < 24 + kv.size; n++) {
        g = NULL;
        CHECK(sov_gguf_open_memory(file.data, n, &g) != SOV_OK && g == NULL);
    }
    free(kv.data);
    free(file.data);
}

static void test_gguf_nested_array_limits(void) {
    /* nine deep: one past the limit */
    buf kv = {0};
    put_str(&kv, "deep");
    put_u32(&kv, SOV_GGUF_ARRAY);
    put_deep_array(&kv, 9);
    buf file = gguf_build(&kv, 1, NULL, 0);
    sov_gguf *g = NULL;
    CHECK(sov_gguf_open_memory(file.data, file.size, &g) == SOV_ERR_UNSUPPORTED && g == NULL);
    CHECK(strstr(sov_last_error(), "'deep': arrays nested 9 deep (the limit is 8)") != NULL);
    free(kv.data);
    free(file.data);

    /* a count of nested arrays that the bytes left cannot hold is refused before any allocation */
    kv = (buf){0};
    put_str(&kv, "huge");
    put_u32(&kv, SOV_GGUF_ARRAY);
    array_header(&kv, SOV_GGUF_ARRAY, (uint64_t)1 << 40);
    array_header(&kv, SOV_GGUF_UINT8, 0);
    file = gguf_build(&kv, 1, NULL, 0);
    CHECK(sov_gguf_open_memory(file.data, file.size, &g) == SOV_ERR_FORMAT && strstr(sov_last_error(), "array of 1099511627776 arrays runs past the end"));
    free(kv.data);
    free(file.data);

    /* the budget of nested strings and arrays is per file: 600,000 empty arrays under one key
     * parse; the same under two keys exceed the 2^20 budget */
    enum { PER_KEY = 600000 };
    for (int keys = 1; keys <= 2; keys++) {
        kv = (buf){0};
        for (int k = 0; k < keys; k++) {
            put_str(&kv, k == 0 ? "many0" : "many1");
            put_u32(&kv, SOV_GGUF_ARRAY);
            array_header(&kv, SOV_GGUF_ARRAY, PER_KEY);
            for (int e = 0; e < PER_KEY; e++) array_header(&kv, SOV_GGUF_INT8, 0);
        }
        file = gguf_build(&kv, (uint64_t)keys, NULL, 0);
        g = NULL;
        sov_status st = sov_gguf_open_memory(file.data, file.size, &g);
        if (keys == 1) {
            CHECK(st == SOV_OK && g != NULL);
        } else {
            CHECK(st == SOV_ERR_UNSUPPORTED && g == NULL);
            CHECK(strstr(sov_last_error(), "'many1': nested arrays hold more than 1048576 strings and arrays") != NULL);
        }
        sov_gguf_free(g);
        free(kv.data);
        free(file.data);
    }
}

/* ---------------------------------------------------------------------------------------
 * Thread pool
 * ------------------------------------------------------------------------------------- */

static void count_job(void *arg, int ti, int nt) {
    int *hits = arg;
    hits[ti] += 1 + nt * 0;
}

static void test_pool(void) {
    sov_pool *pool;
    CHECK(sov_pool_init(3, &pool) == SOV_OK);
    int hits[3] = {0};
    for (int i = 0; i < 1000; i++) sov_pool_run(pool, count_job, hits);
    CHECK(hits[0] == 1000 && hits[1] == 1000 && hits[2] == 1000);
    sov_pool_free(pool);
    CHECK(sov_pool_init(0, &pool) == SOV_ERR_INVALID_ARGUMENT);
}

/* ---------------------------------------------------------------------------------------
 * A tiny llama model: batching, incremental decoding and limits
 * ------------------------------------------------------------------------------------- */

enum { E = 32, F = 64, V = 40, L = 2, H = 4, HKV = 2, HD = E / H };

/* Writes the tiny model, with `extra` metadata entries appended, to a new temporary file whose
 * name goes to path. The weights are the same on every call. */
static void write_tiny_model(char path[32], const buf *extra, uint64_t n_extra) {
    rng = 88172645463325252ull;
    buf kv = {0};
    kv_str(&kv, "general.architecture", "llama");
    kv_u32(&kv, "llama.block_count", L);
    kv_u32(&kv, "llama.embedding_length", E);
    kv_u32(&kv, "llama.feed_forward_length", F);
    kv_u32(&kv, "llama.attention.head_count", H);
    kv_u32(&kv, "llama.attention.head_count_kv", HKV);
    kv_u32(&kv, "llama.context_length", 64);
    kv_f32(&kv, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    tensor_spec t[3 + 9 * L];
    int n = 0;
    t[n++] = (tensor_spec){"token_embd.weight", E, V, NULL};
    t[n++] = (tensor_spec){"output_norm.weight", E, 0, NULL};
    t[n++] = (tensor_spec){"output.weight", E, V, NULL};
    for (int l = 0; l < L; l++) {
        static const char *names[] = {"attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        const uint64_t cols[] = {E, E, E, E, E, E, E, E, F}, rows[] = {0, 0, E, HKV * HD, HKV * HD, E, F, F, E};
        for (int k = 0; k < 9; k++) {
            t[n] = (tensor_spec){"", cols[k], rows[k], NULL};
            snprintf(t[n].name, sizeof t[n].name, "blk.%d.%s.weight", l, names[k]);
            n++;
        }
    }
    for (int i = 0; i < n; i++) {
        uint64_t count = t[i].cols * (t[i].rows ? t[i].rows : 1);
        t[i].values = malloc(count * sizeof(float));
        for (uint64_t j = 0; j < count; j++) t[i].values[j] = t[i].rows ? 0.3f * frand() : 1.0f + 0.1f * frand();
    }
    if (n_extra) put(&kv, extra->data, extra->size);
    buf file = gguf_build(&kv, 8 + n_extra, t, (uint64_t)n);
    /* mkstemp() template: it replaces the six trailing X characters with a unique suffix. */
    strcpy(path, "/tmp/sov_test_XXXXXX");
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, file.data, file.size) == (ssize_t)file.size);
    close(fd);
    for (int i = 0; i < n; i++) free(t[i].values);
    free(kv.data);
    free(file.data);
}

static void test_tiny_model(void) {
    char path[32];
    write_tiny_model(path, NULL, 0);
    sov_model *m;
    sov_model_params mp = sov_model_default_params();
    mp.n_threads = 2;
    CHECK(sov_model_load(path, &mp, &m) == SOV_OK);
    if (!m) return;
    sov_model_info in;
    sov_model_info_get(m, &in);
    CHECK(in.n_vocab == V && in.n_layer == L && in.head_dim == HD && !in.tied_output);

    sov_context_params cp = sov_context_default_params();
    cp.n_seq_max = 3;
    cp.n_ubatch = 4;
    sov_context *c;
    CHECK(sov_context_init(m, &cp, &c) == SOV_OK);
    /* all positions of a 10-token prompt at once (three chunks) ... */
    int32_t prompt[10] = {1, 5, 9, 3, 7, 2, 8, 4, 6, 0}, seqs[10] = {0};
    uint8_t outs[10];
    memset(outs, SOV_OUTPUT_LOGITS, sizeof outs);
    static float full[10 * V], step[V], mixed[3 * V];
    sov_batch b = {10, prompt, seqs, outs};
    CHECK(sov_context_decode(c, &b, full, NULL) == SOV_OK);
    CHECK(sov_context_seq_length(c, 0) == 10);
    /* ... equal one token at a time in another slot, interleaved with a third sequence */
    for (int i = 0; i < 10; i++) {
        int32_t toks[2] = {prompt[i], prompt[9 - i]}, ids[2] = {1, 2};
        uint8_t o[2] = {SOV_OUTPUT_LOGITS, SOV_OUTPUT_LOGITS};
        sov_batch bi = {2, toks, ids, o};
        CHECK(sov_context_decode(c, &bi, mixed, NULL) == SOV_OK);
        memcpy(step, mixed, sizeof step);
        float worst = 0;
        for (int k = 0; k < V; k++) worst = fmaxf(worst, fabsf(step[k] - full[i * V + k]));
        CHECK(worst < 1e-4f);
    }
    /* bad input leaves every sequence as it was */
    int32_t bad_tok = V, one = 0;
    sov_batch bad = {1, &bad_tok, &one, NULL};
    CHECK(sov_context_decode(c, &bad, NULL, NULL) == SOV_ERR_INVALID_ARGUMENT);
    int32_t seq_bad = 3, tok = 1;
    bad = (sov_batch){1, &tok, &seq_bad, NULL};
    CHECK(sov_context_decode(c, &bad, NULL, NULL) == SOV_ERR_INVALID_ARGUMENT);
    CHECK(sov_context_seq_length(c, 0) == 10);
    /* a kept prefix: truncate to 6 tokens, then the last 4 again give the same logits */
    CHECK(sov_context_seq_truncate(c, 0, 11) == SOV_ERR_INVALID_ARGUMENT && sov_context_seq_length(c, 0) == 10);
    CHECK(sov_context_seq_truncate(c, 3, 1) == SOV_ERR_INVALID_ARGUMENT);
    CHECK(sov_context_seq_truncate(c, 0, 6) == SOV_OK && sov_context_seq_length(c, 0) == 6);
    static float tail[4 * V];
    sov_batch rest = {4, prompt + 6, seqs, outs};
    CHECK(sov_context_decode(c, &rest, tail, NULL) == SOV_OK && sov_context_seq_length(c, 0) == 10);
    float worst_tail = 0;
    for (int k = 0; k < 4 * V; k++) worst_tail = fmaxf(worst_tail, fabsf(tail[k] - full[6 * V + k]));
    CHECK(worst_tail < 1e-4f);
    /* the context limit */
    static int32_t many[64], zeros[64];
    for (int i = 0; i < 64; i++) many[i] = i % V;
    sov_batch big = {64, many, zeros, NULL};
    CHECK(sov_context_decode(c, &big, NULL, NULL) == SOV_ERR_CONTEXT_FULL);
    CHECK(sov_context_seq_length(c, 0) == 10);
    CHECK(sov_context_seq_reset(c, 0) == SOV_OK && sov_context_seq_length(c, 0) == 0);
    CHECK(sov_context_decode(c, &big, NULL, NULL) == SOV_OK && sov_context_seq_length(c, 0) == 64);
    sov_context_free(c);
    sov_model_free(m);
    unlink(path);
    CHECK(sov_model_load("/nonexistent/model.gguf", NULL, &m) == SOV_ERR_IO && m == NULL);
}

/* Loads the tiny model with the given RoPE scaling entries; on success, returns the logits of
 * a short prompt in `logits` (V floats per position) and the frequency scale the model uses. */
static sov_status load_scaled(const char *type, float factor, const char *factor_key, float *freq_scale, float logits[4 * V]) {
    buf extra = {0};
    uint64_t n_extra = 0;
    if (type) {
        kv_str(&extra, "llama.rope.scaling.type", type);
        n_extra++;
    }
    if (factor_key) {
        kv_f32(&extra, factor_key, factor);
        n_extra++;
    }
    char path[32];
    write_tiny_model(path, &extra, n_extra);
    free(extra.data);
    sov_model *m = NULL;
    sov_status st = sov_model_load(path, NULL, &m);
    unlink(path);
    if (st != SOV_OK) return st;
    sov_model_info in;
    sov_model_info_get(m, &in);
    *freq_scale = in.rope_freq_scale;
    sov_context *c;
    int32_t prompt[4] = {3, 1, 4, 1}, seqs[4] = {0};
    uint8_t outs[4] = {SOV_OUTPUT_LOGITS, SOV_OUTPUT_LOGITS, SOV_OUTPUT_LOGITS, SOV_OUTPUT_LOGITS};
    sov_batch b = {4, prompt, seqs, outs};
    CHECK(sov_context_init(m, NULL, &c) == SOV_OK);
    CHECK(sov_context_decode(c, &b, logits, NULL) == SOV_OK);
    sov_context_free(c);
    sov_model_free(m);
    return SOV_OK;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmaxf(worst, fabsf(a[i] - b[i]));
    return worst;
}

static void test_rope_scaling(void) {
    static float plain[4 * V], linear[4 * V], other[4 * V];
    float scale = 0;
    CHECK(load_scaled(NULL, 0, NULL, &scale, plain) == SOV_OK && scale == 1.0f);
    CHECK(load_scaled("linear", 2.0f, "llama.rope.scaling.factor", &scale, linear) == SOV_OK && scale == 0.5f);
    /* position 0 has no rotation, so only later positions move */
    CHECK(max_abs_diff(plain, linear, V) == 0.0f && max_abs_diff(plain + V, linear + V, 3 * V) > 1e-4f);
    /* no type means linear, as in llama.cpp; the older key name works too */
    CHECK(load_scaled(NULL, 2.0f, "llama.rope.scaling.factor", &scale, other) == SOV_OK && scale == 0.5f);
    CHECK(max_abs_diff(linear, other, 4 * V) == 0.0f);
    CHECK(load_scaled(NULL, 2.0f, "llama.rope.scale_linear", &scale, other) == SOV_OK && scale == 0.5f);
    /* "none" ignores a factor */
    CHECK(load_scaled("none", 2.0f, "llama.rope.scaling.factor", &scale, other) == SOV_OK && scale == 1.0f);
    CHECK(max_abs_diff(plain, other, 4 * V) == 0.0f);
    /* other types are refused by name, never run as something else */
    CHECK(load_scaled("yarn", 4.0f, "llama.rope.scaling.factor", &scale, other) == SOV_ERR_UNSUPPORTED);
    CHECK(strstr(sov_last_error(), "RoPE scaling type 'yarn'") != NULL);
    CHECK(load_scaled("longrope", 0, NULL, &scale, other) == SOV_ERR_UNSUPPORTED && strstr(sov_last_error(), "'longrope'"));
    CHECK(load_scaled("linear", -2.0f, "llama.rope.scaling.factor", &scale, other) == SOV_ERR_FORMAT);
}

/* ---------------------------------------------------------------------------------------
 * Sampling
 * ------------------------------------------------------------------------------------- */

static void test_sampler(void) {
    float logits[8] = {0.1f, 2.0f, 1.0f, -1.0f, 1.9f, 0.0f, 0.5f, 0.2f};
    sov_sampler *s;
    sov_sampler_params p = sov_sampler_default_params();
    CHECK(sov_sampler_init(&p, 8, &s) == SOV_OK);
    int32_t tok;
    CHECK(sov_sampler_sample(s, logits, NULL, 0, &tok) == SOV_OK && tok == 1);
    sov_sampler_free(s);
    /* a repetition penalty moves greedy choice off a seen token */
    p.repeat_penalty = 1.5f;
    int32_t history[1] = {1};
    CHECK(sov_sampler_init(&p, 8, &s) == SOV_OK);
    CHECK(sov_sampler_sample(s, logits, history, 1, &tok) == SOV_OK && tok == 4);
    sov_sampler_free(s);
    /* same seed, same draws; top-k 2 stays within the two best */
    p = sov_sampler_default_params();
    p.temperature = 1.0f;
    p.top_k = 2;
    p.seed = 42;
    sov_sampler *a, *b;
    CHECK(sov_sampler_init(&p, 8, &a) == SOV_OK && sov_sampler_init(&p, 8, &b) == SOV_OK);
    for (int i = 0; i < 200; i++) {
        int32_t ta, tb;
        sov_sampler_sample(a, logits, NULL, 0, &ta);
        sov_sampler_sample(b, logits, NULL, 0, &tb);
        CHECK(ta == tb && (ta == 1 || ta == 4));
    }
    sov_sampler_free(a);
    sov_sampler_free(b);
    p.top_p = 2.0f;
    CHECK(sov_sampler_init(&p, 8, &a) == SOV_ERR_INVALID_ARGUMENT);
}

int main(void) {
    test_status();
    test_fp16();
    test_dequantize();
    test_kernels_agree();
    test_kernels_bitwise_few_tokens();
    test_attention();
    test_swiglu();
    test_add_rms_norm();
    test_quantize_q8k();
    test_kquant_kernels();
    test_q5_kernels();
    test_gguf_metadata();
    test_gguf_nested_arrays();
    test_gguf_nested_array_limits();
    test_pool();
    test_tiny_model();
    test_rope_scaling();
    test_sampler();
    printf("test_sov: %d checks, %d failed (kernels: %s)\n", checks, failures, sov_isa_name(sov_isa_detect(-1)));
    return failures ? 1 : 0;
}
