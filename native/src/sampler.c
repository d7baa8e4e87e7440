/* sampler.c: picking the next token. The chain is llama.cpp's: repetition penalty, top-k,
 * top-p, min-p (all on the untempered distribution), then temperature and a seeded draw. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * State and random numbers (xoshiro256**, seeded through splitmix64)
 * ------------------------------------------------------------------------------------- */

typedef struct candidate {
    float logit;
    int32_t id;
} candidate;

struct sov_sampler {
    sov_sampler_params params;
    int32_t n_vocab;
    uint64_t rng[4];
    candidate *cands;
    float *penalised;
};

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(uint64_t *s) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

/* ---------------------------------------------------------------------------------------
 * Lifetime
 * ------------------------------------------------------------------------------------- */

sov_sampler_params sov_sampler_default_params(void) {
    return (sov_sampler_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f, .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0};
}

sov_status sov_sampler_init(const sov_sampler_params *params, int32_t n_vocab, sov_sampler **out) {
    if (!out) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_sampler_init: NULL argument");
    *out = NULL;
    sov_sampler_params p = params ? *params : sov_sampler_default_params();
    if (n_vocab <= 0) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "vocabulary size %d", n_vocab);
    if (!isfinite(p.temperature) || !(p.top_p >= 0.0f && p.top_p <= 1.0f) || !(p.min_p >= 0.0f && p.min_p <= 1.0f) ||
        !(p.repeat_penalty > 0.0f && isfinite(p.repeat_penalty)) || p.repeat_last_n < 0)
        return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sampling parameters out of range (temperature %g, top_p %g, min_p %g, repeat_penalty %g)",
                        (double)p.temperature, (double)p.top_p, (double)p.min_p, (double)p.repeat_penalty);
    sov_sampler *s = calloc(1, sizeof *s);
    if (!s) return sov_fail(SOV_ERR_NOMEM, "sampler");
    s->params = p;
    s->n_vocab = n_vocab;
    s->cands = malloc((size_t)n_vocab * sizeof(candidate));
    s->penalised = malloc((size_t)n_vocab * sizeof(float));
    if (!s->cands || !s->penalised) {
        sov_sampler_free(s);
        return sov_fail(SOV_ERR_NOMEM, "sampler buffers");
    }
    uint64_t seed = p.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&seed);
    *out = s;
    return SOV_OK;
}

void sov_sampler_free(sov_sampler *s) {
    if (!s) return;
    free(s->cands);
    free(s->penalised);
    free(s);
}

/* ---------------------------------------------------------------------------------------
 * Sampling
 * ------------------------------------------------------------------------------------- */

static int by_logit_desc(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Applies the penalty to a copy of the logits, to each distinct recent token once. */
static const float *penalise(sov_sampler *s, const float *logits, const int32_t *history, size_t n_history) {
    float pen = s->params.repeat_penalty;
    if (pen == 1.0f || !history || n_history == 0 || s->params.repeat_last_n == 0) return logits;
    memcpy(s->penalised, logits, (size_t)s->n_vocab * sizeof(float));
    size_t from = n_history > (size_t)s->params.repeat_last_n ? n_history - (size_t)s->params.repeat_last_n : 0;
    for (size_t i = from; i < n_history; i++) {
        int32_t t = history[i];
        if (t < 0 || t >= s->n_vocab || s->penalised[t] != logits[t]) continue; /* done once already */
        s->penalised[t] = logits[t] > 0.0f ? logits[t] / pen : logits[t] * pen;
    }
    return s->penalised;
}

sov_status sov_sampler_sample(sov_sampler *s, const float *logits, const int32_t *history, size_t n_history, int32_t *token) {
    if (!s || !logits || !token) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_sampler_sample: NULL argument");
    const float *l = penalise(s, logits, history, n_history);
    int32_t best = 0;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        if (isnan(l[i])) return sov_fail(SOV_ERR_NUMERIC, "logit %d is NaN", i);
        if (l[i] > l[best]) best = i;
    }
    const sov_sampler_params *p = &s->params;
    if (p->temperature <= 0.0f || p->top_k == 1) {
        *token = best;
        return SOV_OK;
    }
    int32_t n = s->n_vocab;
    for (int32_t i = 0; i < n; i++) s->cands[i] = (candidate){l[i], i};
    bool sorted = false;
    if (p->top_k > 0 && p->top_k < n) {
        qsort(s->cands, (size_t)n, sizeof(candidate), by_logit_desc);
        sorted = true;
        n = p->top_k;
    }
    float max = l[best];
    if (p->top_p < 1.0f) {
        if (!sorted) qsort(s->cands, (size_t)n, sizeof(candidate), by_logit_desc);
        sorted = true;
        double total = 0.0, cum = 0.0;
        for (int32_t i = 0; i < n; i++) total += exp((double)s->cands[i].logit - max);
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            cum += exp((double)s->cands[i].logit - max) / total;
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        /* p(i) >= min_p * p(max)  <=>  logit(i) >= max + log(min_p) */
        float threshold = max + logf(p->min_p);
        int32_t kept = 0;
        for (int32_t i = 0; i < n; i++)
            if (s->cands[i].logit >= threshold) s->cands[kept++] = s->cands[i];
        n = kept;
    }
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) total += exp(((double)s->cands[i].logit - max) / p->temperature);
    double target = next_unit(s->rng) * total, cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += exp(((double)s->cands[i].logit - max) / p->temperature);
        if (cum > target) {
            *token = s->cands[i].id;
            return SOV_OK;
        }
    }
    *token = s->cands[n - 1].id;
    return SOV_OK;
}
