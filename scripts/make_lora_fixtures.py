"""LoRA adapters and their reference outputs, from PEFT on transformers: the
fixtures of patchbay's adapter merge (host/model/adapter.c,
tests/test_adapter.c; issue 19).

For tiny models of tests/fixtures, three with a different way of holding
their projections, a PEFT LoRA adapter with random A and B
(init_lora_weights=False, seeded) on every projection of every layer:

  tiny_gqa    Llama: separate q/k/v/o and gate/up/down (r 4, alpha 8; its
              GGUF stores Q/K rows permuted for RoPE)
  tiny_phi3   Phi-3: fused qkv_proj and gate_up_proj (r 4, alpha 4, rsLoRA)
  tiny_gpt2   GPT-2: Conv1D weights stored (in, out), fused c_attn
              (fan_in_fan_out, r 2, alpha 3)

The reference runs the PEFT model unmerged (the base weights plus the
low-rank path, as PEFT computes it) in float32 on the model's ids.npy and
keeps the logits and every hook point, captured as for the tiny models
themselves (refgen_common.capture_hooks_arch / _classic). Written to
tests/fixtures/lora/<model>/: adapter_config.json and
adapter_model.safetensors (PEFT's save_pretrained), logits.npy, one .npy
per hook point and reference.json. A fourth,
tiny_qwen3 (r 3, alpha 5), and tiny_gqa are also converted to llama.cpp's
GGUF LoRA (adapter.gguf, f32) by llama.cpp's own convert_lora_to_gguf.py
(which interleaves tiny_gqa's Q/K rows of B as for its base), so both
formats are checked against the same reference. Needs torch, transformers,
peft and numpy (and llama.cpp's source for the GGUF files: the
vendor/llama.cpp folder of the llama-cpp-python 0.3.36 sdist on PyPI); CI
reads the committed files only.

  python scripts/make_lora_fixtures.py [--models tiny_gqa,...] [--llama-cpp DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refgen_common as rc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "lora"

MODELS = {
    "tiny_gqa": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]),
    "tiny_phi3": dict(r=4, lora_alpha=4, use_rslora=True,
                      target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "tiny_gpt2": dict(r=2, lora_alpha=3, fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "c_fc"]),
    "tiny_qwen3": dict(r=3, lora_alpha=5, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"]),
}
CLASSIC = ["tiny_phi3", "tiny_gpt2"]  # refgen_common.capture_hooks_classic's families
# converted to llama.cpp's GGUF LoRA by its own convert_lora_to_gguf.py (f32)
GGUF = ["tiny_gqa", "tiny_qwen3"]


def reference(name: str, settings: dict) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = FIXTURES / name
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    torch.manual_seed(0)
    config = LoraConfig(init_lora_weights=False, lora_dropout=0.0, bias="none", **settings)
    peft_model = get_peft_model(model, config)
    peft_model.eval()
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = f"tests/fixtures/{name}"  # not this machine's path
    cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set's order
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    ids = torch.tensor(np.load(folder / "ids.npy").astype(np.int64)).reshape(1, -1)
    # every hook point, by the tiny models' own capture (forward hooks on the
    # modules, which PEFT has wrapped: the adapted outputs)
    capture = rc.capture_hooks_classic if name in CLASSIC else rc.capture_hooks_arch
    with torch.no_grad():
        logits, acts = capture(peft_model.base_model.model, ids)
        direct = peft_model(input_ids=ids).logits[0]
    assert torch.equal(logits, direct), "the capture changed the forward"
    logits = logits.float().numpy()
    np.save(out / "logits.npy", logits.astype(np.float32))
    hooks = sorted(acts)
    for hook in hooks:
        np.save(out / f"{hook}.npy", acts[hook].float().numpy().astype(np.float32))
    record = {
        **rc.manifest_header("scripts/make_lora_fixtures.py", 0),
        "peft": __import__("peft").__version__,
        "model": name,
        "settings": settings,
        "ids": ids[0].tolist(),
        "hooks": hooks,
    }
    (out / "reference.json").write_text(json.dumps(record, indent=1) + "\n")
    base = np.load(folder / "logits.npy")
    print(f"{name}: adapter saved; logits moved by up to {np.abs(logits - base).max():.3f} from the base model's")


def convert(name: str, llama_cpp: Path) -> None:
    """adapter.gguf beside the PEFT files, by llama.cpp's converter."""
    out = OUT / name / "adapter.gguf"
    subprocess.run([sys.executable, str(llama_cpp / "convert_lora_to_gguf.py"), "--base", str(FIXTURES / name),
                    "--outtype", "f32", "--outfile", str(out), str(OUT / name)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{name}: {out.relative_to(ROOT)} by llama.cpp's convert_lora_to_gguf.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp's source (convert_lora_to_gguf.py, gguf-py), e.g. "
                    "the vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist; without it no adapter.gguf")
    args = ap.parse_args()
    for name in args.models.split(","):
        reference(name, MODELS[name])
        if args.llama_cpp and name in GGUF:
            convert(name, args.llama_cpp)


if __name__ == "__main__":
    main()
