"""Starting the fault proxy as a child process, reading its address, steering and stopping it from
a test or bench.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bincount.testing.faultproxy import (
    _READY_LINE,
    DENY_PATH,
    FAULT_KINDS,
    HANG_PATH,
    RESET_PATH,
    STATS_PATH,
    ProxyConfig,
    ProxyStats,
)
from bincount.testing.s3server import stop_process


# -- the client side: run it as a subprocess ------------------------------------------------------
@dataclass(frozen=True)
class FaultProxy:
    """A running proxy process: point S3 clients at ``endpoint_url``."""

    endpoint_url: str
    process: subprocess.Popen
    config: ProxyConfig

    def stats(self) -> ProxyStats:
        with urllib.request.urlopen(self.endpoint_url + STATS_PATH, timeout=10) as answer:
            data = json.load(answer)
        return ProxyStats(
            requests=data["requests"],
            faults_by_kind=data["faults_by_kind"],
            requests_by_method=data["requests_by_method"],
            hung=data.get("hung", 0),
            denied=data.get("denied", 0),
        )

    def hang_reads(self, on: bool) -> None:
        """Hold every object GET open without an answer (``on``), or answer them again."""
        url = f"{self.endpoint_url}{HANG_PATH}?reads={'on' if on else 'off'}"
        request = urllib.request.Request(url, method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def deny_reads(self, code: str | None, *, after: int = 0) -> None:
        """Answer every object GET after the next ``after`` with 403 and S3 error ``code``
        (``AccessDenied``, ``InvalidAccessKeyId``, ``ExpiredToken`` ...), or, with None, let
        reads through again."""
        query = urllib.parse.urlencode({"code": code or "off", "after": after})
        request = urllib.request.Request(
            f"{self.endpoint_url}{DENY_PATH}?{query}", method="POST", data=b""
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def reset(self) -> None:
        request = urllib.request.Request(self.endpoint_url + RESET_PATH, method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()


@contextmanager
def fault_proxy(
    upstream: str,
    *,
    latency_ms: float = 30.0,
    fault_rate: float = 0.0,
    faults: Sequence[str] = FAULT_KINDS,
    seed: int = 0,
    hang_reads: bool = False,
    startup_timeout_s: float = 30.0,
) -> Iterator[FaultProxy]:
    """Start the proxy as a subprocess in front of ``upstream``; stop it on exit."""
    config = ProxyConfig(
        upstream=upstream,
        latency_ms=latency_ms,
        fault_rate=fault_rate,
        faults=tuple(faults),
        seed=seed,
        hang_reads=hang_reads,
    )
    command = [
        sys.executable,
        "-m",
        "bincount.testing.faultproxy",
        f"--upstream={config.upstream}",
        f"--latency-ms={config.latency_ms}",
        f"--fault-rate={config.fault_rate}",
        f"--faults={','.join(config.faults)}",
        f"--seed={config.seed}",
        *(["--hang-reads"] if config.hang_reads else []),
    ]
    env = dict(os.environ)
    # The child must import this very package, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    log_dir = tempfile.mkdtemp(prefix="fault-proxy-")
    log_path = Path(log_dir) / "proxy.log"
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )
        try:
            endpoint_url = _read_ready_line(process, startup_timeout_s)
            if endpoint_url is None:
                raise RuntimeError(
                    f"Expected the fault proxy to print '{_READY_LINE}URL' within "
                    f"{startup_timeout_s:.0f} s, but got exit code {process.poll()}; its log "
                    f"ends:\n{log_path.read_text(errors='replace')[-2000:]}"
                )
            yield FaultProxy(endpoint_url=endpoint_url, process=process, config=config)
        finally:
            stop_process(process)
            process.stdout.close()
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def _read_ready_line(process: subprocess.Popen, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=min(remaining, 0.5)):
                if process.poll() is not None:
                    return None
                continue
            line = process.stdout.readline()
            if not line:  # the child closed stdout: it exited
                return None
            if line.startswith(_READY_LINE):
                return line[len(_READY_LINE) :].strip()
    return None
