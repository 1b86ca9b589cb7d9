"""The structure of docs/architecture.md, enforced: which part of ownlm may import which,
no import cycle, and a CLI that answers --help without loading torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ownlm

SRC = Path(ownlm.__file__).parent

# part -> the parts it may import (besides itself and the bare `ownlm` package).
# Data flows one way: data -> knowledge -> backbone/adapters/store -> run -> the generic
# training machinery -> the methods (OPPU, PROPER: neither imports the other) ->
# ownership, pipeline, evaluate, serve -> studies -> CLI. Keep in step with
# docs/architecture.md.
FOUNDATION = {"errors", "config", "log", "files", "safe_yaml", "dirswap", "variants", "paths"}
BELOW_RUN = {"adapters", "backbone", "data", "retrieval", "store", "scores"}
METHODS = {"oppu", "proper"}
MAY_IMPORT = {
    "errors": set(),
    "log": set(),
    "files": set(),
    "paths": set(),
    "variants": {"errors"},
    "safe_yaml": {"errors"},
    "dirswap": {"files"},
    "config": {"errors", "safe_yaml", "log"},
    "data": {"errors", "log", "safe_yaml", "files", "paths"},
    "scores": {"data", "errors", "log"},
    "retrieval": {"data", "errors", "log"},
    "backbone": {"retrieval", "data"} | FOUNDATION,
    "adapters": FOUNDATION,
    "store": FOUNDATION,
    "run": {"backbone", "data", "store"} | FOUNDATION,
    "train": BELOW_RUN | {"run"} | FOUNDATION,  # the generic machinery: no method
    "oppu": BELOW_RUN | {"run", "train"} | FOUNDATION,
    "proper": BELOW_RUN | {"run", "train"} | FOUNDATION,
    "ownership": BELOW_RUN | {"run"} | METHODS | FOUNDATION,
    "pipeline": BELOW_RUN | {"run", "train"} | METHODS | FOUNDATION,
    "evaluate": BELOW_RUN | {"run"} | METHODS | FOUNDATION,
    "serve": BELOW_RUN - {"scores"} | {"run", "proper"} | FOUNDATION,  # stored models only
    "testing": {"adapters", "backbone", "store"} | FOUNDATION,
    "studies": BELOW_RUN | {"run", "train", "pipeline", "evaluate"} | METHODS | FOUNDATION,
    "cli": set(),  # the CLI may import every part: it is the last in line
}
# Modules that only read what training stored (evaluation and serving never train):
# nothing they import, directly or through others, may be a module of `train/` or a
# method's training module.
NEVER_TRAIN = ("evaluate", "serve", "ownership")
HEAVY = ("torch", "transformers", "peft", "sentence_transformers", "bm25s", "sklearn")


def _module(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["ownlm", *parts])


def _typing_only(tree: ast.Module) -> set[int]:
    """The import nodes under `if TYPE_CHECKING:` (annotations only: never run)."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported ownlm module, at module level?) for every import in the file, lazy too;
    not those under `if TYPE_CHECKING:`, which only annotations read."""
    tree = ast.parse(path.read_text())
    top, typing_only = {id(n) for n in tree.body}, _typing_only(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out += [(n, id(node) in top) for n in names if n == "ownlm" or n.startswith("ownlm.")]
    return out


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "ownlm"


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported, _ in _imports(path):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]  # `from pkg.mod import name`
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_every_part_is_known_to_the_rules():
    unknown = {_part(m) for m in _graph()} - {"ownlm"} - set(MAY_IMPORT)
    assert not unknown, f"add {unknown} to MAY_IMPORT and docs/architecture.md"


def test_parts_import_only_what_the_architecture_allows():
    wrong = []
    for module, targets in _graph().items():
        src = _part(module)
        if src in ("cli", "ownlm"):
            continue
        for target in targets:
            dst = _part(target)
            if dst not in (src, "ownlm") and dst not in MAY_IMPORT[src]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_settings_and_cli_load_no_heavy_library():
    """`ownlm --help` must answer at once: the CLI and every settings class import no torch
    (measured: under 0.5 s, against 5-11 s when they did)."""
    code = f"import sys, ownlm.cli, ownlm.config;print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_module_level_imports_of_config_are_light():
    for path in sorted((SRC / "config").glob("*.py")):
        for imported, top in _imports(path):
            light = ("ownlm.errors", "ownlm.safe_yaml", "ownlm.config", "ownlm.log")
            assert imported.startswith(light) or not top, f"{path.name} imports {imported}"


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_evaluation_serving_and_ownership_never_reach_training():
    """`evaluate`, `serve` and `ownership` load what the methods stored; no chain of
    imports from them reaches `ownlm.train` (the loop, the stages) or a method's stage."""
    graph = _graph()
    wrong = []
    for module in graph:
        if _part(module) in NEVER_TRAIN:
            trains = sorted(m for m in _reach(graph, module) if _part(m) == "train")
            wrong += [f"{module} -> ... -> {t}" for t in trains[:1]]
    assert not wrong, "reads that train:\n" + "\n".join(sorted(wrong))


def test_each_method_has_one_home_and_neither_imports_the_other():
    graph = _graph()
    for module, targets in graph.items():
        if _part(module) in METHODS:
            others = {_part(t) for t in targets} & (METHODS - {_part(module)})
            assert not others, f"{module} imports {others}: the methods stand side by side"


def test_every_run_parameter_is_typed():
    """A parameter called `run` is a `Run` and says so (under TYPE_CHECKING below run)."""
    untyped = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
                    if arg.arg == "run" and arg.annotation is None:
                        untyped.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not untyped, "untyped `run` parameters:\n" + "\n".join(sorted(untyped))
