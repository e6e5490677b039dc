"""`Encoder`: one model giving L2-normalised float32 vectors, on whichever backend suits the machine.

Backends: an int8 ONNX export run by onnxruntime on a CPU (no torch at query time), the torch model
in float16 fed by a tokenising thread on a CUDA GPU, and sentence-transformers itself as the
reference and the fallback for models the others cannot run.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np

from search.embedding.models import canonical_model_name, resolve_model
from search.embedding.spec import UnsupportedModel, model_prompts, model_spec
from search.errors import SearchError

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

__all__ = ["BACKENDS", "Encoder", "gpu_present", "load_model", "requested_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")


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
        self.backend = self.identity = "torch-fp16" if device.startswith("cuda") else "torch-fp32"
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
                prompt="",  # `Encoder` adds the model's prompts (spec.model_prompts), for every backend alike
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
        from search.embedding.onnx_export import ensure_export
        from search.embedding.onnx_runtime import OnnxEncoder

        try:
            spec = model_spec(name)
            return OnnxEncoder(spec, ensure_export(spec), threads)
        except UnsupportedModel as error:
            first_line = (str(error).splitlines() or [""])[0][:200]
            log.warning("model %r cannot run on ONNX (%s); using sentence-transformers", name, first_line)
            return SentenceTransformerEncoder(name, "cpu")
    device = device or pick_device()
    if device.startswith("cuda"):
        from search.embedding.torch_gpu import TorchEncoder

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
    `threads` caps the cores one ONNX call uses (None: every core, a one-thread session each, for
    batches); a query engine uses 1 per model and runs its models side by side instead.
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
    def identity(self) -> str:
        """What exactly makes the vectors: the backend and, for an ONNX export, its recipe and model
        files. Vectors are reused only under the same identity, so a new recipe re-embeds."""
        return self.impl.identity

    @property
    def dim(self) -> int:
        return self.impl.dim

    @property
    def max_seq_length(self) -> int:
        return self.impl.max_seq_length

    def encode(self, texts: Sequence[str], batch_size: int | None = None, progress: "object | None" = None) -> np.ndarray:
        """Encode passages (after the model's document prompt, if it has one); `batch_size` None takes
        the backend's own; `progress` is an optional tqdm bar advanced by the number of texts done."""
        return self._encode(texts, "document", batch_size, progress)

    def encode_query(self, texts: Sequence[str]) -> np.ndarray:
        """Encode queries, after the model's query prompt (e5: "query: ") if it has one."""
        return self._encode(texts, "query")

    def _encode(self, texts: Sequence[str], role: str, batch_size: int | None = None, progress: "object | None" = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prompt = model_prompts(self.name)[role]
        if prompt:
            texts = [prompt + text for text in texts]
        if batch_size is None:
            return self.impl.encode(texts, progress=progress)
        return self.impl.encode(texts, batch_size, progress)
