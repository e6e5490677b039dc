"""Filters on path, tags and type: their semantics, and that they apply before the top-k cut."""

import json
import shutil

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from search import Engine
from search.cli import cli
from search.index.dense import DenseIndex
from search import SearchConfig
from search import FilterError, Filters
from search.index.facets import Facets, facet_rows, file_type, normalise_tag
from search.schema import Passage

# ----- matching semantics (no models) --------------------------------------------------------

PATHS = [
    "/home/u/kb/notes/a/b.md",
    "/home/u/kb/notes/top.markdown",
    "/home/u/kb/other/2024/c.TXT",
    "/home/u/kb/other/notes.txt",
    "/home/u/kb/notes.md",
    "/home/u/kb/data/table.csv",
]


def facets(tags=None):
    tags = tags or {}
    return Facets(*facet_rows(Passage(path=p, text="x", metadata=tags.get(p, {})) for p in PATHS))


def matching(filters, table=None):
    table = table or facets()
    return [p.replace("/home/u/kb/", "") for p, ok in zip(PATHS, filters.mask(table)) if ok]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("notes/**", ["notes/a/b.md", "notes/top.markdown"]),  # folder named notes at any depth, not notes.txt
        ("notes", ["notes/a/b.md", "notes/top.markdown"]),  # a folder pattern covers what is under it
        ("*.md", ["notes/a/b.md", "notes.md"]),  # a pattern without a folder matches the file name anywhere
        ("**/2024/*", ["other/2024/c.TXT"]),
        ("kb/*.md", ["notes.md"]),  # * does not cross folders
        ("kb/**/*.md", ["notes/a/b.md", "notes.md"]),  # ** does
        ("u/*.md", []),
        ("/home/u/kb/other/**", ["other/2024/c.TXT", "other/notes.txt"]),  # absolute: from the root
        ("/kb/**", []),  # ... and only from the root
        ("notes/", ["notes/a/b.md", "notes/top.markdown"]),  # trailing slash: folders only
        ("*.{csv,markdown}", ["notes/top.markdown", "data/table.csv"]),
    ],
)
def test_path_globs(pattern, expected):
    assert matching(Filters(paths=[pattern])) == expected


def test_relative_dot_pattern_is_anchored_at_the_working_folder(tmp_path, monkeypatch):
    folder = tmp_path / "kb [1]"  # glob characters in the working folder are taken literally
    (folder / "notes").mkdir(parents=True)
    monkeypatch.chdir(folder)
    inside, outside = str(folder / "notes" / "a.md"), str(tmp_path / "notes" / "a.md")
    table = Facets(*facet_rows([Passage(path=inside, text="x"), Passage(path=outside, text="x")]))
    assert Filters(paths=["./notes/*.md"]).mask(table).tolist() == [True, False]
    assert Filters(paths=["notes/*.md"]).mask(table).tolist() == [True, True]


def test_types_from_suffix_with_aliases():
    assert file_type("/a/B.MD") == file_type("/a/b.markdown") == "md"
    assert file_type("/a/c.jsonl") == "jsonl" and file_type("/a/noext") == ""
    assert matching(Filters(types=["markdown"])) == ["notes/a/b.md", "notes/top.markdown", "notes.md"]
    assert matching(Filters(types=[".TXT"])) == ["other/2024/c.TXT", "other/notes.txt"]
    assert matching(Filters(types=["csv"])) == ["data/table.csv"]  # any suffix, not a fixed list


def test_chinese_tags_and_categories_nfkc_casefold():
    table = facets({
        PATHS[0]: {"tags": ["机器学习", "ＮＬＰ"]},
        PATHS[1]: {"categories": ["机器学习"]},
        PATHS[2]: {"tags": ["机器"]},  # a prefix is not a match
        PATHS[3]: {"tags": ["Cooking"]},
    })
    assert matching(Filters(tags=["机器学习"]), table) == ["notes/a/b.md", "notes/top.markdown"]
    assert matching(Filters(tags=["nlp"]), table) == ["notes/a/b.md"]  # full-width and case folded
    assert normalise_tag("ＮＬＰ") == normalise_tag("nlp")
    assert matching(Filters(tags=["cooking", "机器"]), table) == ["other/2024/c.TXT", "other/notes.txt"]  # OR


def test_fields_and_together_values_or_together():
    table = facets({PATHS[0]: {"tags": ["x"]}, PATHS[3]: {"tags": ["x"]}})
    assert matching(Filters(paths=["notes/**", "other/**"], tags=["x"]), table) == ["notes/a/b.md", "other/notes.txt"]
    assert matching(Filters(paths=["notes/**"], tags=["x"], types=["txt"]), table) == []
    assert "--type txt" not in Filters(paths=["notes/**"], types=["txt"]).why_empty(table)
    assert Filters(tags=["nope"], types=["md"]).why_empty(table) == "no file matches --tag nope"


def test_filter_values_are_checked():
    assert not Filters() and Filters(tags="机器学习").tags == ["机器学习"]  # a lone string is one value
    with pytest.raises(FilterError, match="empty --tag"):
        Filters(tags=[" "])


def test_facets_rows_are_per_file():
    passages = [Passage(path="/a.md", text=str(i), metadata={"tags": ["t"]}) for i in range(3)]
    passages.append(Passage(path="/b.md", text="b"))
    table = Facets(*facet_rows(passages))
    assert len(table.rows) == 2 and table.passage_row.tolist() == [0, 0, 0, 1]


# ----- dense search among allowed rows (synthetic vectors) -----------------------------------


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return unit(rng.normal(size=(2000, 16))), unit(rng.normal(size=(1, 16)))[0]


def brute_force(matrix, query, rows, k):
    scores = matrix[rows] @ query
    return [int(rows[i]) for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])  # FAISS with an ID selector / scoring the allowed rows
def test_dense_search_only_among_allowed_rows(vectors, kind):
    matrix, query = vectors
    if kind == "flat":
        index = DenseIndex.build(matrix, np.arange(2000) + 7, dim=16)  # passage id = row + 7
    elif kind == "hnsw":
        index = DenseIndex.build(matrix, np.arange(2000) + 7, dim=16, exact_max=100)
        assert index.kind == "hnsw"
    else:
        index = DenseIndex.build(matrix, np.arange(2000) + 7, dim=16, exact_max=100, graph_max=100)  # approximate: IVF-SQ8
        assert not index.exact
        index.EXACT_FILTER_ROWS = 10**9
    rows = np.arange(0, 2000, 9)
    ids, scores = index.search(query, 10, allowed_rows=rows)
    assert (ids - 7).tolist() == brute_force(matrix, query, rows, 10)
    assert np.all(np.diff(scores) <= 0)
    assert len(index.search(query, 10, allowed_rows=rows[:4])[0]) == 4  # fewer allowed than k
    assert len(index.search(query, 10, allowed_rows=np.zeros(0, dtype=np.int64))[0]) == 0


def test_selector_works_on_hnsw_and_ivf_and_falls_back_when_they_miss(vectors):
    matrix, query = vectors
    rows = np.arange(0, 2000, 9)
    hnsw = faiss.IndexHNSWFlat(16, 16, faiss.METRIC_INNER_PRODUCT)
    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 16, faiss.METRIC_INNER_PRODUCT)
    ivf.train(matrix)
    for faiss_index in (hnsw, ivf):
        faiss_index.add(matrix)
        if faiss_index is ivf:
            ivf.make_direct_map()  # so the exact fallback can reconstruct rows
            ivf.nprobe = 1  # one list of 16: most allowed rows are never visited
        index = DenseIndex(faiss_index, np.arange(2000))
        index.EXACT_FILTER_ROWS = 0
        ids, _ = index.search(query, 50, allowed_rows=rows)
        assert len(ids) == 50 and set(ids.tolist()) <= set(rows.tolist())
    # with nprobe=1 the IVF search alone returns fewer than 50: the exact fallback gives the true top 50
    mask = np.zeros(2000, dtype=bool)
    mask[rows] = True
    params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little")), nprobe=1)
    assert (ivf.search(query.reshape(1, -1), 50, params=params)[1] >= 0).sum() < 50
    assert index.search(query, 50, allowed_rows=rows)[0].tolist() == brute_force(matrix, query, rows, 50)


# ----- end to end with the real models -------------------------------------------------------

K = 3


def write_kb(root):
    """notes/ml holds a few 机器学习 passages that mention 梯度下降 once; other/ holds many passages
    that are all about 梯度下降, so an unfiltered top-k is entirely other/."""
    ml, other = root / "notes" / "ml", root / "other"
    ml.mkdir(parents=True)
    other.mkdir()
    sections = ["动量", "学习率预热", "权重衰减", "批大小"]
    body = "".join(
        f"## {name}\n\n训练神经网络时{name}会影响收敛速度，它和梯度下降的步长一起决定模型能否稳定训练，"
        f"也要结合验证集上的损失曲线调整。\n\n" for name in sections
    )
    (ml / "优化.md").write_text(f"---\ntitle: 优化笔记\ntags: [机器学习]\n---\n\n# 优化笔记\n\n{body}", encoding="utf-8")
    (ml / "正则.md").write_text(
        "---\ncategories: [机器学习]\n---\n\n# 正则化\n\nDropout 随机丢弃神经元，配合梯度下降训练可以减少过拟合。\n",
        encoding="utf-8",
    )
    for i in range(4):
        text = "".join(
            f"## 梯度下降{i}-{j}\n\n梯度下降沿负梯度方向更新参数。随机梯度下降每次用一个小批量估计梯度，梯度下降的学习率决定步长。\n\n"
            for j in range(3)
        )
        (other / f"梯度下降{i}.md").write_text(f"---\ntags: [优化]\n---\n\n# 梯度下降 {i}\n\n{text}", encoding="utf-8")
    (other / "notes.txt").write_text("Gradient descent updates the weights against the gradient.\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters")
    write_kb(root / "kb")
    Engine.build([root / "kb"], root / "index")
    # candidates=K puts each retriever's cut at k, so a filter applied after the cut would find nothing
    return root, Engine.open(root / "index", config=SearchConfig(candidates=K))


MODES = ["bm25", "dense", "hybrid"]


@pytest.mark.parametrize("mode", MODES)
def test_filtered_query_returns_k_hits_from_allowed_files_only(kb, mode):
    root, engine = kb
    # the other/ notes repeat one paragraph under many headings: copies, which a collapsing search folds
    unfiltered = engine.search("梯度下降", k=K, mode=mode, collapse=False)
    assert len(unfiltered) == K and all("/other/" in hit.path for hit in unfiltered)  # the data does its job
    for filters in (Filters(tags=["机器学习"]), Filters(paths=["notes/**"]), Filters(paths=["ml"], types=["markdown"])):
        hits = engine.search("梯度下降", k=K, mode=mode, filters=filters)
        assert len(hits) == K, filters
        assert all("/notes/ml/" in hit.path for hit in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("mode", ["bm25", "dense"])
def test_filtered_ranking_equals_unfiltered_ranking_restricted(kb, mode):
    """Filtering before the cut ranks allowed passages exactly as a full ranking would."""
    _, engine = kb
    everything = engine.search("梯度下降的步长", k=len(engine.passages), mode=mode)
    allowed = Filters(tags=["机器学习"]).mask(engine.facets)
    expected = [h.passage_id for h in everything if allowed[h.passage_id]][:K]
    got = engine.search("梯度下降的步长", k=K, mode=mode, filters=Filters(tags=["机器学习"]))
    assert [h.passage_id for h in got] == expected


def test_filter_to_one_language_space_and_to_nothing(kb):
    _, engine = kb
    hits = engine.search("gradient descent", k=5, filters=Filters(types=["txt"]))
    assert [hit.path.endswith("notes.txt") for hit in hits] == [True]
    assert len(engine.search("梯度下降", k=5, filters=Filters(tags=["没有这个标签"]))) == 0


def test_cli_filters(kb):
    root, _ = kb
    index = str(root / "index")
    run = lambda *args: CliRunner().invoke(cli, ["query", "梯度下降", "--index", index, "-k", "2", *args])
    result = run("--json", "--path", "notes/**", "--tag", "机器学习", "--type", "md")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 2 and all("/notes/ml/" in hit["path"] for hit in hits)
    result = run("--json", "--path", "other/*.txt", "--path", "ml/正则.md")  # repeated: OR
    assert sorted(hit["path"].rsplit("/", 1)[1] for hit in json.loads(result.output)) == ["notes.txt", "正则.md"]
    result = run("--tag", "机器学习", "--type", "pdf")
    assert result.exit_code == 0 and "no passages match the filters (no file matches --type pdf)" in result.output
    assert "Traceback" not in result.output
    result = run("--json", "--tag", "nope")
    assert result.exit_code == 0 and json.loads(result.stdout) == [] and "no passages match" in result.stderr
    result = run("--tag", "")
    assert result.exit_code == 1 and "empty --tag filter" in result.output


def test_the_filter_benchmark_runs_on_the_current_api(capsys):
    """benchmarks/filters.py at a toy size, so an API change cannot leave `make bench` broken again."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import filters as bench

    bench.bench_masks(files=30, per_file=2)
    bench.bench_dense(rows=2000, dim=16, k=10)
    out = capsys.readouterr().out
    assert "facets: 30 files, 60 passages" in out and "mask --tag 机器学习" in out and "allows" in out
    assert "unfiltered search" in out
