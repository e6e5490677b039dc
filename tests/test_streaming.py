"""The streaming build: same index as building everything in memory, keyword-only indexes, and vector reuse
from the previous generation's memory-mapped vectors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from search import Engine
from search.index import preparing as preparing_module, vectors as vectors_module
from search.index.bm25 import BM25Index, BM25Params
from search.text.chunking import chunk_document
from search.index.dense import DenseIndex
from search.embedding.encoder import Encoder
from search.embedding.models import model_plan
from search import BuildConfig
from search.text.passages import contextual_text
from search.ingest.loading import load_documents
from search.index.preparing import chunk_counter
from search.index.folder import IndexFolder
from search.index.passage_store import read_tokens
from search.text.tokenizing import tokenize

from conftest import write_notes

SEARCH = str(Path(sys.executable).parent / "search")
REPO_CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def reference_passages(paths):
    """What a build must hold: every document chunked, in file order, all at once in memory."""
    counter = chunk_counter(tuple(model_plan().items()))  # what a build's chunker counts with
    documents, _ = load_documents(paths)
    return [p for document in documents for p in chunk_document(document, counter, 200, 40)]


def test_streaming_build_equals_in_memory_build(seeds_dir, tmp_path, monkeypatch):
    # tiny batches and an immediate process pool: many chunking and embedding batches are in flight
    monkeypatch.setattr(preparing_module, "POOL_AFTER", 0)
    monkeypatch.setattr(preparing_module, "UNIT_BATCH", 7)
    paths = [seeds_dir, REPO_CORPUS]
    # keyword-only keeps the test fast; the vectors of a streaming build are checked below
    engine, engine_summary = Engine.build(paths, tmp_path / "index", build_config=BuildConfig(keyword_only=True))
    expected = reference_passages(paths)
    assert len(expected) > 100
    assert list(engine.passages) == expected  # passage for passage, in order

    tokens = [tokenize(contextual_text(p)) for p in expected]
    assert read_tokens(engine.generation) == tokens
    in_memory = BM25Index.build(tokens, BuildConfig().bm25, document_starts=np.load(engine.generation.document_starts_file))
    for query in ("序列并行", "all-to-all 通信", "BM25 fusion", "番茄"):
        np.testing.assert_array_equal(engine.backend.bm25.scores(tokenize(query)), in_memory.scores(tokenize(query)))

    assert set(engine_summary.stage_seconds) >= {"load", "chunk", "tokenize", "wait_pool", "bm25", "write"}


def test_vectors_embedded_in_batches_equal_direct_encoding(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors_module, "EMBED_BATCH", 2)
    notes = write_notes(tmp_path / "notes")
    engine, engine_summary = Engine.build([notes], tmp_path / "index")
    texts = [contextual_text(p) for p in engine.passages]
    for space, index in engine.backend.dense.items():
        assert len(index) > 0
        direct = Encoder(engine.plan[space]).encode([texts[i] for i in index.ids.tolist()])
        # int8 ONNX scales activations per batch, so batch-mates move a vector slightly (cosine >= 0.99);
        # each stored row must still be its own passage's vector, not a neighbour's
        similarity = np.asarray(index.vectors()) @ direct.T
        assert np.all(np.diag(similarity) >= 0.99)
        assert similarity.argmax(axis=1).tolist() == list(range(len(direct)))
    assert sorted(pid for index in engine.backend.dense.values() for pid in index.ids.tolist()) == list(range(len(texts)))
    assert set(engine_summary.stage_seconds) >= {"embed", "dense"}


def test_incremental_build_copies_vectors_from_the_previous_generation(tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    first, first_summary = Engine.build([notes], index)

    def vectors_by_text(engine):
        out = {}
        for space, dense in engine.backend.dense.items():
            for pid, vector in zip(dense.ids.tolist(), dense.vectors()):
                out[engine.passages.get(pid).text] = vector
        return out

    before = vectors_by_text(first)
    path = notes / "cooking.md"
    path.write_text(path.read_text().replace("two minutes", "three minutes"), encoding="utf-8")
    second, second_summary = Engine.build([notes], index)
    assert (second_summary.passages_embedded, second_summary.files_changed) == (1, 1)
    after = vectors_by_text(second)
    unchanged = [text for text in after if text in before]
    assert len(unchanged) == len(after) - 1
    for text in unchanged:
        np.testing.assert_array_equal(after[text], before[text])  # copied bit for bit, not re-embedded
    memory_mapped = DenseIndex.load(second.generation.dense_prefix("zh"), mmap=True)
    np.testing.assert_array_equal(memory_mapped.vectors(), second.backend.dense["zh"].vectors())

    path.write_text(path.read_text().replace("three minutes", "four minutes"), encoding="utf-8")
    third = Engine.build([notes], index)[1]
    assert third.passages_embedded == 1 and third.passages_reused == third.passages - 1


def run_search(*args):
    done = subprocess.run([SEARCH, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def test_keyword_only_index_end_to_end(tmp_path):
    notes = write_notes(tmp_path / "notes")
    index = tmp_path / "index"
    summary = json.loads(run_search("index", notes, "--index", index, "--keyword-only", "--json").stdout)
    assert summary["passages"] > 0 and summary["passages_embedded"] == 0
    generation = IndexFolder(index).current()
    assert not list(generation.path.glob("dense-*"))
    assert generation.read_manifest()["keyword_only"] is True

    hybrid = run_search("query", "序列并行", "--index", index, "--json")
    bm25 = run_search("query", "序列并行", "--index", index, "--json", "--mode", "bm25")
    assert hybrid.stderr.count("\n") == 1 and "keyword-only" in hybrid.stderr  # one notice line
    assert bm25.stderr == ""
    assert json.loads(hybrid.stdout) == json.loads(bm25.stdout) and json.loads(bm25.stdout)[0]["path"].endswith("并行.md")
    assert "keyword-only" in run_search("stats", "--index", index).stdout
    assert json.loads(run_search("stats", "--index", index, "--json").stdout)["keyword_only"] is True

    # an incremental update keeps the index keyword-only
    (notes / "新笔记.md").write_text("# 新笔记\n\n量子退火算法的入门笔记。\n", encoding="utf-8")
    update = json.loads(run_search("index", notes, "--index", index, "--json").stdout)
    assert (update["files_added"], update["files_unchanged"], update["passages_embedded"]) == (1, 3, 0)
    engine = Engine.open(index)
    assert engine.keyword_only and engine.analyse("序列并行", "dense").notice
    assert "量子退火" in engine.search("量子退火", k=1, mode="dense")[0].text

    # a rebuild without the flag adds embeddings
    rebuilt, rebuilt_summary = Engine.build([notes], index, rebuild=True)
    assert not rebuilt.keyword_only and rebuilt_summary.passages_embedded == rebuilt_summary.passages
    assert rebuilt.analyse("序列并行").notice is None and rebuilt.search("序列并行", k=1)[0].dense_rank is not None


def test_empty_folder_builds_an_empty_index(tmp_path):
    (tmp_path / "empty").mkdir()
    engine, engine_summary = Engine.build([tmp_path / "empty"], tmp_path / "index", build_config=BuildConfig(keyword_only=True))
    assert len(engine.passages) == 0 and len(engine.search("anything")) == 0
