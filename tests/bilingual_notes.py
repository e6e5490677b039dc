"""Six short notes, three English and three Chinese, for the cross-lingual tests, and one-language
indexes of them."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from search import Engine, SearchConfig

NOTES = {
    "attention.md": "# Attention\n\nThe attention mechanism lets every token weigh every other token of the sentence.\n",
    "tea.md": "# Tea\n\nGreen tea should be brewed for two minutes with water that is not boiling.\n",
    "trains.md": "# Trains\n\nThe last train to the airport leaves the station at midnight.\n",
    "cat.md": "# 猫\n\n我的猫每天早上都要喝牛奶，然后在窗边睡觉。\n",
    "rain.md": "# 天气\n\n明天下午会下大雨，出门记得带伞。\n",
    "bank.md": "# 银行\n\n周末银行不开门，取钱要去自动取款机。\n",
}
BY_LANGUAGE = {"en": ("attention.md", "tea.md", "trains.md"), "zh": ("cat.md", "rain.md", "bank.md")}
# (the one-language index searched, a query in the other language, the note it must find first)
ACROSS_LANGUAGES = [
    ("en", "绿茶要泡多久", "tea.md"),
    ("en", "去机场的最后一班火车", "trains.md"),
    ("zh", "will it rain tomorrow afternoon", "rain.md"),
    ("zh", "my cat drinks milk", "cat.md"),
]


def write_notes(folder: Path, names=tuple(NOTES)) -> Path:
    for name in names:
        (folder / name).write_text(NOTES[name], encoding="utf-8")
    return folder


@contextmanager
def one_language_engines(tmp_path_factory, model: str | None = None, config: SearchConfig | None = None) -> Iterator[dict[str, Engine]]:
    """An English-only and a Chinese-only index, built with `model` and opened with `config`."""
    engines = {}
    try:
        for language, names in BY_LANGUAGE.items():
            root = write_notes(tmp_path_factory.mktemp(f"only-{language}"), names)
            Engine.build([root], root / "index", model=model)[0].close()
            engines[language] = Engine.open(root / "index", config=config)
        yield engines
    finally:
        for engine in engines.values():
            engine.close()
