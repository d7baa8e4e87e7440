/* tensor.c: tensor types (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K),
 * dequantisation, activation quantisation and the dot-product kernels, in portable C and in AVX2 /
 * AVX-512 VNNI variants picked at run time (the build needs no -march). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define SOV_X86 1
#endif

/* ---------------------------------------------------------------------------------------
 * Block layouts (GGUF's): 32 elements per block for the quantised types
 * ------------------------------------------------------------------------------------- */

#define QK 32

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;              /* x = (nibble - 8) * d */
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;           /* x = nibble * d + m */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0; /* x = (q - 16) * d */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1; /* x = q * d + m */
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;                   /* x = q * d */
/* In the nibble types byte j holds element j (low nibble) and element j + 16 (high nibble). Q5_0 and
 * Q5_1 add a fifth bit: element j's is bit j of qh read as a little-endian 32-bit word, so q is the
 * nibble plus 16 times that bit. */

_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");

/* K-quants: super-blocks of 256 elements. Q4_K and Q5_K split theirs into eight sub-blocks of 32,
 * each with a 6-bit scale and a 6-bit min (x = d * scale * q - dmin * min), packed in 12 bytes as
 * k_scales_mins() unpacks them. Q6_K has sixteen sub-blocks of 16 with signed 8-bit scales
 * (x = d * scale * (q - 32)). Each 32 bytes of Q4_K/Q5_K nibbles hold two sub-blocks: the low
 * nibbles the first, the high nibbles the second; Q5_K's fifth bit of element l in sub-block j is
 * bit j of qh[l]. Q6_K's elements come in two halves of 128: in half h, element 32s + l (s < 4)
 * has its low four bits in ql[64h + 32(s & 1) + l] (low nibble for s < 2, high for s >= 2) and
 * its top two in bits 2s, 2s + 1 of qh[32h + l]. Their activations are sov_q8k_block (Q8_K): one
 * scale per 256, so that a super-block's sub-block products add up in integers. */
#define QK_K 256

typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_k;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_k;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } block_q6_k;

_Static_assert(sizeof(block_q4_k) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(block_q5_k) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(block_q6_k) == 210, "Q6_K block is 210 bytes");

/* ---------------------------------------------------------------------------------------
 * Scalar conversions
 * ------------------------------------------------------------------------------------- */

static float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float sov_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));   /* inf, nan */
    if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return bits_to_float(sign);
    /* subnormal: man * 2^-24, exact in float */
    float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
}

float sov_bf16_to_fp32(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

static uint16_t load_u16(const void *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* ---------------------------------------------------------------------------------------
 * Type table
 * ------------------------------------------------------------------------------------- */

uint32_t sov_type_block_elems(uint32_t type) {
    switch (type) {
    case SOV_TYPE_F32: case SOV_TYPE_F16: case SOV_TYPE_BF16: return 1;
    case SOV_TYPE_Q4_0: case SOV_TYPE_Q4_1: case SOV_TYPE_Q5_0: case SOV_TYPE_Q5_1: case SOV_TYPE_Q8_0: return QK;
    case SOV_TYPE_Q4_K: case SOV_TYPE_Q5_K: case SOV_TYPE_Q6_K: return QK_K;
    default: return 0;
    }
}

uint32_t sov_type_block_bytes(uint32_t type) {
    switch (type) {
    case SOV_TYPE_F32: return 4;
    case SOV_TYPE_F16: case SOV_TYPE_BF16: return 2;
    case SOV_TYPE_Q4_0: return sizeof(block_q4_0);
    case SOV_TYPE_Q4_1: return sizeof(block_q4_1);
    case SOV_TYPE_Q5_0: return sizeof(block_q5_0);
    case SOV_TYPE_Q5_1: return sizeof(block_q5_1);
    case SOV_TYPE_Q8_0: return sizeof(block_q8_0);
    case SOV_TYPE_Q4_K: return sizeof(block_q4_k);
    case SOV_TYPE_Q5_K: return sizeof(block_q5_k);
    case SOV_TYPE_Q6_K: return sizeof(block_q6_k);
    default: return 0;
    }
}

const char *sov_tensor_type_name(uint32_t type) {
    switch (type) {
    case SOV_TYPE_F32: return "F32";
    case SOV_TYPE_F16: return "F16";
    case SOV_TYPE_BF16: return "BF16";
    case SOV_TYPE_Q4_0: return "Q4_0";
    case SOV_TYPE_Q4_1: return "Q4_1";
    case SOV_TYPE_Q5_0: return "Q5_0";
    case SOV_TYPE_Q5_1: return "Q5_1";
    case SOV_TYPE_Q8_0: return "Q8_0";
    case SOV_TYPE_Q4_K: return "Q4_K";
    case SOV_TYPE_Q5_K: return "Q5_K";
    case SOV_TYPE_Q6_K: return "Q6_K";
    default: return NULL;
    }
}

sov_status sov_tensor_row_size(uint32_t type, uint64_t n, uint64_t *bytes) {
    uint32_t be = sov_type_block_elems(type);
    if (be == 0) return sov_fail(SOV_ERR_UNSUPPORTED, "tensor type %u", type);
    if (n % be != 0) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "%llu elements are not whole %s blocks", (unsigned long long)n, sov_tensor_type_name(type));
    *bytes = n / be * sov_type_block_bytes(type);
    return SOV_OK;
}

bool sov_type_uses_q8(uint32_t type) {
    return type == SOV_TYPE_Q4_0 || type == SOV_TYPE_Q4_1 || type == SOV_TYPE_Q5_0 || type == SOV_TYPE_Q5_1 || type == SOV_TYPE_Q8_0;
}

bool sov_type_uses_q8k(uint32_t type) {
    return type == SOV_TYPE_Q4_K || type == SOV_TYPE_Q5_K || type == SOV_TYPE_Q6_K;
}

/* Bit k of a Q5_0/Q5_1 block's qh word: the fifth bit of element k. */
static uint32_t q5_high_bits(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

/* The eight 6-bit scales and mins of a Q4_K or Q5_K super-block: sub-blocks 0-3 in the low six
 * bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 in the nibbles of bytes 8-11, with
 * their top two bits in the top bits of bytes 0-7. */
static void k_scales_mins(const uint8_t *s, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0f) | ((s[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

/* ---------------------------------------------------------------------------------------
 * Dequantisation (scalar: it is off the hot path, and this keeps it bit-identical to the
 * reference, which multiplies and adds without fused multiply-add)
 * ------------------------------------------------------------------------------------- */

sov_status sov_tensor_dequantize(uint32_t type, const void *src, float *dst, uint64_t n) {
    uint64_t bytes;
    sov_status st = sov_tensor_row_size(type, n, &bytes);
    if (st != SOV_OK) return st;
    const uint8_t *p = src;
    switch (type) {
    case SOV_TYPE_F32: memcpy(dst, src, n * 4); break;
    case SOV_TYPE_F16: for (uint64_t i = 0; i < n; i++) dst[i] = sov_fp16_to_fp32(load_u16(p + 2 * i)); break;
    case SOV_TYPE_BF16: for (uint64_t i = 0; i < n; i++) dst[i] = sov_bf16_to_fp32(load_u16(p + 2 * i)); break;
    case SOV_TYPE_Q4_0:
        for (uint64_t b = 0; b < n / QK; b++) {
            const block_q4_0 *blk = (const block_q4_0 *)(p + b * sizeof(block_q4_0));
            float d = sov_fp16_to_fp32(load_u16(&blk->d));
            for (int j = 0; j < QK / 2; j++) {
                dst[b * QK + j] = (float)((blk->qs[j] & 0x0f) - 8) * d;
                dst[b * QK + j + QK / 2] = (float)((blk->qs[j] >> 4) - 8) * d;
            }
        }
        break;
    case SOV_TYPE_Q4_1:
        for (uint64_t b = 0; b < n / QK; b++) {
            const block_q4_1 *blk = (const block_q4_1 *)(p + b * sizeof(block_q4_1));
            float d = sov_fp16_to_fp32(load_u16(&blk->d)), m = sov_fp16_to_fp32(load_u16(&blk->m));
            for (int j = 0; j < QK / 2; j++) {
                float lo = d * (float)(blk->qs[j] & 0x0f), hi = d * (float)(blk->qs[j] >> 4);
                dst[b * QK + j] = lo + m;
                dst[b * QK + j + QK / 2] = hi + m;
            }
        }
        break;
    case SOV_TYPE_Q5_0:
        for (uint64_t b = 0; b < n / QK; b++) {
            const block_q5_0 *blk = (const block_q5_0 *)(p + b * sizeof(block_q5_0));
            float d = sov_fp16_to_fp32(load_u16(&blk->d));
            uint32_t qh = q5_high_bits(blk->qh);
            for (int j = 0; j < QK / 2; j++) {
                int lo = (blk->qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
                int hi = (blk->qs[j] >> 4) | (int)((qh >> (j + QK / 2)) & 1) << 4;
                dst[b * QK + j] = d * (float)(lo - 16);
                dst[b * QK + j + QK / 2] = d * (float)(hi - 16);
            }
        }
        break;
    case SOV_TYPE_Q5_1:
        for (uint64_t b = 0; b < n / QK; b++) {
            const block_q5_1 *blk = (const block_q5_1 *)(p + b * sizeof(block_q5_1));
            float d = sov_fp16_to_fp32(load_u16(&blk->d)), m = sov_fp16_to_fp32(load_u16(&blk->m));
            uint32_t qh = q5_high_bits(blk->qh);
            for (int j = 0; j < QK / 2; j++) {
                int lo = (blk->qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
                int hi = (blk->qs[j] >> 4) | (int)((qh >> (j + QK / 2)) & 1) << 4;
                float vlo = d * (float)lo, vhi = d * (float)hi;
                dst[b * QK + j] = vlo + m;
                dst[b * QK + j + QK / 2] = vhi + m;
            }
        }
        break;
    case SOV_TYPE_Q8_0:
        for (uint64_t b = 0; b < n / QK; b++) {
            const block_q8_0 *blk = (const block_q8_0 *)(p + b * sizeof(block_q8_0));
            float d = sov_fp16_to_fp32(load_u16(&blk->d));
            for (int j = 0; j < QK; j++) dst[b * QK + j] = d * (float)blk->qs[j];
        }
        break;
    case SOV_TYPE_Q4_K: case SOV_TYPE_Q5_K:
        for (uint64_t b = 0; b < n / QK_K; b++) {
            const uint8_t *blk = p + b * sov_type_block_bytes(type);
            /* the two types share the header; Q5_K has qh before its nibbles */
            const uint8_t *qh = type == SOV_TYPE_Q5_K ? ((const block_q5_k *)blk)->qh : NULL;
            const uint8_t *qs = type == SOV_TYPE_Q5_K ? ((const block_q5_k *)blk)->qs : ((const block_q4_k *)blk)->qs;
            float d = sov_fp16_to_fp32(load_u16(blk)), dmin = sov_fp16_to_fp32(load_u16(blk + 2));
            uint8_t sc[8], m[8];
            k_scales_mins(blk + 4, sc, m);
            float *out = dst + b * QK_K;
            for (int j = 0; j < 8; j++) {
                float ds = d * (float)sc[j], dm = dmin * (float)m[j];
                for (int l = 0; l < 32; l++) {
                    int q = (qs[32 * (j / 2) + l] >> (4 * (j & 1))) & 0x0f;
                    if (qh) q |= ((qh[l] >> j) & 1) << 4;
                    float v = ds * (float)q;
                    out[32 * j + l] = v - dm;
                }
            }
        }
        break;
    case SOV_TYPE_Q6_K:
        for (uint64_t b = 0; b < n / QK_K; b++) {
            const block_q6_k *blk = (const block_q6_k *)(p + b * sizeof(block_q6_k));
            float d = sov_fp16_to_fp32(load_u16(&blk->d));
            float *out = dst + b * QK_K;
            for (int e = 0; e < QK_K; e++) {
                int h = e / 128, s = (e % 128) / 32, l = e % 32;
                int lo = (blk->ql[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 0x0f;
                int hi = (blk->qh[32 * h + l] >> (2 * s)) & 3;
                float ds = d * (float)blk->scales[e / 16];
                out[e] = ds * (float)((lo | (hi << 4)) - 32);
            }
        }
        break;
    default: break;
    }
    return SOV_OK;
}

static bool fp16_finite(uint16_t h) { return ((h >> 10) & 0x1f) != 0x1f; }

bool sov_tensor_all_finite(uint32_t type, const void *data, uint64_t n) {
    const uint8_t *p = data;
    switch (type) {
    case SOV_TYPE_F32:
        for (uint64_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, p + 4 * i, 4);
            if (!isfinite(v)) return false;
        }
        return true;
    case SOV_TYPE_F16:
        for (uint64_t i = 0; i < n; i++) if (!fp16_finite(load_u16(p + 2 * i))) return false;
        return true;
    case SOV_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) if (((load_u16(p + 2 * i) >> 7) & 0xff) == 0xff) return false;
        return true;
    case SOV_TYPE_Q4_0: case SOV_TYPE_Q5_0: case SOV_TYPE_Q8_0: {
        uint32_t bb = sov_type_block_bytes(type);
        for (uint64_t b = 0; b < n / QK; b++) if (!fp16_finite(load_u16(p + b * bb))) return false;
        return true;
    }
    case SOV_TYPE_Q4_1: case SOV_TYPE_Q5_1: case SOV_TYPE_Q4_K: case SOV_TYPE_Q5_K: {
        /* d and m (or dmin) lead the block */
        uint32_t be = sov_type_block_elems(type), bb = sov_type_block_bytes(type);
        for (uint64_t b = 0; b < n / be; b++) {
            const uint8_t *blk = p + b * bb;
            if (!fp16_finite(load_u16(blk)) || !fp16_finite(load_u16(blk + 2))) return false;
        }
        return true;
    }
    case SOV_TYPE_Q6_K:
        for (uint64_t b = 0; b < n / QK_K; b++)
            if (!fp16_finite(load_u16(p + b * sizeof(block_q6_k) + offsetof(block_q6_k, d)))) return false;
        return true;
    default: return false;
    }
}

/* ---------------------------------------------------------------------------------------
 * Kernel selection
 * ------------------------------------------------------------------------------------- */

sov_isa sov_isa_detect(int force_scalar) {
    if (force_scalar < 0) {
        const char *env = getenv("NATIVE_FORCE_SCALAR");
        force_scalar = env && env[0] && strcmp(env, "0") != 0;
    }
    if (force_scalar) return SOV_ISA_SCALAR;
#ifdef SOV_X86
    __builtin_cpu_init();
    /* F16C through cpuid (leaf 1, ECX): clang's __builtin_cpu_supports does not know it, and the
     * fuzz target builds this file with clang. */
    unsigned eax, ebx, ecx = 0, edx;
    bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vnni"))
            return SOV_ISA_AVX512;
        return SOV_ISA_AVX2;
    }
#endif
    return SOV_ISA_SCALAR;
}

const char *sov_isa_name(sov_isa isa) {
    switch (isa) {
    case SOV_ISA_AVX2: return "avx2";
    case SOV_ISA_AVX512: return "avx512";
    case SOV_ISA_SCALAR: return "scalar";
    }
    return "scalar";
}

/* ---------------------------------------------------------------------------------------
 * Activation quantisation: blocks of 32, scale amax/127, round half to even. The SIMD
 * variant computes exactly the same numbers, so that only the accumulation order differs.
 * ------------------------------------------------------------------------------------- */

static void quantize_q8_scalar(const float *x, sov_q8_block *out, uint64_t n) {
    for (uint64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            int q = (int)nearbyintf(xb[j] * id);
            out[b].q[j] = (int8_t)q;
            sum += q;
        }
        out[b].d = d;
        out[b].s = d * (float)sum;
    }
}

#ifdef SOV_X86
__attribute__((target("avx2,fma")))
static void quantize_q8_avx2(const float *x, sov_q8_block *out, uint64_t n) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    for (uint64_t b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_mask, v0), _mm256_andnot_ps(sign_mask, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign_mask, v2), _mm256_andnot_ps(sign_mask, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float d = _mm_cvtss_f32(m4) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        /* pack 32 int32 to int8; packs interleave 128-bit lanes, the permute restores order */
        __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)out[b].q, p);
        out[b].d = d;
        out[b].s = d * (float)_mm_cvtsi128_si32(s4);
    }
}
#endif

void sov_quantize_row_q8(sov_isa isa, const float *x, sov_q8_block *out, uint64_t n) {
#ifdef SOV_X86
    if (isa != SOV_ISA_SCALAR) {
        quantize_q8_avx2(x, out, n);
        return;
    }
#endif
    (void)isa;
    quantize_q8_scalar(x, out, n);
}

/* Q8_K as llama.cpp quantises it: the scale is the signed value of largest magnitude (the first, on a
 * tie) over -127, so that it maps to -127 exactly; quants round half to even. Portable C only: it
 * costs O(n) per token against the products' O(n * rows). */
void sov_quantize_row_q8k(const float *x, sov_q8k_block *out, uint64_t n) {
    for (uint64_t b = 0; b < n / QK_K; b++) {
        const float *xb = x + b * QK_K;
        sov_q8k_block *o = &out[b];
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax == 0.0f) {
            memset(o, 0, sizeof *o);
            continue;
        }
        float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            float v = iscale * xb[j];
            int q = (int)nearbyintf(v);
            o->q[j] = (int8_t)(q > 127 ? 127 : q);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += o->q[16 * g + j];
            o->bsums[g] = (int16_t)sum;
        }
        o->d = 1.0f / iscale;
    }
}

/* ---------------------------------------------------------------------------------------
 * Dot products, portable. They keep eight lanes and fuse multiply-adds exactly as the SIMD
 * kernels do, and sum the lanes in the same tree, so that every kernel set gives the same
 * bits: 8-bit activation quantisation would otherwise amplify rounding differences.
 * ------------------------------------------------------------------------------------- */

static float hsum8(const float *l) {
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

static float dot_f32_scalar(const void *w, const float *x, uint64_t n) {
    const float *a = w;
    float acc0[8] = {0}, acc1[8] = {0};
    uint64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int l = 0; l < 8; l++) {
            acc0[l] = fmaf(a[i + l], x[i + l], acc0[l]);
            acc1[l] = fmaf(a[i + 8 + l], x[i + 8 + l], acc1[l]);
        }
    }
    for (int l = 0; l < 8; l++) acc0[l] += acc1[l];
    float acc = hsum8(acc0);
    for (; i < n; i++) acc += a[i] * x[i];
    return acc;
}

static float dot_f16_scalar(const void *w, const float *x, uint64_t n) {
    const uint8_t *a = w;
    float acc[8] = {0};
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(sov_fp16_to_fp32(load_u16(a + 2 * (i + l))), x[i + l], acc[l]);
    float s = hsum8(acc);
    for (; i < n; i++) s += sov_fp16_to_fp32(load_u16(a + 2 * i)) * x[i];
    return s;
}

static float dot_bf16_scalar(const void *w, const float *x, uint64_t n) {
    const uint8_t *a = w;
    float acc[8] = {0};
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(sov_bf16_to_fp32(load_u16(a + 2 * (i + l))), x[i + l], acc[l]);
    float s = hsum8(acc);
    for (; i < n; i++) s += sov_bf16_to_fp32(load_u16(a + 2 * i)) * x[i];
    return s;
}

/* Lane l of a block product sums elements 4l..4l+3 of the unpacked block (low nibbles first), each
 * with its fifth bit from qh for Q5_0/Q5_1 (qh NULL for the four-bit types). */
static void nibble_lanes(const uint8_t *qs, const uint8_t *qh, const int8_t *q, int32_t *lanes) {
    uint32_t high = qh ? q5_high_bits(qh) : 0;
    for (int l = 0; l < 8; l++) {
        int32_t sum = 0;
        for (int k = 4 * l; k < 4 * l + 4; k++) {
            int nib = k < 16 ? (qs[k] & 0x0f) : (qs[k - 16] >> 4);
            nib |= (int)((high >> k) & 1) << 4;
            sum += nib * q[k];
        }
        lanes[l] = sum;
    }
}

static float dot_q4_0_scalar(const void *w, const sov_q8_block *x, uint64_t nb) {
    const block_q4_0 *a = w;
    float acc[8] = {0}, corr = 0.0f;
    int32_t lanes[8];
    for (uint64_t b = 0; b < nb; b++) {
        nibble_lanes(a[b].qs, NULL, x[b].q, lanes);
        float dw = sov_fp16_to_fp32(a[b].d), scale = dw * x[b].d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(scale, (float)lanes[l], acc[l]);
        corr += dw * x[b].s;
    }
    return hsum8(acc) - 8.0f * corr;
}

static float dot_q4_1_scalar(const void *w, const sov_q8_block *x, uint64_t nb) {
    const block_q4_1 *a = w;
    float acc[8] = {0}, mins = 0.0f;
    int32_t lanes[8];
    for (uint64_t b = 0; b < nb; b++) {
        nibble_lanes(a[b].qs, NULL, x[b].q, lanes);
        float scale = sov_fp16_to_fp32(a[b].d) * x[b].d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(scale, (float)lanes[l], acc[l]);
        mins += sov_fp16_to_fp32(a[b].m) * x[b].s;
    }
    return hsum8(acc) + mins;
}

/* Q5_0 and Q5_1 as Q4_0 and Q4_1, with five-bit quants (Q5_0's offset is 16) */
static float dot_q5_0_scalar(const void *w, const sov_q8_block *x, uint64_t nb) {
    const block_q5_0 *a = w;
    float acc[8] = {0}, corr = 0.0f;
    int32_t lanes[8];
    for (uint64_t b = 0; b < nb; b++) {
        nibble_lanes(a[b].qs, a[b].qh, x[b].q, lanes);
        float dw = sov_fp16_to_fp32(a[b].d), scale = dw * x[b].d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(scale, (float)lanes[l], acc[l]);
        corr += dw * x[b].s;
    }
    return hsum8(acc) - 16.0f * corr;
}

static float dot_q5_1_scalar(const void *w, const sov_q8_block *x, uint64_t nb) {
    const block_q5_1 *a = w;
    float acc[8] = {0}, mins = 0.0f;
    int32_t lanes[8];
    for (uint64_t b = 0; b < nb; b++) {
        nibble_lanes(a[b].qs, a[b].qh, x[b].q, lanes);
        float scale = sov_fp16_to_fp32(a[b].d) * x[b].d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(scale, (float)lanes[l], acc[l]);
        mins += sov_fp16_to_fp32(a[b].m) * x[b].s;
    }
    return hsum8(acc) + mins;
}

static float dot_q8_0_scalar(const void *w, const sov_q8_block *x, uint64_t nb) {
    const block_q8_0 *a = w;
    float acc[8] = {0};
    for (uint64_t b = 0; b < nb; b++) {
        float scale = sov_fp16_to_fp32(a[b].d) * x[b].d;
        for (int l = 0; l < 8; l++) {
            int32_t sum = 0;
            for (int k = 4 * l; k < 4 * l + 4; k++) sum += a[b].qs[k] * x[b].q[k];
            acc[l] = fmaf(scale, (float)sum, acc[l]);
        }
    }
    return hsum8(acc);
}

/* K-quants against Q8_K activations. Each sub-block's integer products are summed in lanes of four
 * elements, as a 256-bit integer dot product does, times the sub-block's scale; the lanes add up in
 * integers over the super-block, whose float scale d * activation d multiplies them once. */
static void k_lanes(const uint8_t *q, const int8_t *y, int32_t scale, int32_t *lanes) {
    for (int l = 0; l < 8; l++) {
        int32_t sum = 0;
        for (int k = 4 * l; k < 4 * l + 4; k++) sum += q[k] * y[k];
        lanes[l] += scale * sum;
    }
}

/* Q4_K and Q5_K: the mins' part is dmin * activation d * sum of min times the sub-block's activation
 * sum, from the activations' sums of 16. */
static float dot_q45_k_scalar(const void *w, const sov_q8k_block *x, uint64_t nb, bool five_bits) {
    const uint8_t *base = w;
    uint32_t bb = five_bits ? sizeof(block_q5_k) : sizeof(block_q4_k);
    float acc[8] = {0}, mins = 0.0f;
    uint8_t sc[8], m[8], q[32];
    for (uint64_t i = 0; i < nb; i++) {
        const uint8_t *blk = base + i * bb;
        const uint8_t *qs = five_bits ? ((const block_q5_k *)blk)->qs : ((const block_q4_k *)blk)->qs;
        const uint8_t *qh = five_bits ? ((const block_q5_k *)blk)->qh : NULL;
        k_scales_mins(blk + 4, sc, m);
        int32_t lanes[8] = {0}, summs = 0;
        for (int j = 0; j < 8; j++) {
            for (int k = 0; k < 32; k++) {
                q[k] = (uint8_t)((qs[32 * (j / 2) + k] >> (4 * (j & 1))) & 0x0f);
                if (qh) q[k] |= (uint8_t)(((qh[k] >> j) & 1) << 4);
            }
            k_lanes(q, x[i].q + 32 * j, sc[j], lanes);
            summs += m[j] * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);
        }
        float d = sov_fp16_to_fp32(load_u16(blk)) * x[i].d, dmin = sov_fp16_to_fp32(load_u16(blk + 2)) * x[i].d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
        float min = dmin * (float)summs;
        mins += min;
    }
    return hsum8(acc) - mins;
}

static float dot_q4_k_scalar(const void *w, const sov_q8k_block *x, uint64_t nb) { return dot_q45_k_scalar(w, x, nb, false); }
static float dot_q5_k_scalar(const void *w, const sov_q8k_block *x, uint64_t nb) { return dot_q45_k_scalar(w, x, nb, true); }

/* Q6_K: signed quants; lanes 0-3 of a 32-element chunk are its first sub-block of 16, lanes 4-7 its
 * second. */
static float dot_q6_k_scalar(const void *w, const sov_q8k_block *x, uint64_t nb) {
    const block_q6_k *a = w;
    float acc[8] = {0};
    for (uint64_t i = 0; i < nb; i++) {
        int32_t lanes[8] = {0};
        for (int j = 0; j < 8; j++) {
            int h = j / 4, s = j % 4;
            const uint8_t *ql = a[i].ql + 64 * h + 32 * (s & 1), *qh = a[i].qh + 32 * h;
            const int8_t *y = x[i].q + 32 * j;
            for (int l = 0; l < 8; l++) {
                int32_t sum = 0;
                for (int k = 4 * l; k < 4 * l + 4; k++)
                    sum += ((((ql[k] >> (4 * (s >> 1))) & 0x0f) | (((qh[k] >> (2 * s)) & 3) << 4)) - 32) * y[k];
                lanes[l] += a[i].scales[2 * j + l / 4] * sum;
            }
        }
        float d = sov_fp16_to_fp32(load_u16(&a[i].d)) * x[i].d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
    }
    return hsum8(acc);
}

/* ---------------------------------------------------------------------------------------
 * Dot products, AVX2 + FMA (and AVX-512 VNNI for the integer products)
 * ------------------------------------------------------------------------------------- */

#ifdef SOV_X86
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define VNNI_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

AVX2_TARGET static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* hsum_avx2 of four vectors at once, in its order ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)),
 * so with the same bits: lane j is the sum of a[j]. */
AVX2_TARGET static inline __m128 hsum4_avx2(const __m256 a[4]) {
    __m256 x01 = _mm256_add_ps(_mm256_permute2f128_ps(a[0], a[1], 0x20), _mm256_permute2f128_ps(a[0], a[1], 0x31));
    __m256 x23 = _mm256_add_ps(_mm256_permute2f128_ps(a[2], a[3], 0x20), _mm256_permute2f128_ps(a[2], a[3], 0x31));
    /* per 128-bit half: (l0 + l4) + (l2 + l6) and (l1 + l5) + (l3 + l7) of a[0], a[2] (low) and a[1], a[3] (high) */
    __m256 y = _mm256_add_ps(_mm256_shuffle_ps(x01, x23, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(x01, x23, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 z = _mm256_add_ps(_mm256_shuffle_ps(y, y, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(y, y, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm_unpacklo_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
}

AVX2_TARGET static float dot_f32_avx2(const void *w, const float *x, uint64_t n) {
    const float *a = w;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    uint64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
    }
    float acc = hsum_avx2(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) acc += a[i] * x[i];
    return acc;
}

AVX2_TARGET static float dot_f16_avx2(const void *w, const float *x, uint64_t n) {
    const uint8_t *a = w;
    __m256 acc = _mm256_setzero_ps();
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + 2 * i))), _mm256_loadu_ps(x + i), acc);
    float s = hsum_avx2(acc);
    for (; i < n; i++) s += sov_fp16_to_fp32(load_u16(a + 2 * i)) * x[i];
    return s;
}

AVX2_TARGET static float dot_bf16_avx2(const void *w, const float *x, uint64_t n) {
    const uint8_t *a = w;
    __m256 acc = _mm256_setzero_ps();
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(a + 2 * i)));
        acc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(h, 16)), _mm256_loadu_ps(x + i), acc);
    }
    float s = hsum_avx2(acc);
    for (; i < n; i++) s += sov_bf16_to_fp32(load_u16(a + 2 * i)) * x[i];
    return s;
}

/* 32 nibbles of a block as bytes 0..15 in element order. */
AVX2_TARGET static inline __m256i unpack_nibbles(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* Q5_0/Q5_1: the 32 five-bit quants of a block, in element order. Byte k of the shuffle holds byte
 * k / 8 of qh; OR-ing every bit but bit k % 8 and comparing with all ones tests bit k. */
AVX2_TARGET static inline __m256i unpack_q5(const uint8_t *qs, const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
                                         _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    __m256i set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi8(-1));
    return _mm256_or_si256(unpack_nibbles(qs), _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
}

AVX2_TARGET static inline __m256i dot_u8s8_avx2(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

VNNI_TARGET static inline __m256i dot_u8s8_vnni(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

#define DEFINE_Q_DOTS(SUFFIX, TARGET, DOT_U8S8)                                                                   \
    TARGET static float dot_q4_0_##SUFFIX(const void *w, const sov_q8_block *x, uint64_t nb) {                     \
        const block_q4_0 *a = w;                                                                                     \
        __m256 acc = _mm256_setzero_ps();                                                                            \
        float corr = 0.0f;                                                                                           \
        for (uint64_t b = 0; b < nb; b++) {                                                                          \
            __m256i p = DOT_U8S8(unpack_nibbles(a[b].qs), _mm256_loadu_si256((const __m256i *)x[b].q));            \
            float dw = _cvtsh_ss(a[b].d);                                                                            \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * x[b].d), _mm256_cvtepi32_ps(p), acc);                         \
            corr += dw * x[b].s;                                                                                     \
        }                                                                                                            \
        return hsum_avx2(acc) - 8.0f * corr;                                                                         \
    }                                                                                                                \
    TARGET static float dot_q4_1_##SUFFIX(const void *w, const sov_q8_block *x, uint64_t nb) {                     \
        const block_q4_1 *a = w;                                                                                     \
        __m256 acc = _mm256_setzero_ps();                                                                            \
        float mins = 0.0f;                                                                                           \
        for (uint64_t b = 0; b < nb; b++) {                                                                          \
            __m256i p = DOT_U8S8(unpack_nibbles(a[b].qs), _mm256_loadu_si256((const __m256i *)x[b].q));            \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[b].d) * x[b].d), _mm256_cvtepi32_ps(p), acc);          \
            mins += _cvtsh_ss(a[b].m) * x[b].s;                                                                      \
        }                                                                                                            \
        return hsum_avx2(acc) + mins;                                                                                \
    }                                                                                                                \
    TARGET static float dot_q5_0_##SUFFIX(const void *w, const sov_q8_block *x, uint64_t nb) {                     \
        const block_q5_0 *a = w;                                                                                     \
        __m256 acc = _mm256_setzero_ps();                                                                            \
        float corr = 0.0f;                                                                                           \
        for (uint64_t b = 0; b < nb; b++) {                                                                          \
            __m256i p = DOT_U8S8(unpack_q5(a[b].qs, a[b].qh), _mm256_loadu_si256((const __m256i *)x[b].q));        \
            float dw = _cvtsh_ss(a[b].d);                                                                            \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * x[b].d), _mm256_cvtepi32_ps(p), acc);                         \
            corr += dw * x[b].s;                                                                                     \
        }                                                                                                            \
        return hsum_avx2(acc) - 16.0f * corr;                                                                        \
    }                                                                                                                \
    TARGET static float dot_q5_1_##SUFFIX(const void *w, const sov_q8_block *x, uint64_t nb) {                     \
        const block_q5_1 *a = w;                                                                                     \
        __m256 acc = _mm256_setzero_ps();                                                                            \
        float mins = 0.0f;                                                                                           \
        for (uint64_t b = 0; b < nb; b++) {                                                                          \
            __m256i p = DOT_U8S8(unpack_q5(a[b].qs, a[b].qh), _mm256_loadu_si256((const __m256i *)x[b].q));        \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[b].d) * x[b].d), _mm256_cvtepi32_ps(p), acc);          \
            mins += _cvtsh_ss(a[b].m) * x[b].s;                                                                      \
        }                                                                                                            \
        return hsum_avx2(acc) + mins;                                                                                \
    }                                                                                                                \
    TARGET static float dot_q8_0_##SUFFIX(const void *w, const sov_q8_block *x, uint64_t nb) {                     \
        const block_q8_0 *a = w;                                                                                     \
        __m256 acc = _mm256_setzero_ps();                                                                            \
        for (uint64_t b = 0; b < nb; b++) {                                                                          \
            __m256i wq = _mm256_loadu_si256((const __m256i *)a[b].qs);                                              \
            __m256i xq = _mm256_loadu_si256((const __m256i *)x[b].q);                                               \
            __m256i p = DOT_U8S8(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));                               \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(a[b].d) * x[b].d), _mm256_cvtepi32_ps(p), acc);          \
        }                                                                                                            \
        return hsum_avx2(acc);                                                                                       \
    }

DEFINE_Q_DOTS(avx2, AVX2_TARGET, dot_u8s8_avx2)
DEFINE_Q_DOTS(vnni, VNNI_TARGET, dot_u8s8_vnni)

/* K-quant kernels against Q8_K. Per sub-block, unsigned quants times activations in 16-bit pairs,
 * then the pairs times the sub-block's scale summed into 32-bit lanes (exact: a pair is at most
 * 2 * 63 * 127), so the lanes are the scalar kernels' integers; AVX-512 VNNI fuses the second step. */
AVX2_TARGET static inline __m256i k_scaled_avx2(__m256i lanes, __m256i q, __m256i y, __m256i scale16) {
    return _mm256_add_epi32(lanes, _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), scale16));
}

VNNI_TARGET static inline __m256i k_scaled_vnni(__m256i lanes, __m256i q, __m256i y, __m256i scale16) {
    return _mm256_dpwssd_epi32(lanes, _mm256_maddubs_epi16(q, y), scale16);
}

#define DEFINE_K_DOTS(SUFFIX, TARGET, K_SCALED)                                                                   \
    /* Q4_K (five_bits false) and Q5_K */                                                                          \
    TARGET static inline float dot_q45_k_##SUFFIX(const void *w, const sov_q8k_block *x, uint64_t nb, bool five_bits) { \
        const uint8_t *base = w;                                                                                     \
        uint32_t bb = five_bits ? sizeof(block_q5_k) : sizeof(block_q4_k);                                           \
        const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);                                     \
        __m256 acc = _mm256_setzero_ps();                                                                            \
        float mins = 0.0f;                                                                                           \
        uint8_t sc[8], m[8];                                                                                         \
        for (uint64_t i = 0; i < nb; i++) {                                                                          \
            const uint8_t *blk = base + i * bb;                                                                      \
            const uint8_t *qs = five_bits ? ((const block_q5_k *)blk)->qs : ((const block_q4_k *)blk)->qs;          \
            k_scales_mins(blk + 4, sc, m);                                                                           \
            /* Q5_K: bit j of every qh byte, brought down to bit 0 one sub-block at a time (16-bit shifts \
             * by under 8 never move a bit across bytes into bit 0) */                                          \
            __m256i qh = five_bits ? _mm256_loadu_si256((const __m256i *)((const block_q5_k *)blk)->qh) : _mm256_setzero_si256(); \
            __m256i lanes = _mm256_setzero_si256();                                                                  \
            int32_t summs = 0;                                                                                       \
            for (int c = 0; c < 4; c++) {                                                                            \
                __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));                                   \
                __m256i lo = _mm256_or_si256(_mm256_and_si256(raw, low4), _mm256_slli_epi16(_mm256_and_si256(qh, one), 4)); \
                qh = _mm256_srli_epi16(qh, 1);                                                                       \
                __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low4),                      \
                                             _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));                       \
                qh = _mm256_srli_epi16(qh, 1);                                                                       \
                lanes = K_SCALED(lanes, lo, _mm256_loadu_si256((const __m256i *)(x[i].q + 64 * c)), _mm256_set1_epi16(sc[2 * c])); \
                lanes = K_SCALED(lanes, hi, _mm256_loadu_si256((const __m256i *)(x[i].q + 64 * c + 32)),            \
                                 _mm256_set1_epi16(sc[2 * c + 1]));                                                  \
            }                                                                                                        \
            for (int j = 0; j < 8; j++) summs += m[j] * (x[i].bsums[2 * j] + x[i].bsums[2 * j + 1]);                 \
            float d = _cvtsh_ss(load_u16(blk)) * x[i].d, dmin = _cvtsh_ss(load_u16(blk + 2)) * x[i].d;              \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);                               \
            float min = dmin * (float)summs;                                                                         \
            mins += min;                                                                                             \
        }                                                                                                            \
        return hsum_avx2(acc) - mins;                                                                                \
    }                                                                                                                \
    TARGET static float dot_q4_k_##SUFFIX(const void *w, const sov_q8k_block *x, uint64_t nb) {                    \
        return dot_q45_k_##SUFFIX(w, x, nb, false);                                                                  \
    }                                                                                                                \
    TARGET static float dot_q5_k_##SUFFIX(const void *w, const sov_q8k_block *x, uint64_t nb) {                    \
        return dot_q45_k_##SUFFIX(w, x, nb, true);                                                                   \
    }                                                                                                                \
    /* Q6_K: signed quants, |q| times the activations with q's sign (as for Q8_0); a chunk of 32 has  \
     * two scales, one per 128-bit half */                                                              \
    TARGET static float dot_q6_k_##SUFFIX(const void *w, const sov_q8k_block *x, uint64_t nb) {                    \
        const block_q6_k *a = w;                                                                                     \
        const __m256i low4 = _mm256_set1_epi8(0x0f), low2 = _mm256_set1_epi8(3), bias = _mm256_set1_epi8(32);       \
        __m256 acc = _mm256_setzero_ps();                                                                            \
        for (uint64_t i = 0; i < nb; i++) {                                                                          \
            __m256i lanes = _mm256_setzero_si256();                                                                  \
            for (int h = 0; h < 2; h++) {                                                                            \
                __m256i ql0 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h));                              \
                __m256i ql1 = _mm256_loadu_si256((const __m256i *)(a[i].ql + 64 * h + 32));                         \
                __m256i qh = _mm256_loadu_si256((const __m256i *)(a[i].qh + 32 * h));                               \
                __m256i lows[4] = {_mm256_and_si256(ql0, low4), _mm256_and_si256(ql1, low4),                        \
                                   _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),                               \
                                   _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4)};                              \
                for (int s = 0; s < 4; s++) {                                                                        \
                    int j = 4 * h + s;                                                                               \
                    __m256i q = _mm256_sub_epi8(_mm256_or_si256(lows[s], _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4)), bias); \
                    qh = _mm256_srli_epi16(qh, 2);                                                                   \
                    __m256i y = _mm256_loadu_si256((const __m256i *)(x[i].q + 32 * j));                             \
                    __m256i scale = _mm256_set_m128i(_mm_set1_epi16(a[i].scales[2 * j + 1]), _mm_set1_epi16(a[i].scales[2 * j])); \
                    lanes = K_SCALED(lanes, _mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q), scale);                 \
                }                                                                                                    \
            }                                                                                                        \
            float d = _cvtsh_ss(load_u16(&a[i].d)) * x[i].d;                                                         \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);                               \
        }                                                                                                            \
        return hsum_avx2(acc);                                                                                       \
    }

DEFINE_K_DOTS(avx2, AVX2_TARGET, k_scaled_avx2)
DEFINE_K_DOTS(vnni, VNNI_TARGET, k_scaled_vnni)

/* ---------------------------------------------------------------------------------------
 * Register-blocked Q4_1 and Q8_0 x Q8 tiles for batched products (prefill, batched decode), AVX-512 VNNI
 *
 * A tile is TILE_ROWS weight rows x TILE_TOKENS tokens. Every zmm accumulator holds two tokens'
 * 8-lane partial sums for one row, and each half is computed with exactly the operations of
 * dot_q4_1_vnni for that (row, token) pair, so the tile is bit-identical to the one-pair kernel
 * (and so stays as close to the scalar path as that kernel is). Per block, a weight row is
 * unpacked once for all tokens and a token's activations are loaded once for all rows.
 * ------------------------------------------------------------------------------------- */

#define TILE_ROWS 4
#define TILE_TOKENS 8

/* The activation scales of a tile's tokens, laid out once per tile of tokens for the kernels' loads
 * (gathering them per block and row range cost a fifth of the kernel): per block, the scales of
 * tokens 2P and 2P + 1 in lanes 0-7 and 8-15 of vector P (P < 4), then the eight tokens' d * sum(q). */
#define TILE_SCALES (TILE_TOKENS / 2 * 16 + TILE_TOKENS)

static void tile_scales(const sov_q8_block *x, uint64_t nb, float *out) {
    for (uint64_t b = 0; b < nb; b++) {
        float *o = out + b * TILE_SCALES;
        for (int t = 0; t < TILE_TOKENS; t++) {
            for (int l = 0; l < 8; l++) o[16 * (t / 2) + 8 * (t % 2) + l] = x[(uint64_t)t * nb + b].d;
            o[TILE_TOKENS / 2 * 16 + t] = x[(uint64_t)t * nb + b].s;
        }
    }
}

/* One row of the tile: its four two-token accumulators and its eight tokens' mins. */
#define TILE_ROW_STEP(R)                                                                                              \
    do {                                                                                                              \
        const block_q4_1 *a = (const block_q4_1 *)(w + (uint64_t)(R) * row_bytes) + b;                              \
        __m512i wq = _mm512_broadcast_i64x4(unpack_nibbles(a->qs));                                                   \
        __m512 dw = _mm512_set1_ps(_cvtsh_ss(a->d));                                                                  \
        mins##R = _mm256_add_ps(mins##R, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(a->m)), s8));                          \
        acc##R##0 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd0), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wq, xq0)), acc##R##0); \
        acc##R##1 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd1), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wq, xq1)), acc##R##1); \
        acc##R##2 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd2), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wq, xq2)), acc##R##2); \
        acc##R##3 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd3), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, wq, xq3)), acc##R##3); \
    } while (0)

/* Two tokens' activations of block b, side by side, and their scales spread to match. */
#define TILE_PAIR_LOAD(P)                                                                                             \
    __m512i xq##P = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x[(2 * (P)) * nb + b].q)), \
                                       _mm256_loadu_si256((const __m256i *)x[(2 * (P) + 1) * nb + b].q), 1);       \
    __m512 xd##P = _mm512_loadu_ps(sc + b * TILE_SCALES + 16 * (P))

/* One row of the tile: the eight tokens' sums (hsum_avx2 of each half of the accumulators, four at a
 * time) plus their mins, token t in lane t. */
VNNI_TARGET static inline __m256 tile_row_sums(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m256 mins) {
    __m256 h[TILE_TOKENS] = {_mm512_castps512_ps256(a0), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a0), 1)),
                             _mm512_castps512_ps256(a1), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a1), 1)),
                             _mm512_castps512_ps256(a2), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a2), 1)),
                             _mm512_castps512_ps256(a3), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a3), 1))};
    return _mm256_add_ps(_mm256_set_m128(hsum4_avx2(h + 4), hsum4_avx2(h)), mins);
}

/* The tile's sums, rows r0..r3 with token t in lane t, to y: transposed so that each token's four
 * rows go in one store. */
VNNI_TARGET static inline void tile_store(__m256 r0, __m256 r1, __m256 r2, __m256 r3, float *y, int64_t ldy) {
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 tok[4] = {_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                     _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
    for (int t = 0; t < 4; t++) {
        _mm_storeu_ps(y + t * ldy, _mm256_castps256_ps128(tok[t]));
        _mm_storeu_ps(y + (t + 4) * ldy, _mm256_extractf128_ps(tok[t], 1));
    }
}

VNNI_TARGET static void tile_q4_1_vnni(const uint8_t *w, uint64_t row_bytes, const sov_q8_block *x, const float *sc, uint64_t nb, float *y,
                                       int64_t ldy) {
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc00 = _mm512_setzero_ps(), acc01 = acc00, acc02 = acc00, acc03 = acc00, acc10 = acc00, acc11 = acc00, acc12 = acc00,
           acc13 = acc00, acc20 = acc00, acc21 = acc00, acc22 = acc00, acc23 = acc00, acc30 = acc00, acc31 = acc00, acc32 = acc00,
           acc33 = acc00;
    __m256 mins0 = _mm256_setzero_ps(), mins1 = mins0, mins2 = mins0, mins3 = mins0;
    /* the next tile's rows, a share per block, as the row kernels do: with few tokens (batched
     * decode) the weights come from memory once, and the loads would otherwise wait on it */
    const uint8_t *next = w + TILE_ROWS * row_bytes;
    uint64_t ahead = (TILE_ROWS * row_bytes + nb - 1) / nb;
    for (uint64_t b = 0; b < nb; b++) {
        _mm_prefetch((const char *)next + b * ahead, _MM_HINT_T0);
        _mm_prefetch((const char *)next + b * ahead + 64, _MM_HINT_T0);
        if (ahead > 128) _mm_prefetch((const char *)next + b * ahead + 128, _MM_HINT_T0);
        __m256 s8 = _mm256_loadu_ps(sc + b * TILE_SCALES + TILE_TOKENS / 2 * 16);
        TILE_PAIR_LOAD(0);
        TILE_PAIR_LOAD(1);
        TILE_PAIR_LOAD(2);
        TILE_PAIR_LOAD(3);
        TILE_ROW_STEP(0);
        TILE_ROW_STEP(1);
        TILE_ROW_STEP(2);
        TILE_ROW_STEP(3);
    }
    tile_store(tile_row_sums(acc00, acc01, acc02, acc03, mins0), tile_row_sums(acc10, acc11, acc12, acc13, mins1),
               tile_row_sums(acc20, acc21, acc22, acc23, mins2), tile_row_sums(acc30, acc31, acc32, acc33, mins3), y, ldy);
}

/* The Q8_0 tile (the output head of batched decode), each (row, token) bit-identical to
 * dot_q8_0_vnni. The one-pair kernel moves the weight's sign onto the activations; with two tokens
 * per vector the activations are offset instead, to x + 128, which is unsigned: the lanes of
 * (x + 128) * w less 128 * w are the same integers, and the correction starts the accumulation. */
#define TILE_Q8_0_ROW_STEP(R)                                                                                         \
    do {                                                                                                              \
        const block_q8_0 *a = (const block_q8_0 *)(w + (uint64_t)(R) * row_bytes) + b;                              \
        __m512i wq = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)a->qs));                              \
        __m512i corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, wq));                                 \
        __m512 dw = _mm512_set1_ps(_cvtsh_ss(a->d));                                                                  \
        acc##R##0 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd0), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, xu0, wq)), acc##R##0); \
        acc##R##1 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd1), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, xu1, wq)), acc##R##1); \
        acc##R##2 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd2), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, xu2, wq)), acc##R##2); \
        acc##R##3 = _mm512_fmadd_ps(_mm512_mul_ps(dw, xd3), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, xu3, wq)), acc##R##3); \
    } while (0)

VNNI_TARGET static void tile_q8_0_vnni(const uint8_t *w, uint64_t row_bytes, const sov_q8_block *x, const float *sc, uint64_t nb, float *y,
                                       int64_t ldy) {
    const __m512i zero = _mm512_setzero_si512(), offset = _mm512_set1_epi8((char)0x80);
    __m512 acc00 = _mm512_setzero_ps(), acc01 = acc00, acc02 = acc00, acc03 = acc00, acc10 = acc00, acc11 = acc00, acc12 = acc00,
           acc13 = acc00, acc20 = acc00, acc21 = acc00, acc22 = acc00, acc23 = acc00, acc30 = acc00, acc31 = acc00, acc32 = acc00,
           acc33 = acc00;
    const uint8_t *next = w + TILE_ROWS * row_bytes;
    uint64_t ahead = (TILE_ROWS * row_bytes + nb - 1) / nb;
    for (uint64_t b = 0; b < nb; b++) {
        _mm_prefetch((const char *)next + b * ahead, _MM_HINT_T0);
        _mm_prefetch((const char *)next + b * ahead + 64, _MM_HINT_T0);
        if (ahead > 128) _mm_prefetch((const char *)next + b * ahead + 128, _MM_HINT_T0);
        TILE_PAIR_LOAD(0);
        TILE_PAIR_LOAD(1);
        TILE_PAIR_LOAD(2);
        TILE_PAIR_LOAD(3);
        __m512i xu0 = _mm512_xor_si512(xq0, offset), xu1 = _mm512_xor_si512(xq1, offset), xu2 = _mm512_xor_si512(xq2, offset),
                xu3 = _mm512_xor_si512(xq3, offset);
        TILE_Q8_0_ROW_STEP(0);
        TILE_Q8_0_ROW_STEP(1);
        TILE_Q8_0_ROW_STEP(2);
        TILE_Q8_0_ROW_STEP(3);
    }
    /* no mins: + 0 would turn a sum of -0 into +0, which the one-pair kernel keeps */
    const __m256 none = _mm256_set1_ps(-0.0f);
    tile_store(tile_row_sums(acc00, acc01, acc02, acc03, none), tile_row_sums(acc10, acc11, acc12, acc13, none),
               tile_row_sums(acc20, acc21, acc22, acc23, none), tile_row_sums(acc30, acc31, acc32, acc33, none), y, ldy);
}

/* ---------------------------------------------------------------------------------------
 * Row-blocked kernels for few tokens (decode), AVX-512 VNNI on 256-bit vectors
 *
 * Four weight rows times one token: the token's activations are loaded once per block for all
 * four rows, and the rows' sums are four independent chains, where the one-pair kernel waits on
 * one accumulator per block. Each row is computed with exactly the one-pair kernel's operations
 * (the same integer lanes, scales, order of additions), so the results are bit-identical to it.
 * The instructions are chosen to stay off the shuffle port, which the one-pair kernel saturates:
 * nibbles are unpacked with a broadcast load and per-lane shifts, and a block's fp16 scale and
 * min are converted together from memory and multiplied by the activation's scale and sum in one
 * vector (lane 0: d * x.d, lane 1: m * x.s).
 * ------------------------------------------------------------------------------------- */

#define ROW_BLOCK 4
#define PREFETCH_CALLS 3

/* 32 nibbles of a block as bytes 0..15 in element order, without a lane insert. */
VNNI_TARGET static inline __m256i rows_unpack_nibbles(const uint8_t *qs) {
    __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
}

/* The first two fp16 values at p (a block's d, and Q4_1's m) as floats in lanes 0 and 1. */
VNNI_TARGET static inline __m128 rows_scales(const void *p) { return _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p)); }

#define ROWS_Q4_1_STEP(R)                                                                                             \
    do {                                                                                                              \
        const block_q4_1 *a = (const block_q4_1 *)(w + (R) * row_bytes) + b;                                         \
        __m128 sm = _mm_mul_ps(rows_scales(a), xds);                                                                  \
        __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), rows_unpack_nibbles(a->qs), xq);                      \
        acc##R = _mm256_fmadd_ps(_mm256_broadcastss_ps(sm), _mm256_cvtepi32_ps(p), acc##R);                           \
        mins##R = _mm_add_ps(mins##R, sm);                                                                            \
    } while (0)

VNNI_TARGET static void rows_q4_1_vnni(const uint8_t *w, uint64_t row_bytes, const sov_q8_block *x, uint64_t nb, float *y) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    __m128 mins0 = _mm_setzero_ps(), mins1 = mins0, mins2 = mins0, mins3 = mins0;  /* lane 1 */
    /* the four rows three calls on, a share per block, so that they are in cache when that call
     * starts: one call's work is shorter than the wait for memory (the next call's rows took a
     * quarter more time per decoded token on one thread) */
    const uint8_t *next = w + PREFETCH_CALLS * ROW_BLOCK * row_bytes;
    uint64_t ahead = (ROW_BLOCK * row_bytes + nb - 1) / nb;
    for (uint64_t b = 0; b < nb; b++) {
        _mm_prefetch((const char *)next + b * ahead, _MM_HINT_T0);
        _mm_prefetch((const char *)next + b * ahead + 64, _MM_HINT_T0);
        if (ahead > 128) _mm_prefetch((const char *)next + b * ahead + 128, _MM_HINT_T0);
        __m256i xq = _mm256_loadu_si256((const __m256i *)x[b].q);
        __m128 xds = _mm_castpd_ps(_mm_load_sd((const double *)(const void *)&x[b].d));  /* d, s (adjacent) */
        ROWS_Q4_1_STEP(0);
        ROWS_Q4_1_STEP(1);
        ROWS_Q4_1_STEP(2);
        ROWS_Q4_1_STEP(3);
    }
    y[0] = hsum_avx2(acc0) + _mm_cvtss_f32(_mm_movehdup_ps(mins0));
    y[1] = hsum_avx2(acc1) + _mm_cvtss_f32(_mm_movehdup_ps(mins1));
    y[2] = hsum_avx2(acc2) + _mm_cvtss_f32(_mm_movehdup_ps(mins2));
    y[3] = hsum_avx2(acc3) + _mm_cvtss_f32(_mm_movehdup_ps(mins3));
}

#define ROWS_Q8_0_STEP(R)                                                                                             \
    do {                                                                                                              \
        const block_q8_0 *a = (const block_q8_0 *)(w + (R) * row_bytes) + b;                                         \
        __m256i wq = _mm256_loadu_si256((const __m256i *)a->qs);                                                     \
        __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));  \
        acc##R = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_mul_ss(rows_scales(a), xd)), _mm256_cvtepi32_ps(p), acc##R); \
    } while (0)

VNNI_TARGET static void rows_q8_0_vnni(const uint8_t *w, uint64_t row_bytes, const sov_q8_block *x, uint64_t nb, float *y) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    /* the four rows three calls on, a share per block, so that they are in cache when that call
     * starts: one call's work is shorter than the wait for memory (the next call's rows took a
     * quarter more time per decoded token on one thread) */
    const uint8_t *next = w + PREFETCH_CALLS * ROW_BLOCK * row_bytes;
    uint64_t ahead = (ROW_BLOCK * row_bytes + nb - 1) / nb;
    for (uint64_t b = 0; b < nb; b++) {
        _mm_prefetch((const char *)next + b * ahead, _MM_HINT_T0);
        _mm_prefetch((const char *)next + b * ahead + 64, _MM_HINT_T0);
        if (ahead > 128) _mm_prefetch((const char *)next + b * ahead + 128, _MM_HINT_T0);
        __m256i xq = _mm256_loadu_si256((const __m256i *)x[b].q);
        __m128 xd = _mm_load_ss(&x[b].d);
        ROWS_Q8_0_STEP(0);
        ROWS_Q8_0_STEP(1);
        ROWS_Q8_0_STEP(2);
        ROWS_Q8_0_STEP(3);
    }
    y[0] = hsum_avx2(acc0);
    y[1] = hsum_avx2(acc1);
    y[2] = hsum_avx2(acc2);
    y[3] = hsum_avx2(acc3);
}
#endif

/* ---------------------------------------------------------------------------------------
 * Attention, SwiGLU and the RMS norm
 *
 * They give the bits of the code they replace, which did one dot_f32/axpy_f32 call per position
 * and head, libm's expf per score, a scalar SwiGLU and norm: the forward pass stays bit-identical, and
 * with it the agreement with the references (8-bit activations turn any rounding difference into
 * logit differences of up to a unit or so somewhere in a long run). Every kernel set therefore
 * gives the same bits too, as the matrix kernels do. exp stays libm's: a polynomial of 1-2 ulp
 * changed the logits by up to 1.2 and took the largest difference to llama.cpp past the
 * agreement test's bound.
 * ------------------------------------------------------------------------------------- */

static void attention_scalar(const float *q, const float *keys, const float *values, uint64_t stride, uint32_t hd, int32_t n_pos,
                             float scale, float *scores, float *out) {
    float max = -INFINITY;
    for (int32_t p = 0; p < n_pos; p++) {
        scores[p] = dot_f32_scalar(q, keys + (uint64_t)p * stride, hd) * scale;
        if (scores[p] > max) max = scores[p];
    }
    float sum = 0.0f;
    for (int32_t p = 0; p < n_pos; p++) {
        scores[p] = expf(scores[p] - max);
        sum += scores[p];
    }
    memset(out, 0, hd * sizeof(float));
    for (int32_t p = 0; p < n_pos; p++) {
        const float *v = values + (uint64_t)p * stride, w = scores[p] / sum;
        for (uint32_t d = 0; d < hd; d++) out[d] = fmaf(w, v[d], out[d]);
    }
}

/* SwiGLU in chunks: libm's expf for a chunk, then the division and product, which the SIMD kernel
 * takes eight at a time (IEEE division and multiplication round the same in any width). */
#define SWIGLU_CHUNK 64

static void swiglu_scalar(float *g, const float *u, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* RMS norm as llama.cpp computes it (the sum of squares in double), after adding the residual:
 * x += add (when not NULL), out = w * (x * r) with r = 1 / sqrt(mean(x^2) + eps). The squares are
 * summed in eight lanes (element i in lane i % 8, as two vectors of four doubles) reduced as
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), then the elements past the last eight. That
 * order differs from the old sequential sum by double rounding only, which changes the float r
 * with a probability of about 1e-9 per row. */
static double sum_squares_tail(const float *x, uint64_t i, uint64_t n, double ss) {
    for (; i < n; i++) ss += (double)x[i] * x[i];
    return ss;
}

static void add_rms_norm_scalar(float *x, const float *add, const float *w, float *out, uint64_t n, float eps) {
    if (add)
        for (uint64_t i = 0; i < n; i++) x[i] += add[i];
    double l[8] = {0};
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) l[j] += (double)x[i + j] * x[i + j];
    double ss = sum_squares_tail(x, i, n, ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])));
    float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

#ifdef SOV_X86
/* The attention kernel's arrays of accumulators live in registers only once their loops are
 * unrolled, which -O2 does not do by itself. */
#define UNROLL _Pragma("GCC unroll 8")

/* hd a multiple of 16. Four keys at a time, each score summed exactly as dot_f32_avx2 sums one
 * (two accumulators, then hsum_avx2's order, four keys reduced together); the exponentials and
 * their sum in order; the weighted values 64 (or 16) dimensions at a time, held in registers over
 * all positions, one multiply-add per element and position as the old axpy did. */
AVX2_TARGET static void attention_avx2(const float *q, const float *keys, const float *values, uint64_t stride, uint32_t hd, int32_t n_pos,
                                       float scale, float *scores, float *out) {
    float max = -INFINITY;
    int32_t p = 0;
    for (; p + 4 <= n_pos; p += 4) {
        const float *k = keys + (uint64_t)p * stride;
        __m256 acc0[4], acc1[4];
        UNROLL for (int j = 0; j < 4; j++) acc0[j] = acc1[j] = _mm256_setzero_ps();
        for (uint32_t d = 0; d < hd; d += 16) {
            __m256 q0 = _mm256_loadu_ps(q + d), q1 = _mm256_loadu_ps(q + d + 8);
            UNROLL for (int j = 0; j < 4; j++) {
                acc0[j] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k + (uint64_t)j * stride + d), acc0[j]);
                acc1[j] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(k + (uint64_t)j * stride + d + 8), acc1[j]);
            }
        }
        UNROLL for (int j = 0; j < 4; j++) acc0[j] = _mm256_add_ps(acc0[j], acc1[j]);
        _mm_storeu_ps(scores + p, hsum4_avx2(acc0));
    }
    for (; p < n_pos; p++) scores[p] = dot_f32_avx2(q, keys + (uint64_t)p * stride, hd);
    /* max_ps(s, m) is s > m ? s : m, the scalar kernel's comparison (libm's fmaxf is a call) */
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (p = 0; p + 8 <= n_pos; p += 8) {
        __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(scores + p), vscale);
        _mm256_storeu_ps(scores + p, sc);
        vmax = _mm256_max_ps(sc, vmax);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    for (int j = 0; j < 8; j++)
        if (lanes[j] > max) max = lanes[j];
    for (; p < n_pos; p++) {
        scores[p] *= scale;
        if (scores[p] > max) max = scores[p];
    }
    float sum = 0.0f;
    for (p = 0; p < n_pos; p++) {
        scores[p] = expf(scores[p] - max);
        sum += scores[p];
    }
    const __m256 vsum = _mm256_set1_ps(sum);
    for (p = 0; p + 8 <= n_pos; p += 8) _mm256_storeu_ps(scores + p, _mm256_div_ps(_mm256_loadu_ps(scores + p), vsum));
    for (; p < n_pos; p++) scores[p] /= sum;
    uint32_t d = 0;
    for (; d + 64 <= hd; d += 64) {
        __m256 acc[8];
        UNROLL for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
        for (p = 0; p < n_pos; p++) {
            const float *v = values + (uint64_t)p * stride + d;
            __m256 w = _mm256_broadcast_ss(scores + p);
            UNROLL for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * j), acc[j]);
        }
        UNROLL for (int j = 0; j < 8; j++) _mm256_storeu_ps(out + d + 8 * j, acc[j]);
    }
    for (; d < hd; d += 16) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (p = 0; p < n_pos; p++) {
            const float *v = values + (uint64_t)p * stride + d;
            __m256 w = _mm256_broadcast_ss(scores + p);
            acc0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v), acc0);
            acc1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8), acc1);
        }
        _mm256_storeu_ps(out + d, acc0);
        _mm256_storeu_ps(out + d + 8, acc1);
    }
}

AVX2_TARGET static void swiglu_avx2(float *g, const float *u, uint64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    float e[SWIGLU_CHUNK];
    uint64_t i = 0;
    for (; i + SWIGLU_CHUNK <= n; i += SWIGLU_CHUNK) {
        for (int k = 0; k < SWIGLU_CHUNK; k++) e[k] = expf(-g[i + k]);
        for (int k = 0; k < SWIGLU_CHUNK; k += 8) {
            __m256 den = _mm256_add_ps(one, _mm256_loadu_ps(e + k));
            _mm256_storeu_ps(g + i + k, _mm256_mul_ps(_mm256_div_ps(_mm256_loadu_ps(g + i + k), den), _mm256_loadu_ps(u + i + k)));
        }
    }
    swiglu_scalar(g + i, u + i, n - i);
}

AVX2_TARGET static void add_rms_norm_avx2(float *x, const float *add, const float *w, float *out, uint64_t n, float eps) {
    uint64_t i = 0;
    if (add) {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(add + i)));
        for (; i < n; i++) x[i] += add[i];
    }
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        acc0 = _mm256_add_pd(acc0, _mm256_mul_pd(lo, lo));
        acc1 = _mm256_add_pd(acc1, _mm256_mul_pd(hi, hi));
    }
    __m256d t = _mm256_add_pd(acc0, acc1);
    __m128d u = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    double ss = sum_squares_tail(x, i, n, _mm_cvtsd_f64(_mm_add_sd(u, _mm_unpackhi_pd(u, u))));
    float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    __m256 vr = _mm256_set1_ps(r);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), vr)));
    for (; i < n; i++) out[i] = w[i] * (x[i] * r);
}

#endif

void sov_attention(sov_isa isa, const float *q, const float *keys, const float *values, uint64_t stride, uint32_t hd, int32_t n_pos,
                   float scale, float *scores, float *out) {
#ifdef SOV_X86
    if (isa != SOV_ISA_SCALAR && hd % 16 == 0) {
        attention_avx2(q, keys, values, stride, hd, n_pos, scale, scores, out);
        return;
    }
#endif
    (void)isa;
    attention_scalar(q, keys, values, stride, hd, n_pos, scale, scores, out);
}

void sov_swiglu(sov_isa isa, float *g, const float *u, uint64_t n) {
#ifdef SOV_X86
    if (isa != SOV_ISA_SCALAR) {
        swiglu_avx2(g, u, n);
        return;
    }
#endif
    (void)isa;
    swiglu_scalar(g, u, n);
}

void sov_add_rms_norm(sov_isa isa, float *x, const float *add, const float *w, float *out, uint64_t n, float eps) {
#ifdef SOV_X86
    if (isa != SOV_ISA_SCALAR) {
        add_rms_norm_avx2(x, add, w, out, n, eps);
        return;
    }
#endif
    (void)isa;
    add_rms_norm_scalar(x, add, w, out, n, eps);
}

/* ---------------------------------------------------------------------------------------
 * Matrix multiplication over a range of weight rows
 * ------------------------------------------------------------------------------------- */

typedef float (*dot_float_fn)(const void *w, const float *x, uint64_t n);
typedef float (*dot_q8_fn)(const void *w, const sov_q8_block *x, uint64_t nb);
typedef float (*dot_q8k_fn)(const void *w, const sov_q8k_block *x, uint64_t nb);

static dot_float_fn pick_float_dot(sov_isa isa, uint32_t type) {
#ifdef SOV_X86
    if (isa != SOV_ISA_SCALAR) {
        switch (type) {
        case SOV_TYPE_F32: return dot_f32_avx2;
        case SOV_TYPE_F16: return dot_f16_avx2;
        case SOV_TYPE_BF16: return dot_bf16_avx2;
        default: return NULL;
        }
    }
#endif
    (void)isa;
    switch (type) {
    case SOV_TYPE_F32: return dot_f32_scalar;
    case SOV_TYPE_F16: return dot_f16_scalar;
    case SOV_TYPE_BF16: return dot_bf16_scalar;
    default: return NULL;
    }
}

static dot_q8_fn pick_q8_dot(sov_isa isa, uint32_t type) {
#ifdef SOV_X86
    if (isa == SOV_ISA_AVX512) {
        switch (type) {
        case SOV_TYPE_Q4_0: return dot_q4_0_vnni;
        case SOV_TYPE_Q4_1: return dot_q4_1_vnni;
        case SOV_TYPE_Q5_0: return dot_q5_0_vnni;
        case SOV_TYPE_Q5_1: return dot_q5_1_vnni;
        case SOV_TYPE_Q8_0: return dot_q8_0_vnni;
        default: return NULL;
        }
    }
    if (isa == SOV_ISA_AVX2) {
        switch (type) {
        case SOV_TYPE_Q4_0: return dot_q4_0_avx2;
        case SOV_TYPE_Q4_1: return dot_q4_1_avx2;
        case SOV_TYPE_Q5_0: return dot_q5_0_avx2;
        case SOV_TYPE_Q5_1: return dot_q5_1_avx2;
        case SOV_TYPE_Q8_0: return dot_q8_0_avx2;
        default: return NULL;
        }
    }
#endif
    (void)isa;
    switch (type) {
    case SOV_TYPE_Q4_0: return dot_q4_0_scalar;
    case SOV_TYPE_Q4_1: return dot_q4_1_scalar;
    case SOV_TYPE_Q5_0: return dot_q5_0_scalar;
    case SOV_TYPE_Q5_1: return dot_q5_1_scalar;
    case SOV_TYPE_Q8_0: return dot_q8_0_scalar;
    default: return NULL;
    }
}

static dot_q8k_fn pick_q8k_dot(sov_isa isa, uint32_t type) {
#ifdef SOV_X86
    if (isa == SOV_ISA_AVX512) {
        switch (type) {
        case SOV_TYPE_Q4_K: return dot_q4_k_vnni;
        case SOV_TYPE_Q5_K: return dot_q5_k_vnni;
        case SOV_TYPE_Q6_K: return dot_q6_k_vnni;
        default: return NULL;
        }
    }
    if (isa == SOV_ISA_AVX2) {
        switch (type) {
        case SOV_TYPE_Q4_K: return dot_q4_k_avx2;
        case SOV_TYPE_Q5_K: return dot_q5_k_avx2;
        case SOV_TYPE_Q6_K: return dot_q6_k_avx2;
        default: return NULL;
        }
    }
#endif
    (void)isa;
    switch (type) {
    case SOV_TYPE_Q4_K: return dot_q4_k_scalar;
    case SOV_TYPE_Q5_K: return dot_q5_k_scalar;
    case SOV_TYPE_Q6_K: return dot_q6_k_scalar;
    default: return NULL;
    }
}

/* Tokens are taken in tiles so that a tile of activations stays in L1 while the weight rows
 * of a range stream past it. */
#define TOKEN_TILE 16

void sov_matmul_rows(sov_isa isa, uint32_t wtype, const void *w, uint64_t cols, int64_t r0, int64_t r1,
                     const float *x, const void *xq_any, int64_t n_tok, float *y, int64_t ldy) {
    uint64_t row_bytes = cols / sov_type_block_elems(wtype) * sov_type_block_bytes(wtype);
    const uint8_t *wb = w;
    if (sov_type_uses_q8k(wtype)) {
        dot_q8k_fn dot = pick_q8k_dot(isa, wtype);
        const sov_q8k_block *xq = xq_any;
        uint64_t nb = cols / QK_K;
        for (int64_t t0 = 0; t0 < n_tok; t0 += TOKEN_TILE) {
            int64_t t1 = t0 + TOKEN_TILE < n_tok ? t0 + TOKEN_TILE : n_tok;
            for (int64_t r = r0; r < r1; r++) {
                const void *row = wb + (uint64_t)r * row_bytes;
                for (int64_t t = t0; t < t1; t++) y[t * ldy + r] = dot(row, xq + (uint64_t)t * nb, nb);
            }
        }
        return;
    }
    if (sov_type_uses_q8(wtype)) {
        const sov_q8_block *xq = xq_any;
        dot_q8_fn dot = pick_q8_dot(isa, wtype);
        uint64_t nb = cols / QK;
        int64_t t_done = 0;
#ifdef SOV_X86
        /* whole tiles of tokens go through the register-blocked kernel, rows left over from the
         * row tiles through the one-pair kernel */
        void (*tile)(const uint8_t *, uint64_t, const sov_q8_block *, const float *, uint64_t, float *, int64_t) = NULL;
        if (isa == SOV_ISA_AVX512 && wtype == SOV_TYPE_Q4_1) tile = tile_q4_1_vnni;
        if (isa == SOV_ISA_AVX512 && wtype == SOV_TYPE_Q8_0) tile = tile_q8_0_vnni;
        /* the tiles' scales: on the stack up to 64 blocks (2048 columns) */
        float stack_sc[TILE_SCALES * 64], *sc = stack_sc;
        if (tile && n_tok >= TILE_TOKENS && nb > 64 && !(sc = malloc(nb * TILE_SCALES * sizeof(float)))) tile = NULL;
        if (tile) {
            for (; t_done + TILE_TOKENS <= n_tok; t_done += TILE_TOKENS) {
                const sov_q8_block *xt = xq + (uint64_t)t_done * nb;
                float *yt = y + t_done * ldy;
                tile_scales(xt, nb, sc);
                int64_t r = r0;
                for (; r + TILE_ROWS <= r1; r += TILE_ROWS) tile(wb + (uint64_t)r * row_bytes, row_bytes, xt, sc, nb, yt + r, ldy);
                for (; r < r1; r++)
                    for (int64_t t = 0; t < TILE_TOKENS; t++) yt[t * ldy + r] = dot(wb + (uint64_t)r * row_bytes, xt + (uint64_t)t * nb, nb);
            }
        }
        if (sc != stack_sc) free(sc);
        /* the tokens left, few at decode, four rows at a time */
        void (*rows)(const uint8_t *, uint64_t, const sov_q8_block *, uint64_t, float *) = NULL;
        if (isa == SOV_ISA_AVX512 && wtype == SOV_TYPE_Q4_1) rows = rows_q4_1_vnni;
        if (isa == SOV_ISA_AVX512 && wtype == SOV_TYPE_Q8_0) rows = rows_q8_0_vnni;
        if (rows && t_done < n_tok) {
            float tmp[ROW_BLOCK];
            int64_t r = r0;
            for (; r + ROW_BLOCK <= r1; r += ROW_BLOCK)
                for (int64_t t = t_done; t < n_tok; t++) {
                    rows(wb + (uint64_t)r * row_bytes, row_bytes, xq + (uint64_t)t * nb, nb, tmp);
                    for (int k = 0; k < ROW_BLOCK; k++) y[t * ldy + r + k] = tmp[k];
                }
            for (; r < r1; r++)
                for (int64_t t = t_done; t < n_tok; t++) y[t * ldy + r] = dot(wb + (uint64_t)r * row_bytes, xq + (uint64_t)t * nb, nb);
            return;
        }
#endif
        for (int64_t t0 = t_done; t0 < n_tok; t0 += TOKEN_TILE) {
            int64_t t1 = t0 + TOKEN_TILE < n_tok ? t0 + TOKEN_TILE : n_tok;
            for (int64_t r = r0; r < r1; r++) {
                const void *row = wb + (uint64_t)r * row_bytes;
                for (int64_t t = t0; t < t1; t++) y[t * ldy + r] = dot(row, xq + (uint64_t)t * nb, nb);
            }
        }
        return;
    }
    dot_float_fn dot = pick_float_dot(isa, wtype);
    for (int64_t t0 = 0; t0 < n_tok; t0 += TOKEN_TILE) {
        int64_t t1 = t0 + TOKEN_TILE < n_tok ? t0 + TOKEN_TILE : n_tok;
        for (int64_t r = r0; r < r1; r++) {
            const void *row = wb + (uint64_t)r * row_bytes;
            for (int64_t t = t0; t < t1; t++) y[t * ldy + r] = dot(row, x + (uint64_t)t * cols, cols);
        }
    }
}
