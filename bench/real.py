"""A learning curve on real labels: test accuracy against how many real ABID labels a recipe
trains on, on one held-out split, beside the majority class and the published figures.

``--output R`` holds one manifest of the real 0-5 bins of ``../shared/abid``; when R has none
it is built with the two documented commands (``bincount pipeline --source <abid>/sample
--output R --policy moderate``, then the same with ``<abid>/resized224``). The manifest's test
split (a hash of each bin id) is the held-out split: no size trains on it. For each size N,
``bincount.data.subsets.train_subset`` keeps the first N train bins in an order drawn from a
hash of each id and ``--seed`` (so the 1,000 lie inside the 3,000) and every val and test row
as it is, in a manifest of its own in R; ``all`` is the manifest itself.

Each size and recipe is one ``bincount train --output R --manifest <subset> --recipe <recipe>``
in a process of its own, measured: its wall time (the command's start with its temporary
Prefect server, about 20 s here, the subset's image cache, a frozen trunk's pass and
calibration included) and its peak RSS, that of the largest process of its tree as ``/usr/bin/
time -v`` reports it (ru_maxrss from wait4; a child starts at this script's own peak, which
imports no torch). Then ``bincount evaluate --model <version>`` scores it on its manifest's
test split, checked to be the held-out split (the same size and counts).

    python bench/real.py --output R                     # 1000, 3000, all x probe, real
    python bench/real.py --output R --sizes 1000 --recipes real --json curve.json
    python bench/real.py --results curve.json --plot bench/real_curve.png   # redraw only
    python bench/real.py --output R --limit 150 --sizes 50,100 --recipes real \\
        --recipe-overrides epochs=1                      # a quick run: the figures mean nothing

``--json`` keeps what earlier runs wrote there (a row is replaced by a new run of the same size,
recipe, overrides and seed), so a curve can be collected over several runs. A model already in
R (the same recipe on the same manifest) is not trained again: its row says "reused" unless the
file holds its measured time. Training ``probe`` and ``real`` on every label takes over half an
hour each on 2 busy CPU cores; minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.data.subsets import train_subset
from bincount.model.config import TrainConfig
from bincount.model.metrics import ABID_BASELINE, majority_baseline
from bincount.model.recipes import RECIPES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ABID = REPO.parent / "shared" / "abid"
COUNTS = range(6)  # ABID's moderate task: bins of 0-5 items

# Published figures on real ABID photos of 0-5 items (accuracy, RMSE; None where not given),
# with how many labels they trained on where known.
ANCHORS = [
    {
        "name": "ABID challenge baseline: ResNet-34 from scratch, 324,735 bins",
        "accuracy": ABID_BASELINE["accuracy"],
        "rmse": ABID_BASELINE["rmse"],
        "recall": ABID_BASELINE["per_class_accuracy"],
    },
    {"name": "best public: ImageNet ResNet-34", "accuracy": 0.562, "rmse": 0.90},
    {"name": "best public", "accuracy": 0.587, "rmse": 0.807},
    {"name": "capstone reports, 10,441 bins", "accuracy": (0.29, 0.34), "rmse": None},
]


def ensure_output(output: Path, abid: Path, limit: int | None, logs: Path) -> None:
    """R with a manifest of the real bins: the two documented pipeline commands when none."""
    if (output / "manifests" / "_latest.json").exists():
        return
    for folder in ("sample", "resized224"):
        command = ["pipeline", "--source", str(abid / folder), "--output", str(output)]
        command += ["--policy", "moderate"] + (["--limit", str(limit)] if limit else [])
        bincount(command, logs / f"pipeline-{folder}.log")


def bincount(arguments: list[str], log: Path) -> tuple[dict, float, int]:
    """``bincount ARGUMENTS`` in a new process: its JSON result, wall seconds and peak RSS in
    bytes (the largest process of its tree); its log lines go to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # This checkout's code, whichever checkout the environment's package was installed from.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path}
    with tempfile.TemporaryFile() as out, log.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *arguments],
            cwd=REPO,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"bincount {' '.join(arguments)} exited {process.returncode}:\n{tail}")
    return json.loads(text), seconds, usage.ru_maxrss * 1024  # KiB on Linux


def held_out(output: Location, version: str) -> dict:
    """The held-out split of manifest ``version`` and the majority class of its train split."""
    rows, details = load_manifest(output, version)
    labels = list(zip(rows["split"].to_pylist(), rows["label"].to_pylist(), strict=True))
    test = [label for split, label in labels if split == "test"]
    train = [label for split, label in labels if split == "train"]
    majority = majority_baseline(train, test, num_classes=max(len(COUNTS), max(test) + 1))
    # The class every bin is predicted as: the one column of the confusion that is not empty.
    count = next(c for c in range(len(majority.confusion)) if any(r[c] for r in majority.confusion))
    return {
        "manifest": version,
        "policy": details.policy,
        "train_bins": len(train),
        "test_bins": len(test),
        "test_labels": {str(k): v for k, v in sorted(Counter(test).items())},
        "majority": {
            "count": count,
            "accuracy": majority.accuracy,
            "rmse": majority.rmse,
            "recall": _nan_free(majority.per_class_accuracy),
        },
    }


def curve_point(args, output: Location, split: dict, size: str, recipe: str, logs: Path) -> dict:
    """Train ``recipe`` on ``size`` train labels in its own process, evaluate it on the test
    split; the row of the curve."""
    version = split["manifest"]
    if size != "all":
        version = train_subset(output, split["manifest"], int(size), seed=args.seed).version
    train_bins = sum(load_manifest(output, version)[1].distribution["train"].values())
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in args.overrides.items()]
    name = f"{size}-{recipe}"
    command = ["train", "--output", output.url, "--manifest", version, "--recipe", recipe]
    trained, seconds, peak = bincount(
        [*command, "--seed", str(args.seed), *flags], logs / f"{name}.train.log"
    )
    report, _, _ = bincount(
        ["evaluate", "--output", output.url, "--model", trained["version"]],
        logs / f"{name}.evaluate.log",
    )
    evaluated = report["evaluation_set"]
    if (evaluated["size"], evaluated["labels"]) != (split["test_bins"], split["test_labels"]):
        raise RuntimeError(
            f"Expected the held-out split ({split['test_bins']} bins {split['test_labels']}), "
            f"but model {trained['version']} was scored on {evaluated['size']} "
            f"{evaluated['labels']}"
        )
    metrics = report["metrics"]
    return {
        "size": size,
        "labels": train_bins,
        "recipe": recipe,
        "overrides": args.overrides,
        "seed": args.seed,
        "manifest": version,
        "model": trained["version"],
        "accuracy": metrics["accuracy"],
        "rmse": metrics["rmse"],
        "recall": _nan_free(metrics["per_class_accuracy"]),
        "best_epoch": trained["best_epoch"],
        "images_left_out": report["images_left_out"],
        "train_seconds": seconds if trained["created"] else None,
        "peak_rss_bytes": peak if trained["created"] else None,
    }


def run(args: argparse.Namespace) -> dict:
    logs = Path(tempfile.mkdtemp(prefix="bincount-real-"))
    print(f"the commands' logs: {logs}", flush=True)
    output_path = Path(args.output).resolve()
    ensure_output(output_path, Path(args.abid), args.limit, logs)
    output = Location(str(output_path))
    version = args.manifest or load_manifest(output)[1].version
    saved = Path(args.json) if args.json else None
    results = json.loads(saved.read_text()) if saved and saved.exists() else {}
    if results and results["held_out"]["manifest"] != version:
        raise ValueError(
            f"Expected {saved} to hold the curve of manifest {version}, but it holds "
            f"{results['held_out']['manifest']}'s"
        )
    results["held_out"] = held_out(output, version)
    runs = results.setdefault("runs", [])
    print(f"held out: the {results['held_out']['test_bins']} test bins of {version}", flush=True)
    for size in args.sizes:
        for recipe in args.recipes:
            row = curve_point(args, output, results["held_out"], size, recipe, logs)
            same = [r for r in runs if _key(r) == _key(row)]
            if row["train_seconds"] is None and same and same[0]["model"] == row["model"]:
                row |= {k: same[0][k] for k in ("train_seconds", "peak_rss_bytes")}
            runs[:] = [r for r in runs if _key(r) != _key(row)] + [row]
            print(table_row(row), flush=True)
            if saved:
                saved.write_text(json.dumps(results, indent=2))
    return results


def _nan_free(values: list[float]) -> list[float | None]:
    # A count with no test bin has no recall (NaN, as the challenge's division by zero): null
    # in the JSON, which has no NaN.
    return [None if math.isnan(v) else v for v in values]


def _key(row: dict) -> tuple:
    return row["size"], row["recipe"], json.dumps(row["overrides"], sort_keys=True), row["seed"]


def label_of(row: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in row["overrides"].items())
    return f"`{row['recipe']}`" + (f" ({extra})" if extra else "")


def _percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.0f}"


def table_row(row: dict) -> str:
    recall = " / ".join(_percent(r) for r in row["recall"][: len(COUNTS)]) + " %"
    wall = "reused" if row["train_seconds"] is None else f"{row['train_seconds'] / 60:.1f} min"
    rss = "reused" if row["peak_rss_bytes"] is None else f"{row['peak_rss_bytes'] / 1e9:.2f} GB"
    return (
        f"| {row['labels']:,} | {label_of(row)} | {100 * row['accuracy']:.1f} % | "
        f"{row['rmse']:.3f} | {recall} | {wall} | {rss} |"
    )


def table(results: dict) -> str:
    split, majority = results["held_out"], results["held_out"]["majority"]
    recall = " / ".join(_percent(r) for r in majority["recall"][: len(COUNTS)]) + " %"
    lines = [
        f"Held-out split: the {split['test_bins']} test bins of manifest {split['manifest']} "
        f"(policy {split['policy']}, counts {split['test_labels']}).",
        "",
        "| train labels | model | accuracy | RMSE | recall per count 0 / 1 / 2 / 3 / 4 / 5 "
        "| train wall | peak RSS |",
        "|---:|---|---:|---:|---|---:|---:|",
        f"| – | majority class ({majority['count']}) | {100 * majority['accuracy']:.1f} % | "
        f"{majority['rmse']:.3f} | {recall} | – | – |",
    ]
    order = sorted(results["runs"], key=lambda r: (r["labels"], r["recipe"], _key(r)))
    lines += [table_row(row) for row in order]
    for anchor in ANCHORS:
        low, high = _span(anchor["accuracy"])
        accuracy = f"{100 * low:.1f} %" if low == high else f"{100 * low:.0f}-{100 * high:.0f} %"
        rmse = "–" if anchor["rmse"] is None else f"{anchor['rmse']:.3f}"
        recall = " / ".join(_percent(r) for r in anchor.get("recall", [])) + " %"
        lines.append(
            f"| (other bins) | {anchor['name']} | {accuracy} | {rmse} | "
            f"{recall if 'recall' in anchor else '–'} | – | – |"
        )
    return "\n".join(lines)


def _span(accuracy) -> tuple[float, float]:
    return tuple(accuracy) if isinstance(accuracy, tuple | list) else (accuracy, accuracy)


def plot(results: dict, path: Path) -> None:
    """Accuracy against train labels (log scale), a line per recipe; the majority class and the
    published figures as horizontal lines (the capstone range as a band)."""
    from matplotlib.figure import Figure  # here: a run without --plot never loads it
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(8, 6), dpi=120, layout="constrained")
    axes = figure.subplots()
    lines: dict[str, list[dict]] = {}
    for row in results["runs"]:
        lines.setdefault(label_of(row).replace("`", ""), []).append(row)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["labels"])
        xs, ys = [r["labels"] for r in rows], [100 * r["accuracy"] for r in rows]
        axes.plot(xs, ys, "o-", label=name)
    majority = results["held_out"]["majority"]
    label = f"majority class ({majority['count']}), this split"
    axes.axhline(100 * majority["accuracy"], color="black", lw=1, label=label)
    styles = iter([("tab:red", "--"), ("tab:purple", "-."), ("tab:brown", ":")])
    for anchor in ANCHORS:
        low, high = _span(anchor["accuracy"])
        if low == high:
            colour, style = next(styles)
            axes.axhline(100 * low, color=colour, ls=style, lw=1.2, label=anchor["name"])
        else:
            axes.axhspan(100 * low, 100 * high, color="grey", alpha=0.2, label=anchor["name"])
    axes.set_xscale("log")
    axes.set_xticks(sorted({row["labels"] for row in results["runs"]}))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    axes.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    axes.set_xlabel("real training labels (log scale)")
    axes.set_ylabel("test accuracy, counts 0-5 (%)")
    split = results["held_out"]
    axes.set_title(f"Learning curve on {split['test_bins']} held-out real bins", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2)
    figure.savefig(path, format="png", facecolor="white")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="the output R (built from --abid when it has no manifest)")
    parser.add_argument("--results", help="only print the table and draw the plot of this JSON")
    parser.add_argument("--abid", default=str(DEFAULT_ABID), help="the shared ABID folder")
    parser.add_argument("--limit", type=int, help="building R: at most N bins of each folder")
    parser.add_argument("--manifest", help="the manifest held out from (default: the latest)")
    parser.add_argument("--sizes", default="1000,3000,all", type=_sizes, help="N,... or all")
    parser.add_argument("--recipes", default="probe,real", type=lambda s: s.split(","))
    parser.add_argument("--seed", type=int, default=0, help="the subsets' order, the trainings'")
    parser.add_argument(
        "--recipe-overrides",
        dest="overrides",
        default={},
        type=_overrides,
        help="training options over every recipe's, e.g. epochs=1,max_minutes=5",
    )
    parser.add_argument("--json", help="results file: read, extended by this run's rows, written")
    parser.add_argument("--plot", help="write the curve as this PNG")
    args = parser.parse_args(argv)
    if (args.output is None) == (args.results is None):
        parser.error("give --output R to run the curve, or --results FILE to redraw one")
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        parser.error(f"expected recipes among {', '.join(sorted(RECIPES))}, but got {unknown}")
    return args


def _sizes(text: str) -> list[str]:
    sizes = [size.strip() for size in text.split(",")]
    if not all(size == "all" or (size.isdigit() and int(size) > 0) for size in sizes):
        raise argparse.ArgumentTypeError(f"expected positive counts or all, got {text!r}")
    return sizes


def _overrides(text: str) -> dict[str, str]:
    pairs = dict(pair.split("=", 1) for pair in text.split(",") if pair)
    # The recipe and the seed are the curve's own options.
    allowed = set(TrainConfig.model_fields) - {"recipe", "seed"}
    unknown = sorted(set(pairs) - allowed)
    if unknown:
        raise argparse.ArgumentTypeError(f"expected training options, but got {unknown}")
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = json.loads(Path(args.results).read_text()) if args.results else run(args)
    print()
    print(table(results))
    if args.plot:
        plot(results, Path(args.plot))
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
