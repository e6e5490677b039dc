"""Duplicates collapse: passages of the same text (after normalisation) are one hit that says where its
copies are; k hits are k distinct texts; --no-collapse shows every copy."""

import json

from click.testing import CliRunner

from search import BuildConfig, Engine, SearchConfig
from search.cli import cli
from search.text.passages import same_text_key

ANSWER = "Steep green tea in water below boiling for two minutes."


def write_records(folder, copies=5):
    folder.mkdir()
    rows = [{"q": "How do I make green tea?", "a": ANSWER}] * copies
    rows += [{"q": f"Green tea question {i}", "a": f"Green tea answer number {i}, brewed differently."} for i in range(4)]
    with open(folder / "tea.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": f"{row['q']} {row['a']}"}) + "\n" for row in rows)
    # the same text again in a note, differing only in case, width and white space
    (folder / "note.md").write_text("# Tea\n\nHOW do I make green tea?   Steep green tea in water below boiling for two minutes．\n", encoding="utf-8")
    return folder


def test_copies_collapse_into_one_hit_with_their_locations(tmp_path):
    data = write_records(tmp_path / "data")
    engine, _ = Engine.build([data], tmp_path / "index", build_config=BuildConfig(keyword_only=True))
    result = engine.search("make green tea steep boiling", k=3, mode="bm25")
    texts = [same_text_key(hit.text) for hit in result]
    assert len(result) == 3 and len(set(texts)) == 3  # k distinct texts
    first = result[0]
    assert len(first.duplicates) == 5  # four more records and the note
    assert sorted([first.location, *first.duplicates]) == sorted(
        [f"{data / 'tea.jsonl'}:{line}" for line in range(1, 6)] + [f"{data / 'note.md'}:3"])
    assert result.to_dict()["hits"][0]["duplicates"] == first.duplicates
    assert all(not hit.duplicates for hit in result[1:])

    every = engine.search("make green tea steep boiling", k=3, mode="bm25", collapse=False)
    assert len({same_text_key(hit.text) for hit in every}) == 1 and all(not hit.duplicates for hit in every)


def test_copies_that_fill_the_candidates_do_not_cut_the_k_distinct_hits(tmp_path):
    data = write_records(tmp_path / "data", copies=60)
    Engine.build([data], tmp_path / "index", build_config=BuildConfig(keyword_only=True))[0].close()
    with Engine.open(tmp_path / "index", config=SearchConfig(candidates=20)) as engine:  # 60 copies > 20 candidates
        result = engine.search("make green tea steep boiling", k=4, mode="bm25")
        assert len({same_text_key(hit.text) for hit in result}) == 4
        assert len(result[0].duplicates) >= 20


def test_cli_shows_the_count_of_copies_and_no_collapse_shows_them_all(tmp_path):
    data = write_records(tmp_path / "data")
    index = str(tmp_path / "index")
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(data), "--index", index, "--keyword-only"]).exit_code == 0
    out = runner.invoke(cli, ["query", "steep green tea boiling", "-k", "2", "--mode", "bm25", "--index", index]).stdout
    lines = out.splitlines()
    assert lines[0].lstrip().startswith("1.") and lines[2].strip().startswith("(+5 copies: ")
    assert lines[2].strip().endswith(", …)") and lines[3].lstrip().startswith("2.")
    every = runner.invoke(cli, ["query", "steep green tea boiling", "-k", "6", "--mode", "bm25", "--no-collapse", "--index", index]).stdout
    assert "copies" not in every and sum(1 for line in every.splitlines() if "Steep green tea" in line) == 6
    hits = json.loads(runner.invoke(cli, ["query", "steep green tea boiling", "-k", "1", "--json", "--mode", "bm25", "--index", index]).stdout)
    assert len(hits[0]["duplicates"]) == 5


def test_text_keys_are_kept_through_an_update_and_only_hits_and_copies_are_read(tmp_path, monkeypatch):
    from search.index.passage_store import PassageStore
    from search.text.passages import text_key_digest

    data = write_records(tmp_path / "data")
    (data / "other.md").write_text("# Other\n\nBlack tea wants boiling water and five minutes.\n", encoding="utf-8")
    Engine.build([data], tmp_path / "index", build_config=BuildConfig(keyword_only=True))[0].close()
    (data / "other.md").write_text("# Other\n\nBlack tea wants boiling water and four minutes.\n", encoding="utf-8")
    summary = Engine.update([data], tmp_path / "index")
    assert (summary.files_changed, summary.files_unchanged) == (1, 2)  # tea.jsonl and note.md are carried over
    with Engine.open(tmp_path / "index") as engine:
        store = engine.passages
        assert store.text_keys.shape == (len(store), 16)
        assert [row.tobytes() for row in store.text_keys] == [text_key_digest(p.text) for p in store]
        with_keys = engine.search("make green tea steep boiling", k=3, mode="bm25")

        reads = []
        monkeypatch.setattr(PassageStore, "get", lambda self, pid: _read(self, pid, reads))
        again = engine.search("make green tea steep boiling", k=3, mode="bm25")
        assert len(reads) == 3 + 5  # three hits and the first one's five copies, not the lookahead
        assert again.to_dict() == with_keys.to_dict()

        # a generation written before text keys: read and compared, the same hits and copies
        monkeypatch.undo()
        keys, store.text_keys = store.text_keys, None
        assert engine.search("make green tea steep boiling", k=3, mode="bm25").to_dict() == with_keys.to_dict()
        assert store.text_keys_of(0, len(store)) == keys.tobytes()


def _read(store, pid, reads):
    from search.schema import Passage

    reads.append(pid)
    return Passage(**json.loads(store.get_raw(pid)))
