"""The command is built from the flows: every flow parameter (and every field of a pydantic
parameter) has an option whose help shows its default, and the older spellings still parse."""

from __future__ import annotations

import inspect
import os

import pytest
from pydantic import BaseModel

from bincount.core.settings import Settings
from bincount.model.config import TrainConfig
from bincount.review.ranking import ReviewPolicy
from flows.cli import FIELD_PREFIX, FLOWS, build_parser, flow_arguments, flow_parameters, load_flow


def _help(capsys, *argv: str) -> str:
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def _options(command: str, flow) -> list[tuple[str, object]]:
    """Each option a flow's parameters should have, with the default its help should show."""
    expected = []
    for parameter, annotation in flow_parameters(flow):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            prefix = FIELD_PREFIX.get(parameter.name, parameter.name + "-")
            for name, field in annotation.model_fields.items():
                default = getattr(parameter.default, name, field.get_default())
                expected.append(("--" + (prefix + name).replace("_", "-"), default))
        else:
            expected.append(("--" + parameter.name.replace("_", "-"), parameter.default))
    return expected


@pytest.mark.parametrize("command", sorted(FLOWS))
def test_every_flow_parameter_has_an_option_that_shows_its_default(command, capsys):
    flow = load_flow(FLOWS[command])
    text = _help(capsys, command)
    options = text.split(" options: ", 1)[1]  # past the usage line
    for option, default in _options(command, flow):
        assert f" {option} " in options or f" {option}," in options, f"{command}: no {option}"
        if default is inspect.Parameter.empty:  # required: no default to show
            continue
        after = options.split(f" {option}", 1)[1].removeprefix(f", --no-{option[2:]}")
        help_text = after.split(" --", 1)[0]
        if default is None:  # "none", or what None stands for ("the latest")
            assert "default: " in help_text, f"{command} {option}: {help_text}"
        else:
            assert f"default: {default}" in help_text, f"{command} {option}: {help_text}"
    for name in Settings.model_fields:
        if name not in ("aws_access_key_id", "aws_secret_access_key"):  # never on a command line
            assert "--" + name.replace("_", "-") in options, f"{command}: no setting {name}"


def test_the_overall_help_lists_every_command_and_flow_parameter(capsys):
    text = _help(capsys)
    for command in [*FLOWS, "synth", "predict", "serve", "models", "demo"]:
        assert f" {command} " in text
    assert "--patience (8)" in text and "--review-budget-percent (10.0)" in text


def test_pydantic_parameters_are_built_from_their_fields_and_old_spellings_parse():
    parser = build_parser(only="score")
    args = parser.parse_args(
        ["score", "--output", "O", "--review-budget-count", "7", "--no-ingest", "--limit", "3"]
    )
    arguments = flow_arguments(args, load_flow(FLOWS["score"]))
    assert arguments["review"] == ReviewPolicy(budget_count=7)
    assert arguments["ingest_first"] is False and arguments["limit"] == 3

    parser = build_parser(only="retrain")
    args = parser.parse_args(
        ["retrain", "--arch", "mobilenet_v3_small", "--patience", "3", "--seed", "4"]
    )
    config = flow_arguments(args, load_flow(FLOWS["retrain"]))["config"]
    assert config == TrainConfig(arch="mobilenet_v3_small", patience=3, seed=4)

    args = build_parser(only="tune").parse_args(["tune", "--lr", "0.01"])
    assert flow_arguments(args, load_flow(FLOWS["tune"]))["config"] == TrainConfig(
        epochs=5, lr=0.01
    )
    with pytest.raises(SystemExit):
        build_parser(only="train").parse_args(["train", "--loss", "hinge"])


def test_a_platform_option_feeds_the_settings_while_the_command_runs(monkeypatch):
    from bincount.core.settings import get_settings
    from flows.cli import settings_environment

    monkeypatch.delenv("BINCOUNT_CHUNK_SIZE", raising=False)
    args = build_parser(only="synth").parse_args(["synth", "D", "--bins", "1", "--chunk-size", "9"])
    with settings_environment(args):
        assert get_settings().chunk_size == 9
    assert "BINCOUNT_CHUNK_SIZE" not in os.environ
    assert get_settings().chunk_size == Settings.model_fields["chunk_size"].default
