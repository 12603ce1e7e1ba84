"""The commands that are not a flow's run as it stands: synth, predict, models, serve, and train
under torchrun. Each is a function whose signature and docstring are its options and help;
nothing heavy is imported before it runs.
"""

from __future__ import annotations

import os

from bincount.model.config import TrainConfig


def synth(
    dest: str,
    /,
    *,
    bins: int,
    seed: int = 0,
    max_count: int = 50,
    append: bool = False,
    defect_rate: float = 0.0,
    mismatch_rate: float = 0.0,
    truth: str | None = None,
    workers: int | None = None,
) -> dict:
    """Write a synthetic ABID bucket (bin-images/, metadata/) and what each photo really shows.

    Parameters
    ----------
    dest
        folder or s3:// URL to write bin-images/ and metadata/ to
    bins
        number of bins to write
    seed
        the bucket's seed: the same seed writes the same bins
    max_count
        largest item count (50: 99.9% of ABID)
    append
        add new bins with fresh ids
    defect_rate
        share of bins with injected faults
    mismatch_rate
        share of bins whose (self-consistent) record disagrees with the photo
    truth
        where to write what each photo really shows (None: DEST.truth beside a local folder;
        required to get one for s3://)
    workers
        processes (None: all cores)
    """
    from dataclasses import asdict

    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.synth import default_truth, synthesize

    settings = get_settings()
    truth = truth or default_truth(dest)
    summary = synthesize(
        Location.output(settings, dest),
        bins=bins,
        seed=seed,
        max_count=max_count,
        append=append,
        defect_rate=defect_rate,
        mismatch_rate=mismatch_rate,
        truth=Location.output(settings, truth) if truth else None,
        workers=workers,
    )
    return asdict(summary)


def predict(*inputs: str, model: str = "champion", device: str | None = None) -> list[dict]:
    """Count the items in bin photos (files or s3:// URLs), as JSON; exit 1 when one could not
    be read or decoded.

    Parameters
    ----------
    inputs
        photos: paths, file:// or s3:// URLs
    model
        model version or 'champion'
    device
        cuda, cuda:1 or cpu (None: cuda when present)
    """
    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.nightly.scorer import predict_images
    from bincount.nightly.scoring import load_scorer

    if not inputs:
        raise ValueError("Expected one or more photos (paths or s3:// URLs), but got none")
    settings = get_settings()
    scorer = load_scorer(Location.output(settings), model, device=device)
    buckets: dict[str, Location] = {}

    def read(name: str) -> bytes:
        if name.startswith(("s3://", "s3a://")):
            bucket, _, key = name.split("://", 1)[1].partition("/")
            if bucket not in buckets:
                buckets[bucket] = Location.source(settings, f"s3://{bucket}")
            return buckets[bucket].read_bytes(key)
        with open(name.removeprefix("file://"), "rb") as handle:
            return handle.read()

    return predict_images(scorer, list(inputs), read=read)


def models() -> list[dict]:
    """List the registered models of the output, the champion marked."""
    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.model.registry import list_models

    return list_models(Location.output(get_settings()))


def serve(*, prefect_file: str | None = None) -> str:
    """Serve every deployment of deployments/prefect.yaml (schedules included) from this
    process, until stopped.

    Parameters
    ----------
    prefect_file
        deployments file (None: deployments/prefect.yaml)
    """
    from flows.serve import serve_deployments

    serve_deployments(prefect_file)
    return "stopped serving"


def train_under_torchrun(
    output: str | None = None,
    manifest: str | None = None,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (immutable: a frozen pydantic model)
    device: str | None = None,
) -> dict | None:
    """``bincount train`` under torchrun: rank 0 runs the train flow (the image cache, its share
    of the training, the registration); every other rank joins that training through the
    library step the flow's training task calls, with the config the flow resolves."""
    if int(os.environ.get("RANK", "0")) == 0:
        from flows.train import train

        return train(output=output, manifest=manifest, config=config, device=device)

    from bincount.core.settings import get_settings
    from bincount.core.storage import Location
    from bincount.data.manifest import load_manifest
    from bincount.model.training import train_model

    location = Location.output(get_settings(), output)
    _, details = load_manifest(location, manifest)
    # Joining the process group waits for rank 0, which joins once its cache is complete.
    train_model(
        location, config.for_device(device), manifest_version=details.version, device=device
    )
    return None
