"""The test rig itself: a real moto server, anonymous reads, and the delaying, faulty proxy."""

from __future__ import annotations

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import s3fs
from botocore.exceptions import ClientError

from bincount.testing.faultproxy import FAULT_KINDS, FaultPicker, ProxyConfig
from bincount.testing.proxycontrol import fault_proxy
from bincount.testing.s3server import (
    create_public_bucket,
    moto_s3_server,
    s3_client,
    upload_public,
    upload_tree,
)

BUCKET = "rig-public"
OBJECTS = {f"metadata/{i:05d}.json": f'{{"EXPECTED_QUANTITY": {i}}}'.encode() for i in range(5)}
KEY, BODY = "metadata/00003.json", OBJECTS["metadata/00003.json"]


@pytest.fixture(scope="module")
def endpoint_url():
    with moto_s3_server() as server:
        create_public_bucket(server.endpoint_url, BUCKET)
        upload_public(server.endpoint_url, BUCKET, OBJECTS)
        yield server.endpoint_url


def raw_request(url: str, method: str = "GET", path: str = f"/{BUCKET}/{KEY}"):
    """One request over a fresh connection: status, headers and body as the wire carried them."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# -- moto server ---------------------------------------------------------------------------------
def test_public_objects_read_anonymously_with_s3fs_and_unsigned_boto3(endpoint_url):
    fs = s3fs.S3FileSystem(anon=True, endpoint_url=endpoint_url, skip_instance_cache=True)
    assert fs.cat_file(f"{BUCKET}/{KEY}") == BODY
    assert sorted(fs.ls(f"{BUCKET}/metadata")) == sorted(f"{BUCKET}/{key}" for key in OBJECTS)

    client = s3_client(endpoint_url, anonymous=True)
    assert client.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == BODY
    assert client.head_object(Bucket=BUCKET, Key=KEY)["ContentLength"] == len(BODY)


def test_a_private_object_is_refused_to_anonymous_readers(endpoint_url):
    s3_client(endpoint_url).put_object(Bucket=BUCKET, Key="private.json", Body=b"{}", ACL="private")
    with pytest.raises(ClientError) as refused:
        s3_client(endpoint_url, anonymous=True).get_object(Bucket=BUCKET, Key="private.json")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_upload_tree_keeps_relative_keys(endpoint_url, tmp_path):
    (tmp_path / "bin-images").mkdir()
    (tmp_path / "bin-images" / "00001.jpg").write_bytes(b"\xff\xd8jpeg")
    (tmp_path / "top.json").write_bytes(b"{}")
    create_public_bucket(endpoint_url, "rig-tree")

    assert upload_tree(endpoint_url, "rig-tree", tmp_path) == 2
    client = s3_client(endpoint_url, anonymous=True)
    body = client.get_object(Bucket="rig-tree", Key="bin-images/00001.jpg")["Body"].read()
    assert body == b"\xff\xd8jpeg"


def test_the_server_stops_when_the_context_exits():
    with moto_s3_server() as server:
        process = server.process
        assert raw_request(server.endpoint_url, path="/")[0] == 200
    assert process.poll() is not None


# -- fault proxy ---------------------------------------------------------------------------------
def test_every_request_waits_the_latency(endpoint_url):
    with fault_proxy(endpoint_url, latency_ms=150) as proxy:
        started = time.perf_counter()
        status, _, body = raw_request(proxy.endpoint_url)
        elapsed = time.perf_counter() - started
    assert (status, body) == (200, BODY)
    assert elapsed >= 0.150


def test_signed_and_anonymous_clients_work_through_the_proxy(endpoint_url):
    with fault_proxy(endpoint_url, latency_ms=0) as proxy:
        signed = s3_client(proxy.endpoint_url)
        signed.put_object(Bucket=BUCKET, Key="via-proxy.json", Body=b"[1, 2]", ACL="public-read")
        fs = s3fs.S3FileSystem(anon=True, endpoint_url=proxy.endpoint_url, skip_instance_cache=True)
        assert fs.cat_file(f"{BUCKET}/via-proxy.json") == b"[1, 2]"
        assert fs.info(f"{BUCKET}/via-proxy.json")["size"] == 6
        stats = proxy.stats()
    assert stats.requests_by_method["PUT"] == 1
    assert stats.faults == 0


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers with what arrived: the request line's path and the headers."""

    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


def test_signed_requests_arrive_upstream_exactly_as_signed():
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    path = "/rig-public/a%2Fb%20c?list-type=2&prefix=metadata%2F"
    signature = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request"
    try:
        with fault_proxy(f"http://127.0.0.1:{echo.server_port}", latency_ms=0) as proxy:
            parts = urlsplit(proxy.endpoint_url)
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            connection.request("GET", path, headers={"Authorization": signature})
            seen = json.loads(connection.getresponse().read())
            connection.close()
    finally:
        echo.shutdown()
        echo.server_close()
    assert seen["path"] == path
    # SigV4 signs the Host the client addressed (the proxy), so that is what must arrive.
    assert seen["headers"]["Host"] == parts.netloc
    assert seen["headers"]["Authorization"] == signature


def test_throttle_answers_503_slowdown(endpoint_url):
    with fault_proxy(endpoint_url, latency_ms=0, fault_rate=1.0, faults=["throttle"]) as proxy:
        status, headers, body = raw_request(proxy.endpoint_url)
    assert status == 503
    assert b"<Code>SlowDown</Code>" in body
    assert headers["Content-Type"].startswith("application/xml")


def test_error500_answers_internal_error(endpoint_url):
    with fault_proxy(endpoint_url, latency_ms=0, fault_rate=1.0, faults=["error500"]) as proxy:
        status, _, body = raw_request(proxy.endpoint_url)
    assert status == 500
    assert b"<Code>InternalError</Code>" in body


def test_drop_closes_the_connection_without_a_response(endpoint_url):
    with fault_proxy(endpoint_url, latency_ms=0, fault_rate=1.0, faults=["drop"]) as proxy:
        with pytest.raises(http.client.RemoteDisconnected):
            raw_request(proxy.endpoint_url)
        stats = proxy.stats()
    assert stats.faults_by_kind == {"drop": 1}


def test_truncate_promises_the_whole_body_and_sends_half(endpoint_url):
    with (
        fault_proxy(endpoint_url, latency_ms=0, fault_rate=1.0, faults=["truncate"]) as proxy,
        pytest.raises(http.client.IncompleteRead) as cut,
    ):
        raw_request(proxy.endpoint_url)
    assert len(cut.value.partial) == len(BODY) // 2
    assert cut.value.expected == len(BODY) - len(BODY) // 2


def test_faults_spare_writes_and_the_control_endpoints(endpoint_url):
    with fault_proxy(endpoint_url, latency_ms=0, fault_rate=1.0, faults=["throttle"]) as proxy:
        s3_client(proxy.endpoint_url).put_object(Bucket=BUCKET, Key="written.json", Body=b"{}")
        for _ in range(3):
            assert raw_request(proxy.endpoint_url)[0] == 503
        stats = proxy.stats()
        assert (stats.requests, stats.faults_by_kind) == (4, {"throttle": 3})

        proxy.reset()
        assert proxy.stats().requests == 0


def test_fault_draws_are_deterministic_for_a_seed():
    def draws(seed: int) -> list[str | None]:
        picker = FaultPicker(0.3, FAULT_KINDS, seed)
        return [picker.next() for _ in range(2000)]

    first = draws(seed=7)
    assert first == draws(seed=7)
    assert first != draws(seed=8)
    rate = sum(kind is not None for kind in first) / len(first)
    assert rate == pytest.approx(0.3, abs=0.04)
    assert {kind for kind in first if kind} == set(FAULT_KINDS)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"upstream": "127.0.0.1:5000"}, "Expected an http"),
        ({"fault_rate": 1.5}, "Expected fault_rate in [0, 1]"),
        ({"latency_ms": -1}, "Expected latency_ms >= 0"),
        ({"faults": ("slow",)}, "Expected one or more fault kinds"),
    ],
)
def test_a_bad_proxy_config_says_what_was_expected(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ProxyConfig(**{"upstream": "http://127.0.0.1:5000", **changes})
