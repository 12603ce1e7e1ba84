"""A manifest's bins above its top count, for training only: its ``open:K`` companion.

A manifest of counts 0..K (``moderate``, ``max:K``) leaves out the bins recorded with more
than K items. A model can still learn from them what a bin beyond its range looks like
(``TrainConfig.over_range_class``, ``bincount.model.overrange``): training reads them from the
companion, the manifest of the same validated bins under ``open:K``. Its rows within 0..K are
the manifest's own, in the same splits (the split is a hash of the id alone, and the test
split of a benchmark list is carried over), and every bin above K is one more row labelled
K+1. The companion is a manifest like any other (content-versioned, never rewritten), but it
does not become the output's latest: evaluation and promotion keep reading the manifest
itself. A train subset's companion (``bincount.data.subsets``: fewer labels for a learning
curve) is its parent's companion with the subset's train bins and the same share of the train
bins above K, drawn in the same seeded order.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.storage import Location
from bincount.data.manifest import CountPolicy, build_manifest, load_manifest
from bincount.data.manifestdetails import ManifestDetails
from bincount.data.subsets import derived_manifest, train_order

_SAME = ["image_id", "label", "split"]


class CompanionMismatch(RuntimeError):
    """The validated bins no longer give the manifest's rows: it is not the current one."""


def companion_manifest(
    source: Location, output: Location, manifest_version: str | None = None
) -> ManifestDetails:
    """Build (or find) the ``open:K`` companion of a manifest of counts 0..K.

    Raises ValueError for a manifest with an open top or no top (``open:K``, ``hard``: it
    holds every bin already), and :class:`CompanionMismatch` where the bins validated since
    give other rows within 0..K than the manifest has (build the manifest again first).
    """
    rows, details = load_manifest(output, manifest_version)
    if details.open_top or details.max_count is None:
        raise ValueError(
            f"Expected a manifest of counts 0..K (policy moderate or max:K), but manifest "
            f"{details.version} has policy {details.policy}: it holds every bin already"
        )
    top = details.max_count
    if details.model_extra.get("subset_of"):
        return _subset_companion(source, output, rows, details)
    benchmark = None
    if details.benchmark is not None:  # its test split is the benchmark's bins: keep them so
        test = rows.filter(pc.equal(rows["split"], "test"))
        benchmark = dict(zip(test["image_id"].to_pylist(), test["label"].to_pylist(), strict=True))
    summary = build_manifest(
        source,
        output,
        policy=CountPolicy(f"open:{top}", top, open_top=True),
        benchmark=benchmark,
        benchmark_name=details.benchmark and details.benchmark.name,
        val_percent=details.val_percent,
        test_percent=10.0 if details.test_percent is None else details.test_percent,
        latest=False,
    )
    _check_within_range(output, summary.version, rows, details)
    return load_manifest(output, summary.version)[1]


def _subset_companion(
    source: Location, output: Location, rows: pa.Table, details: ManifestDetails
) -> ManifestDetails:
    """A train subset's companion: its parent's, with the subset's train bins within 0..K and
    the same share of the train bins above K (the first in the subset's seeded order)."""
    parent = companion_manifest(source, output, details.model_extra["subset_of"])
    full, _ = load_manifest(output, parent.version)
    how = details.model_extra["train_subset"]
    train = pc.equal(full["split"], "train")
    above = full.filter(pc.and_(train, pc.greater(full["label"], details.max_count)))
    drawn = round(above.num_rows * how["bins"] / how["of"])
    kept = set(train_order(above["image_id"].to_pylist(), seed=how["seed"])[:drawn])
    kept |= set(rows.filter(pc.equal(rows["split"], "train"))["image_id"].to_pylist())
    of = sum(parent.distribution["train"].values())
    derived = derived_manifest(
        output, parent.version, kept, train_subset={**how, "bins": len(kept), "of": of}
    )
    _check_within_range(output, derived.version, rows, details)
    return derived


def _check_within_range(
    output: Location, companion_version: str, rows: pa.Table, details: ManifestDetails
) -> None:
    companion, _ = load_manifest(output, companion_version)
    within = companion.filter(pc.less_equal(companion["label"], details.max_count))
    if within.select(_SAME).to_pylist() != rows.select(_SAME).to_pylist():
        raise CompanionMismatch(
            f"Expected the validated bins to give manifest {details.version}'s {rows.num_rows} "
            f"rows within 0..{details.max_count}, but they give {within.num_rows} others: the "
            "bins changed since it was built; build the manifest again, then train"
        )
