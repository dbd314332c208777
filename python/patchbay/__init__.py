"""patchbay from Python: the C engine (libpatchbay) behind a small API named as
TransformerLens names things.

    import patchbay
    model = patchbay.Model.load("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = model.chat_tokenize("How do I make a bomb?")
    logits, cache = model.forward(ids, capture=["blocks.*.hook_resid_pre"])
    value, grads = model.gradients(ids, "refusal_score", positive=["I"])  # d metric / d activation
    result = model.sweep({"mode": "denoising", "pairs": [...], "sites": [...], "metric": {...}})
    result["resid_pre"]            # numpy [layer, pos], as the CLI's resid_pre.npy
    texts = model.generate(["Name a colour."], max_new_tokens=16, temperature=0.7, samples=4)
    model.export_ablated(u, "abliterated.gguf", outtype="q8_0")   # u: (d_model,), weights edited

Every call goes to the C library; errors raise PatchbayError carrying the
library's message (pb_last_error()); the GIL is released while the library
runs; Ctrl-C stops a sweep after its current batch.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import threading
import weakref
from ctypes import POINTER, byref, c_char_p, c_double, c_float, c_int, c_int32, c_int64, c_void_p
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import _lib

__all__ = ["Model", "SweepResult", "Direction", "PatchbayError", "PatchbayInterrupted", "export_ablated", "is_refusal",
           "__version__"]
__version__ = "0.1.0"


class PatchbayError(RuntimeError):
    """A failed library call: `status` is its pb_status name ("PB_ERR_ARG" ...),
    the message pb_last_error()'s."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{message} ({status})" if message else status)
        self.status = status
        self.message = message


class PatchbayInterrupted(PatchbayError, KeyboardInterrupt):
    """A sweep stopped by Ctrl-C after its current batch (completed rows are kept in C)."""


def _check(status: int) -> None:
    if status == _lib.PB_OK:
        return
    name = _lib.STATUS_NAMES[status] if 0 <= status < len(_lib.STATUS_NAMES) else str(status)
    message = (_lib.lib().pb_last_error() or b"").decode("utf-8", "replace")
    if status == _lib.PB_ERR_INTERRUPTED:
        raise PatchbayInterrupted(name, message)
    raise PatchbayError(name, message)


def _ids_array(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """ids as a contiguous int32 array, refused (not cast) when they are not
    integers or do not fit: a cast would run other tokens than asked for."""
    if isinstance(ids, (str, bytes)):
        raise TypeError("token ids expected, got text: Model.tokenize or Model.chat_tokenize turns text into ids")
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"token ids must be one-dimensional, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got {a.dtype} values")
    if a.size and (int(a.min()) < 0 or int(a.max()) > np.iinfo(np.int32).max):
        bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
        raise ValueError(f"token id {bad} is outside [0, 2**31)")
    return np.ascontiguousarray(a, dtype=np.int32)


def _handed_ids(call) -> np.ndarray:
    """The ids a library call malloc'd and handed over (call(ids_out, n_out)),
    copied into numpy and freed, on failure too."""
    ids, n = POINTER(c_int32)(), c_int()
    try:
        _check(call(byref(ids), byref(n)))
        return np.ctypeslib.as_array(ids, shape=(n.value,)).copy() if n.value else np.zeros(0, np.int32)
    finally:
        _lib.free(ids)


def _adapter_list(adapter) -> list:
    """An adapter path, a list of them, or None, as a list."""
    return [adapter] if isinstance(adapter, (str, os.PathLike)) else list(adapter or [])


_SIZE = re.compile(r"(\d+\.?\d*|\.\d+)([kmgt](?:ib|b)?|b)?", re.IGNORECASE)


def _size(value: int | str | None, what: str) -> int:
    """Bytes from an int or a size as the CLI's options take it: K, M, G, T (or KiB...) are 1024s,
    KB, MB, GB, TB 1000s ("16GiB", "2G", "500MB"). None or 0: the library's default."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{what} must be a byte count or a size like '16GiB', got {value!r}")
    unit = (match.group(2) or "b").lower()
    scale = 1 if unit == "b" else (1024 if unit[1:] in ("", "ib") else 1000) ** ("kmgt".index(unit[0]) + 1)
    return int(float(match.group(1)) * scale)


def _spec_text(spec: dict | str | os.PathLike, spec_dir: str | None) -> tuple[str, str | None]:
    """A spec as the CLI's --spec takes it (a dict, JSON text or a file path): its text and the folder its
    relative paths start from."""
    if isinstance(spec, dict):
        return json.dumps(spec), spec_dir
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and not spec.lstrip().startswith("{")):
        path = Path(spec)
        return path.read_text(), spec_dir or str(path.parent)
    return spec, spec_dir


def _c_paths(paths: Sequence) -> ctypes.Array:
    """paths as a C array of char * (at least one slot); keep it alive while the library reads it."""
    return (c_char_p * max(1, len(paths)))(*[os.fsencode(p) for p in paths])


def _int_ptr(a: np.ndarray):
    return a.ctypes.data_as(POINTER(c_int32))


def _float_ptr(a: np.ndarray):
    return a.ctypes.data_as(POINTER(c_float))


def is_refusal(text: str) -> bool:
    """Whether a continuation reads as a refusal (the library's phrase list)."""
    return bool(_lib.lib().pb_text_is_refusal(text.encode()))


class _Progress:
    """A progress callback for the library: a tqdm bar when tqdm is installed,
    else a line on stderr; and, while it runs, Ctrl-C sets the sweep's stop
    flag (the Python handler runs when the callback does)."""

    def __init__(self, label: str, unit: str, show: bool, stop: ctypes.c_int | None = None):
        self.label, self.unit, self.show, self.stop = label, unit, show, stop
        self.bar = None
        self.printed = False
        self.callback = _lib.PROGRESS(self._update)
        self.previous_handler = None

    def _update(self, done: int, total: int, _user) -> None:
        if not self.show:
            return
        if self.bar is None:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=int(total), desc=self.label, unit=self.unit)
            except ImportError:
                self.bar = False
        if self.bar:
            self.bar.update(int(done) - self.bar.n)
        else:
            print(f"\r{self.label}: {done}/{total} {self.unit}", end="", file=sys.stderr, flush=True)
            self.printed = True

    def __enter__(self) -> "_Progress":
        if self.stop is not None and threading.current_thread() is threading.main_thread():
            def interrupt(_signum, _frame):
                self.stop.value = 1
            self.previous_handler = signal.signal(signal.SIGINT, interrupt)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
        if self.bar:
            self.bar.close()
        elif self.printed:
            print(file=sys.stderr)


class Model:
    """A loaded model (pb_model). Use as a context manager, or call close()."""

    def __init__(self, handle: int):
        self._handle = c_void_p(handle)
        self._adapters: list = []  # LoRA adapters merged at load: an export merges them too
        self._backend, self._dtype = "cpu", "f32"  # as loaded: a sweep's checkpoint records them
        self._weights = "resident"  # as loaded: what plan() assumes unless told
        self._weight_memory = 0
        # sweeps read the model until they are freed: closing the model frees them first
        self._sweeps: "weakref.WeakSet[SweepResult]" = weakref.WeakSet()
        config = _lib.lib().pb_model_get_config(self._handle).contents
        self.config: dict[str, Any] = {
            name: (getattr(config, name).decode() if name == "arch" else getattr(config, name))
            for name, _ in _lib.ModelConfig._fields_
        }

    # ---- loading -------------------------------------------------------------

    @staticmethod
    def _options(backend: str, dtype: str, threads: int, adapter: str | Sequence[str] | None, device: int = 0,
                 weights: str = "resident", weight_memory: int | str | None = None, shape_only: bool = False):
        for name, value, allowed in (("backend", backend, _lib.BACKENDS), ("dtype", dtype, _lib.DTYPES),
                                     ("weights", weights, _lib.WEIGHTS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        adapters = _adapter_list(adapter)
        names = _c_paths(adapters)
        options = _lib.LoadOptions(n_threads=threads, backend=_lib.BACKENDS[backend], dtype=_lib.DTYPES[dtype],
                                   device=device, weights=_lib.WEIGHTS[weights],
                                   weight_memory=_size(weight_memory, "weight_memory"), shape_only=int(shape_only),
                                   adapters=names, n_adapters=len(adapters))
        return options, names

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "cpu", dtype: str = "f32", adapter=None,
             threads: int = 0, device: int = 0, weights: str = "resident", weight_memory: int | str | None = None,
             shape_only: bool = False) -> "Model":
        """A .gguf file or a Hugging Face folder; adapter: a LoRA adapter path
        (PEFT folder or GGUF LoRA) or a list of them, merged at load.
        weights: "resident", "stream" (each layer read from the GGUF as a
        sweep's wave reaches it) or "auto"; weight_memory caps their bytes
        (an int or "16GiB"). shape_only: the shape and tokenizer alone, for
        plan() on a model this machine cannot hold; it does not run."""
        options, _keep = cls._options(backend, dtype, threads, adapter, device, weights, weight_memory, shape_only)
        handle = c_void_p()
        _check(_lib.lib().pb_model_load(byref(handle), os.fsencode(path), byref(options)))
        model = cls(handle.value)
        model._adapters = _adapter_list(adapter)
        model._backend, model._dtype = backend, dtype
        # what plan() assumes: as asked of a shape-only load, else as the load decided
        streams = _lib.lib().pb_model_streams_weights(model._handle)
        model._weights = weights if shape_only else "stream" if streams else "resident"
        model._weight_memory = options.weight_memory
        return model

    @classmethod
    def random(cls, name: str, seed: int = 0, backend: str = "cpu", dtype: str = "f32", threads: int = 0) -> "Model":
        """Seeded random weights at a real shape ("tiny", "smollm2-135m:2", ...); no tokenizer."""
        options, _keep = cls._options(backend, dtype, threads, None)
        handle = c_void_p()
        _check(_lib.lib().pb_model_random(byref(handle), name.encode(), seed, byref(options)))
        model = cls(handle.value)
        model._backend, model._dtype = backend, dtype
        return model

    def close(self) -> None:
        """Frees the model, and first every sweep made on it (their arrays and
        records stay; their write() is gone)."""
        for sweep in list(self._sweeps):
            sweep.close()
        if self._handle:
            _lib.lib().pb_model_free(self._handle)
            self._handle = c_void_p()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def source(self) -> str:
        return _lib.lib().pb_model_get_source(self._handle).decode()

    def _live(self) -> c_void_p:
        if not self._handle:
            raise PatchbayError("PB_ERR_ARG", "the model was closed")
        return self._handle

    # ---- text ----------------------------------------------------------------

    def tokenize(self, text: str, parse_special: bool = False, bos: bool | None = None) -> np.ndarray:
        """Token ids of plain text (no chat template), int32. bos: None puts the
        model's BOS first where its tokenizer does (add_bos_token: Gemma yes,
        SmolLM2 no), as transformers' tokenizer(text), sweeps and the CLI do;
        True always (TransformerLens's prepend_bos=True); False never.
        parse_special: text spelling a special token becomes that token."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize takes text (str), got {type(text).__name__}")
        policy = -1 if bos is None else int(bool(bos))
        return _handed_ids(lambda ids, n: _lib.lib().pb_model_tokenize_plain(
            self._live(), text.encode(), int(parse_special), policy, ids, n, None))

    def chat_tokenize(self, user: str, system: str | None = None) -> np.ndarray:
        """One user turn in the model's chat template plus the generation prompt, as
        transformers' apply_chat_template(..., add_generation_prompt=True)."""
        return _handed_ids(lambda ids, n: _lib.lib().pb_model_chat_tokenize(
            self._live(), system.encode() if system is not None else None, user.encode(), ids, n))

    def detokenize(self, ids: Sequence[int] | np.ndarray) -> str:
        a = _ids_array(ids)
        text = c_void_p()
        _check(_lib.lib().pb_model_detokenize(self._live(), _int_ptr(a), len(a), byref(text)))
        try:
            return ctypes.string_at(text).decode("utf-8", "replace")
        finally:
            _lib.free(text)

    def set_chat_template(self, name_or_file: str) -> None:
        _check(_lib.lib().pb_model_set_chat_template(self._live(), os.fsencode(name_or_file)))

    # ---- forward ---------------------------------------------------------------

    def forward(self, ids: Sequence[int] | np.ndarray, capture: str | Iterable[str] | None = None,
                ablate: np.ndarray | "Direction" | None = None,
                add: tuple[np.ndarray | "Direction", int, float] | None = None
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits (T, vocab) and the captured activations by TransformerLens hook
        name (globs allowed: "blocks.*.hook_resid_pre"): (T, d_model), or
        (T, n_heads, head_dim) for z/q and k/v, (n_heads, T, T) for patterns.
        The logits are written by the library straight into the array; each
        captured array is a view of the library's buffer (kept alive by it).
        ablate: a direction projected out of every residual-stream write;
        add: (direction, layer, scale) added to that layer's resid_pre."""
        a = _ids_array(ids)
        lib = _lib.lib()
        cfg = self.config
        logits = np.empty((len(a), cfg["vocab_size"]), dtype=np.float32)
        handle = _Capture.create(self, capture) if capture else None
        iv, _keep = self._intervention(ablate, add)
        if iv is None:
            _check(lib.pb_forward(self._live(), _int_ptr(a), len(a), _float_ptr(logits),
                                  handle.pointer if handle else None))
        else:
            _check(lib.pb_forward_intervened(self._live(), _int_ptr(a), len(a), byref(iv), _float_ptr(logits),
                                             handle.pointer if handle else None))
        return logits, (handle.arrays() if handle else {})

    def gradients(self, ids: Sequence[int] | np.ndarray, metric: str,
                  capture: str | Iterable[str] = "blocks.*.hook_resid_pre", position: int = -1,
                  positive: Sequence[int | str] = (), negative: Sequence[int | str] = (),
                  reference: Sequence[int] | np.ndarray | None = None, direction=None, layer: int | None = None,
                  hook: str = "resid_pre") -> tuple[float, dict[str, np.ndarray]]:
        """The metric's gradient with respect to the activations at the captured
        hook points (TransformerLens names, globs allowed; hook_resid_pre/mid/post,
        hook_attn_out, hook_mlp_out, attn.hook_z/q/k/v/pattern), as autograd
        gives it on the forward of ids (the total derivative through every later
        use), each array shaped as forward's capture of it; returns (metric value,
        {name: array}). One forward and one backward pass in the library.
        metric at `position` (negative: from the end):
          "logit_diff"    mean logit of positive - mean logit of negative
          "logprob"       log P(positive), the set of tokens
          "refusal_score" log P(positive) - log P(every other token)
          "kl"            KL(reference || model), the reference held fixed:
                          its log-probabilities (vocab,), or the token ids
                          of a reference prompt, read at the same position
          "projection"    <x, direction>, x the residual stream entering
                          `layer` (hook "resid_pre") or leaving it ("resid_post")
        Tokens are ids or single-token strings."""
        a = _ids_array(ids)
        T = len(a)
        if metric not in _lib.METRICS:
            raise ValueError(f"metric {metric!r}: expected one of {', '.join(_lib.METRICS)}")
        if hook not in ("resid_pre", "resid_post"):
            raise ValueError(f"hook {hook!r}: expected 'resid_pre' or 'resid_post'")
        pos = position + T if position < 0 else position
        pos_ids = np.ascontiguousarray([self._single_token(t, "positive") for t in positive], dtype=np.int32)
        neg_ids = np.ascontiguousarray([self._single_token(t, "negative") for t in negative], dtype=np.int32)
        m = _lib.GradMetric(kind=_lib.METRICS[metric], position=pos, n_positive=len(pos_ids),
                            n_negative=len(neg_ids), layer=-1 if layer is None else int(layer),
                            hook_post=1 if hook == "resid_post" else 0)
        if len(pos_ids):
            m.positive = _int_ptr(pos_ids)
        if len(neg_ids):
            m.negative = _int_ptr(neg_ids)
        ref = None
        if metric == "kl":
            ref = self._reference_logprobs(reference, position)
            m.ref_logprobs = ref.ctypes.data_as(POINTER(c_double))
        u = None
        if metric == "projection":
            if direction is None or layer is None:
                raise ValueError("metric 'projection' needs direction and layer")
            u = _direction_array(direction, self.config["d_model"])
            m.direction = _float_ptr(u)
        handle = _Capture.create(self, capture)
        value = c_double()
        _check(_lib.lib().pb_gradients(self._live(), _int_ptr(a), T, byref(m), handle.pointer, byref(value)))
        return value.value, handle.arrays()

    def _reference_logprobs(self, reference, position: int) -> np.ndarray:
        """kl's reference distribution: log-probabilities given (vocab,), or
        those of a reference prompt's forward at `position`."""
        if reference is None:
            raise ValueError("metric 'kl' needs reference: log-probabilities (vocab,) or token ids")
        r = np.asarray(reference)
        if np.issubdtype(r.dtype, np.floating):
            if r.shape != (self.config["vocab_size"],):
                raise ValueError(f"reference log-probabilities: shape {r.shape}, expected "
                                 f"({self.config['vocab_size']},)")
            return np.ascontiguousarray(r, dtype=np.float64)
        logits, _ = self.forward(r)
        row = logits[position].astype(np.float64)
        top = row.max()
        return row - (top + np.log(np.exp(row - top).sum()))

    def _intervention(self, ablate, add):
        """An ablation or an addition as the library's pb_intervention (and the
        array it points into, to keep alive)."""
        if ablate is not None and add is not None:
            raise ValueError("give ablate or add, not both")
        if ablate is None and add is None:
            return None, None
        if ablate is not None:
            u = _direction_array(ablate, self.config["d_model"])
            return _lib.Intervention(kind=_lib.INTERVENE_ABLATE, direction=_float_ptr(u)), u
        direction, layer, scale = add
        u = _direction_array(direction, self.config["d_model"])
        return _lib.Intervention(kind=_lib.INTERVENE_ADD, direction=_float_ptr(u), layer=int(layer),
                                 scale=float(scale)), u

    # ---- generation ----------------------------------------------------------

    def generate(self, prompts: str | Sequence[int] | np.ndarray | Sequence[str | Sequence[int] | np.ndarray],
                 max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, seed: int = 0, samples: int = 1, stop: Sequence[str] = (), batch: int = 64,
                 chat: bool = True, progress: bool = False, return_ids: bool = False,
                 ablate: np.ndarray | "Direction" | None = None,
                 add: tuple[np.ndarray | "Direction", int, float] | None = None) -> list:
        """Continuations of one prompt or many (text, chat-templated unless chat=False,
        or token ids), all decoded together: a list per prompt of `samples`
        texts (token id arrays with return_ids=True). Greedy unless temperature > 0.
        ablate / add: as in forward, at every position, generated ones too."""
        if samples < 1:
            raise ValueError(f"samples = {samples}: at least 1 continuation per prompt")
        if temperature == 0 and (samples > 1 or top_k != 0 or top_p not in (0.0, 1.0) or min_p != 0):
            raise ValueError("samples > 1, top_k, top_p and min_p are for sampling: give temperature > 0 "
                             "(temperature 0 decodes greedily, every continuation alike, and would ignore them)")
        single = (isinstance(prompts, str) or (isinstance(prompts, np.ndarray) and prompts.ndim == 1)
                  or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))))
        items = [prompts] if single else list(prompts)
        ids = [self._prompt_ids(p, chat) for p in items]
        n, K = len(ids), samples
        lengths = (c_int * max(1, n))(*[len(a) for a in ids])
        pointers = (POINTER(c_int32) * max(1, n))(*[_int_ptr(a) for a in ids])
        out = np.zeros((n * K, max(1, max_new_tokens)), dtype=np.int32)
        n_out = np.zeros(n * K, dtype=np.int32)
        sampling = _lib.Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        stops = (c_char_p * max(1, len(stop)))(*[s.encode() for s in stop])
        iv, _keep = self._intervention(ablate, add)
        with _Progress("generate", "continuations", progress) as bar:
            options = _lib.GenerateOptions(max_new=max_new_tokens, n_samples=K,
                                           sampling=ctypes.pointer(sampling) if temperature != 0 else None,
                                           stop=stops if stop else None, n_stop=len(stop), max_batch=batch,
                                           iv=ctypes.pointer(iv) if iv is not None else None,
                                           progress=bar.callback)
            _check(_lib.lib().pb_generate_batch(self._live(), pointers, lengths, n, byref(options), _int_ptr(out),
                                                n_out.ctypes.data_as(POINTER(c_int))))
        rows = [out[s, :n_out[s]].copy() for s in range(n * K)]
        if not return_ids:
            rows = [self.detokenize(r) if len(r) else "" for r in rows]
        grouped = [rows[i * K:(i + 1) * K] for i in range(n)]
        return grouped[0] if single else grouped

    def _prompt_ids(self, prompt, chat: bool) -> np.ndarray:
        if isinstance(prompt, str):
            return self.chat_tokenize(prompt) if chat else self.tokenize(prompt)
        return _ids_array(prompt)

    # ---- the refusal direction -------------------------------------------------

    def refusal_direction(self, harmful_train: Sequence, harmless_train: Sequence, harmful_val: Sequence,
                          harmless_val: Sequence, refusal_tokens: Sequence[str | int], n_post: int = 0,
                          layer_stride: int = 1, max_layer_fraction: float = 0.8, kl_threshold: float = 0.1,
                          max_train: int = 0, max_val: int = 0, chat: bool = True) -> "Direction":
        """The difference-in-means refusal direction (Arditi et al. 2024), as
        `patchbay direction`: every candidate r(layer, post-instruction
        position) from the train prompts, scored on the validation prompts by
        ablation, addition and KL, one selected by the paper's rule. Prompts
        are texts (chat-templated unless chat=False) or id arrays;
        refusal_tokens single tokens (text or ids) whose logits make the
        refusal score. n_post 0: the train prompts' common template suffix.
        Defaults differ from the CLI's where the CLI trades search for time:
        every layer (layer_stride=1, the paper's search; `direction` takes
        --layer-stride 3) and every prompt given (max_train/max_val 0;
        `direction` takes 32 and 8 pairs). With the same settings the two
        give the same direction."""
        sets = [[self._prompt_ids(p, chat) for p in group]
                for group in (harmful_train, harmless_train, harmful_val, harmless_val)]
        refusal = np.array([self._single_token(t, "refusal") for t in refusal_tokens], dtype=np.int32)
        keep = []

        def prompt_set(arrays):
            lengths = (c_int * max(1, len(arrays)))(*[len(a) for a in arrays])
            pointers = (POINTER(c_int32) * max(1, len(arrays)))(*[_int_ptr(a) for a in arrays])
            keep.extend([lengths, pointers])
            return _lib.PromptSet(n=len(arrays), ids=pointers, T=lengths)

        inputs = _lib.DirectionInputs(harmful_train=prompt_set(sets[0]), harmless_train=prompt_set(sets[1]),
                                      harmful_val=prompt_set(sets[2]), harmless_val=prompt_set(sets[3]),
                                      n_post=n_post, refusal_ids=_int_ptr(refusal), n_refusal_ids=len(refusal),
                                      layer_stride=layer_stride, max_layer_fraction=max_layer_fraction,
                                      kl_threshold=kl_threshold, max_train=max_train, max_val=max_val)
        result = _lib.DirectionResult()
        status = _lib.lib().pb_direction_compute(self._live(), byref(inputs), byref(result))
        if status != _lib.PB_OK:
            _lib.lib().pb_direction_result_free(byref(result))
            _check(status)
        return Direction(result, self.source)

    def _single_token(self, token: str | int, role: str) -> int:
        """A metric's token: an id, or text that is one token as written (no BOS)."""
        if isinstance(token, (int, np.integer)):
            return int(token)
        ids = self.tokenize(token, bos=False)
        if len(ids) != 1:
            raise PatchbayError("PB_ERR_ARG", f"{role} token {token!r} is {len(ids)} tokens, not one")
        return int(ids[0])

    def export_ablated(self, direction, out: str | os.PathLike, **options) -> dict[str, Any]:
        """export_ablated(self.source, direction, out, ...): this model's files,
        the adapters it was loaded with merged, the direction projected out of
        the weights."""
        options.setdefault("adapter", self._adapters)
        return export_ablated(self.source, direction, out, **options)

    # ---- sweeps --------------------------------------------------------------

    @property
    def streams_weights(self) -> bool:
        """True when the layers' weights stream from the file (load(weights="stream"))."""
        return bool(_lib.lib().pb_model_streams_weights(self._live()))

    @property
    def weight_bytes(self) -> int:
        """Bytes the weights hold in the backend's memory (streamed: the slots and what stays)."""
        return int(_lib.lib().pb_model_weight_bytes(self._live()))

    def plan(self, spec: dict | str | os.PathLike, spec_dir: str | None = None,
             device_memory: int | str | None = None, gpus: int = 1, weights: str | None = None,
             weight_memory: int | str | None = None, max_memory: int | str | None = None,
             tflops: float | None = None, link_gbs: float | None = None) -> dict[str, Any]:
        """How a sweep of spec would run, as `patchbay plan` prints it (pb_sweep_plan):
        resident or streamed weights, rows per wave, waves, bytes streamed, the
        peak memory per rank and a lower bound on the time, as a dict whose
        weights, weight_memory and max_memory are what to run it with.
        device_memory: one rank's (default the device's, or this machine's);
        weights: as the model was loaded unless given (load it with
        shape_only=True to plan a model this machine cannot hold). Raises
        PatchbayError, with the numbers, when even streamed it cannot fit."""
        text, spec_dir = _spec_text(spec, spec_dir)
        weights = weights or self._weights
        if weights not in _lib.WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(_lib.WEIGHTS)}, got {weights!r}")
        options = _lib.PlanOptions(
            device_memory=_size(device_memory, "device_memory"), n_ranks=gpus, weights=_lib.WEIGHTS[weights],
            weight_memory=_size(weight_memory, "weight_memory") or self._weight_memory,
            max_memory=_size(max_memory, "max_memory"), flops_per_s=(tflops or 0.0) * 1e12,
            link_bytes_per_s=(link_gbs or 0.0) * 1e9)
        handle = c_void_p()
        sweep_options = _lib.SweepOptions(max_memory=options.max_memory, metric_fn_residual_layer=-1)
        _check(_lib.lib().pb_sweep_create(byref(handle), self._live(), text.encode(),
                                          os.fsencode(spec_dir) if spec_dir else None, byref(sweep_options)))
        try:
            plan = _lib.Plan()
            _check(_lib.lib().pb_sweep_plan(handle, byref(options), byref(plan)))
        finally:
            _lib.lib().pb_sweep_free(handle)
        out = {name: getattr(plan, name) for name, _ in _lib.Plan._fields_ if name != "why_not"}
        out["method"] = plan.method.decode()
        out["estimate"] = bool(plan.estimate)
        out["weights"] = next(k for k, v in _lib.WEIGHTS.items() if v == plan.weights)
        return out

    def _fingerprint(self, spec_text: str, checkpoint: str) -> "_lib.SweepFingerprint":
        """What a checkpoint of a sweep of spec_text on this model must match:
        the model's bytes with its adapters (the hash cached beside the
        checkpoint, as the CLI caches it), the spec, the backend and dtype."""
        fingerprint = _lib.SweepFingerprint()
        names = _c_paths(self._adapters)
        options = _lib.FingerprintOptions(hash_cache=os.fsencode(checkpoint + ".model-hash"), adapters=names,
                                          n_adapters=len(self._adapters))
        _check(_lib.lib().pb_sweep_fingerprint_compute_with(
            byref(fingerprint), self.source.encode(), spec_text.encode(), _lib.BACKENDS[self._backend],
            _lib.DTYPES[self._dtype], byref(options)))
        return fingerprint

    def sweep(self, spec: dict | str | os.PathLike, progress: bool = True, spec_dir: str | None = None,
              max_memory: int | str | None = None, checkpoint: str | os.PathLike | None = None) -> "SweepResult":
        """Runs a patching sweep (a spec as the CLI's --spec takes: a dict, a JSON
        string or a file path) and returns its arrays and records. max_memory:
        the batches' bytes (an int or "16GiB"; default 1 GiB, or with streamed
        weights on a GPU what the plan leaves). checkpoint: a file where an
        interrupted sweep (Ctrl-C) keeps its finished rows, and from which the
        same call resumes them (refused, naming what differs, when it was
        written for another model, adapter, spec, backend or prompts); removed
        once the sweep completes. The CLI's --checkpoint with --resume."""
        text, spec_dir = _spec_text(spec, spec_dir)
        checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        folder = os.path.dirname(os.path.abspath(checkpoint)) if checkpoint else None
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise ValueError(f"checkpoint {checkpoint}: {folder} is not a writable folder")
        stop = c_int(0)
        with _Progress("sweep", "rows", progress, stop) as bar:
            options = _lib.SweepOptions(max_memory=_size(max_memory, "max_memory"), progress=bar.callback,
                                        metric_fn_residual_layer=-1, stop=ctypes.pointer(stop))
            handle = c_void_p()
            _check(_lib.lib().pb_sweep_create(byref(handle), self._live(), text.encode(),
                                              os.fsencode(spec_dir) if spec_dir else None, byref(options)))
            result = SweepResult(handle, self)
            try:
                fingerprint = self._fingerprint(text, checkpoint) if checkpoint else None
                if checkpoint and os.path.exists(checkpoint):
                    _check(_lib.lib().pb_sweep_checkpoint_load(handle, os.fsencode(checkpoint), byref(fingerprint)))
                _check(_lib.lib().pb_sweep_run(handle))
            except PatchbayInterrupted as stopped:
                kept = self._keep_rows(handle, checkpoint, fingerprint) if checkpoint else None
                result.close()
                if kept:
                    raise PatchbayInterrupted(stopped.status, f"{stopped.message}; {kept}") from None
                raise
            except BaseException:
                result.close()  # now, not whenever a traceback holding it goes
                raise
        result._collect()
        if checkpoint:  # the results hold everything it did
            for done in (checkpoint, checkpoint + ".model-hash"):
                if os.path.exists(done):
                    os.remove(done)
        return result

    @staticmethod
    def _keep_rows(handle: c_void_p, checkpoint: str, fingerprint: "_lib.SweepFingerprint") -> str:
        """Writes the interrupted sweep's checkpoint; says so, or why it could not."""
        status = _lib.lib().pb_sweep_checkpoint_write(handle, os.fsencode(checkpoint), byref(fingerprint))
        if status != _lib.PB_OK:
            why = (_lib.lib().pb_last_error() or b"").decode("utf-8", "replace")
            return f"the finished rows could not be kept: {why}"
        return f"the finished rows are kept in {checkpoint}: the same sweep(..., checkpoint=) call resumes them"


def export_ablated(model_path: str | os.PathLike, direction, out: str | os.PathLike, outtype: str = "f32",
                   format: str = "auto", overwrite: bool = False, progress: bool = True,
                   adapter: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> dict[str, Any]:
    """Writes the model at model_path (a GGUF file or a Hugging Face folder)
    with the direction (a Direction or a (d_model,) array) projected out of
    its weights, as `patchbay export` does: out is a .gguf file for a GGUF
    source, a folder (model.safetensors, config.json, tokenizer files) for a
    Hugging Face one. outtype: f32, bf16, f16 or (GGUF) q8_0. adapter: LoRA
    adapters merged into the weights first. Ctrl-C stops it and leaves no
    output. Returns what was written (tensors, edited, untied, bytes)."""
    if outtype not in _lib.EXPORT_TYPES:
        raise ValueError(f"outtype must be one of {sorted(_lib.EXPORT_TYPES)}, got {outtype!r}")
    if format not in _lib.EXPORT_FORMATS:
        raise ValueError(f"format must be one of {sorted(_lib.EXPORT_FORMATS)}, got {format!r}")
    u = direction.direction if isinstance(direction, Direction) else direction
    u = np.ascontiguousarray(np.asarray(u, dtype=np.float32))
    if u.ndim != 1:
        raise ValueError(f"a direction is one-dimensional (d_model,), got shape {u.shape}")
    stop = c_int(0)
    summary = _lib.ExportSummary()
    with _Progress("export", "tensors", progress, stop) as bar:
        adapters = _adapter_list(adapter)
        names = _c_paths(adapters)
        options = _lib.ExportOptions(format=_lib.EXPORT_FORMATS[format], dtype=_lib.EXPORT_TYPES[outtype],
                                     overwrite=int(overwrite), stop=ctypes.pointer(stop), progress=bar.callback,
                                     adapters=names, n_adapters=len(adapters))
        _check(_lib.lib().pb_export_ablated(os.fsencode(model_path), _float_ptr(u), int(u.shape[0]),
                                            byref(options), os.fsencode(out), byref(summary)))
    return {"tensors": summary.n_tensors, "edited": summary.n_edited, "untied": bool(summary.untied),
            "bytes": summary.n_bytes}


def _direction_array(direction, d_model: int) -> np.ndarray:
    u = direction.direction if isinstance(direction, Direction) else direction
    u = np.ascontiguousarray(np.asarray(u, dtype=np.float32))
    if u.shape != (d_model,):
        raise ValueError(f"a direction has shape ({d_model},), got {u.shape}")
    return u


class Direction:
    """A refusal direction and every candidate it was chosen from
    (pb_direction_result): `direction` (d_model, unit), `difference` (its raw
    mean difference), `differences` (n_layers, n_post, d_model), the selected
    `layer` and `position` (from the end), its scores, `passes` (whether it
    passed every filter), `candidates` (one dict each); write(dir) gives the
    CLI's direction.npy, differences.npy and direction.json."""

    def __init__(self, result: "_lib.DirectionResult", model_path: str):
        self._result = result
        self._model_path = model_path
        r = result
        d, n = r.d_model, r.n_layers * r.n_post * r.d_model
        self.direction = np.ctypeslib.as_array(r.direction, shape=(d,)).copy()
        self.difference = np.ctypeslib.as_array(r.difference, shape=(d,)).copy()
        self.differences = np.ctypeslib.as_array(r.differences, shape=(n,)).copy().reshape(
            r.n_layers, r.n_post, d)
        self.layer, self.position, self.norm = r.layer, r.position, r.norm
        self.ablation_score, self.addition_score, self.kl = r.ablation_score, r.addition_score, r.kl
        self.passes = bool(r.selected_passes)
        self.baseline_harmful, self.baseline_harmless = r.baseline_harmful, r.baseline_harmless
        self.candidates = [{name: getattr(r.candidates[i], name) for name, _ in _lib.DirectionCandidate._fields_}
                           for i in range(r.n_candidates)]

    def write(self, folder: str | os.PathLike, prompt_file: str | None = None, overwrite: bool = False) -> None:
        """direction.npy, differences.npy and direction.json into folder (all or none).
        A folder that holds files is refused unless overwrite=True, as `patchbay direction --out`."""
        if not overwrite and os.path.isdir(folder) and any(os.scandir(folder)):
            raise PatchbayError("PB_ERR_ARG", f"output directory {os.fspath(folder)} is not empty; pass "
                                              "overwrite=True to replace its files")
        prov = _lib.DirectionProvenance(model_path=self._model_path.encode(),
                                        prompt_file=prompt_file.encode() if prompt_file else None)
        _check(_lib.lib().pb_direction_write(byref(self._result), os.fsencode(folder), byref(prov)))

    def __del__(self) -> None:
        try:
            _lib.lib().pb_direction_result_free(byref(self._result))
        except Exception:
            pass


class _Capture:
    """A pb_capture whose buffers back numpy views; freed when the last view goes."""

    def __init__(self, pointer: c_void_p):
        self.pointer = pointer

    @classmethod
    def create(cls, model: Model, capture: str | Iterable[str]) -> "_Capture":
        pattern = capture if isinstance(capture, str) else ",".join(capture)
        handle = c_void_p()
        _check(_lib.lib().pb_capture_create(byref(handle), model._live(), pattern.encode()))
        return cls(handle)

    def arrays(self) -> dict[str, np.ndarray]:
        lib = _lib.lib()
        out = {}
        for i in range(lib.pb_capture_count(self.pointer)):
            n_dims, shape = c_int(), (c_int64 * 3)()
            data = lib.pb_capture_data(self.pointer, i, byref(n_dims), shape)
            dims = tuple(shape[k] for k in range(n_dims.value))
            count = int(np.prod(dims))
            buffer = (c_float * count).from_address(ctypes.addressof(data.contents))
            buffer._owner = self  # the capture lives while any view of it does
            out[lib.pb_capture_name(self.pointer, i).decode()] = np.frombuffer(buffer, dtype=np.float32).reshape(dims)
        return out

    def __del__(self) -> None:
        try:
            if self.pointer:
                _lib.lib().pb_capture_free(self.pointer)
                self.pointer = c_void_p()
        except Exception:
            pass


class _SweepOutputs:
    """A finished sweep's outputs as the library builds them in memory
    (pb_sweep_outputs): numpy arrays over its own buffers, not copied; freed
    when the last array goes."""

    def __init__(self, handle: c_void_p):
        self.outputs = _lib.SweepOutputs()
        _check(_lib.lib().pb_sweep_outputs_build(handle, byref(self.outputs)))
        self.results_json = ctypes.string_at(self.outputs.results_json).decode()
        self.report_text = ctypes.string_at(self.outputs.report_text).decode()

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i in range(self.outputs.n_arrays):
            a = self.outputs.arrays[i]
            dims = tuple(a.shape[k] for k in range(a.n_dims))
            buffer = (c_float * int(np.prod(dims))).from_address(ctypes.addressof(a.data.contents))
            buffer._owner = self  # the outputs live while any array over them does
            out[a.name.decode()] = np.frombuffer(buffer, dtype=np.float32).reshape(dims)
        return out

    def __del__(self) -> None:
        try:
            _lib.lib().pb_sweep_outputs_free(byref(self.outputs))
        except Exception:
            pass


class SweepResult:
    """A finished sweep: result["resid_pre"] and the other components as numpy
    arrays shaped like TransformerLens's patching helpers ([layer, pos], z and
    the other head components [layer, head, pos]: the CLI's .npy files),
    `summary` (results.json without its sites), `report` (report.txt's
    text), to_records() one dict per site for pandas, write(dir) the CLI's
    files. The arrays are views of the library's buffers, not copies."""

    def __init__(self, handle: c_void_p, model: Model):
        self._handle = handle
        self._model = model  # the sweep reads the model until freed
        model._sweeps.add(self)
        self.arrays: dict[str, np.ndarray] = {}
        self.summary: dict[str, Any] = {}
        self.report = ""
        self._sites: list[dict[str, Any]] = []

    def _collect(self) -> None:
        outputs = _SweepOutputs(self._handle)
        results = json.loads(outputs.results_json)
        self._sites = results.pop("sites")
        self.summary = results
        self.report = outputs.report_text
        self.arrays = outputs.arrays()

    def __getitem__(self, component: str) -> np.ndarray:
        return self.arrays[component]

    def keys(self):
        return self.arrays.keys()

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per site: component, hook, layer, head, position, effect,
        stderr, significant, per-pair effects (pandas.DataFrame(result.to_records()))."""
        return [dict(s) for s in self._sites]

    def write(self, folder: str | os.PathLike, overwrite: bool = False) -> None:
        """results.json, the .npy arrays and report.txt, as `patchbay sweep --out`."""
        if not self._handle:
            raise PatchbayError("PB_ERR_ARG", "the sweep was closed (with its model)")
        _check(_lib.lib().pb_sweep_write(self._handle, os.fsencode(folder), int(overwrite)))

    def close(self) -> None:
        if self._handle:
            _lib.lib().pb_sweep_free(self._handle)
            self._handle = c_void_p()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
