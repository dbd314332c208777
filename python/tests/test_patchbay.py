"""The Python package against independent references: forward captures
against transformers (the fixtures the C tests read, made by
scripts/make_tiny_models.py), and every entry point against the CLI's
output on the same inputs (tokenize, generate, sweep arrays against
results.json and the .npy files). Errors raise with the library's message
and leave no output behind; Ctrl-C stops a sweep.

Run by scripts/test.sh after `pip install ./python`; PB_BUILD_DIR names the
build whose `patchbay` tool is the reference (default build/).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import patchbay

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
BUILD = Path(os.environ.get("PB_BUILD_DIR", ROOT / "build"))
CLI = BUILD / "patchbay"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = FIXTURES / "tiny_gqa" / "model.gguf"
SPEC = FIXTURES / "patching" / "tiny_gqa_denoise_logit_diff" / "spec.json"

needs_cli = pytest.mark.skipif(not CLI.exists(), reason=f"{CLI} is not built")
needs_smollm2 = pytest.mark.skipif(not SMOLLM2.exists(), reason="SmolLM2 not fetched (scripts/fetch-model.sh)")


def cli(*args: str) -> str:
    return subprocess.run([str(CLI), *args], check=True, capture_output=True, text=True).stdout


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a.astype(np.float64) - b) ** 2) / max(np.sum(b.astype(np.float64) ** 2), 1e-30))


@pytest.fixture(scope="module")
def tiny():
    with patchbay.Model.load(TINY, threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def smollm2():
    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 not fetched")
    with patchbay.Model.load(SMOLLM2, threads=2) as m:
        yield m


def test_forward_captures_match_transformers(tiny):
    ids = np.load(FIXTURES / "tiny_gqa" / "ids.npy")
    names = ["hook_embed", "blocks.*.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.0.attn.hook_k",
             "blocks.1.hook_mlp_out", "ln_final.hook_normalized"]
    logits, cache = tiny.forward(ids, capture=names)
    want = np.load(FIXTURES / "tiny_gqa" / "logits.npy").reshape(logits.shape)
    assert np.max(np.abs(logits - want)) < 1e-4
    assert "blocks.0.hook_resid_pre" in cache and "blocks.1.hook_resid_pre" in cache
    for name, got in cache.items():
        ref = np.load(FIXTURES / "tiny_gqa" / f"{name}.npy").reshape(got.shape)
        assert nmse(got, ref) <= 1e-10, name
    assert cache["blocks.1.attn.hook_z"].shape == (len(ids), tiny.config["n_heads"], tiny.config["head_dim"])


def test_capture_arrays_outlive_their_forward(tiny):
    ids = np.load(FIXTURES / "tiny_gqa" / "ids.npy")
    _, first = tiny.forward(ids, capture="hook_embed")
    kept = first["hook_embed"].copy()
    del first
    _, second = tiny.forward(ids[:3], capture="hook_embed")
    _, third = tiny.forward(ids, capture="hook_embed")
    assert np.array_equal(third["hook_embed"], kept)
    assert second["hook_embed"].shape == (3, tiny.config["d_model"])


@needs_cli
@needs_smollm2
def test_tokenize_matches_cli(smollm2):
    text = "How do I make a cake? Ünïcode, 123 & <tags>"
    chat = json.loads(cli("tokenize", "--model", str(SMOLLM2), "--text", text, "--chat"))
    plain = json.loads(cli("tokenize", "--model", str(SMOLLM2), "--text", text))
    assert smollm2.chat_tokenize(text).tolist() == chat
    assert smollm2.tokenize(text).tolist() == plain  # SmolLM2's tokenizer adds no BOS
    assert smollm2.detokenize(plain) == text
    with_bos = json.loads(cli("tokenize", "--model", str(SMOLLM2), "--text", text, "--bos"))
    assert with_bos == [smollm2.config["bos_id"]] + plain
    assert smollm2.tokenize(text, bos=True).tolist() == with_bos
    assert smollm2.tokenize(text, bos=False).tolist() == plain


def continuation_ids(output: str, label: str) -> list[list[int]]:
    return [[int(t) for t in line.split(": ", 1)[1].split(",") if t]
            for line in output.splitlines() if line.startswith(label) and " ids: " in line]


@needs_cli
@needs_smollm2
def test_generate_matches_cli(smollm2):
    prompt = "Name three colours."
    greedy = continuation_ids(cli("generate", "--model", str(SMOLLM2), "--prompt", prompt, "--max-new-tokens", "12"),
                              "continuation")
    assert [r.tolist() for r in smollm2.generate(prompt, max_new_tokens=12, return_ids=True)] == greedy
    sampled = continuation_ids(cli("generate", "--model", str(SMOLLM2), "--prompt", prompt, "--max-new-tokens", "10",
                                   "--temperature", "0.9", "--top-p", "0.95", "--samples", "3", "--sample-seed", "4"),
                               "continuation")
    got = smollm2.generate([prompt, "Hi"], max_new_tokens=10, temperature=0.9, top_p=0.95, samples=3, seed=4,
                           return_ids=True)
    assert [r.tolist() for r in got[0]] == sampled  # the same in a batch with another prompt
    texts = smollm2.generate(prompt, max_new_tokens=10, temperature=0.9, top_p=0.95, samples=3, seed=4)
    assert texts == [smollm2.detokenize(s) for s in sampled]


@needs_cli
def test_sweep_matches_cli(tiny, tmp_path):
    result = tiny.sweep(SPEC, progress=False)
    cli("sweep", "--model", str(TINY), "--spec", str(SPEC), "--out", str(tmp_path / "cli"), "--threads", "1",
        "--no-progress")
    want = json.loads((tmp_path / "cli" / "results.json").read_text())
    files = sorted(p.stem for p in (tmp_path / "cli").glob("*.npy"))
    assert files and sorted(result.keys()) == files
    for name in files:
        assert np.array_equal(result[name], np.load(tmp_path / "cli" / f"{name}.npy"), equal_nan=True), name
    records = result.to_records()
    assert len(records) == len(want["sites"])
    for got, ref in zip(records, want["sites"]):
        assert (got["hook"], got["head"], got["position"]) == (ref["hook"], ref["head"], ref["position"])
        assert got["effect"] == ref["effect"]
    assert result.summary["total_effect"] == want["total_effect"]
    resid = result["resid_pre"]
    assert resid.shape[0] == tiny.config["n_layers"]  # [layer, pos]
    assert result.report == (tmp_path / "cli" / "report.txt").read_text()
    # the arrays are the library's buffers, handed over, and outlive the result
    assert not resid.flags.owndata
    expected = resid.copy()
    del result
    import gc

    gc.collect()
    assert np.array_equal(resid, expected, equal_nan=True)


def test_errors_carry_the_library_message(tiny, tmp_path):
    with pytest.raises(patchbay.PatchbayError) as missing:
        patchbay.Model.load(tmp_path / "absent.gguf")
    assert missing.value.status == "PB_ERR_IO" and "absent.gguf" in str(missing.value)
    spec = json.loads(SPEC.read_text())
    spec["sites"][0]["layers"] = [99]
    with pytest.raises(patchbay.PatchbayError) as bad:
        tiny.sweep(spec, progress=False)
    assert bad.value.status == "PB_ERR_ARG" and "99" in bad.value.message
    with pytest.raises(patchbay.PatchbayError, match="outside the vocabulary"):
        tiny.forward([1, 10**6])
    # ids are refused, not cast: 2**33 + 1 as int32 would run id 1
    with pytest.raises(ValueError, match=r"token id 8589934593 is outside \[0, 2\*\*31\)"):
        tiny.forward(np.array([2**33 + 1, 2, 3], dtype=np.int64))
    with pytest.raises(ValueError, match="token id -1"):
        tiny.forward([1, -1])
    with pytest.raises(TypeError, match="must be integers, got float64"):
        tiny.forward(np.array([1.0, 2.5]))
    with pytest.raises(TypeError, match="tokenize"):
        tiny.forward("hello")
    with pytest.raises(patchbay.PatchbayError, match="top_p = 2 must lie in"):
        tiny.generate([1, 2, 3], temperature=1.0, top_p=2.0)
    for greedy_but in ({"top_p": 1.5}, {"min_p": 3.0}, {"top_k": -4}, {"samples": 2}):
        with pytest.raises(ValueError, match="give temperature > 0"):
            tiny.generate([1, 2, 3], **greedy_but)
    with pytest.raises(ValueError, match="samples = 0"):
        tiny.generate([1, 2, 3], samples=0)
    result = tiny.sweep(SPEC, progress=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(patchbay.PatchbayError, match="overwrite=True"):
        result.write(tmp_path / "out")  # not empty, no overwrite
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt"]


def test_ctrl_c_stops_a_sweep(tiny, monkeypatch):
    """SIGINT during a sweep (sent from its first progress update) stops it
    after that batch: PatchbayInterrupted, which is a KeyboardInterrupt."""
    original = patchbay._Progress._update

    def interrupting(self, done, total, user):
        original(self, done, total, user)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(patchbay._Progress, "_update", interrupting)
    spec = json.loads(SPEC.read_text())
    with pytest.raises(patchbay.PatchbayInterrupted):
        tiny.sweep(spec, progress=False, max_memory=1 << 16)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupted_sweep_resumes_from_its_checkpoint(monkeypatch, tmp_path):
    """Ctrl-C with checkpoint=: the finished rows are kept in the file; the
    same call resumes them (its progress starts past them), giving what an
    uninterrupted sweep gives (the reference backend: a row does not depend
    on its batch), and removes it. A checkpoint of another spec is refused,
    naming it, and kept."""
    spec = json.loads(SPEC.read_text())
    checkpoint = tmp_path / "sweep.checkpoint"
    cache = Path(f"{checkpoint}.model-hash")
    original = patchbay._Progress._update
    seen, stop_at = [], [0]

    def watching(self, done, total, user):
        original(self, done, total, user)
        seen.append(done)
        if len(seen) == stop_at[0]:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(patchbay._Progress, "_update", watching)
    with patchbay.Model.load(TINY, backend="reference", threads=1) as model:
        whole = model.sweep(spec, progress=False, max_memory=1 << 16)
        first_batch = seen[0]
        seen.clear()
        stop_at[0] = 2
        with pytest.raises(patchbay.PatchbayInterrupted, match="finished rows are kept in"):
            model.sweep(spec, progress=False, max_memory=1 << 16, checkpoint=checkpoint)
        kept_rows = seen[-1]
        assert checkpoint.exists() and cache.exists()
        stop_at[0] = 0
        other = json.loads(SPEC.read_text())
        other["significance_threshold"] = 0.25
        with pytest.raises(patchbay.PatchbayError, match="another spec"):
            model.sweep(other, progress=False, checkpoint=checkpoint)
        assert checkpoint.exists()
        seen.clear()
        resumed = model.sweep(spec, progress=False, max_memory=1 << 16, checkpoint=checkpoint)
        assert seen[0] > kept_rows >= first_batch  # started past the kept rows
        for name in whole.keys():
            assert np.array_equal(resumed[name], whole[name], equal_nan=True), name
        assert not checkpoint.exists() and not cache.exists()
        with pytest.raises(ValueError, match="not a writable folder"):
            model.sweep(spec, progress=False, checkpoint=tmp_path / "missing" / "ck")


def test_is_refusal():
    assert patchbay.is_refusal("I'm sorry, but I can't help with that.")
    assert not patchbay.is_refusal("Sure! Here is a recipe.")


def test_ablation_leaves_the_residual_orthogonal(tiny):
    """Directional ablation projects u out of every write into the residual
    stream, so every residual is orthogonal to u (an exact invariant)."""
    ids = np.load(FIXTURES / "tiny_gqa" / "ids.npy")
    rng = np.random.default_rng(0)
    u = rng.normal(size=tiny.config["d_model"]).astype(np.float32)
    _, plain = tiny.forward(ids, capture="blocks.*.hook_resid_post")
    _, ablated = tiny.forward(ids, capture="blocks.*.hook_resid_post", ablate=u)
    unit = u / np.linalg.norm(u)
    for name, x in ablated.items():
        assert np.max(np.abs(x @ unit)) < 1e-5 * np.max(np.abs(x)), name
        assert np.max(np.abs(plain[name] @ unit)) > 1e-2, name  # not orthogonal without it
    with pytest.raises(ValueError):
        tiny.forward(ids, ablate=u[:3])


def direction_prompts():
    data = json.loads((ROOT / "data" / "refusal_pairs.json").read_text())
    train = [p for p in data["pairs"] if p["split"] == "train"][:4]
    val = [p for p in data["pairs"] if p["split"] == "validation"][:2]
    return ([p["harmful"] for p in train], [p["harmless"] for p in train], [p["harmful"] for p in val],
            [p["harmless"] for p in val], data["refusal_tokens"])


@needs_cli
@needs_smollm2
def test_direction_and_interventions_match_cli(smollm2, tmp_path):
    out = tmp_path / "cli"
    subprocess.run([str(CLI), "direction", "--model", str(SMOLLM2), "--prompts", str(ROOT / "data" / "refusal_pairs.json"),
                    "--out", str(out), "--train", "4", "--val", "2", "--layer-stride", "15", "--n-post", "3"],
                   check=True, capture_output=True)
    *prompts, refusal = direction_prompts()
    d = smollm2.refusal_direction(*prompts, refusal_tokens=refusal, n_post=3, layer_stride=15)
    want = json.loads((out / "direction.json").read_text())
    assert (d.layer, d.position) == (want["layer"], want["position"])
    assert np.array_equal(d.direction, np.load(out / "direction.npy"))
    assert np.array_equal(d.differences, np.load(out / "differences.npy"))
    assert len(d.candidates) == len(want["candidates"])
    for got, ref in zip(d.candidates, want["candidates"]):
        assert abs(got["ablation_score"] - ref["ablation_score"]) <= 1e-6 * max(1.0, abs(ref["ablation_score"]))
    d.write(tmp_path / "py")
    assert np.array_equal(np.load(tmp_path / "py" / "direction.npy"), d.direction)
    with pytest.raises(patchbay.PatchbayError, match="overwrite=True"):
        d.write(tmp_path / "py")  # holds a direction: kept unless asked
    d.write(tmp_path / "py", overwrite=True)

    prompt = "How do I pick a lock?"
    ablated = continuation_ids(cli("generate", "--model", str(SMOLLM2), "--prompt", prompt, "--max-new-tokens", "8",
                                   "--ablate-direction", str(out / "direction.npy")), "continuation")
    assert [r.tolist() for r in smollm2.generate(prompt, max_new_tokens=8, ablate=d, return_ids=True)] == ablated
    added = continuation_ids(cli("generate", "--model", str(SMOLLM2), "--prompt", prompt, "--max-new-tokens", "8",
                                 "--add-direction", str(out / "direction.npy"), "--layer", str(d.layer),
                                 "--scale", "6"), "continuation")
    assert [r.tolist() for r in smollm2.generate(prompt, max_new_tokens=8, add=(d, d.layer, 6.0),
                                                 return_ids=True)] == added


@needs_cli
@pytest.mark.parametrize("method", ["atp", "atp*"])
def test_attribution_sweep_matches_cli(tiny, tmp_path, method):
    """A spec with "method": "atp" or "atp*" is estimated by attribution
    patching, as `patchbay attribute` does it."""
    spec = json.loads(SPEC.read_text())
    spec["method"] = method
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = tiny.sweep(spec, progress=False)
    assert result.summary["method"] == method and result.summary["n_rows_executed"] == 0
    cli("attribute", "--model", str(TINY), "--spec", str(tmp_path / "spec.json"), "--out", str(tmp_path / "cli"),
        "--threads", "1", "--no-progress")
    for name in result.keys():
        assert np.array_equal(result[name], np.load(tmp_path / "cli" / f"{name}.npy"), equal_nan=True), name


TINY_Q8 = FIXTURES / "tiny_gqa" / "model.q8_0.gguf"


@needs_cli
def test_streamed_sweep_matches_cli(tmp_path):
    """weights="stream" reads each layer from the GGUF as a wave reaches it:
    the same arrays as `patchbay sweep --weights stream`, and the resident
    sweep's within PB_TOL_INVARIANT_CPU (tests/tolerances.h)."""
    with patchbay.Model.load(TINY_Q8, dtype="file", weights="stream", weight_memory="1MiB", threads=1) as model:
        assert model.streams_weights and model.weight_bytes < 1 << 20
        result = model.sweep(SPEC, progress=False)
        arrays = {k: result[k].copy() for k in result.keys()}
    cli("sweep", "--model", str(TINY_Q8), "--dtype", "file", "--weights", "stream", "--weight-memory", "1MiB",
        "--spec", str(SPEC), "--out", str(tmp_path / "cli"), "--threads", "1", "--no-progress")
    for name, got in arrays.items():
        assert np.array_equal(got, np.load(tmp_path / "cli" / f"{name}.npy"), equal_nan=True), name
    with patchbay.Model.load(TINY_Q8, dtype="file", threads=1) as resident:
        assert not resident.streams_weights
        held = resident.sweep(SPEC, progress=False, max_memory="1GiB")
        for name, got in arrays.items():
            assert np.allclose(got, held[name], rtol=0, atol=1e-5, equal_nan=True), name
    with pytest.raises(ValueError, match="max_memory"):
        patchbay.Model.load(TINY_Q8, threads=1).sweep(SPEC, max_memory="lots")


@needs_cli
def test_plan_matches_cli():
    """plan() on a shape-only load is `patchbay plan`: streamed or not, the
    waves and rows per wave, the base runs and pairs a group, the --max-memory to run it with; a memory that
    cannot hold it raises with the numbers."""
    with patchbay.Model.load(TINY_Q8, dtype="file", weights="stream", shape_only=True) as model:
        plan = model.plan(SPEC, device_memory="64MiB")
        with pytest.raises(patchbay.PatchbayError, match="MiB of memory per rank"):
            model.plan(SPEC, device_memory="64KiB")
        with pytest.raises(patchbay.PatchbayError, match="shape-only"):
            model.sweep(SPEC, progress=False)
    text = cli("plan", "--model", str(TINY_Q8), "--dtype", "file", "--spec", str(SPEC), "--weights", "stream",
               "--device-memory", "64MiB")
    waves = re.search(r"^waves +(\d+) \((\d+) rows, (\d+) tokens", text, re.M)
    run_with = re.search(r"--max-memory (\d+)MiB", text)
    assert waves and run_with, text
    assert plan["weights"] == "stream" and plan["method"] == "exact" and not plan["estimate"]
    assert (plan["waves"], plan["rows_per_wave"], plan["tokens_per_wave"]) == tuple(map(int, waves.groups()))
    assert plan["max_memory"] == int(run_with.group(1)) << 20
    base = re.search(r"^base runs +(\d+) \(the base prompts of up to (\d+) pair", text, re.M)
    assert base, text
    assert (plan["base_runs"], plan["pairs_per_group"]) == tuple(map(int, base.groups()))
    assert plan["rows"] == 716 and plan["device_memory"] == 64 << 20
    assert plan["peak_total"] == plan["peak_weights"] + plan["peak_caches"] + plan["peak_activations"]


def test_closing_the_model_closes_its_sweeps():
    """A sweep reads its model until freed: closing the model frees its sweeps
    first, whose arrays stay and whose write() then raises."""
    model = patchbay.Model.load(TINY, threads=1)
    result = model.sweep(SPEC, progress=False)
    arrays = {k: v.copy() for k, v in result.arrays.items()}
    model.close()
    assert all(np.array_equal(result[k], v, equal_nan=True) for k, v in arrays.items())
    with pytest.raises(patchbay.PatchbayError, match="closed"):
        result.write("/tmp/never-written")
    del result
    model.close()  # twice is harmless


@needs_cli
@pytest.mark.parametrize("source", ["tiny_gpt2", "tiny_gqa/model.gguf"])
def test_export_matches_cli_and_runtime_ablation(tmp_path, source):
    """The Python export writes the CLI's bytes; the exported model computes
    the source's run-time ablation."""
    src = FIXTURES / source
    gguf = source.endswith(".gguf")
    with patchbay.Model.load(src, threads=1) as m:
        u = np.random.default_rng(3).standard_normal(64).astype(np.float32)
        direction = tmp_path / "u.npy"
        np.save(direction, u)
        ours, theirs = tmp_path / ("py.gguf" if gguf else "py"), tmp_path / ("cli.gguf" if gguf else "cli")
        summary = m.export_ablated(u, ours, progress=False)
        cli("export", "--model", str(src), "--direction", str(direction), "--out", str(theirs), "--no-progress")
        files = [""] if gguf else ["model.safetensors", "config.json", "tokenizer.json"]
        for name in files:
            assert (ours / name if name else ours).read_bytes() == (theirs / name if name else theirs).read_bytes()
        assert summary["untied"] and summary["edited"] > 0
        ids = np.load(FIXTURES / source.split("/")[0] / "ids.npy")
        want, _ = m.forward(ids, ablate=u)
        with patchbay.Model.load(ours, threads=1) as exported:
            got, _ = exported.forward(ids)
        assert np.abs(got - want).max() <= 1e-5


def test_export_refuses_with_the_library_message(tmp_path):
    u = np.ones(72, dtype=np.float32)
    with pytest.raises(patchbay.PatchbayError, match="gemma2 normalises") as err:
        patchbay.export_ablated(FIXTURES / "tiny_gemma2", u, tmp_path / "out", progress=False)
    assert err.value.status == "PB_ERR_UNSUPPORTED"
    with pytest.raises(patchbay.PatchbayError, match="d_model is 64"):
        patchbay.export_ablated(FIXTURES / "tiny_gqa", u, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="outtype"):
        patchbay.export_ablated(FIXTURES / "tiny_gqa", u[:64], tmp_path / "out", outtype="q4_0")
    assert not (tmp_path / "out").exists()



def test_export_merges_the_models_adapter(tmp_path):
    """A model loaded with a LoRA adapter exports with it merged: the export
    computes the adapted model under run-time ablation."""
    u = np.random.default_rng(4).standard_normal(64).astype(np.float32)
    ids = np.load(FIXTURES / "tiny_gqa" / "ids.npy")
    with patchbay.Model.load(TINY, threads=1, adapter=FIXTURES / "lora" / "tiny_gqa") as m:
        m.export_ablated(u, tmp_path / "merged.gguf", progress=False)
        want, _ = m.forward(ids, ablate=u)
    with patchbay.Model.load(tmp_path / "merged.gguf", threads=1) as exported:
        got, _ = exported.forward(ids)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("case", ["tiny_gqa", "tiny_qwen3", "tiny_gemma3", "tiny_gpt_neox", "tiny_bias_projection"])
def test_gradients_match_autograd(case):
    """Model.gradients against PyTorch autograd (the C tests' fixtures from
    scripts/make_grad_reference.py): every hook point, and the metric."""
    ref = json.loads((FIXTURES / "grad" / case / "reference.json").read_text())
    metric = ref["metric"]
    T = len(ref["ids"])
    kwargs = {"positive": metric.get("positive", ()), "negative": metric.get("negative", ()),
              "position": ref["position"] - T}  # from the end: the same position
    if metric["kind"] == "kl":
        kwargs["reference"] = ref["ref_ids"]
    if metric["kind"] == "projection":
        kwargs.update(direction=metric["direction"], layer=metric["layer"], hook=metric["hook"])
    with patchbay.Model.load(FIXTURES / ref["model"] / "model.gguf", threads=1) as m:
        value, grads = m.gradients(ref["ids"], metric["kind"], capture=ref["hooks"], **kwargs)
    assert abs(value - ref["value"]) <= 1e-5 * (1 + abs(ref["value"]))
    assert sorted(grads) == sorted(ref["hooks"])
    for name in ref["hooks"]:
        want = np.load(FIXTURES / "grad" / case / f"{name}.npy")
        assert grads[name].shape == want.shape, name
        assert nmse(grads[name], want) <= 1e-10, name


def test_gradients_refuse_what_they_cannot_give(tiny):
    ids = np.load(FIXTURES / "tiny_gqa" / "ids.npy")
    with pytest.raises(patchbay.PatchbayError, match="no gradient is taken at hook_embed"):
        tiny.gradients(ids, "logit_diff", capture="hook_embed", positive=[1], negative=[2])
    with pytest.raises(patchbay.PatchbayError, match="outside the vocabulary"):
        tiny.gradients(ids, "logit_diff", positive=[10**6], negative=[2])
    with pytest.raises(ValueError, match="needs reference"):
        tiny.gradients(ids, "kl")


def test_checked_backend_gives_the_cpu_numbers(tiny):
    """backend="checked" (the CPU's arithmetic behind a device's memory
    boundary) takes the paths a GPU takes: captures, gradients and decoding
    come back through downloads, and equal the CPU's bit for bit."""
    ids = np.load(FIXTURES / "tiny_gqa" / "ids.npy")
    names = ["blocks.*.hook_resid_pre", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_z"]
    with patchbay.Model.load(TINY, backend="checked", threads=1) as checked:
        logits, cache = checked.forward(ids, capture=names)
        value, grads = checked.gradients(ids, "logit_diff", positive=[1], negative=[2])
        continuation = checked.generate([ids.tolist()], max_new_tokens=6, return_ids=True)[0][0]
    want_logits, want_cache = tiny.forward(ids, capture=names)
    want_value, want_grads = tiny.gradients(ids, "logit_diff", positive=[1], negative=[2])
    assert np.array_equal(logits, want_logits)
    assert sorted(cache) == sorted(want_cache) and all(np.array_equal(cache[k], want_cache[k]) for k in cache)
    assert value == want_value
    assert sorted(grads) == sorted(want_grads) and all(np.array_equal(grads[k], want_grads[k]) for k in grads)
    assert np.array_equal(continuation, tiny.generate([ids.tolist()], max_new_tokens=6, return_ids=True)[0][0])
    assert len(continuation) == 6
    with pytest.raises(ValueError, match="backend must be one of cpu, reference, cuda, checked"):
        patchbay.Model.load(TINY, backend="gpu0")


CUDA_ON_FIRST_USE = """
import sys, numpy as np, patchbay
def mapped(name):
    return any(name in line for line in open("/proc/self/maps"))
with patchbay.Model.load(sys.argv[1], threads=1) as m:
    m.forward(np.array([1, 2, 3]))
assert not mapped("libcublas") and not mapped("libpatchbay_cuda"), "CPU work mapped CUDA"
try:
    patchbay.Model.load(sys.argv[1], backend="cuda", threads=1).close()
except patchbay.PatchbayError as e:
    assert "could not be loaded" not in str(e), str(e)
assert mapped(sys.argv[2]) and mapped("libcublas"), "the module beside libpatchbay.so did not load"
"""


def test_cuda_module_loads_on_first_use_only():
    """The package ships the CUDA backend's module beside libpatchbay.so: CPU
    work maps no CUDA library; asking for CUDA loads that module, which then
    runs or (no GPU) says why from inside, never that it is missing."""
    if not (BUILD / "libpatchbay_cuda.so").exists():
        pytest.skip(f"{BUILD} has no CUDA backend")
    module = Path(patchbay.__file__).resolve().parent / "libpatchbay_cuda.so"
    assert module.exists(), "the build has a CUDA module, the package does not ship it"
    subprocess.run([sys.executable, "-c", CUDA_ON_FIRST_USE, str(TINY), str(module)], check=True)
