"""Input drift, measured: clean, dark, blurred and resized synthetic nights against a reference.

Each night's photos are rendered (bincount.synth, seeds the tests do not use), decoded at the
demo model's input size as scoring decodes them, and judged by the monitoring's own input-drift
functions (quantile PSI against the reference images and against the recent undrifted nights,
``input_reasons`` at DriftPolicy's threshold). A night raises one event when it has a reason.

    PYTHONPATH=$PWD .venv/bin/python bench/drift.py --nights 5 --size 200
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bincount.images.decode import decode_image
from bincount.images.stats import INPUT_STATISTICS, statistics_table
from bincount.nightly.inputdrift import input_reasons, quantile_psi
from bincount.nightly.monitoring import DriftPolicy
from bincount.synth import CameraFault, make_bin

FAULTS = {
    "clean": {},
    "dark": {"exposure": 0.6},
    "blur": {"camera": CameraFault("blur", 1.0)},
    "resize": {"camera": CameraFault("resize", 0.75)},
}


def _photos(args: tuple[int, int, int, int, str]) -> dict[str, np.ndarray]:
    seed, start, count, size, fault = args
    images, payloads = [], []
    for ordinal in range(start, start + count):
        _, jpeg, _ = make_bin(
            seed=seed, ordinal=ordinal, bin_id=f"{ordinal:05d}", max_count=20, **FAULTS[fault]
        )
        images.append(decode_image(jpeg, size))
        payloads.append(jpeg)
    table = statistics_table(np.stack(images), payloads)
    return {name: table.column(name).to_numpy().astype(np.float64) for name in INPUT_STATISTICS}


def _row(night: dict, reference: dict, recent: list[dict]) -> dict:
    pooled = {n: np.concatenate([r[n] for r in recent]) for n in INPUT_STATISTICS} if recent else {}
    return {
        "input_statistics": list(INPUT_STATISTICS),
        "input_medians": [float(np.median(night[n])) for n in INPUT_STATISTICS],
        "reference_input_medians": [float(np.median(reference[n])) for n in INPUT_STATISTICS],
        "input_psi_reference": [quantile_psi(night[n], reference[n]) for n in INPUT_STATISTICS],
        "input_psi_recent": [
            quantile_psi(night[n], pooled[n]) if pooled else None for n in INPUT_STATISTICS
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=5, help="nights of each fault")
    parser.add_argument("--size", type=int, default=200, help="bins per night (the demo's 200)")
    parser.add_argument("--reference", type=int, default=500, help="reference images")
    parser.add_argument("--image-size", type=int, default=112, help="the model's input size")
    parser.add_argument("--seed", type=int, default=1009, help="first seed (tests use < 100)")
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    policy = DriftPolicy()
    started = time.perf_counter()
    # Between every two faulty nights a clean one: faults on seeds of their own, clean nights
    # on the reference's seed further on (new bins of the same warehouse).
    plan = [("reference", options.seed, 0, options.reference, "clean")]
    ordinal = 10_000
    for night in range(options.nights):
        for fault in ("dark", "blur", "resize"):
            plan.append((f"clean {night}", options.seed, ordinal, options.size, "clean"))
            ordinal += options.size
            plan.append((f"{fault} {night}", options.seed + 1 + night, 0, options.size, fault))
    with ProcessPoolExecutor(options.workers) as pool:
        jobs = [(seed, start, n, options.image_size, f) for _, seed, start, n, f in plan]
        nights = list(pool.map(_photos, jobs))
    reference, recent = nights[0], []
    print(f"reference: {options.reference} images; threshold {policy.max_input_psi:g}")
    print(f"{'night':12} {'event':5} {'largest PSI (statistic)':34} reasons")
    events = {"clean": [], "dark": [], "blur": [], "resize": []}
    for (name, *_, fault), night in zip(plan[1:], nights[1:], strict=True):
        row = _row(night, reference, recent[-7:])
        reasons = input_reasons(row, policy.max_input_psi)
        pairs = zip(row["input_psi_reference"], row["input_psi_recent"], strict=True)
        psi = [max(a, b or 0) for a, b in pairs]
        top = int(np.argmax(psi))
        events[fault].append(bool(reasons))
        if not reasons:
            recent.append(night)
        print(
            f"{name:12} {int(bool(reasons)):5} {psi[top]:8.3f} ({INPUT_STATISTICS[top]:22}) "
            + ("; ".join(r.split(";")[0] for r in reasons))[:110]
        )
    print()
    for fault, raised in events.items():
        print(f"{fault:7} nights {len(raised):3}  with an event {sum(raised):3}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
