"""Fewer training labels, the same held-out bins: a manifest derived from another by keeping
only some of its train rows, for a learning curve.

The train rows kept are the first ``size`` in an order drawn from a hash of each bin's id and a
seed, so with one seed a smaller subset lies inside every larger one. The validation and test
rows are kept exactly as they are: every subset is scored on the bins its parent is. The
derived manifest is versioned by its content as any manifest is (so the whole train split gives
the parent's version back), records what it was derived from, and does not become the latest
manifest: a training names it with ``--manifest``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.storage import Location
from bincount.core.tables import MANIFESTS
from bincount.data.manifest import SPLITS, load_manifest, manifest_version, write_manifest
from bincount.data.manifestdetails import LabelSources, ManifestDetails
from bincount.review.verdicts import RECORD_CORRECT


def train_order(image_ids: list[str], *, seed: int) -> list[str]:
    """``image_ids`` in the order a seed draws them: a hash of the seed and each id alone, so an
    id's place does not depend on which other ids are there."""
    return sorted(image_ids, key=lambda i: hashlib.sha256(f"{seed}/{i}".encode()).digest())


def train_subset(
    output: Location,
    version: str,
    size: int,
    *,
    seed: int = 0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ManifestDetails:
    """The manifest of ``version`` with only ``size`` of its train rows (the first in
    :func:`train_order`), its val and test rows as they are; written once, and found again."""
    if size < 1:
        raise ValueError(f"Expected a subset of at least 1 train bin, but got {size}")
    rows, parent = load_manifest(output, version)
    train = rows.filter(pc.equal(rows["split"], "train"))
    if size >= train.num_rows:
        return parent
    kept = set(train_order(train["image_id"].to_pylist(), seed=seed)[:size])
    keep = pc.or_(pc.not_equal(rows["split"], "train"), pc.is_in(rows["image_id"], pa.array(kept)))
    subset = rows.filter(keep)
    derived = manifest_version(subset, parent.policy)
    if output.exists(f"{MANIFESTS}/{derived}/_manifest.json"):
        return load_manifest(output, derived)[1]
    distribution = {s: Counter() for s in SPLITS}
    for label, split in zip(subset["label"].to_pylist(), subset["split"].to_pylist(), strict=True):
        distribution[split][label] += 1
    details = ManifestDetails.model_validate(
        {
            **parent.model_dump(mode="json"),
            "version": derived,
            "rows": subset.num_rows,
            "distribution": {s: dict(sorted(distribution[s].items())) for s in SPLITS},
            "labels": _label_sources(subset),
            "created_at": clock().isoformat(),
            "subset_of": parent.version,
            "train_subset": {"bins": size, "of": train.num_rows, "seed": seed},
        }
    )
    write_manifest(output, subset, details)
    return details


def _label_sources(rows: pa.Table) -> LabelSources:
    sources = rows["label_source"].to_pylist()
    verdicts = rows["review_verdict"].to_pylist()
    return LabelSources(
        from_records=sources.count("record"),
        from_reviews=sources.count("review"),
        records_confirmed_by_review=verdicts.count(RECORD_CORRECT),
        reviewed=sum(v is not None for v in verdicts),
    )
