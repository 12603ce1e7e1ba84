"""Synthetic bin ids: every shape the real bucket has, invertible so an append continues."""

from __future__ import annotations

MAX_BINS = 100_000  # the id scheme keeps five-digit ids below 100000 up to here

# Ordinals run in blocks of 20: slot 2 is an unpadded id ("121"), slots 6 and 13 six-digit ids
# ("100003"), the other 17 five-digit zero-padded ids ("00015"). Small buckets thus hold every
# kind of id the real bucket has, and the map inverts so an append can continue after it.
_BLOCK = 20
_UNPADDED_SLOT = 2
_SIX_DIGIT_SLOTS = (6, 13)
_FIVE_DIGIT_SLOTS = tuple(
    s for s in range(_BLOCK) if s != _UNPADDED_SLOT and s not in _SIX_DIGIT_SLOTS
)
_UNPADDED_BASE = 121  # the real unpadded objects start at 121.jpg


def bin_id(ordinal: int) -> str:
    """The file-name id of the ``ordinal``-th synthetic bin (0-based)."""
    if not 0 <= ordinal < MAX_BINS:
        raise ValueError(f"Expected a bin ordinal in 0..{MAX_BINS - 1}, but got {ordinal}")
    block, slot = divmod(ordinal, _BLOCK)
    if slot == _UNPADDED_SLOT:
        return str(_UNPADDED_BASE + block)
    if slot in _SIX_DIGIT_SLOTS:
        return str(100_000 + block * len(_SIX_DIGIT_SLOTS) + _SIX_DIGIT_SLOTS.index(slot))
    return f"{1 + block * len(_FIVE_DIGIT_SLOTS) + _FIVE_DIGIT_SLOTS.index(slot):05d}"


def ordinal_of(bin_id_: str) -> int | None:
    """The ordinal :func:`bin_id` maps to ``bin_id_``, or None for an id it never produces."""
    if not bin_id_.isdigit():
        return None
    number = int(bin_id_)
    if len(bin_id_) == 5:
        block, index = divmod(number - 1, len(_FIVE_DIGIT_SLOTS))
        ordinal = block * _BLOCK + _FIVE_DIGIT_SLOTS[index] if number >= 1 else -1
    elif len(bin_id_) == 6 and number >= 100_000:
        block, index = divmod(number - 100_000, len(_SIX_DIGIT_SLOTS))
        ordinal = block * _BLOCK + _SIX_DIGIT_SLOTS[index]
    elif len(bin_id_) < 5 and not bin_id_.startswith("0") and number >= _UNPADDED_BASE:
        ordinal = (number - _UNPADDED_BASE) * _BLOCK + _UNPADDED_SLOT
    else:
        return None
    return ordinal if 0 <= ordinal < MAX_BINS else None


def plan_ids(existing: set[str], *, bins: int) -> list[tuple[int, str]]:
    """(ordinal, id) for ``bins`` new bins after the last synthetic ordinal in ``existing``."""
    known = [o for o in map(ordinal_of, existing) if o is not None]
    ordinal = max(known) + 1 if known else 0
    plan: list[tuple[int, str]] = []
    while len(plan) < bins:
        if ordinal >= MAX_BINS:
            raise ValueError(
                f"Expected at most {MAX_BINS} synthetic bins in one bucket, but {bins} more after"
                f" {len(existing)} existing ones would pass that"
            )
        candidate = bin_id(ordinal)
        if candidate not in existing:  # a foreign object (e.g. a real one) keeps its id
            plan.append((ordinal, candidate))
        ordinal += 1
    return plan
