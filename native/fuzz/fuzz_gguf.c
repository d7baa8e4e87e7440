/* fuzz_gguf.c: a bounded, coverage-guided mutation fuzzer for the GGUF parser, built with ASan
 * and UBSan. The parser (gguf.c) is compiled with -fsanitize-coverage=trace-pc, which calls
 * __sanitizer_cov_trace_pc() at every basic block; this driver records the blocks reached. It
 * parses every corpus file, then for --seconds mutates inputs with a seeded RNG (bit flips, byte
 * sets, boundary integers, truncation, splices), parses each mutant, and keeps a mutant that
 * reaches a new block as a further input. A sanitizer report or a crash fails the run. Prints
 * executions, coverage (parser blocks reached) and the distinct outcomes. */
#include "sov.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------------------
 * Corpus
 * ------------------------------------------------------------------------------------- */

typedef struct input {
    uint8_t *data;
    size_t size;
} input;

static int load_corpus(const char *dir, input **out, size_t *n_out) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    size_t n = 0, cap = 16;
    input *items = malloc(cap * sizeof *items);
    struct dirent *e;
    while (items && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (size < 0 || size > (64l << 20)) {
            fclose(f);
            continue;
        }
        uint8_t *buf = malloc((size_t)size + 1);
        if (buf && fread(buf, 1, (size_t)size, f) == (size_t)size) {
            if (n == cap) items = realloc(items, (cap *= 2) * sizeof *items);
            if (items) items[n++] = (input){buf, (size_t)size};
        } else {
            free(buf);
        }
        fclose(f);
    }
    closedir(d);
    *out = items;
    *n_out = n;
    return items ? 0 : -1;
}

/* ---------------------------------------------------------------------------------------
 * Coverage: a bitmap of the parser's basic blocks, keyed by return address
 * ------------------------------------------------------------------------------------- */

#define COVERAGE_BITS (1u << 16)
static uint8_t coverage_seen[COVERAGE_BITS / 8];
static unsigned long coverage_blocks, coverage_new;

void __sanitizer_cov_trace_pc(void);
void __sanitizer_cov_trace_pc(void) {
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uint32_t h = (uint32_t)((pc * 0x9e3779b97f4a7c15ull) >> 48) & (COVERAGE_BITS - 1);
    if (!(coverage_seen[h >> 3] & (1u << (h & 7)))) {
        coverage_seen[h >> 3] |= (uint8_t)(1u << (h & 7));
        coverage_blocks++;
        coverage_new++;
    }
}

/* ---------------------------------------------------------------------------------------
 * Mutation
 * ------------------------------------------------------------------------------------- */

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t next_rand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t mutate(const input *src, const input *other, uint8_t *dst, size_t cap) {
    size_t size = src->size < cap ? src->size : cap;
    memcpy(dst, src->data, size);
    int rounds = 1 + (int)(next_rand() % 8);
    for (int r = 0; r < rounds && size > 0; r++) {
        size_t at = (size_t)(next_rand() % size);
        switch (next_rand() % 6) {
        case 0: dst[at] ^= (uint8_t)(1u << (next_rand() % 8)); break;
        case 1: dst[at] = (uint8_t)next_rand(); break;
        case 2: { /* a boundary integer at a random offset, where counts and offsets live */
            static const uint64_t boundaries[] = {0, 1, 0x7f, 0xff, 0xffff, 0x7fffffffull, 0xffffffffull, 0x7fffffffffffffffull, UINT64_MAX};
            uint64_t v = boundaries[next_rand() % (sizeof boundaries / sizeof boundaries[0])];
            size_t width = (next_rand() & 1) ? 8 : 4;
            if (at + width <= size) memcpy(dst + at, &v, width);
            break;
        }
        case 3: size = at; break; /* truncate */
        case 4: { /* splice a piece of another input */
            if (other->size == 0) break;
            size_t from = (size_t)(next_rand() % other->size), len = (size_t)(next_rand() % 64);
            if (from + len > other->size) len = other->size - from;
            if (at + len > size) len = size - at;
            memcpy(dst + at, other->data + from, len);
            break;
        }
        default: { /* small-integer change, as to a type or a dimension */
            dst[at] = (uint8_t)(dst[at] + (int)(next_rand() % 17) - 8);
            break;
        }
        }
    }
    return size;
}

/* ---------------------------------------------------------------------------------------
 * Driver
 * ------------------------------------------------------------------------------------- */

/* Walks everything a parsed file exposes, so that the sanitizers see every read. */
static void exercise(const uint8_t *data, size_t size, unsigned long *outcomes) {
    sov_gguf *g = NULL;
    sov_status st = sov_gguf_open_memory(data, size, &g);
    outcomes[st < 16 ? st : 15]++;
    if (st != SOV_OK) return;
    for (uint64_t i = 0; i < sov_gguf_kv_count(g); i++) {
        sov_gguf_type type, et;
        uint64_t len;
        sov_gguf_kv_type(g, i, &type, &et, &len);
        for (uint64_t e = 0; e < len && e < 64; e++) {
            sov_gguf_value v;
            if (sov_gguf_kv_value(g, i, e, &v) == SOV_OK && v.type == SOV_GGUF_STRING && v.as.str.size > 0) {
                volatile char c = v.as.str.data[v.as.str.size - 1];
                (void)c;
            }
        }
    }
    for (uint64_t i = 0; i < sov_gguf_tensor_count(g); i++) {
        sov_gguf_tensor_info t;
        sov_gguf_tensor_info_get(g, i, &t);
        if (t.data && t.size > 0) {
            volatile uint8_t c = ((const uint8_t *)t.data)[t.size - 1];
            (void)c;
        }
    }
    sov_gguf_free(g);
}

int main(int argc, char **argv) {
    double seconds = 10.0;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) seconds = atof(argv[++i]);
        else dir = argv[i];
    }
    if (!dir) {
        fprintf(stderr, "usage: fuzz_gguf [--seconds N] CORPUS_DIR\n");
        return 2;
    }
    input *corpus;
    size_t n;
    if (load_corpus(dir, &corpus, &n) != 0 || n == 0) {
        fprintf(stderr, "fuzz_gguf: no corpus files in %s\n", dir);
        return 2;
    }
    unsigned long outcomes[16] = {0};
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        exercise(corpus[i].data, corpus[i].size, outcomes);
        if (corpus[i].size > cap) cap = corpus[i].size;
    }
    uint8_t *buf = malloc(cap ? cap : 1);
    unsigned long execs = n, kept = 0;
    unsigned long seed_blocks = coverage_blocks;
    size_t corpus_cap = n;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        for (int k = 0; k < 64; k++) {
            const input *a = &corpus[next_rand() % n], *b = &corpus[next_rand() % n];
            size_t size = mutate(a, b, buf, cap);
            /* an exact-size copy, so that ASan catches a read one byte past the end */
            uint8_t *exact = malloc(size ? size : 1);
            memcpy(exact, buf, size);
            coverage_new = 0;
            exercise(exact, size, outcomes);
            execs++;
            if (coverage_new > 0 && size > 0) { /* reached a new block: keep it as an input */
                if (n == corpus_cap) {
                    input *grown = realloc(corpus, (corpus_cap *= 2) * sizeof *corpus);
                    if (!grown) { free(exact); continue; }
                    corpus = grown;
                }
                corpus[n++] = (input){exact, size};
                kept++;
            } else {
                free(exact);
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((double)(now.tv_sec - start.tv_sec) + 1e-9 * (double)(now.tv_nsec - start.tv_nsec) >= seconds) break;
    }
    int reached = 0;
    for (int s = 0; s < 16; s++) reached += outcomes[s] > 0;
    printf("fuzz_gguf: %lu executions in %.0f s; coverage: %lu parser blocks (%lu from the seed corpus), "
           "%lu inputs kept for new coverage; %d distinct outcomes:",
           execs, seconds, coverage_blocks, seed_blocks, kept, reached);
    for (int s = 0; s < 16; s++)
        if (outcomes[s]) printf(" %s=%lu", sov_status_message((sov_status)s), outcomes[s]);
    printf("\n");
    for (size_t i = 0; i < n; i++) free(corpus[i].data);
    free(corpus);
    free(buf);
    return 0;
}
