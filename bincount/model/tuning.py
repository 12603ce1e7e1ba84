"""Hyperparameter search: trials drawn from a search space, recorded in a Parquet table.

A study is named by its search space and manifest, so rerunning it reuses finished trials (each
trial is a model version in the registry) instead of training them again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from bincount.core.storage import Location
from bincount.model.config import TrainConfig

SEARCHABLE = ("arch", "loss", "image_size", "batch_size", "lr")
TRIAL_SCHEMA = pa.schema(
    [
        ("study", pa.string()),
        ("trial", pa.int32()),
        ("model_version", pa.string()),
        ("arch", pa.string()),
        ("loss", pa.string()),
        ("image_size", pa.int32()),
        ("batch_size", pa.int32()),
        ("lr", pa.float64()),
        ("epochs_run", pa.int32()),
        ("val_accuracy", pa.float64()),
        ("val_rmse", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class SearchSpace:
    """Values to try for each searchable hyperparameter; others come from the base config."""

    values: dict[str, list[Any]]

    @classmethod
    def parse(cls, text: str) -> SearchSpace:
        """``{"lr": [1e-3, 3e-3], "arch": ["resnet18"]}`` (JSON) or ``lr=1e-3,3e-3;arch=...``."""
        text = text.strip()
        if text.startswith("{"):
            values = json.loads(text)
        else:
            values = {}
            for part in filter(None, (p.strip() for p in text.split(";"))):
                name, _, listed = part.partition("=")
                values[name.strip()] = [_scalar(v) for v in listed.split(",") if v.strip()]
        unknown = set(values) - set(SEARCHABLE)
        if unknown:
            raise ValueError(
                f"Expected hyperparameters among {SEARCHABLE}, but got {sorted(unknown)}"
            )
        if not values or any(not isinstance(v, list) or not v for v in values.values()):
            raise ValueError(f"Expected a non-empty list of values per name, but got {values!r}")
        return cls(values=values)

    def trials(self, base: TrainConfig, *, limit: int | None, seed: int) -> list[TrainConfig]:
        """The grid, or ``limit`` configs sampled from it without repeats, each validated."""
        names = sorted(self.values)
        grid = [
            dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(self.values[n] for n in names))
        ]
        if limit is not None and limit < len(grid):
            grid = random.Random(seed).sample(grid, limit)
        return [base.model_copy(update=choice) for choice in grid] if grid else [base]

    def study_name(self, manifest_version: str, base: TrainConfig) -> str:
        payload = json.dumps(
            {"space": self.values, "manifest": manifest_version, "base": base.model_dump()},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


def _scalar(text: str) -> Any:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def trial_row(
    study: str, trial: int, config: TrainConfig, result: dict | None, error: str | None
) -> dict:
    return {
        "study": study,
        "trial": trial,
        "model_version": result["version"] if result else None,
        "arch": config.arch,
        "loss": config.loss,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "epochs_run": len(result["history"]) if result else 0,
        "val_accuracy": result["val_accuracy"] if result else None,
        "val_rmse": result["val_rmse"] if result else None,
        "status": "completed" if result else "failed",
        "error": error,
        "recorded_at": datetime.now(UTC),
    }


def write_trials(output: Location, study: str, rows: list[dict]) -> str:
    """The study's trials as ``tuning/study=<name>/trials.parquet`` (replaced as a whole)."""
    key = f"tuning/study={study}/trials.parquet"
    output.write_parquet(
        key, pa.Table.from_pylist(rows, schema=TRIAL_SCHEMA).drop_columns(["study"])
    )
    return key


def best_trial(rows: list[dict]) -> dict:
    """Highest validation accuracy, ties broken by lower RMSE (the promotion gate's order)."""
    completed = [row for row in rows if row["status"] == "completed"]
    if not completed:
        raise ValueError(f"Expected at least one completed trial, but all {len(rows)} failed")
    return max(completed, key=lambda row: (row["val_accuracy"], -row["val_rmse"]))
