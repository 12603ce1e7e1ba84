"""One retry layer per path, for faults that are transient by what they are."""

from __future__ import annotations

import errno

import aiohttp
import pytest
import s3fs
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError
from fsspec.asyn import sync
from s3fs.errors import translate_boto_error

from bincount.core.retries import HTTPStatusError, is_transient
from bincount.core.storage import Location
from bincount.testing.proxycontrol import fault_proxy
from bincount.testing.s3server import TEST_CREDENTIALS, upload_public


def _client_error(status: int, code: str) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


TRANSIENT = [
    _client_error(503, "SlowDown"),
    _client_error(500, "InternalError"),
    _client_error(429, "TooManyRequests"),
    _client_error(400, "RequestTimeout"),
    translate_boto_error(_client_error(503, "ServiceUnavailable")),  # as s3fs raises it
    EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ResponseParserError("truncated XML"),
    ConnectionResetError(errno.ECONNRESET, "reset"),
    TimeoutError(),
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("truncated body"),
    HTTPStatusError(503, "s3://b/k"),
]
PERMANENT = [
    _client_error(403, "AccessDenied"),
    _client_error(404, "NoSuchKey"),
    translate_boto_error(_client_error(404, "NoSuchKey")),  # FileNotFoundError
    translate_boto_error(_client_error(403, "AccessDenied")),  # PermissionError
    HTTPStatusError(400, "s3://b/k"),
    FileNotFoundError("gone"),
    PermissionError("forbidden"),
    TypeError("unsupported operand"),
    KeyError("Contents"),
    ValueError("bad value"),
    ParamValidationError(report="Invalid type for parameter MaxKeys"),
    RuntimeError("anything not known to be transient"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_faults_by_what_they_are(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_faults_and_programming_errors(error):
    assert not is_transient(error)


def _s3fs_retry_loop(location: Location, raising: BaseException) -> int:
    """How many times s3fs's request loop (the one that owns signed requests' retries) calls a
    request that raises ``raising``."""
    calls = []

    async def request():
        calls.append(1)
        raise raising

    with pytest.raises(type(translate_boto_error(raising))):
        sync(location.fs.loop, s3fs.core._error_wrapper, request, retries=location.fs.retries)
    return len(calls)


def test_signed_requests_retry_in_s3fs_alone_and_never_a_programming_error(s3_server):
    location = Location("s3://any", endpoint_url=s3_server.endpoint_url, max_attempts=3)
    assert location.fs.retries == 3
    # botocore sends once: its retries would multiply s3fs's.
    assert location.fs.config_kwargs["retries"] == {"total_max_attempts": 1, "mode": "standard"}
    assert _s3fs_retry_loop(location, TypeError("a bug")) == 1
    assert _s3fs_retry_loop(location, KeyError("a bug")) == 1
    assert _s3fs_retry_loop(location, _client_error(404, "NoSuchKey")) == 1
    assert _s3fs_retry_loop(location, _client_error(500, "InternalError")) == 3
    assert _s3fs_retry_loop(location, ReadTimeoutError(endpoint_url="x")) == 3


def test_requests_on_the_wire_a_missing_key_once_a_throttled_one_until_it_gives_up(
    s3_server, bucket
):
    upload_public(s3_server.endpoint_url, bucket, {"metadata/1.json": b"{}"})
    with fault_proxy(s3_server.endpoint_url, latency_ms=0) as proxy:
        for anonymous in (True, False):
            location = Location(
                f"s3://{bucket}",
                endpoint_url=proxy.endpoint_url,
                anonymous=anonymous,
                key=None if anonymous else TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                secret=None if anonymous else TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                max_attempts=3,
            )
            proxy.reset()
            got = location.fetch_many(["metadata/missing.json"], concurrency=1)
            assert isinstance(got[0], FileNotFoundError)
            assert proxy.stats().requests == 1, anonymous  # not retried, by any layer

    with fault_proxy(
        s3_server.endpoint_url, latency_ms=0, fault_rate=1.0, faults=("throttle",)
    ) as proxy:
        location = Location(
            f"s3://{bucket}", endpoint_url=proxy.endpoint_url, anonymous=True, max_attempts=3
        )
        with pytest.raises(HTTPStatusError, match="HTTP 503"):
            location.fetch_many(["metadata/1.json"], concurrency=1)
        assert proxy.stats().requests == 3  # three tries in all, not 3 x 8 x 5


def test_every_task_times_out_after_its_setting_and_none_retries(monkeypatch):
    import importlib
    import pkgutil

    import prefect

    import tasks
    from bincount.core.settings import get_settings

    monkeypatch.setenv("BINCOUNT_CHUNK_TIMEOUT_S", "12.5")
    get_settings.cache_clear()
    found = {}
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        for value in vars(module).values():
            if isinstance(value, prefect.Task) and value.fn.__module__ == module.__name__:
                found[value.name] = (value.limit_s, value.retries)
                # A chunk's limit is held by its watchdog (Prefect's cannot stop a worker thread).
                assert (value.timeout_seconds is None) == (value.name.endswith("-chunk"))
    get_settings.cache_clear()
    assert len(found) >= 18 and all(timeout and not retries for timeout, retries in found.values())
    assert found["score-chunk"] == found["ingest-chunk"] == (12.5, 0)  # read when it runs


def test_a_hung_task_fails_at_its_timeout_and_is_not_retried(prefect_api, monkeypatch):
    import time

    from prefect import flow

    from bincount.core.settings import get_settings
    from tasks.runtime import timed_task

    calls = []

    @timed_task("step_timeout_s", name="hangs")
    def hangs() -> None:
        calls.append(1)
        time.sleep(60)

    @flow(name="a-night")
    def night() -> None:
        hangs()

    monkeypatch.setenv("BINCOUNT_STEP_TIMEOUT_S", "1")
    get_settings.cache_clear()
    started = time.monotonic()
    state = night(return_state=True)
    get_settings.cache_clear()
    assert state.is_failed() and "timed out" in state.message.lower() + str(state.data).lower()
    assert time.monotonic() - started < 30 and calls == [1]
