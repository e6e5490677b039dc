"""The query path stays light: a cold `search query` must not pay for torch, sentence-transformers or bm25s."""

import subprocess
import sys

from search.index.bm25 import BM25Index, BM25Params
from search.text.tokenizing import tokenize

HEAVY = ("torch", "sentence_transformers", "transformers", "bm25s", "scipy", "sklearn")


def loaded_modules(code: str) -> set[str]:
    code += "\nimport sys; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_cli_and_engine_loads_no_model_library():
    modules = loaded_modules("import search.cli, search.query.engine, search")
    assert not modules & set(HEAVY), modules & set(HEAVY)
    assert "jieba" not in modules  # the tokenizer loads it on first use


def test_bm25_query_on_a_saved_index_needs_neither_bm25s_nor_scipy(tmp_path):
    texts = ["序列并行沿序列维度切分输入", "数据并行用 all-reduce 同步梯度", "Knead the dough for ten minutes"]
    BM25Index.build([tokenize(t) for t in texts]).save(tmp_path / "bm25")
    modules = loaded_modules(
        "from search.index.bm25 import BM25Index, BM25Params\nfrom search.text.tokenizing import tokenize\n"
        f"ids, _ = BM25Index.load({str(tmp_path / 'bm25')!r}).top_k(tokenize('序列'), 2)\n"
        "assert ids.tolist() == [0], ids"
    )
    assert not modules & set(HEAVY), modules & set(HEAVY)
