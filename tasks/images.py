"""Task: decode a manifest's images once into the training cache."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.images.cache import CacheSummary, build_image_cache
from tasks.runtime import current_run_id, locations, timed_task


@timed_task("long_timeout_s", name="cache-images", cache_policy=NO_CACHE)
def cache_manifest_images(
    output: str | None, manifest: str | None, image_size: int
) -> CacheSummary:
    """Decode and shard a manifest's images at the training size (reused when complete)."""
    settings, _, output_location = locations(None, output)
    rows, details = load_manifest(output_location, manifest)
    source = Location.source(settings, details.source)  # where the manifest's images are
    summary = build_image_cache(
        source,
        output_location,
        rows,
        manifest_version=details.version,
        size=image_size,
        shard_size=settings.cache_shard_size,
        concurrency=settings.max_concurrency,
        limits=settings.image_limits(),
        run_id=current_run_id(),
        sources=details.sources,
    )
    get_run_logger().info(
        "image cache %s: %d images, %d quarantined (%s)",
        summary.uri,
        summary.images,
        summary.quarantined,
        "built" if summary.created else "reused",
    )
    return summary
