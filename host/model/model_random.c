/* Named shapes (hyperparameters as published in each model's config.json)
 * and a counter-based generator: splitmix64 of (seed, tensor, element), so
 * a weight is the same whichever backend, dtype or thread count fills it. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/internal.h"
#include "model/model_random.h"

typedef struct named_shape {
    const char *name;
    pb_model_config cfg;
} named_shape;

/* The architecture fields of a Llama-family shape: nothing beyond Llama. */
#define LLAMA_BASELINE                                                                                             \
    PB_ACTIVATION_SILU, 0, 0, 0.0f, 0.0f, 0.0f, 0.0f, 0, 0, 0.0f, PB_NORM_RMS, PB_POSITION_ROPE, 0, 0, 0, 0, 0, 0, \
        0.0f, {0}, {                                                                                               \
        0                                                                                                          \
    }

/* arch, layers, d_model, heads, kv heads, head_dim, d_mlp, vocab, context,
 * eps, theta, scaling, factor, low, high, original context, qkv bias, tied,
 * bos, eos, then the architecture fields */
static const named_shape shapes[] = {
    {"tiny", {"llama", 4, 64, 4, 2, 16, 176, 512, 2048,          1e-5f, 10000.0f, PB_ROPE_SCALING_NONE,
              0,       0, 0,  0, 0, 1,  -1,  -1,  LLAMA_BASELINE}},
    {"smollm2-135m", {"llama", 30, 576, 9, 3, 64, 1536, 49152, 8192,          1e-5f, 100000.0f, PB_ROPE_SCALING_NONE,
                      0,       0,  0,   0, 0, 1,  -1,   -1,    LLAMA_BASELINE}},
    {"llama3-8b",
     {"llama", 32,   4096, 32,   8, 128, 14336, 128256, 131072,        1e-5f, 500000.0f, PB_ROPE_SCALING_LLAMA3,
      8.0f,    1.0f, 4.0f, 8192, 0, 0,   -1,    -1,     LLAMA_BASELINE}},
    {"llama3-70b",
     {"llama", 80,   8192, 64,   8, 128, 28672, 128256, 131072,        1e-5f, 500000.0f, PB_ROPE_SCALING_LLAMA3,
      8.0f,    1.0f, 4.0f, 8192, 0, 0,   -1,    -1,     LLAMA_BASELINE}},
    {"qwen2-7b", {"qwen2", 28, 3584, 28, 4, 128, 18944, 152064, 32768,         1e-6f, 1000000.0f, PB_ROPE_SCALING_NONE,
                  0,       0,  0,    0,  1, 0,   -1,    -1,     LLAMA_BASELINE}},
    /* google/gemma-3-270m: beyond Llama in every architecture field */
    {"gemma3-270m",
     {.arch = "gemma3",
      .n_layers = 18,
      .d_model = 640,
      .n_heads = 4,
      .n_kv_heads = 1,
      .head_dim = 256,
      .d_mlp = 2048,
      .vocab_size = 262144,
      .context_length = 32768,
      .rms_eps = 1e-6f,
      .rope_theta = 1000000.0f,
      .rope_scaling = PB_ROPE_SCALING_NONE,
      .tied_embeddings = 1,
      .bos_id = -1,
      .eos_id = -1,
      .activation = PB_ACTIVATION_GELU_TANH,
      .qk_norm = 1,
      .sandwich_norm = 1,
      .embed_scale = 25.298221281347036f, /* sqrt(640) */
      .attn_scale = 0.0625f,              /* query_pre_attn_scalar 256 ^ -1/2 */
      .sliding_window = 512,
      .sliding_period = 6,
      .rope_theta_local = 10000.0f}},
};

const char *pb_model_random_names(void) { return "tiny, smollm2-135m, llama3-8b, llama3-70b, qwen2-7b, gemma3-270m"; }

pb_status pb_random_config(pb_model_config *out, const char *spec) {
    if (!spec || !*spec)
        return pb_fail(PB_ERR_ARG, "random model: empty name (expected one of %s, optionally :LAYERS)",
                       pb_model_random_names());
    const char *colon = strchr(spec, ':');
    size_t name_len = colon ? (size_t)(colon - spec) : strlen(spec);
    const named_shape *found = NULL;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (strlen(shapes[i].name) == name_len && memcmp(shapes[i].name, spec, name_len) == 0)
            found = &shapes[i];
    if (!found)
        return pb_fail(PB_ERR_ARG, "random model '%.*s' is unknown (known: %s)", (int)name_len, spec,
                       pb_model_random_names());
    *out = found->cfg;
    if (colon) {
        char *end = NULL;
        errno = 0;
        long layers = strtol(colon + 1, &end, 10);
        if (errno || end == colon + 1 || (*end && *end != ':') || layers < 1 || layers > found->cfg.n_layers)
            return pb_fail(PB_ERR_ARG, "random model '%s': layer count '%.*s' must be an integer in [1, %d]", spec,
                           (int)strcspn(colon + 1, ":"), colon + 1, found->cfg.n_layers);
        out->n_layers = (int)layers;
    }
    return PB_OK;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void pb_random_fill(float *out, size_t n, uint64_t seed, int tensor, pb_random_kind kind) {
    pb_random_fill_from(out, 0, n, seed, tensor, kind);
}

void pb_random_fill_from(float *out, uint64_t first, size_t n, uint64_t seed, int tensor, pb_random_kind kind) {
    /* uniform on [-a, a] has standard deviation a / sqrt(3) */
    const float half_width = kind == PB_RANDOM_NORM ? 0.1f : 0.02f * sqrtf(3.0f);
    const float center = kind == PB_RANDOM_NORM ? 1.0f : 0.0f;
    const uint64_t key = splitmix64(splitmix64(seed) ^ (uint64_t)(tensor + 1) * 0xd1b54a32d192ed03ull);
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        uint64_t bits = splitmix64(key + (first + (uint64_t)i) * 0x9e3779b97f4a7c15ull);
        float unit = (float)(bits >> 40) * (1.0f / 16777216.0f); /* [0, 1), 24 bits */
        out[i] = center + half_width * (2.0f * unit - 1.0f);
    }
}
