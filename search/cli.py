"""Command line: a thin layer over the public API of `search` (heavy imports happen inside commands).

The library reports; this module decides what a person sees: one line per error (a traceback only
with --debug), progress bars on a terminal, control characters of notes and file names escaped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Any

import click

from search import MODES, SearchError
from search.cli_options import DEFAULT_INDEX, backend_options, cross_lingual_options, index_option, search_config

SNIPPET_CHARS = 160
COPIES_SHOWN = 3  # locations of a hit's copies printed after it
# C0 and C1 control characters but newline and tab: a note or file name holding terminal escape
# sequences (clear screen, OSC 52 clipboard writes) must not reach the terminal raw.
# Lone surrogates stand for the bytes of a file name that is not UTF-8.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with control characters (and the undecodable bytes of file names) shown as escapes."""
    return _CONTROL.sub(lambda m: _escaped(m.group()), text)


def _one_line(error: BaseException) -> str:
    if isinstance(error, SearchError):
        return str(error)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror or error}{where} (check the path, its permissions and free disk space)"
    return f"unexpected {type(error).__name__}: {error} (run with --debug for the traceback)"


class _LibraryNotes(logging.Handler):
    """The library's log on stderr above any progress bar: its notes (the one-time int8 export) as
    they are, its warnings as `warning: ...` like the CLI's other messages."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        message = record.getMessage()
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        tqdm.write(printable(prefix + message), file=sys.stderr)


def _show_library_notes(debug: bool) -> None:
    library = logging.getLogger("search")
    if not any(isinstance(handler, _LibraryNotes) for handler in library.handlers):
        library.addHandler(_LibraryNotes())
        library.propagate = False  # not twice when a dependency has configured the root logger
    library.setLevel(logging.DEBUG if debug else logging.INFO)


class FriendlyGroup(click.Group):
    """Turns every error into one line on stderr and exit status 1, never a traceback (unless --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 - the one place that decides how errors look
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(printable(_one_line(error))) from None


class _Bars:
    """The library's progress reports as one tqdm bar per stage, on stderr, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if stage not in self.bars:
            from tqdm import tqdm

            self.bars[stage] = tqdm(total=total, desc=stage, unit="passage" if stage in ("indexing", "bm25") else "query", leave=False)
        self.bars[stage].update(done)

    def __enter__(self) -> "_Bars":
        return self

    def __exit__(self, *exc: Any) -> None:
        for bar in self.bars.values():
            bar.close()


@click.group(cls=FriendlyGroup)
@click.version_option(package_name="search")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """Hybrid keyword + semantic search over Chinese and English notes."""
    _show_library_notes(debug)


@cli.command()
@click.option("--model", default=None, help="Prepare this model instead of the default pair.")
def prepare(model: str | None) -> None:
    """Make the int8 ONNX models now (once per model and export recipe, ~30 s each), so that the first
    `search index` (and the first query across languages) does not pay for them. `make install` runs it."""
    from search import Engine

    for space, identity in Engine.prepare_models(model).items():
        click.echo(f"{space}: {identity}", err=True)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@index_option
@click.option("--model", default=None, help="Any sentence-transformers name or path (default: m3e-small for Chinese, all-MiniLM-L6-v2 for English; multilingual-e5-small is bundled for searching across the two).")
@click.option("--rebuild", is_flag=True, help="Rebuild from scratch instead of updating what changed.")
@click.option("--wait", is_flag=True, help="Wait for another build on the same index instead of exiting.")
@click.option("--keyword-only", is_flag=True, help="BM25 only, no embeddings: fast for very large corpora (queries then run in bm25 mode; --rebuild without it adds embeddings).")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON.")
@click.option("--text-fields", default=None, metavar="A,B", help="Record fields (JSON, JSONL, CSV, TSV, Parquet, Arrow) that make a record's text, dotted paths into nested ones allowed (meta.question, conversations.value); the others are kept as metadata (default: the text-like fields).")
@click.option("--max-file-size", default=50.0, show_default=True, type=click.FloatRange(min=0, min_open=True), metavar="MB", help="Skip notes, web pages, PDFs, notebooks and Word files bigger than this (record files stream and have no limit).")
@click.option("--notebook-outputs", is_flag=True, help="Index the text outputs of notebook cells too (not only their markdown and code).")
@click.option("--follow-symlinks", is_flag=True, help="Also index files that links in the folders point to outside them (skipped by default).")
@backend_options
def index(
    paths: tuple[str, ...], index_dir: str, model: str | None, rebuild: bool, wait: bool, as_json: bool, keyword_only: bool,
    text_fields: str | None, max_file_size: float, notebook_outputs: bool, follow_symlinks: bool, **backend: Any,
) -> None:
    """Index PATHS (files or folders; default: corpus/) into the index folder."""
    from search import BackendSpec, BuildConfig, Engine, LoadOptions

    fields = [f.strip() for f in text_fields.split(",") if f.strip()] if text_fields is not None else None
    if fields == []:
        raise SearchError("--text-fields names no field: give field names separated by commas")
    load = LoadOptions(text_fields=fields, max_file_bytes=int(max_file_size * 2**20), notebook_outputs=notebook_outputs)
    # keyword_only None: as the index was built
    config = BuildConfig(load=load, keyword_only=True if keyword_only else None, follow_symlinks=follow_symlinks)
    with _Bars(not as_json) as bars:
        summary = Engine.update(paths or ("corpus",), index_dir, model=model, rebuild=rebuild, progress=bars, wait=wait, build_config=config,
                                backend=BackendSpec.from_options(**backend))
    _echo_summary(summary, as_json)


def _echo_summary(summary: Any, as_json: bool = False) -> None:
    for skipped in summary.skipped:
        click.echo(printable(f"skipped {_display_path(skipped.path)}: {skipped.reason}"), err=True)
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
@click.option("--follow-symlinks", is_flag=True, help="Also index files that links in the folders point to outside them.")
def watch(paths: tuple[str, ...], index_dir: str, model: str | None, debounce: float, follow_symlinks: bool) -> None:
    """Keep the index in step with PATHS (default: corpus/) as files change; Ctrl-C stops."""
    from search.watching import watch as watch_paths

    paths = paths or ("corpus",)
    click.echo(printable(f"watching {', '.join(paths)} -> {index_dir} (Ctrl-C to stop)"), err=True)
    try:
        watch_paths(paths, index_dir, model=model, debounce=debounce, on_build=_echo_summary,
                    on_error=lambda error: click.echo(printable(f"error: {_one_line(error)}"), err=True),
                    follow_symlinks=follow_symlinks)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("text")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Number of hits.")
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print hits as a JSON array.")
@click.option("--path", "paths", multiple=True, metavar="GLOB", help="Only files matching GLOB ('notes/**', '*.md'; ** spans folders). Repeatable.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Only notes with this tag or category (front matter or inline #tag). Repeatable.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only files of this type (suffix: md, txt, ...). Repeatable.")
@cross_lingual_options
@click.option("--no-collapse", is_flag=True, help="Show every copy of a text instead of one hit with the count of its copies.")
@index_option
def query(text: str, k: int, mode: str, as_json: bool, paths: tuple[str, ...], tags: tuple[str, ...], types: tuple[str, ...],
          no_collapse: bool, cross_lingual: str, reread: str, index_dir: str) -> None:
    """Search the index for TEXT.

    Filters apply before the k best are picked; values of one option OR together, different
    options AND together. Passages of the same text are one hit, with where their copies are.
    """
    from search import Engine, Filters

    with Engine.open(index_dir, config=search_config(cross_lingual, reread)) as engine:
        result = engine.search(text, k=k, mode=mode, filters=Filters(list(paths), list(tags), list(types)), collapse=not no_collapse)
    if result.notice:
        click.echo(result.notice, err=True)
    if result.filtered_out:  # on stderr, so --json still prints a parseable (empty) array
        click.echo(printable(result.filtered_out), err=True)
    if as_json:
        click.echo(json.dumps([hit.to_dict() for hit in result.hits], ensure_ascii=False, indent=1))
        return
    if not result.hits and not result.filtered_out:
        click.echo("no hits")
    terms = result.query.highlight_terms
    for rank, hit in enumerate(result.hits, 1):
        location = click.style(printable(_display_path(hit.path) + hit.location[len(hit.path):]), fg="green")
        headings = printable(" > ".join(hit.heading_path))
        click.echo(f"{rank:>2}. {hit.score:.4f}  {location}  {click.style(headings, fg='blue')}".rstrip())
        click.echo(f"    {_snippet(printable(hit.text), terms)}")
        if hit.duplicates:
            shown = ", ".join(printable(_display_path(where)) for where in hit.duplicates[:COPIES_SHOWN])
            more = ", …" if len(hit.duplicates) > COPIES_SHOWN else ""
            click.echo(click.style(f"    (+{len(hit.duplicates)} {'copy' if len(hit.duplicates) == 1 else 'copies'}: {shown}{more})", dim=True))


def _bm25_line(info: dict[str, Any]) -> str:
    """How the index scores BM25, as `search stats` says it."""
    params = info["bm25"]
    line = f"{params['method']}, k1 {params['k1']}, b {params['b']}"
    if info["documents"] is None:
        return line + "; passages alone (built before windows: `search index` adds them)"
    window = params.get("window", 0.0)
    return line + (f"; each passage's window x{window} ({info['documents']} documents)" if window else "; passages alone")


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True)
def stats(index_dir: str, as_json: bool) -> None:
    """Show what the index holds."""
    from search import Engine

    with Engine.open(index_dir) as engine:
        info = engine.stats()
    if as_json:
        click.echo(json.dumps(info, ensure_ascii=False, indent=1))
        return
    click.echo(f"index      {info['index']} ({info['generation']}, format {info['format_version']})")
    click.echo(f"files      {info['files']}")
    click.echo(f"passages   {info['passages']}")
    for space, model in info["models"].items():
        centred = ", cosines from its centre" if model.get("centred") else ""
        click.echo(f"model      {space}: {model['name']} ({model['dim']}-dim, {model['passages']} passages{centred})")
    if info["keyword_only"]:
        click.echo("model      none: keyword-only index (bm25; `search index --rebuild` adds embeddings)")
    click.echo(f"bm25       {_bm25_line(info)}")
    click.echo(f"backend    {info['backend']['kind']}" + (f": {info['backend']['collection']} at {info['backend'].get('url') or info['backend'].get('edge') or info['backend'].get('path')}" if info["backend"]["kind"] != "embedded" else ""))
    click.echo(f"size       {info['size_bytes'] / 1e6:.1f} MB")
    click.echo(f"built      {info['built_at']}")


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(index_dir: str, as_json: bool) -> None:
    """Verify every file of the index against the checksums its build recorded (exit 1 if damaged)."""
    from search import Engine

    report = Engine.check(index_dir)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    elif report.ok:
        click.echo(printable(f"index at {report.index} ({report.generation}): {report.files} files, "
                             f"{report.bytes / 1e6:.1f} MB match their checksums ({report.seconds:.1f}s)"))
    if not report.ok:
        shown = "; ".join(report.problems[:5]) + (f"; and {len(report.problems) - 5} more" if len(report.problems) > 5 else "")
        raise click.ClickException(printable(f"index at {report.index} is damaged ({shown}): run `search index` on your notes to rebuild it"))


@cli.command(name="eval")
@click.argument("dataset_dir", type=click.Path())
@click.option("--mode", "modes", multiple=True, type=click.Choice(MODES), help="Modes to score (default: all three).")
@click.option("--model", default=None, help="Embed with this model instead of the default pair.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--per-query", "per_query", type=click.Path(dir_okay=False), help="Write each query's scores to this TSV file.")
@click.option("--sweep", is_flag=True, help="Also score a grid of fusion settings and print a table.")
@cross_lingual_options
@backend_options
def eval_command(dataset_dir: str, modes: tuple[str, ...], model: str | None, as_json: bool, per_query: str | None, sweep: bool,
                 cross_lingual: str, reread: str, **backend: Any) -> None:
    """Score retrieval on a test collection (corpus.jsonl, queries.jsonl, qrels.tsv)."""
    from search import BackendSpec
    from search.evaluation import METRICS, evaluate, load_collection, open_eval_index, sweep_configs, write_per_query

    collection = load_collection(dataset_dir)
    with _Bars(not as_json) as bars:
        engine = open_eval_index(collection, model=model, progress=bars, config=search_config(cross_lingual, reread), backend=BackendSpec.from_options(**backend))
        configs: dict[str, Any] = {mode: (mode, None) for mode in (modes or MODES)}
        if sweep:
            configs.update(sweep_configs(engine.config))
        result = evaluate(engine, collection, configs, progress=bars)
    if per_query:
        write_per_query(per_query, result)
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        return
    click.echo(f"{collection.name}: {result.queries} queries, {len(engine.passages)} passages")
    click.echo(f"{'configuration':<28}" + "".join(f"{m:>12}" for m in METRICS))
    for name, scores in sorted(result.scores.items(), key=lambda item: -item[1]["ndcg@10"]):
        click.echo(f"{name:<28}" + "".join(f"{scores[m]:>12.4f}" for m in METRICS))


@cli.command()
@index_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on. Anything but loopback needs --token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--token", envvar="SEARCH_TOKEN", default=None, help="Require 'Authorization: Bearer TOKEN' on every request (env SEARCH_TOKEN); needed to listen beyond loopback.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN", help="Let pages from ORIGIN (e.g. http://localhost:3000) call the API. Repeatable; none by default.")
@click.option("--allow-host", "allowed_hosts", multiple=True, metavar="NAME[:PORT]", help="Another Host name this server answers to (a reverse proxy's). Repeatable.")
@click.option("--watch", "watch_paths", multiple=True, type=click.Path(), metavar="PATH", help="Also index PATH and keep the index in step as files change, in this process. Repeatable.")
@click.option("--no-mcp", is_flag=True, help="Do not serve MCP at /mcp.")
def serve(index_dir: str, host: str, port: int, token: str | None, cors_origins: tuple[str, ...], allowed_hosts: tuple[str, ...],
          watch_paths: tuple[str, ...], no_mcp: bool) -> None:
    """Serve the index over HTTP: the search page at /, a JSON API at /api/..., MCP at /mcp.

    The server follows the index: a generation published by `search index` (or --watch) is
    served from the next request on, without a restart.
    """
    from search.server import ServerConfig, check_bind, serve as run_server

    check_bind(host, token)  # before anything loads
    config = ServerConfig(index_dir=index_dir, host=host, port=port, token=token, cors_origins=list(cors_origins),
                          allowed_hosts=list(allowed_hosts), mcp=not no_mcp)

    def ready() -> None:
        shown = f"[{config.host}]" if ":" in config.host else config.host
        click.echo(f"serving {index_dir} at http://{shown}:{config.port}/ (MCP: /mcp; Ctrl-C to stop)", err=True)

    if watch_paths:
        click.echo(f"watching {', '.join(watch_paths)} -> {index_dir}", err=True)
    run_server(config, watch_paths=list(watch_paths) or None, on_build=_echo_summary, on_ready=ready,
               on_error=lambda error: click.echo(f"error: {_one_line(error)}", err=True))


@cli.command()
@index_option
def mcp(index_dir: str) -> None:
    """Serve MCP over stdio (tools: search, get, status) for an assistant that starts this command.

    Register it with an assistant as the command `search mcp --index DIR`.
    """
    from search.server import SearchService
    from search.server.mcp_server import run_stdio

    run_stdio(SearchService(index_dir))


def _display_path(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


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
