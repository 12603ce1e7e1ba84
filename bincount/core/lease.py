"""A lease on one stage of an output, so that two runs never write beside each other.

A run that writes a stage of an output (ingest, validate, manifest, score, review, register)
holds that stage's lease from before it plans until its last write. The lease is a small JSON
object per *generation*, ``_leases/<stage>/<generation>.json``; the highest generation is the
lease as it stands:

* taking it is creating the next generation's object, atomically and only if absent (an S3
  ``PUT`` with ``If-None-Match: *``; on a local path a hard link of a complete temporary file,
  which fails if the name exists, like ``O_EXCL`` but never shows a half-written record), so of
  two runs that find the lease free, exactly one gets it;
* a holder renews its own generation from a background thread (:class:`LeaseHeartbeat`); a
  holder that crashed stops renewing, and once its ``expires_at`` has passed the next run takes
  the next generation: the lease is never deleted under a holder, only outnumbered;
* a holder that finds a higher generation than its own has lost the lease (it was paused past
  its time to live) and says so rather than writing on.

Expiry compares the holder's ``expires_at`` (UTC) with the reader's clock: the machines that
write one output must keep their clocks within a small fraction of the time to live (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

from bincount.core.storage import Location

logger = logging.getLogger(__name__)

LEASES_FOLDER = "_leases"
STAGES = ("ingest", "validate", "manifest", "score", "review", "register")


class LeaseHeld(RuntimeError):
    """Another run holds the lease and did not let it go within the wait."""

    def __init__(self, uri: str, holder: LeaseRecord, waited_s: float) -> None:
        self.holder = holder
        super().__init__(
            f"Expected the {holder.stage} lease on {uri} to be free, but it is held by "
            f"{holder.holder.describe()} since {holder.acquired_at} (renewed "
            f"{holder.renewed_at}, expires {holder.expires_at} unless renewed); waited "
            f"{waited_s:.0f} s (lease_wait_s). Nothing was written: run again once it ends."
        )


class LeaseLost(RuntimeError):
    """A holder found its lease taken over (it stopped renewing past its time to live)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the run (its id and name in the orchestrator), host and process."""

    run_id: str
    run_name: str
    host: str
    pid: int

    def describe(self) -> str:
        return f"run {self.run_name!r} ({self.run_id}) on host {self.host}, pid {self.pid}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@dataclass(frozen=True)
class LeaseRecord:
    """One generation of a stage's lease, as stored."""

    stage: str
    generation: int
    holder: Holder
    token: str  # this acquisition's own id: the same run taking the lease twice holds it twice
    acquired_at: str
    renewed_at: str
    expires_at: str
    released: bool = False

    def live(self, now: datetime) -> bool:
        """Whether it still keeps others out: not released and not expired."""
        return not self.released and datetime.fromisoformat(self.expires_at) > now

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        fields = json.loads(data)
        return cls(**{**fields, "holder": Holder(**fields["holder"])})


@dataclass(frozen=True)
class LeaseTerms:
    """How long a lease lives unrenewed, how long to wait for a held one, how often to look."""

    ttl_s: float
    wait_s: float = 0.0
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError(f"Expected a lease ttl_s > 0, but got {self.ttl_s}")
        if self.wait_s < 0:
            raise ValueError(f"Expected a lease wait_s >= 0, but got {self.wait_s}")
        if self.poll_s <= 0:
            raise ValueError(f"Expected a lease poll_s > 0, but got {self.poll_s}")


def _now() -> datetime:
    return datetime.now(UTC)


class Lease:
    """The lease on ``stage`` of ``location``, taken by :meth:`acquire` for ``holder``."""

    def __init__(
        self,
        location: Location,
        stage: str,
        holder: Holder,
        terms: LeaseTerms,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"Expected a lease stage of {STAGES}, but got {stage!r}")
        self.location = location
        self.stage = stage
        self.holder = holder
        self.terms = terms
        self.clock = clock
        self.record: LeaseRecord | None = None

    # -- reading -------------------------------------------------------------------------------
    def _key(self, generation: int) -> str:
        return f"{LEASES_FOLDER}/{self.stage}/{generation:09d}.json"

    def _generations(self) -> list[int]:
        keys = self.location.list(f"{LEASES_FOLDER}/{self.stage}").column("key").to_pylist()
        names = (key.rpartition("/")[2] for key in keys)
        return sorted(int(name[:-5]) for name in names if name.endswith(".json"))

    def current(self) -> LeaseRecord | None:
        """The highest generation as stored, or None when the stage was never leased."""
        for generation in reversed(self._generations()):
            try:
                return LeaseRecord.from_bytes(self.location.read_bytes(self._key(generation)))
            except FileNotFoundError:  # cleaned up between the listing and the read
                continue
        return None

    def outnumbered(self) -> LeaseRecord | None:
        """The generation just below the one this run holds, as it stands now: the lease this
        run took over (expired or released), or None when this run holds the first."""
        if self.record is None or self.record.generation == 1:
            return None
        try:
            return LeaseRecord.from_bytes(
                self.location.read_bytes(self._key(self.record.generation - 1))
            )
        except FileNotFoundError:
            return None

    # -- taking ----------------------------------------------------------------------------------
    def acquire(self) -> LeaseRecord:
        """Take the lease, waiting up to ``terms.wait_s`` for a live holder to let it go;
        raise :class:`LeaseHeld` naming the holder when it does not."""
        started = time.monotonic()
        announced = None
        while True:
            blocker = self.try_acquire()
            if blocker is None:
                return self.record
            waited = time.monotonic() - started
            if waited >= self.terms.wait_s:
                raise LeaseHeld(self.location.uri(), blocker, waited)
            if announced != blocker.token:
                logger.warning(
                    "waiting up to %.0f s for the %s lease on %s: held by %s since %s",
                    self.terms.wait_s,
                    self.stage,
                    self.location.uri(),
                    blocker.holder.describe(),
                    blocker.acquired_at,
                )
                announced = blocker.token
            time.sleep(min(self.terms.poll_s, max(0.0, self.terms.wait_s - waited)))

    def try_acquire(self) -> LeaseRecord | None:
        """Take the lease if it is free; else the live record that holds it."""
        generations = self._generations()
        current = self.current()
        if current is not None and current.live(self.clock()):
            return current
        generation = (generations[-1] if generations else 0) + 1
        now = self.clock()
        record = LeaseRecord(
            stage=self.stage,
            generation=generation,
            holder=self.holder,
            token=uuid.uuid4().hex,
            acquired_at=now.isoformat(),
            renewed_at=now.isoformat(),
            expires_at=(now + timedelta(seconds=self.terms.ttl_s)).isoformat(),
        )
        if not create_exclusive(self.location, self._key(generation), record.to_bytes()):
            return self.current() or record  # another run took this generation first
        if self._generations()[-1] != generation:
            # This run read a stale listing: a later generation exists, so it never held it.
            self.location.delete([self._key(generation)])
            return self.current() or record
        self.record = record
        if current is not None:
            logger.warning(
                "took over the %s lease on %s from %s (%s since %s)",
                self.stage,
                self.location.uri(),
                current.holder.describe(),
                "released" if current.released else "expired",
                current.renewed_at if current.released else current.expires_at,
            )
        # Generations two behind can no longer be contended for: keep the folder small.
        self.location.delete([self._key(g) for g in generations if g < generation - 1])
        return None

    # -- holding ---------------------------------------------------------------------------------
    def renew(self) -> LeaseRecord:
        """Push ``expires_at`` one time to live ahead; :class:`LeaseLost` if taken over."""
        self._check_held()
        now = self.clock()
        record = replace(
            self.record,
            renewed_at=now.isoformat(),
            expires_at=(now + timedelta(seconds=self.terms.ttl_s)).isoformat(),
        )
        self.location.write_bytes(self._key(record.generation), record.to_bytes())
        self.record = record
        self._check_held()  # a takeover between the check and the write outnumbers this one
        return record

    def release(self) -> None:
        """Let the lease go (a no-op when it was lost: the new holder's record stands)."""
        if self.record is None:
            return
        try:
            self._check_held()
        except LeaseLost:
            self.record = None
            return
        released = replace(self.record, released=True, renewed_at=self.clock().isoformat())
        self.location.write_bytes(self._key(released.generation), released.to_bytes())
        self.record = None

    def _check_held(self) -> None:
        if self.record is None:
            raise LeaseLost(f"Expected to hold the {self.stage} lease, but it was never taken")
        current = self.current()
        if current is None or current.token != self.record.token:
            by = current.holder.describe() if current else "nobody"
            raise LeaseLost(
                f"Expected to hold the {self.stage} lease on {self.location.uri()} "
                f"(generation {self.record.generation}), but it was taken over by {by}: this "
                "run stopped renewing it for longer than its time to live"
            )


def create_exclusive(location: Location, key: str, data: bytes) -> bool:
    """Write ``key`` whole only if it does not exist; False when it already did."""
    path = location.path(key)
    if location.is_s3:
        bucket, _, prefix = path.partition("/")
        try:
            location.fs.call_s3("put_object", Bucket=bucket, Key=prefix, Body=data, IfNoneMatch="*")
        except Exception as error:  # s3fs hands botocore's ClientError back wrapped in OSError
            if _precondition_failed(error):
                return False
            raise
        return True
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # atomic, and fails if the name exists (as O_EXCL would)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def _precondition_failed(error: BaseException) -> bool:
    """Whether S3 refused a conditional write: 412 (the key exists) or 409 (a concurrent
    conditional write to the same key is in progress; the other one wins)."""
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict) and "Error" in response:
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response["Error"].get("Code")
            return status in (409, 412) or code in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            )
        error = error.__cause__ or error.__context__
    return False


class LeaseHeartbeat:
    """Holds a lease for a ``with`` block: takes it on entry, renews it every third of its time
    to live from a daemon thread, releases it on exit. A lost lease fails the block on exit."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: LeaseLost | None = None

    def __enter__(self) -> LeaseRecord:
        record = self.lease.acquire()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{self.lease.stage}", daemon=True
        )
        self._thread.start()
        return record

    def _beat(self) -> None:
        interval = self.lease.terms.ttl_s / 3
        while not self._stop.wait(interval):
            try:
                self.lease.renew()
            except LeaseLost as error:
                self.lost = error
                logger.error("%s", error)
                return
            except Exception:  # a transient store fault: the next beat tries again
                logger.warning("could not renew the %s lease", self.lease.stage, exc_info=True)

    def __exit__(self, kind, error, traceback) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is not None:
            self.lease.record = None
            if error is None:
                raise self.lost
            return
        self.lease.release()
