"""The int8 quantisation recipe of the ONNX export: SmoothQuant-balanced dynamic int8 with per-channel
7-bit weight scales, and the FFN down-projections quantised apart, two ways: 8-bit weight blocks
(`MatMulNBits`) for CPUs with int8 dot products, per-row activations (`MatMulInteger`) for the others.

`search.embedding.onnx_export` runs it once per model (and keys its cache by EXPORT_SETTINGS); onnx is
imported only here and there, never on the query path.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from search.embedding.spec import ModelSpec, UnsupportedModel, load_tokenizer

__all__ = ["EXPORT_SETTINGS", "ROWS_ACTIVATION_MAX", "quantize", "smooth"]

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
# Where u8 x s8 pairs add in int16 (x86-64 without VNNI: the kernel probe of onnx_runtime), ORT's int8
# MatMulNBits kernels run 1.6x slower than float32 (11.8-12.4 against 7.4-7.6 ms for 1024 x 1536 -> 384 on
# an AMD EPYC at AVX2: benchmarks/cpu_classes.py --timing) and took half of a passage's encoding. A second file (ROWS_FILE) runs those down-projections
# as MatMulInteger instead: activations quantised per row to 0..127 with a zero point, per-column
# 8-bit weights, so 2*127*127 = 32258 fits int16 as well; its cosine to float32 is within 0.001 of the
# block file's (see _row_quantize). Each CPU runs one file of the same export, so an index's vectors keep
# one identity wherever it is searched, and the export's key (these settings) names the block file's recipe:
# exports made before the second file keep their key and gain it (ensure_export), re-embedding nothing.
EXPORT_SETTINGS = {"opset": 17, "weights": "int8", "per_channel": True, "fusion": "bert", "float_after_gelu": True,
                   "smooth_alpha": 0.5, "after_gelu": "matmulnbits8-b128-acc4", "reduce_range": True, "skip_layer_norm": False}
_BLOCK = 128
ROWS_ACTIVATION_MAX = 127  # a rows-file activation lies in 0..127: with |q| <= 127 weights, a pair sums to 32258
_GELU = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu"}
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

def _after_gelu(graph) -> list[str]:
    """MatMuls reading a GELU output: left out of per-tensor int8, block-quantised instead (see EXPORT_SETTINGS)."""
    producer = {output: node.op_type for node in graph.node for output in node.output}
    return [node.name for node in graph.node if node.op_type == "MatMul" and producer.get(node.input[0]) in _GELU]


def smooth(source: Path, target: Path, spec: ModelSpec) -> Path | None:
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


def quantize(source: Path, target: Path, rows_target: Path) -> None:
    """Dynamic int8 everywhere but the down-projections, which go two ways: MatMulNBits in `target`,
    per-row MatMulInteger in `rows_target` (see EXPORT_SETTINGS)."""
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
    _row_quantize(target, rows_target, set(after_gelu))
    _block_quantize(target, set(after_gelu))


def _rewrite_matmuls(source: Path, target: Path, names: set[str], rewrite) -> None:
    """Write `source` to `target` with each of these float MatMuls (of a 2-D weight) replaced by the
    nodes `rewrite(node, weight, add)` returns, `add(name, array)` adding an initializer; weights no node
    reads any more are dropped. Nothing is written if this onnxruntime cannot run the result."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}

    def add(name: str, array: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    nodes = []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.name in names and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        nodes += rewrite(node, numpy_helper.to_array(weight).astype(np.float32), add)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - an older onnxruntime: the caller's fallback stands
        return
    onnx.save(model, str(target))


def _block_quantize(path: Path, names: set[str]) -> None:
    """Rewrite these float MatMuls as MatMulNBits (8-bit symmetric weights per block of _BLOCK inputs,
    int8 activations per block at run time). The file is left as it was if this onnxruntime cannot
    run the result (8-bit MatMulNBits on CPU is recent): those MatMuls then stay float32."""
    from onnx import helper

    def block_nodes(node, weight: np.ndarray, add) -> list:
        quantized, scales = _blocks(weight)
        stem = node.input[1]
        return [helper.make_node("MatMulNBits", [node.input[0], add(f"{stem}/q8", quantized), add(f"{stem}/scales", scales)],
                                 list(node.output), name=node.name, domain="com.microsoft", K=weight.shape[0], N=weight.shape[1],
                                 bits=8, block_size=_BLOCK, accuracy_level=4)]

    _rewrite_matmuls(path, path, names, block_nodes)


def _row_quantize(source: Path, target: Path, names: set[str]) -> None:
    """Write `source` to `target` with these float MatMuls as integer products whose pairs fit int16:
    each row of activations x quantised to 0..ROWS_ACTIVATION_MAX with its own scale and zero point (a GELU
    output's long tail costs only its own row), weights to int8 per output column, and the zero point taken
    back out through the weights' column sums:
        x @ W ~ scale_row * (q_x @ q_W) * scale_col - scale_row * z_row * colsum(q_W * scale_col)
    The grid holds 0 and the row's maximum exactly (the outliers that matter most): n steps above 0, in
    proportion to the row's positive share of its range, at scale max / n, and z = 127 - n steps below; a
    row's lowest values may be clipped by a step. q_x = round(x / scale_row) + z_row is one QuantizeLinear
    along the rows, which onnxruntime vectorises (the first rows file, version 1, took four passes: Sub,
    Div, Round unvectorised and Cast, 9-10% of all-MiniLM-L6-v2's encoding at AVX2): 2-10% more passages/s
    there. Mean cosine to float32 sentence-transformers on 200 passages a set (benchmarks/cpu_classes.py):
    M3E-small 0.9994 on cmedqq and 0.9989 on cmrc2018 (block file 0.9995, 0.9990), all-MiniLM-L6-v2 0.9975
    on SciFact (0.9979); SciFact's dense nDCG@10 0.6696-0.6713, float32 0.6713 (version 1: 0.6678-0.6697;
    a grid from the row's minimum and a rounded zero point, whose maximum is off the grid: 0.6655-0.6663).
    7-bit weights with 0..255 activations, the other way to fit int16, lost more (MiniLM 0.9964 against
    0.9969 on bench passages). Not written if this onnxruntime cannot run the result."""

    def row_nodes(node, weight: np.ndarray, add) -> list:
        make = _NodeMaker(node.input[1], add)
        return _row_grid(make, node.input[0]) + _row_products(make, node, weight)

    _rewrite_matmuls(source, target, names, row_nodes)


class _NodeMaker:
    """Nodes and constants of one rewritten MatMul, named under its weight's name."""

    def __init__(self, stem: str, add) -> None:
        self.stem, self.add = stem, add

    def name(self, suffix: str) -> str:
        return f"{self.stem}/{suffix}"

    def constant(self, suffix: str, value, dtype=np.float32) -> str:
        return self.add(self.name(suffix), np.asarray(value, dtype=dtype))

    def op(self, kind: str, inputs: list[str], output: str, **attributes):
        from onnx import helper

        return helper.make_node(kind, inputs, [self.name(output)], **attributes)


def _row_grid(make: _NodeMaker, x: str) -> list:
    """Each row's scale and zero point: its range widened to hold 0, n steps above 0 in proportion to the
    row's positive share (so the row's maximum is on the grid), 127 - n below."""
    name, op, levels = make.name, make.op, make.constant("levels", float(ROWS_ACTIVATION_MAX))
    return [
        op("ReduceMax", [x], "row_max", axes=[-1], keepdims=1),
        op("ReduceMin", [x], "row_min", axes=[-1], keepdims=1),
        op("Max", [name("row_max"), make.constant("tiny", 1e-8)], "high"),
        op("Min", [name("row_min"), make.constant("zero", 0.0)], "low"),
        op("Sub", [name("high"), name("low")], "row_range"),
        op("Div", [name("high"), name("row_range")], "high_share"),
        op("Mul", [name("high_share"), levels], "high_levels"),
        op("Round", [name("high_levels")], "high_rounded"),
        op("Max", [name("high_rounded"), make.constant("one", 1.0)], "high_steps"),
        op("Div", [name("high"), name("high_steps")], "row_scale"),
        op("Sub", [levels, name("high_steps")], "zero_point"),
        op("Mul", [name("zero_point"), name("row_scale")], "row_offset"),  # the zero point in x's units
    ]


def _row_products(make: _NodeMaker, node, weight: np.ndarray) -> list:
    """x quantised on its rows' grid, times the weights quantised per column, back to floats."""
    from onnx import TensorProto, helper

    column_scales = np.abs(weight).max(axis=0) / 127
    column_scales[column_scales == 0] = 1
    quantized = np.clip(np.rint(weight / column_scales), -127, 127).astype(np.int8)
    column_sums = (quantized.astype(np.float32) * column_scales).sum(axis=0)
    name, op, constant, x = make.name, make.op, make.constant, node.input[0]
    return [
        # one pass of ORT's vectorised QuantizeLinear over the rows (per-axis needs them 2-D)
        op("Reshape", [x, constant("rows_shape", [-1, weight.shape[0]], np.int64)], "x_rows"),
        op("Reshape", [name("row_scale"), constant("flat", [-1], np.int64)], "scale_rows"),
        op("Cast", [name("zero_point")], "zero_point_u8", to=TensorProto.UINT8),
        op("Reshape", [name("zero_point_u8"), name("flat")], "zero_point_rows"),
        op("QuantizeLinear", [name("x_rows"), name("scale_rows"), name("zero_point_rows")], "q_x", axis=0),
        helper.make_node("MatMulInteger", [name("q_x"), make.add(name("q_rows"), quantized)], [name("products")], name=node.name),
        op("Cast", [name("products")], "products_float", to=TensorProto.FLOAT),
        # back to x's leading axes
        op("Shape", [x], "x_shape"),
        op("Slice", [name("x_shape"), constant("start", [0], np.int64), constant("end", [-1], np.int64)], "leading"),
        op("Concat", [name("leading"), constant("width", [weight.shape[1]], np.int64)], "out_shape", axis=0),
        op("Reshape", [name("products_float"), name("out_shape")], "products_shaped"),
        op("Mul", [name("products_shaped"), name("row_scale")], "by_row"),
        op("Mul", [name("by_row"), constant("column_scales", column_scales)], "by_cell"),
        op("Mul", [name("row_offset"), constant("column_sums", column_sums)], "offset"),
        helper.make_node("Sub", [name("by_cell"), name("offset")], list(node.output)),
    ]


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
