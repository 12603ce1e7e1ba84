"""Fixtures over real components: a moto S3 server on loopback, the Prefect test harness,
real JPEGs and Parquet in temporary folders, and the real ABID sample when it is present."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from bincount.core import telemetry

REPO = Path(__file__).resolve().parents[1]
SHARED_ABID = REPO.parent / "shared" / "abid"

# Before Prefect or GX is imported anywhere: local, quiet, no telemetry.
os.environ.setdefault("PREFECT_HOME", str(REPO / ".prefect"))
telemetry.quiet(force=True)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def shared_abid() -> Path:
    """The real ABID material beside the checkout; tests that need it skip without it."""
    if not (SHARED_ABID / "sample" / "metadata").is_dir():
        pytest.skip(f"real ABID data not found at {SHARED_ABID}")
    return SHARED_ABID


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint: moto's server as a subprocess on 127.0.0.1."""
    from bincount.testing.s3server import moto_s3_server

    with moto_s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh public bucket on the moto server; its name."""
    from bincount.testing.s3server import create_public_bucket

    name = f"abid-{uuid.uuid4().hex[:12]}"
    create_public_bucket(s3_server.endpoint_url, name)
    return name


@pytest.fixture
def settings_env(monkeypatch, s3_server):
    """Point the settings at the moto server with dummy credentials (never real ones)."""
    from bincount.core.settings import get_settings
    from bincount.testing.s3server import TEST_CREDENTIALS

    for name in list(os.environ):
        if name.startswith("BINCOUNT_"):
            monkeypatch.delenv(name)
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BINCOUNT_S3_ENDPOINT_URL", s3_server.endpoint_url)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary database and server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    # Generous: on a machine busy with other work the server has taken over 120 s to start.
    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture
def cli_env(prefect_api, s3_server):
    """The environment a ``bincount`` command runs in, as an operator's would be: the session's
    Prefect API, the settings given as ``BINCOUNT_*`` (never real credentials)."""
    from prefect.settings import PREFECT_API_URL

    from bincount.testing.s3server import TEST_CREDENTIALS

    def environment(**settings) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BINCOUNT_", "AWS_"))}
        env.update(TEST_CREDENTIALS)
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
        env["BINCOUNT_S3_ENDPOINT_URL"] = s3_server.endpoint_url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update({f"BINCOUNT_{name.upper()}": str(value) for name, value in settings.items()})
        return env

    return environment


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """The suite leaves no process behind: after every other fixture of the session is torn
    down (servers, clusters), this worker has no child left."""
    yield
    import psutil

    me = psutil.Process()
    # Python's own helpers (multiprocessing's resource tracker, forkserver) end with this process.
    children = [
        p for p in me.children(recursive=True) if "multiprocessing." not in " ".join(p.cmdline())
    ]
    _, alive = psutil.wait_procs(children, timeout=30)  # servers stop slowly on a busy machine
    left = [f"{p.pid} {' '.join(p.cmdline()[:4])}" for p in alive if p.is_running()]
    for process in alive:
        process.kill()
    assert not left, f"Expected no process left behind by the tests, but got {left}"


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A bucket of 40 real-JPEG bins (0-5 items) and an output with a promoted (tiny) champion
    that counts 0..3 and "more than 3" (policy open:3)."""
    from bincount.core.storage import Location
    from bincount.testing.pipeline import run_pipeline
    from tests.builders import write_clean_bucket

    root = tmp_path_factory.mktemp("trained")
    write_clean_bucket(root / "bucket", 40)
    run_pipeline(Location(str(root / "bucket")), Location(str(root / "out")), policy="open:3")
    return root


@pytest.fixture
def cached_manifest(tmp_path):
    """40 bins of real JPEGs, ingested, validated, in a manifest (counts 0-5) and cached at the
    tests' tiny size: the output's Location and the manifest version."""
    from bincount.core.storage import Location
    from bincount.testing.pipeline import run_pipeline, tiny_config
    from tests.builders import write_clean_bucket

    root = tmp_path / "bucket"
    write_clean_bucket(root, 40)
    output = Location(str(tmp_path / "out"))
    run = run_pipeline(
        Location(str(root)), output, policy="max:5", config=tiny_config(), until="cache"
    )
    return output, run.manifest_version
