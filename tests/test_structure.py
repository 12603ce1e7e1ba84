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


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at import time or lazily, but not for type checking alone."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


LIBRARY = _sources("bincount")


def _library_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in LIBRARY.items():
        graph[name] = {m for m in _imports(path) if m in LIBRARY and m != name}
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


def test_no_import_cycle_in_the_library():
    graph = _library_graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # A package's __init__ importing its own modules is no cycle between concerns.
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") for m in c[1:-1])]
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
