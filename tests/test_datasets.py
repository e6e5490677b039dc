"""Datasets as they are published: Parquet, Arrow IPC and Feather, `datasets.save_to_disk` folders, chat
records (ShareGPT, OpenAI messages, Alpaca items in a list), dotted --text-fields, and broken files.

Every file is written with pyarrow the way the real tools write it; indexes are keyword-only (fast)."""

import datetime
import decimal
import json

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from search import BuildConfig, Engine, LoadOptions
from search.errors import LoadError
from search.ingest.loading import discover_files, iter_documents
from search.schema import Document, Skipped

PLANTED = "Lighthouse keepers polish the brass lens every morning."


def build(paths, index, **load):
    engine, summary = Engine.build(paths, index, build_config=BuildConfig(keyword_only=True, load=LoadOptions(**load)))
    return engine, summary


def documents(path, **load):
    [source], skipped = discover_files([path])
    assert not skipped
    return list(iter_documents(source, LoadOptions(**load)))


def chat_rows(n, planted_at=None):
    rows = []
    for i in range(n):
        answer = PLANTED if i == planted_at else f"The answer to question {i} is {i * 7}."
        rows.append({"id": f"conv-{i}", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"What is question {i} about?"},
            {"role": "assistant", "content": answer}]})
    return rows


def write_stream(path, table, batch_rows=3):
    """An Arrow IPC stream, as `datasets` writes its shards (data-00000-of-00002.arrow)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)


def save_to_disk(folder, shards, split="train"):
    """The layout `Dataset.save_to_disk(folder)` writes: stream shards, state.json, dataset_info.json."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for name, rows in zip(names, shards):
        write_stream(folder / name, pa.Table.from_pylist(rows))
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": "3f2a9c", "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}
    (folder / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    info = {"citation": "", "description": "Questions about the sea and ships",
            "features": {"text": {"dtype": "string", "_type": "Value"}}, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return [folder / name for name in names]


# ----- Parquet --------------------------------------------------------------------------------------


def test_parquet_rows_stream_by_row_group_and_a_hit_points_to_its_row(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(chat_rows(3000, planted_at=2345)), path, row_group_size=500)
    assert pq.ParquetFile(path).num_row_groups == 6

    engine, summary = build([data], tmp_path / "index")
    assert (summary.files_added, summary.skipped) == (1, [])
    [hit] = engine.search("lighthouse keepers brass lens", k=1, mode="bm25").hits
    assert hit.location == f"{path}#2345"
    assert hit.text.startswith("system: You are a helpful assistant.\n\nuser: What is question 2345 about?\n\nassistant: Lighthouse")
    assert hit.metadata == {"record": 2345, "fields": {"id": "conv-2345"}}
    assert "{'role'" not in hit.text and "'content'" not in hit.text


def test_parquet_values_are_json_safe_and_byte_columns_are_not_read(tmp_path):
    table = pa.table({
        "question": ["How warm is the Gulf Stream?"],
        "answer": ["Around twenty degrees at the surface."],
        "asked": pa.array([datetime.datetime(2024, 5, 1, 12, 30)], pa.timestamp("s")),
        "price": pa.array([decimal.Decimal("1.50")], pa.decimal128(5, 2)),
        "image": pa.array([{"bytes": b"\x89PNG" * 1000, "path": "img.png"}]),
        "raw": pa.array([b"\x00\x01\x02"], pa.binary()),
    })
    path = tmp_path / "qa.parquet"
    pq.write_table(table, path)
    [doc] = documents(path)
    assert doc.text == "How warm is the Gulf Stream?\n\nAround twenty degrees at the surface."
    assert doc.metadata == {"record": 0, "fields": {"asked": "2024-05-01T12:30:00", "price": 1.5}}
    json.dumps(doc.metadata)  # every value serialises (the passage store writes JSON)


def test_openai_messages_parquet_with_dotted_text_fields(tmp_path):
    path = tmp_path / "chat.parquet"
    rows = chat_rows(30, planted_at=12)
    for i, row in enumerate(rows):
        row["meta"] = {"source": "forum", "topic": f"topic {i}"}
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=8)

    docs = documents(path, text_fields=["messages.2.content", "meta.topic"])
    assert docs[12].text == f"{PLANTED}\n\ntopic 12"
    assert docs[12].metadata == {"record": 12, "fields": {"id": "conv-12"}}
    only_content = documents(path, text_fields=["messages.content"])  # a list along the path: every item
    assert only_content[3].text == "You are a helpful assistant.\n\nWhat is question 3 about?\n\nThe answer to question 3 is 21."
    with pytest.raises(LoadError, match=r"no record has the --text-fields meta\.nothing"):
        documents(path, text_fields=["meta.nothing"])


# ----- Arrow IPC, Feather, save_to_disk -------------------------------------------------------------


def test_arrow_ipc_file_stream_and_feather_are_read_by_record_batch(tmp_path):
    table = pa.Table.from_pylist([{"text": f"Sentence number {i} about harbours."} for i in range(10)])
    with pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=4)
    write_stream(tmp_path / "stream.arrow", table)
    feather.write_feather(table, tmp_path / "compressed.feather", chunksize=3)  # lz4 by default
    with pytest.warns(DeprecationWarning):
        feather.write_feather(table, tmp_path / "v1.feather", version=1)
    for name in ("file.arrow", "stream.arrow", "compressed.feather", "v1.feather"):
        docs = documents(tmp_path / name)
        assert [d.metadata["record"] for d in docs] == list(range(10)), name
        assert docs[7].text == "Sentence number 7 about harbours." and docs[7].kind == "arrow", name


def test_a_save_to_disk_folder_is_one_dataset_whose_shards_are_read_once(tmp_path):
    folder = tmp_path / "sea_qa"
    shards = [[{"text": f"Ships and tides, row {i} of the first shard."} for i in range(5)],
              [{"text": f"Harbour cranes, row {i} of the second shard."} for i in range(5)]]
    shards[1][3] = {"text": PLANTED}
    paths = save_to_disk(folder, shards)
    write_stream(folder / "cache-8d1e2f.arrow", pa.Table.from_pylist(shards[1]))  # a map() result beside the shards
    # a DatasetDict: dataset_dict.json and one saved dataset a split
    save_to_disk(tmp_path / "dict" / "test", [[{"text": "A test split row about anchors."}]], split="test")
    (tmp_path / "dict" / "dataset_dict.json").write_text('{"splits": ["test"]}', encoding="utf-8")

    sources, skipped = discover_files([tmp_path])
    assert [s.path for s in sources] == [str(tmp_path / "dict" / "test" / "data-00000-of-00001.arrow"), *map(str, paths)]
    assert [(s.path, s.reason.split(" (")[0]) for s in skipped] == [
        (str(folder / "cache-8d1e2f.arrow"), "a cache file that datasets wrote beside the dataset's shards, not one of them")]

    engine, summary = build([tmp_path], tmp_path / "index")
    assert summary.files_added == 3 and len(summary.skipped) == 1
    hits = engine.search("lighthouse keepers brass lens", k=5, mode="bm25").hits
    assert [h.location for h in hits] == [f"{paths[1]}#3"]  # once: the cache copy is not read
    assert not engine.search("sea ships description", k=5, mode="bm25").hits[0].path.endswith(".json")
    assert engine.search("anchors", k=1, mode="bm25").hits[0].location.endswith("dict/test/data-00000-of-00001.arrow#0")


def test_a_missing_shard_and_a_foreign_state_json(tmp_path):
    folder = tmp_path / "ds"
    paths = save_to_disk(folder, [[{"text": "first shard text"}], [{"text": "second shard text"}]])
    paths[1].unlink()
    other = tmp_path / "app"
    other.mkdir()
    (other / "state.json").write_text('[{"window": "main", "note": "an editor state file, not a dataset"}]', encoding="utf-8")
    sources, skipped = discover_files([tmp_path])
    assert [s.path for s in sources] == [str(other / "state.json"), str(paths[0])]
    assert [(s.path, s.reason) for s in skipped] == [(str(paths[1]), "a shard that state.json lists is missing")]


# ----- chat records in JSON Lines ---------------------------------------------------------------------


def test_sharegpt_and_openai_chat_records_read_as_turns_never_as_repr(tmp_path):
    path = tmp_path / "chats.jsonl"
    records = [
        {"id": "sg-1", "conversations": [{"from": "human", "value": "How do I splice a rope?"},
                                         {"from": "gpt", "value": "Unlay the strands and tuck them over and under."}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is in this photo?"},
                                                   {"type": "image_url", "image_url": {"url": "https://x.org/boat.jpg"}}]},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "describe", "arguments": "{\"detail\": \"high\"}"}}]},
                      {"role": "tool", "content": "a red sailing boat"},
                      {"role": "assistant", "content": "A red sailing boat at anchor."}]},
        {"id": "alp-1", "data": [{"instruction": "Name a knot.", "input": "", "output": "The bowline."},
                                 {"instruction": "Name another.", "input": "for climbing", "output": "The figure eight."}]},
        {"conversation": [{"speaker": "Captain", "text": "Raise the mainsail."}, {"speaker": "Mate", "text": "Aye."}],
         "tags": ["sailing", "crew"], "rating": 4},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    docs = documents(path)
    assert [d.text for d in docs] == [
        "user: How do I splice a rope?\n\nassistant: Unlay the strands and tuck them over and under.",
        "user: What is in this photo?\n\nassistant: describe({\"detail\": \"high\"})\n\ntool: a red sailing boat\n\n"
        "assistant: A red sailing boat at anchor.",
        "user: Name a knot.\n\nassistant: The bowline.\n\nuser: Name another.\n\nfor climbing\n\nassistant: The figure eight.",
        "Captain: Raise the mainsail.\n\nMate: Aye.\n\nsailing\n\ncrew",
    ]
    assert docs[0].metadata == {"line": 1, "fields": {"id": "sg-1"}}
    assert docs[3].metadata["fields"] == {"rating": 4}
    assert not any("{'" in d.text or "[{" in d.text for d in docs)

    engine, _ = build([path], tmp_path / "index")
    [hit] = engine.search("splice rope strands", k=1, mode="bm25").hits
    assert hit.location == f"{path}:1"


def test_dotted_text_fields_in_jsonl_with_keys_that_hold_dots(tmp_path):
    path = tmp_path / "nested.jsonl"
    rows = [{"meta": {"question": f"Question {i}?", "source": "quiz"}, "a.b": f"literal dotted key {i}",
             "conversations": [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": f"hello {i}"}]} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    [doc, *_] = documents(path, text_fields=["meta.question", "a.b", "conversations.value"])
    assert doc.text == "Question 0?\n\nliteral dotted key 0\n\nhi 0\n\nhello 0"
    assert doc.metadata == {"line": 1}  # the fields a path went into are text, not metadata
    [doc, *_] = documents(path, text_fields=["conversations"])
    assert doc.text == "user: hi 0\n\nassistant: hello 0"


# ----- broken files -----------------------------------------------------------------------------------


def test_truncated_and_impostor_dataset_files_are_skipped_with_one_line_each(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = pa.Table.from_pylist(chat_rows(200, planted_at=150))
    pq.write_table(good, data / "whole.parquet", row_group_size=50)
    blob = (data / "whole.parquet").read_bytes()
    (data / "truncated.parquet").write_bytes(blob[: len(blob) // 2])
    (data / "notes.parquet").write_text("this is a text file, not Parquet", encoding="utf-8")
    write_stream(data / "cut.arrow", good, batch_rows=40)
    stream = (data / "cut.arrow").read_bytes()
    (data / "cut.arrow").write_bytes(stream[: int(len(stream) * 0.6)])  # a download that stopped
    (data / "random.feather").write_bytes(bytes(range(256)) * 40)
    (data / "empty.arrow").write_bytes(b"")

    engine, summary = build([data], tmp_path / "index")
    reasons = {s.path.replace(str(data) + "/", ""): s.reason for s in summary.skipped}
    assert sorted(reasons) == sorted(["truncated.parquet", "notes.parquet", reasons_key(reasons, "cut.arrow#"),
                                      "random.feather", "empty.arrow"])
    assert reasons["truncated.parquet"].startswith("not a readable Parquet file")
    assert reasons["notes.parquet"].startswith("not a readable Parquet file")
    assert reasons["random.feather"].startswith("not an Arrow IPC file or stream")
    cut = reasons_key(reasons, "cut.arrow#")
    assert int(cut.split("#")[1]) % 40 == 0 and 0 < int(cut.split("#")[1]) < 200
    assert reasons[cut].endswith("the rows after it are not indexed")
    assert summary.files_added == 2  # whole.parquet, and what cut.arrow held before the break
    assert engine.search("lighthouse keepers", k=1, mode="bm25").hits[0].location == f"{data / 'whole.parquet'}#150"
    assert engine.search("question 5", k=3, mode="bm25", ).hits  # rows before the break are indexed


def reasons_key(reasons, prefix):
    [key] = [k for k in reasons if k.startswith(prefix)]
    return key


def test_rows_become_documents_lazily(tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": f"row {i} text"} for i in range(20000)]), path, row_group_size=5000)
    [source], _ = discover_files([path])
    items = iter_documents(source, LoadOptions())
    first = next(items)
    assert isinstance(first, Document) and first.metadata["record"] == 0
    assert sum(1 for item in items if not isinstance(item, Skipped)) == 19999
