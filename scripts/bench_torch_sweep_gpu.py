#!/usr/bin/env python3
"""The PyTorch baseline of the GPU sweep benchmark: the default sweep
(resid_pre, attn_out, mlp_out at every layer and position; z for every head
at the last position) run the way TransformerLens-style tools run it --
transformers with forward hooks, one full forward per site -- on a random
model of a named shape, on a sampled subset of the rows, timed.

    bench_torch_sweep_gpu.py [--shape llama3-8b] [--layers N] [--T 64]
                             [--rows 200] [--dtype bf16] [--device cuda]

Denoising: the corrupted run with one site restored from the clean run; the
metric is the logit difference of two tokens at the last position. Prints
rows/s and a line `RESULT torch_rows_per_s=...`. Exit 77 when the device is
not available.
"""
import argparse
import json
import random
import sys
import time

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab, rope theta, tied
    "tiny": (64, 4, 4, 2, 176, 512, 10000.0, True),
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, 100000.0, True),
    "llama3-8b": (4096, 32, 32, 8, 14336, 128256, 500000.0, False),
    "llama3-70b": (8192, 80, 64, 8, 28672, 128256, 500000.0, False),
}


def build(shape: str, layers: int, dtype, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    hidden, n_layers, heads, kv, inter, vocab, theta, tied = SHAPES[shape]
    # rope scaling goes to the constructor: transformers 5 folds rope_theta
    # and rope_scaling into rope_parameters there, and ignores (then trips
    # over) an attribute set afterwards
    rope_scaling = None
    if shape.startswith("llama3"):
        rope_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers or n_layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab, rope_theta=theta,
                      rope_scaling=rope_scaling, tie_word_embeddings=tied, max_position_embeddings=8192,
                      rms_norm_eps=1e-5)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval(), cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=0, help="keep the first N layers (0: all)")
    ap.add_argument("--T", type=int, default=64, help="prompt length")
    ap.add_argument("--rows", type=int, default=200, help="rows sampled")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("skipping: torch is not installed")
        return 77
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipping: torch sees no CUDA device")
        return 77
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    t_load = time.perf_counter()
    model, cfg = build(args.shape, args.layers, dtype, args.device)
    t_load = time.perf_counter() - t_load
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    hd = cfg.hidden_size // H
    T, V = args.T, cfg.vocab_size
    rng = random.Random(args.seed)
    clean = [rng.randrange(V) for _ in range(T)]
    corrupted = list(clean)
    for p in (T // 3, T // 2):  # two changed tokens, as in the C benchmark
        corrupted[p] = (clean[p] + 101) % V
    pos_id, neg_id = rng.randrange(V), rng.randrange(V)
    layers = model.model.layers

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # The clean run's activations at every hook point the sweep reads.
    cache = {}
    handles = []
    for l, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, l=l: cache.__setitem__(("resid_pre", l), a[0].detach().clone())))
        handles.append(layer.self_attn.o_proj.register_forward_hook(
            lambda m, a, o, l=l: cache.__setitem__(("attn_out", l), o.detach().clone())))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, l=l: cache.__setitem__(("z", l), a[0].detach().clone())))
        handles.append(layer.mlp.register_forward_hook(
            lambda m, a, o, l=l: cache.__setitem__(("mlp_out", l), o.detach().clone())))
    ids_clean = torch.tensor([clean], device=args.device)
    ids_corr = torch.tensor([corrupted], device=args.device)
    with torch.no_grad():
        model(ids_clean)
    for h in handles:
        h.remove()

    rows = [(c, l, p, -1) for c in ("resid_pre", "attn_out", "mlp_out") for l in range(L) for p in range(T)]
    rows += [("z", l, T - 1, h) for l in range(L) for h in range(H)]
    sample = rows[:]
    rng.shuffle(sample)
    sample = sample[: args.rows]

    def patched_metric(component, l, p, h):
        src = cache[(component, l)]
        layer = layers[l]
        if component == "resid_pre":
            def hook(m, a):
                x = a[0].clone()
                x[:, p] = src[:, p]
                return (x,) + tuple(a[1:])
            handle = layer.register_forward_pre_hook(hook)
        elif component == "z":
            def hook(m, a):
                x = a[0].clone()
                x[:, p, h * hd:(h + 1) * hd] = src[:, p, h * hd:(h + 1) * hd]
                return (x,) + tuple(a[1:])
            handle = layer.self_attn.o_proj.register_forward_pre_hook(hook)
        else:
            module = layer.self_attn.o_proj if component == "attn_out" else layer.mlp

            def hook(m, a, o):
                o = o.clone()
                o[:, p] = src[:, p]
                return o
            handle = module.register_forward_hook(hook)
        try:
            logits = model(ids_corr).logits
            return (logits[0, -1, pos_id] - logits[0, -1, neg_id]).item()
        finally:
            handle.remove()

    with torch.no_grad():
        patched_metric(*sample[0])  # warm-up
        sync()
        t0 = time.perf_counter()
        for row in sample:
            patched_metric(*row)
        sync()
        seconds = time.perf_counter() - t0
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"pytorch loop      {len(sample)} of {len(rows)} rows sampled, one full forward each (T = {T}), "
          f"{seconds:.3f} s on {name}, {args.shape} x {L} layers {args.dtype}, torch {torch.__version__}, "
          f"attention {cfg._attn_implementation}, model built in {t_load:.1f} s")
    print(f"pytorch rows/s    {len(sample) / seconds:.2f}")
    print(f"RESULT torch_rows_per_s={len(sample) / seconds:.4f} rows={len(rows)}")
    print(json.dumps({"bench": "torch_sweep", "device": name, "shape": args.shape, "layers": L, "T": T,
                      "dtype": args.dtype, "rows_sampled": len(sample), "rows": len(rows), "seconds": seconds,
                      "rows_per_s": len(sample) / seconds, "torch": torch.__version__,
                      "attention": cfg._attn_implementation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
