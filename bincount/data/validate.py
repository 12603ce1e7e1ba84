"""Check the current bins against the ``bins`` expectation suite (Great Expectations 1.x).

Rows that fail an expectation become quarantine rows (stage ``validate``) naming the
expectation's code; the run fails only when an expectation's failed share passes its
``max_failed_percent``. The quarantine of this stage is a snapshot of the current bins: each
run replaces it, and ``validation/_latest.json`` names the bins it covered so that a manifest
is never built from unvalidated bins.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core import telemetry
from bincount.core.chunks import Rejection, Stage, quarantine_row
from bincount.core.contracts import expectation_suite
from bincount.core.sources import filled_sources, open_sources
from bincount.core.storage import Location
from bincount.core.tables import (
    QUARANTINE,
    bins_fingerprint,
    current_bins,
    part_key,
    part_names,
    read_table,
    write_part,
)
from bincount.data.metadata import IMAGE_PREFIX

logger = logging.getLogger(__name__)

VALIDATE_STAGE = Stage.VALIDATE.partition
LATEST_VALIDATION = "validation/_latest.json"
ROW = "_row"


class ContractViolation(RuntimeError):
    """Raised when an expectation's failed share passes the contract's threshold."""


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation over the current bins."""

    code: str
    expectation: str
    description: str
    column: str
    evaluated: int
    failed: int
    max_failed_percent: float
    error: str | None = None

    @property
    def failed_percent(self) -> float:
        return 100.0 * self.failed / self.evaluated if self.evaluated else 0.0

    @property
    def within_threshold(self) -> bool:
        return self.error is None and self.failed_percent <= self.max_failed_percent


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one validation run."""

    run_id: str
    suite: str
    bins_fingerprint: str
    rows: int
    quarantined_rows: int
    images_listed: int
    images_without_metadata: int
    outcomes: list[ExpectationOutcome]
    validated_at: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(outcome.within_threshold for outcome in self.outcomes)

    def raise_for_thresholds(self) -> None:
        """Raise :class:`ContractViolation` naming every expectation past its threshold."""
        failing = [o for o in self.outcomes if not o.within_threshold]
        if failing:
            details = "; ".join(
                f"{o.code} {o.expectation}: "
                + (o.error or f"{o.failed_percent:.2f}% failed > {o.max_failed_percent}% allowed")
                for o in failing
            )
            raise ContractViolation(f"Expected the bins to meet contract {self.suite}: {details}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        for outcome, row in zip(self.outcomes, data["outcomes"], strict=True):
            row["failed_percent"] = round(outcome.failed_percent, 4)
            row["within_threshold"] = outcome.within_threshold
        return data


def validate_bins(
    source: Location,
    output: Location,
    *,
    max_expected_quantity: int,
    suite_name: str = "bins",
    partitions: int = 16,
    run_id: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ValidationReport:
    """Validate the current bins, replace the validate-stage quarantine, and record the run.

    Each bin's image is looked for in the source it was ingested from; ``source`` stands for
    bins ingested before sources were recorded (and is listed when there are no bins).
    """
    run_id = run_id or uuid.uuid4().hex
    now = clock()
    bins = current_bins(output, source.url)
    bin_sources = filled_sources(bins, source.url)
    urls = sorted(set(bin_sources.to_pylist())) or [source.url]
    locations = open_sources(source, urls)
    rejected_keys = _ingest_rejected_image_keys(output)
    exists = pa.chunked_array([pa.array([False] * bins.num_rows, pa.bool_())])
    images_listed = images_without_metadata = 0
    for url in urls:
        images = locations[url].list(IMAGE_PREFIX, partitions=partitions).column("key")
        images = images.combine_chunks() if images.num_chunks else pa.array([], pa.string())
        mine = pc.equal(bin_sources, url)
        exists = pc.or_(exists, pc.and_(mine, pc.is_in(bins.column("image_key"), images)))
        known = pa.concat_arrays(
            [
                bins.filter(mine).column("image_key").combine_chunks().cast(pa.string()),
                rejected_keys,
            ]
        )
        images_listed += len(images)
        images_without_metadata += int(pc.sum(pc.invert(pc.is_in(images, known))).as_py() or 0)
    frame = _validation_frame(bins, bin_sources, exists)
    suite = expectation_suite(suite_name)
    parameters = {"max_expected_quantity": max_expected_quantity}
    outcomes, failures = run_suite(suite, frame, parameters)

    rejects = _quarantine_rows(frame, suite, failures, run_id=run_id, now=now)
    bins_fp = bins_fingerprint(bins)
    _replace_snapshot(output, bins_fp, rejects)

    report = ValidationReport(
        run_id=run_id,
        suite=suite_name,
        bins_fingerprint=bins_fp,
        rows=bins.num_rows,
        quarantined_rows=len({row["image_id"] for row in rejects}),
        images_listed=images_listed,
        images_without_metadata=images_without_metadata,
        outcomes=outcomes,
        validated_at=now.isoformat(),
        parameters=parameters,
    )
    output.write_bytes(LATEST_VALIDATION, json.dumps(report.to_dict(), indent=2).encode())
    output.write_bytes(
        f"validation/report-{bins_fp}.json", json.dumps(report.to_dict(), indent=2).encode()
    )
    return report


def _validation_frame(
    bins: pa.Table, sources: pa.ChunkedArray, exists: pa.ChunkedArray
) -> pa.Table:
    return (
        bins.select(["image_id", "metadata_key", "etag", "expected_quantity", "sku_quantity_sum"])
        .append_column("source", sources.cast(pa.string()))
        .append_column("image_exists", exists)
        .append_column(ROW, pa.array(range(bins.num_rows), pa.int64()))
    )


def _ingest_rejected_image_keys(output: Location) -> pa.Array:
    """Images whose metadata exists but was quarantined at ingest still have metadata."""
    rejected = read_table(output, QUARANTINE, columns=["stage", "image_id"])
    ids = rejected.filter(pc.equal(rejected.column("stage"), Stage.INGEST.value)).column("image_id")
    keys = pc.binary_join_element_wise(IMAGE_PREFIX + "/", ids, ".jpg", "")
    return keys.combine_chunks().cast(pa.string()).drop_null()


def run_suite(
    suite: dict, frame: pa.Table, parameters: dict[str, Any]
) -> tuple[list[ExpectationOutcome], dict[str, list[int]]]:
    """Run a suite over a table with a ``_row`` index: outcomes and failing rows per code."""
    telemetry.quiet()  # before GX is imported: no usage analytics
    import great_expectations as gx  # about 3 s to import: only when validating
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("bincount")
        .add_dataframe_asset(suite["name"])
        .add_batch_definition_whole_dataframe("current")
    )
    dataframe = frame.to_pandas(types_mapper=_nullable_pandas_type)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": dataframe})
    gx_suite = gx.ExpectationSuite(
        name=suite["name"], expectations=suite["expectations"], meta=suite.get("meta", {})
    )
    result = batch.validate(
        gx_suite,
        expectation_parameters=parameters,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [ROW],
            "return_unexpected_index_query": False,
        },
    )
    by_code = {r.expectation_config.meta["code"]: r for r in result.results}
    outcomes: list[ExpectationOutcome] = []
    failures: dict[str, list[int]] = {}
    for spec in suite["expectations"]:
        meta, kwargs = spec["meta"], spec["kwargs"]
        outcome = by_code[meta["code"]]
        error = None
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            error = str(outcome.exception_info.get("exception_message"))
        rows = [int(r[ROW]) for r in (outcome.result.get("unexpected_index_list") or [])]
        failures[meta["code"]] = rows
        outcomes.append(
            ExpectationOutcome(
                code=meta["code"],
                expectation=spec["type"],
                description=meta.get("description", spec["type"]),
                column=kwargs.get("column")
                or ", ".join(
                    kwargs.get("column_list") or [kwargs.get("column_A"), kwargs.get("column_B")]
                ),
                evaluated=frame.num_rows,
                # Column-level expectations (e.g. the type) fail the whole column at once.
                failed=len(rows) if rows or outcome.success else frame.num_rows,
                max_failed_percent=float(meta["max_failed_percent"]),
                error=error,
            )
        )
    return outcomes, failures


def _nullable_pandas_type(arrow_type: pa.DataType):
    import pandas as pd

    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    return None


def _quarantine_rows(
    frame: pa.Table, suite: dict, failures: dict[str, list[int]], *, run_id: str, now: datetime
) -> list[dict]:
    rows = frame.to_pylist()
    specs = {spec["meta"]["code"]: spec for spec in suite["expectations"]}
    rejects = []
    for code, indexes in failures.items():
        spec = specs[code]
        for index in indexes:
            row = rows[index]
            rejects.append(
                quarantine_row(
                    Stage.VALIDATE,
                    row["metadata_key"],
                    Rejection(code, _reason(spec, row), expectation=spec["type"]),
                    image_id=row["image_id"],
                    etag=row["etag"],
                    run_id=run_id,
                    now=now,
                )
            )
    return rejects


def _reason(spec: dict, row: dict) -> str:
    description = spec["meta"].get("description", spec["type"])
    named = {
        name
        for value in spec["kwargs"].values()
        for name in (value if isinstance(value, list) else [value])
        if isinstance(name, str)
    }
    got = ", ".join(
        f"{column}={row[column]!r}"
        for column in ("expected_quantity", "sku_quantity_sum", "image_exists", "image_id")
        if column in named
    )
    return f"Expected: {description}; got {got or 'a failing value'}"


def _replace_snapshot(output: Location, bins_fp: str, rejects: list[dict]) -> None:
    """Write the new validate-stage quarantine, then remove the snapshots it replaces."""
    stale = part_names(output, QUARANTINE, VALIDATE_STAGE) - {bins_fp}
    write_part(output, QUARANTINE, bins_fp, rejects, partition=VALIDATE_STAGE)
    output.delete([part_key(QUARANTINE, name, VALIDATE_STAGE) for name in stale])


def latest_validation(output: Location) -> dict | None:
    """The record of the last validation run, or None if bins were never validated."""
    if not output.exists(LATEST_VALIDATION):
        return None
    return json.loads(output.read_bytes(LATEST_VALIDATION))
