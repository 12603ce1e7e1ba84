"""Reference sections read from the code and configuration: the settings, pydantic
parameters, training recipes, deployments, published artifacts, the UI check's screenshots,
and the benchmarks' own README."""

from __future__ import annotations

import ast
import json
import re

import yaml
from markup import REPO, cell, constraint, value
from mkdocs.exceptions import PluginError


# -- settings ------------------------------------------------------------------------------------
def settings() -> str:
    from pydantic import SecretStr

    from bincount.core.settings import Settings

    rows = ["| variable | type | default | limits | meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        secret = SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
        default = field.get_default()
        shown = "unset" if default is None else f"`{default}`"
        meaning = field.description or ""
        if secret:
            meaning = (meaning + " A secret: never logged, and not a command option.").strip()
        limits = ", ".join(constraint(item) for item in field.metadata if constraint(item))
        rows.append(
            f"| `{Settings.model_config['env_prefix']}{name.upper()}` | "
            f"{_type_name(field.annotation)} | {shown} | {limits} | {cell(meaning)} |"
        )
    return "\n".join(rows)


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace("pydantic.types.", "")
    return " or ".join(f"`{part}`" for part in text.split(" | "))


# -- pydantic parameters -------------------------------------------------------------------------
def fields(target: str) -> str:
    import importlib

    module, _, name = target.rpartition(".")
    model = getattr(importlib.import_module(module), name)
    rows = [
        f"Fields of `{target}`:",
        "",
        "| field | default | limits | meaning |",
        "|---|---|---|---|",
    ]
    for field_name, field in model.model_fields.items():
        limits = ", ".join(filter(None, (constraint(item) for item in field.metadata)))
        rows.append(
            f"| `{field_name}` | {value(field.get_default())} | {limits} | "
            f"{cell(field.description or '')} |"
        )
    return "\n".join(rows)


# -- training recipes ----------------------------------------------------------------------------
def recipes() -> str:
    from bincount.model.config import TrainConfig
    from bincount.model.recipes import DEMO_RECIPE, RECIPES

    columns = {name: TrainConfig(recipe=name) for name in RECIPES}
    columns["demo"] = TrainConfig(**DEMO_RECIPE)
    defaults = TrainConfig()
    header = "| field | default, where a recipe sets none | " + " | ".join(
        f"`{n}`" for n in columns
    )
    rows = [header + " |", "|---|---|" + "---|" * len(columns)]
    for field in TrainConfig.model_fields:
        if field == "recipe":
            continue
        values = [getattr(config, field) for config in columns.values()]
        rows.append(
            f"| `{field}` | {value(getattr(defaults, field))} | "
            + " | ".join(value(shown) for shown in values)
            + " |"
        )
    return "\n".join(rows)


# -- deployments, the UI check, benchmarks -------------------------------------------------------
def deployments() -> str:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    rows = [
        "| deployment | runs | schedule | pool | one at a time | parameters |",
        "|---|---|---|---|---|---|",
    ]
    for each in spec["deployments"]:
        flow_name = _flow_name(each["entrypoint"])
        schedules = "; ".join(
            f"`{s['cron']}` ({s.get('timezone', 'UTC')})" for s in each.get("schedules") or []
        )
        rows.append(
            f"| `{flow_name}/{each['name']}` | `{each['entrypoint']}` | "
            f"{schedules or 'on demand'} | `{each['work_pool']['name']}` | "
            f"{'yes' if each.get('concurrency_limit') == 1 else 'no'} | "
            f"{cell(json.dumps(each.get('parameters') or {}))} |"
        )
    return "\n".join(rows)


def _flow_name(entrypoint: str) -> str:
    """The ``name=`` of the ``@flow`` decorating the entrypoint's function (read, not imported)."""
    file, _, function = entrypoint.partition(":")
    for node in ast.walk(ast.parse((REPO / file).read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for decorator in node.decorator_list:
                for keyword in getattr(decorator, "keywords", []):
                    if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                        return keyword.value.value
            return function.replace("_", "-")
    raise PluginError(f"deployments/prefect.yaml: no function {function} in {file}")


def artifacts() -> str:
    """Every artifact a task publishes (``create_*_artifact(key=...)`` in ``tasks/``)."""
    rows = ["| artifact key | kind | published by | description |", "|---|---|---|---|"]
    seen = set()
    for path in sorted((REPO / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = getattr(node, "func", None)
            name = getattr(called, "id", getattr(called, "attr", ""))
            if not (isinstance(node, ast.Call) and re.fullmatch(r"create_(\w+)_artifact", name)):
                continue
            given = {keyword.arg: keyword.value for keyword in node.keywords}
            key = _placeholders(given["key"]) if "key" in given else None
            if key is None or key in seen:
                continue
            seen.add(key)
            description = _placeholders(given["description"]) if "description" in given else ""
            rows.append(
                f"| `{key}` | {name.split('_')[1]} | `{path.relative_to(REPO)}` | "
                f"{cell(description or '')} |"
            )
    return "\n".join(rows)


def _placeholders(node: ast.expr) -> str | None:
    """A string as written, each f-string field shown as ``<name>``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    text = ""
    for part in node.values:
        if isinstance(part, ast.Constant):
            text += part.value
            continue
        value = part.value
        if isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Constant):
            text += f"<{value.slice.value}>"
        elif isinstance(value, ast.Attribute):
            text += f"<{value.attr}>"
        else:
            text += f"<{ast.unparse(value)}>"
    return text


def ui_check() -> str:
    tree = ast.parse((REPO / "bench" / "ui_check.py").read_text())
    kinds = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "KINDS"
    )
    rows = ["| screenshot | the newest artifact whose key |", "|---|---|"]
    for kind, key, prefix in kinds:
        rows.append(f"| `ui-check/{kind}.png` | {f'is `{key}`' if key else f'starts `{prefix}`'} |")
    return "\n".join(rows)


def bench() -> str:
    return (REPO / "bench" / "README.md").read_text(encoding="utf-8")
