"""A manifest's description, ``manifests/<version>/_manifest.json``, as a typed record.

Analysts and the docs read these files, so the record keeps their keys and values exactly:
``ManifestDetails.model_validate(json.loads(text))`` loads any manifest written so far, and
``json.dumps(details.model_dump(mode="json"), indent=2)`` writes the same document back. Fields
added after the first manifests (``open_top``, ``sources``, ``labels``) have defaults, so an
older description still loads; keys this record does not name (a bench's re-split adds
``split_seed`` and ``resplit_from``) are kept as they are.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BenchmarkDetails(BaseModel):
    """How the ABID challenge list given to the build matched the bins."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str | None
    listed: int
    in_manifest: int
    # The challenge's own quantity can differ from the metadata ingested now.
    label_mismatches: int


class Excluded(BaseModel):
    """Bins left out of the manifest, by why."""

    model_config = ConfigDict(frozen=True, extra="allow")

    quarantined_by_validation: int
    outside_policy: int


class LabelSources(BaseModel):
    """Where the labels came from: records, reviewers' counts, records a reviewer confirmed."""

    model_config = ConfigDict(frozen=True, extra="allow")

    from_records: int
    from_reviews: int
    records_confirmed_by_review: int
    reviewed: int


class ManifestDetails(BaseModel):
    """What a manifest holds and how it was built; the field order is the file's key order."""

    model_config = ConfigDict(frozen=True, extra="allow")

    version: str
    policy: str
    max_count: int | None
    open_top: bool = False
    rows: int
    bins_fingerprint: str
    source: str  # the first of ``sources``, kept for readers of one source
    sources: list[str] = []
    # ``int | float`` keeps a percentage given as 10 written as 10, not 10.0.
    val_percent: int | float
    test_percent: int | float | None  # None with a benchmark list: its bins are the test split
    distribution: dict[str, dict[int, int]]  # split -> label -> bins (keys are text in JSON)
    excluded: Excluded
    benchmark: BenchmarkDetails | None = None
    labels: LabelSources | None = None
    created_at: str | None = None  # kept as written (ISO 8601), never re-rendered

    @property
    def all_sources(self) -> list[str]:
        """Every source the manifest's images come from (``[source]`` in older manifests)."""
        return list(self.sources) or [self.source]
