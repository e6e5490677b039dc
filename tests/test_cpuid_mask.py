"""The CPUID shim behind `make test-avx2` (benchmarks/cpuid_mask.c): where the CPU can trap CPUID it hides
the newer classes' features, and where it cannot it stops the command in one line instead of letting it
run, unmasked, as the native class."""

import ast
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READ_FEATURES = "import sys; sys.path.insert(0, 'benchmarks'); from cpu_classes import cpuid_features; print(cpuid_features())"

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith("linux"),
                                reason="the shim is for x86-64 Linux")


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the shim")
    library = tmp_path_factory.mktemp("shim") / "cpuid_mask.so"
    # unmasked: under `make test-avx2` this process runs with the shim preloaded, and cc1 installs its own
    # SIGSEGV handler over the shim's, so the first trapped CPUID kills the compiler
    unmasked = {name: value for name, value in os.environ.items() if name not in ("LD_PRELOAD", "CPUID_MASK")}
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(ROOT / "benchmarks" / "cpuid_mask.c")],
                   check=True, env=unmasked)
    return library


def _features(shim: Path, mask: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(shim)} | ({"CPUID_MASK": mask} if mask else {})
    return subprocess.run([sys.executable, "-c", READ_FEATURES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_without_a_mask_the_shim_changes_nothing(shim):
    # a clean environment: under `make test-avx2` this process itself runs masked
    native = subprocess.run([sys.executable, "-c", READ_FEATURES], cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    preloaded = _features(shim, None)
    assert preloaded.returncode == 0, preloaded.stderr
    assert preloaded.stdout == native.stdout


def test_the_avx2_mask_hides_avx512_and_vnni_or_stops_in_one_line(shim):
    run = _features(shim, "avx2")
    if "cpuid_fault" in Path("/proc/cpuinfo").read_text().split():
        assert run.returncode == 0, run.stderr
        features = ast.literal_eval(run.stdout)
        assert features["avx2"] and not features["avx512f"] and not features["avx512_vnni"] and not features["avx_vnni"]
    else:
        assert run.returncode == 2 and run.stdout == ""
        assert run.stderr.count("\n") == 1 and "cannot trap CPUID" in run.stderr and "cpuid_fault" in run.stderr
