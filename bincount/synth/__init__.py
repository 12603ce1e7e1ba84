"""A synthetic ABID bucket: bin photos and metadata in the real bucket's layout and JSON shape.

``synthesize`` writes ``bin-images/<id>.jpg`` and ``metadata/<id>.json`` into any `Location`
(:mod:`bincount.core.storage`). Counts follow the real ABID label distribution (embedded in
``resources/label_distribution.json``), truncated to ``0..max_count`` (by default 0..50, which
holds 99.9% of real bins; a third of them hold more than 5 items). Every bin is a pure function
of ``(seed, ordinal, max_count)``: its RNG streams derive from those alone, so the bytes do not
depend on how many worker processes render them, and an appended batch continues the ordinal
sequence instead of repeating it.

The pictures imitate ABID photos (a yellow fabric pod, elastic bands across the front, dim and
uneven light, sensor noise, JPEG) while keeping the count recoverable: no item is more than
:data:`MAX_HIDDEN` hidden by the items above it or by the bands.

The modules: ``bucket`` writes bins into a bucket (:func:`synthesize`, :func:`make_bin`, the
truth table); ``streams`` seeds each bin's independent RNG streams; ``ids`` maps ordinals to
the real bucket's id shapes; ``labels`` draws counts from the real distribution; ``products``
holds the catalogue a seed's bins stock; ``metadata`` writes a bin's JSON; ``defects`` breaks
it on purpose; ``textures`` makes the per-seed texture pools; ``sprites`` draws one unit of a
product; ``placement`` lays units out; ``render`` paints the photo; ``drawing`` holds shared
drawing helpers.
"""

from bincount.synth.bucket import (
    IMAGE_PREFIX,
    MAX_COUNT_LIMIT,
    METADATA_PREFIX,
    BinRecord,
    SynthSummary,
    default_truth,
    existing_ids,
    make_bin,
    synthesize,
    truth_table,
)
from bincount.synth.defects import (
    CAMERA_FAULTS,
    DEFECT_KINDS,
    CameraFault,
    inject_defect,
    mismatch_offset,
    mismatched_record,
)
from bincount.synth.ids import MAX_BINS, bin_id, ordinal_of, plan_ids
from bincount.synth.labels import bin_count, count_probabilities, draw_count, label_distribution
from bincount.synth.metadata import encode_metadata, metadata_document, sku_document
from bincount.synth.placement import MAX_HIDDEN
from bincount.synth.products import Look, Product, catalogue, pick_lines
from bincount.synth.render import (
    MAX_HEIGHT,
    MAX_WIDTH,
    MIN_HEIGHT,
    MIN_WIDTH,
    Rendered,
    image_size,
    render_bin,
)
from bincount.synth.sprites import item_sprite
from bincount.synth.textures import Pools, texture_pools

__all__ = [
    "CAMERA_FAULTS",
    "DEFECT_KINDS",
    "IMAGE_PREFIX",
    "MAX_BINS",
    "MAX_COUNT_LIMIT",
    "MAX_HEIGHT",
    "MAX_HIDDEN",
    "MAX_WIDTH",
    "METADATA_PREFIX",
    "MIN_HEIGHT",
    "MIN_WIDTH",
    "BinRecord",
    "CameraFault",
    "Look",
    "Pools",
    "Product",
    "Rendered",
    "SynthSummary",
    "bin_count",
    "bin_id",
    "catalogue",
    "count_probabilities",
    "default_truth",
    "draw_count",
    "encode_metadata",
    "existing_ids",
    "image_size",
    "inject_defect",
    "item_sprite",
    "label_distribution",
    "make_bin",
    "metadata_document",
    "mismatch_offset",
    "mismatched_record",
    "ordinal_of",
    "pick_lines",
    "plan_ids",
    "render_bin",
    "sku_document",
    "synthesize",
    "texture_pools",
    "truth_table",
]
