"""The pictures in the UI: a training run keeps one artifact, redrawn in place every epoch, and
the manifest and evaluation artifacts carry their charts (through the flows, real API)."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from bincount.testing.pipeline import tiny_config
from tests.builders import write_clean_bucket

PNG = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def _pngs(markdown: str) -> list[Image.Image]:
    images = []
    for payload in PNG.findall(markdown):
        image = Image.open(io.BytesIO(base64.b64decode(payload)))
        image.load()
        images.append(image)
    return images


def _artifacts_by_key(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def test_training_redraws_one_artifact_and_evaluation_draws_three_charts(
    prefect_api, settings_env, tmp_path
):
    from flows.evaluate import evaluate
    from flows.manifest import manifest
    from flows.train import train
    from tests.test_flows import _artifacts

    write_clean_bucket(tmp_path / "bucket", 40)
    source, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    from flows.ingest import ingest
    from flows.validate import validate

    ingest(source=source, output=output)
    validate(source=source, output=output)
    built = manifest(source=source, output=output, policy="open:3", return_state=True)
    (distribution,) = _pngs(
        _artifacts(built.state_details.flow_run_id)["manifest-class-distribution"]
    )
    assert distribution.width > 300

    trained = train(output=output, config=tiny_config(epochs=3, lr=1e-3))
    assert len(trained["history"]) == 3
    (artifact,) = _artifacts_by_key(f"training-{trained['version']}")  # one, not one per epoch
    assert artifact.type == "markdown"
    assert "epoch 3 of at most 3" in artifact.data  # updated in place up to the last epoch
    assert len(re.findall(r"^\| \**\d+\** \| ", artifact.data, re.MULTILINE)) == 3  # per epoch
    (curves,) = _pngs(artifact.data)
    assert curves.width > 600

    report = evaluate(output=output, model=trained["version"], return_state=True)
    markdown = _artifacts(report.state_details.flow_run_id)[f"evaluation-{trained['version']}"]
    charts = _pngs(markdown)
    assert len(charts) == 3  # accuracy per count, confusion heatmap, reliability diagram
    # The charts come after the headline table and before the numbers they picture.
    assert markdown.index("| accuracy |") < markdown.index("data:image/png")
    assert markdown.index("data:image/png") < markdown.index("Confusion matrix (rows")
