"""torch.compile in training: the modes the config takes, the model version it leaves alone, and
a real inductor compile of a tiny network through the training loop, its first step timed."""

from __future__ import annotations

import pydantic
import pytest
import torch
from torch._dynamo.utils import counters

from bincount.core.storage import Location
from bincount.model.config import COMPILE_MODES, TrainConfig
from bincount.model.registry import read_model_record
from bincount.testing.pipeline import run_pipeline, tiny_config
from tests.builders import write_clean_bucket

# The cheapest real compile found: inductor's first training step of timm's test_resnet at 32 px
# took 36 s on this machine's 2 shared cores (load about 1), mobilenet_v3_small's (the tiny
# config's network) 120 s (load about 3), so the real compile runs on test_resnet.
CHEAP_ARCH = "timm/test_resnet"


@pytest.mark.parametrize(
    ("given", "mode"),
    [
        (False, None),
        (True, "default"),
        ("off", None),
        ("true", "default"),
        *((name, name) for name in COMPILE_MODES),
    ],
)
def test_compile_takes_off_true_or_a_torch_compile_mode(given, mode):
    assert TrainConfig(compile=given).compile_mode == mode


@pytest.mark.parametrize("given", ["fast", "max_autotune", 2, None])
def test_compile_refuses_anything_else_saying_what_it_takes(given):
    with pytest.raises(pydantic.ValidationError, match="Expected compile to be false, true or"):
        TrainConfig(compile=given)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", False),
        ("--compile", True),
        ("--no-compile", False),
        ("--compile max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs"),
        ("--compile=reduce-overhead", "reduce-overhead"),
    ],
)
def test_the_train_command_takes_a_compile_mode(line, expected):
    from flows.cli import parse

    assert parse(["train", *line.split()]).arguments["config"].compile == expected


def test_compiling_in_any_mode_leaves_the_model_version_and_old_records_alone():
    assert TrainConfig().compile is False
    plain = TrainConfig().fingerprint("m1")
    for mode in (True, *COMPILE_MODES):
        assert TrainConfig(compile=mode).fingerprint("m1") == plain
    # Saved as given: a config saved while the field was a bool dumps the same bool again.
    assert TrainConfig(compile=True).model_dump()["compile"] is True
    assert TrainConfig(compile="reduce-overhead").model_dump()["compile"] == "reduce-overhead"


def test_a_compiled_training_compiles_once_times_its_first_step_and_keeps_the_version(
    tmp_path, monkeypatch
):
    root = tmp_path / "bucket"
    write_clean_bucket(root, 40)
    source, output = Location(str(root)), Location(str(tmp_path / "out"))
    torch._dynamo.reset()
    counters.clear()
    # Every step has the same shapes (the last, partial batch dropped) and the train/eval flag
    # is back before each epoch: a recompile would be a shape or guard that varies, which CUDA
    # graphs ("reduce-overhead") could not replay.
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    config = tiny_config(arch=CHEAP_ARCH, batch_size=8, epochs=2, compile="default")
    run = run_pipeline(source, output, policy="max:5", config=config, until="train")

    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the training step
    first, second = run.training.history
    assert 0 < first["first_step_seconds"] <= first["seconds"]
    assert "first_step_seconds" not in second  # the run's first step only
    saved = read_model_record(output, run.training.version)
    assert saved.config.compile == "default"
    assert saved.metrics.history[0]["first_step_seconds"] == first["first_step_seconds"]

    # Asked for uncompiled, the same model is found finished: compiling is not in its version.
    again = run_pipeline(
        source,
        output,
        manifest_version=run.manifest_version,
        config=tiny_config(arch=CHEAP_ARCH, batch_size=8, epochs=2),
        until="train",
    )
    assert again.training.version == run.training.version and not again.training.created
