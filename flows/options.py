"""A command's options, read from the function it runs: one per parameter, one per field of a
pydantic parameter, and one per platform setting (fed to the settings through ``BINCOUNT_*``).

cyclopts parses the options, converts their values and writes the help; this module names them
and says which defaults the help shows. A pydantic parameter is flattened here rather than by
cyclopts' own nesting (``--config.arch``) so that its options keep their documented spellings
(``--arch``, ``--review-budget-percent``), only the fields given reach the model (a training
config's recipe fills the others), a field given on top of a non-default parameter keeps the
rest of it (``tune``'s ``epochs=5``), and the help can show the values a run will use (the
recipe a training takes on this machine) rather than the fields' declared defaults.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from cyclopts import Group, Parameter
from pydantic import BaseModel, SecretStr, ValidationError

# How the fields of a pydantic parameter are spelled: --arch, but --review-budget-percent and
# --drift-max-psi (any other parameter: its name, then the field's).
FIELD_PREFIX = {"config": ""}

# Spellings kept from earlier versions of the command, beside the generated ones.
NEGATIVE_ALIASES = {"ingest_first": "--no-ingest"}

SETTINGS_GROUP = Group(
    "Platform settings (also BINCOUNT_* environment variables)",
    sort_key=100,
    help="The environment's value, where one is set, is the default shown.",
)

# Generated names of the options that are not a parameter of the function itself.
_SETTING = "setting"
_FIELD = "__"

_P = inspect.Parameter


@dataclass(frozen=True)
class Shown:
    """What the help shows for a pydantic parameter: a value of it (the fields' defaults a run
    will use) and a note on where those values come from."""

    value: BaseModel
    note: str = ""


@dataclass(frozen=True)
class Call:
    """A function's arguments from the options given, and the platform options as the
    ``BINCOUNT_*`` environment they stand for."""

    args: tuple
    kwargs: dict[str, Any]
    environment: dict[str, str]


@dataclass(frozen=True)
class Options:
    """The options of a command that runs ``function``, and how the options given become its
    call."""

    function: Callable[..., Any]
    signature: inspect.Signature  # the options, for cyclopts
    parameters: inspect.Signature  # the function's own
    models: dict[str, tuple[type[BaseModel], BaseModel | None]]

    def call(self, given: Mapping[str, Any]) -> Call:
        """The call ``given`` stands for: the options given on the command line alone (as
        cyclopts binds them, defaults not applied), by generated name."""
        plain: dict[str, Any] = {}
        fields: dict[str, dict[str, Any]] = {name: {} for name in self.models}
        environment: dict[str, str] = {}
        for name, value in given.items():
            owner, _, field = name.partition(_FIELD)
            if owner == _SETTING:
                environment[f"BINCOUNT_{field.upper()}"] = _environment_text(value)
            elif field:
                fields[owner][field] = value
            else:
                plain[name] = value
        for name, (model, default) in self.models.items():
            # The default's own fields under the ones given: only those are set, so a training
            # config given no recipe still takes the device's for every other field.
            base = default.model_dump(exclude_unset=True) if default is not None else {}
            plain[name] = validated(model, {**base, **fields[name]}, field_option(name))
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for parameter in self.parameters.parameters.values():
            if parameter.name not in plain:
                continue
            if parameter.kind is _P.POSITIONAL_ONLY:
                args.append(plain[parameter.name])
            elif parameter.kind is _P.VAR_POSITIONAL:
                args.extend(plain[parameter.name])
            else:
                kwargs[parameter.name] = plain[parameter.name]
        return Call(tuple(args), kwargs, environment)


def command_options(
    function: Callable[..., Any],
    *,
    described: Mapping[str, str] | None = None,
    shown: Mapping[str, Shown] | None = None,
) -> Options:
    """The options of ``function`` (a flow's ``fn``, or a plain function): its parameters (help
    from ``described``, else its docstring), the fields of its pydantic parameters (their
    defaults as in ``shown``, else the parameter's default) and the platform settings its
    parameters do not already name. Positional-only parameters stay positional; every other
    one is an option."""
    described, shown = described or {}, shown or {}
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    options: list[inspect.Parameter] = []
    models: dict[str, tuple[type[BaseModel], BaseModel | None]] = {}
    for order, parameter in enumerate(signature.parameters.values()):
        annotation = hints.get(parameter.name, str)
        if _is_model(annotation):
            default = parameter.default if isinstance(parameter.default, annotation) else None
            models[parameter.name] = (annotation, default)
            view = shown.get(parameter.name) or Shown(default or annotation.model_construct())
            options += _field_options(parameter.name, annotation, view, order)
        else:
            options.append(_option(parameter, annotation, described.get(parameter.name)))
    options += _setting_options(taken=set(signature.parameters))
    return Options(function, inspect.Signature(options), signature, models)


def field_option(parameter: str) -> Callable[[str], str]:
    """The option a field of pydantic parameter ``parameter`` is given with."""
    prefix = FIELD_PREFIX.get(parameter, parameter + "_")
    return lambda field: "--" + (prefix + field).replace("_", "-")


def validated(model: type[BaseModel], values: dict[str, Any], option: Callable[[str], str]):
    """``model`` from ``values``; a refusal names the options (``--lr``), not the fields."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ValueError(validation_message(error, option)) from error


def validation_message(error: ValidationError, option: Callable[[str], str]) -> str:
    """Every problem of ``error`` on one line, each field named as its option."""
    problems = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:  # the model's own check: its message says it all
            problems.append(message)
            continue
        name = option(str(problem["loc"][0]))
        if message.startswith("Input should "):
            expected = message.removeprefix("Input should ")
            problems.append(f"Expected {name} to {expected}, but got {problem['input']!r}")
        else:
            problems.append(f"{name}: {message}")
    return "; ".join(problems)


def setting_option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option(parameter: inspect.Parameter, annotation: Any, help: str | None) -> inspect.Parameter:
    settings: dict[str, Any] = {}
    default = parameter.default
    if help:
        help, _, stands_for = help.partition(" (default: ")
        settings["help"] = help
        if default is None:  # what None stands for (the latest, BINCOUNT_OUTPUT), or "None"
            settings["show_default"] = stands_for.removesuffix(")") or "None"
    if bool in _variants(annotation) and parameter.name in NEGATIVE_ALIASES:
        option = setting_option(parameter.name)
        settings["negative"] = ("--no-" + option[2:], NEGATIVE_ALIASES[parameter.name])
    kind = parameter.kind
    if kind not in (_P.POSITIONAL_ONLY, _P.VAR_POSITIONAL):
        kind = _P.KEYWORD_ONLY
    return _P(
        parameter.name,
        kind,
        default=default,
        annotation=Annotated[annotation, Parameter(**settings)] if settings else annotation,
    )


def _field_options(
    parameter: str, model: type[BaseModel], view: Shown, order: int
) -> list[inspect.Parameter]:
    summary = (inspect.getdoc(model) or "").split("\n")[0]
    group = Group(
        f"{parameter} ({model.__name__})",
        sort_key=order + 1,
        help=" ".join(part for part in (summary, view.note) if part),
    )
    option = field_option(parameter)
    options = []
    for name, field in model.model_fields.items():
        value = getattr(view.value, name, field.get_default())
        options.append(
            _P(
                f"{parameter}{_FIELD}{name}",
                _P.KEYWORD_ONLY,
                default=value,
                annotation=Annotated[
                    field.annotation,
                    Parameter(
                        name=option(name),
                        help=field.description or "",
                        show_default=_text(value),
                        group=group,
                    ),
                ],
            )
        )
    return options


def _setting_options(*, taken: set[str]) -> list[inspect.Parameter]:
    from bincount.core.settings import Settings

    options = []
    for name, field in Settings.model_fields.items():
        if name in taken or SecretStr in _variants(field.annotation):  # never on a command line
            continue
        variable = f"BINCOUNT_{name.upper()}"
        value = os.environ.get(variable)
        options.append(
            _P(
                f"{_SETTING}{_FIELD}{name}",
                _P.KEYWORD_ONLY,
                default=field.get_default(),
                annotation=Annotated[
                    field.annotation,
                    Parameter(
                        name=setting_option(name),
                        help=f"{field.description or ''} [{variable}]".strip(),
                        show_default=(
                            _text(field.get_default()) if value is None else f"{value} ({variable})"
                        ),
                        group=SETTINGS_GROUP,
                    ),
                ],
            )
        )
    return options


def _environment_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _text(value: Any) -> str:
    return "None" if value is None else str(value)


def _variants(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
