"""Run a command with each library's kernels at the AVX2 class, on an x86-64 CPU without `cpuid_fault`.

Usage: python benchmarks/avx2_libraries.py [--check] -- COMMAND [ARG...]

`benchmarks/cpuid_mask.c` masks CPUID itself, which needs the `cpuid_fault` flag (Intel); many VMs
(the AMD EPYC ones this project meets) lack it. Without it, each library is switched by its own means:

- ONNX Runtime (the int8 kernels that matter here) has no switch. MLAS enables AVX-512 kernels only when
  XGETBV says the OS saves the AVX-512 state, so a copy of the package is made whose XGETBV instructions
  (found by objdump's disassembly, not by byte search) answer x87 + SSE + AVX state only: `push 7; pop rax`,
  three bytes like XGETBV itself. The copy lives in .venv/avx2-libraries/ and goes first on PYTHONPATH.
  A CPU with AVX-VNNI (VEX-encoded, no AVX-512 state needed) would keep its dot products: the check below
  refuses it.
- torch: ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS; numpy: NPY_DISABLE_CPU_FEATURES;
  OpenBLAS (numpy's and scipy's): OPENBLAS_CORETYPE=Haswell; pyarrow: ARROW_USER_SIMD_LEVEL; FAISS: its
  dynamic dispatch set to AVX2 as it is imported (a sitecustomize in the same folder).

Before the command runs, the kernel check must show what an AVX2 CPU computes: u8 x s8 pairs that
saturate int16 with 8-bit weights (benchmarks/cpu_classes.py). Libraries with their own CPUID dispatch
and no switch (the Rust tokenizers, Qdrant Edge) still use what the CPU has; none of them does int8 math.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / ".venv" / "avx2-libraries"
XGETBV = bytes.fromhex("0f01d0")
STATE_WITHOUT_AVX512 = bytes.fromhex("6a0758")  # push 7; pop rax: XCR0 = x87 | SSE | AVX
SWITCHES = {
    "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Haswell",
    "ARROW_USER_SIMD_LEVEL": "AVX2", "SEARCH_AVX2_LIBRARIES": "1",
}
FAISS_AT_AVX2 = '''"""Written by benchmarks/avx2_libraries.py: FAISS's dynamic dispatch at AVX2 from its import on."""
import importlib.abc, importlib.util, sys


class _FaissAtAvx2(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name != "faiss":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("faiss")
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.SIMDConfig.set_level(module.SIMDLevel_AVX2)


sys.meta_path.insert(0, _FaissAtAvx2())
'''


def xgetbv_offsets(library: Path) -> list[int]:
    """File offsets of every XGETBV instruction in the library's executable sections."""
    sections = subprocess.run(["objdump", "-h", "-w", str(library)], capture_output=True, text=True, check=True).stdout
    text = {}  # section name -> (address, file offset)
    for line in sections.splitlines():
        parts = line.split()
        if len(parts) > 6 and parts[0].isdigit() and "CODE" in line:
            text[parts[1]] = (int(parts[3], 16), int(parts[5], 16))
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True, check=True).stdout
    offsets, section = [], None
    for line in listing.splitlines():
        if line.startswith("Disassembly of section "):
            section = line.split()[-1].rstrip(":")
        elif line.rstrip().endswith("xgetbv") and section in text:
            address, start = text[section]
            offsets.append(int(line.split(":")[0], 16) - address + start)
    return offsets


def build_overlay() -> Path:
    """The patched copy of onnxruntime (once per installed version) and FAISS's sitecustomize."""
    import onnxruntime

    source = Path(onnxruntime.__file__).parent
    stamp = OVERLAY / f"onnxruntime-{onnxruntime.__version__}.patched"
    if stamp.is_file():
        return OVERLAY
    shutil.rmtree(OVERLAY, ignore_errors=True)
    OVERLAY.mkdir(parents=True)
    shutil.copytree(source, OVERLAY / "onnxruntime")
    patched = 0
    for library in (OVERLAY / "onnxruntime" / "capi").glob("onnxruntime_pybind11_state*.so"):
        data = bytearray(library.read_bytes())
        for offset in xgetbv_offsets(library):
            if data[offset:offset + 3] != XGETBV:
                sys.exit(f"{library.name}: no XGETBV at {offset:#x}; this onnxruntime cannot be switched here")
            data[offset:offset + 3] = STATE_WITHOUT_AVX512
            patched += 1
        library.write_bytes(bytes(data))
    if patched == 0:
        sys.exit("found no XGETBV in onnxruntime: it cannot be switched to AVX2 this way")
    (OVERLAY / "sitecustomize.py").write_text(FAISS_AT_AVX2)
    stamp.write_text(f"{patched} XGETBV instructions answer x87 | SSE | AVX state\n")
    return OVERLAY


def environment(overlay: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(overlay), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **SWITCHES, "PYTHONPATH": path}


def check(env: dict[str, str]) -> None:
    """Refuse unless the kernels compute as an AVX2 CPU's do: 8-bit weights saturate, 7-bit ones do not."""
    probe = ("import sys; sys.path.insert(0, 'benchmarks'); import cpu_classes as c; "
             "print(c.matmul_integer_error(33, 127), c.matmul_integer_error(33, 64))")
    full, seven = map(float, subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                                            check=True).stdout.split())
    if full < 0.01 or seven != 0:
        sys.exit(f"the kernels do not compute as an AVX2 CPU's (8-bit weights error {full:.4f}, 7-bit {seven:.4f}): "
                 "this CPU has int8 dot products without AVX-512 state (AVX-VNNI); use a CPU with cpuid_fault")


def main() -> None:
    args = sys.argv[1:]
    if "--" not in args or args.index("--") == len(args) - 1:
        sys.exit("usage: python benchmarks/avx2_libraries.py -- COMMAND [ARG...]")
    command = args[args.index("--") + 1:]
    if shutil.which("objdump") is None:
        sys.exit("avx2_libraries.py needs objdump (Debian: apt-get install binutils)")
    env = environment(build_overlay())
    check(env)
    print("libraries at AVX2: onnxruntime patched (XGETBV), torch, numpy, OpenBLAS, pyarrow and FAISS switched", file=sys.stderr)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
