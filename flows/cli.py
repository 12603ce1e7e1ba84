"""The ``bincount`` command: every flow is a subcommand built from its signature and docstring.

A flow command has one option per flow parameter, typed and defaulted as the parameter is; a
pydantic parameter (the training config, the review policy) has one option per field. The
platform options come once from the :class:`~bincount.core.settings.Settings` fields and feed the
one settings object through its ``BINCOUNT_*`` environment, so a flow run from the CLI, a
deployment or a test sees the same configuration. Flows are imported only when their command
(or the overall help) needs them: ``bincount synth`` never loads Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from bincount.core import telemetry

# Command → the flow it runs (module:function).
FLOWS = {
    "ingest": "flows.ingest:ingest",
    "validate": "flows.validate:validate",
    "manifest": "flows.manifest:manifest",
    "pipeline": "flows.data:data_pipeline",
    "train": "flows.train:train",
    "evaluate": "flows.evaluate:evaluate",
    "promote": "flows.promote:promote",
    "retrain": "flows.retrain:retrain",
    "tune": "flows.tune:tune",
    "score": "flows.score:score",
    "review": "flows.review:review",
    "record-verdicts": "flows.verdicts:record_verdicts",
}

# How the fields of a pydantic parameter are spelled: --review-budget-percent, but --arch.
FIELD_PREFIX = {"review": "review-", "config": ""}

# Spellings kept from earlier versions of the command, beside the generated ones.
ALIASES = {"ingest_first": ("--no-ingest",)}

# What a flow parameter means (``command.parameter`` where one command differs), for the help;
# types and defaults come from the signature.
HELP = {
    "source": "where bins that record no source (ingested by older versions) are read from; "
    "every other bin is read from the source it was ingested from "
    "(default: BINCOUNT_SOURCE, else s3://aft-vbi-pds)",
    "ingest.source": "bucket or folder with bin-images/ and metadata/ "
    "(default: BINCOUNT_SOURCE, else s3://aft-vbi-pds)",
    "pipeline.source": "bucket or folder with bin-images/ and metadata/ "
    "(default: BINCOUNT_SOURCE, else s3://aft-vbi-pds)",
    "score.source": "bucket or folder to list new images in (default: BINCOUNT_SOURCE, else "
    "every source the output's bins came from)",
    "output": "where tables are written: a path, file:// or s3:// (default: BINCOUNT_OUTPUT)",
    "limit": "at most N new objects",
    "keys_from": "only these keys (capstone file list, a JSON list or one key/id per line)",
    "dask": "fan chunks out on a Dask cluster: tcp://scheduler:8786, or local[:N] workers",
    "policy": "open:K (0..K and 'more than K'), moderate (counts 0-5 only), hard (all) or max:K",
    "benchmark_split": "ABID challenge validation list used as the test split",
    "manifest": "manifest version (default: the latest)",
    "evaluate.manifest": "manifest version (default: the model's)",
    "promote.manifest": "manifest version (default: the model's)",
    "model": "model version or 'champion'",
    "split": "the frozen evaluation set: test, val or benchmark",
    "space": 'values per name: "lr=1e-3,3e-3;arch=resnet18,mobilenet_v3_small" or JSON',
    "trials": "sample this many from the grid (default: every trial)",
    "prefix": "image folder, or folder and start of names (bin-images/1000)",
    "batch_size": "images per model call",
    "ingest_first": "ingest new metadata first, so new bins' records are known",
    "device": "cuda, cuda:1 or cpu (default: cuda when present)",
    "queued_date": "the queue date to review, YYYY-MM-DD (default: the newest with bins unjudged)",
    "top": "how many bins to show, from the top of the queue",
    "reviewer": "the reviewer's name kept with each verdict (review: prefilled in the form)",
    "wait_minutes": "how long the paused run waits for verdicts before it fails",
    "verdicts": "CSV or JSON file: bin (id or photo URI), counted (empty when the record is "
    "right), optionally reviewer, source, queue_id, note",
}

_EMPTY = inspect.Parameter.empty


def main(argv: Sequence[str] | None = None) -> int:
    telemetry.quiet()  # before Prefect is imported; a user's own environment wins
    # The library's log lines (progress, epochs) in the runs' logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bincount")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(only=command).parse_args(argv)
    with settings_environment(args):
        run = _run_flow if args.command in FLOWS else PLAIN_COMMANDS[args.command][1]
        result = run(args)
    if isinstance(result, str):
        sys.stdout.write(result + "\n")
    else:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    if args.command == "predict" and any("error" in answer for answer in result):
        return 1
    return 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command; with ``only``, that command in full and the flows of the others left
    unimported (their commands are listed, not built)."""
    parser = argparse.ArgumentParser(
        prog="bincount",
        description="Count the items in warehouse bin photos and flag suspicious inventory. "
        "Every step is a Prefect flow; `bincount COMMAND --help` lists its parameters.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    built: dict[str, argparse.ArgumentParser] = {}
    for name, (add, _) in PLAIN_COMMANDS.items():
        if only in (None, name):
            sub = add(commands)
            _add_settings_options(sub, taken=set())
        else:
            commands.add_parser(name)
    for name, target in FLOWS.items():
        if only in (None, name):
            built[name] = _add_flow_command(commands, name, load_flow(target))
        else:
            commands.add_parser(name)
    if only is None:
        parser.epilog = "flow parameters and their defaults:\n" + "\n".join(
            _parameter_line(name, sub) for name, sub in built.items()
        )
    return parser


def _parameter_line(command: str, parser: argparse.ArgumentParser) -> str:
    """``  train: --output (none) --arch (resnet18) ...``: the options of a flow's parameters."""
    words = [f"{command}:"]
    for action in parser._actions:
        if action.dest.startswith("settings.") or not action.option_strings:
            continue
        if action.help is argparse.SUPPRESS or action.dest == "help":
            continue
        default = "required" if action.required else _default_of(action.help or "")
        words.append(f"{action.option_strings[0]} ({default})")
    lines, line = [], " "
    for word in words:
        if len(line) + len(word) > 98:
            lines.append(line)
            line = "     "
        line += " " + word
    return "\n".join([*lines, line])


def _default_of(help: str) -> str:
    return help.rpartition("(default: ")[2].rstrip(")").replace("%%", "%")


def load_flow(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


# -- options from signatures --------------------------------------------------------------------
def _add_flow_command(commands, name: str, flow) -> argparse.ArgumentParser:
    doc = inspect.getdoc(flow.fn) or ""
    sub = commands.add_parser(
        name,
        help=doc.split("\n")[0],
        description=f"{doc}\n\nRuns flow `{flow.name}`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parameters = flow_parameters(flow)
    for parameter, annotation in parameters:
        if _is_model(annotation):
            _add_model_options(sub, parameter, annotation)
        else:
            _add_option(
                sub,
                parameter.name,
                annotation,
                dest=parameter.name,
                default=parameter.default,
                help=HELP.get(f"{name}.{parameter.name}", HELP.get(parameter.name, "")),
                aliases=ALIASES.get(parameter.name, ()),
            )
    _add_settings_options(sub, taken={p.name for p, _ in parameters})
    return sub


def flow_parameters(flow) -> list[tuple[inspect.Parameter, Any]]:
    """Each parameter of a flow with its resolved type."""
    hints = typing.get_type_hints(flow.fn)
    return [
        (parameter, hints.get(parameter.name, str))
        for parameter in inspect.signature(flow.fn).parameters.values()
    ]


def _add_model_options(parser, parameter: inspect.Parameter, model: type[BaseModel]) -> None:
    default = parameter.default if isinstance(parameter.default, model) else None
    prefix = FIELD_PREFIX.get(parameter.name, parameter.name.replace("_", "-") + "-")
    summary = (inspect.getdoc(model) or model.__name__).split("\n")[0]
    group = parser.add_argument_group(
        f"{parameter.name} ({model.__name__}: {summary})",
    )
    for field_name, field in model.model_fields.items():
        shown = getattr(default, field_name) if default is not None else field.get_default()
        _add_option(
            group,
            prefix + field_name,
            field.annotation,
            dest=f"{parameter.name}.{field_name}",
            default=argparse.SUPPRESS,
            shown=shown,
            help=field.description or "",
        )


def _add_settings_options(parser, *, taken: set[str]) -> None:
    from bincount.core.settings import Settings

    group = parser.add_argument_group("platform settings (also BINCOUNT_* environment variables)")
    for name, field in Settings.model_fields.items():
        if name in taken or SecretStr in _variants(field.annotation):
            continue
        _add_option(
            group,
            name,
            field.annotation,
            dest=f"settings.{name}",
            default=argparse.SUPPRESS,
            shown=field.get_default(),
            help=f"{field.description or ''} [BINCOUNT_{name.upper()}]".strip(),
        )


def _add_option(
    parser,
    name: str,
    annotation: Any,
    *,
    dest: str,
    default: Any,
    help: str,
    shown: Any = _EMPTY,
    aliases: Sequence[str] = (),
) -> None:
    option = "--" + name.replace("_", "-")
    kind, choices = _scalar(annotation)
    if shown is _EMPTY:
        shown = default
    required = default is _EMPTY
    text = help
    if not required and "default:" not in help:
        text = f"{help} (default: {'none' if shown is None else shown})".strip()
    kwargs: dict[str, Any] = {"dest": dest, "help": text.replace("%", "%%")}
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    if kind is bool:
        action = parser.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
        action.help = kwargs["help"]  # as written: some Pythons append the default themselves
        for alias in aliases:  # an old negative spelling: --no-ingest
            parser.add_argument(alias, dest=dest, action="store_false", help=argparse.SUPPRESS)
        return
    metavar = None if choices else _metavar(name)  # choices show as {ce,ordinal}
    parser.add_argument(option, type=kind, choices=choices, metavar=metavar, **kwargs)


def _scalar(annotation: Any) -> tuple[Callable[[str], Any], tuple | None]:
    """The type an option's text converts to, and its choices when it is a ``Literal``."""
    variants = [v for v in _variants(annotation) if v is not type(None)]
    if len(variants) != 1:
        raise TypeError(f"Expected one type besides None, but got {annotation!r}")
    (kind,) = variants
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        return type(choices[0]), choices
    if kind in (str, int, float, bool):
        return kind, None
    raise TypeError(f"Expected str, int, float, bool or a Literal, but got {annotation!r}")


def _variants(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _metavar(name: str) -> str:
    return name.removeprefix("review-").upper().replace("-", "_")


def flow_arguments(args: argparse.Namespace, flow) -> dict[str, Any]:
    """The flow's keyword arguments from parsed options; a pydantic parameter is its default
    with the fields given on the command line, validated."""
    given = vars(args)
    arguments: dict[str, Any] = {}
    for parameter, annotation in flow_parameters(flow):
        if _is_model(annotation):
            base = parameter.default if isinstance(parameter.default, annotation) else None
            fields = {
                name: given[f"{parameter.name}.{name}"]
                for name in annotation.model_fields
                if f"{parameter.name}.{name}" in given
            }
            # Only the fields the default sets: the others stay unset, so a recipe fills them.
            base_fields = base.model_dump(exclude_unset=True) if base is not None else {}
            arguments[parameter.name] = annotation.model_validate({**base_fields, **fields})
        else:
            arguments[parameter.name] = given[parameter.name]
    return arguments


@contextlib.contextmanager
def settings_environment(args: argparse.Namespace) -> Iterator[None]:
    """The platform options as ``BINCOUNT_*`` variables while the command runs (a process it
    starts, a Dask worker say, inherits them); the environment as it was afterwards."""
    from bincount.core.settings import get_settings

    given = {
        f"BINCOUNT_{dest.removeprefix('settings.').upper()}": (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
        for dest, value in vars(args).items()
        if dest.startswith("settings.") and value is not None
    }
    before = {name: os.environ.get(name) for name in given}
    os.environ.update(given)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def _run_flow(args: argparse.Namespace) -> Any:
    flow = load_flow(FLOWS[args.command])
    arguments = flow_arguments(args, flow)
    if args.command == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _train_distributed(**arguments)
    return flow(**arguments)


def _train_distributed(output, manifest, config, device) -> dict:
    """Under torchrun every rank trains its share; rank 0 decodes the cache and writes."""
    import torch.distributed as dist

    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.data.manifest import load_manifest
    from bincount.images.cache import build_image_cache
    from bincount.model.device import resolve_runtime
    from bincount.model.training import train_model

    settings = get_settings()
    target = Location.output(settings, output)
    rows, details = load_manifest(target, manifest)
    runtime = resolve_runtime(device)
    config = config.for_device(device)  # as the train flow does
    if runtime.is_main:
        build_image_cache(
            Location.source(settings, details["source"]),
            target,
            rows,
            manifest_version=details["version"],
            size=config.image_size,
            limits=settings.image_limits(),
            sources=details.get("sources", []),
        )
    dist.barrier()
    result = train_model(target, config, manifest_version=details["version"], device=device)
    return result.__dict__ if runtime.is_main else {}


# -- commands that are not flows -----------------------------------------------------------------
def _synth_parser(commands) -> argparse.ArgumentParser:
    synth = commands.add_parser("synth", help="write a synthetic ABID bucket")
    synth.add_argument("dest", help="folder or s3:// URL to write bin-images/ and metadata/ to")
    synth.add_argument("--bins", type=int, required=True, help="number of bins to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--max-count", type=int, default=50, help="largest item count (default 50: 99.9%% of ABID)"
    )
    synth.add_argument("--append", action="store_true", help="add new bins with fresh ids")
    synth.add_argument(
        "--defect-rate", type=float, default=0.0, help="share of bins with injected faults"
    )
    synth.add_argument(
        "--mismatch-rate",
        type=float,
        default=0.0,
        help="share of bins whose (self-consistent) record disagrees with the photo",
    )
    synth.add_argument(
        "--truth",
        help="where to write what each photo really shows (default: DEST.truth beside a local "
        "folder; required to get one for s3://)",
    )
    synth.add_argument("--workers", type=int, help="processes (default: all cores)")
    return synth


def _synth(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.synth import default_truth, synthesize

    settings = get_settings()
    truth = args.truth or default_truth(args.dest)
    summary = synthesize(
        Location.output(settings, args.dest),
        bins=args.bins,
        seed=args.seed,
        max_count=args.max_count,
        append=args.append,
        defect_rate=args.defect_rate,
        mismatch_rate=args.mismatch_rate,
        truth=Location.output(settings, truth) if truth else None,
        workers=args.workers,
    )
    return asdict(summary)


def _predict_parser(commands) -> argparse.ArgumentParser:
    predict = commands.add_parser(
        "predict", help="count the items in bin photos (files or s3:// URLs); JSON out"
    )
    predict.add_argument("inputs", nargs="+", metavar="PATH_OR_URL")
    predict.add_argument("--model", default="champion", help="model version or 'champion'")
    predict.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when present)")
    return predict


def _predict(args: argparse.Namespace) -> list[dict]:
    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.nightly.scorer import load_scorer, predict_images

    settings = get_settings()
    scorer = load_scorer(Location.output(settings), args.model, device=args.device)
    buckets: dict[str, Location] = {}

    def read(name: str) -> bytes:
        if name.startswith(("s3://", "s3a://")):
            bucket, _, key = name.split("://", 1)[1].partition("/")
            if bucket not in buckets:
                buckets[bucket] = Location.source(settings, f"s3://{bucket}")
            return buckets[bucket].read_bytes(key)
        with open(name.removeprefix("file://"), "rb") as handle:
            return handle.read()

    return predict_images(scorer, args.inputs, read=read)


def _serve_parser(commands) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve", help="serve every deployment of deployments/prefect.yaml from this process"
    )
    serve.add_argument(
        "--prefect-file", help="deployments file (default: deployments/prefect.yaml)"
    )
    return serve


def _serve(args: argparse.Namespace) -> str:
    from flows.serve import serve_deployments

    serve_deployments(args.prefect_file)
    return "stopped serving"


def _models_parser(commands) -> argparse.ArgumentParser:
    return commands.add_parser("models", help="list the registered models")


def _models(args: argparse.Namespace) -> list[dict]:
    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.model.registry import list_models

    return list_models(Location.output(get_settings()))


def _demo_parser(commands) -> argparse.ArgumentParser:
    # Defaults are the demo flow's own (flows/demo.py), not restated here: an option left out
    # is not passed.
    demo = commands.add_parser("demo", help="the whole chain on a synthetic bucket")
    demo.add_argument("--workdir", default="demo-output", help="where the demo writes everything")
    demo.add_argument("--bins", type=int, help="bins in the bucket (default 6,000)")
    demo.add_argument("--arrivals", type=int, help="new bins that arrive later (default 400)")
    demo.add_argument("--seed", type=int, help="the bucket's seed; arrivals use seed + 1")
    demo.add_argument("--train-minutes", type=float, help="CPU training time (default 6.5)")
    demo.add_argument(
        "--mismatch-rate",
        type=float,
        help="share of arrivals whose record disagrees with the photo (default 0.05)",
    )
    return demo


def _demo(args: argparse.Namespace) -> str:
    from flows.demo import demo, demo_summary

    given = {
        name: getattr(args, name)
        for name in ("bins", "arrivals", "seed", "train_minutes", "mismatch_rate")
        if getattr(args, name) is not None
    }
    return demo_summary(demo(workdir=os.path.abspath(args.workdir), **given))


# Command → (its parser, what it runs).
PLAIN_COMMANDS = {
    "synth": (_synth_parser, _synth),
    "predict": (_predict_parser, _predict),
    "serve": (_serve_parser, _serve),
    "models": (_models_parser, _models),
    "demo": (_demo_parser, _demo),
}


if __name__ == "__main__":
    raise SystemExit(main())
