"""Command line: a thin layer over `search.Engine` (heavy imports happen inside commands)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Any

import click

from search.errors import SearchError

DEFAULT_INDEX = "indexes/default"
SNIPPET_CHARS = 160


class FriendlyGroup(click.Group):
    """Turns a SearchError into one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SearchError as error:
            raise click.ClickException(str(error)) from None


index_option = click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX,
    envvar="SEARCH_INDEX",
    show_default=True,
    help="Index folder (env SEARCH_INDEX).",
)


class _ProgressSafeEcho(logging.Handler):
    """The library's notes (such as the one-time int8 export) on stderr, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _show_library_notes() -> None:
    logger = logging.getLogger("search")
    if not any(isinstance(handler, _ProgressSafeEcho) for handler in logger.handlers):
        logger.addHandler(_ProgressSafeEcho())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # not twice when a dependency has configured the root logger


@click.group(cls=FriendlyGroup)
@click.version_option(package_name="search")
def cli() -> None:
    """Hybrid keyword + semantic search over Chinese and English notes."""
    _show_library_notes()


@cli.command()
@click.option("--model", default=None, help="Prepare this model instead of the default pair.")
def prepare(model: str | None) -> None:
    """Make the int8 ONNX models now (once per model and export recipe, ~30 s each), so that the first
    `search index` does not pay for them. `make install` runs it."""
    from search.embedding import Encoder, model_plan, requested_backend

    if requested_backend() != "onnx":
        click.echo("nothing to prepare: embeddings run on torch here (a GPU, or SEARCH_BACKEND=torch)", err=True)
        return
    for name in dict.fromkeys(model_plan(model).values()):
        click.echo(f"{name}: {Encoder(name, backend='onnx').backend}", err=True)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@index_option
@click.option("--model", default=None, help="Any sentence-transformers name or path (default: m3e-small for Chinese, all-MiniLM-L6-v2 for English).")
@click.option("--rebuild", is_flag=True, help="Rebuild from scratch instead of updating what changed.")
@click.option("--wait", is_flag=True, help="Wait for another build on the same index instead of exiting.")
@click.option("--keyword-only", is_flag=True, help="BM25 only, no embeddings: fast for very large corpora (queries then run in bm25 mode; --rebuild without it adds embeddings).")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON.")
@click.option("--text-fields", default=None, metavar="A,B", help="Record fields (JSON, JSONL, CSV, TSV) that make a record's text; the others are kept as metadata (default: the text-like fields).")
@click.option("--max-file-size", default=50.0, show_default=True, type=click.FloatRange(min=0, min_open=True), metavar="MB", help="Skip notes, web pages and PDFs bigger than this (record files stream and have no limit).")
def index(
    paths: tuple[str, ...], index_dir: str, model: str | None, rebuild: bool, wait: bool, as_json: bool, keyword_only: bool,
    text_fields: str | None, max_file_size: float,
) -> None:
    """Index PATHS (files or folders; default: corpus/) into the index folder."""
    from search.engine import BuildConfig, Engine
    from search.loading import LoadOptions

    fields = [f.strip() for f in text_fields.split(",") if f.strip()] if text_fields is not None else None
    if fields == []:
        raise SearchError("--text-fields names no field: give field names separated by commas")
    load = LoadOptions(text_fields=fields, max_file_bytes=int(max_file_size * 2**20))
    config = BuildConfig(load=load, keyword_only=True if keyword_only else None)  # None: as the index was built
    engine = Engine.build(paths or ("corpus",), index_dir, model=model, rebuild=rebuild, progress=not as_json, wait=wait, build_config=config)
    _echo_summary(engine.build_summary, as_json)


def _echo_summary(summary: Any, as_json: bool = False) -> None:
    for skipped in summary.skipped:
        click.echo(f"skipped {_display_path(skipped.path)}: {skipped.reason}", err=True)
    if as_json:
        data = summary.to_dict()
        data["skipped"] = len(summary.skipped)
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    click.echo(
        f"indexed {summary.passages} passages: "
        f"{summary.files_added} files added, {summary.files_changed} changed, {summary.files_removed} removed, "
        f"{summary.files_unchanged} unchanged, {len(summary.skipped)} skipped; "
        f"{summary.passages_embedded} passages embedded, {summary.passages_reused} reused; {summary.seconds:.1f}s"
    )


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@index_option
@click.option("--model", default=None, help="Embedding model for a new index (see `search index`).")
@click.option("--debounce", default=1.0, show_default=True, type=click.FloatRange(min=0), help="Seconds of quiet before rebuilding.")
def watch(paths: tuple[str, ...], index_dir: str, model: str | None, debounce: float) -> None:
    """Keep the index in step with PATHS (default: corpus/) as files change; Ctrl-C stops."""
    from search.watching import watch as watch_paths

    paths = paths or ("corpus",)
    click.echo(f"watching {', '.join(paths)} -> {index_dir} (Ctrl-C to stop)", err=True)
    try:
        watch_paths(paths, index_dir, model=model, debounce=debounce, on_build=_echo_summary,
                    on_error=lambda error: click.echo(f"error: {error}", err=True))
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("text")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Number of hits.")
@click.option("--mode", type=click.Choice(["hybrid", "bm25", "dense"]), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print hits as a JSON array.")
@click.option("--path", "paths", multiple=True, metavar="GLOB", help="Only files matching GLOB ('notes/**', '*.md'; ** spans folders). Repeatable.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Only notes with this front-matter tag or category. Repeatable.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only files of this type (suffix: md, txt, ...). Repeatable.")
@index_option
def query(text: str, k: int, mode: str, as_json: bool, paths: tuple[str, ...], tags: tuple[str, ...], types: tuple[str, ...], index_dir: str) -> None:
    """Search the index for TEXT.

    Filters apply before the k best are picked; values of one option OR together, different
    options AND together.
    """
    if not text.strip():
        raise SearchError("empty query: give some words to search for")
    from search.engine import Engine
    from search.filtering import Filters

    engine, filters = Engine.open(index_dir), Filters(list(paths), list(tags), list(types))
    notice = engine.fallback_notice(mode)
    if notice:
        click.echo(notice, err=True)
    hits = engine.search(text, k=k, mode=mode, filters=filters)
    filtered_out = not hits and bool(filters) and not engine.allowed(filters).any()
    if filtered_out:  # on stderr, so --json still prints a parseable (empty) array
        click.echo(f"no passages match the filters ({engine.facets.why_empty(filters)})", err=True)
    if as_json:
        click.echo(json.dumps([hit.to_dict() for hit in hits], ensure_ascii=False, indent=1))
        return
    if not hits and not filtered_out:
        click.echo("no hits")
    terms = _highlight_terms(text)
    for rank, hit in enumerate(hits, 1):
        location = click.style(_location(hit), fg="green")
        headings = " > ".join(hit.heading_path)
        click.echo(f"{rank:>2}. {hit.score:.4f}  {location}  {click.style(headings, fg='blue')}".rstrip())
        click.echo(f"    {_snippet(hit.text, terms)}")


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True)
def stats(index_dir: str, as_json: bool) -> None:
    """Show what the index holds."""
    from search.engine import Engine

    info = Engine.open(index_dir).stats()
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False, indent=1))
        return
    click.echo(f"index      {info['index']} ({info['generation']}, format {info['format_version']})")
    click.echo(f"files      {info['files']}")
    click.echo(f"passages   {info['passages']}")
    for space, model in info["models"].items():
        click.echo(f"model      {space}: {model['name']} ({model['dim']}-dim, {model['passages']} passages)")
    if info["keyword_only"]:
        click.echo("model      none: keyword-only index (bm25; `search index --rebuild` adds embeddings)")
    click.echo(f"size       {info['size_bytes'] / 1e6:.1f} MB")
    click.echo(f"built      {info['built_at']}")


@cli.command(name="eval")
@click.argument("dataset_dir", type=click.Path())
@click.option("--mode", "modes", multiple=True, type=click.Choice(["hybrid", "bm25", "dense"]), help="Modes to score (default: all three).")
@click.option("--model", default=None, help="Embed with this model instead of the default pair.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--per-query", "per_query", type=click.Path(dir_okay=False), help="Write each query's scores to this TSV file.")
@click.option("--sweep", is_flag=True, help="Also score a grid of fusion settings and print a table.")
def eval_command(dataset_dir: str, modes: tuple[str, ...], model: str | None, as_json: bool, per_query: str | None, sweep: bool) -> None:
    """Score retrieval on a test collection (corpus.jsonl, queries.jsonl, qrels.tsv)."""
    from search.evaluation import METRICS, evaluate, load_collection, open_eval_index, sweep_configs, write_per_query

    collection = load_collection(dataset_dir)
    engine = open_eval_index(collection, model=model, progress=not as_json)
    configs: dict[str, Any] = {mode: (mode, None) for mode in (modes or ("hybrid", "bm25", "dense"))}
    if sweep:
        configs.update(sweep_configs(engine.config))
    result = evaluate(engine, collection, configs, progress=not as_json)
    if per_query:
        write_per_query(per_query, result)
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        return
    click.echo(f"{collection.name}: {result.queries} queries, {len(engine.passages)} passages")
    click.echo(f"{'configuration':<28}" + "".join(f"{m:>12}" for m in METRICS))
    for name, scores in sorted(result.scores.items(), key=lambda item: -item[1]["ndcg@10"]):
        click.echo(f"{name:<28}" + "".join(f"{scores[m]:>12.4f}" for m in METRICS))


def _display_path(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _location(hit: Any) -> str:
    """Where a hit is: path:LINE for notes and record lines, path#INDEX for JSON records, path p.N for PDF pages."""
    from search.loading import kind_of

    path = _display_path(hit.path)
    if "page" in hit.metadata:
        return f"{path} p.{hit.metadata['page']}"
    if "record" in hit.metadata:
        return f"{path}#{hit.metadata['record']}"
    if kind_of(hit.path) == "html":  # lines of the extracted text are not lines of the file
        return path
    return f"{path}:{hit.line_start}"


def _highlight_terms(text: str) -> list[str]:
    from search.tokenizing import tokenize

    # longest first so a phrase wins over its sub-words
    return sorted({t for t in tokenize(text) if len(t) > 1 or not t.isascii()}, key=len, reverse=True)


def _snippet(text: str, terms: list[str]) -> str:
    """A one-line window of the passage around the first query term, terms highlighted."""
    flat = " ".join(text.split())
    lowered = flat.lower()
    positions = [lowered.find(term) for term in terms if term in lowered]
    start = max(0, min(positions) - SNIPPET_CHARS // 4) if positions else 0
    window = flat[start : start + SNIPPET_CHARS]
    window = ("…" if start else "") + window + ("…" if start + SNIPPET_CHARS < len(flat) else "")
    if not terms:
        return window
    pattern = re.compile("|".join(re.escape(term) for term in terms), re.IGNORECASE)
    return pattern.sub(lambda m: click.style(m.group(0), fg="red", bold=True), window)


def main() -> None:
    cli(prog_name="search")


if __name__ == "__main__":
    sys.exit(main())
