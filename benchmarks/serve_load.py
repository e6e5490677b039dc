"""Load on `search serve` (issue #14): N concurrent clients for S seconds on 127.0.0.1, once idle and
once while a rebuild publishes a new generation.

Reports requests/s, latency p50/p90/p99/max, errors, and checks that no response came from a
half-written generation: every generation a response names must be one that CURRENT published
(polled every 10 ms by this script), every response of one generation must give the same hits for
the same query and the same passage count, and a marker note added for the rebuild must be found
by every response of the new generation and by none of the old one.

    python benchmarks/serve_load.py --index indexes/bench/index            # the 100k index of speed.py
    python benchmarks/serve_load.py --passages 20000 --seconds 10          # builds indexes/serve-load first

Only loopback traffic; every loop is bounded in time (--seconds, and the rebuild phase at most
--seconds + --rebuild-timeout). The rebuild phase adds a marker note to the first indexed folder and
removes it afterwards (then updates the index again to restore it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
ZH_SETS = ("cmrc2018", "cmedqq", "oppo_xiaobu")
EN_SETS = ("scifact",)
REPEATED_QUERIES = [
    "序列并行", "分布式训练", "梯度下降", "注意力机制", "中文分词", "高血压吃什么", "怎么退烧", "天气怎么样",
    "how do I merge keyword and vector results", "protein folding", "vaccine efficacy", "gene expression in cancer",
    "BM25", "transformer attention", "数据并行和张量并行的区别", "what causes inflammation",
]


def read_jsonl(path: Path):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


# ----- a corpus and its index (when no --index is given) -------------------------------------------

def make_corpus(folder: Path, documents: int, seed: int) -> None:
    """Notes of five sections each, from the documents of ../shared/eval (Chinese and English mixed)."""
    rng = random.Random(seed)
    pools = [list(read_jsonl(SHARED / "eval" / name / "corpus.jsonl")) for name in ZH_SETS + EN_SETS]
    docs = [doc for pool in pools for doc in pool]
    rng.shuffle(docs)
    docs = docs[:documents]
    for i in range(0, len(docs), 5):
        note = folder / f"{i // 5000:03d}" / f"note-{i // 5:05d}.md"
        note.parent.mkdir(parents=True, exist_ok=True)
        sections = [f"## {doc.get('title') or doc['id']}\n\n{doc['text']}\n" for doc in docs[i : i + 5]]
        note.write_text(f"# Note {i // 5}\n\n" + "\n".join(sections), encoding="utf-8")


def ensure_index(args) -> Path:
    if args.index:
        return Path(args.index)
    work = ROOT / "indexes" / "serve-load"
    index = work / "index"
    if not (index / "CURRENT").exists():
        if not (SHARED / "eval").is_dir():
            sys.exit("--passages builds a corpus from ../shared/eval, which is not here: give --index DIR")
        corpus = work / "corpus"
        print(f"building a corpus of ~{args.passages} passages in {corpus} and indexing it (once)...", flush=True)
        make_corpus(corpus, args.passages * 2 // 3, args.seed)
        subprocess.run([sys.executable, "-m", "search.cli", "index", str(corpus), "--index", str(index)], check=True, env=ENV)
    return index


def queries(kind: str, seed: int) -> list[str]:
    if kind == "repeated":
        return REPEATED_QUERIES
    found: list[str] = []
    for name in ZH_SETS + EN_SETS:
        path = SHARED / "eval" / name / "queries.jsonl"
        if path.exists():
            found += [row["text"][:200] for row in read_jsonl(path)]
    if not found:
        sys.exit("--queries distinct reads ../shared/eval/*/queries.jsonl, which is not here: use --queries repeated")
    random.Random(seed).shuffle(found)
    return found


# ----- the server -----------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(port: int, path: str, timeout: float = 30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def start_server(index: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "serve", "--index", str(index), "--port", str(port), "--no-mcp"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited: {server.stderr.read()}")
        try:
            if get_json(port, "/healthz", timeout=5)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.terminate()
    sys.exit("the server did not answer /healthz within 180 s")


# ----- load -----------------------------------------------------------------------------------------

class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[tuple] = []  # (start s, latency s, status, query, generation, passages, signature)
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.published: list[tuple[float, str]] = []
        self.started = 0.0
        self.ended = 0.0
        self.build_seconds: float | None = None
        self.marker_path: str | None = None
        self.marker_query: str | None = None
        self.server_cpu: float | None = None


def client(port: int, phase: Phase, pool: list[str], end: list[float], args, seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = 0
    while time.perf_counter() < end[0]:
        n += 1
        text = phase.marker_query if phase.marker_query and n % 10 == 0 else rng.choice(pool)
        path = "/api/search?" + urlencode({"q": text, "k": args.k, "mode": args.mode})
        started = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            latency = time.perf_counter() - started
        except (OSError, http.client.HTTPException) as error:
            with phase.lock:
                phase.errors.append(f"{type(error).__name__}: {error}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        generation = passages = signature = None
        if response.status == 200:
            data = json.loads(body)
            generation, passages = data["generation"], data["passages"]
            signature = tuple((hit["path"], hit["line_start"], round(hit["score"], 5)) for hit in data["hits"])
        else:
            with phase.lock:
                phase.errors.append(f"HTTP {response.status}: {body[:200]!r}")
        with phase.lock:
            phase.records.append((started - phase.started, latency, response.status, text, generation, passages, signature))
    conn.close()


def poll_current(index: Path, phase: Phase, stop: threading.Event) -> None:
    last = None
    while not stop.is_set():
        try:
            lines = (index / "CURRENT").read_text(encoding="utf-8").split()
        except OSError:
            lines = []
        name = lines[0] if lines else None  # CURRENT: the generation's name, then its manifest's digest
        if name and name != last:
            phase.published.append((time.perf_counter() - phase.started, name))
            last = name
        stop.wait(0.01)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(name: str, port: int, index: Path, pool: list[str], args, rebuild_roots: list[str] | None = None,
              server_pid: int | None = None) -> Phase:
    phase = Phase(name)
    cpu_before = cpu_seconds(server_pid) if server_pid else None
    stop = threading.Event()
    phase.started = time.perf_counter()
    end = [phase.started + args.seconds]
    poller = threading.Thread(target=poll_current, args=(index, phase, stop), daemon=True)
    poller.start()
    builder = None
    if rebuild_roots:
        token = "serveloadmarker" + uuid.uuid4().hex[:10]
        marker = Path(rebuild_roots[0]) / f"_serve_load_marker_{token}.md"
        marker.write_text(f"# Load marker\n\n{token} is written by benchmarks/serve_load.py during its rebuild phase.\n", encoding="utf-8")
        phase.marker_path, phase.marker_query = str(marker), token

        def rebuild() -> None:
            time.sleep(1.0)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "search.cli", "index", *rebuild_roots, "--index", str(index), "--wait"],
                           check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.rebuild_timeout)
            phase.build_seconds = time.perf_counter() - started

        builder = threading.Thread(target=rebuild, daemon=True)
        builder.start()
        end[0] = phase.started + args.seconds + args.rebuild_timeout  # lowered to seconds once the build is done
    clients = [threading.Thread(target=client, args=(port, phase, pool, end, args, args.seed + i), daemon=True) for i in range(args.clients)]
    for thread in clients:
        thread.start()
    if builder is not None:
        builder.join(timeout=args.seconds + args.rebuild_timeout)
        # at least --seconds in all, and 3 s more of load on the new generation
        end[0] = max(phase.started + args.seconds, time.perf_counter() + 3.0)
    for thread in clients:
        thread.join(timeout=args.seconds + args.rebuild_timeout + 60)
    phase.ended = time.perf_counter()
    if server_pid:
        phase.server_cpu = cpu_seconds(server_pid) - cpu_before
    stop.set()
    poller.join()
    return phase


# ----- analysis -------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def analyse(phase: Phase) -> dict:
    ok = [record for record in phase.records if record[2] == 200]
    latencies = [record[1] * 1000 for record in ok]
    seconds = phase.ended - phase.started
    published = {name for _t, name in phase.published}
    problems: list[str] = []
    by_generation: dict[str, set] = defaultdict(set)
    signatures: dict[tuple[str, str], set] = defaultdict(set)
    for _t, _latency, _status, text, generation, passages, signature in ok:
        if generation not in published:
            problems.append(f"a response named generation {generation}, which CURRENT never published")
        by_generation[generation].add(passages)
        signatures[(generation, text)].add(signature)
    for generation, counts in by_generation.items():
        if len(counts) > 1:
            problems.append(f"generation {generation} answered with passage counts {sorted(counts)}")
    mixed = sum(1 for values in signatures.values() if len(values) > 1)
    if mixed:
        problems.append(f"{mixed} (generation, query) pairs gave different hits in different responses")
    generations = [name for _t, name in phase.published]
    marker = {"checked": 0}
    if phase.marker_query and len(generations) >= 2:
        old, new = generations[0], generations[-1]
        for _t, _latency, _status, text, generation, _passages, signature in ok:
            if text != phase.marker_query:
                continue
            marker["checked"] += 1
            found = bool(signature) and signature[0][0] == phase.marker_path
            if generation == new and not found:
                problems.append("a response of the new generation did not find the marker note first")
            if generation == old and any(hit[0] == phase.marker_path for hit in signature or ()):
                problems.append("a response of the old generation found the marker note")
        switched_at = phase.published[-1][0]
        first_new = min((r[0] + r[1] for r in ok if r[4] == new), default=None)
        marker["seconds_from_publish_to_first_new_answer"] = None if first_new is None else round(max(0.0, first_new - switched_at), 3)
        marker["responses_old_generation"] = sum(1 for r in ok if r[4] == old)
        marker["responses_new_generation"] = sum(1 for r in ok if r[4] == new)
    return {
        "phase": phase.name,
        "seconds": round(seconds, 1),
        "requests": len(phase.records),
        "requests_per_s": round(len(phase.records) / seconds, 1) if seconds else 0,
        "errors": len(phase.errors),
        "error_samples": phase.errors[:5],
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p90_ms": round(percentile(latencies, 90), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "generations_published": generations,
        "generations_answered": sorted(g for g in by_generation if g),
        "build_seconds": None if phase.build_seconds is None else round(phase.build_seconds, 1),
        # what a request costs the server, whatever else the machine runs: CPU ms per request
        "server_cpu_ms_per_request": round(phase.server_cpu * 1000 / len(phase.records), 2) if phase.server_cpu and phase.records else None,
        "load_average": round(os.getloadavg()[0], 1),
        "marker": marker,
        "consistency_problems": problems,
        "consistent": not problems,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="an index folder (e.g. indexes/bench/index, built by benchmarks/speed.py)")
    parser.add_argument("--passages", type=int, default=20_000, help="without --index: build indexes/serve-load of about this many passages")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mode", default="hybrid", choices=["hybrid", "bm25", "dense"])
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--queries", default="distinct", choices=["distinct", "repeated"],
                        help="distinct: thousands of eval queries (each mostly new to the server); repeated: 16 queries over and over")
    parser.add_argument("--phase", default="both", choices=["idle", "rebuild", "both"])
    parser.add_argument("--rebuild-timeout", type=float, default=900.0, help="longest the rebuild may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()

    index = ensure_index(args)
    pool = queries(args.queries, args.seed)
    port = free_port()
    server = start_server(index, port)
    results = []
    try:
        status, stats = get_json(port, "/api/stats")
        _status, facets = get_json(port, "/api/facets")
        folders = sorted(facets["folders"], key=len)
        roots = [f for i, f in enumerate(folders) if not any(f.startswith(r.rstrip("/") + "/") for r in folders[:i])]
        print(f"index {index}: {stats['passages']} passages in {stats['files']} files; {args.clients} clients, "
              f"{args.seconds:.0f} s per phase, mode {args.mode}, k={args.k}, {args.queries} queries ({len(pool)})", flush=True)
        for query in pool[:8]:  # warm-up, not counted
            get_json(port, "/api/search?" + urlencode({"q": query, "k": args.k, "mode": args.mode}))
        if args.phase in ("idle", "both"):
            results.append(analyse(run_phase("idle", port, index, pool, args, server_pid=server.pid)))
            print_result(results[-1])
        if args.phase in ("rebuild", "both"):
            phase = run_phase("during rebuild", port, index, pool, args, rebuild_roots=roots, server_pid=server.pid)
            results.append(analyse(phase))
            print_result(results[-1])
            if phase.marker_path:
                os.remove(phase.marker_path)
                print("removing the marker note and updating the index again (not measured)...", flush=True)
                subprocess.run([sys.executable, "-m", "search.cli", "index", *roots, "--index", str(index), "--wait"],
                               check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.rebuild_timeout)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    summary = {"index": str(index), "passages": stats["passages"], "clients": args.clients, "mode": args.mode, "k": args.k,
               "queries": args.queries, "cpus": os.cpu_count(), "phases": results}
    print(json.dumps(summary, ensure_ascii=False))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    if any(result["errors"] or not result["consistent"] for result in results):
        sys.exit(1)


def print_result(result: dict) -> None:
    print(f"{result['phase']:>15}: {result['requests']} requests in {result['seconds']} s = {result['requests_per_s']} req/s; "
          f"p50 {result['p50_ms']} ms, p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms; "
          f"errors {result['errors']}; generations answered {len(result['generations_answered'])}"
          + (f"; rebuild {result['build_seconds']} s" if result["build_seconds"] is not None else "")
          + f"; consistent: {result['consistent']}; server CPU {result['server_cpu_ms_per_request']} ms/request"
          + f"; load average {result['load_average']}", flush=True)
    for problem in result["consistency_problems"][:5]:
        print(f"                 problem: {problem}", flush=True)


if __name__ == "__main__":
    main()
