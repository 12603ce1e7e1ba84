"""Flow: the model half of the pipeline, manifest → train → evaluate → promote."""

from __future__ import annotations

from prefect import flow

from bincount.data.manifest import DEFAULT_POLICY
from bincount.model.config import TrainConfig
from bincount.model.device import require_gpu as ensure_gpu
from flows.manifest import manifest as build_manifest
from flows.naming import run_name
from flows.promote import promote
from flows.train import train


@flow(name="retrain", flow_run_name=run_name("retrain"))
def retrain(
    source: str | None = None,
    output: str | None = None,
    policy: str = DEFAULT_POLICY,
    benchmark_split: str | None = None,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (immutable: a frozen pydantic model)
    device: str | None = None,
    require_gpu: bool = False,
) -> dict:
    """Build the manifest, train a challenger on it, and send it through the gate
    (``require_gpu``: fail at once, before any work, where there is no CUDA GPU)."""
    if require_gpu:
        ensure_gpu(device)
    built = build_manifest(
        source=source, output=output, policy=policy, benchmark_split=benchmark_split
    )
    trained = train(output=output, manifest=built["version"], config=config, device=device)
    decision = promote(output=output, model=trained["version"], manifest=built["version"])
    return {"manifest": built, "train": trained, "promotion": decision}
