"""Reference sections read from ``data_contracts/`` and from where reason codes are raised:
table schemas (and Athena DDL), expectation suites, reason codes, and the check that a page
has a section for every code."""

from __future__ import annotations

import ast
import json
import logging
import re

from markup import REPO, cell

log = logging.getLogger("mkdocs.plugins.bincount")
# Classes whose first argument is a reason code (the ``Reason`` protocol's ``code``).
REASON_CLASSES = ("MalformedMetadata", "UndecodableImage", "Rejection", "ReadFault")


# -- data contracts ------------------------------------------------------------------------------
def tables() -> str:
    from bincount.core.contracts import contract_names

    parts = []
    for name in contract_names("schemas"):
        spec = json.loads((REPO / "data_contracts" / "schemas" / f"{name}.json").read_text())
        partitioning = spec.get("partitioning") or []
        parts += [
            f"## `{name}`",
            "",
            spec.get("description", ""),
            "",
            f"Schema file: `data_contracts/schemas/{name}.json`. "
            + (
                "Hive-partitioned by " + ", ".join(f"`{p}`" for p in partitioning) + "."
                if partitioning
                else "Not partitioned."
            ),
            "",
            "| column | type | nullable | meaning |",
            "|---|---|---|---|",
            *(
                f"| `{column['name']}` | `{column['type']}` | "
                f"{'yes' if column.get('nullable', True) else 'no'} | "
                f"{cell(column.get('description', ''))} |"
                for column in spec["columns"]
            ),
            "",
        ]
    return "\n".join(parts)


_HIVE_TYPES = {
    "string": "string",
    "bool": "boolean",
    "int32": "int",
    "int64": "bigint",
    "float32": "float",
    "float64": "double",
    "date32": "date",
}


def athena() -> str:
    """``CREATE EXTERNAL TABLE`` for every table, its columns typed from its schema file."""
    from bincount.core.contracts import contract_names

    statements = []
    for name in contract_names("schemas"):
        spec = json.loads((REPO / "data_contracts" / "schemas" / f"{name}.json").read_text())
        partitioning = spec.get("partitioning") or []
        columns = [
            f"  {column['name']} {_hive_type(column['type'])}"
            for column in spec["columns"]
            if column["name"] not in partitioning
        ]
        folder = "manifests/<version>" if name == "manifest" else name
        statement = [f"CREATE EXTERNAL TABLE bincount.{name} (", ",\n".join(columns), ")"]
        if partitioning:
            types = {column["name"]: column["type"] for column in spec["columns"]}
            statement.append(
                "PARTITIONED BY ("
                + ", ".join(f"{p} {_hive_type(types[p])}" for p in partitioning)
                + ")"
            )
        statement += ["STORED AS PARQUET", f"LOCATION 's3://my-bucket/bincount/{folder}/';"]
        if partitioning:
            statement.append(f"MSCK REPAIR TABLE bincount.{name};")
        statements.append("\n".join(statement))
    return "```sql\n" + "\n\n".join(statements) + "\n```"


def _hive_type(text: str) -> str:
    text = text.strip()
    if text.startswith("timestamp"):
        return "timestamp"
    if text.startswith("list<"):
        return f"array<{_hive_type(text[5:-1])}>"
    return _HIVE_TYPES[text]


def expectations() -> str:
    from bincount.core.contracts import contract_names, expectation_suite

    parts = []
    for name in contract_names("suites"):
        suite = expectation_suite(name)  # the loader's checks: a code and threshold on each
        meta = suite.get("meta", {})
        parts += [
            f"### Suite `{name}`",
            "",
            f"On table `{meta.get('table', name)}`. {meta.get('description', '')}",
            "",
            "| code | expectation | arguments | fails the run above | meaning |",
            "|---|---|---|---|---|",
        ]
        for expectation in suite["expectations"]:
            spec = expectation["meta"]
            arguments = ", ".join(f"{k}={json.dumps(v)}" for k, v in expectation["kwargs"].items())
            parts.append(
                f"| `{spec['code']}` | `{expectation['type']}` | {cell(arguments)} | "
                f"{spec['max_failed_percent']:g} % of rows | {cell(spec.get('description', ''))} |"
            )
        for parameter, meaning in (meta.get("parameters") or {}).items():
            parts += ["", f"Parameter `{parameter}`: {meaning}."]
        parts.append("")
    return "\n".join(parts)


def expectation_codes() -> list[str]:
    from bincount.core.contracts import contract_names, expectation_suite

    return [
        expectation["meta"]["code"]
        for name in contract_names("suites")
        for expectation in expectation_suite(name)["expectations"]
    ]


# -- reason codes --------------------------------------------------------------------------------
def reason_sites() -> dict[str, list[tuple[str, str, int, str | None]]]:
    """Every reason code raised in ``bincount/``: code -> [(class, file, line, message)]."""
    found: dict[str, list] = {}
    for path in sorted((REPO / "bincount").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            called = getattr(node.func, "id", getattr(node.func, "attr", None))
            if called not in REASON_CLASSES:
                continue
            codes = [
                constant.value
                for constant in ast.walk(node.args[0])
                if isinstance(constant, ast.Constant) and isinstance(constant.value, str)
            ]
            message = _template(node.args[1]) if len(node.args) > 1 else None
            where = str(path.relative_to(REPO))
            for code in codes:
                found.setdefault(code, []).append((called, where, node.lineno, message))
    return found


def _template(node: ast.expr) -> str | None:
    """A message as written: an f-string's fields stay ``{...}``; a variable gives nothing."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
            for part in node.values
        )
    return None


def reason_codes() -> str:
    from bincount.core.chunks import Stage

    parts = [
        "Every quarantine row (table `quarantine`, partitioned by `stage`: "
        + ", ".join(f"`{stage.value}`" for stage in Stage)
        + ") has a `reason_code`: one of the codes below, found in the code where they are "
        "raised, or the code of the expectation that failed (next section). What to do about "
        "each: [Troubleshooting](../operators/troubleshooting.md).",
        "",
        "## Reason codes",
        "",
    ]
    for code, sites in sorted(reason_sites().items()):
        places = sorted({f"`{where}`" for _, where, _, _ in sites})
        classes = sorted({called for called, _, _, _ in sites})
        messages = sorted({message for *_, message in sites if message})
        parts += [
            f"### `{code}`",
            "",
            f"Raised as {', '.join(f'`{c}`' for c in classes)} in {', '.join(places)}"
            + f" ({len(sites)} place{'s' if len(sites) > 1 else ''}).",
        ]
        if messages:
            parts += ["", "Reasons it gives (`{...}` is filled in per object):", ""]
            parts += [f"- `{message.replace('`', '')}`" for message in messages]
        parts.append("")
    parts += ["## Expectation codes", "", expectations()]
    return "\n".join(parts)


def check_code_headings(markdown: str, where: str) -> None:
    headed = set(re.findall(r"^#{2,4} .*?`([A-Za-z0-9_-]+)`", markdown, re.MULTILINE))
    known = set(reason_sites()) | set(expectation_codes())
    for code in sorted(known - headed):
        log.warning(f"{where}: no heading for reason code `{code}` (add what to do about it)")
    for code in sorted(headed - known):
        log.warning(f"{where}: a heading names `{code}`, which no code or suite defines")
