"""Copy a subset of the real ABID sample small enough to carry to a machine without it.

Whole pairs only (``bin-images/<photo>`` with its ``metadata/<id>.json``), in the sample's own
layout, so ``bench/cache.py --photos DIR`` reads the subset as it reads the sample. Pairs are
taken in an order fixed by a hash of each id (not the ids' order, which follows the bucket's
numbering), until the next pair would pass ``--max-mb`` MiB of files in all.

    python bench/carry_abid.py .abid_carry                 # at most 55 MiB
    python bench/carry_abid.py /tmp/small --max-mb 5

The folder must be new or empty. ABID's images and metadata are Amazon's (CC BY-NC-SA 3.0 US);
the carried copy is for measuring, like the sample itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABID_SAMPLE = REPO.parent / "shared" / "abid" / "sample"
MIB = 1024 * 1024


def sample_pairs(sample: Path) -> list[tuple[Path, Path]]:
    """``(metadata, photo)`` for each metadata object whose photo is present, in hash order."""
    pairs = []
    for meta in (sample / "metadata").glob("*.json"):
        document = json.loads(meta.read_bytes())
        photo = sample / "bin-images" / document.get("image_fname", f"{meta.stem}.jpg")
        if photo.is_file():
            pairs.append((meta, photo))
    return sorted(pairs, key=lambda pair: hashlib.sha256(pair[0].stem.encode()).hexdigest())


def make_carry(sample: Path, dest: Path, max_mb: float) -> tuple[int, int]:
    """Copy whole pairs into ``dest`` up to ``max_mb`` MiB; returns (pairs, bytes)."""
    if max_mb <= 0:
        raise ValueError(f"Expected --max-mb above 0, but got {max_mb}")
    if not (sample / "metadata").is_dir() or not (sample / "bin-images").is_dir():
        raise FileNotFoundError(
            f"Expected the ABID sample's layout under {sample}, but it is absent"
        )
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"Expected a new or empty folder, but {dest} holds files")
    budget = int(max_mb * MIB)
    (dest / "bin-images").mkdir(parents=True)
    (dest / "metadata").mkdir()
    copied = total = 0
    for meta, photo in sample_pairs(sample):
        size = meta.stat().st_size + photo.stat().st_size
        if total + size > budget:
            break
        shutil.copyfile(photo, dest / "bin-images" / photo.name)
        shutil.copyfile(meta, dest / "metadata" / meta.name)
        copied += 1
        total += size
    return copied, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="a new or empty folder (e.g. .abid_carry)")
    parser.add_argument("--sample", default=str(ABID_SAMPLE), help="the ABID sample folder")
    parser.add_argument("--max-mb", type=float, default=55.0, help="MiB of files at most")
    args = parser.parse_args(argv)
    try:
        pairs, total = make_carry(Path(args.sample), Path(args.dest), args.max_mb)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"bench/carry_abid.py: {error}", file=sys.stderr)
        return 2
    available = len(sample_pairs(Path(args.sample)))
    print(f"{args.dest}: {pairs} of {available} photo+metadata pairs, {total / MIB:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
