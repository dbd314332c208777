#!/usr/bin/env python3
"""The PyTorch side of bench/gpu_prefill.c: transformers LlamaForCausalLM at
the llama3-8b shape with random weights, bf16, eager (no torch.compile),
the same batch of sequences (no padding), timed prefill forwards, printed
as tokens/s and TFLOP/s with a last line of JSON for scripts/gpu-check.sh.

    bench_torch_prefill.py [--layers 32] [--seqs 8] [--seq-len 1024] [--repeats 3]
                           [--logits all|last] [--attn sdpa] [--seed 1]

The model is built from a LlamaConfig directly on the GPU in bf16 (no CPU
init, no download); its random weights are not patchbay's (both are random
at the same shape: speed does not depend on the values, within reason).
--logits all keeps the logits of every position (transformers' default,
logits_to_keep=0), --logits last only each sequence's last one
(logits_to_keep=1); bench_gpu_prefill takes the same flag. FLOPs are
counted as bench_gpu_prefill counts them: projections, causal attention
(QK^T and PV over the triangle), unembedding of the kept rows.
Exit status 77 (skipped) when torch, transformers or a CUDA device is
missing.
"""
import argparse
import inspect
import json
import math
import sys
import time

SKIP = 77

# llama3-8b as published (config.json of Meta-Llama-3.1-8B), the shape
# host/model/model_random.c calls "llama3-8b".
LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
    tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
)


def llama3_inv_freq(head_dim, theta, factor, low, high, original):
    """Llama 3.1's scaled RoPE frequencies (what transformers' "llama3" rope
    type computes), to check the config took effect."""
    out = []
    for i in range(0, head_dim, 2):
        f = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / f
        if wavelen > original / low:
            f = f / factor
        elif wavelen >= original / high:
            smooth = (original / wavelen - low) / (high - low)
            f = (1 - smooth) * f / factor + smooth * f
        out.append(f)
    return out


def skip(message):
    print(f"bench_torch_prefill: skipping: {message}", flush=True)
    return SKIP


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (bench_gpu_prefill NAME:LAYERS)")
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--logits", choices=("all", "last"), default="all")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (transformers' default on GPU: sdpa)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if min(args.layers, args.seqs, args.seq_len, args.repeats) <= 0 or args.layers > 32:
        ap.error("--layers must be in 1..32; --seqs, --seq-len and --repeats positive")

    try:
        import torch
    except ImportError as e:
        return skip(f"no torch ({e})")
    if not torch.cuda.is_available():
        return skip(f"torch {torch.__version__} sees no CUDA device")
    try:
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        return skip(f"no transformers ({e})")

    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info()
    print(f"device           {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs), "
          f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB", flush=True)
    print(f"versions         torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"transformers {transformers.__version__}", flush=True)

    shape = dict(LLAMA3_8B, num_hidden_layers=args.layers)
    config = LlamaConfig(**shape, attn_implementation=args.attn)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    # Built on the GPU in bf16: parameters are created there, initialised by
    # transformers' own _init_weights (normal, std initializer_range).
    previous_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)
        built_in = "bf16"
    except (TypeError, RuntimeError):  # an old torch: build in fp32 and convert the parameters
        built_in = "fp32, parameters converted"
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    # Parameters only: model.to(bfloat16) would also round the float32 RoPE
    # buffer (inv_freq).
    for p in model.parameters():
        if p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
    model.eval()
    torch.cuda.synchronize()
    init_s = time.perf_counter() - t0
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    devices = sorted({str(p.device) for p in model.parameters()})
    if not all(x.startswith("cuda") for x in devices):
        raise RuntimeError(f"parameters ended up on {devices}, not the GPU")
    n_params = sum(p.numel() for p in model.parameters())
    attn = getattr(model.config, "_attn_implementation", None)
    print(f"model            LlamaForCausalLM, {args.layers} layers, {n_params / 1e9:.2f} B parameters "
          f"({', '.join(dtypes)}, built in {built_in}), attention '{attn}', eager (no torch.compile); "
          f"init {init_s:.1f} s", flush=True)

    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None and hasattr(rotary, "inv_freq"):
        want = llama3_inv_freq(head_dim, 500000.0, 8.0, 1.0, 4.0, 8192)
        got = rotary.inv_freq.float().cpu().tolist()
        ok = len(got) == len(want) and all(abs(g - w) <= 1e-3 * abs(w) + 1e-12 for g, w in zip(got, want))
        print(f"rope             llama3 scaling {'in effect' if ok else 'NOT in effect (config not understood)'}",
              flush=True)

    T, B = args.seq_len, args.seqs
    tokens = B * T
    gen = torch.Generator(device=device).manual_seed(args.seed)
    ids = torch.randint(0, c.vocab_size, (B, T), device=device, generator=gen)
    keep = 0 if args.logits == "all" else 1
    unembed_rows = tokens if keep == 0 else B

    d, qd = c.hidden_size, c.num_attention_heads * head_dim
    kvd, mlp, L = c.num_key_value_heads * head_dim, c.intermediate_size, args.layers
    gemm = 2.0 * tokens * L * (d * (qd + 2 * kvd) + qd * d + 3 * d * mlp) + 2.0 * unembed_rows * c.vocab_size * d
    attention = 4.0 * L * qd * B * T * (T + 1) / 2.0
    flops = gemm + attention

    # transformers >= 4.50 calls it logits_to_keep, 4.45-4.49 num_logits_to_keep;
    # older ones always keep every position.
    accepted = inspect.signature(model.forward).parameters
    keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in accepted), None)
    if keep_arg is None and keep != 0:
        raise RuntimeError(f"transformers {transformers.__version__} cannot keep only the last logits")
    extra = {keep_arg: keep} if keep_arg else {}

    def forward():
        out = model(input_ids=ids, **extra)
        torch.cuda.synchronize()
        return out

    print(f"batch            {B} sequences x {T} tokens = {tokens} tokens, no padding; logits of "
          f"{'every position' if keep == 0 else 'the last position of each sequence'}", flush=True)
    times = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = forward()
        print(f"warm-up          {time.perf_counter() - t0:.3f} s; logits {tuple(out.logits.shape)} "
              f"{out.logits.dtype}", flush=True)
        del out
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = forward()
            times.append(time.perf_counter() - t0)
            del out
    mean = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() / 2**30
    tflops = flops / mean * 1e-12
    print(f"pytorch prefill  {mean * 1e3:.1f} ms (best {min(times) * 1e3:.1f} ms)  {tokens / mean:.0f} tokens/s  "
          f"{tflops:.1f} TFLOP/s  ({flops * 1e-12:.2f} TFLOP per prefill); peak memory {peak:.1f} GiB", flush=True)
    print(json.dumps({
        "bench": "torch_prefill", "device": props.name, "torch": torch.__version__,
        "transformers": transformers.__version__, "attn_implementation": attn, "layers": L, "seqs": B,
        "seq_len": T, "tokens": tokens, "dtype": "bf16", "logits": args.logits, "repeats": args.repeats,
        "init_s": round(init_s, 3), "prefill_s": round(mean, 6), "prefill_best_s": round(min(times), 6),
        "tokens_per_s": round(tokens / mean, 1), "tflop_per_prefill": round(flops * 1e-12, 4),
        "tflops": round(tflops, 2), "peak_memory_gib": round(peak, 2),
    }), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # OOM and the like: say what, exit 1 (not a skip)
        print(f"bench_torch_prefill: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
