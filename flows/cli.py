"""The ``bincount`` command: every flow is also a subcommand.

Options that configure the platform (source, output, endpoint, concurrency) feed the one
settings object through its ``BINCOUNT_*`` environment, so a flow run from the CLI, a deployment
or a test sees the same configuration.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence

# Quiet, local-first defaults; a user's own environment wins. Set before Prefect is imported.
_QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "bincount",
}

# CLI option → settings field (environment variable BINCOUNT_<FIELD>).
_SETTINGS_OPTIONS = {
    "s3_endpoint_url": "--s3-endpoint-url",
    "max_concurrency": "--max-concurrency",
    "list_partitions": "--list-partitions",
    "chunk_size": "--chunk-size",
    "max_expected_quantity": "--max-expected-quantity",
}


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("platform settings (also BINCOUNT_* environment variables)")
    group.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (MinIO, moto, ...)")
    group.add_argument("--max-concurrency", type=int, help="object fetches in flight")
    group.add_argument("--list-partitions", type=int, help="key ranges listed in parallel")
    group.add_argument("--chunk-size", type=int, help="objects per part file")
    group.add_argument("--max-expected-quantity", type=int, help="contract's largest count")


def _add_locations(parser: argparse.ArgumentParser, *, source: bool = True) -> None:
    if source:
        parser.add_argument("--source", help="bucket or folder (default s3://aft-vbi-pds)")
    parser.add_argument("--output", help="where tables are written (path, file:// or s3://)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bincount",
        description="Count the items in warehouse bin photos and flag suspicious inventory.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write a synthetic ABID bucket")
    synth.add_argument("dest", help="folder or s3:// URL to write bin-images/ and metadata/ to")
    synth.add_argument("--bins", type=int, required=True, help="number of bins to write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--max-count", type=int, default=50, help="largest item count (default 50: 99.9%% of ABID)"
    )
    synth.add_argument("--append", action="store_true", help="add new bins with fresh ids")
    synth.add_argument(
        "--defect-rate", type=float, default=0.0, help="share of bins with injected faults"
    )
    synth.add_argument(
        "--mismatch-rate",
        type=float,
        default=0.0,
        help="share of bins whose (self-consistent) record disagrees with the photo",
    )
    synth.add_argument(
        "--truth",
        help="where to write what each photo really shows (default: DEST.truth beside a local "
        "folder; required to get one for s3://)",
    )
    synth.add_argument("--workers", type=int, help="processes (default: all cores)")

    ingest = commands.add_parser("ingest", help="ingest new metadata objects")
    _add_locations(ingest)
    ingest.add_argument("--limit", type=int, help="ingest at most N new objects")
    ingest.add_argument("--keys-from", help="only these keys (capstone file list, JSON or lines)")
    _add_dask_option(ingest)

    validate = commands.add_parser("validate", help="validate labels against the data contract")
    _add_locations(validate)

    manifest = commands.add_parser("manifest", help="build a versioned manifest")
    _add_locations(manifest)
    _add_manifest_options(manifest)

    pipeline = commands.add_parser("pipeline", help="ingest, validate and manifest in one run")
    _add_locations(pipeline)
    pipeline.add_argument("--limit", type=int)
    pipeline.add_argument("--keys-from")
    _add_manifest_options(pipeline)
    _add_dask_option(pipeline)

    train = commands.add_parser("train", help="train a counting model on a manifest")
    train.add_argument("--output")
    train.add_argument("--manifest", help="manifest version (default: the latest)")
    train.add_argument("--arch", default="resnet18", help="torchvision model name")
    train.add_argument("--loss", choices=("ce", "ordinal"), default="ce")
    train.add_argument("--max-count", type=int, help="largest count (default: the manifest's)")
    train.add_argument("--image-size", type=int, default=128)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--max-minutes", type=float, help="stop training after this long")
    train.add_argument("--patience", type=int, default=8, help="early-stopping patience (epochs)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--weights", help="a weights file to start from (loaded weights_only)")
    train.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when present)")

    evaluate = commands.add_parser("evaluate", help="evaluate a model on a frozen set")
    evaluate.add_argument("--output")
    evaluate.add_argument("--model", default="champion", help="model version or 'champion'")
    evaluate.add_argument("--split", choices=("test", "val", "benchmark"), default="test")
    evaluate.add_argument("--manifest", help="manifest version (default: the model's)")

    promote = commands.add_parser("promote", help="send a model through the promotion gate")
    promote.add_argument("--output")
    promote.add_argument("--model", required=True, help="the challenger's version")
    promote.add_argument("--split", choices=("test", "val", "benchmark"), default="test")
    promote.add_argument("--manifest", help="manifest version (default: the model's)")

    tune = commands.add_parser("tune", help="search hyperparameters; promote the best trial")
    tune.add_argument("--output")
    tune.add_argument("--manifest", help="manifest version (default: the latest)")
    tune.add_argument(
        "--space",
        default="lr=0.001,0.003;loss=ce,ordinal",
        help='values per name: "lr=1e-3,3e-3;arch=resnet18,mobilenet_v3_small" or JSON',
    )
    tune.add_argument("--trials", type=int, help="sample this many from the grid")
    tune.add_argument("--epochs", type=int, default=5)
    tune.add_argument("--arch", default="resnet18")
    tune.add_argument("--image-size", type=int, default=128)
    tune.add_argument("--batch-size", type=int, default=64)
    tune.add_argument("--max-minutes", type=float, help="per trial")
    tune.add_argument("--seed", type=int, default=0)

    score = commands.add_parser(
        "score", help="score new bin images with the champion; flag suspicious inventory"
    )
    _add_locations(score)
    score.add_argument(
        "--prefix",
        default="bin-images/",
        help="image folder, or folder and start of names (bin-images/1000)",
    )
    score.add_argument("--model", default="champion", help="model version or 'champion'")
    score.add_argument("--limit", type=int, help="score at most N new images")
    score.add_argument(
        "--review-budget-percent",
        type=float,
        default=10.0,
        help="the night's queue holds at most this share (%%) of the bins judged (default 10)",
    )
    score.add_argument(
        "--review-budget-count", type=int, help="and at most this many bins (default: no cap)"
    )
    score.add_argument(
        "--review-max-p-recorded",
        type=float,
        default=0.05,
        help="queue a bin only if the model gives its recorded count at most this chance "
        "(default 0.05)",
    )
    score.add_argument("--batch-size", type=int, default=64)
    score.add_argument(
        "--no-ingest",
        dest="ingest_first",
        action="store_false",
        help="do not ingest new metadata first (expected quantities may then be unknown)",
    )
    score.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when present)")
    _add_dask_option(score)

    predict = commands.add_parser(
        "predict", help="count the items in bin photos (files or s3:// URLs); JSON out"
    )
    predict.add_argument("inputs", nargs="+", metavar="PATH_OR_URL")
    predict.add_argument("--output", help="where the registry is (for the model)")
    predict.add_argument("--model", default="champion", help="model version or 'champion'")
    predict.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when present)")

    serve = commands.add_parser(
        "serve", help="serve every deployment of deployments/prefect.yaml from this process"
    )
    serve.add_argument(
        "--prefect-file", help="deployments file (default: deployments/prefect.yaml)"
    )

    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("--output")

    demo = commands.add_parser("demo", help="the whole chain on a synthetic bucket")
    demo.add_argument("--workdir", default="demo-output", help="where the demo writes everything")
    demo.add_argument("--bins", type=int, default=6000)
    demo.add_argument("--arrivals", type=int, default=400, help="new bins that arrive later")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--train-minutes", type=float, default=6.5)
    demo.add_argument(
        "--mismatch-rate",
        type=float,
        default=0.05,
        help="share of arrivals whose record disagrees with the photo",
    )

    for sub in (
        ingest,
        validate,
        manifest,
        pipeline,
        train,
        evaluate,
        promote,
        tune,
        score,
        predict,
        serve,
        models,
        demo,
    ):
        _add_settings_options(sub)
    return parser


def _add_manifest_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        default="open:10",
        help="open:K (0..K and 'more than K'; default open:10), moderate (counts 0-5 only), "
        "hard (all) or max:K",
    )
    parser.add_argument(
        "--benchmark-split", help="ABID challenge validation list used as the test split"
    )


def _add_dask_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="fan chunks out on a Dask cluster: tcp://scheduler:8786, or local[:N] workers",
    )


def _apply_settings(args: argparse.Namespace) -> None:
    for field in _SETTINGS_OPTIONS:
        value = getattr(args, field, None)
        if value is not None:
            os.environ[f"BINCOUNT_{field.upper()}"] = str(value)
    from bincount.settings import get_settings

    get_settings.cache_clear()


def main(argv: Sequence[str] | None = None) -> int:
    for name, value in _QUIET_DEFAULTS.items():
        os.environ.setdefault(name, value)
    args = build_parser().parse_args(argv)
    _apply_settings(args)
    result = COMMANDS[args.command](args)
    if isinstance(result, str):
        sys.stdout.write(result + "\n")
    else:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    if args.command == "predict" and any("error" in answer for answer in result):
        return 1
    return 0


def _synth(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    from bincount.settings import get_settings
    from bincount.storage import Location
    from bincount.synth import default_truth, synthesize

    settings = get_settings()
    truth = args.truth or default_truth(args.dest)
    summary = synthesize(
        Location.output(settings, args.dest),
        bins=args.bins,
        seed=args.seed,
        max_count=args.max_count,
        append=args.append,
        defect_rate=args.defect_rate,
        mismatch_rate=args.mismatch_rate,
        truth=Location.output(settings, truth) if truth else None,
        workers=args.workers,
    )
    return asdict(summary)


def _flow_command(target: str) -> Callable[[argparse.Namespace], dict]:
    """A command that runs flow ``module:function`` with the options named like its parameters.

    Flows are imported only when their command runs: ``bincount synth`` never loads Prefect.
    """

    def run(args: argparse.Namespace) -> dict:
        module, name = target.split(":")
        flow = getattr(importlib.import_module(module), name)
        wanted = inspect.signature(flow.fn).parameters
        return flow(**{k: v for k, v in vars(args).items() if k in wanted})

    return run


def _train(args: argparse.Namespace) -> dict:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _train_distributed(args)
    return _flow_command("flows.train:train")(args)


def _train_distributed(args: argparse.Namespace) -> dict:
    """Under torchrun every rank trains its share; rank 0 decodes the cache and writes."""
    import torch.distributed as dist

    from bincount.config import TrainConfig
    from bincount.imagecache import build_image_cache
    from bincount.manifest import load_manifest
    from bincount.settings import get_settings
    from bincount.storage import Location
    from bincount.training import resolve_runtime, train_model

    settings = get_settings()
    target = Location.output(settings, args.output)
    rows, details = load_manifest(target, args.manifest)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.model_fields})
    runtime = resolve_runtime(args.device)
    if runtime.is_main:
        build_image_cache(
            Location.source(settings, details["source"]),
            target,
            rows,
            manifest_version=details["version"],
            size=config.image_size,
            limits=settings.image_limits(),
        )
    dist.barrier()
    result = train_model(target, config, manifest_version=details["version"], device=args.device)
    return result.__dict__ if runtime.is_main else {}


def _score(args: argparse.Namespace) -> dict:
    from bincount.review import ReviewPolicy

    args.review = ReviewPolicy(
        budget_percent=args.review_budget_percent,
        budget_count=args.review_budget_count,
        max_p_recorded=args.review_max_p_recorded,
    )
    return _flow_command("flows.score:score")(args)


def _predict(args: argparse.Namespace) -> list[dict]:
    from bincount.scoring import load_scorer, predict_images
    from bincount.settings import get_settings
    from bincount.storage import Location

    settings = get_settings()
    scorer = load_scorer(Location.output(settings, args.output), args.model, device=args.device)
    buckets: dict[str, Location] = {}

    def read(name: str) -> bytes:
        if name.startswith(("s3://", "s3a://")):
            bucket, _, key = name.split("://", 1)[1].partition("/")
            if bucket not in buckets:
                buckets[bucket] = Location.source(settings, f"s3://{bucket}")
            return buckets[bucket].read_bytes(key)
        with open(name.removeprefix("file://"), "rb") as handle:
            return handle.read()

    return predict_images(scorer, args.inputs, read=read)


def _serve(args: argparse.Namespace) -> str:
    from flows.serve import serve_deployments

    serve_deployments(args.prefect_file)
    return "stopped serving"


def _models(args: argparse.Namespace) -> list[dict]:
    from bincount.registry import list_models
    from bincount.settings import get_settings
    from bincount.storage import Location

    return list_models(Location.output(get_settings(), args.output))


def _demo(args: argparse.Namespace) -> str:
    from flows.demo import demo, demo_summary

    result = demo(
        workdir=os.path.abspath(args.workdir),
        bins=args.bins,
        arrivals=args.arrivals,
        seed=args.seed,
        train_minutes=args.train_minutes,
        mismatch_rate=args.mismatch_rate,
    )
    return demo_summary(result)


COMMANDS = {
    "synth": _synth,
    "ingest": _flow_command("flows.ingest:ingest"),
    "validate": _flow_command("flows.validate:validate"),
    "manifest": _flow_command("flows.manifest:manifest"),
    "pipeline": _flow_command("flows.data:data_pipeline"),
    "train": _train,
    "evaluate": _flow_command("flows.evaluate:evaluate"),
    "promote": _flow_command("flows.promote:promote"),
    "tune": _flow_command("flows.tune:tune"),
    "score": _score,
    "predict": _predict,
    "serve": _serve,
    "models": _models,
    "demo": _demo,
}


if __name__ == "__main__":
    raise SystemExit(main())
