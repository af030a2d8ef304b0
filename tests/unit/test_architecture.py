"""The import graph of the first-party packages: no cycles, layers point one way, and a
first-party import inside a function only where it defers a heavy third-party library.

Read from the source (ast), not by importing it: what it checks is the code as written.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "operators", "serving", "feature_repo", "plugins", "dags")

LAYERS: dict[str, int] = {
    "pipelines.core": 0,
    "pipelines.ml": 1,
    "pipelines.io": 2,
    "feature_repo": 2,
    "serving": 3,
    "pipelines.steps": 4,
    "operators": 5,
    "pipelines.local": 6,
    "pipelines.cli": 7,
    "plugins": 8,
    "dags": 8,
}
"""Lower layers never import higher ones: cli/local -> steps -> serving -> io/ml -> core."""

HEAVY = frozenset(
    {
        "airflow", "boto3", "docker", "evidently", "fastapi", "feast", "great_expectations", "kubernetes",
        "matplotlib", "mlflow", "onnx", "onnxruntime", "optuna", "pandas", "pandera", "pyarrow", "ray",
        "scipy", "sklearn", "torch", "numpy",
    }
)  # fmt: skip
"""Third-party libraries that take a noticeable time to import (measured: 0.2-7 s each), and numpy,
which the airflow image does not install (the CLI runs there: `mlcycle statsd-exporter`)."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool
    type_only: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((PROJECT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text())
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            tc = type_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                targets = [
                    f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in known else child.module
                    for a in child.names
                ]
            for t in targets:
                found.append(Import(name, t, child.lineno, in_function, type_only))
            visit(child, fn, tc)

    visit(tree, False, False)
    return found


def graph() -> tuple[dict[str, Path], list[Import]]:
    mods = modules()
    known = set(mods)
    edges = [i for name, path in mods.items() for i in _imports(name, path, known)]
    return mods, edges


def first_party(target: str, known: set[str]) -> str | None:
    """The first-party module an import names (`pipelines.core.spec.load_spec` -> `pipelines.core.spec`)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def layer(module: str) -> int | None:
    best = None
    for prefix, rank in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rank)
    return best[1] if best else None


def find_cycle(adjacency: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path that ends where it starts, or None. Pure."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(adjacency.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(adjacency):
        if node not in state and (found := dfs(node)):
            return found
    return None


def heavy_at_import(mods: dict[str, Path], edges: list[Import], libraries: frozenset[str] = HEAVY) -> set[str]:
    """The first-party modules whose import (their top-level imports, transitively) loads a heavy library."""
    known = set(mods)
    top: dict[str, set[str]] = {m: set() for m in mods}
    heavy = set()
    for e in edges:
        if e.in_function or e.type_only:
            continue
        if e.target.split(".")[0] in libraries:
            heavy.add(e.source)
        elif (fp := first_party(e.target, known)) and fp != e.source:
            top[e.source].add(fp)
    changed = True
    while changed:
        changed = False
        for m, deps in top.items():
            if m not in heavy and deps & heavy:
                heavy.add(m)
                changed = True
    return heavy


def _runtime_adjacency(mods: dict[str, Path], edges: list[Import]) -> dict[str, set[str]]:
    known = set(mods)
    adj: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges:
        fp = first_party(e.target, known)
        if fp and fp != e.source and not e.type_only:
            adj[e.source].add(fp)
    return adj


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles() -> None:
    mods, edges = graph()
    assert (cycle := find_cycle(_runtime_adjacency(mods, edges))) is None, " -> ".join(cycle or [])


def test_layers_point_downward() -> None:
    mods, edges = graph()
    known = set(mods)
    upward = []
    for e in edges:
        fp = first_party(e.target, known)
        if not fp or e.type_only:
            continue
        src, dst = layer(e.source), layer(fp)
        if src is not None and dst is not None and dst > src:
            upward.append(f"{e.source}:{e.line} imports {fp} (layer {dst} above {src})")
    assert not upward, "\n".join(upward)


def test_every_module_has_a_layer() -> None:
    mods, _ = graph()
    assert [m for m in mods if layer(m) is None and m not in PACKAGES and m != "pipelines"] == []


def test_function_level_first_party_imports_only_defer_heavy_libraries() -> None:
    mods, edges = graph()
    known = set(mods)
    heavy = heavy_at_import(mods, edges)
    needless = [
        f"{e.source}:{e.line} imports {fp} inside a function; import it at the top"
        for e in edges
        if e.in_function and not e.type_only and (fp := first_party(e.target, known)) and fp not in heavy
    ]
    assert not needless, "\n".join(needless)


def test_the_cli_imports_nothing_heavy_so_it_runs_in_every_image() -> None:
    """`mlcycle` is the entry point of every image, and each image installs only its role's
    libraries: a subcommand imports what it needs when it runs."""
    mods, edges = graph()
    known = set(mods)
    heavy = heavy_at_import(mods, edges)
    assert "pipelines.cli" not in heavy, sorted(
        fp
        for e in edges
        if e.source == "pipelines.cli" and not e.in_function and (fp := first_party(e.target, known)) in heavy
    )


def test_the_heavy_check_sees_a_real_heavy_module() -> None:
    mods, edges = graph()
    heavy = heavy_at_import(mods, edges)
    assert "serving.app" in heavy  # ray, fastapi at the top
    assert "pipelines.core.spec" not in heavy  # parsed by Airflow: pydantic and yaml only


@pytest.mark.parametrize("package", ["dags", "operators", "plugins"])
def test_modules_airflow_parses_import_nothing_heavy_of_ours(package: str) -> None:
    """Airflow imports these when it parses DAGs: our modules they load must not pull torch, ray..."""
    mods, edges = graph()
    known = set(mods)
    heavy = heavy_at_import(mods, edges, HEAVY - {"airflow"})
    bad = [
        f"{e.source}:{e.line} -> {fp}"
        for e in edges
        if e.source.startswith(package) and not e.in_function and (fp := first_party(e.target, known)) in heavy
    ]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------ sizes
SIZED = (*PACKAGES, "tools", "bench")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
LONG_FUNCTIONS: dict[str, str] = {
    "pipelines/core/pod.py:pod_manifest": "the pod manifest as one literal, in the shape Kubernetes reads it",
    "pipelines/core/spec/pipeline.py:cross_section_problems": "a flat list of independent checks, one a few lines",
    "pipelines/local/demo.py:run_drift_demo": "the drift demo's story told in order, each step printed as it runs",
    "pipelines/ml/datagen.py:generate_churn": "the generator's world written out, one feature after another",
    "pipelines/ml/model.py:build_module": "the torch module is a class defined inside it (torch is imported late)",
    "pipelines/ml/model.py:to_onnx": "the export wrapper is a class defined inside it (torch is imported late)",
    "pipelines/steps/drift.py:run": "a step's run: read, check, write the report, emit; each stage one call",
    "pipelines/steps/embed.py:run": "a step's run: open the space, fill it in batches, index, measure recall",
    "pipelines/steps/evaluate.py:run": "a step's run: score both models, compare, gate, write the report",
    "pipelines/steps/validate.py:run": "a step's run: schema, expectations, quarantine, verdict",
    "bench/embeddings.py:main": "a bench's main reads as the measurement's script",
    "bench/features.py:main": "a bench's main reads as the measurement's script",
    "bench/training.py:main": "a bench's main reads as the measurement's script",
}
"""The functions allowed over MAX_FUNCTION_LINES, each with its reason (`path:name`)."""


def sized_sources() -> list[Path]:
    return sorted(p for root in SIZED for p in (PROJECT / root).rglob("*.py") if ".mlcycle" not in p.parts)


def long_functions(path: Path) -> dict[str, int]:
    """`path:name` -> lines of every function longer than MAX_FUNCTION_LINES in a module. Pure."""
    rel = path.relative_to(PROJECT).as_posix()
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                out[f"{rel}:{node.name}"] = lines
    return out


def test_no_source_module_is_over_500_lines() -> None:
    long = {p.relative_to(PROJECT).as_posix(): n for p in sized_sources() if (n := len(p.read_text().splitlines()))}
    assert {p: n for p, n in long.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_is_over_60_lines_but_the_listed_ones() -> None:
    found: dict[str, int] = {}
    for path in sized_sources():
        found.update(long_functions(path))
    assert {f: n for f, n in found.items() if f not in LONG_FUNCTIONS} == {}
    assert sorted(set(LONG_FUNCTIONS) - set(found)) == []  # an exception that is no longer needed goes
