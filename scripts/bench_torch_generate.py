#!/usr/bin/env python3
"""The transformers baseline of bench/generate.sh: the same chat-templated
prompts bench_generate decoded (read from its --ids-out JSON), as one batch
through `model.generate` (left padding, attention mask, greedy, KV cache),
timed, printed as tokens/s; and how many continuations equal the engine's.

    bench_torch_generate.py MODEL.gguf IDS.json [--threads T]

Tokens are counted as the engine counts them: each continuation's tokens up
to and including its first eos (transformers keeps padding finished rows).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("ids", type=Path)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    data = json.loads(args.ids.read_text())
    prompts, engine = data["prompts"], data["continuations"]
    max_new = data["max_new_tokens"]
    path = args.model.resolve()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    pad = eos if model.generation_config.pad_token_id is None else model.generation_config.pad_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as batched generation needs
        input_ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    kwargs = dict(attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=pad,
                  eos_token_id=eos, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        model.generate(input_ids[:2], **{**kwargs, "attention_mask": mask[:2], "max_new_tokens": 2})  # warm-up
        t0 = time.perf_counter()
        out = model.generate(input_ids, **kwargs)
        seconds = time.perf_counter() - t0
    tokens, same = 0, 0
    for i in range(len(prompts)):
        row = out[i, width:].tolist()
        n = row.index(eos) + 1 if eos in row else len(row)
        tokens += n
        same += row[:n] == engine[i]
    print(f"transformers      {len(prompts)} prompts, one generate call: {tokens} tokens in {seconds:.3f} s, "
          f"{tokens / seconds:.1f} tokens/s, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"transformers      {same}/{len(prompts)} greedy continuations identical to the engine's")
    print(f"RESULT torch_tokens_per_s={tokens / seconds:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
