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

/* Patching engine vs the PyTorch oracle (issue acceptance), applied to
 * both the patched metric values and the normalised effects. Both sides
 * are fp32 models; the engine resumes from cached activations and packs
 * rows into different GEMM shapes, so sums are ordered differently. */
#define PB_TOL_TINY_EFFECT 1e-5
#define PB_TOL_SMOLLM2_EFFECT 1e-3

/* Invariants that hold exactly in real arithmetic (a batch of N rows vs
 * the N rows one by one; a self-patch vs the unpatched run), on the CPU
 * backend, absolute in the metric's units. OpenBLAS's result for one
 * row depends on how many rows share the sgemm call and on the row's slot
 * in its micro-tile (measured: bit differences for 10 of 16 slots), so
 * resuming from a cache or packing rows differently moves the last bits:
 * measured up to 3.3e-6 absolute on the tiny model, whose logits reach ~8. */
#define PB_TOL_INVARIANT_CPU 1e-5
/* The same invariants on the reference backend, whose rows are computed
 * independently of each other: only the bound applies. */
#define PB_TOL_INVARIANT_REF 1e-6

#endif
