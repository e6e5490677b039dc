import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled models must never need the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_report_header(config: pytest.Config) -> str:
    """The CPU class the int8 kernels dispatch on, read from CPUID as ONNX Runtime reads it (so a run
    under `make test-avx2`, whose CPUID is masked, says so), and the flags /proc/cpuinfo lists."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cpu_classes import cpu_class, cpuid_features, emulation, proc_cpuinfo_flags

    emulated = f" ({emulation()})" if emulation() else ""
    return f"cpu: {cpu_class(cpuid_features())}{emulated}; /proc/cpuinfo: {' '.join(proc_cpuinfo_flags()) or '-'}"


@pytest.fixture(scope="session")
def seeds_dir() -> Path:
    folder = SHARED / "seeds"
    if not folder.is_dir():
        pytest.skip("../shared/seeds is not present")
    return folder


@pytest.fixture(scope="session")
def one_language(tmp_path_factory):
    """An English-only and a Chinese-only index of tests/bilingual_notes.py, opened with the default
    configuration (built once for the cross-lingual and the re-read tests)."""
    from bilingual_notes import one_language_engines

    with one_language_engines(tmp_path_factory) as engines:
        yield engines


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    folder = SHARED / "eval"
    if not folder.is_dir():
        pytest.skip("../shared/eval is not present")
    return folder


def write_notes(folder: Path) -> Path:
    """A small mixed Chinese/English corpus written for the tests."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "并行.md").write_text(
        "---\ntitle: 并行训练\ntags: [机器学习]\n---\n\n# 并行训练\n\n## 序列并行\n\n"
        "序列并行沿序列维度切分输入，DeepSpeed-Ulysses 使用 all-to-all 通信交换注意力头。\n\n"
        "## 数据并行\n\n每张卡保存完整模型副本，用 all-reduce 同步梯度。ZeRO-3 进一步切分参数。\n",
        encoding="utf-8",
    )
    (folder / "cooking.md").write_text(
        "# Cooking\n\n## Bread\n\nKnead the dough for ten minutes, let it rise until doubled, then bake it in a hot oven.\n\n"
        "## Tea\n\nSteep green tea in water below boiling for two minutes so it does not turn bitter.\n",
        encoding="utf-8",
    )
    (folder / "菜谱.txt").write_text("番茄炒蛋\n\n鸡蛋打散，番茄切块，先炒蛋再炒番茄。\n", encoding="utf-8")
    return folder
