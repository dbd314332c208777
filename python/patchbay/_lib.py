"""The C library as ctypes sees it: where libpatchbay.so is, the structs the
package passes (their leading fields, in include/patchbay.h's order) and the
signature of every function it calls. Nothing here computes anything.

ctypes releases the GIL for the duration of every call into a CDLL, so long
calls (a sweep, a generation) leave other Python threads running.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (
    POINTER,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint64,
    c_void_p,
)
from pathlib import Path

PB_OK = 0
STATUS_NAMES = [
    "PB_OK",
    "PB_ERR_IO",
    "PB_ERR_FORMAT",
    "PB_ERR_ARG",
    "PB_ERR_OOM",
    "PB_ERR_UNSUPPORTED",
    "PB_ERR_CUDA",
    "PB_ERR_NUMERIC",
    "PB_ERR_INTERRUPTED",
]
PB_ERR_INTERRUPTED = 8

BACKENDS = {"cpu": 0, "reference": 1, "cuda": 2, "checked": 3}
DTYPES = {"f32": 0, "bf16": 1, "f16": 2, "file": 3}
WEIGHTS = {"resident": 0, "stream": 1, "auto": 2}
INTERVENE_NONE, INTERVENE_PATCH, INTERVENE_ABLATE, INTERVENE_ADD = 0, 1, 2, 3
# pb_metric_kind
METRICS = {"logit_diff": 0, "logprob": 1, "refusal_score": 2, "kl": 3, "projection": 4}


def library_path() -> Path:
    """$PATCHBAY_LIBRARY, else the libpatchbay.so installed beside this file."""
    env = os.environ.get("PATCHBAY_LIBRARY")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "libpatchbay.so"


class ModelConfig(ctypes.Structure):
    """The leading fields of pb_model_config (read through a pointer only)."""

    _fields_ = [
        ("arch", c_char * 32),
        ("n_layers", c_int),
        ("d_model", c_int),
        ("n_heads", c_int),
        ("n_kv_heads", c_int),
        ("head_dim", c_int),
        ("d_mlp", c_int),
        ("vocab_size", c_int),
        ("context_length", c_int),
        ("rms_eps", c_float),
        ("rope_theta", c_float),
        ("rope_scaling", c_int),
        ("rope_factor", c_float),
        ("rope_low_freq_factor", c_float),
        ("rope_high_freq_factor", c_float),
        ("rope_original_context", c_int),
        ("has_qkv_bias", c_int),
        ("tied_embeddings", c_int),
        ("bos_id", c_int),
        ("eos_id", c_int),
    ]


class LoadOptions(ctypes.Structure):
    _fields_ = [
        ("n_threads", c_int),
        ("backend", c_int),
        ("dtype", c_int),
        ("device", c_int),
        ("weights", c_int),
        ("weight_memory", c_size_t),
        ("shape_only", c_int),
        ("adapters", POINTER(c_char_p)),
        ("adapter_scales", POINTER(c_float)),
        ("n_adapters", c_int),
    ]


class Sampling(ctypes.Structure):
    _fields_ = [
        ("temperature", c_double),
        ("top_k", c_int),
        ("top_p", c_double),
        ("min_p", c_double),
        ("seed", c_uint64),
    ]


PROGRESS = ctypes.CFUNCTYPE(None, c_int64, c_int64, c_void_p)


class Intervention(ctypes.Structure):
    _fields_ = [
        ("kind", c_int),
        ("component", c_int),
        ("layer", c_int),
        ("head", c_int),
        ("n_positions", c_int),
        ("positions", POINTER(c_int)),
        ("values", POINTER(c_float)),
        ("direction", POINTER(c_float)),
        ("scale", c_double),
    ]


class GradMetric(ctypes.Structure):
    _fields_ = [
        ("kind", c_int),
        ("position", c_int),
        ("positive", POINTER(c_int32)),
        ("n_positive", c_int),
        ("negative", POINTER(c_int32)),
        ("n_negative", c_int),
        ("ref_logprobs", POINTER(c_double)),
        ("direction", POINTER(c_float)),
        ("layer", c_int),
        ("hook_post", c_int),
    ]


class GenerateOptions(ctypes.Structure):
    _fields_ = [
        ("max_new", c_int),
        ("n_samples", c_int),
        ("sampling", POINTER(Sampling)),
        ("stop", POINTER(c_char_p)),
        ("n_stop", c_int),
        ("iv", POINTER(Intervention)),
        ("max_batch", c_int),
        ("progress", PROGRESS),
        ("progress_user", c_void_p),
    ]


class SweepFingerprint(ctypes.Structure):
    _fields_ = [
        ("model_path", ctypes.c_char * 1024),
        ("model_digest", ctypes.c_char * 96),
        ("spec_digest", ctypes.c_char * 72),
        ("backend", ctypes.c_char * 32),
        ("model_unchecked", c_int),
    ]


class FingerprintOptions(ctypes.Structure):
    _fields_ = [
        ("hash_cache", c_char_p),
        ("skip_model", c_int),
        ("adapters", POINTER(c_char_p)),
        ("adapter_scales", POINTER(c_float)),
        ("n_adapters", c_int),
    ]


class SweepOptions(ctypes.Structure):
    _fields_ = [
        ("max_memory", c_size_t),
        ("max_batch_rows", c_int),
        ("progress", PROGRESS),
        ("progress_user", c_void_p),
        ("metric_fn", c_void_p),
        ("metric_user", c_void_p),
        ("metric_fn_residual_layer", c_int),
        ("run_trivial_rows", c_int),
        ("stop", POINTER(c_int)),
    ]


class PlanOptions(ctypes.Structure):
    _fields_ = [
        ("device_memory", c_size_t),
        ("n_ranks", c_int),
        ("weights", c_int),
        ("weight_memory", c_size_t),
        ("max_memory", c_size_t),
        ("flops_per_s", c_double),
        ("link_bytes_per_s", c_double),
    ]


class Plan(ctypes.Structure):
    _fields_ = [
        ("method", c_char_p),
        ("estimate", c_int),
        ("weights", c_int),
        ("weight_memory", c_size_t),
        ("max_memory", c_size_t),
        ("device_memory", c_size_t),
        ("n_ranks", c_int),
        ("rows_per_wave", c_int),
        ("tokens_per_wave", c_int),
        ("pairs_per_group", c_int),
        ("rows", c_int64),
        ("rows_run", c_int64),
        ("waves", c_int64),
        ("waves_max_rank", c_int64),
        ("base_runs", c_int64),
        ("bytes_streamed", c_double),
        ("bytes_loaded", c_double),
        ("weights_resident", c_uint64),
        ("weights_streamed", c_uint64),
        ("peak_weights", c_uint64),
        ("peak_caches", c_uint64),
        ("peak_activations", c_uint64),
        ("peak_total", c_uint64),
        ("peak_host", c_uint64),
        ("flops", c_double),
        ("flops_per_s", c_double),
        ("link_bytes_per_s", c_double),
        ("seconds_compute", c_double),
        ("seconds_link", c_double),
        ("seconds_bound", c_double),
        ("why_not", ctypes.c_char * 512),
    ]


class PromptSet(ctypes.Structure):
    _fields_ = [("n", c_int), ("ids", POINTER(POINTER(c_int32))), ("T", POINTER(c_int))]


class DirectionInputs(ctypes.Structure):
    _fields_ = [
        ("harmful_train", PromptSet),
        ("harmless_train", PromptSet),
        ("harmful_val", PromptSet),
        ("harmless_val", PromptSet),
        ("n_post", c_int),
        ("refusal_ids", POINTER(c_int32)),
        ("n_refusal_ids", c_int),
        ("layer_stride", c_int),
        ("max_layer_fraction", c_double),
        ("kl_threshold", c_double),
        ("max_train", c_int),
        ("max_val", c_int),
        ("max_batch_tokens", c_int),
    ]


class DirectionCandidate(ctypes.Structure):
    _fields_ = [
        ("layer", c_int),
        ("position", c_int),
        ("norm", c_double),
        ("ablation_score", c_double),
        ("addition_score", c_double),
        ("kl", c_double),
        ("passes", c_int),
    ]


class DirectionResult(ctypes.Structure):
    _fields_ = [
        ("d_model", c_int),
        ("n_layers", c_int),
        ("n_post", c_int),
        ("layer", c_int),
        ("position", c_int),
        ("direction", POINTER(c_float)),
        ("difference", POINTER(c_float)),
        ("norm", c_double),
        ("ablation_score", c_double),
        ("addition_score", c_double),
        ("kl", c_double),
        ("selected_passes", c_int),
        ("baseline_harmful", c_double),
        ("baseline_harmless", c_double),
        ("differences", POINTER(c_float)),
        ("n_candidates", c_int),
        ("candidates", POINTER(DirectionCandidate)),
        ("n_harmful_train", c_int),
        ("n_harmless_train", c_int),
        ("n_harmful_val", c_int),
        ("n_harmless_val", c_int),
        ("seconds_means", c_double),
        ("seconds_candidates", c_double),
    ]


class DirectionProvenance(ctypes.Structure):
    _fields_ = [("model_path", c_char_p), ("prompt_file", c_char_p)]


class SweepArray(ctypes.Structure):
    _fields_ = [("name", c_char * 48), ("data", POINTER(c_float)), ("n_dims", c_int), ("shape", c_int64 * 3)]


class SweepOutputs(ctypes.Structure):
    _fields_ = [("results_json", c_void_p), ("report_text", c_void_p), ("arrays", POINTER(SweepArray)),
                ("n_arrays", c_int)]


EXPORT_FORMATS = {"auto": 0, "safetensors": 1, "gguf": 2}
EXPORT_TYPES = {"f32": 0, "bf16": 1, "f16": 2, "q8_0": 8}  # pb_dtype: PB_DTYPE_Q8_0 is 8


class ExportOptions(ctypes.Structure):
    _fields_ = [
        ("format", c_int),
        ("dtype", c_int),
        ("overwrite", c_int),
        ("stop", POINTER(c_int)),
        ("progress", PROGRESS),
        ("progress_user", c_void_p),
        ("adapters", POINTER(c_char_p)),
        ("adapter_scales", POINTER(c_float)),
        ("n_adapters", c_int),
    ]


class ExportSummary(ctypes.Structure):
    _fields_ = [("n_tensors", c_int64), ("n_edited", c_int64), ("untied", c_int), ("n_bytes", c_uint64)]


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of every function the package calls."""
    status = c_int
    sig = {
        "pb_last_error": (c_char_p, []),
        "pb_status_name": (c_char_p, [c_int]),
        "pb_model_load": (status, [POINTER(c_void_p), c_char_p, POINTER(LoadOptions)]),
        "pb_model_random": (status, [POINTER(c_void_p), c_char_p, c_uint64, POINTER(LoadOptions)]),
        "pb_model_free": (None, [c_void_p]),
        "pb_model_get_config": (POINTER(ModelConfig), [c_void_p]),
        "pb_model_get_source": (c_char_p, [c_void_p]),
        "pb_model_tokenize": (status, [c_void_p, c_char_p, c_int, POINTER(POINTER(c_int32)), POINTER(c_int)]),
        "pb_model_tokenize_plain": (
            status, [c_void_p, c_char_p, c_int, c_int, POINTER(POINTER(c_int32)), POINTER(c_int), POINTER(c_int)]),
        "pb_model_chat_tokenize": (
            status, [c_void_p, c_char_p, c_char_p, POINTER(POINTER(c_int32)), POINTER(c_int)]),
        "pb_model_detokenize": (status, [c_void_p, POINTER(c_int32), c_int, POINTER(c_void_p)]),
        "pb_model_set_chat_template": (status, [c_void_p, c_char_p]),
        "pb_capture_create": (status, [POINTER(c_void_p), c_void_p, c_char_p]),
        "pb_capture_free": (None, [c_void_p]),
        "pb_capture_count": (c_int, [c_void_p]),
        "pb_capture_name": (c_char_p, [c_void_p, c_int]),
        "pb_capture_data": (POINTER(c_float), [c_void_p, c_int, POINTER(c_int), POINTER(c_int64)]),
        "pb_forward": (status, [c_void_p, POINTER(c_int32), c_int, POINTER(c_float), c_void_p]),
        "pb_gradients": (status, [c_void_p, POINTER(c_int32), c_int, POINTER(GradMetric), c_void_p,
                                  POINTER(c_double)]),
        "pb_forward_intervened": (
            status, [c_void_p, POINTER(c_int32), c_int, POINTER(Intervention), POINTER(c_float), c_void_p]),
        "pb_generate_batch": (
            status,
            [c_void_p, POINTER(POINTER(c_int32)), POINTER(c_int), c_int, POINTER(GenerateOptions),
             POINTER(c_int32), POINTER(c_int)]),
        "pb_generate_options_check": (status, [POINTER(GenerateOptions)]),
        "pb_text_is_refusal": (c_int, [c_char_p]),
        "pb_sweep_create": (status, [POINTER(c_void_p), c_void_p, c_char_p, c_char_p, POINTER(SweepOptions)]),
        "pb_sweep_free": (None, [c_void_p]),
        "pb_sweep_run": (status, [c_void_p]),
        "pb_sweep_fingerprint_compute_with": (
            status, [POINTER(SweepFingerprint), c_char_p, c_char_p, c_int, c_int, POINTER(FingerprintOptions)]),
        "pb_sweep_checkpoint_write": (status, [c_void_p, c_char_p, POINTER(SweepFingerprint)]),
        "pb_sweep_checkpoint_load": (status, [c_void_p, c_char_p, POINTER(SweepFingerprint)]),
        "pb_sweep_plan": (status, [c_void_p, POINTER(PlanOptions), POINTER(Plan)]),
        "pb_model_streams_weights": (c_int, [c_void_p]),
        "pb_model_weight_bytes": (c_size_t, [c_void_p]),
        "pb_sweep_write": (status, [c_void_p, c_char_p, c_int]),
        "pb_sweep_outputs_build": (status, [c_void_p, POINTER(SweepOutputs)]),
        "pb_sweep_outputs_free": (None, [POINTER(SweepOutputs)]),
        "pb_direction_compute": (status, [c_void_p, POINTER(DirectionInputs), POINTER(DirectionResult)]),
        "pb_direction_result_free": (None, [POINTER(DirectionResult)]),
        "pb_direction_write": (status, [POINTER(DirectionResult), c_char_p, POINTER(DirectionProvenance)]),
        "pb_export_ablated": (
            status, [c_char_p, POINTER(c_float), c_int, POINTER(ExportOptions), c_char_p, POINTER(ExportSummary)]),
    }
    for name, (result, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype = result
        fn.argtypes = args


_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None)
_libc.free.argtypes = [c_void_p]
_libc.free.restype = None


def lib() -> ctypes.CDLL:
    """The loaded library (loaded on first use)."""
    global _lib
    if _lib is None:
        path = library_path()
        if not path.exists():
            raise ImportError(f"patchbay: {path} is missing (pip install ./python builds it; "
                              "PATCHBAY_LIBRARY names another)")
        loaded = ctypes.CDLL(str(path))
        _declare(loaded)
        _lib = loaded
    return _lib


def free(pointer) -> None:
    """Releases memory the library malloc'd and handed over."""
    _libc.free(ctypes.cast(pointer, c_void_p))
