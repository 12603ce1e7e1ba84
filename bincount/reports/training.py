"""Markdown for a training run: the curves so far and the figures of every epoch."""

from __future__ import annotations

from bincount.reports import charts as plots
from bincount.reports.markdown import num, pct, table


def training_markdown(version: str, history: list[dict], *, epochs: int) -> str:
    """The curves so far and the figures of every epoch (the best one in bold)."""
    best = max(history, key=lambda row: (row["val_accuracy"], -row["val_rmse"]))
    latest = history[-1]
    rows = []
    for row in history:
        mark = "**" if row is best else ""
        rows.append(
            [
                f"{mark}{row['epoch']}{mark}",
                num(row["train_loss"], 4),
                num(row["val_loss"], 4),
                pct(row["val_accuracy"], 1),
                num(row["val_rmse"]),
                num(row["images_per_second"], 1),
                pct(row["data_wait_share"], 0),
                f"{row['lr']:.2e}",
            ]
        )
    header = ["epoch", "train loss", "val loss", "val accuracy", "val RMSE", "images/s"]
    lines = [
        f"# Training {version}: epoch {latest['epoch']} of at most {epochs}",
        "",
        f"Best so far: epoch {best['epoch']}, validation accuracy "
        f"{pct(best['val_accuracy'], 1)}, RMSE {num(best['val_rmse'])} (the weights kept).",
        "",
        plots.markdown_image(
            "loss, validation accuracy and RMSE per epoch",
            plots.training_curves(history, best_epoch=best["epoch"]),
        ),
        "",
        table([*header, "waiting for data", "lr"], rows, "r" * 8),
    ]
    return "\n".join(lines) + "\n"
