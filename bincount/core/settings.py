"""The one settings object: environment (``BINCOUNT_*``) and CLI options feed it."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bincount.core import limits

PUBLIC_ABID_BUCKET = "s3://aft-vbi-pds"


class Settings(BaseSettings):
    """Where data comes from and goes to, and how hard to push the object store."""

    model_config = SettingsConfigDict(env_prefix="BINCOUNT_", extra="ignore", frozen=True)

    source: str = Field(
        PUBLIC_ABID_BUCKET,
        description="Bucket (or folder) holding bin-images/ and metadata/; read anonymously.",
    )
    output: str = Field("bincount-output", description="Where every table is written.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, LocalStack, moto); None for AWS."
    )
    source_anonymous: bool = Field(True, description="Read the source without credentials.")
    # Writes use the standard AWS credential chain unless these are given.
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str = "us-east-1"

    max_concurrency: int = Field(64, ge=1, le=1024, description="Object fetches in flight.")
    list_partitions: int = Field(16, ge=1, le=256, description="Key ranges listed in parallel.")
    chunk_size: int = Field(
        5000, ge=1, description="Objects fetched and written per part file (bounds memory)."
    )
    # Each shard is one commit of the cache build: a killed build resumes at the shard it was in.
    cache_shard_size: int = Field(
        2048,
        ge=1,
        description="Images decoded and written per image-cache shard (bounds the memory of a "
        "build); keep it between a killed build and its rerun.",
    )
    max_attempts: int = Field(
        8, ge=1, le=50, description="Tries per S3 request when a fault is transient."
    )
    # A source that refuses most reads (not public, wrong credentials) stops the run at once
    # instead of leaving every object of the bucket pending.
    read_fault_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of a chunk's objects that may fail to read (403, gone) for one "
        "reason before the run stops; fewer stay pending and are read again next run.",
    )
    # Every step times out: a hung run of a flow allowed one run at a time (the nightly score)
    # would block every later one. Each task reads its limit when it starts.
    step_timeout_s: float = Field(
        3600,
        gt=0,
        description="Longest a listing, plan, validation, manifest, queue or summary step runs.",
    )
    chunk_timeout_s: float = Field(
        3600, gt=0, description="Longest one chunk (chunk_size objects or images) takes."
    )
    long_timeout_s: float = Field(
        12 * 3600,
        gt=0,
        description="Longest a whole-manifest step (image cache, evaluation) or a synth runs.",
    )
    training_timeout_s: float = Field(
        48 * 3600, gt=0, description="Longest one training (or tuning trial) runs."
    )
    # A read that never answers must fail within these, whatever runs it; past them the storage
    # layer treats it as a transient fault (retried max_attempts times).
    connect_timeout_s: float = Field(10, gt=0, description="Longest an S3 connection takes.")
    read_timeout_s: float = Field(
        30, gt=0, description="Longest an S3 answer stays silent before the read is abandoned."
    )
    # A crashed holder stops renewing: its lease frees itself after lease_ttl_s.
    lease_ttl_s: float = Field(
        120, gt=0, description="How long a run's lease on an output lives unless renewed."
    )
    lease_wait_s: float = Field(
        600,
        ge=0,
        description="How long a run waits for another run's lease on its output, then ends.",
    )
    max_expected_quantity: int = Field(
        250, ge=0, description="Largest EXPECTED_QUANTITY the contract accepts (ABID's is 209)."
    )
    # Limits on one object: past them an object becomes a quarantine row, never a failed run.
    max_metadata_bytes: int = Field(
        limits.MAX_METADATA_BYTES, ge=1, description="Largest metadata object read, in bytes."
    )
    max_metadata_depth: int = Field(
        limits.MAX_METADATA_DEPTH,
        ge=1,
        le=limits.METADATA_DEPTH_CEILING,
        description="Deepest JSON nesting parsed (ABID nests 4 levels).",
    )
    max_image_bytes: int = Field(
        limits.MAX_IMAGE_BYTES, ge=1, description="Largest image object read, in bytes."
    )
    max_image_pixels: int = Field(
        limits.MAX_IMAGE_PIXELS,
        ge=1,
        description="Most pixels one image decodes to (a JPEG at its reduced draft scale).",
    )

    def given_source(self) -> str | None:
        """The source set in the environment (``BINCOUNT_SOURCE``), or None when only the
        default stands: an output's own bins then say where they came from."""
        return self.source if "source" in self.model_fields_set else None

    def metadata_limits(self) -> limits.MetadataLimits:
        """The metadata limits as the library takes them."""
        return limits.MetadataLimits(
            max_bytes=self.max_metadata_bytes, max_depth=self.max_metadata_depth
        )

    def image_limits(self) -> limits.ImageLimits:
        """The image limits as the library takes them."""
        return limits.ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)

    @field_validator("source", "output")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("Expected a path or URL, but got an empty string")
        return value.rstrip("/") if value not in ("/", "s3://") else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use (never at import)."""
    return Settings()
