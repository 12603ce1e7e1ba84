"""A real S3 endpoint on 127.0.0.1: the moto server as a subprocess, and helpers to fill it.

The server is the ``moto_server`` program, not moto's in-process mock, so every client (boto3,
s3fs, aiohttp, a proxy in another process) talks HTTP to it exactly as it would to S3.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Dummy credentials for the server and every signed client: a stray real key never reaches it.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running moto server: point clients at ``endpoint_url``."""

    endpoint_url: str
    process: subprocess.Popen
    log_path: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def moto_server_executable() -> str:
    """``moto_server`` from this interpreter's environment first, else from ``PATH``."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise FileNotFoundError(
            f"Expected the moto_server program (pip install 'moto[server]') next to "
            f"{sys.executable} or on PATH, but got neither"
        )
    return found


def server_environment(port: int) -> dict[str, str]:
    """The environment for a child process: no real AWS settings, dummy credentials."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(TEST_CREDENTIALS)
    # moto reads MOTO_PORT when it builds URLs; an inherited one would point elsewhere.
    env["MOTO_PORT"] = str(port)
    return env


@contextmanager
def moto_s3_server(*, startup_timeout_s: float = 30.0, attempts: int = 3) -> Iterator[S3Server]:
    """Start ``moto_server`` on a free port, wait until it answers, stop it on exit."""
    executable = moto_server_executable()
    log_dir = tempfile.mkdtemp(prefix="moto-server-")
    log_path = Path(log_dir) / "moto.log"
    try:
        # The free port can be taken between choosing it and moto binding it: try another.
        for attempt in range(1, attempts + 1):
            port = free_port()
            with open(log_path, "wb") as log:
                # A file, not a pipe: moto logs every request and a full pipe would stall it.
                process = subprocess.Popen(
                    [executable, "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_environment(port),
                )
            try:
                endpoint_url = f"http://127.0.0.1:{port}"
                if _wait_until_answering(process, port, startup_timeout_s):
                    yield S3Server(endpoint_url=endpoint_url, process=process, log_path=log_path)
                    return
                if attempt == attempts or "in use" not in _tail(log_path):
                    raise RuntimeError(
                        f"Expected moto_server to answer on {endpoint_url} within "
                        f"{startup_timeout_s:.0f} s, but got exit code {process.poll()}; "
                        f"its log ends:\n{_tail(log_path)}"
                    )
            finally:
                stop_process(process)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def _wait_until_answering(process: subprocess.Popen, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/moto-api/")
            connection.getresponse().read()
            return True
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    return False


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a child server, killing it if it does not stop within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""


# -- clients and contents ------------------------------------------------------------------------
def s3_client(endpoint_url: str, *, anonymous: bool = False, max_pool_connections: int = 10):
    """A boto3 S3 client for the endpoint: unsigned, or signed with the dummy credentials."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(
        signature_version=UNSIGNED if anonymous else None,
        max_pool_connections=max_pool_connections,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    credentials = (
        {}
        if anonymous
        else {
            "aws_access_key_id": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=REGION, config=config, **credentials
    )


def create_public_bucket(endpoint_url: str, bucket: str) -> None:
    """A bucket anyone may list, like the public ABID bucket."""
    s3_client(endpoint_url).create_bucket(Bucket=bucket, ACL="public-read")


def upload_public(
    endpoint_url: str, bucket: str, files: Mapping[str, bytes], *, workers: int = 16
) -> int:
    """PUT every ``key: bytes`` as a public-read object, ``workers`` at a time; returns the count.

    The ACL is on each object because that is what moto checks for an unsigned read: a bucket
    policy granting ``s3:GetObject`` does not cover HEAD there (moto asks for ``s3:HeadObject``).
    """
    return _put_concurrently(endpoint_url, bucket, files, files.__getitem__, workers)


def upload_tree(
    endpoint_url: str, bucket: str, local_dir: str | os.PathLike, *, workers: int = 16
) -> int:
    """Upload every file under ``local_dir`` (keys relative to it, ``/``-separated), public-read."""
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"Expected a folder to upload, but got {str(root)!r}")
    paths = {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
    return _put_concurrently(
        endpoint_url, bucket, paths, lambda key: paths[key].read_bytes(), workers
    )


def _put_concurrently(
    endpoint_url: str,
    bucket: str,
    keys: Iterable[str],
    body_of: Callable[[str], bytes],
    workers: int,
) -> int:
    client = s3_client(endpoint_url, max_pool_connections=workers)

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=body_of(key), ACL="public-read")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(1 for _ in pool.map(put, keys))
