"""Checks of the arguments the FiftyOne layer's public functions share (made before any write)."""

from __future__ import annotations

import numbers


def check_probability(name: str, value) -> None:
    """Raise ValueError unless ``value`` is a number in [0, 1] (thresholds on probabilities and scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def check_count(name: str, value, least: int = 1) -> None:
    """Raise ValueError unless ``value`` is an integer >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def check_shard(shard) -> tuple:
    """``shard=(i, k)``: two integers with k >= 1 and 0 <= i < k (a float such as 0.5 is refused)."""
    if not isinstance(shard, (tuple, list)) or len(shard) != 2 or any(
            isinstance(p, bool) or not isinstance(p, numbers.Integral) for p in shard):
        raise ValueError(f"shard must be a pair (i, k) of integers, got {shard!r}")
    index, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard ({index}, {count}): need k >= 1 and 0 <= i < k")
    return index, count
