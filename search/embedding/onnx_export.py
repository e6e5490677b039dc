"""The int8 ONNX export: torch.onnx, ORT's BERT fusions (layer norms left apart), then the quantisation
recipe of `onnx_quantize`, into two files (one for CPUs with int8 dot products, one for the others)
and the kernel probe that tells a process which to run.

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
from pathlib import Path

import numpy as np

from search.cache import cache_root
from search.embedding.onnx_quantize import EXPORT_SETTINGS, quantize, smooth
from search.embedding.onnx_runtime import OnnxEncoder, pairs_add_in_int16, write_kernel_probe
from search.embedding.spec import ModelSpec, UnsupportedModel, load_tokenizer, pool

# Bump when the export recipe changes, so cached exports are remade.
EXPORT_VERSION = 6
MODEL_FILE = "model.int8.onnx"
# the same model for CPUs whose u8 x s8 product pairs add in int16 (its own version in its name: a change
# to onnx_quantize's row recipe makes a new file, which exports made before gain), and the graph that asks
# which kind of CPU this is
ROWS_FILE = "model.int8-rows-2.onnx"
ROWS_LEFT_OUT = ROWS_FILE + ".left-out"  # says why, where the rows file failed its check: every CPU runs the block file
PROBE_FILE = "kernel-probe.onnx"  # written last
EXPORT_FILES = (MODEL_FILE, ROWS_FILE, ROWS_LEFT_OUT, PROBE_FILE)  # in the order they are moved in
# ORT's transformer optimizer fuses attention, GELU and layer norms for these encoder layouts.
_FUSABLE = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}
# Probe sentences checked after every export: different lengths exercise the dynamic axes.
_PROBES = ["序列并行沿序列维度切分输入。", "Knead the dough for ten minutes, then let it rise.", "番茄炒蛋", "a"]
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
    """The int8 ONNX file this CPU runs for this model, exporting it first if the cache lacks it.

    Raises UnsupportedModel when the model cannot be exported faithfully; the failure is
    remembered in the cache so later processes fall back at once.
    """
    folder = export_dir(spec)
    if (folder / MODEL_FILE).is_file():
        if not _is_complete(folder):
            _complete(spec, folder)
        return _file_for_this_cpu(folder)
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
    return _file_for_this_cpu(folder)


def _is_complete(folder: Path) -> bool:
    """Whether an export holds this version's files: the probe, and the rows file or why it is left out."""
    return (folder / PROBE_FILE).is_file() and ((folder / ROWS_FILE).is_file() or (folder / ROWS_LEFT_OUT).is_file())


def _complete(spec: ModelSpec, folder: Path) -> None:
    """Add the files an export made before them lacks (the probe, this version's rows file): the recipe
    runs again and only the missing files move in, each atomically, the probe last, and a rows file of an
    earlier version goes; the block file, and so every index's vectors, stay. A failure (a read-only
    cache) leaves the export as it was: every CPU runs its block file."""
    log.info("completing the int8 model of %s for CPUs without int8 dot products, once (kept in %s)", spec.name, folder.parent)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        _export(spec, staging)
        for name in EXPORT_FILES:
            if (staging / name).is_file() and not (folder / name).is_file():
                (staging / name).chmod(0o644)
                os.replace(staging / name, folder / name)
        for earlier in folder.glob("model.int8-rows-*"):
            if earlier.name not in EXPORT_FILES:
                earlier.unlink()
    except (UnsupportedModel, OSError) as error:
        log.warning("could not complete the int8 model of %s (%s): its block file runs on every CPU", spec.name, error)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _file_for_this_cpu(folder: Path) -> Path:
    """The export's file for the kernels this process's onnxruntime runs: ROWS_FILE where u8 x s8
    pairs add in int16 (the probe answers from the kernels themselves, so a VM moved to another host or
    a masked CPUID is seen as it is), MODEL_FILE elsewhere or when either is missing."""
    rows = folder / ROWS_FILE
    if rows.is_file() and pairs_add_in_int16(folder / PROBE_FILE):
        return rows
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
    quantize(smooth(source, smooth_file, spec) or source, staging / MODEL_FILE, staging / ROWS_FILE)
    for path in (float_file, fused_file, smooth_file):
        path.unlink(missing_ok=True)
    _check_against_torch(spec, model, staging / MODEL_FILE)
    try:
        if not (staging / ROWS_FILE).is_file():
            raise UnsupportedModel("this onnxruntime cannot run its integer products")
        _check_against_torch(spec, model, staging / ROWS_FILE)
    except UnsupportedModel as error:  # the block file runs on every CPU; only slower on some
        log.warning("int8 model of %s: the file for CPUs without int8 dot products is left out (%s)", spec.name, error)
        (staging / ROWS_FILE).unlink(missing_ok=True)
        (staging / ROWS_LEFT_OUT).write_text(f"{error}\n", encoding="utf-8")
    write_kernel_probe(staging / PROBE_FILE)
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
