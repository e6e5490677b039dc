"""The int8 ONNX export recipe: torch.onnx, ORT's BERT fusions (layer norms left apart), SmoothQuant-
balanced dynamic int8 quantisation with per-channel 7-bit weight scales, and 8-bit block-quantised FFN
down-projections.

Made once, normally by `search index` (or ahead of time by `search prepare`), into the user's cache
folder keyed by the model files and the export settings, and checked against torch on probe
sentences; `search.embedding.onnx_runtime` runs the result. torch is imported only while exporting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from search.cache import cache_root
from search.embedding.onnx_runtime import OnnxEncoder
from search.embedding.spec import ModelSpec, UnsupportedModel, load_tokenizer, pool

# Bump when the export recipe changes, so cached exports are remade.
EXPORT_VERSION = 6
# Per-channel weight scales: per-tensor int8 cost all-MiniLM-L6-v2 a mean cosine of 0.94 to its
# float32 vectors, per-channel keeps 0.994. The FFN down-projections read GELU outputs whose long
# tails quantise badly; keeping them in float32 lifts the worst passage from 0.989 to 0.995.
# Activations are quantised per tensor at run time, so a few outlier channels (BERT's layer norms
# make some) squeeze every other channel into a handful of levels; SmoothQuant moves that range into
# the per-channel weights: mean cosine to float32 on 600 SciFact passages 0.9972 -> 0.9987 for MiniLM,
# 0.9991 -> 0.9996 on cmedqq for M3E-small, at the cost of one elementwise Mul per quantised node.
# The down-projections were then a third to 44% of the run time on short passages; MatMulNBits with
# 8-bit weights in blocks of 128 and accuracy level 4 (activations quantised to int8 per block of
# each row, so GELU's tails stay local) runs them ~1.6x faster than float32 at nearly float fidelity.
# 7-bit weights (reduce_range: |q| <= 64) in every MatMulInteger and QAttention, so that the export
# computes the same on every CPU. x86-64 CPUs without VNNI (AVX2; AVX-512 before Cascade Lake) multiply
# the u8 activations by s8 weights with vpmaddubsw, which adds pairs of products into saturating int16:
# 2*255*127 overflows (all-MiniLM-L6-v2 fell to cosine 0.92 to float32 there and so to torch; M3E-small
# to 0.994), 2*255*64 = 32640 cannot; VNNI, AMX and ARM dot products accumulate in int32 anyway. 7 bits
# cost MiniLM a mean cosine of 0.9985 -> 0.9978 on SciFact (M3E-small 0.9996 -> 0.9995 on cmedqq) and
# no speed; u8 x u8 weights kept 8 bits but ran 27-36% slower on a VNNI CPU. The 8-bit MatMulNBits
# cannot saturate: its int8 activations are symmetric (|a| <= 127, 2*127*127 < 32767) and ORT's kernels
# without VNNI split each int16 pair. benchmarks/cpu_classes.py checks all of it on any CPU.
# Residual adds and layer norms stay apart ("skip_layer_norm": False): onnxruntime 1.32's fused
# SkipLayerNormalization kernel took 66 us where Add + LayerNormalization take 20 (22 tokens x 384, one
# thread), 13-18% of a query's encoding; apart, a short query encodes ~20% faster (see onnx_runtime).
EXPORT_SETTINGS = {"opset": 17, "weights": "int8", "per_channel": True, "fusion": "bert", "float_after_gelu": True,
                   "smooth_alpha": 0.5, "after_gelu": "matmulnbits8-b128-acc4", "reduce_range": True, "skip_layer_norm": False}
_BLOCK = 128
_GELU = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu"}
MODEL_FILE = "model.int8.onnx"
# ORT's transformer optimizer fuses attention, GELU and layer norms for these encoder layouts.
_FUSABLE = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}
# Probe sentences checked after every export: different lengths exercise the dynamic axes.
_PROBES = ["序列并行沿序列维度切分输入。", "Knead the dough for ten minutes, then let it rise.", "番茄炒蛋", "a"]
# Activation ranges per channel are measured on these (both languages, prose and lists, short and
# long): the outlier channels belong to the model, not to the text, so a few hundred tokens find them.
_CALIBRATION = [
    "Sequence parallelism splits the input along the sequence dimension, so each device holds a slice of the activations.",
    "The patient was given 5 mg of amlodipine daily; blood pressure fell from 160/100 to 130/85 within four weeks.",
    "How do I merge keyword and vector results? Reciprocal rank fusion adds 1/(k + rank) from each list.",
    "Preheat the oven to 220 °C. Knead the dough for ten minutes, then let it rise for an hour in a warm place.",
    "In 1905 Einstein published four papers: the photoelectric effect, Brownian motion, special relativity and E = mc².",
    "Error: ModuleNotFoundError: No module named 'torch' (pip install torch==2.13.0 --index-url https://example.org/cpu)",
    "序列并行沿序列维度切分输入，每张卡只保存一部分激活值，从而降低显存占用。",
    "患者男，45岁，反复上腹痛三年，饭后加重，胃镜提示十二指肠球部溃疡，请问应该吃什么药？",
    "番茄炒蛋的做法：鸡蛋打散，番茄切块，先炒蛋再炒番茄，最后加盐和少许白糖。",
    "北京是中华人民共和国的首都，位于华北平原北部，2008年举办了第29届夏季奥运会。",
    "小布小布，明天早上七点叫我起床，顺便告诉我明天深圳的天气怎么样。",
    "混合检索：先用BM25召回候选，再用向量相似度重排，最后用RRF融合两个排序。",
]
# int8 stays above 0.97 even on a text of unknown tokens; a broken graph (shapes baked in by
# tracing, a wrong input) lands far lower.
_MIN_PROBE_COSINE = 0.95


# The library never prints: the one-time export is announced here and the CLI shows it.
log = logging.getLogger(__name__)


def _fingerprint(folder: Path) -> str:
    """A content hash of the model's files that stays cheap on every query.

    Small files are hashed whole; weight files by size plus their first and last MiB, which
    changes with any retraining while costing milliseconds instead of reading ~100 MB.
    """
    digest = hashlib.sha256(json.dumps([EXPORT_VERSION, EXPORT_SETTINGS]).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix == ".md":
            continue
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder)}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= 4 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def export_dir(spec: ModelSpec) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name)[-60:]
    return cache_root() / "onnx" / f"{safe}-{_fingerprint(spec.folder)}"


def ensure_export(spec: ModelSpec) -> Path:
    """The int8 ONNX file for this model, exporting it first if the cache lacks it.

    Raises UnsupportedModel when the model cannot be exported faithfully; the failure is
    remembered in the cache so later processes fall back at once.
    """
    folder = export_dir(spec)
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    failed = folder.with_name(folder.name + ".unsupported")
    if failed.is_file():
        raise UnsupportedModel(failed.read_text(encoding="utf-8").strip())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    log.info("preparing the int8 model of %s, once (about 30 s; kept in %s)", spec.name, folder.parent)
    started = time.perf_counter()
    try:
        try:
            _export(spec, staging)
            log.info("int8 model of %s ready in %.0f s", spec.name, time.perf_counter() - started)
        except UnsupportedModel as error:
            _write_atomically(failed, str(error))
            raise
        try:
            # a directory rename is atomic: readers see no folder or a complete one
            staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            os.rename(staging, folder)
        except OSError:
            if not (folder / MODEL_FILE).is_file():
                raise
            # a concurrent process finished the same export first; use theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / MODEL_FILE


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    temporary.write_text(text + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _export(spec: ModelSpec, staging: Path) -> None:
    """torch -> ONNX (float32) -> fused -> int8, then check it against torch on probe sentences."""
    try:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging
    except ImportError as error:  # pragma: no cover - torch ships with the package
        raise UnsupportedModel(f"cannot export to ONNX without torch/transformers: {error}") from error
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar inside the export's own message
    try:
        model = AutoModel.from_pretrained(str(spec.folder), attn_implementation="eager").eval()
    except Exception as error:  # noqa: BLE001 - any loading failure means "use sentence-transformers"
        raise UnsupportedModel(f"transformers cannot load {spec.folder}: {error}") from error

    class Hidden(torch.nn.Module):
        """Keyword call: tracing passes inputs positionally, which newer BertModel signatures reject."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    float_file, fused_file = staging / "model.onnx", staging / "model.fused.onnx"
    example = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Hidden(model).eval(), (example, example), str(float_file),
                input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                opset_version=EXPORT_SETTINGS["opset"], dynamo=False,
            )
    except Exception as error:  # noqa: BLE001 - unusual architectures fail in many ways
        raise UnsupportedModel(f"torch.onnx.export failed: {error}") from error
    source = _fuse(float_file, fused_file, model.config) or float_file
    smooth_file = staging / "model.smooth.onnx"
    _quantize(_smooth(source, smooth_file, spec) or source, staging / MODEL_FILE)
    for path in (float_file, fused_file, smooth_file):
        path.unlink(missing_ok=True)
    _check_against_torch(spec, model, staging / MODEL_FILE)
    (staging / "export.json").write_text(json.dumps({"model": spec.name, "folder": str(spec.folder), **EXPORT_SETTINGS}, indent=1))


def _fuse(source: Path, target: Path, config) -> Path | None:
    """ORT's BERT fusions (attention, GELU, layer norms); quantising the fused graph uses QAttention."""
    if getattr(config, "model_type", None) not in _FUSABLE:
        return None
    try:
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions

        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = EXPORT_SETTINGS["skip_layer_norm"]
        fused = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size, opt_level=1,
            optimization_options=options,
        )
        fused.save_model_to_file(str(target))
        return target
    except Exception:  # noqa: BLE001 - the unfused graph is correct, only slower
        return None


def _after_gelu(graph) -> list[str]:
    """MatMuls reading a GELU output: left out of per-tensor int8, block-quantised instead (see EXPORT_SETTINGS)."""
    producer = {output: node.op_type for node in graph.node for output in node.output}
    return [node.name for node in graph.node if node.op_type == "MatMul" and producer.get(node.input[0]) in _GELU]


def _smooth(source: Path, target: Path, spec: ModelSpec) -> Path | None:
    """SmoothQuant (Xiao et al. 2023) for every node the quantiser will make int8: divide its input's
    channel j by s_j = sqrt(max|x_j| / max|w_j|) in a Mul and multiply weight row j by s_j. The product
    is unchanged in float; int8 then sees activations and weights with balanced ranges. None when the
    graph cannot be calibrated (it is then quantised unsmoothed)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    readers = Counter(name for node in graph.node for name in node.input)
    float_kept = set(_after_gelu(graph)) if EXPORT_SETTINGS["float_after_gelu"] else set()
    targets = {node.name: node for node in graph.node if node.op_type in ("MatMul", "Attention") and node.name not in float_kept
               and node.input[1] in weights and len(weights[node.input[1]].dims) == 2 and readers[node.input[1]] == 1}
    try:
        ranges = _activation_ranges(model, sorted({node.input[0] for node in targets.values()}), spec)
    except Exception:  # noqa: BLE001 - an unusual graph; plain per-tensor int8 is still correct
        return None
    alpha = EXPORT_SETTINGS["smooth_alpha"]
    nodes = []
    for node in graph.node:
        if node.name in targets:
            weight = numpy_helper.to_array(weights[node.input[1]])
            scale = np.maximum(ranges[node.input[0]], 1e-5) ** alpha / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), node.input[1]))
            inverse, scaled = f"{node.name}/smooth_inverse", f"{node.name}/smooth_input"
            graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32), inverse))
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [scaled], name=f"{node.name}/smooth"))
            node.input[0] = scaled
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target))
    return target


def _activation_ranges(model, names: list[str], spec: ModelSpec) -> dict[str, np.ndarray]:
    """max |x| per channel of these tensors over the calibration texts (one text per run: no padding)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    ranges = {name: np.zeros(1, dtype=np.float32) for name in names}
    for encoding in load_tokenizer(spec).encode_batch(_CALIBRATION):
        ids = np.array([encoding.ids], dtype=np.int64)
        for name, value in zip(names, session.run(names, {"input_ids": ids, "attention_mask": np.ones_like(ids)})):
            ranges[name] = np.maximum(ranges[name], np.abs(value).reshape(-1, value.shape[-1]).max(axis=0))
    return ranges


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice about static preprocessing
    after_gelu = _after_gelu(onnx.load(str(source), load_external_data=False).graph)
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=EXPORT_SETTINGS["per_channel"],
            reduce_range=EXPORT_SETTINGS["reduce_range"],
            nodes_to_exclude=after_gelu if EXPORT_SETTINGS["float_after_gelu"] else [],
            # fused contrib ops defeat shape inference; their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except Exception as error:  # noqa: BLE001
        raise UnsupportedModel(f"int8 quantisation failed: {error}") from error
    finally:
        logging.getLogger().setLevel(quiet)
    _block_quantize(target, set(after_gelu))


def _block_quantize(path: Path, names: set[str]) -> None:
    """Rewrite these float MatMuls as MatMulNBits (8-bit symmetric weights per block of _BLOCK inputs,
    int8 activations per block at run time). The file is left as it was if this onnxruntime cannot
    run the result (8-bit MatMulNBits on CPU is recent)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    nodes = []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.name in names and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        quantized, scales = _blocks(numpy_helper.to_array(weight).astype(np.float32))
        stem = node.input[1]
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{stem}/q8"), numpy_helper.from_array(scales, f"{stem}/scales")])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], f"{stem}/q8", f"{stem}/scales"], list(node.output), name=node.name,
                                      domain="com.microsoft", K=weight.dims[0], N=weight.dims[1], bits=8, block_size=_BLOCK, accuracy_level=4))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - an older onnxruntime: keep those MatMuls in float32
        return
    onnx.save(model, str(path))


def _blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' layout of a (K, N) weight: (N, K/_BLOCK, _BLOCK) uint8 holding q + 128 (its default
    zero point for 8 bits), and one float scale per block."""
    k, n = weight.shape
    blocks = -(-k // _BLOCK)
    padded = np.zeros((n, blocks * _BLOCK), dtype=np.float32)
    padded[:, :k] = weight.T
    padded = padded.reshape(n, blocks, _BLOCK)
    scales = np.abs(padded).max(axis=2) / 127
    scales[scales == 0] = 1
    quantized = np.clip(np.rint(padded / scales[..., None]), -127, 127) + 128
    return quantized.astype(np.uint8), scales.astype(np.float32).reshape(-1)


def _check_against_torch(spec: ModelSpec, model, onnx_file: Path) -> None:
    import torch

    runtime = OnnxEncoder(spec, onnx_file)
    got = runtime.encode(_PROBES)
    tokenizer = load_tokenizer(spec)
    want = np.zeros_like(got)
    model.eval()  # the exporter restores the wrapper's mode, which must not leave dropout on
    with torch.no_grad():
        for i, encoding in enumerate(tokenizer.encode_batch(_PROBES)):
            ids = torch.tensor([encoding.ids])
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.numpy()
            want[i] = pool(hidden, np.ones(ids.shape, dtype=np.int64), spec.pooling)[0]
    cosines = (got * want).sum(axis=1)
    if not np.all(cosines >= _MIN_PROBE_COSINE):
        raise UnsupportedModel(f"the ONNX export disagrees with torch (cosine {cosines.min():.3f})")
