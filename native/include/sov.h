/* sov.h: the public interface of our C inference engine (GGUF files, Llama/Qwen2 decoders).
 *
 * Every fallible call returns a sov_status; sov_last_error() adds a human-readable detail
 * for the calling thread. The library never prints and never exits; messages go to the log
 * callback, if one is set. */
#ifndef SOV_H
#define SOV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------
 * Status codes, errors and logging
 * ------------------------------------------------------------------------------------- */

typedef enum sov_status {
    SOV_OK = 0,
    SOV_ERR_IO = 1,              /* the file cannot be opened, read or mapped */
    SOV_ERR_FORMAT = 2,          /* the file is not a well-formed GGUF file */
    SOV_ERR_UNSUPPORTED = 3,     /* well-formed, but an architecture or type we do not run */
    SOV_ERR_NOMEM = 4,           /* an allocation failed */
    SOV_ERR_INVALID_ARGUMENT = 5,/* a caller passed a bad value (token id, sequence id, ...) */
    SOV_ERR_CONTEXT_FULL = 6,    /* a sequence would grow past the context length */
    SOV_ERR_NUMERIC = 7,         /* weights or activations are not finite */
    SOV_ERR_NOT_FOUND = 8        /* a metadata key or tensor is absent */
} sov_status;

/* A static, never-NULL description of a status code. */
const char *sov_status_message(sov_status status);

/* The detail of the last error raised on the calling thread ("" if none). */
const char *sov_last_error(void);

typedef enum sov_log_level { SOV_LOG_DEBUG = 0, SOV_LOG_INFO = 1, SOV_LOG_WARN = 2, SOV_LOG_ERROR = 3 } sov_log_level;
typedef void (*sov_log_fn)(sov_log_level level, const char *message, void *user_data);

/* Sets the process-wide log callback (NULL silences the library, the default). */
void sov_log_set_callback(sov_log_fn callback, void *user_data);

/* ---------------------------------------------------------------------------------------
 * GGUF files: metadata and tensor infos, read-only, memory-mapped
 * ------------------------------------------------------------------------------------- */

typedef struct sov_gguf sov_gguf;

typedef enum sov_gguf_type {
    SOV_GGUF_UINT8 = 0, SOV_GGUF_INT8 = 1, SOV_GGUF_UINT16 = 2, SOV_GGUF_INT16 = 3,
    SOV_GGUF_UINT32 = 4, SOV_GGUF_INT32 = 5, SOV_GGUF_FLOAT32 = 6, SOV_GGUF_BOOL = 7,
    SOV_GGUF_STRING = 8, SOV_GGUF_ARRAY = 9, SOV_GGUF_UINT64 = 10, SOV_GGUF_INT64 = 11,
    SOV_GGUF_FLOAT64 = 12
} sov_gguf_type;

/* Tensor element types (the numbering is GGUF's). */
typedef enum sov_tensor_type {
    SOV_TYPE_F32 = 0, SOV_TYPE_F16 = 1, SOV_TYPE_Q4_0 = 2, SOV_TYPE_Q4_1 = 3,
    SOV_TYPE_Q5_0 = 6, SOV_TYPE_Q5_1 = 7, SOV_TYPE_Q8_0 = 8, SOV_TYPE_Q4_K = 12, SOV_TYPE_Q5_K = 13, SOV_TYPE_Q6_K = 14, SOV_TYPE_BF16 = 30
} sov_tensor_type;

/* An array of metadata values, owned by its sov_gguf. Arrays may nest (at most 8 deep). */
typedef struct sov_gguf_array sov_gguf_array;

/* One metadata value; strings point into the mapped file and are not NUL-terminated. */
typedef struct sov_gguf_value {
    sov_gguf_type type;
    union {
        uint64_t u64;   /* UINT8/16/32/64 and BOOL */
        int64_t i64;    /* INT8/16/32/64 */
        double f64;     /* FLOAT32/64 */
        struct { const char *data; uint64_t size; } str;
        const sov_gguf_array *array;    /* ARRAY: an element of an array of arrays */
    } as;
} sov_gguf_value;

typedef struct sov_gguf_tensor_info {
    const char *name;       /* NUL-terminated copy owned by the sov_gguf */
    uint32_t type;          /* a sov_tensor_type for the types this engine knows */
    uint32_t n_dims;
    uint64_t dims[4];       /* dims[0] is the contiguous (row) dimension */
    uint64_t offset;        /* from the start of the data section */
    uint64_t size;          /* bytes, 0 for unknown types */
    const void *data;       /* NULL for unknown types */
} sov_gguf_tensor_info;

sov_status sov_gguf_open(const char *path, sov_gguf **out);
/* Parses a caller-owned buffer, which must outlive the handle (used by the fuzz target). */
sov_status sov_gguf_open_memory(const void *data, size_t size, sov_gguf **out);
void sov_gguf_free(sov_gguf *gguf);

uint32_t sov_gguf_version(const sov_gguf *gguf);
uint64_t sov_gguf_alignment(const sov_gguf *gguf);
uint64_t sov_gguf_kv_count(const sov_gguf *gguf);
/* The key of entry i (NUL-terminated), NULL if i is out of range. */
const char *sov_gguf_kv_key(const sov_gguf *gguf, uint64_t i);
/* Finds a key; SOV_ERR_NOT_FOUND if absent. */
sov_status sov_gguf_kv_find(const sov_gguf *gguf, const char *key, uint64_t *index);
/* The type of entry i and, for arrays, the element type and length. */
sov_status sov_gguf_kv_type(const sov_gguf *gguf, uint64_t i, sov_gguf_type *type,
                            sov_gguf_type *element_type, uint64_t *length);
/* The scalar value of entry i (element is ignored) or element `element` of an array. */
sov_status sov_gguf_kv_value(const sov_gguf *gguf, uint64_t i, uint64_t element, sov_gguf_value *out);
/* The array of entry i; SOV_ERR_INVALID_ARGUMENT if it is not an array. */
sov_status sov_gguf_kv_array(const sov_gguf *gguf, uint64_t i, const sov_gguf_array **out);
/* An array's element type and length. */
sov_status sov_gguf_array_type(const sov_gguf_array *array, sov_gguf_type *element_type, uint64_t *length);
/* Element `element` of an array; for arrays of arrays, a value of type ARRAY holding the nested one. */
sov_status sov_gguf_array_value(const sov_gguf_array *array, uint64_t element, sov_gguf_value *out);

uint64_t sov_gguf_tensor_count(const sov_gguf *gguf);
sov_status sov_gguf_tensor_info_get(const sov_gguf *gguf, uint64_t i, sov_gguf_tensor_info *out);
sov_status sov_gguf_tensor_find(const sov_gguf *gguf, const char *name, sov_gguf_tensor_info *out);

/* ---------------------------------------------------------------------------------------
 * Tensor types: names, sizes and dequantisation
 * ------------------------------------------------------------------------------------- */

/* "F32", "Q4_1", ...; NULL for types this engine does not know. */
const char *sov_tensor_type_name(uint32_t type);
/* Bytes taken by n elements (n a multiple of the block size); SOV_ERR_UNSUPPORTED otherwise. */
sov_status sov_tensor_row_size(uint32_t type, uint64_t n, uint64_t *bytes);
/* Dequantises n elements (a multiple of the block size) to float32. */
sov_status sov_tensor_dequantize(uint32_t type, const void *src, float *dst, uint64_t n);

/* ---------------------------------------------------------------------------------------
 * Models
 * ------------------------------------------------------------------------------------- */

typedef struct sov_model sov_model;

typedef struct sov_model_params {
    int32_t n_threads;      /* compute threads, >= 1 */
    int32_t force_scalar;   /* 1: portable kernels only; 0: best for this CPU; -1: env NATIVE_FORCE_SCALAR */
} sov_model_params;

typedef struct sov_model_info {
    char architecture[32];
    uint32_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_rot, n_ff, n_vocab, n_ctx_train;
    float rope_freq_base, rms_norm_eps;
    float rope_freq_scale;  /* 1 / the linear RoPE scaling factor; 1 without scaling */
    int32_t tied_output;    /* 1 when the token embeddings double as the output head */
    int32_t bos_token, eos_token;   /* -1 when the file names none */
    char kernels[16];       /* "scalar", "avx2" or "avx512" */
} sov_model_info;

sov_model_params sov_model_default_params(void);
sov_status sov_model_load(const char *path, const sov_model_params *params, sov_model **out);
void sov_model_free(sov_model *model);
void sov_model_info_get(const sov_model *model, sov_model_info *out);
const sov_gguf *sov_model_gguf(const sov_model *model);

/* ---------------------------------------------------------------------------------------
 * Contexts: KV caches for many sequences, decoded together
 * ------------------------------------------------------------------------------------- */

typedef struct sov_context sov_context;

typedef struct sov_context_params {
    uint32_t n_ctx;         /* tokens per sequence; 0 means the model's training length */
    uint32_t n_seq_max;     /* sequence slots 0 .. n_seq_max-1 */
    uint32_t n_ubatch;      /* a decode call runs its tokens in chunks of at most this many */
} sov_context_params;

/* Which rows a decode call returns. */
enum { SOV_OUTPUT_NONE = 0, SOV_OUTPUT_LOGITS = 1, SOV_OUTPUT_EMBEDDING = 2 };

/* n_tokens tokens, each appended to its sequence at that sequence's next position; tokens of
 * one sequence appear in order. output[i] selects what row i returns (may be NULL: none). */
typedef struct sov_batch {
    int32_t n_tokens;
    const int32_t *tokens;
    const int32_t *seq_ids;
    const uint8_t *output;
} sov_batch;

sov_context_params sov_context_default_params(void);
sov_status sov_context_init(sov_model *model, const sov_context_params *params, sov_context **out);
void sov_context_free(sov_context *ctx);
uint32_t sov_context_n_ctx(const sov_context *ctx);
/* Forgets a sequence's tokens so that its slot can start a new one. */
sov_status sov_context_seq_reset(sov_context *ctx, int32_t seq_id);
/* Keeps only a sequence's first n_keep tokens (0 <= n_keep <= its length): a new prompt that
 * starts with them continues from there instead of computing their keys and values again. */
sov_status sov_context_seq_truncate(sov_context *ctx, int32_t seq_id, uint32_t n_keep);
/* Tokens held for a sequence, or -1 for a bad id. */
int32_t sov_context_seq_length(const sov_context *ctx, int32_t seq_id);
/* Runs the batch. Rows with SOV_OUTPUT_LOGITS write n_vocab floats to `logits` and rows with
 * SOV_OUTPUT_EMBEDDING write n_embd final-norm floats to `embeddings`, each in batch order
 * among the rows of its kind. On failure no sequence changes. */
sov_status sov_context_decode(sov_context *ctx, const sov_batch *batch, float *logits, float *embeddings);

/* ---------------------------------------------------------------------------------------
 * Sampling
 * ------------------------------------------------------------------------------------- */

typedef struct sov_sampler sov_sampler;

typedef struct sov_sampler_params {
    float temperature;      /* <= 0: greedy */
    int32_t top_k;          /* <= 0: off */
    float top_p;            /* >= 1: off */
    float min_p;            /* <= 0: off */
    float repeat_penalty;   /* 1: off */
    int32_t repeat_last_n;  /* how many recent tokens the penalty sees */
    uint64_t seed;
} sov_sampler_params;

sov_sampler_params sov_sampler_default_params(void);
sov_status sov_sampler_init(const sov_sampler_params *params, int32_t n_vocab, sov_sampler **out);
void sov_sampler_free(sov_sampler *sampler);
/* Picks a token from n_vocab logits given the tokens seen so far (for the penalty). */
sov_status sov_sampler_sample(sov_sampler *sampler, const float *logits, const int32_t *history,
                              size_t n_history, int32_t *token);

#ifdef __cplusplus
}
#endif

#endif /* SOV_H */
