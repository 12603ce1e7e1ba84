"""Versioned manifests: the valid bins, their label and a deterministic split.

* Only bins that passed the last validation of the *current* bins are used.
* A count policy picks the labels: ``moderate`` (0-5, the ABID challenge's moderate task),
  ``hard`` (every count), ``max:K``, or ``open:K`` (every bin: counts 0..K as they are, every
  larger count as one class K+1, "more than K", so a model can say a bin is beyond its range
  instead of forcing a count on it).
* The split comes from a hash of the image id alone, so a bin keeps its split as the data grows
  and every class is split in the same proportions (the hash is independent of the label).
* With the ABID challenge validation list, those bins are the test split and nothing else is:
  no benchmark bin is ever trained on.
* The version is a hash of the manifest's content and policy: the same inputs give the same
  version, and a manifest is never rewritten.
* A reviewer's verdict outranks the record (``bincount.review.outcomes``): the latest verdict of
  a bin gives its count, which the policy then admits and labels like a record. Each row says
  where its label came from (``label_source``: ``record`` or ``review``, with the verdict and
  its ``review_outcome_id``); "the record is right" keeps the record's label, marked confirmed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.contracts import table_contract
from bincount.core.sources import filled_sources, open_sources
from bincount.core.storage import Location
from bincount.core.tables import MANIFESTS, QUARANTINE, bins_fingerprint, current_bins, part_key
from bincount.data.manifestdetails import (
    BenchmarkDetails,
    Excluded,
    LabelSources,
    ManifestDetails,
)
from bincount.data.validate import VALIDATE_STAGE, latest_validation
from bincount.review.outcomes import latest_verdicts
from bincount.review.verdicts import RECORD_CORRECT

SPLITS = ("train", "val", "test")
# Counts 0-10 and "more than 10" (91% of real bins hold 10 or fewer): every bin has a label, so
# the model can say "beyond my range" instead of forcing a bin of 40 into 0..10, and a record
# off by a few items below 11 shows. open:10 beat open:5 at finding wrong records on synthetic
# nights (bench/review.py: average precision 0.49 against 0.25 and 0.13, same recipe).
DEFAULT_POLICY = "open:10"
LATEST_MANIFEST = f"{MANIFESTS}/_latest.json"
_HASH_BUCKETS = 10_000
_BASE_COLUMNS = ["image_id", "image_uri", "label", "split"]  # what a version hashes without reviews


class StaleValidation(RuntimeError):
    """The bins changed since they were last validated (or never were)."""


@dataclass(frozen=True)
class CountPolicy:
    """Which labels a manifest keeps, and whether counts above ``max_count`` share one class."""

    name: str
    max_count: int | None
    open_top: bool = False

    @classmethod
    def parse(cls, text: str) -> CountPolicy:
        text = text.strip().lower()
        if text == "moderate":
            return cls("moderate", 5)
        if text == "hard":
            return cls("hard", None)
        if match := re.fullmatch(r"max:(\d+)", text):
            return cls(text, int(match[1]))
        if match := re.fullmatch(r"open:(\d+)", text):
            return cls(text, int(match[1]), open_top=True)
        raise ValueError(
            f"Expected a count policy moderate, hard, max:K or open:K, but got {text!r}"
        )

    def admits(self, labels: pa.Array) -> pa.Array:
        if self.max_count is None or self.open_top:
            return pc.greater_equal(labels, 0)
        return pc.and_(pc.greater_equal(labels, 0), pc.less_equal(labels, self.max_count))

    def label(self, expected_quantity: int) -> int:
        """The training label of a recorded count: itself, or K+1 ("more than K") when open."""
        if self.open_top and expected_quantity > self.max_count:
            return self.max_count + 1
        return expected_quantity


@dataclass(frozen=True)
class ManifestSummary:
    """A built (or found again) manifest."""

    version: str
    uri: str
    policy: str
    rows: int
    created: bool
    distribution: dict[str, dict[int, int]]
    excluded: dict[str, int]
    benchmark: dict | None
    # Where the labels came from: records, reviewers' counts, records confirmed by a reviewer.
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "uri": self.uri,
            "policy": self.policy,
            "rows": self.rows,
            "created": self.created,
            "distribution": {
                s: {str(k): v for k, v in d.items()} for s, d in self.distribution.items()
            },
            "excluded": self.excluded,
            "benchmark": self.benchmark,
            "labels": self.labels,
        }


def split_of(image_id: str, *, val_percent: float, test_percent: float) -> str:
    """The split of one bin, from a hash of its id alone (stable as the data grows)."""
    bucket = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") % _HASH_BUCKETS
    share = 100.0 * bucket / _HASH_BUCKETS
    if share < test_percent:
        return "test"
    if share < test_percent + val_percent:
        return "val"
    return "train"


def read_benchmark_split(text: str) -> dict[str, int]:
    """The ABID challenge list ``[[idx, quantity], ...]`` as ``{image_id: quantity}``.

    The challenge names image ``idx`` as ``"%05d.jpg" % (idx + 1)``.
    """
    pairs = json.loads(text)
    if not isinstance(pairs, list):
        raise ValueError(f"Expected a JSON list of [idx, quantity], but got {type(pairs).__name__}")
    split = {}
    for pair in pairs:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)
        ):
            raise ValueError(f"Expected [idx, quantity] integer pairs, but got {pair!r}")
        split[f"{pair[0] + 1:05d}"] = pair[1]
    return split


def build_manifest(
    source: Location,
    output: Location,
    *,
    policy: CountPolicy,
    benchmark: Mapping[str, int] | None = None,
    benchmark_name: str | None = None,
    val_percent: float = 10.0,
    test_percent: float = 10.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ManifestSummary:
    """Build the manifest of the validated current bins (or return the identical existing one).

    Each image URI is under the source its bin was ingested from; ``source`` stands for bins
    ingested before sources were recorded.
    """
    if not (val_percent >= 0 and test_percent >= 0 and val_percent + test_percent < 100):
        raise ValueError(
            f"Expected val and test percentages that leave a train split, but got "
            f"{val_percent} and {test_percent}"
        )
    bins = current_bins(output, source.url)
    validated = latest_validation(output)
    bins_fp = bins_fingerprint(bins)
    if validated is None or validated["bins_fingerprint"] != bins_fp:
        raise StaleValidation(
            f"Expected bins validated by `bincount validate` (fingerprint {bins_fp}), but the "
            f"last validation covered {validated['bins_fingerprint'] if validated else 'nothing'}"
            ": run validate first"
        )
    quarantined = _validate_quarantine(output, bins_fp)
    valid = bins.filter(pc.invert(pc.is_in(_versions(bins), quarantined)))
    verdicts = _verdicts_of(valid, latest_verdicts(output), source.url)
    counts = pa.array(
        [
            record if verdict is None else verdict["counted_quantity"]
            for record, verdict in zip(
                valid.column("expected_quantity").to_pylist(), verdicts, strict=True
            )
        ],
        pa.int64(),
    )
    admit = policy.admits(counts)
    admitted = valid.filter(admit)
    verdicts = [v for v, keep in zip(verdicts, admit.to_pylist(), strict=True) if keep]
    counts = counts.filter(admit).to_pylist()
    row_sources = filled_sources(admitted, source.url).to_pylist()
    sources = sorted(set(filled_sources(bins, source.url).to_pylist())) or [source.url]
    locations = open_sources(source, sources)

    ids = admitted.column("image_id").to_pylist()
    labels = [policy.label(count) for count in counts]
    records = admitted.column("expected_quantity").to_pylist()
    label_sources = [
        "review" if count != record else "record"
        for count, record in zip(counts, records, strict=True)
    ]
    splits = [
        "test"
        if benchmark is not None and image_id in benchmark
        else split_of(
            image_id,
            val_percent=val_percent,
            test_percent=0.0 if benchmark is not None else test_percent,
        )
        for image_id in ids
    ]
    manifest = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "image_uri": pa.array(
                [
                    locations[url].uri(key)
                    for url, key in zip(
                        row_sources, admitted.column("image_key").to_pylist(), strict=True
                    )
                ],
                pa.string(),
            ),
            "label": pa.array(labels, pa.int32()),
            "split": pa.array(splits, pa.string()),
            "label_source": pa.array(label_sources, pa.string()),
            "review_verdict": pa.array([v and v["verdict"] for v in verdicts], pa.string()),
            "review_outcome_id": pa.array([v and v["outcome_id"] for v in verdicts], pa.string()),
        }
    ).sort_by("image_id")
    manifest = table_contract("manifest").conform(manifest)

    version = manifest_version(manifest, policy.name)
    distribution = {s: Counter() for s in SPLITS}
    for label, split in zip(labels, splits, strict=True):
        distribution[split][label] += 1
    folder = f"{MANIFESTS}/{version}"
    created = not output.exists(f"{folder}/_manifest.json")
    details = ManifestDetails(
        version=version,
        policy=policy.name,
        max_count=policy.max_count,
        open_top=policy.open_top,
        rows=manifest.num_rows,
        bins_fingerprint=bins_fp,
        source=sources[0],
        sources=sources,
        val_percent=val_percent,
        test_percent=None if benchmark is not None else test_percent,
        distribution={s: dict(sorted(distribution[s].items())) for s in SPLITS},
        excluded=Excluded(
            quarantined_by_validation=bins.num_rows - valid.num_rows,
            outside_policy=valid.num_rows - admitted.num_rows,
        ),
        benchmark=_benchmark_details(benchmark, benchmark_name, admitted) if benchmark else None,
        labels=LabelSources(
            from_records=label_sources.count("record"),
            from_reviews=label_sources.count("review"),
            records_confirmed_by_review=sum(
                v is not None and v["verdict"] == RECORD_CORRECT for v in verdicts
            ),
            reviewed=sum(v is not None for v in verdicts),
        ),
        created_at=clock().isoformat() if created else None,
    )
    if created:
        write_manifest(output, manifest, details)
    output.write_bytes(LATEST_MANIFEST, json.dumps({"version": version}).encode())
    return ManifestSummary(
        version=version,
        uri=output.uri(folder),
        policy=policy.name,
        rows=manifest.num_rows,
        created=created,
        distribution={s: dict(sorted(distribution[s].items())) for s in SPLITS},
        excluded=details.excluded.model_dump(mode="json"),
        benchmark=details.benchmark and details.benchmark.model_dump(mode="json"),
        labels=details.labels.model_dump(mode="json"),
    )


def _verdicts_of(bins: pa.Table, verdicts: dict, fallback_source: str) -> list[dict | None]:
    """The latest review verdict of each bin (by source and id), None where none was given."""
    if not verdicts:
        return [None] * bins.num_rows
    keys = zip(
        filled_sources(bins, fallback_source).to_pylist(),
        bins.column("image_id").to_pylist(),
        strict=True,
    )
    return [verdicts.get(key) for key in keys]


def _validate_quarantine(output: Location, bins_fp: str) -> pa.Array:
    """The object versions (key and ETag) quarantined by the validation of exactly these bins."""
    key = part_key(QUARANTINE, bins_fp, VALIDATE_STAGE)
    if not output.exists(key):
        return pa.array([], pa.string())
    rows = output.read_parquet(key)
    versions = pc.binary_join_element_wise(rows.column("object_key"), rows.column("etag"), "\x1f")
    return versions.combine_chunks().drop_null()


def _versions(bins: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(bins.column("metadata_key"), bins.column("etag"), "\x1f")


def _benchmark_details(
    benchmark: Mapping[str, int], name: str | None, admitted: pa.Table
) -> BenchmarkDetails:
    labels = dict(
        zip(
            admitted.column("image_id").to_pylist(),
            admitted.column("expected_quantity").to_pylist(),
            strict=True,
        )
    )
    found = [image_id for image_id in benchmark if image_id in labels]
    return BenchmarkDetails(
        name=name,
        listed=len(benchmark),
        in_manifest=len(found),
        label_mismatches=sum(benchmark[i] != labels[i] for i in found),
    )


def manifest_version(manifest: pa.Table, policy: str) -> str:
    """The version of a manifest's rows under count policy ``policy``: a hash of its content."""
    reviewed = manifest["review_verdict"].null_count < manifest.num_rows
    # A manifest without reviews keeps the version it had before labels had a lineage.
    return _version(manifest if reviewed else manifest.select(_BASE_COLUMNS), policy)


def write_manifest(output: Location, manifest: pa.Table, details: ManifestDetails) -> None:
    """Write a manifest's rows, then its description, under ``manifests/<version>/``."""
    folder = f"{MANIFESTS}/{details.version}"
    output.write_parquet(f"{folder}/part-0.parquet", manifest)
    # The description is written last: a manifest without it is incomplete and is rebuilt.
    document = json.dumps(details.model_dump(mode="json"), indent=2)
    output.write_bytes(f"{folder}/_manifest.json", document.encode())


def _version(manifest: pa.Table, policy: str) -> str:
    digest = hashlib.sha256(policy.encode())
    for column in manifest.column_names:
        digest.update(b"\x1d" + column.encode())
        for value in manifest.column(column).to_pylist():
            digest.update(b"\x1f" + str(value).encode())
    return digest.hexdigest()[:12]


def load_manifest(output: Location, version: str | None = None) -> tuple[pa.Table, ManifestDetails]:
    """A manifest's rows and description (validated); the latest when no version is given."""
    if version is None:
        if not output.exists(LATEST_MANIFEST):
            raise FileNotFoundError(
                f"Expected a manifest under {output.uri(MANIFESTS)}: none built"
            )
        version = json.loads(output.read_bytes(LATEST_MANIFEST))["version"]
    folder = f"{MANIFESTS}/{version}"
    if not output.exists(f"{folder}/_manifest.json"):
        raise FileNotFoundError(f"Expected manifest {version} at {output.uri(folder)}")
    details = ManifestDetails.model_validate_json(output.read_bytes(f"{folder}/_manifest.json"))
    return output.read_parquet(f"{folder}/part-0.parquet"), details
