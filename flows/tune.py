"""Flow: map training trials over a search space and send the best through the gate."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from bincount.model.config import TrainConfig
from bincount.model.tuning import SearchSpace
from flows.naming import run_name
from flows.promote import promote
from tasks.images import cache_manifest_images
from tasks.tuning import record_study, run_trial


# Trials share this machine's cores: one at a time. Spread them over workers with Dask instead.
@flow(name="tune", flow_run_name=run_name("tune"), task_runner=ThreadPoolTaskRunner(max_workers=1))
def tune(
    output: str | None = None,
    manifest: str | None = None,
    space: str = "lr=0.001,0.003;loss=ce,ordinal",
    trials: int | None = None,
    config: TrainConfig = TrainConfig(epochs=5),  # noqa: B008 (immutable: a frozen pydantic model)
) -> dict:
    """Train every trial of the space (or a sample of it), record them, promote the best."""
    base = config.for_device()  # trials run on this machine's recipe unless one is given
    search = SearchSpace.parse(space)
    configs = search.trials(base, limit=trials, seed=base.seed)
    cached = [
        cache_manifest_images(output, manifest, size)
        for size in sorted({config.image_size for config in configs})
    ]
    manifest_version = cached[0].manifest_version
    study = search.study_name(manifest_version, base)
    rows = run_trial.map(
        unmapped(output),
        unmapped(manifest_version),
        unmapped(study),
        list(range(len(configs))),
        configs,
    ).result()
    best = record_study(output, study, rows)
    decision = promote(output=output, model=best["model_version"], manifest=manifest_version)
    return {"study": study, "trials": rows, "best": best, "promotion": decision}
