"""Columnar datasets (pyarrow): Parquet files, Arrow IPC files and streams (`.arrow`, `.feather`), and
the folders `datasets.save_to_disk` writes. Every row becomes a Document, as a JSON Lines record does
(search.ingest.nested decides its text), located by its row: `train-00000.parquet#12345`.

Streaming: Parquet is read a row group's pages at a time through a 1 MB buffer, IPC a record batch at
a time from an ordinary file (not memory-mapped: mapped pages would count as the process's memory),
and rows become Python values `ROWS_PER_SLICE` at a time; columns of bytes (images, audio) are never
read. A file that is not of its format is a LoadError; one that breaks part-way (truncated, a corrupt
page) keeps the rows before the break and says where the rest was lost.

A `save_to_disk` folder holds `state.json` (its shards under `_data_files`), `dataset_info.json` and
the shards (`data-00000-of-00002.arrow`, IPC streams); `DatasetDict` folders hold one such folder a
split and a `dataset_dict.json`. `dataset_files` tells discovery which files of a folder make the
dataset, so the JSON files are not read as records and `cache-*.arrow` files (transformed copies that
`datasets` writes beside the shards) are not read twice.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from search.errors import LoadError
from search.ingest.nested import RecordText
from search.schema import Document, Skipped, SourceFile

__all__ = ["DATASET_FILES", "DatasetFolder", "dataset_files", "iter_arrow", "iter_parquet"]

ROWS_PER_SLICE = 256  # rows turned into Python values at once
_PARQUET_BATCH = 4096
_CACHE = "a cache file that datasets wrote beside the dataset's shards, not one of them"
DATASET_FILES = ("state.json", "dataset_info.json", "dataset_dict.json")  # the layout's own, never records


@dataclass
class DatasetFolder:
    """The files of a folder that `datasets.save_to_disk` wrote."""

    shards: list[str]  # names, in state.json's order
    passed_over: dict[str, str]  # other files of the dataset's own -> why they are not read


def dataset_files(folder: str, names: Iterable[str]) -> DatasetFolder | None:
    """The dataset a folder holds, when `names` (its files) are a save_to_disk layout; else None."""
    names = set(names)
    if "dataset_dict.json" in names and "state.json" not in names:  # a DatasetDict: its splits are subfolders
        return DatasetFolder([], {})
    if "state.json" not in names:
        if "dataset_info.json" in names and any(name.endswith(".arrow") for name in names):  # datasets' own cache
            return DatasetFolder(sorted(name for name in names if name.endswith(".arrow") and not name.startswith("cache-")),
                                 {name: _CACHE for name in names if name.endswith(".arrow") and name.startswith("cache-")})
        return None
    try:
        with open(os.path.join(folder, "state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
        shards = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # some other program's state.json: the folder is read as usual
    if not all(isinstance(name, str) and os.path.basename(name) == name for name in shards):
        return None
    passed_over = {name: _CACHE + " (state.json does not list it)" for name in names if name.endswith(".arrow") and name not in shards}
    return DatasetFolder(shards, passed_over)


# ----- values -----------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """A row's value as JSON-safe Python: dates as ISO text, decimals as numbers, bytes dropped."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items() if not isinstance(v, (bytes, bytearray))}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value if not isinstance(v, (bytes, bytearray))]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _plain(arrow_type: Any) -> bool:
    """Whether values of this type come out of to_pylist as JSON-safe Python already."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        return all(_plain(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return _plain(arrow_type.value_type)
    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_integer(arrow_type)
            or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type) or pa.types.is_null(arrow_type)
            or pa.types.is_dictionary(arrow_type) and _plain(arrow_type.value_type))


def _has_bytes(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type):
        return True
    if pa.types.is_struct(arrow_type):
        return any(_has_bytes(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return _has_bytes(arrow_type.value_type)
    return False


def _columns(schema: Any) -> tuple[list[str], bool]:
    """(the columns worth reading: not bytes, such as images and audio; whether rows need _json_safe)."""
    kept = [field for field in schema if not _has_bytes(field.type)]
    return [field.name for field in kept], not all(_plain(field.type) for field in kept)


# ----- rows -> documents --------------------------------------------------------------------------


def _documents(source: SourceFile, text_fields: list[str] | None, batches: Iterator[Any], what: str,
               columns: list[str], clean: bool) -> Iterator[Document | Skipped]:
    import pyarrow as pa

    records = RecordText(source, text_fields)
    row = 0
    try:
        for batch in batches:
            if batch.schema.names != columns:
                batch = batch.select(columns)
            for start in range(0, batch.num_rows, ROWS_PER_SLICE):
                rows = batch.slice(start, ROWS_PER_SLICE).to_pylist()
                for record in rows:
                    document = records.document(_json_safe(record) if clean else record, 1, 1, {"record": row})
                    row += 1
                    if document is not None:
                        yield document
    except (pa.ArrowException, OSError, EOFError) as error:
        if row == 0:
            raise LoadError(f"not a readable {what} file: {_reason(error)}") from error
        yield Skipped(f"{source.path}#{row}", f"unreadable from row {row} on ({_reason(error)}): the rows after it are not indexed")
    records.fail_unmatched()


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def iter_parquet(source: SourceFile, text_fields: list[str] | None) -> Iterator[Document | Skipped]:
    """The rows of a Parquet file, a row group's pages at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.path, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowException, OSError) as error:
        raise LoadError(f"not a readable Parquet file: {_reason(error)}") from error
    try:
        columns, clean = _columns(parquet.schema_arrow)
        batches = parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=columns, use_threads=False)
        yield from _documents(source, text_fields, batches, "Parquet", columns, clean)
    finally:
        parquet.close()


def iter_arrow(source: SourceFile, text_fields: list[str] | None) -> Iterator[Document | Skipped]:
    """The rows of an Arrow IPC file (Feather v2) or stream (what `datasets` writes), a record batch
    at a time; Feather v1 files are read whole (they are uncompressed and rare)."""
    import pyarrow as pa

    try:
        handle = pa.OSFile(source.path)
    except (pa.ArrowException, OSError) as error:
        raise LoadError(f"cannot read: {_reason(error)}") from error
    with handle:
        try:
            batches, schema = _open_ipc(handle, source.path)
        except (pa.ArrowException, OSError, EOFError) as error:
            raise LoadError(f"not an Arrow IPC file or stream, nor a Feather file: {_reason(error)}") from error
        columns, clean = _columns(schema)
        yield from _documents(source, text_fields, batches, "Arrow", columns, clean)


def _open_ipc(handle: Any, path: str) -> tuple[Iterator[Any], Any]:
    import pyarrow as pa

    magic = handle.read(6)
    handle.seek(0)
    if magic.startswith(b"FEA1"):
        import warnings

        from pyarrow import feather

        with warnings.catch_warnings():  # pyarrow deprecates version 1 but reads it
            warnings.simplefilter("ignore", DeprecationWarning)
            table = feather.read_table(path, memory_map=False)
        return iter(table.to_batches(max_chunksize=_PARQUET_BATCH)), table.schema
    if magic == b"ARROW1":
        reader = pa.ipc.open_file(handle)
        return (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema
    reader = pa.ipc.open_stream(handle)
    return iter(reader), reader.schema
