"""Which storage errors are worth another try (connection errors, timeouts, throttling, 5xx) and
which are final (403, 404, a programming error), and how long to wait between tries.
"""

from __future__ import annotations

import functools
import http.client
import random
from collections.abc import Iterator
from dataclasses import dataclass

# S3 error codes that say the same (throttling and timeouts) whatever the status.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient object-store faults."""

    max_attempts: int = 8
    base_delay_s: float = 0.05
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


class HTTPStatusError(OSError):
    """An HTTP answer other than success, not-found or forbidden, with its status."""

    def __init__(self, status: int, uri: str, detail: str = "") -> None:
        super().__init__(f"{uri}: HTTP {status}: {detail}")
        self.status = status
        self.uri = uri
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.status, self.uri, self.detail)


def is_transient(error: BaseException) -> bool:
    """Whether a retry can help, by what the error is: a dropped or refused connection, a
    timeout, a truncated body, throttling, 429 or 5xx. A missing or forbidden key, a malformed
    request and a programming error (TypeError, KeyError, ValueError, ...) are not."""
    for cause in _causes(error):
        status, code = _status_and_code(cause)
        if status is not None or code is not None:
            return status in TRANSIENT_STATUS_CODES or code in TRANSIENT_ERROR_CODES
        if isinstance(cause, _transient_types()):
            return True
    return False


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what caused it (s3fs turns botocore's errors into OSError with a cause)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__


def _status_and_code(error: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and S3 error code an error carries, if it is an answer from a server."""
    if isinstance(error, HTTPStatusError):
        return error.status, None
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore's ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, response["Error"].get("Code")
    return None, None


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
    """Exception types that are transient faults of the network or the server."""
    found: list[type[BaseException]] = [
        ConnectionError,  # refused, reset, aborted, broken pipe
        TimeoutError,  # socket.timeout and asyncio's
        http.client.IncompleteRead,
    ]
    from fsspec.exceptions import FSTimeoutError

    found.append(FSTimeoutError)
    try:  # the AWS stack (s3fs's dependency)
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, IncompleteReadError
        from botocore.parsers import ResponseParserError

        # botocore's ConnectionError covers EndpointConnectionError and the connect timeout,
        # HTTPClientError a closed connection and the read timeout; a truncated listing fails
        # to parse (ResponseParserError).
        found += [BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseParserError]
    except ImportError:
        pass
    try:
        import aiohttp

        found += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    return tuple(found)


def _http_error(status: int, uri: str, body: bytes) -> Exception:
    """The exception a plain GET's status means: permanent ones are not retried."""
    detail = body[:200].decode("utf-8", "replace")
    if status == 404:
        return FileNotFoundError(f"{uri}: not found")
    if status == 403:
        return PermissionError(f"{uri}: access denied (is the object public?)")
    return HTTPStatusError(status, uri, detail)


# HTTP statuses that say "try again": too many requests and the server's own faults.
TRANSIENT_STATUS_CODES = frozenset({429, 500, 502, 503, 504})
