"""Screenshot the demo's artifacts in the Prefect UI, and check the pictures in them.

    make ui-check                      # after `make demo`: the runs in .prefect/
    .venv/bin/python bench/ui_check.py --prefect-home /some/.prefect --out ui-check

Starts a Prefect server (UI included, no services) on a free port over ``--prefect-home``,
finds the newest artifact of each kind through the API (``POST /api/artifacts/filter``), and
for each one

* decodes every ``data:`` image of its Markdown: each must be a real, non-empty PNG/JPEG/SVG,
  and a raster one not a single colour;
* opens ``/artifacts/artifact/<id>`` in headless Chromium and saves ``<out>/<kind>.png``, which
  must not be blank.

Chromium comes from the distribution (``apt-get install chromium``); without ``chromium`` or
``chromium-browser`` on the PATH the check is skipped with a message (exit 0). Exit 1 when an
artifact is missing or a check fails.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bincount.testing.prefectserver import PrefectServer

REPO = Path(__file__).resolve().parents[1]
# The newest artifact of each kind: (name, exact key or None, key prefix).
KINDS = (
    ("training", None, "training-"),
    ("evaluation", None, "evaluation-"),
    ("scoring", "scoring-summary", None),
    ("drift", "drift-monitoring", None),
    ("manifest", "manifest-class-distribution", None),
)
REQUIRED = {"training", "evaluation", "scoring"}
DATA_IMAGE = re.compile(r"!\[[^\]]*\]\(data:image/(png|jpeg|svg\+xml);base64,([A-Za-z0-9+/=]+)\)")
WINDOW = (1500, 2600)


@dataclass
class Checked:
    kind: str
    key: str
    images: int
    screenshot: str
    problems: list[str]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefect-home", default=os.environ.get("PREFECT_HOME", REPO / ".prefect"))
    parser.add_argument("--out", default=str(REPO / "ui-check"), help="where the PNGs go")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the server")
    args = parser.parse_args(argv)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print(
            "ui-check skipped: neither chromium nor chromium-browser is on the PATH "
            "(Debian/Ubuntu: apt-get install chromium)"
        )
        return 0
    home = Path(args.prefect_home).resolve()
    if not (home / "prefect.db").exists():
        print(
            f"ui-check: expected Prefect's database at {home}/prefect.db, but found none: "
            "run `make demo` first (or pass --prefect-home)"
        )
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = PrefectServer(home, startup_timeout_s=args.timeout, ui=True, services=False)
    base = f"http://127.0.0.1:{server.port}"
    with server:
        print(f"Prefect server on {base} over {home} (log: {server.log_path})")
        results = [
            _check(chromium, base, kind, artifact, out)
            for kind, artifact in _newest_artifacts(base).items()
        ]
    missing = REQUIRED - {r.kind for r in results}
    print(f"\n{'kind':<11} {'images':>6}  screenshot / problems")
    for r in results:
        verdict = "; ".join(r.problems) if r.problems else "ok"
        print(f"{r.kind:<11} {r.images:>6}  {r.screenshot}  {r.key}: {verdict}")
    for kind in sorted(missing):
        print(f"{kind:<11} {'-':>6}  no artifact found: run `make demo` first")
    failed = bool(missing) or any(r.problems for r in results)
    print("\nui-check " + ("FAILED" if failed else "passed"))
    return 1 if failed else 0


def _post(base: str, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(
        f"{base}/api{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _newest_artifacts(base: str) -> dict[str, dict]:
    found = {}
    for kind, key, prefix in KINDS:
        condition = {"any_": [key]} if key else {"like_": f"{prefix}%"}
        rows = _post(
            base,
            "/artifacts/filter",
            {"artifacts": {"key": condition}, "sort": "CREATED_DESC", "limit": 5},
        )
        # like_ matches anywhere in the key: keep the keys that really start with the prefix.
        rows = [r for r in rows if key or (r["key"] or "").startswith(prefix)]
        if rows:
            found[kind] = rows[0]
    return found


# -- the checks --------------------------------------------------------------------------------
def _check(chromium: str, base: str, kind: str, artifact: dict, out: Path) -> Checked:
    problems = []
    markdown = artifact.get("data") if isinstance(artifact.get("data"), str) else ""
    images = DATA_IMAGE.findall(markdown)
    if not images:
        problems.append("no data: image in its markdown")
    for number, (subtype, payload) in enumerate(images, start=1):
        problem = _image_problem(subtype, payload)
        if problem:
            problems.append(f"image {number}: {problem}")
    screenshot = out / f"{kind}.png"
    problem = _screenshot(chromium, f"{base}/artifacts/artifact/{artifact['id']}", screenshot)
    if problem:
        problems.append(f"screenshot: {problem}")
    return Checked(kind, artifact["key"], len(images), str(screenshot), problems)


def _image_problem(subtype: str, payload: str) -> str | None:
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        return f"not base64 ({error})"
    if not data:
        return "empty"
    if subtype == "svg+xml":
        return None if b"<svg" in data[:2000] else "an SVG without <svg"
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # any decoder error is the finding
        return f"not a readable {subtype} ({type(error).__name__}: {error})"
    return _blank(image)


def _blank(image: Image.Image) -> str | None:
    """A problem when the image is empty or one colour."""
    if image.width < 2 or image.height < 2:
        return f"only {image.width}x{image.height} pixels"
    low, high = zip(*image.convert("RGB").getextrema(), strict=True)
    if max(high) - min(low) < 16:
        return "a single colour"
    return None


def _screenshot(chromium: str, url: str, path: Path) -> str | None:
    path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="ui-check-chromium-") as profile:
        command = [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={path}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--virtual-time-budget=20000",
            url,
        ]
        try:
            subprocess.run(command, capture_output=True, timeout=180, check=False)
        except subprocess.TimeoutExpired:
            return "Chromium did not finish within 180 s"
    if not path.exists() or not path.stat().st_size:
        return "Chromium wrote no PNG"
    with Image.open(path) as image:
        return _blank(image)


if __name__ == "__main__":
    sys.exit(main())
