/* gguf.c: a bounds-checked reader of GGUF v2/v3 files (metadata and tensor infos), memory-mapped. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------
 * Data structures
 * ------------------------------------------------------------------------------------- */

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian uint32 */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 4u
/* Limits on nested arrays, which the format leaves open. Each nested array or string costs us a
 * record, so without a budget a large file of empty arrays would cost many times its size in
 * memory; top-level arrays (vocabularies, merges) are bounded by the file's size alone. */
#define GGUF_MAX_ARRAY_DEPTH 8u
#define GGUF_MAX_NESTED_ELEMENTS (1u << 20)

struct sov_gguf_array {
    sov_gguf_type element_type;
    uint64_t length;
    const uint8_t *data;            /* the first element */
    uint64_t *string_offsets;       /* STRING elements: offset of each from data */
    sov_gguf_array *nested;         /* ARRAY elements: one node per element */
};

typedef struct gguf_kv {
    char *key;
    sov_gguf_type type;
    const uint8_t *data;            /* scalars and strings */
    sov_gguf_array array;           /* arrays */
} gguf_kv;

struct sov_gguf {
    const uint8_t *base;
    size_t size;
    int mapped;                     /* 1 when base is our mmap */
    uint32_t version;
    uint64_t alignment;
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    sov_gguf_tensor_info *tensors;
};

typedef struct reader {
    const uint8_t *base;
    size_t size;
    size_t pos;
} reader;

/* ---------------------------------------------------------------------------------------
 * Bounds-checked reading
 * ------------------------------------------------------------------------------------- */

static bool take(reader *r, size_t n, const uint8_t **out) {
    if (n > r->size - r->pos) return false;
    *out = r->base + r->pos;
    r->pos += n;
    return true;
}

static bool read_u32(reader *r, uint32_t *out) {
    const uint8_t *p;
    if (!take(r, 4, &p)) return false;
    memcpy(out, p, 4);
    return true;
}

static bool read_u64(reader *r, uint64_t *out) {
    const uint8_t *p;
    if (!take(r, 8, &p)) return false;
    memcpy(out, p, 8);
    return true;
}

static bool read_string(reader *r, const uint8_t **data, uint64_t *len) {
    if (!read_u64(r, len)) return false;
    if (*len > r->size - r->pos) return false;
    return take(r, (size_t)*len, data);
}

static size_t scalar_size(sov_gguf_type type) {
    switch (type) {
    case SOV_GGUF_UINT8: case SOV_GGUF_INT8: case SOV_GGUF_BOOL: return 1;
    case SOV_GGUF_UINT16: case SOV_GGUF_INT16: return 2;
    case SOV_GGUF_UINT32: case SOV_GGUF_INT32: case SOV_GGUF_FLOAT32: return 4;
    case SOV_GGUF_UINT64: case SOV_GGUF_INT64: case SOV_GGUF_FLOAT64: return 8;
    case SOV_GGUF_STRING: case SOV_GGUF_ARRAY: return 0;
    }
    return 0;
}

static bool is_known_value_type(uint32_t t) { return t <= SOV_GGUF_FLOAT64; }

/* ---------------------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------------------- */

/* Where parsing one metadata value stands: the key (for messages) and what is left of the
 * nested-element budget. */
typedef struct value_parse {
    const char *key;
    uint64_t nested_budget;
} value_parse;

static sov_status parse_array(reader *r, value_parse *vp, sov_gguf_array *a, uint32_t depth) {
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return sov_fail(SOV_ERR_UNSUPPORTED, "metadata '%s': arrays nested %u deep (the limit is %u)", vp->key, depth, GGUF_MAX_ARRAY_DEPTH);
    uint32_t et;
    if (!read_u32(r, &et) || !read_u64(r, &a->length)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': array header runs past the end", vp->key);
    if (!is_known_value_type(et)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': unknown array element type %u", vp->key, et);
    a->element_type = (sov_gguf_type)et;
    a->data = r->base + r->pos;
    size_t remaining = r->size - r->pos;
    if (et != SOV_GGUF_STRING && et != SOV_GGUF_ARRAY) {
        size_t es = scalar_size(a->element_type);
        if (a->length > remaining / es) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': array of %llu elements runs past the end", vp->key, (unsigned long long)a->length);
        r->pos += (size_t)a->length * es;
        return SOV_OK;
    }
    /* A string takes at least its 8-byte length and an array its 12-byte header: this bounds
     * the count by the bytes left before anything is allocated. */
    size_t least = et == SOV_GGUF_STRING ? 8 : 12;
    if (a->length > remaining / least)
        return sov_fail(SOV_ERR_FORMAT, "metadata '%s': array of %llu %s runs past the end", vp->key, (unsigned long long)a->length,
                        et == SOV_GGUF_STRING ? "strings" : "arrays");
    if (depth > 1 || et == SOV_GGUF_ARRAY) {
        if (a->length > vp->nested_budget)
            return sov_fail(SOV_ERR_UNSUPPORTED, "metadata '%s': nested arrays hold more than %u strings and arrays (the limit)", vp->key,
                            GGUF_MAX_NESTED_ELEMENTS);
        vp->nested_budget -= a->length;
    }
    size_t n = (size_t)(a->length ? a->length : 1);
    if (et == SOV_GGUF_STRING) {
        a->string_offsets = malloc(n * sizeof(uint64_t));
        if (!a->string_offsets) return sov_fail(SOV_ERR_NOMEM, "metadata '%s': string array", vp->key);
        for (uint64_t i = 0; i < a->length; i++) {
            a->string_offsets[i] = (uint64_t)(r->base + r->pos - a->data);
            const uint8_t *s;
            uint64_t len;
            if (!read_string(r, &s, &len)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': string %llu runs past the end", vp->key, (unsigned long long)i);
        }
        return SOV_OK;
    }
    /* calloc, so that a failure part-way leaves every later node empty for array_free() */
    a->nested = calloc(n, sizeof(sov_gguf_array));
    if (!a->nested) return sov_fail(SOV_ERR_NOMEM, "metadata '%s': nested arrays", vp->key);
    for (uint64_t i = 0; i < a->length; i++) {
        sov_status st = parse_array(r, vp, &a->nested[i], depth + 1);
        if (st != SOV_OK) return st;
    }
    return SOV_OK;
}

static sov_status parse_value(reader *r, value_parse *vp, gguf_kv *kv) {
    kv->data = r->base + r->pos;
    if (kv->type == SOV_GGUF_ARRAY) return parse_array(r, vp, &kv->array, 1);
    if (kv->type == SOV_GGUF_STRING) {
        const uint8_t *s;
        uint64_t len;
        if (!read_string(r, &s, &len)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': string runs past the end", vp->key);
        return SOV_OK;
    }
    const uint8_t *p;
    if (!take(r, scalar_size(kv->type), &p)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': value runs past the end", vp->key);
    return SOV_OK;
}

static sov_status parse_kv(sov_gguf *g, reader *r) {
    /* An entry takes at least a key length, a type and a one-byte value. */
    if (g->n_kv > (r->size - r->pos) / 13) return sov_fail(SOV_ERR_FORMAT, "%llu metadata entries cannot fit in the file", (unsigned long long)g->n_kv);
    g->kv = calloc((size_t)(g->n_kv ? g->n_kv : 1), sizeof(gguf_kv));
    if (!g->kv) return sov_fail(SOV_ERR_NOMEM, "metadata table");
    value_parse vp = {NULL, GGUF_MAX_NESTED_ELEMENTS};
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        const uint8_t *key;
        uint64_t key_len;
        uint32_t type;
        if (!read_string(r, &key, &key_len)) return sov_fail(SOV_ERR_FORMAT, "metadata %llu: key runs past the end", (unsigned long long)i);
        kv->key = malloc((size_t)key_len + 1);
        if (!kv->key) return sov_fail(SOV_ERR_NOMEM, "metadata key");
        memcpy(kv->key, key, (size_t)key_len);
        kv->key[key_len] = '\0';
        vp.key = kv->key;
        if (!read_u32(r, &type)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': type runs past the end", kv->key);
        if (!is_known_value_type(type)) return sov_fail(SOV_ERR_FORMAT, "metadata '%s': unknown value type %u", kv->key, type);
        kv->type = (sov_gguf_type)type;
        sov_status st = parse_value(r, &vp, kv);
        if (st != SOV_OK) return st;
    }
    return SOV_OK;
}

static sov_status read_alignment(sov_gguf *g) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    uint64_t i;
    if (sov_gguf_kv_find(g, "general.alignment", &i) != SOV_OK) return SOV_OK;
    sov_gguf_value v;
    if (g->kv[i].type != SOV_GGUF_UINT32 || sov_gguf_kv_value(g, i, 0, &v) != SOV_OK)
        return sov_fail(SOV_ERR_FORMAT, "general.alignment must be a uint32");
    if (v.as.u64 == 0 || (v.as.u64 & (v.as.u64 - 1)) != 0)
        return sov_fail(SOV_ERR_FORMAT, "general.alignment %llu is not a power of two", (unsigned long long)v.as.u64);
    g->alignment = v.as.u64;
    return SOV_OK;
}

static sov_status parse_tensor_infos(sov_gguf *g, reader *r) {
    /* An info takes at least a name length, n_dims, one dim, a type and an offset. */
    if (g->n_tensors > (r->size - r->pos) / 32) return sov_fail(SOV_ERR_FORMAT, "%llu tensors cannot fit in the file", (unsigned long long)g->n_tensors);
    g->tensors = calloc((size_t)(g->n_tensors ? g->n_tensors : 1), sizeof(sov_gguf_tensor_info));
    if (!g->tensors) return sov_fail(SOV_ERR_NOMEM, "tensor table");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sov_gguf_tensor_info *t = &g->tensors[i];
        const uint8_t *name;
        uint64_t name_len;
        if (!read_string(r, &name, &name_len)) return sov_fail(SOV_ERR_FORMAT, "tensor %llu: name runs past the end", (unsigned long long)i);
        char *copy = malloc((size_t)name_len + 1);
        if (!copy) return sov_fail(SOV_ERR_NOMEM, "tensor name");
        memcpy(copy, name, (size_t)name_len);
        copy[name_len] = '\0';
        t->name = copy;
        if (!read_u32(r, &t->n_dims)) return sov_fail(SOV_ERR_FORMAT, "tensor '%s': header runs past the end", t->name);
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS) return sov_fail(SOV_ERR_FORMAT, "tensor '%s': %u dimensions", t->name, t->n_dims);
        uint64_t elems = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->dims[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if (!read_u64(r, &t->dims[d])) return sov_fail(SOV_ERR_FORMAT, "tensor '%s': dimensions run past the end", t->name);
            if (t->dims[d] == 0 || t->dims[d] > ((uint64_t)1 << 40) || elems > ((uint64_t)1 << 50) / t->dims[d])
                return sov_fail(SOV_ERR_FORMAT, "tensor '%s': absurd dimension %llu", t->name, (unsigned long long)t->dims[d]);
            elems *= t->dims[d];
        }
        if (!read_u32(r, &t->type) || !read_u64(r, &t->offset)) return sov_fail(SOV_ERR_FORMAT, "tensor '%s': header runs past the end", t->name);
        if (t->offset % g->alignment != 0) return sov_fail(SOV_ERR_FORMAT, "tensor '%s': offset %llu is not aligned to %llu", t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
        if (sov_type_block_elems(t->type) != 0) {
            if (t->dims[0] % sov_type_block_elems(t->type) != 0)
                return sov_fail(SOV_ERR_FORMAT, "tensor '%s': row of %llu is not a whole number of %s blocks", t->name, (unsigned long long)t->dims[0], sov_tensor_type_name(t->type));
            t->size = elems / sov_type_block_elems(t->type) * sov_type_block_bytes(t->type);
        }
    }
    return SOV_OK;
}

static sov_status locate_tensor_data(sov_gguf *g, size_t info_end) {
    uint64_t start = ((uint64_t)info_end + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors > 0 && start > g->size) return sov_fail(SOV_ERR_FORMAT, "the data section starts past the end of the file");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sov_gguf_tensor_info *t = &g->tensors[i];
        if (sov_type_block_elems(t->type) == 0) continue; /* unknown type: the model loader refuses it by name */
        uint64_t avail = g->size - start;
        if (t->offset > avail || t->size > avail - t->offset)
            return sov_fail(SOV_ERR_FORMAT, "tensor '%s': data (offset %llu, %llu bytes) runs past the end of the file", t->name, (unsigned long long)t->offset, (unsigned long long)t->size);
        t->data = g->base + start + t->offset;
    }
    return SOV_OK;
}

static sov_status parse(sov_gguf *g) {
    reader r = {g->base, g->size, 0};
    uint32_t magic;
    if (!read_u32(&r, &magic) || magic != GGUF_MAGIC) return sov_fail(SOV_ERR_FORMAT, "not a GGUF file (wrong magic)");
    if (!read_u32(&r, &g->version)) return sov_fail(SOV_ERR_FORMAT, "truncated header");
    if (g->version != 2 && g->version != 3) return sov_fail(SOV_ERR_UNSUPPORTED, "GGUF version %u (only 2 and 3 are supported)", g->version);
    if (!read_u64(&r, &g->n_tensors) || !read_u64(&r, &g->n_kv)) return sov_fail(SOV_ERR_FORMAT, "truncated header");
    sov_status st = parse_kv(g, &r);
    if (st == SOV_OK) st = read_alignment(g);
    if (st == SOV_OK) st = parse_tensor_infos(g, &r);
    if (st == SOV_OK) st = locate_tensor_data(g, r.pos);
    return st;
}

/* ---------------------------------------------------------------------------------------
 * Opening and freeing
 * ------------------------------------------------------------------------------------- */

sov_status sov_gguf_open_memory(const void *data, size_t size, sov_gguf **out) {
    if (!out || (!data && size)) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_gguf_open_memory: NULL argument");
    *out = NULL;
    sov_gguf *g = calloc(1, sizeof *g);
    if (!g) return sov_fail(SOV_ERR_NOMEM, "gguf handle");
    g->base = data;
    g->size = size;
    sov_status st = parse(g);
    if (st != SOV_OK) {
        sov_gguf_free(g);
        return st;
    }
    *out = g;
    return SOV_OK;
}

sov_status sov_gguf_open(const char *path, sov_gguf **out) {
    if (!path || !out) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sov_fail(SOV_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return sov_fail(SOV_ERR_IO, "%s is not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return sov_fail(SOV_ERR_FORMAT, "%s is too short to be a GGUF file (%lld bytes)", path, (long long)sb.st_size);
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return sov_fail(SOV_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    sov_status st = sov_gguf_open_memory(map, (size_t)sb.st_size, out);
    if (st != SOV_OK) {
        munmap(map, (size_t)sb.st_size);
        return st;
    }
    (*out)->mapped = 1;
    return SOV_OK;
}

/* Recursion is bounded by GGUF_MAX_ARRAY_DEPTH; nodes past a parse failure are still zeroed. */
static void array_free(sov_gguf_array *a) {
    if (a->nested) {
        for (uint64_t i = 0; i < a->length; i++) array_free(&a->nested[i]);
    }
    free(a->nested);
    free(a->string_offsets);
}

void sov_gguf_free(sov_gguf *g) {
    if (!g) return;
    if (g->kv) {
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            array_free(&g->kv[i].array);
        }
    }
    if (g->tensors) {
        for (uint64_t i = 0; i < g->n_tensors; i++) free((void *)g->tensors[i].name);
    }
    free(g->kv);
    free(g->tensors);
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g);
}

/* ---------------------------------------------------------------------------------------
 * Metadata access
 * ------------------------------------------------------------------------------------- */

uint32_t sov_gguf_version(const sov_gguf *g) { return g->version; }
uint64_t sov_gguf_alignment(const sov_gguf *g) { return g->alignment; }
uint64_t sov_gguf_kv_count(const sov_gguf *g) { return g->n_kv; }

const char *sov_gguf_kv_key(const sov_gguf *g, uint64_t i) { return i < g->n_kv ? g->kv[i].key : NULL; }

sov_status sov_gguf_kv_find(const sov_gguf *g, const char *key, uint64_t *index) {
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) {
            *index = i;
            return SOV_OK;
        }
    }
    return SOV_ERR_NOT_FOUND;
}

sov_status sov_gguf_kv_type(const sov_gguf *g, uint64_t i, sov_gguf_type *type, sov_gguf_type *element_type, uint64_t *length) {
    if (i >= g->n_kv) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "metadata index %llu out of range", (unsigned long long)i);
    const gguf_kv *kv = &g->kv[i];
    if (type) *type = kv->type;
    if (element_type) *element_type = kv->array.element_type;
    if (length) *length = kv->type == SOV_GGUF_ARRAY ? kv->array.length : 1;
    return SOV_OK;
}

static void decode_scalar(sov_gguf_type type, const uint8_t *p, sov_gguf_value *out) {
    out->type = type;
    switch (type) {
    case SOV_GGUF_UINT8: out->as.u64 = p[0]; break;
    case SOV_GGUF_BOOL: out->as.u64 = p[0] != 0; break;
    case SOV_GGUF_INT8: { int8_t v; memcpy(&v, p, 1); out->as.i64 = v; break; }
    case SOV_GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); out->as.u64 = v; break; }
    case SOV_GGUF_INT16: { int16_t v; memcpy(&v, p, 2); out->as.i64 = v; break; }
    case SOV_GGUF_UINT32: { uint32_t v; memcpy(&v, p, 4); out->as.u64 = v; break; }
    case SOV_GGUF_INT32: { int32_t v; memcpy(&v, p, 4); out->as.i64 = v; break; }
    case SOV_GGUF_FLOAT32: { float v; memcpy(&v, p, 4); out->as.f64 = v; break; }
    case SOV_GGUF_UINT64: memcpy(&out->as.u64, p, 8); break;
    case SOV_GGUF_INT64: memcpy(&out->as.i64, p, 8); break;
    case SOV_GGUF_FLOAT64: memcpy(&out->as.f64, p, 8); break;
    case SOV_GGUF_STRING: {
        uint64_t len;
        memcpy(&len, p, 8);
        out->as.str.size = len;
        out->as.str.data = (const char *)p + 8;
        break;
    }
    case SOV_GGUF_ARRAY: break;
    }
}

/* The caller has checked that element < a->length. */
static void array_value(const sov_gguf_array *a, uint64_t element, sov_gguf_value *out) {
    switch (a->element_type) {
    case SOV_GGUF_STRING: decode_scalar(SOV_GGUF_STRING, a->data + a->string_offsets[element], out); break;
    case SOV_GGUF_ARRAY:
        out->type = SOV_GGUF_ARRAY;
        out->as.array = &a->nested[element];
        break;
    default: decode_scalar(a->element_type, a->data + element * scalar_size(a->element_type), out); break;
    }
}

sov_status sov_gguf_kv_value(const sov_gguf *g, uint64_t i, uint64_t element, sov_gguf_value *out) {
    if (i >= g->n_kv) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "metadata index %llu out of range", (unsigned long long)i);
    const gguf_kv *kv = &g->kv[i];
    if (kv->type != SOV_GGUF_ARRAY) {
        decode_scalar(kv->type, kv->data, out);
        return SOV_OK;
    }
    if (element >= kv->array.length) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "'%s' has no element %llu", kv->key, (unsigned long long)element);
    array_value(&kv->array, element, out);
    return SOV_OK;
}

sov_status sov_gguf_kv_array(const sov_gguf *g, uint64_t i, const sov_gguf_array **out) {
    if (i >= g->n_kv) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "metadata index %llu out of range", (unsigned long long)i);
    if (g->kv[i].type != SOV_GGUF_ARRAY) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "metadata '%s' is not an array", g->kv[i].key);
    *out = &g->kv[i].array;
    return SOV_OK;
}

sov_status sov_gguf_array_type(const sov_gguf_array *a, sov_gguf_type *element_type, uint64_t *length) {
    if (!a) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_gguf_array_type: NULL array");
    if (element_type) *element_type = a->element_type;
    if (length) *length = a->length;
    return SOV_OK;
}

sov_status sov_gguf_array_value(const sov_gguf_array *a, uint64_t element, sov_gguf_value *out) {
    if (!a || !out) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "sov_gguf_array_value: NULL argument");
    if (element >= a->length)
        return sov_fail(SOV_ERR_INVALID_ARGUMENT, "the array has no element %llu (length %llu)", (unsigned long long)element, (unsigned long long)a->length);
    array_value(a, element, out);
    return SOV_OK;
}

/* ---------------------------------------------------------------------------------------
 * Tensor infos
 * ------------------------------------------------------------------------------------- */

uint64_t sov_gguf_tensor_count(const sov_gguf *g) { return g->n_tensors; }

sov_status sov_gguf_tensor_info_get(const sov_gguf *g, uint64_t i, sov_gguf_tensor_info *out) {
    if (i >= g->n_tensors) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "tensor index %llu out of range", (unsigned long long)i);
    *out = g->tensors[i];
    return SOV_OK;
}

sov_status sov_gguf_tensor_find(const sov_gguf *g, const char *name, sov_gguf_tensor_info *out) {
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (strcmp(g->tensors[i].name, name) == 0) {
            *out = g->tensors[i];
            return SOV_OK;
        }
    }
    return SOV_ERR_NOT_FOUND;
}
