"""CPU encoding with the int8 ONNX export (see `onnx_export`), run by onnxruntime.

Importing sentence-transformers costs seconds and hundreds of MB, so the query path runs the export
with onnxruntime, tokenises with `tokenizers` and pools in numpy.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from search.embedding.spec import ModelSpec, batches_by_length, load_tokenizer, pool

__all__ = ["BACKEND", "CPU_BATCH", "CPU_BATCH_TOKENS", "OnnxEncoder", "pairs_add_in_int16", "spread", "write_kernel_probe"]

# Rows per inference call, and padded tokens per call. On two cores, 32 length-sorted rows encode the
# bench's passages 10-20% faster than 64 (less padding in each batch, activations that stay in cache),
# and for long passages fewer rows still are faster: all-MiniLM-L6-v2 on SciFact (175 tokens a passage)
# 47.0 -> 55.8 passages/s with at most 1024 tokens a call (5-6 rows), M3E-small on cmedqq (16 tokens,
# whole batches of 32 either way) unchanged within noise; 512 and 1024 tie, 256 and 2048 lose a little.
# Smaller calls also quantise activations over fewer rows: cosine to float32 0.9978 -> 0.9981.
CPU_BATCH = 32
CPU_BATCH_TOKENS = 1024
BACKEND = "onnx-int8"
# onnxruntime would fuse the export's residual adds and layer norms back into SkipLayerNormalization,
# whose kernel runs 3-5x slower than the two apart (onnx_quantize's EXPORT_SETTINGS): a one-query call
# 3.3 -> 2.7 ms (M3E-small) and 4.9 -> 3.9 ms (all-MiniLM-L6-v2), passages up to 8% faster.
UNFUSED = ["SkipLayerNormFusion"]


class OnnxEncoder:
    """Length-sorted, per-batch padded inference of the int8 export, in calls of at most `CPU_BATCH_TOKENS`
    padded tokens; L2-normalised float32 vectors.

    A call's batches run on `lanes` one-thread sessions side by side, each taking the next batch when it
    is done (one lane per core unless `threads` says fewer): on two cores that embeds 10-22% more passages
    a second than one session of two threads, whose threads meet at the end of every operator (medians of
    alternating runs of each model, at AVX2 and with VNNI; README, Performance). A query engine's encoders
    have one lane."""

    backend = BACKEND

    def __init__(self, spec: ModelSpec, onnx_file: Path, threads: int | None = None) -> None:
        self.spec, self.onnx_file = spec, onnx_file
        self.lanes = threads or _cores()
        self.tokenizer = load_tokenizer(spec)
        self.identity = f"{BACKEND}:{Path(onnx_file).parent.name}"  # the export folder names recipe and model files
        self.dim = spec.dim
        self.max_seq_length = spec.max_seq_length
        self._sessions: list | None = None
        self._helpers: ThreadPoolExecutor | None = None
        self._sessions_lock = threading.Lock()

    @property
    def sessions(self) -> list:
        """One ONNX Runtime session per lane, made on first use (~0.3 s each): a build that embeds nothing
        in this model, and only asks its identity to reuse vectors, never pays for them."""
        if self._sessions is None:
            with self._sessions_lock:
                if self._sessions is None:
                    self._sessions = [self._new_session() for _ in range(self.lanes)]
                    if self.lanes > 1:
                        self._helpers = ThreadPoolExecutor(self.lanes - 1, thread_name_prefix="search-encode")
        return self._sessions

    @property
    def session(self):
        """The first lane's session (the only one of a query engine's encoder)."""
        return self.sessions[0]

    def _new_session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        _register_shared_arena(ort)
        options.add_session_config_entry("session.use_env_allocators", "1")
        return ort.InferenceSession(str(self.onnx_file), options, providers=["CPUExecutionProvider"], disabled_optimizers=UNFUSED)

    def encode(self, texts: Sequence[str], batch_size: int = CPU_BATCH, progress: "object | None" = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # parallel in Rust; one text (a query) alone: the batch call's hand-off to its threads cost 0.1 ms
        encodings = [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(list(texts))
        sessions = self.sessions
        batches = spread(list(batches_by_length(encodings, batch_size, self.spec.pad_id, CPU_BATCH_TOKENS)), len(sessions))
        pending, taking = iter(batches), threading.Lock()

        def lane(session) -> None:
            try:
                while True:
                    with taking:
                        batch = next(pending, None)
                    if batch is None:
                        return
                    rows, ids, mask = batch
                    hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
                    out[rows] = pool(hidden, mask, self.spec.pooling)
                    if progress is not None:
                        with taking:
                            progress.update(len(rows))
            except BaseException:  # an error or Ctrl-C: the other lanes stop after the batch they hold
                with taking:
                    for _ in pending:
                        pass
                raise

        helpers = [self._helpers.submit(lane, session) for session in sessions[1:len(batches)]] if self._helpers else []
        try:
            lane(sessions[0])
        finally:  # the other lanes still write into `out`: wait for them, and raise what they raised
            for helper in helpers:
                helper.result()
        return out


def spread(batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]], lanes: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches split in two, the largest first, until every lane has one: a call of a few texts uses
    every core too. Each half keeps its rows' length order and loses the padding it no longer needs."""
    while len(batches) < lanes:
        largest = max(range(len(batches)), key=lambda i: len(batches[i][0]))
        rows, ids, mask = batches[largest]
        if len(rows) < 2:
            break
        half = len(rows) // 2
        batches[largest:largest + 1] = [_trimmed(rows[:half], ids[:half], mask[:half]), _trimmed(rows[half:], ids[half:], mask[half:])]
    return batches


def _trimmed(rows: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    width = int(mask.sum(axis=1).max())
    return rows, np.ascontiguousarray(ids[:, :width]), np.ascontiguousarray(mask[:, :width])


# The kernel probe: one row of 255s times 16 columns of 127s, 64 long. Exact: 64 * 255 * 127 = 2072640.
# Where ORT multiplies u8 by s8 with vpmaddubsw (x86-64 without VNNI), each pair saturates at 32767.
_PROBE_DEPTH, _PROBE_COLUMNS = 64, 16
_pairs_in_int16: bool | None = None


def write_kernel_probe(path: Path) -> None:
    """Save the probe graph (a MatMulInteger of worst-case operands) for `pairs_add_in_int16`; the
    export writes it once, so a query process needs neither onnx nor a graph built at run time."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((_PROBE_DEPTH, _PROBE_COLUMNS), 127, dtype=np.int8), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["activations", "weights"], ["products"])], "kernel-probe",
        [helper.make_tensor_value_info("activations", TensorProto.UINT8, [1, _PROBE_DEPTH])],
        [helper.make_tensor_value_info("products", TensorProto.INT32, [1, _PROBE_COLUMNS])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    Path(path).write_bytes(model.SerializeToString())


def pairs_add_in_int16(probe: Path) -> bool:
    """Whether this process's onnxruntime adds u8 x s8 product pairs in saturating int16: true on
    x86-64 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake), false where int8 dot products add in
    int32 (VNNI, AMX, ARM). Asked of the kernels once per process (5-8 ms); False if the probe cannot run."""
    global _pairs_in_int16
    if _pairs_in_int16 is None:
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
            products = session.run(None, {"activations": np.full((1, _PROBE_DEPTH), 255, dtype=np.uint8)})[0]
            _pairs_in_int16 = bool((products != _PROBE_DEPTH * 255 * 127).any())
        except Exception:  # noqa: BLE001 - no probe (an older export) or no answer: the file every CPU can run
            return False
    return _pairs_in_int16


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


_arena_lock = threading.Lock()
_arena_registered = False


def _register_shared_arena(ort) -> None:
    """One CPU memory arena for every session of the process (the lanes of each model, and the models),
    registered once: each session's own arena would hold its own peak activations (a second lane of both
    embedding models cost 120 MB of RSS that way, 50 MB with the arena shared)."""
    global _arena_registered
    with _arena_lock:
        if not _arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, None)
            _arena_registered = True
