"""CPU encoding with the int8 ONNX export (see `onnx_export`), run by onnxruntime.

Importing sentence-transformers costs seconds and hundreds of MB, so the query path runs the export
with onnxruntime, tokenises with `tokenizers` and pools in numpy.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from search.embedding.spec import ModelSpec, batches_by_length, load_tokenizer, pool

__all__ = ["BACKEND", "CPU_BATCH", "CPU_BATCH_TOKENS", "OnnxEncoder", "pairs_add_in_int16", "write_kernel_probe"]

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
    padded tokens; L2-normalised float32 vectors."""

    backend = BACKEND

    def __init__(self, spec: ModelSpec, onnx_file: Path, threads: int | None = None) -> None:
        self.spec, self.onnx_file, self.threads = spec, onnx_file, threads
        self.tokenizer = load_tokenizer(spec)
        self.identity = f"{BACKEND}:{Path(onnx_file).parent.name}"  # the export folder names recipe and model files
        self.dim = spec.dim
        self.max_seq_length = spec.max_seq_length
        self._session = None
        self._session_lock = threading.Lock()

    @property
    def session(self):
        """The ONNX Runtime session, made on first use (~0.3 s): a build that embeds nothing in this
        model, and only asks its identity to reuse vectors, never pays for it."""
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    import onnxruntime as ort

                    options = ort.SessionOptions()
                    options.intra_op_num_threads = self.threads or _cores()
                    options.inter_op_num_threads = 1
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    options.log_severity_level = 3
                    self._session = ort.InferenceSession(str(self.onnx_file), options, providers=["CPUExecutionProvider"],
                                                         disabled_optimizers=UNFUSED)
        return self._session

    def encode(self, texts: Sequence[str], batch_size: int = CPU_BATCH, progress: "object | None" = None) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # parallel in Rust; one text (a query) alone: the batch call's hand-off to its threads cost 0.1 ms
        encodings = [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.tokenizer.encode_batch(list(texts))
        for rows, ids, mask in batches_by_length(encodings, batch_size, self.spec.pad_id, CPU_BATCH_TOKENS):
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            out[rows] = pool(hidden, mask, self.spec.pooling)
            if progress is not None:
                progress.update(len(rows))
        return out


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
