#!/usr/bin/env python3
"""Checks data/refusal_pairs.json: every harmful/harmless pair has the same
token length once chat-templated (one user turn, the model's own template
and default system prompt, add_generation_prompt=True) under a model's
tokenizer; ids are unique; both splits are present; no text repeats.

  scripts/check_pairs.py [--model GGUF-or-HF-dir] [--pairs data/refusal_pairs.json]

Prints each offending pair with both lengths and exits 1 on any failure.
Needs transformers (and gguf for a .gguf model); no network.
"""
import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PAIRS = ROOT / "data" / "refusal_pairs.json"
SPLITS = ("train", "validation")


def load_tokenizer(model):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    model = pathlib.Path(model)
    if model.is_file():  # a .gguf: transformers reads its tokenizer and chat template
        return AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    return AutoTokenizer.from_pretrained(str(model))


def templated_length(tokenizer, text):
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    # The template spells its special tokens (and BOS where it has one).
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def check(pairs_doc, tokenizer):
    errors = []
    pairs = pairs_doc.get("pairs")
    if not isinstance(pairs, list) or not pairs:
        return ["no \"pairs\" list"]
    ids = [p.get("id") for p in pairs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        errors.append(f"duplicate ids: {dup}")
    splits = {p.get("split") for p in pairs}
    for s in SPLITS:
        if s not in splits:
            errors.append(f"split \"{s}\" has no pairs")
    unknown = splits - set(SPLITS)
    if unknown:
        errors.append(f"unknown splits: {sorted(map(str, unknown))}")
    seen = {}
    for p in pairs:
        for k in ("harmful", "harmless"):
            t = p.get(k)
            if not isinstance(t, str) or not t.strip():
                errors.append(f"pair {p.get('id')}: missing {k} text")
                continue
            if t in seen:
                errors.append(f"pair {p.get('id')}: {k} text {t!r} repeats pair {seen[t]}")
            seen[t] = p.get("id")
        if not p.get("category"):
            errors.append(f"pair {p.get('id')}: no category")
    if tokenizer is not None:
        bad = 0
        for p in pairs:
            if not isinstance(p.get("harmful"), str) or not isinstance(p.get("harmless"), str):
                continue
            a = templated_length(tokenizer, p["harmful"])
            b = templated_length(tokenizer, p["harmless"])
            if a != b:
                bad += 1
                errors.append(f"pair {p.get('id')}: templated lengths differ: harmful {a} tokens "
                              f"({p['harmful']!r}) vs harmless {b} tokens ({p['harmless']!r})")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="a .gguf file or a Hugging Face model folder")
    ap.add_argument("--pairs", default=str(DEFAULT_PAIRS))
    args = ap.parse_args()
    doc = json.loads(pathlib.Path(args.pairs).read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(args.model)
    errors = check(doc, tokenizer)
    pairs = doc.get("pairs", [])
    counts = {s: sum(1 for p in pairs if p.get("split") == s) for s in SPLITS}
    for e in errors:
        print("FAIL", e)
    print(f"{args.pairs}: {len(pairs)} pairs ({', '.join(f'{s} {n}' for s, n in counts.items())}) under "
          f"{pathlib.Path(args.model).name}: {'OK' if not errors else f'{len(errors)} problems'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
