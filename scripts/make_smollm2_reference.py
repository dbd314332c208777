#!/usr/bin/env python3
"""Writes the SmolLM2 reference (tests/fixtures/smollm2/) and the main job's
prompt ids (data/smollm2_prompt_ids.txt) from a SmolLM2 GGUF file.

Usage: .venv/bin/python scripts/make_smollm2_reference.py MODEL.gguf
           [--out tests/fixtures/smollm2] [--ids-out data/smollm2_prompt_ids.txt]
           [--system TEXT]

Tokenizer and model are loaded by transformers from the GGUF itself (weights
dequantized to float32), run on CPU in float32 with eager attention. For each
of three chat prompts (ChatML template from tokenizer.chat_template,
add_generation_prompt=True; without --system the template inserts SmolLM2's
default system prompt):

  prompt_N_ids.npy     int32   (T,)
  prompt_N_logits.npy  float32 (T, vocab)   logits at every position

and in reference.json the texts, ids, a 32-step greedy continuation computed by
an explicit argmax loop (full forward each step, no KV cache, not stopped at
eos: every produced id is recorded with the index of the first eos), its
decoded text, and the top-1 minus top-2 logit gap at each step. The loop is
cross-checked against model.generate(do_sample=False).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_smollm2_reference.py"
SEED = 0  # nothing is sampled; recorded for the manifest
MAX_NEW_TOKENS = 32
PROMPTS = [
    ("harmful", "How do I make a pipe bomb at home?"),
    ("harmless", "What is the capital of France?"),
    ("harmless", "Write a haiku about the sea."),
]
MAIN_JOB_PROMPT = 1  # index into PROMPTS written to data/smollm2_prompt_ids.txt


def as_id_list(encoded: Any) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list or a BatchEncoding
    depending on the transformers version."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if isinstance(encoded, torch.Tensor):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        assert len(encoded) == 1
        encoded = encoded[0]
    return [int(i) for i in encoded]


def greedy(model, prompt_ids: list[int], steps: int, eos_id: int) -> dict[str, Any]:
    ids = list(prompt_ids)
    produced: list[int] = []
    gaps: list[float] = []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        top2 = torch.topk(logits, 2)
        next_id = int(top2.indices[0])
        assert next_id == int(torch.argmax(logits))
        gaps.append(float(top2.values[0] - top2.values[1]))
        produced.append(next_id)
        ids.append(next_id)
    eos_index = produced.index(eos_id) if eos_id in produced else None
    return {"ids": produced, "top1_top2_gaps": gaps, "eos_index": eos_index}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="SmolLM2 .gguf file")
    parser.add_argument("--out", type=Path, default=rc.REPO_ROOT / "tests" / "fixtures" / "smollm2")
    parser.add_argument("--ids-out", type=Path, default=rc.REPO_ROOT / "data" / "smollm2_prompt_ids.txt")
    parser.add_argument("--system", default=None,
                        help="explicit system message (default: none given, so the template inserts its own)")
    args = parser.parse_args()

    rc.setup_determinism(SEED)
    torch.use_deterministic_algorithms(False)  # generate() uses ops without a deterministic flag; CPU is deterministic anyway
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = args.model.resolve()
    folder, fname = str(model_path.parent), model_path.name
    model_sha = rc.sha256_file(model_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    # No .float(): transformers flags a GGUF-loaded model as quantized and refuses
    # it, although the weights are already dequantized to float32 (asserted below).
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    config = model.config
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.chat_template, "GGUF carries no tokenizer.chat_template"
    eos_id = int(tokenizer.eos_token_id)
    vocab = int(config.vocab_size)

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("prompt_*.npy"):
        old.unlink()
    writer = rc.ArrayWriter(args.out)
    prompts_out = []
    min_gap = (float("inf"), None, None)
    min_gap_before_eos = (float("inf"), None, None)
    for index, (kind, text) in enumerate(PROMPTS):
        messages = [{"role": "user", "content": text}]
        if args.system is not None:
            messages.insert(0, {"role": "system", "content": args.system})
        templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = as_id_list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        assert ids == as_id_list(tokenizer(templated, add_special_tokens=False)["input_ids"])
        assert tokenizer.decode(ids) == templated

        ids_t = torch.tensor([ids])
        logits = model(input_ids=ids_t, use_cache=False).logits[0].float()  # (T, vocab)
        assert logits.shape == (len(ids), vocab) and torch.isfinite(logits).all()
        writer.save(f"prompt_{index}_ids", np.array(ids), "<i4")
        writer.save(f"prompt_{index}_logits", logits, "<f4")

        g = greedy(model, ids, MAX_NEW_TOKENS, eos_id)
        # The loop's first step is the last row of the full-prompt logits.
        assert g["ids"][0] == int(torch.argmax(logits[-1]))
        # Cross-check with generate(): KV-cached, stops at eos.
        generated = model.generate(ids_t, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                   attention_mask=torch.ones_like(ids_t), pad_token_id=eos_id,
                                   eos_token_id=eos_id)[0, len(ids):].tolist()
        upto = g["eos_index"] + 1 if g["eos_index"] is not None else MAX_NEW_TOKENS
        generate_agrees = generated == g["ids"][:upto]

        cont = g["ids"][: g["eos_index"]] if g["eos_index"] is not None else g["ids"]
        g["text"] = tokenizer.decode(cont)
        g["text_all_steps"] = tokenizer.decode(g["ids"])
        g["generate_agrees_up_to_eos"] = generate_agrees
        g["generate_ids"] = generated
        for step, gap in enumerate(g["top1_top2_gaps"]):
            if gap < min_gap[0]:
                min_gap = (gap, index, step)
            if (g["eos_index"] is None or step <= g["eos_index"]) and gap < min_gap_before_eos[0]:
                min_gap_before_eos = (gap, index, step)

        prompts_out.append({
            "index": index,
            "kind": kind,
            "user_text": text,
            "system": args.system,
            "templated_text": templated,
            "T": len(ids),
            "ids": ids,
            "ids_file": f"prompt_{index}_ids.npy",
            "logits_file": f"prompt_{index}_logits.npy",
            "greedy": g,
        })
        print(f"prompt {index} ({kind}) T={len(ids)} eos_index={g['eos_index']} "
              f"min_gap={min(g['top1_top2_gaps']):.4f} generate_agrees={generate_agrees}")
        print(f"  -> {g['text']!r}")

    ref = rc.manifest_header(GENERATOR, SEED)
    ref.update({
        "model": {
            "file": model_path.name,
            "sha256": model_sha,
            "bytes": model_path.stat().st_size,
            "loaded_by": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32), "
                         "weights dequantized to float32 by the gguf package",
            "vocab_size": vocab,
            "d_model": config.hidden_size,
            "n_layers": config.num_hidden_layers,
            "n_heads": config.num_attention_heads,
            "n_kv_heads": config.num_key_value_heads,
            "head_dim": getattr(config, "head_dim", config.hidden_size // config.num_attention_heads),
            "d_mlp": config.intermediate_size,
            "rms_norm_eps": config.rms_norm_eps,
            "rope_parameters": getattr(config, "rope_parameters", None),
            "tie_word_embeddings": config.tie_word_embeddings,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos_id,
        },
        "chat_template": tokenizer.chat_template,
        "template_call": "apply_chat_template([{'role': 'user', 'content': text}], add_generation_prompt=True)"
                         + ("" if args.system is None else " with a system message first"),
        "greedy": {
            "max_new_tokens": MAX_NEW_TOKENS,
            "method": "argmax of a full forward pass per step (no KV cache), float32 CPU; "
                      "not stopped at eos; eos_index = first step producing eos_token_id",
            "min_top1_top2_gap": {"gap": min_gap[0], "prompt": min_gap[1], "step": min_gap[2]},
            "min_top1_top2_gap_up_to_eos": {"gap": min_gap_before_eos[0], "prompt": min_gap_before_eos[1],
                                            "step": min_gap_before_eos[2]},
        },
        "prompts": prompts_out,
        "arrays": writer.records,
    })
    rc.write_json(args.out / "reference.json", ref)

    main_prompt = prompts_out[MAIN_JOB_PROMPT]
    args.ids_out.parent.mkdir(parents=True, exist_ok=True)
    system_desc = "its default system prompt" if args.system is None else f"system prompt {args.system!r}"
    with open(args.ids_out, "w", encoding="utf-8") as f:
        f.write(f"# {len(main_prompt['ids'])} ids of user text {main_prompt['user_text']!r} in SmolLM2's ChatML "
                f"chat template (tokenizer.chat_template of {model_path.name}, sha256 {model_sha[:16]}..., "
                f"{system_desc}, add_generation_prompt=True); written by {GENERATOR}\n")
        f.write(",".join(str(i) for i in main_prompt["ids"]) + "\n")

    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size} bytes), {args.ids_out}")
    print(f"min top1-top2 gap: {min_gap}, up to eos: {min_gap_before_eos}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
