#!/usr/bin/env python3
"""Reference ids of every shipped prompt (data/refusal_pairs.json) under
SmolLM2's chat template, from transformers' apply_chat_template on the
tokenizer loaded from the same GGUF. Writes
tests/fixtures/tokenizer/refusal_pairs_chat_ids.json.

    make_prompt_ids_fixture.py [MODEL.gguf]
"""
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

root = Path(__file__).resolve().parent.parent
model = Path(sys.argv[1] if len(sys.argv) > 1 else root / "models/SmolLM2-135M-Instruct.Q4_1.gguf").resolve()
tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
data = json.loads((root / "data/refusal_pairs.json").read_text())
prompts = []
for pair in data["pairs"]:
    for side in ("harmful", "harmless"):
        text = pair[side]
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        prompts.append({"id": pair["id"], "side": side, "text": text, "ids": list(map(int, ids))})
out = {"magic": "patchbay-fixture", "version": 1, "generator": "scripts/make_prompt_ids_fixture.py",
       "reference": "transformers apply_chat_template(add_generation_prompt=True, tokenize=True), tokenizer from "
                    + model.name, "prompts": prompts}
path = root / "tests/fixtures/tokenizer/refusal_pairs_chat_ids.json"
path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
print(f"{len(prompts)} prompts -> {path}")
