"""A record's text: which fields make it, and how nested values read (for every record reader).

Record text. With `text_fields`, exactly those fields in that order; a name may be a dotted path
into nested values (`meta.question`, `conversations.value`, `messages.0.content`): a list along the
way is walked item by item unless the part is a number, and a key that itself holds a dot is
matched whole first. Otherwise every field whose value holds text, in the record's order, with
nested lists and objects walked; a field is left out of the text when its name marks an identifier
or address (id, uuid, url, path, hash, ... and camelCase such as userId) or its value is a single
token that is a URL or e-mail address, has no letters (numbers, dates) or mixes letters and digits
(codes such as A12 or hex hashes). The chosen values are joined by blank lines, so Alpaca and BELLE
records read instruction, input, output. Other fields go to metadata["fields"] when small enough.

Chat records. A list of turns (ShareGPT `[{from, value}]`, OpenAI `[{role, content}]` whose content
may be a list of parts, and the like) reads as one paragraph per turn, `user: …`, `assistant: …`
(ShareGPT's human and gpt are named so too); a list of Alpaca-style objects (instruction/input and
output, question and answer, prompt and response) reads as `user:` and `assistant:` turns. A value
never becomes a Python repr: scalars are written as text, bytes are left out.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterator

from search.errors import LoadError
from search.ingest.decoding import normalize_newlines
from search.schema import Document, Skipped, SourceFile

__all__ = ["PROBE_RECORDS", "RecordText", "is_text", "resolve"]

_ID_NAME = re.compile(
    r"(?:^|[_\-\s.])(?:id|ids|uuid|guid|url|urls|uri|href|link|links|path|file|filename|hash|md5|sha\d*|checksum)$",
    re.I,
)
_CAMEL_ID = re.compile(r"[a-z0-9](?:Id|ID|Ids|IDs|Url|URL|Uri|URI|Path|Hash)$")
_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.|mailto:)\S*|[^@\s]+@[^@\s]+\.\w+", re.I)
_MAX_FIELD_JSON = 1000  # metadata is copied into every passage of a record: big values stay out
PROBE_RECORDS = 20  # how many leading records decide that a file is not what its suffix says

_ROLE_KEYS = ("role", "from", "speaker", "sender")
_CONTENT_KEYS = ("content", "value", "text", "message", "parts")
_ROLE_NAMES = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
               "model": "assistant", "bot": "assistant", "ai": "assistant"}
_SYSTEM_KEYS = ("system",)
_USER_KEYS = ("instruction", "input", "question", "prompt", "query")
_ASSISTANT_KEYS = ("output", "answer", "response", "completion")


def _is_id_name(name: str) -> bool:
    return bool(_ID_NAME.search(name) or _CAMEL_ID.search(name))


def is_text(value: str) -> bool:
    value = value.strip()
    if not value:
        return False
    if any(c.isspace() for c in value):
        return True
    if _ADDRESS.fullmatch(value) or not any(c.isalpha() for c in value):
        return False
    return not (value.isascii() and any(c.isdigit() for c in value))


# ----- chat turns ---------------------------------------------------------------------------------


def _role(item: dict) -> str | None:
    role = next((item[key] for key in _ROLE_KEYS if isinstance(item.get(key), str) and item[key].strip()), None)
    if role is None or not (any(key in item for key in _CONTENT_KEYS) or "tool_calls" in item):
        return None
    role = role.strip()
    return _ROLE_NAMES.get(role.lower(), role)


def _is_pair(item: dict) -> bool:
    return any(key in item for key in _USER_KEYS) and any(key in item for key in _ASSISTANT_KEYS)


def _content(value: Any) -> str:
    """A turn's content as text: a string, or the text parts of a list of parts (images left out)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):  # a part {"type": "text", "text": ...}, or ChatGPT's {"parts": [...]}
        text = value.get("text")
        return text.strip() if isinstance(text, str) else _content(value.get("parts"))
    if isinstance(value, list):
        return "\n\n".join(part for part in map(_content, value) if part)
    return _scalar(value)


def _calls(item: dict) -> list[str]:
    """An assistant's tool calls as `name(arguments)`."""
    calls = item.get("tool_calls") or []
    out = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and function.get("name"):
            arguments = function.get("arguments")
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False, default=str)
            out.append(f"{function['name']}({arguments if arguments not in (None, 'null') else ''})")
    return out


def _turns(items: list) -> list[str] | None:
    """Chat turns as `role: text` paragraphs, or None when `items` is not a list of turns or pairs."""
    dicts = [item for item in items if item is not None]
    if not dicts or not all(isinstance(item, dict) for item in dicts):
        return None
    out: list[str] = []
    if all(_role(item) for item in dicts):
        for item in dicts:
            content = next((item[key] for key in _CONTENT_KEYS if item.get(key) not in (None, "", [])), None)
            text = "\n\n".join(part for part in (_content(content), *_calls(item)) if part)
            if text:
                out.append(f"{_role(item)}: {text}")
        return out
    if all(_is_pair(item) for item in dicts):
        for item in dicts:
            for role, keys in (("system", _SYSTEM_KEYS), ("user", _USER_KEYS), ("assistant", _ASSISTANT_KEYS)):
                text = "\n\n".join(part for key in keys if key in item for part in _all_strings(item[key]))
                if text:
                    out.append(f"{role}: {text}")
        return out
    return None


# ----- values -> text -----------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None or isinstance(value, (bytes, bytearray, memoryview)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _strings(value: Any) -> Iterator[str]:
    """The text-like strings inside a value, nested lists and objects included (chat turns rendered),
    leaving out the values of id-like keys."""
    return _walk(value, lambda leaf: leaf.strip() if isinstance(leaf, str) and is_text(leaf) else "", lambda key: not _is_id_name(key))


def _all_strings(value: Any) -> Iterator[str]:
    """Every scalar inside a value as text (for fields the user chose), chat turns rendered."""
    return _walk(value, _scalar, lambda key: True)


def _walk(value: Any, text_of: Callable[[Any], str], keep: Callable[[str], bool]) -> Iterator[str]:
    """The texts `text_of` gives the leaves of `value`, in order, through the objects' keys that `keep`
    allows; a list of chat turns reads as its turns."""
    if isinstance(value, list):
        turns = _turns(value)
        if turns is not None:
            yield from turns
            return
        for item in value:
            yield from _walk(item, text_of, keep)
    elif isinstance(value, dict):
        for key, item in value.items():
            if keep(str(key)):
                yield from _walk(item, text_of, keep)
    else:
        text = text_of(value)
        if text:
            yield text


def _small(value: Any) -> bool:
    return len(json.dumps(value, ensure_ascii=False, default=str)) <= _MAX_FIELD_JSON


# ----- dotted paths -------------------------------------------------------------------------------


def resolve(record: dict, path: str) -> tuple[str | None, list[Any]]:
    """(the record's key the path starts with, the values it reaches); (None, []) when it has no such key."""
    if path in record:
        return path, [record[path]]
    for i, char in enumerate(path):
        if char == "." and path[:i] in record:
            return path[:i], _descend(record[path[:i]], path[i + 1 :])
    return None, []


def _descend(value: Any, path: str) -> list[Any]:
    if not path:
        return [value]
    if isinstance(value, dict):
        return resolve(value, path)[1]
    if isinstance(value, list):
        head, _, rest = path.partition(".")
        if head.lstrip("-").isdigit():
            index = int(head)
            return _descend(value[index], rest) if -len(value) <= index < len(value) else []
        return [found for item in value for found in _descend(item, path)]
    return []


class RecordText:
    """Turns parsed records of one file into Documents, checking --text-fields against them."""

    def __init__(self, source: SourceFile, text_fields: list[str] | None) -> None:
        self.source = source
        self.text_fields = text_fields
        self.seen = 0
        self.matched = False

    def document(self, record: Any, line_start: int, line_end: int, position: dict[str, Any]) -> Document | Skipped | None:
        """The record's Document, a Skipped for a record of the wrong shape, None for one without text."""
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            return Skipped(f"{self.source.path}:{line_start}", f"a record must be an object or a string, not {type(record).__name__}")
        texts, fields = self._split(record)
        if not texts:
            return None
        metadata: dict[str, Any] = dict(position)
        if fields:
            metadata["fields"] = fields
        text = normalize_newlines("\n\n".join(texts))
        return Document(self.source.path, text, self.source.kind, metadata, line_start=line_start, line_end=line_end)

    def _split(self, record: dict) -> tuple[list[str], dict[str, Any]]:
        """(text parts, other fields) of one record."""
        texts: list[str] = []
        chosen: set[str] = set()
        if self.text_fields is not None:
            for name in self.text_fields:
                key, values = resolve(record, name)
                if values:
                    chosen.add(key)
                    texts.extend(text for value in values for text in _all_strings(value))
            self._check_fields(record, bool(chosen))
        else:
            for key, value in record.items():
                found = [] if _is_id_name(str(key)) else list(_strings(value))
                if found:
                    chosen.add(key)
                    texts.extend(found)
        fields = {str(k): v for k, v in record.items() if k not in chosen and v not in (None, "", [], {}) and _small(v)}
        return texts, fields

    def _check_fields(self, record: dict, found: bool) -> None:
        """A --text-fields that names no field of the first records is a mistake to report, not an empty file."""
        self.seen += 1
        self.matched = self.matched or found
        if not self.matched and self.seen >= PROBE_RECORDS:
            self.fail_unmatched(record)

    def fail_unmatched(self, record: dict | None = None) -> None:
        if self.text_fields is not None and self.seen and not self.matched:
            names = ", ".join(str(k) for k in (record or {})) or "none"
            raise LoadError(
                f"no record has the --text-fields {', '.join(self.text_fields)} (fields found: {names}): "
                "name fields that the records have"
            )
