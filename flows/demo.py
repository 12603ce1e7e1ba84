"""Flow: the demo, the whole chain on a synthetic bucket in a local folder."""

from __future__ import annotations

import os

from prefect import flow

from bincount.model.config import TrainConfig
from bincount.model.recipes import DEMO_RECIPE
from bincount.nightly.monitoring import DRIFT_EVENT
from bincount.review.ranking import probability_text
from bincount.synth import MAX_COUNT_LIMIT, default_truth
from flows.data import data_pipeline
from flows.retrain import retrain
from flows.score import score
from tasks.scoring import measure_queue_against_truth
from tasks.synth import synthesize_bucket


@flow(name="demo")
def demo(
    workdir: str = "demo-output",
    bins: int = 6000,
    arrivals: int = 400,
    seed: int = 7,
    train_epochs: int = DEMO_RECIPE["epochs"],
    train_minutes: float | None = None,
    mismatch_rate: float = 0.05,
    dark_arrivals: int = 200,
    dark_exposure: float = 0.35,
) -> dict:
    """Synthesize a bucket (once), run the data pipeline, train, evaluate and promote, score
    the bins there; then new bins arrive (some with records that disagree with their photos)
    and the nightly job scores them alone and queues the suspicious ones, measured against the
    synthetic truth (kept beside the bucket, where no flow looks). Last, a batch of darker
    photos arrives (a camera with less light): the nightly drift monitoring raises its alert."""
    bucket = os.path.join(workdir, "bucket")
    output = os.path.join(workdir, "output")
    truth = default_truth(bucket)  # demo-output/bucket.truth, where `bincount synth` puts it
    synthesized = None
    if not os.path.isdir(os.path.join(bucket, "metadata")):
        synthesized = synthesize_bucket(
            bucket,
            bins=bins,
            seed=seed,
            max_count=MAX_COUNT_LIMIT,
            append=False,
            defect_rate=0.01,
            truth=truth,
        )
    data = data_pipeline(source=bucket, output=output)
    model = retrain(
        source=bucket,
        output=output,
        # Epochs decide what the model learns; a time budget, when given, can only cut it short.
        config=TrainConfig(**{**DEMO_RECIPE, "epochs": train_epochs, "max_minutes": train_minutes}),
    )
    backfill = score(source=bucket, output=output)
    arrived = synthesize_bucket(
        bucket,
        bins=arrivals,
        seed=seed + 1,
        max_count=MAX_COUNT_LIMIT,
        append=True,
        defect_rate=0.02,
        mismatch_rate=mismatch_rate,
        truth=truth,
    )
    nightly = score(source=bucket, output=output)
    measured = measure_queue_against_truth(output, truth, list(arrived.ids))
    darker = synthesize_bucket(
        bucket,
        bins=dark_arrivals,
        seed=seed + 2,
        max_count=MAX_COUNT_LIMIT,
        append=True,
        defect_rate=0.02,
        mismatch_rate=mismatch_rate,
        truth=truth,
        exposure=dark_exposure,
    )
    dark_night = score(source=bucket, output=output)
    return {
        "bucket": os.path.abspath(bucket),
        "output": os.path.abspath(output),
        "synthesized": synthesized.bins if synthesized else "reused",
        "data": data,
        "model": model,
        "backfill": backfill,
        "arrived": arrived.bins,
        "nightly": nightly,
        "mismatch_rate": mismatch_rate,
        "queue_against_truth": measured,
        "truth": os.path.abspath(truth),
        "dark_arrived": darker.bins,
        "dark_exposure": dark_exposure,
        "dark_night": dark_night,
    }


def demo_summary(result: dict) -> str:
    """What a person wants to read at the end of the demo."""
    ingest, validation = result["data"]["ingest"], result["data"]["validate"]
    manifest = result["data"]["manifest"]
    promotion = result["model"]["promotion"]
    ours = promotion["evaluation"]
    manifest_top = manifest["policy"].partition(":")[2] or "K"
    backfill, nightly = result["backfill"], result["nightly"]
    truth = result["queue_against_truth"]
    lines = [
        "",
        "bincount demo: done",
        f"  bucket     {result['bucket']} ({result['synthesized']} bins synthesized)",
        f"  ingested   {ingest['ingested']} bins, {ingest['quarantined']} malformed objects "
        "quarantined",
        f"  validated  {validation['rows']} bins, {validation['quarantined_rows']} quarantined "
        f"by the label contract (passed: {validation['passed']})",
        f"  manifest   {manifest['version']}: {manifest['rows']} bins, policy {manifest['policy']}",
        f"  model      {promotion['challenger']}: counts 0-5 (ABID's moderate task) "
        f"{100 * ours['moderate_accuracy']:.1f}% accurate, RMSE {ours['moderate_rmse']:.3f} "
        "(ABID ResNet-34 baseline on real bins: 55.67%, 0.930);",
        f"             every count (0-{manifest_top}, more): {100 * ours['accuracy']:.1f}%, RMSE "
        f"{ours['rmse']:.3f}; calibration error {ours['ece_before']:.3f} -> "
        f"{ours['ece_after']:.3f} (temperature {ours['temperature']:.2f})",
        f"  champion   {'promoted: ' if promotion['promote'] else 'kept: '}{promotion['reason']}",
        f"  scored     {backfill['scored']} bins already in the bucket; their review queue "
        f"holds {backfill['needs_review']} (budget {backfill['queue']['budget']})",
        f"  arrived    {result['arrived']} new bins, {100 * result['mismatch_rate']:g}% with "
        "records that disagree with the photo, 2% with other defects; the nightly run scored "
        f"{nightly['scored']} and skipped {nightly['already_scored']} scored before",
        f"  queue      {nightly['needs_review']} of {nightly['queue']['judged']} bins flagged "
        f"(budget {nightly['queue']['budget']}); against the truth in {result['truth']}:",
        f"             precision {_share(truth['precision'])} ({truth['flagged_wrong']} of "
        f"{truth['flagged']} flagged records are wrong), recall {_share(truth['recall'])} "
        f"({truth['flagged_wrong']} of {truth['wrong']} wrong records), "
        f"{_share(truth['recall_by_2_or_more'])} of the {truth['wrong_by_2_or_more']} off by 2+",
        "             first in line:",
        *(
            f"             #{row['review_rank']} {row['image_id']}: recorded "
            f"{row['expected_quantity']}, the model sees {row['predicted_count']}"
            f"{'+' if row['predicted_overflow'] else ''} and gives the record "
            f"{probability_text(row['p_recorded'])}"
            for row in nightly["review"][:3]
        ),
        *_drift_lines(result),
        f"  outputs    {result['output']}/",
        "             bins/ items/ quarantine/ manifests/ models/ scores/ review_queue/",
        "             review_outcomes/ (empty until the first verdict) monitoring/",
        "",
        "See the runs and their artifacts (ingest-summary, validation, manifest distribution,",
        "training curves, evaluation, promotion-decision, scoring-summary, drift-monitoring) in",
        "the Prefect UI (`make ui-check` screenshots them):",
        f"  PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')} "
        ".venv/bin/prefect server start   # then open http://127.0.0.1:4200",
    ]
    return "\n".join(lines)


def _drift_lines(result: dict) -> list[str]:
    """Each scoring run's drift verdict, and the alert of the darker night."""
    nights = (
        ("backfill", result["backfill"]),
        ("arrivals", result["nightly"]),
        (f"darker photos ({result['dark_exposure']:g}x light)", result["dark_night"]),
    )
    lines = []
    for name, night in nights:
        drift = night["drift"]
        psi, confidence = drift["psi_reference"], drift["mean_confidence"]
        lines.append(
            f"  {'' if lines else 'monitoring':10} {name}: {night['scored']} bins, PSI "
            f"{'n/a' if psi is None else f'{psi:.3f}'} vs the test set, confidence "
            f"{'n/a' if confidence is None else f'{confidence:.2f}'}: "
            + ("DRIFT" if drift["drift"] else "no drift")
        )
        if drift["drift"]:
            lines.append(
                f"             event {DRIFT_EVENT} emitted: " + "; ".join(drift["reasons"])
            )
    return lines


def _share(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.0f}%"
