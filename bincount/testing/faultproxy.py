"""A delaying, fault-injecting HTTP proxy to put in front of a local S3 endpoint.

Every request waits ``latency_ms`` (an ``asyncio.sleep``, so requests in flight overlap the way
they do against real S3 from outside its region), then is either answered with a fault or
forwarded unchanged: method, raw path and query, headers (``Host`` and ``Authorization``
included, so signed requests stay as they were signed) and body. Faults are drawn from a seeded
RNG, only for GET and HEAD (object reads and listings):

- ``throttle``: 503 with S3's ``SlowDown`` error body
- ``error500``: 500 with S3's ``InternalError`` error body
- ``drop``: the connection is closed without a response
- ``truncate``: the full ``Content-Length`` is promised, half the body sent, then the connection
  closed (a HEAD or an empty object, having no body to cut, is dropped instead)

A separate mode, ``hang_reads`` (``--hang-reads``, or ``POST /__proxy__/hang?reads=on|off``
while it runs), holds every object GET (not a listing) open: the connection is accepted and
nothing is ever sent, as from a server that stopped answering mid-read. It is not one of the
drawn faults: a read that never returns is a drill of its own (timeouts), not a noise level.

Another, ``deny_reads`` (``POST /__proxy__/deny?code=<S3 error code>[&after=N]``, ``code=off``
to end it), answers every object GET after the next ``N`` with 403 and that S3 error
(``AccessDenied``, ``InvalidAccessKeyId``, ``ExpiredToken``, ``SignatureDoesNotMatch``), listings
still answered: a window in which reads are refused, as when a bucket policy changes or the
run's credentials are rotated away or expire midway through a run.

``GET /__proxy__/stats`` answers ``{"requests": n, "requests_by_method": {...},
"faults_by_kind": {...}, "hung": n, "denied": n}`` and
``POST /__proxy__/reset`` zeroes the counters and re-seeds the RNG.

Run it as a program (``python -m bincount.testing.faultproxy --upstream URL``) or through
:func:`fault_proxy`, which starts that program as a subprocess, so its CPU time never competes
with a benchmarked client for one GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field

FAULT_KINDS = ("throttle", "error500", "drop", "truncate")
CONTROL_PREFIX = "/__proxy__/"
STATS_PATH = "/__proxy__/stats"
RESET_PATH = "/__proxy__/reset"
HANG_PATH = "/__proxy__/hang"
DENY_PATH = "/__proxy__/deny"
# The 403 answers a read may get when access or credentials go away, with S3's own messages.
DENIALS = {
    "AccessDenied": "Access Denied",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
    "ExpiredToken": "The provided token has expired.",
    "SignatureDoesNotMatch": "The request signature we calculated does not match the signature "
    "you provided. Check your key and signing method.",
}
_FAULTABLE_METHODS = frozenset({"GET", "HEAD"})
# Per-connection headers (RFC 9110 §7.6.1) and the ones the proxy recomputes for its own hop.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
_READY_LINE = "fault proxy listening on "
_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class ProxyConfig:
    """Where to forward, how long every request waits, and which faults to inject how often."""

    upstream: str
    latency_ms: float = 30.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    hang_reads: bool = False

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"Expected an http(s):// upstream URL, but got {self.upstream!r}")
        if self.latency_ms < 0:
            raise ValueError(f"Expected latency_ms >= 0, but got {self.latency_ms}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"Expected fault_rate in [0, 1], but got {self.fault_rate}")
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown or not self.faults:
            raise ValueError(
                f"Expected one or more fault kinds of {FAULT_KINDS}, but got {self.faults}"
            )


@dataclass(frozen=True)
class ProxyStats:
    """What the proxy has seen since it started or was last reset."""

    requests: int
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    requests_by_method: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    denied: int = 0

    @property
    def faults(self) -> int:
        return sum(self.faults_by_kind.values())


class FaultPicker:
    """The seeded sequence of fault decisions: the n-th faultable request gets the n-th draw."""

    def __init__(self, fault_rate: float, faults: Sequence[str], seed: int) -> None:
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._rng = random.Random(self.seed)

    def next(self) -> str | None:
        if self.fault_rate <= 0.0:
            return None
        if self._rng.random() >= self.fault_rate:
            return None
        return self._rng.choice(self.faults)


def s3_error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()


# -- the server (runs in its own process) ---------------------------------------------------------
class _Proxy:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.latency_s = config.latency_ms / 1000
        self.picker = FaultPicker(config.fault_rate, config.faults, config.seed)
        self.requests = 0
        self.requests_by_method: dict[str, int] = {}
        self.faults_by_kind = dict.fromkeys(config.faults, 0)
        self.hang_reads = config.hang_reads
        self.hung = 0
        self.deny_code: str | None = None
        self.deny_after = 0  # object GETs still forwarded before the denial starts
        self.denied = 0
        self.session = None  # created inside the running loop

    async def start_session(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            # No pool limit: the client under test decides how many requests are in flight.
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            # Bytes pass through as the upstream sent them (Content-Encoding untouched).
            auto_decompress=False,
            # Forward only the client's own headers, not aiohttp's defaults.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
        )

    async def close_session(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request):
        from aiohttp import web

        if request.path.startswith(CONTROL_PREFIX):
            return self.control(request)
        self.requests += 1
        self.requests_by_method[request.method] = self.requests_by_method.get(request.method, 0) + 1
        await asyncio.sleep(self.latency_s)
        if self.hang_reads and _is_object_read(request):
            self.hung += 1
            await asyncio.Event().wait()  # accepted, never answered (until the client hangs up)
        if self.deny_code is not None and _is_object_read(request):
            if self.deny_after > 0:
                self.deny_after -= 1
            else:
                self.denied += 1
                return self._s3_error(403, self.deny_code, DENIALS[self.deny_code])
        fault = self.picker.next() if request.method in _FAULTABLE_METHODS else None
        if fault is not None:
            self.faults_by_kind[fault] += 1
        if fault == "throttle":
            return self._s3_error(503, "SlowDown", "Please reduce your request rate.")
        if fault == "error500":
            return self._s3_error(500, "InternalError", "We encountered an internal error.")
        if fault == "drop" or (fault == "truncate" and request.method == "HEAD"):
            request.transport.close()
            # Never sent: aiohttp sees the closed transport and quietly gives up on it.
            return web.Response(status=204)
        return await self.forward(request, truncate=fault == "truncate")

    def control(self, request):
        from aiohttp import web

        if request.path == STATS_PATH and request.method == "GET":
            return web.json_response(
                {
                    "requests": self.requests,
                    "requests_by_method": self.requests_by_method,
                    "faults_by_kind": self.faults_by_kind,
                    "hung": self.hung,
                    "denied": self.denied,
                }
            )
        if request.path == HANG_PATH and request.method == "POST":
            reads = request.query.get("reads")
            if reads not in ("on", "off"):
                return web.json_response(
                    {"error": f"Expected {HANG_PATH}?reads=on or off, but got {reads!r}"},
                    status=400,
                )
            self.hang_reads = reads == "on"
            return web.json_response({"hang_reads": self.hang_reads})
        if request.path == DENY_PATH and request.method == "POST":
            return self.deny(request)
        if request.path == RESET_PATH and request.method == "POST":
            self.requests = 0
            self.requests_by_method = {}
            self.faults_by_kind = dict.fromkeys(self.config.faults, 0)
            self.hung = 0
            self.denied = 0
            self.picker.reset()
            return web.json_response({"reset": True})
        return web.json_response(
            {
                "error": f"Expected GET {STATS_PATH}, POST {RESET_PATH}, POST {HANG_PATH} or "
                f"POST {DENY_PATH}, but got "
                f"{request.method} {request.path}"
            },
            status=404,
        )

    def deny(self, request):
        """Start (``code``) or end (``code=off``) the window of refused reads."""
        from aiohttp import web

        code, after = request.query.get("code"), request.query.get("after", "0")
        if code not in (*DENIALS, "off") or not after.isdigit():
            return web.json_response(
                {
                    "error": f"Expected {DENY_PATH}?code=one of {sorted(DENIALS)} or off"
                    f"[&after=N], but got code={code!r} after={after!r}"
                },
                status=400,
            )
        self.deny_code = None if code == "off" else code
        self.deny_after = int(after)
        return web.json_response({"deny_reads": self.deny_code, "after": self.deny_after})

    async def forward(self, request, *, truncate: bool):
        """Pass the request upstream and stream the answer back (cut in half if ``truncate``)."""
        import aiohttp
        from aiohttp import web
        from yarl import URL

        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        body = await request.read() if request.body_exists else None
        url = URL(self.config.upstream.rstrip("/") + request.raw_path, encoded=True)
        response = web.StreamResponse()
        try:
            async with self.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                response.set_status(upstream.status, upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        response.headers.add(name, value)
                # The upstream's own length: a HEAD promises the object's size and sends nothing.
                length = upstream.headers.get("Content-Length")
                buffered = None
                if length is None:  # a chunked answer: buffer it to know the length to promise
                    buffered = await upstream.read()
                    length = len(buffered)
                response.content_length = int(length)
                cut = int(length) // 2 if truncate else None
                if cut is not None and int(length) == 0:  # nothing to cut: drop instead
                    request.transport.close()
                    return response
                await response.prepare(request)
                sent = 0
                async for chunk in _body_chunks(upstream, buffered):
                    if cut is not None and sent + len(chunk) >= cut:
                        await response.write(chunk[: cut - sent])
                        request.transport.close()
                        return response
                    await response.write(chunk)
                    sent += len(chunk)
        except aiohttp.ClientError as error:
            if response.prepared:  # the status line is out: all that is left is to hang up
                request.transport.close()
                return response
            return self._s3_error(
                502, "BadGateway", f"Expected {self.config.upstream} to answer, but got {error!r}"
            )
        await response.write_eof()
        return response

    @staticmethod
    def _s3_error(status: int, code: str, message: str):
        from aiohttp import web

        return web.Response(
            status=status, body=s3_error_body(code, message), content_type="application/xml"
        )


def _is_object_read(request) -> bool:
    """A GET of an object: a key below the bucket (path style), not a listing or a bucket."""
    bucket_and_key = request.path.lstrip("/").partition("/")[2]
    return request.method == "GET" and bool(bucket_and_key) and "list-type" not in request.query


async def _body_chunks(upstream, buffered: bytes | None):
    if buffered is not None:
        if buffered:
            yield buffered
        return
    async for chunk in upstream.content.iter_chunked(_CHUNK_BYTES):
        yield chunk


async def serve(config: ProxyConfig, *, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run the proxy until cancelled; prints one line with its URL once it accepts requests."""
    from aiohttp import web

    proxy = _Proxy(config)
    await proxy.start_session()
    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    print(f"{_READY_LINE}http://{host}:{bound_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await proxy.close_session()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help="comma-separated kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hang-reads", action="store_true", help="hold every object GET open, answering nothing"
    )
    args = parser.parse_args(argv)
    config = ProxyConfig(
        upstream=args.upstream,
        latency_ms=args.latency_ms,
        fault_rate=args.fault_rate,
        faults=tuple(kind.strip() for kind in args.faults.split(",") if kind.strip()),
        seed=args.seed,
        hang_reads=args.hang_reads,
    )
    # Ctrl-C is how a person stops it: no traceback for that.
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host=args.host, port=args.port))


if __name__ == "__main__":
    main()
