"""Reference for the sampler's filters (host/model/sample.c): transformers'
own logits warpers, in generate's order (temperature, top-k, top-p, min-p),
applied to fixed random logits rows, and the probabilities softmax gives
after them.

Writes tests/fixtures/sampling/: logits.npy (rows, vocab) float32,
probs.npy (settings, rows, vocab) float32, kept.npy (the same shape, int32:
which tokens the warpers left) and reference.json (the settings).
test_generate reads them: the kept tokens must be the same set and every
probability within 1e-6.

    /work/venv-torch/bin/python scripts/make_sampling_reference.py
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from refgen_common import REPO_ROOT, ArrayWriter, manifest_header, setup_determinism, write_json

SEED = 0
VOCAB = 257  # odd, larger than top-k, small enough to commit

# (temperature, top_k, top_p, min_p); 0 / 1.0 / 0 mean "off" as in pb_sampling
SETTINGS = [
    (1.0, 0, 1.0, 0.0),
    (0.7, 0, 1.0, 0.0),
    (1.3, 40, 1.0, 0.0),
    (1.0, 0, 0.9, 0.0),
    (0.8, 0, 0.5, 0.0),
    (1.0, 0, 1.0, 0.05),
    (0.7, 50, 0.95, 0.0),
    (1.0, 20, 0.9, 0.1),
    (0.5, 1, 1.0, 0.0),
    (2.0, 0, 0.3, 0.02),
]


def rows(rng: np.random.Generator) -> np.ndarray:
    """Flat, peaked and heavy-tailed rows, as language models give."""
    out = [
        rng.normal(0.0, 1.0, VOCAB),
        rng.normal(0.0, 3.0, VOCAB),
        rng.standard_t(2.0, VOCAB) * 2.0,
        np.concatenate([rng.normal(8.0, 0.5, 3), rng.normal(0.0, 1.0, VOCAB - 3)]),
        rng.gumbel(0.0, 2.0, VOCAB),
    ]
    return np.stack(out).astype(np.float32)


def processed(logits: torch.Tensor, t: float, k: int, p: float, m: float) -> torch.Tensor:
    warpers = [TemperatureLogitsWarper(t)]
    if k > 0:
        warpers.append(TopKLogitsWarper(top_k=k))
    if p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=p))
    if m > 0:
        warpers.append(MinPLogitsWarper(min_p=m))
    ids = torch.zeros((logits.shape[0], 1), dtype=torch.long)
    scores = logits.clone()
    for w in warpers:
        scores = w(ids, scores)
    return torch.softmax(scores.double(), dim=-1)


def main() -> None:
    setup_determinism(SEED)
    folder = REPO_ROOT / "tests" / "fixtures" / "sampling"
    folder.mkdir(parents=True, exist_ok=True)
    writer = ArrayWriter(folder)
    logits = writer.save("logits", rows(np.random.default_rng(SEED)), "float32")
    probs = np.stack([processed(torch.from_numpy(logits), *s).numpy() for s in SETTINGS])
    writer.save("probs", probs, "float32")
    # kept apart: a kept token's probability can be below float32's range
    writer.save("kept", probs > 0, "int32")
    manifest = manifest_header("scripts/make_sampling_reference.py", SEED)
    manifest["settings"] = [
        {"temperature": t, "top_k": k, "top_p": p, "min_p": m} for (t, k, p, m) in SETTINGS
    ]
    manifest["arrays"] = writer.records
    write_json(folder / "reference.json", manifest)
    kept = (probs > 0).sum(axis=-1)
    print(f"wrote {folder}: kept tokens per setting and row:\n{kept}")


if __name__ == "__main__":
    main()
