"""Encoding throughput and fidelity: sentence-transformers float32 vs the ONNX int8 backend.

Usage: python benchmarks/encoding.py [--passages 1000] [--rounds 2] [--multilingual]

Real passages (chunked and titled exactly as an index sees them) come from ../shared/eval: cmedqq
for M3E-small, scifact for all-MiniLM-L6-v2. Baseline and candidate run in the same process,
interleaved round by round, so load from other processes hits both alike; the ratio uses the
median round. With a CUDA GPU the tokenise-ahead torch pipeline (float16) is compared with
sentence-transformers float16 as well. It also times, in fresh processes, what a cold query pays
to load each backend and embed one query.

--multilingual instead prices multilingual-e5-small (`--model multilingual-e5-small`) against the
default's models, both int8 on the same passages: for each collection the model that embeds its
language by default (M3E-small for Chinese, all-MiniLM-L6-v2 for English) is the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from search.text.chunking import chunk_document  # noqa: E402
from search.embedding.encoder import Encoder, SentenceTransformerEncoder, gpu_present
from search.embedding.spec import load_tokenizer, model_spec, token_counter  # noqa: E402
from search import BuildConfig
from search.text.passages import contextual_text  # noqa: E402
from search.evaluation import load_collection  # noqa: E402
from cpu_classes import proc_cpuinfo_flags  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"
SETS = {"m3e-small": "cmedqq", "all-MiniLM-L6-v2": "scifact"}
MULTILINGUAL = "multilingual-e5-small"
# collection -> the default model of its passages' language
BY_LANGUAGE = {"cmedqq": "m3e-small", "oppo_xiaobu": "m3e-small", "xling_en2zh": "m3e-small",
               "scifact": "all-MiniLM-L6-v2", "xling_zh2en": "all-MiniLM-L6-v2"}
COLD = """
import time; started = time.perf_counter()
from search.embedding.encoder import Encoder
encoder = Encoder({name!r}, backend={backend!r}); encoder.encode_query(["query text 查询"])
print(time.perf_counter() - started)
"""
WARM = """
import statistics, time
from search.embedding.encoder import Encoder
encoder = Encoder({name!r}, backend="onnx", threads=1)  # as a query engine runs it
queries = {queries!r}
encoder.encode_query(queries[:2]); times = []
for query in queries:
    started = time.perf_counter(); encoder.encode_query([query]); times.append(time.perf_counter() - started)
print(statistics.median(times))
"""


def passages(model: str, count: int, collection: str | None = None) -> list[str]:
    config, counter, out = BuildConfig(), token_counter(model), []
    for document in load_collection(EVAL / (collection or SETS[model])).documents():
        out += [contextual_text(p) for p in chunk_document(document, counter, config.max_tokens, config.overlap_tokens)]
        if len(out) >= count:
            break
    return out[:count]


def timed(encoder, texts: list[str]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=64)
    return time.perf_counter() - started, vectors


def compare(name: str, texts: list[str], rounds: int, baseline, candidate, labels: tuple[str, str], same_model: bool = True) -> None:
    tokens = sum(len(e.ids) for e in load_tokenizer(model_spec(name)).encode_batch(texts))
    baseline.encode(texts[:16]), candidate.encode(texts[:16])  # warm up
    times: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(rounds):
        for label, encoder in zip(labels, (baseline, candidate)):
            seconds, vectors = timed(encoder, texts)
            times[label].append(seconds)
            if label == labels[0]:
                reference = vectors
            elif same_model:
                cosines = (vectors * reference).sum(axis=1)
    print(f"\n{name}: {len(texts)} passages, {tokens} tokens ({tokens / len(texts):.0f} per passage)")
    for label in labels:
        seconds = statistics.median(times[label])
        print(f"  {label:<34} {len(texts) / seconds:8.1f} passages/s {tokens / seconds:9.0f} tokens/s"
              f"   rounds: {', '.join(f'{t:.1f}s' for t in times[label])}")
    print(f"  speed-up (median round)            {statistics.median(times[labels[0]]) / statistics.median(times[labels[1]]):.2f}x")
    if same_model:
        print(f"  cosine to baseline                 min {cosines.min():.4f}  mean {cosines.mean():.4f}  p1 {np.percentile(cosines, 1):.4f}")


def fresh(script: str) -> float:
    """The one number a script prints, run in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def cold(name: str, backend: str) -> float:
    return fresh(COLD.format(name=name, backend=backend))


def multilingual(count: int, rounds: int) -> None:
    """multilingual-e5-small against the model each collection's language gets by default."""
    for collection, default in BY_LANGUAGE.items():
        texts = passages(default, count, collection)
        print(f"\n[{collection}] baseline {default}; e5 reads the same passages ({MULTILINGUAL} tokens below)")
        compare(MULTILINGUAL, texts, rounds, Encoder(default, backend="onnx"), Encoder(MULTILINGUAL, backend="onnx"),
                (f"{default} onnx int8", f"{MULTILINGUAL} onnx int8"), same_model=False)
    queries = [text for collection in ("xling_zh2en", "scifact") for text in list(load_collection(EVAL / collection).queries.values())[:100]]
    print("\none query at a time, one thread (median of 200 zh and en queries) / cold start in a fresh process:")
    for name in ("m3e-small", "all-MiniLM-L6-v2", MULTILINGUAL):
        warm = fresh(WARM.format(name=name, queries=queries))
        print(f"  {name:<22} warm {warm * 1000:5.2f} ms   cold {min(cold(name, 'onnx') for _ in range(2)):.2f}s (best of 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1000, help="passages per model")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--multilingual", action="store_true", help="price multilingual-e5-small against the default's models")
    args = parser.parse_args()
    cuda = gpu_present()
    print(f"device: {'cuda' if cuda else 'cpu'}, {len(os.sched_getaffinity(0))} cores, CPU flags: {' '.join(proc_cpuinfo_flags())}")
    if args.multilingual:
        multilingual(args.passages, args.rounds)
        return
    for name in SETS:
        texts = passages(name, args.passages)
        compare(name, texts, args.rounds, SentenceTransformerEncoder(name, "cpu"), Encoder(name, backend="onnx"),
                ("sentence-transformers float32 cpu", "onnx int8 cpu"))
        if cuda:
            from search.embedding.torch_gpu import TorchEncoder

            compare(name, texts * 20, args.rounds, SentenceTransformerEncoder(name, "cuda"), TorchEncoder(model_spec(name), "cuda"),
                    ("sentence-transformers float16 cuda", "tokenise-ahead pipeline fp16 cuda"))
    print("\ncold start in a fresh process (import, load, embed one query):")
    for name in SETS:
        for backend in ("torch", "onnx"):
            print(f"  {name:<18} {backend:<6} {min(cold(name, backend) for _ in range(2)):.2f}s (best of 2)")


if __name__ == "__main__":
    main()
