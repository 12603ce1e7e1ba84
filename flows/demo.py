"""Flow: the demo, the whole chain on a synthetic bucket in a local folder."""

from __future__ import annotations

import os

from prefect import flow

from flows.data import data_pipeline
from tasks.synth import synthesize_bucket


@flow(name="demo")
def demo(workdir: str = "demo-output", bins: int = 2000, seed: int = 7) -> dict:
    """Synthesize a bucket (once), then run the data pipeline on it."""
    bucket = os.path.join(workdir, "bucket")
    output = os.path.join(workdir, "output")
    synthesized = None
    if not os.path.isdir(os.path.join(bucket, "metadata")):
        synthesized = synthesize_bucket(
            bucket, bins=bins, seed=seed, max_count=8, append=False, defect_rate=0.01
        )
    pipeline = data_pipeline(source=bucket, output=output, policy="moderate")
    return {
        "bucket": bucket,
        "output": output,
        "synthesized": synthesized.bins if synthesized else "reused",
        "pipeline": pipeline,
    }
