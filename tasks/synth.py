"""Task: write a synthetic ABID bucket."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from bincount.core.settings import get_settings
from bincount.core.storage import Location
from bincount.synth import CameraFault, SynthSummary, synthesize
from tasks.runtime import timed_task


@timed_task("long_timeout_s", name="synthesize-bucket", cache_policy=NO_CACHE)
def synthesize_bucket(
    dest: str,
    bins: int,
    seed: int,
    max_count: int,
    append: bool,
    defect_rate: float,
    mismatch_rate: float = 0.0,
    truth: str | None = None,
    exposure: float = 1.0,
    camera: str | None = None,
) -> SynthSummary:
    """Write synthetic bins (photos and metadata) in the real bucket's layout."""
    settings = get_settings()
    return synthesize(
        Location.output(settings, dest),
        bins=bins,
        seed=seed,
        max_count=max_count,
        append=append,
        defect_rate=defect_rate,
        mismatch_rate=mismatch_rate,
        truth=Location.output(settings, truth) if truth else None,
        exposure=exposure,
        camera=CameraFault.parse(camera) if camera else None,
    )
