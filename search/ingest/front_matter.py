"""YAML front matter of a markdown note -> JSON-safe metadata, bounded: it is copied into every passage.

`tags` and `categories` become lists of strings (a comma-separated string is split, a leading `#`
dropped, as Obsidian writes them); `aliases` (or `alias`) becomes a list of strings too, which the
passages' context makes searchable. A nested tag `a/b` also counts as its parent `a`, so `--tag a`
finds it, as Obsidian's tag search does.

YAML aliases (`*name`) are refused (a 325-byte "billion laughs" block expanded to 73.7 MB per
passage), and metadata over MAX_METADATA_CHARS of JSON, or nested deeper than MAX_METADATA_DEPTH,
keeps only the title, tags and categories. Either way the note itself is indexed and a warning names it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from typing import Any

import yaml

from search.ingest.records import too_deep

__all__ = ["LIST_KEYS", "MAX_METADATA_CHARS", "expand_tags", "parse_front_matter"]

log = logging.getLogger(__name__)

_FM_OPEN = re.compile(r"---[ \t]*")
_FM_CLOSE = re.compile(r"(?:---|\.\.\.)[ \t]*")
LIST_KEYS = ("tags", "categories", "aliases")
_SINGULAR = {"tag": "tags", "alias": "aliases", "category": "categories"}  # older Obsidian spellings
_KEPT_KEYS = ("title", "tags", "categories")  # what a note keeps when its front matter is too big
MAX_METADATA_CHARS = 8192
MAX_METADATA_DEPTH = 20


class _NoAliases(yaml.SafeLoader):
    """safe_load without aliases: `*name` could make a few bytes stand for gigabytes of metadata."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _Refused("YAML aliases (*name) are not allowed")
        return super().compose_node(parent, index)


class _Refused(Exception):
    pass


def parse_front_matter(text: str, path: str = "") -> tuple[dict[str, Any], str, int]:
    """(metadata, body, number of lines the front matter block took); no block gives ({}, text, 0).

    Malformed YAML still ends at its closing `---`: the block is dropped with empty metadata, so
    the raw YAML never becomes searchable body text.
    """
    lines = text.split("\n")
    if not _FM_OPEN.fullmatch(lines[0].lstrip("\ufeff")):
        return {}, text, 0
    end = next((i for i in range(1, len(lines)) if _FM_CLOSE.fullmatch(lines[i])), None)
    if end is None:  # a lone `---` opening the file is a horizontal rule, not front matter
        return {}, text, 0
    return _bounded(_load_yaml("\n".join(lines[1:end]), path), path), "\n".join(lines[end + 1 :]), end + 1


def _load_yaml(raw: str, path: str) -> dict:
    try:
        data = yaml.load(raw, Loader=_NoAliases)  # noqa: S506 - a SafeLoader that also refuses aliases
    except _Refused as error:
        log.warning("%s: front matter not read: %s", path or "a note", error)
        return {}
    except Exception:  # YAMLError, ValueError from an impossible date, RecursionError: no metadata
        return {}
    return data if isinstance(data, dict) else {}


def _bounded(data: dict, path: str) -> dict[str, Any]:
    if too_deep(data, MAX_METADATA_DEPTH):
        log.warning("%s: front matter nested more than %d levels deep: only its title, tags and categories are kept",
                    path or "a note", MAX_METADATA_DEPTH)
        data = {key: value for key, value in data.items() if str(key) in _KEPT_KEYS and not too_deep(value, 2)}
    metadata = _metadata(data)
    if len(json.dumps(metadata, ensure_ascii=False)) <= MAX_METADATA_CHARS:
        return metadata
    log.warning("%s: front matter over %d characters: only its title, tags and categories are kept", path or "a note", MAX_METADATA_CHARS)
    kept: dict[str, Any] = {}
    for key in _KEPT_KEYS:
        if key in metadata and len(json.dumps({**kept, key: metadata[key]}, ensure_ascii=False)) <= MAX_METADATA_CHARS:
            kept[key] = metadata[key]
    return kept


def _metadata(data: dict) -> dict[str, Any]:
    """Front matter as JSON-safe metadata: tags/categories/aliases as string lists, empty values dropped."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key in _SINGULAR and _SINGULAR[key] not in data:
            key = _SINGULAR[key]
        if key in LIST_KEYS:
            value = _string_list(value, key != "aliases")
        elif key == "title" and value is not None:
            value = str(_json_safe(value)).strip()
        else:
            value = _json_safe(value)
        if not _is_empty(value):
            out[key] = value
    return out


def _string_list(value: Any, tags: bool) -> list[str]:
    items = value if isinstance(value, (list, tuple, set)) else [value]
    strings = [str(_json_safe(v)).strip() for v in items if v is not None]
    if tags:  # `tags: a, b` and `tags: ["#a"]` as Obsidian accepts them
        strings = [part.strip().lstrip("#").strip() for s in strings for part in s.split(",")]
    return list(dict.fromkeys(s for s in strings if s))


def expand_tags(tags: list[str]) -> list[str]:
    """Tags with the parents of nested ones added after them: `a/b/c` also counts as `a/b` and `a`."""
    out: dict[str, None] = {}
    for tag in tags:
        out[tag] = None
        parts = tag.split("/")
        for end in range(len(parts) - 1, 0, -1):
            if all(parts[:end]):
                out["/".join(parts[:end])] = None
    return list(out)


def _json_safe(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date too
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, dict)) and not value)
