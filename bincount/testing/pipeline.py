"""The library chain as tests and benchmarks run it, written out once: ingest -> validate ->
manifest -> image cache -> train -> evaluate -> promote, without Prefect around it.

``run_pipeline`` takes its limits and sizes from the settings' own defaults (``defaults()``), the
values a run gets when nothing is set, so no caller restates them; ``tiny_config`` is the one
tiny model the tests train in seconds on a CPU. Each step is the library's own function, the one
the tasks wrap: the rig adds no second implementation, only the order and the timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Literal

from bincount.core.settings import Settings
from bincount.core.storage import Location
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import CountPolicy, ManifestSummary, build_manifest, load_manifest
from bincount.data.validate import validate_bins
from bincount.images.cache import build_image_cache
from bincount.model.config import TrainConfig
from bincount.model.evaluation import evaluate_model
from bincount.model.records import EvaluationReport, PromotionDecision
from bincount.model.registry import champion, decide_promotion, record_decision
from bincount.model.training import TrainResult, train_model

# The chain's steps in order; ``until`` names the last one run.
STEPS = ("manifest", "cache", "train", "evaluate", "promote")
Step = Literal["manifest", "cache", "train", "evaluate", "promote"]

TINY = {"arch": "mobilenet_v3_small", "image_size": 32, "batch_size": 16, "epochs": 1}


@cache
def defaults() -> Settings:
    """The settings as shipped: every field at its default, whatever ``BINCOUNT_*`` says where
    the tests run (a test that means "the default" reads it here, never a restated literal)."""
    return Settings.model_construct()


def tiny_config(**overrides: Any) -> TrainConfig:
    """The tests' tiny model: MobileNetV3-small at 32 px, batch 16, one epoch; ``overrides``
    change any field (``epochs=2``, ``lr=1e-3``, ``seed=1``...)."""
    return TrainConfig(**{**TINY, **overrides})


@dataclass(frozen=True)
class PipelineRun:
    """What one run of the chain made: the manifest (its summary when this run built it), and
    as far as it went, the model, its evaluation report and the promotion decision, each as the
    library returns it; ``seconds`` times each step run."""

    source: Location
    output: Location
    manifest_version: str
    manifest: ManifestSummary | None = None
    training: TrainResult | None = None
    evaluation: EvaluationReport | None = None
    decision: PromotionDecision | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def model_version(self) -> str | None:
        return self.training.version if self.training else None


def run_pipeline(
    source: Location,
    output: Location,
    *,
    policy: str | CountPolicy = "open:3",
    config: TrainConfig | None = None,
    until: Step = "promote",
    manifest_version: str | None = None,
    limit: int | None = None,
    benchmark: Mapping[str, int] | None = None,
    benchmark_name: str | None = None,
    split: str = "test",
    shard_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    on_epoch: Callable | None = None,
    settings: Settings | None = None,
) -> PipelineRun:
    """Run the chain on ``source`` into ``output`` up to step ``until``.

    With ``manifest_version`` the data steps are skipped and that (existing) manifest is used.
    ``config`` defaults to ``tiny_config()``; ``split`` is the one evaluated; ``promote`` makes
    the model the output's first champion (an output that has one is refused: a challenger goes
    through the promote flow's gate). ``settings`` (default: ``defaults()``) give the limits,
    sizes and concurrency.
    """
    if until not in STEPS:
        raise ValueError(f"Expected until to be one of {', '.join(STEPS)}, but got {until!r}")
    settings = settings or defaults()
    config = config or tiny_config()
    last = STEPS.index(until)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal started
        seconds[step] = time.perf_counter() - started
        started = time.perf_counter()

    run = PipelineRun(source, output, manifest_version or "", seconds=seconds)
    if manifest_version is None:
        ingest_metadata(
            source,
            output,
            limit=limit,
            concurrency=settings.max_concurrency,
            partitions=settings.list_partitions,
            chunk_size=settings.chunk_size,
            limits=settings.metadata_limits(),
            fault_share=settings.read_fault_share,
        )
        lap("ingest")
        validate_bins(
            source,
            output,
            max_expected_quantity=settings.max_expected_quantity,
            partitions=settings.list_partitions,
        )
        lap("validate")
        policy = policy if isinstance(policy, CountPolicy) else CountPolicy.parse(policy)
        summary = build_manifest(
            source, output, policy=policy, benchmark=benchmark, benchmark_name=benchmark_name
        )
        lap("manifest")
        run = replace(run, manifest_version=summary.version, manifest=summary)
    if last < STEPS.index("cache"):
        return run

    rows, details = load_manifest(output, run.manifest_version)
    build_image_cache(
        source,
        output,
        rows,
        manifest_version=run.manifest_version,
        size=config.image_size,
        concurrency=settings.max_concurrency,
        limits=settings.image_limits(),
        sources=details.sources,
        shard_size=shard_size or settings.cache_shard_size,
        workers=workers,
    )
    lap("cache")
    if last < STEPS.index("train"):
        return run

    training = train_model(
        output, config, manifest_version=run.manifest_version, on_epoch=on_epoch, device=device
    )
    lap("train")
    run = replace(run, training=training)
    if last < STEPS.index("evaluate"):
        return run

    evaluation = evaluate_model(output, training.version, split=split, device=device)
    lap("evaluate")
    run = replace(run, evaluation=evaluation)
    if until == "promote":
        if champion(output) is not None:
            raise ValueError(
                f"Expected an output without a champion to promote a first one into, but "
                f"{output.uri('models')} has one: send a challenger through the promote flow"
            )
        decision = decide_promotion(evaluation, None)
        record_decision(output, decision)
        lap("promote")
        run = replace(run, decision=decision)
    return run
