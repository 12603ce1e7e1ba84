"""The command is built from what it runs: every flow parameter, pydantic field and platform
setting has an option whose help shows the value a run takes, the documented spellings parse
as before, the overall help loads no flow, and a refused command says why in one line."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from bincount.core.settings import Settings, get_settings
from bincount.model.config import TrainConfig
from bincount.model.recipes import RECIPES
from bincount.nightly.monitoring import DriftPolicy
from bincount.review.ranking import ReviewPolicy
from flows.cli import COMMANDS, console, load, main, parse, settings_environment

REPO = Path(__file__).resolve().parents[1]
FLOW_COMMANDS = [name for name, target in COMMANDS.items() if hasattr(load(target), "fn")]


def _help(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one row per option
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def _rows(text: str) -> dict[str, str]:
    """Each option's row of a help page, by every name it goes by."""
    rows = {}
    for line in text.splitlines():
        row = line.strip("│ ").removeprefix("* ").strip()
        for word in row.split():
            if not word.startswith("--"):
                break
            rows[word] = row
    return rows


def _expected_options(command: str) -> list[tuple[str, object]]:
    """Each option a flow command should have, with the default its help should show: a
    training config's are the device's recipe under the fields its default sets."""
    function = load(COMMANDS[command]).fn
    hints = typing.get_type_hints(function)
    expected = []
    for parameter in inspect.signature(function).parameters.values():
        annotation = hints[parameter.name]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            value = parameter.default
            if isinstance(value, TrainConfig):
                value = value.for_device()
            prefix = "" if parameter.name == "config" else parameter.name + "-"
            for name in annotation.model_fields:
                expected.append(("--" + (prefix + name).replace("_", "-"), getattr(value, name)))
        else:
            expected.append(("--" + parameter.name.replace("_", "-"), parameter.default))
    return expected


@pytest.mark.parametrize("command", FLOW_COMMANDS)
def test_every_option_shows_the_default_a_run_takes(command, capsys, monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"BINCOUNT_{name.upper()}", raising=False)
    rows = _rows(_help(capsys, monkeypatch, command))
    for option, default in _expected_options(command):
        assert option in rows, f"{command}: no {option}"
        if default is inspect.Parameter.empty:
            assert "[required]" in rows[option], rows[option]
        elif default is None:  # "None", or what None stands for ("the latest")
            assert "[default: " in rows[option], rows[option]
        else:
            assert f"[default: {default}]" in rows[option], rows[option]
    for name, field in Settings.model_fields.items():
        option = "--" + name.replace("_", "-")
        if name in ("aws_access_key_id", "aws_secret_access_key"):  # never on a command line
            assert option not in rows
        elif option not in [expected for expected, _ in _expected_options(command)]:
            assert f"[default: {field.get_default()}]" in rows[option], rows[option]


@pytest.mark.parametrize("command", ["train", "retrain", "tune"])
def test_training_help_shows_the_cpu_recipe_on_a_cpu_machine(command, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine trains the gpu recipe")
    text = _help(capsys, monkeypatch, command)
    rows = _rows(text)
    assert "takes the cpu recipe" in text
    assert "[default: cpu]" in rows["--recipe"]
    for field, value in {**RECIPES["cpu"], **({"epochs": 5} if command == "tune" else {})}.items():
        assert f"[default: {value}]" in rows["--" + field.replace("_", "-")], field
    # What the issue found misleading: the field defaults of the small demo network.
    assert (
        "[default: tf_efficientnet_lite0]" in rows["--arch"]
        and "[default: 14.0]" in rows["--max-minutes"]
    )


def test_the_overall_help_lists_every_command_and_loads_no_flow():
    script = (
        "import sys; from flows.cli import console; code = console(['--help']); "
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} "
        "& {'prefect', 'torch', 'pyarrow', 'great_expectations', 'flows.train'}), code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        cwd=REPO,
        timeout=120,
        check=True,
    )
    assert result.stdout.rstrip().endswith("LOADED [] 0"), result.stdout
    listed = {line.strip("│ ").split(" ")[0] for line in result.stdout.splitlines()}
    assert set(COMMANDS) <= listed


# The README's and bench's command lines (placeholders filled in) and the spellings kept from
# the argparse command, each with what it must parse to.
DOCUMENTED = [
    (
        "score --output O --source S --prefix bin-images/1000 --model champion --limit 500 "
        "--review-budget-percent 10 --review-budget-count 7 --review-max-p-recorded 0.05 "
        "--drift-max-psi 0.3 --no-ingest",
        {
            "output": "O",
            "source": "S",
            "prefix": "bin-images/1000",
            "model": "champion",
            "limit": 500,
            "review": ReviewPolicy(budget_percent=10, budget_count=7, max_p_recorded=0.05),
            "drift": DriftPolicy(max_psi=0.3),
            "ingest_first": False,
        },
    ),
    ("score --no-ingest-first", {"ingest_first": False}),
    (
        "train --output O --manifest V --recipe gpu --arch resnet34 --no-pretrained "
        "--epochs 30 --image-size=224 --loss ordinal",
        {
            "output": "O",
            "manifest": "V",
            "config": TrainConfig(
                recipe="gpu",
                arch="resnet34",
                pretrained=False,
                epochs=30,
                image_size=224,
                loss="ordinal",
            ),
        },
    ),
    (
        "retrain --output O --policy moderate --benchmark-split F --recipe abid-baseline "
        "--patience 3 --seed 4 --weights W.pt",
        {
            "output": "O",
            "policy": "moderate",
            "benchmark_split": "F",
            "config": TrainConfig(recipe="abid-baseline", patience=3, seed=4, weights="W.pt"),
        },
    ),
    ("tune --output O --space lr=1e-3,3e-3;loss=ce,ordinal --trials 2 --lr 0.01", None),
    ("ingest --source S --output O --limit 5 --keys-from K --dask local:2", None),
    ("pipeline --source S --output O --policy open:3 --benchmark-split F", None),
    ("evaluate --output O --model champion --split benchmark", None),
    ("promote --output O --model V --split benchmark", None),
    ("review --output O --top 10 --queued-date 2026-01-02 --reviewer ana --wait-minutes 60", None),
    ("record-verdicts --output O --verdicts checked.csv --reviewer ana", None),
    ("demo --train-minutes 6.5", {"train_minutes": 6.5}),
    ("demo --bins 300 --arrivals 120 --train-epochs 5", {"bins": 300, "train_epochs": 5}),
    ("validate --output O --source-anonymous --s3-endpoint-url http://127.0.0.1:9", None),
]


@pytest.mark.parametrize("line, expected", DOCUMENTED, ids=[d[0].split()[0] for d in DOCUMENTED])
def test_the_documented_command_lines_parse_as_they_did(line, expected):
    invocation = parse(line.split())
    assert invocation is not None and invocation.args == ()
    if expected is not None:  # a pydantic parameter not named is its default
        assert {name: invocation.arguments.get(name) for name in expected} == expected
    if "--source-anonymous" in line:
        assert invocation.environment == {
            "BINCOUNT_SOURCE_ANONYMOUS": "true",
            "BINCOUNT_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        }


def test_only_the_fields_given_reach_a_pydantic_parameter_over_its_default():
    # The recipe fills the rest at run time (TrainConfig.for_device).
    config = parse(["train", "--lr", "0.01"]).arguments["config"]
    assert config.model_fields_set == {"lr"} and config.recipe is None
    assert parse(["tune", "--lr", "0.01"]).arguments["config"] == TrainConfig(epochs=5, lr=0.01)
    review = parse(["score", "--review-budget-count", "7"]).arguments["review"]
    assert review == ReviewPolicy(budget_count=7)
    synth = parse(["synth", "D", "--bins", "3", "--append"])
    assert synth.args == ("D",) and synth.arguments == {"bins": 3, "append": True}
    predict = parse(["predict", "a.jpg", "s3://b/c.jpg", "--model", "v1", "--output", "O"])
    assert predict.args == ("a.jpg", "s3://b/c.jpg") and predict.arguments == {"model": "v1"}
    assert predict.environment == {"BINCOUNT_OUTPUT": "O"}


def test_a_bad_option_is_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--loss", "hinge"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        'bincount train: Invalid value "hinge" for --loss. Choose from: "ce", "ordinal".\n'
    )


def test_a_refused_value_names_its_option_in_one_line(capsys):
    assert console(["train", "--lr", "-1"]) == 1
    assert capsys.readouterr().err == (
        "bincount train: Expected --lr to be greater than 0, but got -1.0\n"
    )
    assert console(["synth", "D", "--bins", "1", "--max-concurrency", "0"]) == 1
    assert capsys.readouterr().err == (
        "bincount synth: Expected --max-concurrency (BINCOUNT_MAX_CONCURRENCY) to be greater "
        "than or equal to 1, but got '0'\n"
    )
    with pytest.raises(ValueError, match="Expected --lr to be greater than 0"):
        main(["train", "--lr", "-1"])  # Python callers get the exception


def test_a_platform_option_feeds_the_settings_while_the_command_runs(monkeypatch):
    monkeypatch.delenv("BINCOUNT_CHUNK_SIZE", raising=False)
    invocation = parse(["synth", "D", "--bins", "1", "--chunk-size", "9"])
    with settings_environment(invocation.environment):
        assert get_settings().chunk_size == 9
    assert "BINCOUNT_CHUNK_SIZE" not in os.environ
    assert get_settings().chunk_size == Settings.model_fields["chunk_size"].default


def test_a_refused_run_ends_with_its_one_line_and_no_traceback(prefect_api, tmp_path):
    """A manifest asked of bins never validated: the library's own sentence, once, last."""
    from prefect.settings import PREFECT_API_URL

    from bincount.core.storage import Location
    from bincount.data.ingest import ingest_metadata
    from bincount.data.manifest import CountPolicy, StaleValidation, build_manifest
    from tests.builders import write_clean_bucket

    write_clean_bucket(tmp_path / "bucket", 6)
    source, output = Location(str(tmp_path / "bucket")), Location(str(tmp_path / "out"))
    ingest_metadata(source, output)
    with pytest.raises(StaleValidation) as refused:
        build_manifest(source, output, policy=CountPolicy.parse("open:10"))
    command = [sys.executable, "-m", "flows.cli", "manifest", "--output", output.url]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    environment["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the harness's: no server to start

    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=300
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"bincount manifest: {refused.value}"

    debug = subprocess.run(
        [*command, "--debug"], capture_output=True, text=True, env=environment, timeout=300
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert f"StaleValidation: {refused.value}" in debug.stderr


def test_the_library_refusals_are_told_from_faults_of_the_program():
    from pydantic import ValidationError

    from bincount.data.manifest import StaleValidation
    from bincount.data.validate import ContractViolation
    from bincount.review.outcomes import VerdictError
    from flows.refusals import is_refusal

    try:
        ReviewPolicy(budget_percent=-1)
    except ValidationError as error:
        invalid = error
    refused = [VerdictError(["x"]), ContractViolation("x"), StaleValidation("x"), invalid]
    refused += [LookupError("no champion"), FileNotFoundError("no manifest")]
    assert all(is_refusal(error) for error in refused)
    faults = [KeyError("x"), IndexError("x"), RuntimeError("x"), TypeError("x")]
    assert not any(is_refusal(error) for error in faults)


def test_an_unexpected_error_keeps_its_traceback(tmp_path):
    deployments = tmp_path / "prefect.yaml"
    deployments.write_text("deployments:\n  - name: x\n    entrypoint: flows/nowhere.py:flow\n")
    with pytest.raises(ModuleNotFoundError, match=r"flows\.nowhere"):  # raised, not one line
        console(["serve", "--prefect-file", str(deployments)])


def test_a_command_waits_patiently_for_its_temporary_prefect_server(monkeypatch):
    """A busy machine starts Prefect's temporary server in more than Prefect's 20 s; a value
    the user set wins."""
    from flows import cli

    for name in (
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
        "PREFECT_LOGGING_EXTRA_LOGGERS",
    ):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    cli._quiet()
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    cli._quiet()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "45"
