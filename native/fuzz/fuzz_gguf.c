/* fuzz_gguf.c: the libFuzzer target of the GGUF parser, built by clang with ASan and UBSan.
 * libFuzzer hands each input over in a buffer of exactly its size, so a read one byte past the
 * end is an ASan report; a parse that succeeds is walked through the whole public API, nested
 * arrays included, so that the sanitizers see every byte an accessor would hand to a caller. */
#include "sov.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Real metadata holds arrays of 150,000 strings; touching a prefix of each array, and few values
 * in all, keeps every input fast enough for libFuzzer to try thousands a second. */
enum { ELEMENTS_PER_ARRAY = 64, VALUES_PER_INPUT = 4096 };

static void touch_bytes(const void *data, uint64_t size) {
    if (size == 0) return;
    const volatile uint8_t *p = data;
    (void)p[0];
    (void)p[size - 1];
}

static void walk_value(const sov_gguf_value *v, unsigned *budget);

static void walk_array(const sov_gguf_array *array, unsigned *budget) {
    sov_gguf_type element_type;
    uint64_t length;
    if (sov_gguf_array_type(array, &element_type, &length) != SOV_OK) return;
    for (uint64_t e = 0; e < length && e < ELEMENTS_PER_ARRAY && *budget > 0; e++) {
        sov_gguf_value v;
        if (sov_gguf_array_value(array, e, &v) == SOV_OK) walk_value(&v, budget);
    }
}

static void walk_value(const sov_gguf_value *v, unsigned *budget) {
    (*budget)--;
    if (v->type == SOV_GGUF_STRING) touch_bytes(v->as.str.data, v->as.str.size);
    else if (v->type == SOV_GGUF_ARRAY) walk_array(v->as.array, budget);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sov_gguf *g = NULL;
    if (sov_gguf_open_memory(data, size, &g) != SOV_OK) return 0;
    unsigned budget = VALUES_PER_INPUT;
    for (uint64_t i = 0; i < sov_gguf_kv_count(g) && budget > 0; i++) {
        const char *key = sov_gguf_kv_key(g, i);
        touch_bytes(key, strlen(key) + 1);
        sov_gguf_type type;
        sov_gguf_kv_type(g, i, &type, NULL, NULL);
        const sov_gguf_array *array;
        sov_gguf_value v;
        if (type == SOV_GGUF_ARRAY) {
            if (sov_gguf_kv_array(g, i, &array) == SOV_OK) walk_array(array, &budget);
        } else if (sov_gguf_kv_value(g, i, 0, &v) == SOV_OK) {
            walk_value(&v, &budget);
        }
    }
    for (uint64_t i = 0; i < sov_gguf_tensor_count(g); i++) {
        sov_gguf_tensor_info t;
        if (sov_gguf_tensor_info_get(g, i, &t) == SOV_OK && t.data) touch_bytes(t.data, t.size);
    }
    sov_gguf_free(g);
    return 0;
}
