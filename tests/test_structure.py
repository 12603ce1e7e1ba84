"""The shape of the code, checked from its own imports: layers import one way (flows -> tasks ->
bincount), the library never imports Prefect, no import cycle, no module past 400 lines, and each
pipeline step has one implementation: the library's, which tasks wrap and flows compose."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _sources(*folders: str) -> dict[str, Path]:
    return {_module(p): p for f in folders for p in sorted((REPO / f).rglob("*.py"))}


def _imports(path: Path, *, typing: bool = False) -> set[str]:
    """Every module a file imports, at import time or lazily in a function; for type checking
    alone (under ``if TYPE_CHECKING:``) only with ``typing``. Relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guards = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
    ]
    typing_only = set() if typing else {id(inner) for node in guards for inner in ast.walk(node)}
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


LIBRARY = _sources("bincount")


def _library_graph() -> dict[str, set[str]]:
    """Which library modules each library module knows: a type hint's import is knowing too."""
    graph = {}
    for name, path in LIBRARY.items():
        graph[name] = {m for m in _imports(path, typing=True) if m in LIBRARY and m != name}
    return graph


def test_the_library_never_imports_prefect_tasks_or_flows():
    offenders = {
        name: sorted(m for m in _imports(path) if m.split(".")[0] in {"prefect", "tasks", "flows"})
        for name, path in LIBRARY.items()
    }
    assert not {k: v for k, v in offenders.items() if v}, (
        "Expected bincount/ to know nothing of the orchestration layer, but got imports of it"
    )


def test_tasks_never_import_flows():
    offenders = {
        name: sorted(m for m in _imports(path) if m.split(".")[0] == "flows")
        for name, path in _sources("tasks").items()
    }
    assert not {k: v for k, v in offenders.items() if v}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle a depth-first walk closes, named from its first module back to it."""
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_cycle_check_names_each_circle():
    graph = {
        "core.fetch": {"core.storage", "core.retries"},
        "core.storage": {"core.fetch", "core.retries"},
        "core.retries": set(),
        "model.config": {"model.networks"},
        "model.networks": {"model.zoo"},
        "model.zoo": {"model.config"},
    }
    assert _cycles(graph) == [
        ["core.fetch", "core.storage", "core.fetch"],
        ["model.config", "model.networks", "model.zoo", "model.config"],
    ]
    assert _cycles({**graph, "core.fetch": {"core.retries"}, "model.zoo": set()}) == []


def test_no_import_cycle_in_the_library():
    # Imports in functions and under TYPE_CHECKING count: each module knows only those below it.
    cycles = [" -> ".join(cycle) for cycle in _cycles(_library_graph())]
    assert not cycles, f"Expected no import cycle in bincount/, but got {cycles}"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_no_library_module_is_over_400_lines(name):
    lines = LIBRARY[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, (
        f"Expected {name} to hold one concern (<= {MAX_LINES} lines), got {lines}"
    )


# The library's steps of each pipeline. Tasks wrap them one each; flows compose tasks; a library
# convenience (ingest_metadata, score_images) is a few lines calling the same steps. Nothing else
# chains them, so no second implementation of a pipeline can grow in flows, the CLI or a bench.
CHAINS = (("plan_ingest", "ingest_chunk"), ("plan_scoring", "score_chunk"))
STEPS = {step for chain in CHAINS for step in chain} | {"build_image_cache", "train_model"}


def _functions(*folders: str):
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for function in ast.walk(tree):
                if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    called = {
                        getattr(c.func, "id", None) or getattr(c.func, "attr", None)
                        for c in ast.walk(function)
                        if isinstance(c, ast.Call)
                    }
                    yield f"{path.relative_to(REPO)}:{function.name}", called


def test_flows_call_tasks_never_the_library_steps():
    direct = {name: sorted(called & STEPS) for name, called in _functions("flows")}
    # The one exception: the ranks of a torchrun job other than rank 0 join the train flow's
    # training step itself (flows/commands.py), since a flow run is rank 0's alone.
    direct.pop("flows/commands.py:train_under_torchrun", None)
    assert not {k: v for k, v in direct.items() if v}, (
        "Expected flows to run pipeline steps through their tasks, but got direct calls"
    )


def test_only_tasks_and_library_conveniences_chain_a_pipeline():
    chains = [
        name
        for name, called in _functions("flows", "bench", "bincount")
        for plan, chunk in CHAINS
        if {plan, chunk} <= called
    ]
    conveniences = {
        "bincount/data/ingest.py:ingest_metadata",
        "bincount/nightly/scoring.py:score_images",
    }
    others = sorted(set(chains) - conveniences)
    assert not others, f"Expected plan and chunks chained by tasks and flows alone, got {others}"
