"""The ``bincount`` command, on cyclopts: each command is built from the function it runs.

A flow command has one option per flow parameter, typed and defaulted as the parameter is; a
pydantic parameter (the training config, the review and drift policies) has one option per
field, and every command has the platform options, one per Settings field, fed to the one
settings object through its ``BINCOUNT_*`` environment, so a flow run from the CLI, a
deployment or a test sees the same configuration (flows/options.py). Only the command asked
for is built: the overall help reads each command's summary from its source file, so it
imports neither Prefect nor torch.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bincount.core import telemetry
from flows.refusals import console_tracebacks_of_refusals_hidden, is_refusal, one_line

if TYPE_CHECKING:
    from flows.options import Options

# Command → what it runs (module:flow or module:function), in the order the help lists them.
COMMANDS = {
    "synth": "flows.commands:synth",
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
    "quarantine": "flows.quarantine:quarantine",
    "predict": "flows.commands:predict",
    "models": "flows.commands:models",
    "serve": "flows.commands:serve",
    "demo": "flows.demo:demo",
}

# What a command's result is printed as, where not JSON.
PRESENTED = {"demo": "flows.demo:demo_summary", "quarantine": "flows.quarantine:quarantine_text"}

# A command under torchrun (WORLD_SIZE > 1) that runs otherwise there.
DISTRIBUTED = {"train": "flows.commands:train_under_torchrun"}

DESCRIPTION = (
    "Count the items in warehouse bin photos and flag suspicious inventory. Every step is a "
    "Prefect flow; `bincount COMMAND --help` lists its options with the values a run takes. "
    "A command refused on bad input prints one line; --debug shows its traceback."
)

# What a flow parameter means (``command.parameter`` where one command differs), for the help;
# types and defaults come from the signature. "(default: ...)" says what None stands for.
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
    "limit": "at most N new objects (default: no limit)",
    "keys_from": "only these keys (capstone file list, a JSON list or one key/id per line) "
    "(default: every key)",
    "dask": "fan chunks out on a Dask cluster: tcp://scheduler:8786, or local[:N] workers "
    "(default: threads in this process)",
    "policy": "open:K (0..K and 'more than K'), moderate (counts 0-5 only), hard (all) or max:K",
    "benchmark_split": "ABID challenge validation list used as the test split "
    "(default: none, a hash split)",
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
    "reviewer": "the reviewer's name kept with each verdict (review: prefilled in the form) "
    "(default: none)",
    "wait_minutes": "how long the paused run waits for verdicts before it fails",
    "verdicts": "CSV or JSON file: bin (id or photo URI), counted (empty when the record is "
    "right), optionally reviewer, source, queue_id, note",
    "replay_reason": "make the objects quarantined for this reason code pending again, so the "
    "next run of their stage reads them (default: replay nothing)",
    "replay_stage": "make the objects quarantined at this stage (ingest, images or score) "
    "pending again (default: replay nothing, or with --replay-reason every stage)",
    "demo.workdir": "where the demo writes everything",
    "demo.bins": "bins in the bucket",
    "demo.arrivals": "new bins that arrive later",
    "demo.seed": "the bucket's seed; arrivals use seed + 1, the darker photos seed + 2",
    "demo.train_epochs": "epochs of training: the model learns the same on any machine",
    "demo.train_minutes": "also stop training after this many minutes (default: no time limit; "
    "with one, what the model learns depends on the machine's speed)",
    "demo.mismatch_rate": "share of arrivals whose record disagrees with the photo",
    "demo.dark_arrivals": "darker photos that arrive last, for drift monitoring to flag",
    "demo.dark_exposure": "their light, as a share of the usual",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` asks for; a refused input raises (for tests and other Python
    code: the ``bincount`` program is :func:`console`)."""
    _quiet()
    invocation = parse(argv)
    return 0 if invocation is None else invocation.execute()


def console(argv: Sequence[str] | None = None) -> int:
    """The ``bincount`` program: :func:`main`, with a refused input as one line on stderr and
    exit status 1; ``--debug`` (anywhere) shows the tracebacks instead."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in tokens
    tokens = [token for token in tokens if token != "--debug"]
    _quiet()
    _exit_on_termination()
    try:
        invocation = parse(tokens)  # imports the flow, and so Prefect's logging
        if invocation is None:
            return 0
        with contextlib.nullcontext() if debug else console_tracebacks_of_refusals_hidden():
            return invocation.execute()
    except Exception as error:
        if debug or not is_refusal(error):
            raise
        command = tokens[0] if tokens and tokens[0] in COMMANDS else ""
        sys.stderr.write(" ".join(["bincount", command]).strip() + f": {one_line(error)}\n")
        return 1


@dataclass(frozen=True)
class Invocation:
    """A parsed command: what it runs, with which arguments, under which platform options."""

    command: str
    run: Callable[..., Any]
    args: tuple
    arguments: dict[str, Any]
    environment: dict[str, str]  # the platform options given, as BINCOUNT_* variables
    present: Callable[[Any], str] | None = None

    def execute(self) -> int:
        """Run it and print its result (JSON, or the command's own text); the exit status."""
        with settings_environment(self.environment):
            result = self.run(*self.args, **self.arguments)
        if result is None:  # a torchrun rank other than 0: rank 0 prints
            return 0
        if self.present is not None:
            result = self.present(result)
        if isinstance(result, str):
            sys.stdout.write(result + "\n")
        else:
            json.dump(result, sys.stdout, indent=2, default=_jsonable)
            sys.stdout.write("\n")
        if self.command == "predict" and any("error" in answer for answer in result):
            return 1
        return 0


def _jsonable(value: object) -> object:
    # A typed record (an evaluation report) prints as the document its file holds.
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return str(value)


def parse(argv: Sequence[str] | None = None) -> Invocation | None:
    """The command ``argv`` asks for, its arguments validated; None when it asked for help
    (then printed). A bad option exits with status 2, as argparse did."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    name = tokens[0] if tokens and tokens[0] in COMMANDS else None
    command = build_command(name) if name else None
    app = _app(command, prog=" ".join(["bincount", name or ""]).strip())
    function, bound, _ = app.parse_args(tokens)
    if command is None or function is not command.entry:
        function(*bound.args, **bound.kwargs)  # the help
        return None
    call = command.options.call(bound.arguments)
    return Invocation(name, command.run, call.args, call.kwargs, call.environment, command.present)


@dataclass(frozen=True)
class Command:
    """One command, built: what it runs, its options, and the callable cyclopts parses for."""

    name: str
    run: Callable[..., Any]
    options: Options
    entry: Callable[..., Any]
    present: Callable[[Any], str] | None


def build_command(name: str) -> Command:
    """Command ``name`` with its options, importing what it runs."""
    from flows.options import command_options

    target = load(COMMANDS[name])
    function = getattr(target, "fn", target)  # a flow's own function
    is_flow = function is not target
    doc = inspect.getdoc(function) or ""
    if is_flow:
        doc += f"\n\nRuns the Prefect flow {target.name!r}."
    options = command_options(
        function,
        described=_described(name, function) if is_flow else None,
        shown=_shown_training_configs(function),
    )

    def entry(*args: Any, **kwargs: Any) -> None:
        """Parsed for, never called: :func:`parse` returns what it was given."""

    entry.__signature__ = options.signature  # type: ignore[attr-defined]
    entry.__doc__ = doc
    run = target
    if name in DISTRIBUTED and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        run = load(DISTRIBUTED[name])
    present = load(PRESENTED[name]) if name in PRESENTED else None
    return Command(name, run, options, entry, present)


def load(target: str) -> Any:
    """``module:name``, imported."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def summary(target: str) -> str:
    """The first sentence of the docstring of what ``target`` runs, read from its source file:
    the flows import Prefect, which the overall help must not wait for."""
    module, _, name = target.partition(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"Expected module {module} for command {target}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            text = " ".join((ast.get_docstring(node) or "").split())
            return text.split(". ")[0].removesuffix(".") + "."
    raise AttributeError(f"Expected a function {name} in {spec.origin}")


@contextlib.contextmanager
def settings_environment(environment: Mapping[str, str]) -> Iterator[None]:
    """The platform options as ``BINCOUNT_*`` variables while the command runs (a process it
    starts, a Dask worker say, inherits them), checked before it starts; the environment as it
    was afterwards."""
    from pydantic import ValidationError

    from bincount.core.settings import get_settings
    from flows.options import setting_option, validation_message

    before = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    get_settings.cache_clear()
    try:
        try:
            get_settings()
        except ValidationError as error:
            message = validation_message(
                error, lambda name: f"{setting_option(name)} (BINCOUNT_{name.upper()})"
            )
            raise ValueError(message) from error
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def _app(command: Command | None, *, prog: str = "bincount"):
    """The cyclopts app: ``command`` built, every other command listed with its summary; a bad
    option is one line on stderr, starting with ``prog``."""
    from cyclopts import App
    from rich.console import Console
    from rich.text import Text

    app = App(
        name="bincount",
        help=DESCRIPTION,
        version_flags=(),
        error_console=Console(stderr=True, soft_wrap=True),
        error_formatter=lambda error: Text(" ".join(f"{prog}: {error}".split())),
    )
    for order, (name, target) in enumerate(COMMANDS.items()):
        if command is not None and name == command.name:
            app.command(App(name=name, default_command=command.entry, sort_key=order))
        else:
            app.command(App(name=name, help=summary(target), sort_key=order))
    return app


def _described(command: str, function: Callable[..., Any]) -> dict[str, str]:
    return {
        name: HELP.get(f"{command}.{name}", HELP.get(name, ""))
        for name in inspect.signature(function).parameters
    }


def _shown_training_configs(function: Callable[..., Any]) -> dict:
    """A training config's help shows the values a run here takes: with no ``--recipe``, the
    recipe of this machine's device, under the fields the parameter's default sets."""
    from bincount.model.config import TrainConfig
    from flows.options import Shown

    configs = {
        parameter.name: parameter.default
        for parameter in inspect.signature(function).parameters.values()
        if isinstance(parameter.default, TrainConfig)
    }
    if not configs:
        return {}
    from bincount.model.config import default_recipe

    recipe = default_recipe()
    note = (
        f"Without --recipe, a run on this machine ({'CUDA' if recipe == 'gpu' else 'no CUDA'}) "
        f"takes the {recipe} recipe: the defaults shown are its values, and the options given "
        "override them."
    )
    return {name: Shown(config.for_device(), note) for name, config in configs.items()}


def _exit_on_termination() -> None:
    """SIGTERM (what ``kill``, systemd and container runtimes send) ends the program as Ctrl-C
    does, by unwinding, with exit status 143: a flow run in progress is marked Crashed and lets
    its lease go (Prefect's own handler, then this one), and the temporary Prefect server the
    command started is stopped at exit. Python's default would end the process where it stood
    and leave that server running, an orphan holding its port."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _quiet() -> None:
    telemetry.quiet()  # before Prefect is imported; a user's own environment wins
    # The library's log lines (progress, epochs) in the runs' logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bincount")
    # Without PREFECT_API_URL a command starts a temporary Prefect server and waits 20 s for it
    # by default: on a busy 2-core machine its start (a new database's migrations) took longer
    # and the command failed before doing anything ("Timed out while attempting to connect to
    # ephemeral Prefect API server"). A patient wait costs nothing when the server is quick.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")


if __name__ == "__main__":
    raise SystemExit(console())
