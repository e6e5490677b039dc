"""The package's shape: stages of the pipeline import only earlier stages, no import loops, small
modules, and the layers on top use only the public API of `search`."""

import ast
from pathlib import Path

import search

PACKAGE = Path(search.__file__).parent
# ingest -> text -> embedding -> index -> query, then the layers on top; the base modules (errors,
# schema, cache, the package itself) hold values every stage shares.
STAGES = {"base": 0, "ingest": 1, "text": 2, "embedding": 3, "index": 4, "query": 5, "top": 6}
BASE = {"search", "search.errors", "search.schema", "search.cache"}
TOP_LAYERS = ("cli", "cli_options", "watching", "evaluation", "server")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> int:
    if module in BASE:
        return STAGES["base"]
    part = module.split(".")[1]
    return STAGES["top"] if part in TOP_LAYERS else STAGES[part]


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `path` imports anywhere (functions included), as a set of names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from search.embedding import onnx_export` imports the submodule
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def test_every_import_points_to_the_same_or_an_earlier_stage():
    backward = [f"{module} -> {target}" for module, targets in graph().items() for target in targets
                if stage_of(target) > stage_of(module)]
    assert backward == []


def test_there_is_no_import_loop():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                loops.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert loops == []


def test_the_layers_on_top_use_only_the_public_api():
    public = set(search.__all__)
    layers = [PACKAGE / f"{name}.py" for name in ("cli", "watching", "evaluation")] + sorted((PACKAGE / "server").glob("*.py"))
    for layer in layers:
        tree = ast.parse(layer.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("search"):
                if node.module == "search":
                    assert {alias.name for alias in node.names} <= public, (layer, [a.name for a in node.names])
                else:  # another layer on top, never a stage's internals
                    assert node.module.split(".")[1] in TOP_LAYERS, (layer, node.module)
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("search.") for alias in node.names), layer


def test_public_names_resolve():
    for name in search.__all__:
        assert getattr(search, name) is not None, name


def test_modules_stay_small():
    sizes = {module_name(path): len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}
