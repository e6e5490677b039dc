"""What a model is made of, read from its files so that no backend needs sentence-transformers:
its transformer folder, pooling, sequence limit and tokenizer; plus the batching and pooling every
backend shares."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from search.embedding.models import canonical_model_name, resolve_model

__all__ = ["ModelSpec", "UnsupportedModel", "batches_by_length", "load_tokenizer", "model_prompts", "model_spec", "pool", "token_counter"]


class UnsupportedModel(Exception):
    """The model has parts the ONNX and pipeline backends do not replicate; sentence-transformers runs it."""


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


# sentence-transformers' prompt names for what is searched (`encode_document` tries them in this order)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


@lru_cache(maxsize=None)
def model_prompts(name: str) -> dict[str, str]:
    """The text a model expects before a query and before a document ({"query": ..., "document": ...};
    "" where it expects none), from its config_sentence_transformers.json as sentence-transformers
    reads it: e5 models were trained with "query: " and "passage: " and lose relevance without them."""
    try:
        location = Path(_local_folder(resolve_model(name)))
    except UnsupportedModel:
        return {"query": "", "document": ""}
    config_file = location / "config_sentence_transformers.json"
    prompts = (_read_json(config_file).get("prompts") or {}) if config_file.is_file() else {}
    document = next((prompts[key] for key in DOCUMENT_PROMPT_NAMES if key in prompts), "")
    return {"query": prompts.get("query", ""), "document": document}


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
