/* Every numeric tolerance the tests use, with the reason for its value. */
#ifndef PB_TOLERANCES_H
#define PB_TOLERANCES_H

/* Fast CPU op vs the naive reference op. The reference accumulates in
 * double; the fast path in fp32 (sgemm, attention): relative error per
 * element ~ sqrt(k) * 2^-24, whose square stays far below 1e-10. */
#define PB_TOL_OP_NMSE 1e-10
/* Elementwise ops do the same fp32 arithmetic in both: near-exact. */
#define PB_TOL_ELEMENTWISE_NMSE 1e-12

/* Tiny models vs transformers (issue acceptance): every hook point NMSE and
 * logits max |diff|. Both sides compute in fp32 with different summation
 * orders; the models are small, so errors stay ~1e-7 relative. */
#define PB_TOL_TINY_HOOK_NMSE 1e-10
#define PB_TOL_TINY_LOGITS_MAX_ABS 1e-4

/* SmolLM2 (30 layers, fp32) vs transformers: logits NMSE per position. */
#define PB_TOL_SMOLLM2_LOGITS_NMSE 1e-7
/* Argmax must agree where the reference's top-two gap exceeds this. */
#define PB_TOL_SMOLLM2_ARGMAX_GAP 1e-3

/* The same weights read from GGUF (F32) and from safetensors give the same
 * model up to summation order only. */
#define PB_TOL_FORMAT_LOGITS_MAX_ABS 1e-5

#endif
