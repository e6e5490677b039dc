"""Is the int8 ONNX export right on this CPU? Fidelity of int8 against float32 torch, per CPU class.

Usage: python benchmarks/cpu_classes.py [--passages 200] [--reference FILE | --save-reference FILE]
                                        [--model-file NAME=PATH]... [--emulate avx2|avx512] [--no-models] [--timing]

It prints what the CPU offers as ONNX Runtime sees it (CPUID, not /proc/cpuinfo, which an emulator
or a masked CPUID does not change), then two checks:

- kernels: tiny graphs with worst-case operands for each integer operator the export uses. x86-64
  CPUs without VNNI multiply u8 x s8 with vpmaddubsw, which adds pairs of products into saturating
  16-bit integers: full-range 8-bit weights (2*255*127) overflow, 7-bit ones (2*255*64 = 32640) do not.
- models: cosine of each model's int8 vectors to sentence-transformers float32 on real passages of
  ../shared/eval (min, 1st percentile, mean).

Other CPU classes, on an x86-64 Linux machine:
  qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/cpu_classes.py --reference ref.npz   (AVX2, no VNNI)
  python benchmarks/cpu_classes.py --emulate avx2     (native speed; needs the cpuid_fault CPU flag and cc)
  python benchmarks/cpu_classes.py --emulate avx512   (AVX-512 without VNNI, which QEMU cannot emulate)
Under QEMU, torch is slow: write the float32 vectors natively first (--save-reference ref.npz) and make
the export natively too (the cache in ~/.cache/search/onnx, or SEARCH_CACHE, is shared).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"
SETS = {"m3e-small": ["cmedqq", "cmrc2018"], "all-MiniLM-L6-v2": ["scifact"]}

# ----- what the CPU offers -----------------------------------------------------------------------

# (leaf, subleaf, register index EAX=0 EBX=1 ECX=2 EDX=3, bit)
X86_FEATURES = {
    "avx2": (7, 0, 1, 5), "avx512f": (7, 0, 1, 16), "avx512bw": (7, 0, 1, 30), "avx512_vnni": (7, 0, 2, 11),
    "avx_vnni": (7, 1, 0, 4), "amx_int8": (7, 0, 3, 25),
}
# push rbx; mov r8,rdx; mov eax,edi; mov ecx,esi; cpuid; mov [r8],eax; mov [r8+4],ebx; mov [r8+8],ecx;
# mov [r8+12],edx; pop rbx; ret   (System V: cpuid(leaf, subleaf, uint32_t out[4]))
_CPUID_CODE = bytes.fromhex("53 4989d0 89f8 89f1 0fa2 418900 41895804 41894808 4189500c 5b c3")


def cpuid_features() -> dict[str, bool] | None:
    """x86-64 feature bits straight from CPUID (what MLAS dispatches on), or None elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64") or os.name != "posix":
        return None
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CPUID_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)
    out = (ctypes.c_uint32 * 4)()

    def call(leaf: int, sub: int = 0) -> list[int]:
        function(leaf, sub, out)
        return list(out)

    top = call(0)[0]
    features = {}
    for name, (leaf, sub, register, bit) in X86_FEATURES.items():
        features[name] = leaf <= top and (sub == 0 or call(7, 0)[0] >= sub) and bool(call(leaf, sub)[register] >> bit & 1)
    brand = b""
    if call(0x80000000)[0] >= 0x80000004:
        brand = b"".join(b"".join(v.to_bytes(4, "little") for v in call(leaf)) for leaf in range(0x80000002, 0x80000005))
    features["brand"] = brand.rstrip(b"\0").decode(errors="replace").strip() or "?"
    del function
    return features


def proc_cpuinfo_flags() -> list[str]:
    """What the kernel says (under qemu-user these are the host's flags, not the emulated CPU's)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve"}
    return sorted({word for word in text.split() if word in wanted})


def cpu_class(features: dict[str, bool] | None) -> str:
    if features is None:
        machine = platform.machine()
        flags = proc_cpuinfo_flags()
        return f"{machine} ({'dot product' if 'asimddp' in flags else 'no dot product'}{', i8mm' if 'i8mm' in flags else ''})"
    vnni = features["avx512_vnni"] or features["avx_vnni"] or features["amx_int8"]
    if features["avx512f"]:
        kind = "AVX-512" + (" VNNI" if features["avx512_vnni"] else " without VNNI")
    elif features["avx2"]:
        kind = "AVX2" + (" + AVX-VNNI" if features["avx_vnni"] else " without VNNI")
    else:
        kind = "pre-AVX2"
    how = "u8xs8 through int32 dot products" if vnni else "u8xs8 pairs summed in saturating int16 (vpmaddubsw)"
    return f"x86-64 {kind}{', AMX' if features['amx_int8'] else ''}: {how}"


def report_cpu() -> None:
    import onnxruntime

    features = cpuid_features()
    print(f"machine      {platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")
    if features is not None:
        print(f"cpu          {features['brand']}")
        print(f"cpuid        {' '.join(name for name in X86_FEATURES if features[name]) or '(none of ' + ', '.join(X86_FEATURES) + ')'}")
    print(f"/proc/cpuinfo {' '.join(proc_cpuinfo_flags()) or '-'}" + ("   (the host's under qemu-user or a masked CPUID)" if features else ""))
    print(f"class        {cpu_class(features)}")
    if emulation():
        print(f"emulated     {emulation()}")


def emulation() -> str:
    """How this run imitates another CPU class, if it does: a masked CPUID, or libraries switched to AVX2."""
    notes = []
    if os.environ.get("CPUID_MASK"):
        notes.append(f"CPUID masked to {os.environ['CPUID_MASK']} (benchmarks/cpuid_mask.c)")
    if os.environ.get("SEARCH_AVX2_LIBRARIES"):
        notes.append("libraries switched to AVX2 (benchmarks/avx2_libraries.py)")
    return "; ".join(notes)


# ----- kernels: worst-case operands for each integer operator of the export ------------------------


def _session(graph, opsets, threads: int = 1):
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def matmul_integer_error(rows: int, weight_max: int, k: int = 384, n: int = 64, activation_max: int = 255) -> float:
    """Relative error of MatMulInteger (u8 activations up to activation_max, s8 weights of |q| <= weight_max)
    against exact integer arithmetic, with large activations and same-sign weight pairs (the saturating case)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.integers(activation_max * 4 // 5, activation_max + 1, size=(rows, k)).astype(np.uint8)
    b = rng.integers(weight_max // 2, weight_max + 1, size=(k, n)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B", "zero"], ["Y"])], "probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, k])], [helper.make_tensor_value_info("Y", TensorProto.INT32, None)],
        [numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.array(0, np.uint8), "zero")])
    got = _session(graph, [("", 17)]).run(None, {"A": a})[0].astype(np.int64)
    want = a.astype(np.int64) @ b.astype(np.int64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def matmul_nbits_error(rows: int, k: int = 1536, n: int = 64, block: int = 128) -> float:
    """Relative error of 8-bit MatMulNBits at accuracy level 4 (int8 activations per block) against
    float, with weights at the ends of their range and signed like the activations (the worst case)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = (rng.choice([-1.0, 1.0], size=(rows, k)) * rng.uniform(0.9, 1.0, size=(rows, k))).astype(np.float32)
    signs = np.sign(a[0]).reshape(k // block, block)
    q = np.broadcast_to(128 + signs * 127, (n, k // block, block)).astype(np.uint8)
    scales = np.full(n * (k // block), 0.01, np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=k, N=n, bits=8,
                            block_size=block, accuracy_level=4)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(q, "B"), numpy_helper.from_array(scales, "scales")])
    got = _session(graph, [("", 17), ("com.microsoft", 1)]).run(None, {"A": a})[0]
    want = a @ ((q.astype(np.float32) - 128) * 0.01).reshape(n, k).T
    return float(np.abs(got - want).max() / np.abs(want).max())


def export_file_here() -> str:
    """Which file of the int8 export this process's onnxruntime runs, and why (its kernel probe)."""
    from search.embedding.onnx_export import MODEL_FILE, ROWS_FILE
    from search.embedding.onnx_runtime import pairs_add_in_int16, write_kernel_probe

    with tempfile.TemporaryDirectory() as folder:
        write_kernel_probe(Path(folder) / "probe.onnx")
        in_int16 = pairs_add_in_int16(Path(folder) / "probe.onnx")
    return f"{ROWS_FILE if in_int16 else MODEL_FILE} (u8 x s8 pairs add in {'saturating int16' if in_int16 else 'int32'}, says the kernel probe)"


def report_kernels() -> None:
    from search.embedding.onnx_quantize import ROWS_ACTIVATION_MAX

    print("\nkernels (relative error against exact arithmetic; saturation shows as > 0.01)")
    for rows in (1, 33):
        full, seven, nbits = matmul_integer_error(rows, 127), matmul_integer_error(rows, 64), matmul_nbits_error(rows)
        row_file = matmul_integer_error(rows, 127, activation_max=ROWS_ACTIVATION_MAX)
        print(f"  {rows:>2} rows  MatMulInteger u8 x s8, 8-bit weights (|q|<=127) {full:.4f}   7-bit weights (|q|<=64) {seven:.4f}"
              f"   0..{ROWS_ACTIVATION_MAX} x 8-bit (rows file) {row_file:.4f}   MatMulNBits 8-bit acc4 {nbits:.4f}")
    print(f"  the export file this CPU runs: {export_file_here()}")


def report_timing(rows: int = 1024, k: int = 1536, n: int = 384, runs: int = 30) -> None:
    """How long one FFN down-projection takes each way the export could run it, on this CPU's kernels
    (one session of two threads, median of `runs`): what chose the rows file where pairs add in int16."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    activations = np.abs(rng.standard_normal((rows, k))).astype(np.float32)
    blocks = np.full((n, k // 128, 128), 128 + 64, np.uint8)  # timing only: the values do not matter
    variants = {
        "float32 MatMul": ([helper.make_node("MatMul", ["A", "W"], ["Y"])], [numpy_helper.from_array(weight, "W")]),
        "u8 x s8 DynamicQuantizeMatMul": ([helper.make_node("DynamicQuantizeMatMul", ["A", "W", "s"], ["Y"], domain="com.microsoft")],
                                          [numpy_helper.from_array(np.ones((k, n), np.int8), "W"), numpy_helper.from_array(np.array([0.01], np.float32), "s")]),
        "MatMulNBits 8-bit, blocks of 128, acc 4": (
            [helper.make_node("MatMulNBits", ["A", "W", "s"], ["Y"], domain="com.microsoft", K=k, N=n, bits=8, block_size=128, accuracy_level=4)],
            [numpy_helper.from_array(blocks, "W"), numpy_helper.from_array(np.full(n * k // 128, 0.01, np.float32), "s")]),
    }
    print(f"\ntiming: one {rows} x {k} -> {n} product (an FFN down-projection), median of {runs}")
    for name, (nodes, weights) in variants.items():
        session = _product_session(nodes, weights, k, threads=2)
        times = _run_times(lambda: session.run(None, {"A": activations}), runs)
        print(f"  {name:<42} {np.median(times) * 1000:6.2f} ms")


def _product_session(nodes: list, weights: list, k: int, threads: int):
    """A session of one product graph: float32 activations A (rows x k) in, float32 Y out."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "product", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], weights)
    return _session(graph, [("", 17), ("com.microsoft", 1)], threads=threads)


def _run_times(run, runs: int) -> list[float]:
    """Seconds of each of `runs` calls of `run`, after one call that warms it up."""
    import time

    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def product_rates(rows: int = 1024, k: int = 512, n: int = 2048, runs: int = 15) -> dict[str, float]:
    """Multiply-adds per second of one core on one large product (an M3E-small FFN up-projection's
    shape), each way it can run here: u8 x s8 int8 as the export runs it (onnxruntime), float32 as the
    baseline does (torch) and as onnxruntime does. Best of `runs`. Their quotient is the ceiling of the
    int8 encoder's speed-up over float32 on this CPU: with VNNI an int8 instruction does four
    multiply-adds per 32-bit lane; without it (AVX2) vpmaddubsw + vpmaddwd do two, and the int8 products
    run about 2x float32, not 4x."""
    import torch
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    activations = np.abs(rng.standard_normal((rows, k))).astype(np.float32)
    weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    int8_weight = rng.integers(-64, 65, (k, n)).astype(np.int8)  # 7-bit, as the export's
    int8 = _product_session([helper.make_node("DynamicQuantizeMatMul", ["A", "W", "s"], ["Y"], domain="com.microsoft")],
                            [numpy_helper.from_array(int8_weight, "W"), numpy_helper.from_array(np.array([0.01], np.float32), "s")], k, threads=1)
    float32 = _product_session([helper.make_node("MatMul", ["A", "W"], ["Y"])], [numpy_helper.from_array(weight, "W")], k, threads=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch_a, torch_w = torch.from_numpy(activations), torch.from_numpy(weight)
    ways = {"int8 (onnxruntime u8 x s8)": lambda: int8.run(None, {"A": activations}),
            "float32 (torch)": lambda: torch.mm(torch_a, torch_w),
            "float32 (onnxruntime)": lambda: float32.run(None, {"A": activations})}
    try:
        return {name: rows * k * n / min(_run_times(run, runs)) / 1e9 for name, run in ways.items()}
    finally:
        torch.set_num_threads(threads)


def report_product_rates() -> None:
    rates = product_rates()
    print("\nproducts on one core (1024 x 512 -> 2048, best of 15), billions of multiply-adds a second:")
    for name, rate in rates.items():
        print(f"  {name:<30} {rate:7.1f}")
    print(f"  int8 / float32 (torch): {rates['int8 (onnxruntime u8 x s8)'] / rates['float32 (torch)']:.2f}x")


# ----- models ------------------------------------------------------------------------------------


def passages(set_name: str, model: str, count: int) -> list[str]:
    """Passages as an index embeds them (chunked, titled) from the start of a ../shared/eval corpus."""
    from search import BuildConfig
    from search.embedding.spec import token_counter
    from search.evaluation import load_collection
    from search.text.chunking import chunk_document
    from search.text.passages import contextual_text

    config, counter, out = BuildConfig(), token_counter(model), []
    for document in load_collection(EVAL / set_name).documents():
        out += [contextual_text(p) for p in chunk_document(document, counter, config.max_tokens, config.overlap_tokens)]
        if len(out) >= count:
            break
    return out[:count]


def report_models(args: argparse.Namespace) -> None:
    from search.embedding.onnx_export import ensure_export
    from search.embedding.onnx_runtime import OnnxEncoder
    from search.embedding.spec import model_spec

    files = dict(item.split("=", 1) for item in args.model_file)
    reference = dict(np.load(args.reference)) if args.reference else {}
    saved = {}
    print(f"\nmodels (cosine of int8 to float32 sentence-transformers, {args.passages} passages per set)")
    for model, set_names in SETS.items():
        set_names = [name for name in set_names if not args.sets or name in args.sets.split(",")]
        if not set_names:
            continue
        spec = model_spec(model)
        path = Path(files[model]) if model in files else ensure_export(spec)
        settings = path.parent / "export.json"
        recipe = json.loads(settings.read_text()) if settings.is_file() else {}
        encoder = OnnxEncoder(spec, path)
        print(f"  {model}: {path}" + (f"  (weights {recipe.get('weights')}, reduce_range {recipe.get('reduce_range', False)})" if recipe else ""))
        for set_name in set_names:
            if not (EVAL / set_name).is_dir():
                print(f"    {set_name:<10} ../shared/eval/{set_name} is absent")
                continue
            texts = passages(set_name, model, args.passages)
            key = f"{model}/{set_name}/{len(texts)}"
            if key in reference:
                want = reference[key]
            else:
                from search.embedding.encoder import SentenceTransformerEncoder

                want = SentenceTransformerEncoder(model, "cpu").encode(texts, batch_size=32)
            saved[key] = want
            got = encoder.encode(texts)
            cosines = (got * want).sum(axis=1)
            print(f"    {set_name:<10} min {cosines.min():.4f}  p1 {np.percentile(cosines, 1):.4f}  mean {cosines.mean():.4f}"
                  f"  ({len(texts)} passages)")
    if args.save_reference:
        np.savez(args.save_reference, **saved)
        print(f"float32 vectors written to {args.save_reference}")


def emulate(mask: str) -> None:
    """Re-run this script with CPUID masked to an older class (see benchmarks/cpuid_mask.c)."""
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text():
        sys.exit("--emulate needs an x86-64 Linux CPU with the cpuid_fault flag; use qemu-x86_64 -cpu Haswell instead")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("--emulate needs a C compiler (cc)")
    library = Path(tempfile.mkdtemp(prefix="cpuid-mask-")) / "cpuid_mask.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(Path(__file__).with_name("cpuid_mask.c"))], check=True)
    argv = [a for a in sys.argv if a != "--emulate" and a != mask and not a.startswith("--emulate=")]
    env = {**os.environ, "CPUID_MASK": mask, "LD_PRELOAD": f"{library} {os.environ.get('LD_PRELOAD', '')}".strip()}
    os.execve(sys.executable, [sys.executable, *argv], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=200, help="passages per evaluation set")
    parser.add_argument("--reference", help="float32 vectors saved by --save-reference (skips torch: use under QEMU)")
    parser.add_argument("--save-reference", help="write the float32 vectors here")
    parser.add_argument("--model-file", action="append", default=[], metavar="NAME=PATH", help="an int8 .onnx file to check instead of the current export")
    parser.add_argument("--emulate", choices=["avx2", "avx512"], help="mask CPUID to an older x86-64 class and run natively")
    parser.add_argument("--sets", help="comma-separated evaluation sets to use (default: cmedqq,cmrc2018 for M3E-small, scifact for MiniLM)")
    parser.add_argument("--no-models", action="store_true", help="only the CPU and kernel checks (seconds)")
    parser.add_argument("--timing", action="store_true", help="also time one down-projection each way the export could run it, and the int8 and float32 product rates")
    args = parser.parse_args()
    if args.emulate:
        emulate(args.emulate)
    report_cpu()
    report_kernels()
    if args.timing:
        report_timing()
        report_product_rates()
    if not args.no_models:
        report_models(args)


if __name__ == "__main__":
    main()
