"""Does a model count an original bin photo as it counts the photo's squashed, re-encoded copy?

``../shared/abid/resized224`` holds photos that a third party squashed to 224 x 224 with
Pillow's default ``resize`` (bicubic) and saved at Pillow's default JPEG quality (75); the
nightly photos are the bucket's originals, which bincount decodes with libjpeg's reduced-scale
draft and a bilinear resize to the model's size (``bincount.images.decode``). This scores every
original of ``../shared/abid/sample`` (counts 0-5) both ways with a registered model and prints
how often the two counts agree, how far the probabilities move, and each way's accuracy
against the records.

    python bench/geometry.py --output R --model VERSION
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from bincount.core.storage import Location
from bincount.images.decode import decode_image
from bincount.nightly.scorer import load_scorer

REPO = Path(__file__).resolve().parents[1]


def squashed_copy(payload: bytes) -> bytes:
    """The photo as resized224 holds it: the whole photo squashed to 224 x 224 by Pillow's
    default resize, saved at Pillow's default JPEG quality."""
    with Image.open(io.BytesIO(payload)) as image:
        small = image.convert("RGB").resize((224, 224))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="the output holding the model")
    parser.add_argument("--model", default="champion")
    parser.add_argument("--sample", default=str(REPO.parent / "shared" / "abid" / "sample"))
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    scorer = load_scorer(Location(args.output), args.model, device="cpu")
    sample = Path(args.sample)
    rows = []
    for metadata in sorted((sample / "metadata").glob("*.json")):
        quantity = json.loads(metadata.read_text())["EXPECTED_QUANTITY"]
        if quantity <= min(5, scorer.max_count):
            rows.append((metadata.stem, quantity))
    labels = np.array([quantity for _, quantity in rows])
    ways: dict[str, list[np.ndarray]] = {"original": [], "squashed copy": []}
    for start in range(0, len(rows), args.batch_size):
        payloads = [
            (sample / "bin-images" / f"{image_id}.jpg").read_bytes()
            for image_id, _ in rows[start : start + args.batch_size]
        ]
        for way, images in (
            ("original", [decode_image(p, scorer.image_size) for p in payloads]),
            (
                "squashed copy",
                [decode_image(squashed_copy(p), scorer.image_size) for p in payloads],
            ),
        ):
            ways[way].append(scorer.probabilities(np.stack(images)))
    probabilities = {way: np.concatenate(chunks) for way, chunks in ways.items()}
    counts = {way: scorer.counts(p) for way, p in probabilities.items()}
    agree = float(np.mean(counts["original"] == counts["squashed copy"]))
    moved = np.abs(probabilities["original"] - probabilities["squashed copy"]).sum(1) / 2
    print(f"model {scorer.version} ({scorer.image_size} px), {len(rows)} original photos, 0-5")
    print(f"same count both ways: {100 * agree:.1f} %")
    print(
        f"probability moved (total variation): mean {moved.mean():.3f}, "
        f"95th percentile {np.percentile(moved, 95):.3f}"
    )
    for way, predicted in counts.items():
        accuracy = float(np.mean(predicted == labels))
        rmse = float(np.sqrt(np.mean((predicted - labels) ** 2)))
        print(f"{way:>14}: accuracy {100 * accuracy:.1f} %, RMSE {rmse:.3f}")


if __name__ == "__main__":
    main()
