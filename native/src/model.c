/* model.c: Llama- and Qwen2-family decoders: loading and checking weights, the KV cache of
 * many sequences, and the batched forward pass. */
#include "internal.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Data structures
 * ------------------------------------------------------------------------------------- */

#define MAX_LAYERS 4096u
#define MAX_DIM (1u << 20)

typedef struct weight {
    uint32_t type;
    const void *data;
    uint64_t cols, rows;    /* cols is GGUF's dims[0], the contiguous one */
} weight;

typedef struct layer {
    float *attn_norm, *ffn_norm;
    float *bq, *bk, *bv;    /* NULL when the file has no attention biases */
    weight wq, wk, wv, wo, gate, up, down;
} layer;

struct sov_model {
    sov_gguf *gguf;
    sov_model_info info;
    int rope_neox;          /* 1: rotate pairs (i, i + n_rot/2); 0: adjacent pairs (2i, 2i+1) */
    sov_isa isa;
    weight tok_embd, output;
    float *output_norm;
    float *rope_inv_freq;   /* n_rot / 2 */
    layer *layers;
    sov_pool *pool;
    pthread_mutex_t compute_lock;   /* one forward pass at a time uses the pool */
};

typedef struct seq_cache {
    uint32_t len, cap;
    /* [n_layer][2][n_head_kv][cap][head_dim]: keys, then values, per layer, head by head, so that
     * attention reads one head's positions as one contiguous stream */
    float *kv;
} seq_cache;

struct sov_context {
    sov_model *model;
    uint32_t n_ctx, n_seq_max, n_ubatch;
    seq_cache *seqs;
    /* scratch for one chunk of n_ubatch tokens */
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up, *rope_cos, *rope_sin, *scores;
    sov_q8_block *xq;
    sov_q8k_block *xqk;
    int32_t *pos;
};

/* ---------------------------------------------------------------------------------------
 * Metadata helpers
 * ------------------------------------------------------------------------------------- */

static sov_status meta_u32(const sov_gguf *g, const char *key, uint32_t *out, bool required) {
    uint64_t i;
    if (sov_gguf_kv_find(g, key, &i) != SOV_OK) return required ? sov_fail(SOV_ERR_FORMAT, "metadata '%s' is missing", key) : SOV_ERR_NOT_FOUND;
    sov_gguf_value v;
    sov_gguf_type t;
    sov_gguf_kv_type(g, i, &t, NULL, NULL);
    if (t == SOV_GGUF_ARRAY || t == SOV_GGUF_STRING || t == SOV_GGUF_FLOAT32 || t == SOV_GGUF_FLOAT64 || t == SOV_GGUF_BOOL)
        return sov_fail(SOV_ERR_FORMAT, "metadata '%s' is not an integer", key);
    sov_gguf_kv_value(g, i, 0, &v);
    bool is_signed = t == SOV_GGUF_INT8 || t == SOV_GGUF_INT16 || t == SOV_GGUF_INT32 || t == SOV_GGUF_INT64;
    if (is_signed ? (v.as.i64 < 0 || v.as.i64 > (int64_t)UINT32_MAX) : v.as.u64 > UINT32_MAX)
        return sov_fail(SOV_ERR_FORMAT, "metadata '%s' is out of range", key);
    *out = is_signed ? (uint32_t)v.as.i64 : (uint32_t)v.as.u64;
    return SOV_OK;
}

static sov_status meta_f32(const sov_gguf *g, const char *key, float *out, bool required) {
    uint64_t i;
    if (sov_gguf_kv_find(g, key, &i) != SOV_OK) return required ? sov_fail(SOV_ERR_FORMAT, "metadata '%s' is missing", key) : SOV_ERR_NOT_FOUND;
    sov_gguf_type t;
    sov_gguf_kv_type(g, i, &t, NULL, NULL);
    if (t != SOV_GGUF_FLOAT32 && t != SOV_GGUF_FLOAT64) return sov_fail(SOV_ERR_FORMAT, "metadata '%s' is not a float", key);
    sov_gguf_value v;
    sov_gguf_kv_value(g, i, 0, &v);
    if (!isfinite(v.as.f64)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s' is not finite", key);
    *out = (float)v.as.f64;
    return SOV_OK;
}

/* A short, NUL-free string value (an architecture or a type name) copied into out. */
static sov_status meta_name(const sov_gguf *g, const char *key, char *out, size_t size, bool required) {
    uint64_t i;
    sov_gguf_type t;
    if (sov_gguf_kv_find(g, key, &i) != SOV_OK) return required ? sov_fail(SOV_ERR_FORMAT, "metadata '%s' is missing", key) : SOV_ERR_NOT_FOUND;
    sov_gguf_kv_type(g, i, &t, NULL, NULL);
    if (t != SOV_GGUF_STRING) return sov_fail(SOV_ERR_FORMAT, "metadata '%s' is not a string", key);
    sov_gguf_value v;
    sov_gguf_kv_value(g, i, 0, &v);
    if (v.as.str.size >= size || memchr(v.as.str.data, '\0', (size_t)v.as.str.size))
        return sov_fail(SOV_ERR_UNSUPPORTED, "metadata '%s' is a name of %llu bytes", key, (unsigned long long)v.as.str.size);
    memcpy(out, v.as.str.data, (size_t)v.as.str.size);
    out[v.as.str.size] = '\0';
    return SOV_OK;
}

/* ---------------------------------------------------------------------------------------
 * Loading tensors
 * ------------------------------------------------------------------------------------- */

static sov_status find_tensor(const sov_model *m, const char *name, sov_gguf_tensor_info *t, bool required) {
    if (sov_gguf_tensor_find(m->gguf, name, t) != SOV_OK)
        return required ? sov_fail(SOV_ERR_FORMAT, "tensor '%s' is missing", name) : SOV_ERR_NOT_FOUND;
    if (!sov_tensor_type_name(t->type)) return sov_fail(SOV_ERR_UNSUPPORTED, "tensor '%s' has type %u, which this engine does not support", name, t->type);
    if (!sov_tensor_all_finite(t->type, t->data, t->size / sov_type_block_bytes(t->type) * sov_type_block_elems(t->type)))
        return sov_fail(SOV_ERR_NUMERIC, "tensor '%s' contains NaN or infinite values", name);
    return SOV_OK;
}

static sov_status load_matrix(const sov_model *m, const char *name, uint64_t cols, uint64_t rows, weight *w, bool required) {
    sov_gguf_tensor_info t;
    sov_status st = find_tensor(m, name, &t, required);
    if (st != SOV_OK) return st;
    if (t.n_dims != 2 || t.dims[0] != cols || t.dims[1] != rows)
        return sov_fail(SOV_ERR_FORMAT, "tensor '%s' is %llux%llu (%u dims), expected %llux%llu", name, (unsigned long long)t.dims[0],
                        (unsigned long long)t.dims[1], t.n_dims, (unsigned long long)cols, (unsigned long long)rows);
    *w = (weight){t.type, t.data, cols, rows};
    return SOV_OK;
}

/* Small vectors (norms, biases) are dequantised once into float32. */
static sov_status load_vector(const sov_model *m, const char *name, uint64_t n, float **out, bool required) {
    sov_gguf_tensor_info t;
    sov_status st = find_tensor(m, name, &t, required);
    if (st != SOV_OK) return st;
    if (t.n_dims != 1 || t.dims[0] != n) return sov_fail(SOV_ERR_FORMAT, "tensor '%s' has %llu elements, expected %llu", name, (unsigned long long)t.dims[0], (unsigned long long)n);
    *out = malloc(n * sizeof(float));
    if (!*out) return sov_fail(SOV_ERR_NOMEM, "tensor '%s'", name);
    return sov_tensor_dequantize(t.type, t.data, *out, n);
}

static sov_status load_layer(sov_model *m, uint32_t il) {
    const sov_model_info *in = &m->info;
    layer *l = &m->layers[il];
    uint64_t e = in->n_embd, qd = (uint64_t)in->n_head * in->head_dim, kvd = (uint64_t)in->n_head_kv * in->head_dim;
    char name[96];
    sov_status st;
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%u." suffix, il), name)
    if ((st = load_vector(m, NAME("attn_norm.weight"), e, &l->attn_norm, true)) != SOV_OK) return st;
    if ((st = load_vector(m, NAME("ffn_norm.weight"), e, &l->ffn_norm, true)) != SOV_OK) return st;
    if ((st = load_matrix(m, NAME("attn_q.weight"), e, qd, &l->wq, true)) != SOV_OK) return st;
    if ((st = load_matrix(m, NAME("attn_k.weight"), e, kvd, &l->wk, true)) != SOV_OK) return st;
    if ((st = load_matrix(m, NAME("attn_v.weight"), e, kvd, &l->wv, true)) != SOV_OK) return st;
    if ((st = load_matrix(m, NAME("attn_output.weight"), qd, e, &l->wo, true)) != SOV_OK) return st;
    if ((st = load_matrix(m, NAME("ffn_gate.weight"), e, in->n_ff, &l->gate, true)) != SOV_OK) return st;
    if ((st = load_matrix(m, NAME("ffn_up.weight"), e, in->n_ff, &l->up, true)) != SOV_OK) return st;
    if ((st = load_matrix(m, NAME("ffn_down.weight"), in->n_ff, e, &l->down, true)) != SOV_OK) return st;
    bool need_bias = strcmp(in->architecture, "qwen2") == 0;
    st = load_vector(m, NAME("attn_q.bias"), qd, &l->bq, need_bias);
    if (st != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    st = load_vector(m, NAME("attn_k.bias"), kvd, &l->bk, need_bias);
    if (st != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    st = load_vector(m, NAME("attn_v.bias"), kvd, &l->bv, need_bias);
    if (st != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
#undef NAME
    return SOV_OK;
}

/* ---------------------------------------------------------------------------------------
 * Hyperparameters
 * ------------------------------------------------------------------------------------- */

static sov_status read_hparams(sov_model *m) {
    sov_model_info *in = &m->info;
    const sov_gguf *g = m->gguf;
    sov_status st = meta_name(g, "general.architecture", in->architecture, sizeof in->architecture, true);
    if (st != SOV_OK) return st;
    if (strcmp(in->architecture, "llama") == 0) m->rope_neox = 0;
    else if (strcmp(in->architecture, "qwen2") == 0) m->rope_neox = 1;
    else return sov_fail(SOV_ERR_UNSUPPORTED, "architecture '%s' (supported: llama, qwen2)", in->architecture);

    char key[128];
    const char *a = in->architecture;
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, a), key)
    if ((st = meta_u32(g, KEY("block_count"), &in->n_layer, true)) != SOV_OK) return st;
    if ((st = meta_u32(g, KEY("embedding_length"), &in->n_embd, true)) != SOV_OK) return st;
    if ((st = meta_u32(g, KEY("feed_forward_length"), &in->n_ff, true)) != SOV_OK) return st;
    if ((st = meta_u32(g, KEY("attention.head_count"), &in->n_head, true)) != SOV_OK) return st;
    in->n_head_kv = in->n_head;
    if ((st = meta_u32(g, KEY("attention.head_count_kv"), &in->n_head_kv, false)) != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    in->n_ctx_train = 2048;
    if ((st = meta_u32(g, KEY("context_length"), &in->n_ctx_train, false)) != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    in->rms_norm_eps = 1e-5f;
    if ((st = meta_f32(g, KEY("attention.layer_norm_rms_epsilon"), &in->rms_norm_eps, false)) != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    in->rope_freq_base = 10000.0f;
    if ((st = meta_f32(g, KEY("rope.freq_base"), &in->rope_freq_base, false)) != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    if (in->n_layer == 0 || in->n_layer > MAX_LAYERS) return sov_fail(SOV_ERR_FORMAT, "%u layers", in->n_layer);
    if (in->n_head == 0 || in->n_head_kv == 0 || in->n_head % in->n_head_kv != 0)
        return sov_fail(SOV_ERR_FORMAT, "%u attention heads cannot share %u key/value heads", in->n_head, in->n_head_kv);
    if (in->n_embd == 0 || in->n_embd > MAX_DIM || in->n_ff == 0 || in->n_ff > MAX_DIM) return sov_fail(SOV_ERR_FORMAT, "absurd width %u or feed-forward size %u", in->n_embd, in->n_ff);
    in->head_dim = in->n_embd / in->n_head;
    if ((st = meta_u32(g, KEY("attention.key_length"), &in->head_dim, false)) != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    in->n_rot = in->head_dim;
    if ((st = meta_u32(g, KEY("rope.dimension_count"), &in->n_rot, false)) != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    /* RoPE scaling as llama.cpp reads it: the type defaults to linear; the factor (or the older
     * rope.scale_linear) divides positions; "none" turns any factor off. Other types (yarn,
     * longrope) change more than positions, so running them as linear would be silently wrong. */
    char scaling[32] = "linear";
    if ((st = meta_name(g, KEY("rope.scaling.type"), scaling, sizeof scaling, false)) != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
    float factor = 0.0f;
    if ((st = meta_f32(g, KEY("rope.scaling.factor"), &factor, false)) == SOV_ERR_NOT_FOUND) st = meta_f32(g, KEY("rope.scale_linear"), &factor, false);
    if (st != SOV_OK && st != SOV_ERR_NOT_FOUND) return st;
#undef KEY
    if (strcmp(scaling, "none") != 0 && strcmp(scaling, "linear") != 0)
        return sov_fail(SOV_ERR_UNSUPPORTED, "RoPE scaling type '%s' (supported: none, linear)", scaling);
    if (factor < 0.0f || (factor > 0.0f && !isfinite(1.0f / factor))) return sov_fail(SOV_ERR_FORMAT, "RoPE scaling factor %g is out of range", (double)factor);
    /* a factor of 0 means "not set", as in llama.cpp */
    in->rope_freq_scale = strcmp(scaling, "none") == 0 || factor == 0.0f ? 1.0f : 1.0f / factor;
    if (in->head_dim == 0 || in->head_dim > 4096 || in->n_rot > in->head_dim || in->n_rot % 2 != 0)
        return sov_fail(SOV_ERR_FORMAT, "head size %u with %u rotary dimensions", in->head_dim, in->n_rot);
    if (in->n_ctx_train == 0) return sov_fail(SOV_ERR_FORMAT, "context length 0");
    if (!(in->rms_norm_eps > 0.0f) || !(in->rope_freq_base > 0.0f)) return sov_fail(SOV_ERR_FORMAT, "non-positive norm epsilon or RoPE base");

    in->bos_token = in->eos_token = -1;
    uint32_t id;
    if (meta_u32(g, "tokenizer.ggml.bos_token_id", &id, false) == SOV_OK && id <= INT32_MAX) in->bos_token = (int32_t)id;
    if (meta_u32(g, "tokenizer.ggml.eos_token_id", &id, false) == SOV_OK && id <= INT32_MAX) in->eos_token = (int32_t)id;
    return SOV_OK;
}

/* ---------------------------------------------------------------------------------------
 * Model lifetime
 * ------------------------------------------------------------------------------------- */

sov_model_params sov_model_default_params(void) {
    return (sov_model_params){.n_threads = 1, .force_scalar = -1};
}

static sov_status load_weights(sov_model *m) {
    sov_model_info *in = &m->info;
    sov_gguf_tensor_info t;
    sov_status st = find_tensor(m, "token_embd.weight", &t, true);
    if (st != SOV_OK) return st;
    if (t.n_dims != 2 || t.dims[0] != in->n_embd || t.dims[1] > INT32_MAX)
        return sov_fail(SOV_ERR_FORMAT, "token_embd.weight has rows of %llu, expected %u", (unsigned long long)t.dims[0], in->n_embd);
    in->n_vocab = (uint32_t)t.dims[1];
    m->tok_embd = (weight){t.type, t.data, t.dims[0], t.dims[1]};
    st = load_matrix(m, "output.weight", in->n_embd, in->n_vocab, &m->output, false);
    if (st == SOV_ERR_NOT_FOUND) {
        m->output = m->tok_embd;
        in->tied_output = 1;
    } else if (st != SOV_OK) {
        return st;
    }
    if ((st = load_vector(m, "output_norm.weight", in->n_embd, &m->output_norm, true)) != SOV_OK) return st;
    m->layers = calloc(in->n_layer, sizeof(layer));
    if (!m->layers) return sov_fail(SOV_ERR_NOMEM, "layer table");
    for (uint32_t il = 0; il < in->n_layer; il++) {
        if ((st = load_layer(m, il)) != SOV_OK) return st;
    }
    m->rope_inv_freq = malloc((in->n_rot / 2 + 1) * sizeof(float));
    if (!m->rope_inv_freq) return sov_fail(SOV_ERR_NOMEM, "rope table");
    for (uint32_t i = 0; i < in->n_rot / 2; i++)
        m->rope_inv_freq[i] = in->rope_freq_scale / powf(in->rope_freq_base, (float)(2 * i) / (float)in->n_rot);
    return SOV_OK;
}

sov_status sov_model_load(const char *path, const sov_model_params *params, sov_model **out) {
    if (!path || !out) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_model_load: NULL argument");
    *out = NULL;
    sov_model_params p = params ? *params : sov_model_default_params();
    sov_model *m = calloc(1, sizeof *m);
    if (!m) return sov_fail(SOV_ERR_NOMEM, "model");
    pthread_mutex_init(&m->compute_lock, NULL);
    sov_status st = sov_gguf_open(path, &m->gguf);
    if (st == SOV_OK) st = read_hparams(m);
    if (st == SOV_OK) st = load_weights(m);
    if (st == SOV_OK) st = sov_pool_init(p.n_threads, &m->pool);
    if (st != SOV_OK) {
        sov_model_free(m);
        return st;
    }
    m->isa = sov_isa_detect(p.force_scalar);
    snprintf(m->info.kernels, sizeof m->info.kernels, "%s", sov_isa_name(m->isa));
    sov_log(SOV_LOG_INFO, "loaded %s: %u layers, width %u, vocabulary %u, %s kernels, %d threads", m->info.architecture, m->info.n_layer,
            m->info.n_embd, m->info.n_vocab, m->info.kernels, p.n_threads);
    *out = m;
    return SOV_OK;
}

void sov_model_free(sov_model *m) {
    if (!m) return;
    if (m->layers) {
        for (uint32_t il = 0; il < m->info.n_layer; il++) {
            layer *l = &m->layers[il];
            free(l->attn_norm);
            free(l->ffn_norm);
            free(l->bq);
            free(l->bk);
            free(l->bv);
        }
    }
    free(m->layers);
    free(m->output_norm);
    free(m->rope_inv_freq);
    sov_pool_free(m->pool);
    sov_gguf_free(m->gguf);
    pthread_mutex_destroy(&m->compute_lock);
    free(m);
}

void sov_model_info_get(const sov_model *m, sov_model_info *out) { *out = m->info; }
const sov_gguf *sov_model_gguf(const sov_model *m) { return m->gguf; }

/* ---------------------------------------------------------------------------------------
 * Context lifetime and the KV cache
 * ------------------------------------------------------------------------------------- */

sov_context_params sov_context_default_params(void) {
    return (sov_context_params){.n_ctx = 0, .n_seq_max = 1, .n_ubatch = 256};
}

static uint64_t kv_dim(const sov_model *m) { return (uint64_t)m->info.n_head_kv * m->info.head_dim; }

static sov_status alloc_scratch(sov_context *c) {
    const sov_model_info *in = &c->model->info;
    uint64_t u = c->n_ubatch, qd = (uint64_t)in->n_head * in->head_dim, kvd = kv_dim(c->model);
    uint64_t widest = in->n_embd > in->n_ff ? in->n_embd : in->n_ff;
    if (qd > widest) widest = qd;
    c->x = malloc(u * in->n_embd * sizeof(float));
    c->xn = malloc(u * in->n_embd * sizeof(float));
    c->tmp = malloc(u * in->n_embd * sizeof(float));
    c->q = malloc(u * qd * sizeof(float));
    c->att = malloc(u * qd * sizeof(float));
    c->k = malloc(u * kvd * sizeof(float));
    c->v = malloc(u * kvd * sizeof(float));
    c->gate = malloc(u * in->n_ff * sizeof(float));
    c->up = malloc(u * in->n_ff * sizeof(float));
    c->rope_cos = malloc(u * (in->n_rot / 2 + 1) * sizeof(float));
    c->rope_sin = malloc(u * (in->n_rot / 2 + 1) * sizeof(float));
    c->scores = malloc((uint64_t)sov_pool_size(c->model->pool) * c->n_ctx * sizeof(float));
    c->xq = malloc(u * (widest / 32 + 1) * sizeof(sov_q8_block));
    c->xqk = malloc(u * (widest / 256 + 1) * sizeof(sov_q8k_block));
    c->pos = malloc(u * sizeof(int32_t));
    if (!c->x || !c->xn || !c->tmp || !c->q || !c->att || !c->k || !c->v || !c->gate || !c->up || !c->rope_cos || !c->rope_sin ||
        !c->scores || !c->xq || !c->xqk || !c->pos)
        return sov_fail(SOV_ERR_NOMEM, "scratch buffers for %u tokens", c->n_ubatch);
    return SOV_OK;
}

sov_status sov_context_init(sov_model *m, const sov_context_params *params, sov_context **out) {
    if (!m || !out) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_context_init: NULL argument");
    *out = NULL;
    sov_context_params p = params ? *params : sov_context_default_params();
    if (p.n_ctx == 0) p.n_ctx = m->info.n_ctx_train;
    if (p.n_ctx > (1u << 24)) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "context length %u is too large", p.n_ctx);
    if (p.n_seq_max == 0 || p.n_seq_max > 4096) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "n_seq_max must be 1..4096, not %u", p.n_seq_max);
    if (p.n_ubatch == 0 || p.n_ubatch > 8192) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "n_ubatch must be 1..8192, not %u", p.n_ubatch);
    sov_context *c = calloc(1, sizeof *c);
    if (!c) return sov_fail(SOV_ERR_NOMEM, "context");
    c->model = m;
    c->n_ctx = p.n_ctx;
    c->n_seq_max = p.n_seq_max;
    c->n_ubatch = p.n_ubatch;
    c->seqs = calloc(p.n_seq_max, sizeof(seq_cache));
    sov_status st = c->seqs ? alloc_scratch(c) : sov_fail(SOV_ERR_NOMEM, "sequence table");
    if (st != SOV_OK) {
        sov_context_free(c);
        return st;
    }
    *out = c;
    return SOV_OK;
}

void sov_context_free(sov_context *c) {
    if (!c) return;
    if (c->seqs) {
        for (uint32_t s = 0; s < c->n_seq_max; s++) free(c->seqs[s].kv);
    }
    free(c->seqs);
    float *bufs[] = {c->x, c->xn, c->q, c->k, c->v, c->att, c->tmp, c->gate, c->up, c->rope_cos, c->rope_sin, c->scores};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(c->xq);
    free(c->xqk);
    free(c->pos);
    free(c);
}

uint32_t sov_context_n_ctx(const sov_context *c) { return c->n_ctx; }

sov_status sov_context_seq_reset(sov_context *c, int32_t seq) {
    if (seq < 0 || (uint32_t)seq >= c->n_seq_max) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sequence id %d is not in 0..%u", seq, c->n_seq_max - 1);
    c->seqs[seq].len = 0;
    return SOV_OK;
}

sov_status sov_context_seq_truncate(sov_context *c, int32_t seq, uint32_t n_keep) {
    if (seq < 0 || (uint32_t)seq >= c->n_seq_max) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sequence id %d is not in 0..%u", seq, c->n_seq_max - 1);
    if (n_keep > c->seqs[seq].len) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sequence %d holds %u tokens, cannot keep %u", seq, c->seqs[seq].len, n_keep);
    c->seqs[seq].len = n_keep;
    return SOV_OK;
}

int32_t sov_context_seq_length(const sov_context *c, int32_t seq) {
    if (seq < 0 || (uint32_t)seq >= c->n_seq_max) return -1;
    return (int32_t)c->seqs[seq].len;
}

/* The cached keys (which 0) or values (which 1) of layer il and key/value head hk, cap positions of
 * head_dim floats. */
static float *cache_head(const sov_context *c, const seq_cache *s, uint32_t il, uint32_t which, uint32_t hk) {
    const sov_model_info *in = &c->model->info;
    return s->kv + (((uint64_t)il * 2 + which) * in->n_head_kv + hk) * s->cap * in->head_dim;
}

/* Grows a sequence's cache to hold `need` tokens (at least doubling, at most n_ctx). */
static sov_status cache_reserve(sov_context *c, seq_cache *s, uint32_t need) {
    if (need <= s->cap) return SOV_OK;
    uint32_t cap = s->cap ? s->cap : 64;
    while (cap < need) cap = cap > c->n_ctx / 2 ? c->n_ctx : cap * 2;
    if (cap > c->n_ctx) cap = c->n_ctx;
    const sov_model_info *in = &c->model->info;
    uint64_t hd = in->head_dim, n_blocks = (uint64_t)in->n_layer * 2 * in->n_head_kv;
    float *kv = malloc(n_blocks * cap * hd * sizeof(float));
    if (!kv) return sov_fail(SOV_ERR_NOMEM, "KV cache of %u tokens", cap);
    /* the (layer, keys or values, head) blocks keep their order; each grows from s->cap to cap positions */
    for (uint64_t b = 0; b < n_blocks && s->len > 0; b++) memcpy(kv + b * cap * hd, s->kv + b * s->cap * hd, (uint64_t)s->len * hd * sizeof(float));
    free(s->kv);
    s->kv = kv;
    s->cap = cap;
    return SOV_OK;
}

/* ---------------------------------------------------------------------------------------
 * Parallel jobs: up to three matrix products sharing one input, and attention
 * ------------------------------------------------------------------------------------- */

/* Work is handed out through an atomic counter in items of rows, about MATMUL_ITEMS_PER_THREAD per
 * thread and weight, each a multiple of 16 rows (of the kernels' row blocks, and of 16 floats, so
 * that threads do not share cache lines of y): a thread that another process delays holds up only
 * the item it is on, not a fixed share of the rows. Chunks of MATMUL_MANY_TOKENS tokens or more
 * (prefill) take half as many items: every item reads all the tokens' activations, and their
 * products are long enough that four items per thread still balance (prefill CPU time -2.5%). */
#define MATMUL_ITEMS_PER_THREAD 8
#define MATMUL_MANY_TOKENS 64

typedef struct matmul_job {
    const sov_context *c;
    int n;                  /* the weights whose rows make the items: gate alone with swiglu */
    const weight *w[3];
    float *y[3];
    int64_t first_item[4];  /* items of weight i are first_item[i] .. first_item[i + 1] - 1 */
    int64_t chunk[3];       /* rows per item of weight i */
    const float *x;
    const sov_q8_block *xq;
    const sov_q8k_block *xqk;
    int64_t n_tok;
    bool swiglu;            /* then y[0] = silu(y[0]) * y[1]: an item covers the same rows of both */
    atomic_llong next_item;
} matmul_job;

static void matmul_rows(const matmul_job *j, int i, int64_t r0, int64_t r1) {
    const weight *w = j->w[i];
    const void *xq = sov_type_uses_q8k(w->type) ? (const void *)j->xqk : (const void *)j->xq;
    sov_matmul_rows(j->c->model->isa, w->type, w->data, w->cols, r0, r1, j->x, xq, j->n_tok, j->y[i], (int64_t)w->rows);
}

static void matmul_worker(void *arg, int ti, int nt) {
    matmul_job *j = arg;
    for (int64_t item = atomic_fetch_add(&j->next_item, 1); item < j->first_item[j->n]; item = atomic_fetch_add(&j->next_item, 1)) {
        int i = 0;
        while (item >= j->first_item[i + 1]) i++;
        int64_t rows = (int64_t)j->w[i]->rows, r0 = (item - j->first_item[i]) * j->chunk[i];
        int64_t r1 = r0 + j->chunk[i] < rows ? r0 + j->chunk[i] : rows;
        if (!j->swiglu) {
            matmul_rows(j, i, r0, r1);
            continue;
        }
        matmul_rows(j, 0, r0, r1);
        matmul_rows(j, 1, r0, r1);
        for (int64_t t = 0; t < j->n_tok; t++) {
            float *g = j->y[0] + t * rows, *u = j->y[1] + t * rows;
            sov_swiglu(j->c->model->isa, g + r0, u + r0, (uint64_t)(r1 - r0));
        }
    }
}

/* y[i] = x @ w[i]^T for the n weights, which all take x's width as their columns. */
static void matmul(sov_context *c, int n, const weight *const *w, float *const *y, const float *x, int64_t n_tok, bool swiglu) {
    matmul_job j = {.c = c, .n = n, .x = x, .xq = NULL, .xqk = NULL, .n_tok = n_tok, .swiglu = swiglu};
    bool need_q8 = false, need_q8k = false;
    for (int i = 0; i < n; i++) {
        j.w[i] = w[i];
        j.y[i] = y[i];
        need_q8 |= sov_type_uses_q8(w[i]->type);
        need_q8k |= sov_type_uses_q8k(w[i]->type);
    }
    /* the weights of one input may need both formats (llama.cpp's K-quant mixes fall back to types of
     * 32-element blocks for rows that are not whole super-blocks), so it is quantised once per format */
    uint64_t cols = w[0]->cols;
    if (need_q8) {
        for (int64_t t = 0; t < n_tok; t++) sov_quantize_row_q8(c->model->isa, x + (uint64_t)t * cols, c->xq + (uint64_t)t * (cols / 32), cols);
        j.xq = c->xq;
    }
    if (need_q8k) {
        for (int64_t t = 0; t < n_tok; t++) sov_quantize_row_q8k(x + (uint64_t)t * cols, c->xqk + (uint64_t)t * (cols / 256), cols);
        j.xqk = c->xqk;
    }
    /* with swiglu, gate and up have the same rows and their items are gate's */
    j.n = swiglu ? 1 : n;
    int64_t per = (int64_t)sov_pool_size(c->model->pool) * (n_tok >= MATMUL_MANY_TOKENS ? MATMUL_ITEMS_PER_THREAD / 2 : MATMUL_ITEMS_PER_THREAD);
    j.first_item[0] = 0;
    for (int i = 0; i < j.n; i++) {
        int64_t rows = (int64_t)w[i]->rows;
        j.chunk[i] = ((rows + per - 1) / per + 15) / 16 * 16;
        j.first_item[i + 1] = j.first_item[i] + (rows + j.chunk[i] - 1) / j.chunk[i];
    }
    atomic_init(&j.next_item, 0);
    sov_pool_run(c->model->pool, matmul_worker, &j);
}

typedef struct attention_job {
    sov_context *c;
    uint32_t il;
    int64_t n_tok;
    const int32_t *seq_ids;
    atomic_llong next_item; /* items are (token, key/value head) pairs, handed out as the matmul's rows */
} attention_job;

/* An item is every query head of one key/value head for one token: the heads read the same keys
 * and values, from memory once and then from this core's caches (split between threads, each
 * thread read them from memory). */
static void attention_worker(void *arg, int ti, int nt) {
    attention_job *j = arg;
    sov_context *c = j->c;
    const sov_model_info *in = &c->model->info;
    uint32_t hd = in->head_dim, group = in->n_head / in->n_head_kv;
    uint64_t qd = (uint64_t)in->n_head * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *scores = c->scores + (uint64_t)ti * c->n_ctx;
    int64_t n_items = j->n_tok * in->n_head_kv;
    for (int64_t item = atomic_fetch_add(&j->next_item, 1); item < n_items; item = atomic_fetch_add(&j->next_item, 1)) {
        int64_t t = item / in->n_head_kv;
        uint32_t hk = (uint32_t)(item % in->n_head_kv);
        const seq_cache *s = &c->seqs[j->seq_ids[t]];
        const float *keys = cache_head(c, s, j->il, 0, hk), *values = cache_head(c, s, j->il, 1, hk);
        for (uint32_t h = hk * group; h < (hk + 1) * group; h++)
            sov_attention(c->model->isa, c->q + (uint64_t)t * qd + (uint64_t)h * hd, keys, values, hd, hd, c->pos[t] + 1, scale, scores,
                          c->att + (uint64_t)t * qd + (uint64_t)h * hd);
    }
}

/* ---------------------------------------------------------------------------------------
 * The forward pass
 * ------------------------------------------------------------------------------------- */

static void rope(const sov_model *m, float *vec, uint32_t n_heads, const float *cs, const float *sn) {
    uint32_t hd = m->info.head_dim, half = m->info.n_rot / 2;
    for (uint32_t h = 0; h < n_heads; h++) {
        float *v = vec + (uint64_t)h * hd;
        for (uint32_t i = 0; i < half; i++) {
            uint32_t a = m->rope_neox ? i : 2 * i, b = m->rope_neox ? i + half : 2 * i + 1;
            float x0 = v[a], x1 = v[b];
            v[a] = x0 * cs[i] - x1 * sn[i];
            v[b] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

typedef struct norm_job {
    sov_context *c;
    const float *add;       /* added to c->x first when not NULL: the residual of the last block */
    const float *w;
    int64_t n_tok;
} norm_job;

static void norm_worker(void *arg, int ti, int nt) {
    const norm_job *j = arg;
    sov_context *c = j->c;
    const sov_model_info *in = &c->model->info;
    uint64_t e = in->n_embd;
    int64_t per = (j->n_tok + nt - 1) / nt, t0 = per * ti, t1 = t0 + per < j->n_tok ? t0 + per : j->n_tok;
    for (int64_t t = t0; t < t1; t++)
        sov_add_rms_norm(c->model->isa, c->x + (uint64_t)t * e, j->add ? j->add + (uint64_t)t * e : NULL, j->w, c->xn + (uint64_t)t * e, e,
                         in->rms_norm_eps);
}

/* c->x += add (when given), then c->xn = rms_norm(c->x) * w; threaded when the chunk is long
 * enough to pay for a dispatch. */
static void add_norm(sov_context *c, const float *add, const float *w, int64_t n_tok) {
    norm_job j = {c, add, w, n_tok};
    if (n_tok >= 8) sov_pool_run(c->model->pool, norm_worker, &j);
    else norm_worker(&j, 0, 1);
}

static void add_bias(float *y, const float *b, int64_t n_tok, uint64_t n) {
    if (!b) return;
    for (int64_t t = 0; t < n_tok; t++)
        for (uint64_t i = 0; i < n; i++) y[(uint64_t)t * n + i] += b[i];
}

/* Runs one chunk through every layer; leaves the final-norm hidden states in c->xn. */
static void forward_chunk(sov_context *c, const int32_t *tokens, const int32_t *seq_ids, int64_t n) {
    sov_model *m = c->model;
    const sov_model_info *in = &m->info;
    uint64_t e = in->n_embd, qd = (uint64_t)in->n_head * in->head_dim, kvd = kv_dim(m), half = in->n_rot / 2;
    uint64_t embd_row = e / sov_type_block_elems(m->tok_embd.type) * sov_type_block_bytes(m->tok_embd.type);
    for (int64_t t = 0; t < n; t++) {
        sov_tensor_dequantize(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (uint64_t)tokens[t] * embd_row, c->x + (uint64_t)t * e, e);
        for (uint64_t i = 0; i < half; i++) {
            float angle = (float)c->pos[t] * m->rope_inv_freq[i];
            c->rope_cos[(uint64_t)t * half + i] = cosf(angle);
            c->rope_sin[(uint64_t)t * half + i] = sinf(angle);
        }
    }
    for (uint32_t il = 0; il < in->n_layer; il++) {
        const layer *l = &m->layers[il];
        add_norm(c, il > 0 ? c->tmp : NULL, l->attn_norm, n);
        const weight *qkv[3] = {&l->wq, &l->wk, &l->wv};
        float *qkv_out[3] = {c->q, c->k, c->v};
        matmul(c, 3, qkv, qkv_out, c->xn, n, false);
        add_bias(c->q, l->bq, n, qd);
        add_bias(c->k, l->bk, n, kvd);
        add_bias(c->v, l->bv, n, kvd);
        for (int64_t t = 0; t < n; t++) {
            const float *cs = c->rope_cos + (uint64_t)t * half, *sn = c->rope_sin + (uint64_t)t * half;
            rope(m, c->q + (uint64_t)t * qd, in->n_head, cs, sn);
            rope(m, c->k + (uint64_t)t * kvd, in->n_head_kv, cs, sn);
            seq_cache *s = &c->seqs[seq_ids[t]];
            for (uint32_t hk = 0; hk < in->n_head_kv; hk++) {
                uint64_t at = (uint64_t)c->pos[t] * in->head_dim, from = (uint64_t)t * kvd + (uint64_t)hk * in->head_dim;
                memcpy(cache_head(c, s, il, 0, hk) + at, c->k + from, in->head_dim * sizeof(float));
                memcpy(cache_head(c, s, il, 1, hk) + at, c->v + from, in->head_dim * sizeof(float));
            }
        }
        attention_job aj = {.c = c, .il = il, .n_tok = n, .seq_ids = seq_ids};
        atomic_init(&aj.next_item, 0);
        sov_pool_run(m->pool, attention_worker, &aj);
        const weight *wo[1] = {&l->wo};
        float *wo_out[1] = {c->tmp};
        matmul(c, 1, wo, wo_out, c->att, n, false);
        add_norm(c, c->tmp, l->ffn_norm, n);
        const weight *gu[2] = {&l->gate, &l->up};
        float *gu_out[2] = {c->gate, c->up};
        matmul(c, 2, gu, gu_out, c->xn, n, true);
        const weight *down[1] = {&l->down};
        float *down_out[1] = {c->tmp};
        matmul(c, 1, down, down_out, c->gate, n, false);
    }
    /* the last block's feed-forward output is still in tmp, to be added to the residual */
    add_norm(c, c->tmp, m->output_norm, n);
}

/* Checks the whole batch before anything changes, and fills the position of every token. */
static sov_status validate_batch(sov_context *c, const sov_batch *b, uint32_t *new_len) {
    const sov_model_info *in = &c->model->info;
    if (b->n_tokens <= 0) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "a batch needs at least one token");
    if (!b->tokens || !b->seq_ids) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "a batch needs tokens and sequence ids");
    for (uint32_t s = 0; s < c->n_seq_max; s++) new_len[s] = c->seqs[s].len;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        int32_t s = b->seq_ids[i];
        if (s < 0 || (uint32_t)s >= c->n_seq_max) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sequence id %d is not in 0..%u", s, c->n_seq_max - 1);
        if (b->tokens[i] < 0 || (uint32_t)b->tokens[i] >= in->n_vocab)
            return sov_fail(SOV_ERR_INVALID_ARGUMENT, "token id %d is not in the vocabulary of %u", b->tokens[i], in->n_vocab);
        if (new_len[s] >= c->n_ctx) return sov_fail(SOV_ERR_CONTEXT_FULL, "sequence %d would exceed the context length of %u tokens", s, c->n_ctx);
        new_len[s]++;
    }
    for (uint32_t s = 0; s < c->n_seq_max; s++) {
        sov_status st = cache_reserve(c, &c->seqs[s], new_len[s]);
        if (st != SOV_OK) return st;
    }
    return SOV_OK;
}

static bool all_finite(const float *v, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) if (!isfinite(v[i])) return false;
    return true;
}

static sov_status decode_locked(sov_context *c, const sov_batch *b, float *logits, float *embeddings, uint32_t *new_len) {
    sov_model *m = c->model;
    const sov_model_info *in = &m->info;
    sov_status st = validate_batch(c, b, new_len);
    if (st != SOV_OK) return st;
    uint32_t *next = calloc(c->n_seq_max, sizeof(uint32_t));
    if (!next) return sov_fail(SOV_ERR_NOMEM, "positions");
    for (uint32_t s = 0; s < c->n_seq_max; s++) next[s] = c->seqs[s].len;
    uint64_t n_logit_rows = 0, n_embd_rows = 0;
    for (int32_t start = 0; start < b->n_tokens && st == SOV_OK; start += (int32_t)c->n_ubatch) {
        int64_t n = b->n_tokens - start < (int32_t)c->n_ubatch ? b->n_tokens - start : (int64_t)c->n_ubatch;
        for (int64_t t = 0; t < n; t++) c->pos[t] = (int32_t)next[b->seq_ids[start + t]]++;
        forward_chunk(c, b->tokens + start, b->seq_ids + start, n);
        if (!b->output) continue;
        /* gather the rows that want logits into x (free now), then one product for them all */
        int64_t n_rows = 0;
        for (int64_t t = 0; t < n; t++) {
            uint8_t want = b->output[start + t];
            const float *h = c->xn + (uint64_t)t * in->n_embd;
            if ((want & SOV_OUTPUT_EMBEDDING) && embeddings) memcpy(embeddings + n_embd_rows++ * in->n_embd, h, in->n_embd * sizeof(float));
            if ((want & SOV_OUTPUT_LOGITS) && logits) memcpy(c->x + (uint64_t)n_rows++ * in->n_embd, h, in->n_embd * sizeof(float));
        }
        if (n_rows == 0) continue;
        float *dst = logits + n_logit_rows * in->n_vocab;
        const weight *out[1] = {&m->output};
        float *out_y[1] = {dst};
        matmul(c, 1, out, out_y, c->x, n_rows, false);
        if (!all_finite(dst, (uint64_t)n_rows * in->n_vocab)) st = sov_fail(SOV_ERR_NUMERIC, "the logits are not finite");
        n_logit_rows += (uint64_t)n_rows;
    }
    free(next);
    return st;
}

sov_status sov_context_decode(sov_context *c, const sov_batch *b, float *logits, float *embeddings) {
    if (!c || !b) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_context_decode: NULL argument");
    uint32_t *new_len = calloc(c->n_seq_max, sizeof(uint32_t));
    if (!new_len) return sov_fail(SOV_ERR_NOMEM, "sequence lengths");
    pthread_mutex_lock(&c->model->compute_lock);
    sov_status st = decode_locked(c, b, logits, embeddings, new_len);
    if (st == SOV_OK) {
        for (uint32_t s = 0; s < c->n_seq_max; s++) c->seqs[s].len = new_len[s];
    }
    pthread_mutex_unlock(&c->model->compute_lock);
    free(new_len);
    return st;
}
