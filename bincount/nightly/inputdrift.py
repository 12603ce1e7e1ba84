"""Input drift: do tonight's photos look like those the model was judged on?

Scoring keeps a few statistics of every image it decodes (:mod:`bincount.images.stats`) in the
scores table. Each night compares their distributions with two references, beside the
prediction drift of :mod:`.monitoring`:

* **the model's reference images**: the same statistics of its evaluation set's photos (topped up
  from the manifest's other splits, in image-id order, to :data:`REFERENCE_IMAGES` when the set is
  smaller), decoded at the model's input size as scoring decodes them. Computed once, when the
  model is promoted (or the first night it scores without one), and kept with the model in
  ``models/<version>/input-reference.parquet``;
* **recent nights**: the images of the recent nights the same model scored without a drift,
  pooled (a drifted night is no yardstick: the night after a lamp failed should not look normal
  beside it).

The statistic, per image statistic: the PSI (:mod:`.stability`) of tonight's values over fixed
bins cut at the reference's deciles (fewer for a reference of under 200 values: one bin per 20),
with one more bin below the reference's smallest value and one above its largest, where the
reference has none. Sampling alone gives about ``(bins - 1)(1/n + 1/m)``: 0.1 for 100 images
against 500; a lamp at 60% light gives over 5.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bincount.core.limits import ImageLimits
from bincount.core.sources import fetch_uris, open_sources
from bincount.core.storage import Location
from bincount.core.tables import SCORES, read_table
from bincount.data.manifest import load_manifest
from bincount.images.decode import UndecodableImage, decode_or_reason
from bincount.images.stats import INPUT_STATISTICS, statistics_table
from bincount.model.registry import model_folder, read_evaluation, read_model_record
from bincount.nightly.stability import population_stability_index

REFERENCE_IMAGES = 500  # a test set smaller than this is topped up from the other splits
QUANTILE_BINS = 10
_VALUES_PER_BIN = 20  # a smaller reference gets fewer bins, so each still holds a share
_FETCH_CONCURRENCY = 32


def reference_key(model_version: str) -> str:
    return f"{model_folder(model_version)}/input-reference.parquet"


def quantile_psi(night: np.ndarray, reference: np.ndarray) -> float:
    """PSI of ``night``'s values against ``reference``'s over bins cut at the reference's
    quantiles, plus a bin below its smallest value and one above its largest.

    >>> rng = np.random.default_rng(0)
    >>> reference = rng.normal(0, 1, 1000)
    >>> quantile_psi(reference, reference)
    0.0
    >>> round(quantile_psi(reference + 3, reference), 1) > 5
    True
    """
    night, reference = np.asarray(night, np.float64), np.asarray(reference, np.float64)
    if not len(night) or not len(reference):
        raise ValueError(
            f"Expected values tonight and in the reference, but got {len(night)} and "
            f"{len(reference)}"
        )
    bins = int(np.clip(len(reference) // _VALUES_PER_BIN, 2, QUANTILE_BINS))
    inner = np.quantile(reference, np.arange(1, bins) / bins)
    top = np.nextafter(reference.max(), np.inf)  # values past the reference's largest: own bin
    edges = np.unique(np.concatenate([[reference.min()], inner, [top]]))
    classes = len(edges) + 1

    def counts(values: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, values, side="right"), minlength=classes)

    return population_stability_index(counts(night).tolist(), counts(reference).tolist())


# -- the reference ---------------------------------------------------------------------------
def load_input_reference(output: Location, model_version: str) -> pa.Table | None:
    """The model's reference image statistics, None when it has none yet."""
    key = reference_key(model_version)
    return output.read_parquet(key) if output.exists(key) else None


def keep_input_reference(
    output: Location,
    model_version: str,
    evaluation_set_id: str,
    *,
    limits: ImageLimits | None = None,
) -> pa.Table:
    """The model's reference statistics: read when kept, else computed from the photos of its
    evaluation set ``evaluation_set_id`` (topped up from the manifest) and kept with it."""
    kept = load_input_reference(output, model_version)
    if kept is not None:
        return kept
    report = read_evaluation(output, model_version, evaluation_set_id)
    record = read_model_record(output, model_version)
    if report is None or record is None:
        raise ValueError(
            f"Expected model {model_version} with an evaluation on set {evaluation_set_id}, "
            "but found none: evaluate it first"
        )
    evaluated = report.evaluation_set
    manifest, details = load_manifest(output, evaluated.manifest_version)
    rows = _reference_rows(manifest, evaluated.split)
    locations = open_sources(output, details.all_sources)
    payloads = fetch_uris(
        locations,
        rows.column("image_uri").to_pylist(),
        concurrency=_FETCH_CONCURRENCY,
        max_bytes=(limits or ImageLimits()).max_bytes,
    )
    size = record.config.image_size
    ids, images, payloads_kept = [], [], []
    for image_id, payload in zip(rows.column("image_id").to_pylist(), payloads, strict=True):
        decoded = decode_or_reason(payload, size, limits)
        if not isinstance(decoded, UndecodableImage):
            ids.append(image_id)
            images.append(decoded)
            payloads_kept.append(payload)
    if not ids:
        raise ValueError(
            f"Expected decodable photos in evaluation set {evaluation_set_id}, but got none"
        )
    table = statistics_table(np.stack(images), payloads_kept).add_column(
        0, "image_id", pa.array(ids, pa.string())
    )
    table = table.replace_schema_metadata(
        {"evaluation_set": evaluation_set_id, "image_size": str(size)}
    )
    output.write_parquet(reference_key(model_version), table)
    return table


def _reference_rows(manifest: pa.Table, split: str) -> pa.Table:
    """The split's rows, then the others' in image-id order up to :data:`REFERENCE_IMAGES`."""
    split = "test" if split == "benchmark" else split
    chosen = manifest.filter(pc.equal(manifest.column("split"), split)).sort_by("image_id")
    if chosen.num_rows >= REFERENCE_IMAGES:
        return chosen
    others = manifest.filter(pc.not_equal(manifest.column("split"), split)).sort_by("image_id")
    return pa.concat_tables([chosen, others.slice(0, REFERENCE_IMAGES - chosen.num_rows)])


# -- a night against both references ----------------------------------------------------------
def input_figures(
    output: Location,
    *,
    run_id: str,
    model_version: str,
    reference: pa.Table | None,
    recent_runs: list[str],
    min_images: int,
) -> dict:
    """The monitoring row's input columns: per statistic tonight's median, the reference's,
    and the PSI against each reference (null where there are fewer than ``min_images``
    values on either side: images scored before statistics were kept have none)."""
    night = _night_values(output, [run_id], model_version)
    recent = _night_values(output, recent_runs, model_version) if recent_runs else {}
    psi_reference, psi_recent, medians, reference_medians = [], [], [], []
    for name in INPUT_STATISTICS:
        tonight = night[name]
        known = reference is not None and name in reference.column_names
        base = (
            reference.column(name).drop_null().to_numpy().astype(np.float64)
            if known
            else np.zeros(0)
        )
        pooled = recent.get(name, np.zeros(0))
        medians.append(float(np.median(tonight)) if len(tonight) else None)
        reference_medians.append(float(np.median(base)) if len(base) else None)
        enough = len(tonight) >= min_images
        psi_reference.append(quantile_psi(tonight, base) if enough and len(base) else None)
        psi_recent.append(
            quantile_psi(tonight, pooled) if enough and len(pooled) >= min_images else None
        )
    return {
        "input_statistics": list(INPUT_STATISTICS),
        "input_medians": medians,
        "reference_input_medians": reference_medians,
        "reference_images": reference.num_rows if reference is not None else None,
        "input_psi_reference": psi_reference,
        "input_psi_recent": psi_recent,
    }


def _night_values(output: Location, runs: list[str], model_version: str) -> dict[str, np.ndarray]:
    table = read_table(
        output,
        SCORES,
        columns=list(INPUT_STATISTICS),
        filter=ds.field("run_id").isin(runs) & (ds.field("model_version") == model_version),
    )
    return {
        name: table.column(name).drop_null().to_numpy().astype(np.float64)
        for name in INPUT_STATISTICS
    }


def input_reasons(row: dict, max_psi: float) -> list[str]:
    """One reason per image statistic past ``max_psi`` against either reference, with the
    medians that moved."""
    reasons = []
    names = row.get("input_statistics") or []
    for i, name in enumerate(names):
        against = [
            (label, values[i])
            for label, values in (
                ("the model's reference images", row.get("input_psi_reference")),
                ("recent nights", row.get("input_psi_recent")),
            )
            if values and values[i] is not None and values[i] > max_psi
        ]
        if against:
            tonight, before = row["input_medians"][i], row["reference_input_medians"][i]
            psi = ", ".join(f"{value:.2f} against {label}" for label, value in against)
            moved = f"median {tonight:.4g}" + (
                f" (reference {before:.4g})" if before is not None else ""
            )
            reasons.append(f"input {name} moved: PSI {psi} > {max_psi:g}; {moved}")
    return reasons
