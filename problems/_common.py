"""Small helpers shared by the zoo modules (not part of the per-problem interface)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def resolve_sizes(defaults: Mapping[str, int], given: Mapping[str, int]) -> dict[str, int]:
    """Merge ``given`` into a module's default ``SIZES``; reject unknown or invalid sizes."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"unknown size(s) {sorted(unknown)}; valid sizes are {sorted(defaults)}")
    sizes = {**defaults, **given}
    for key, value in sizes.items():
        if int(value) != value or value < 1:
            raise ValueError(f"size {key!r} must be a positive integer, got {value!r}")
        sizes[key] = int(value)
    return sizes


def as_array(value: object, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``value`` as a float64 array of exactly ``shape`` (ValueError otherwise)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"parameter {name!r} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"parameter {name!r} has non-finite entries")
    return arr


def rejection_sample(draw, accept, rng: np.random.Generator, what: str, max_tries: int = 10_000):
    """Call ``draw(rng)`` until ``accept(candidate)`` holds; give up after ``max_tries``."""
    for _ in range(max_tries):
        candidate = draw(rng)
        if accept(candidate):
            return candidate
    raise RuntimeError(
        f"{what}: no acceptable instance after {max_tries} draws; "
        "the requested sizes are probably outside the sampler's design range"
    )


def vector_and_radius(params: tuple, name: str) -> tuple[np.ndarray, float]:
    """The (y, r) parameters of a ball projection: a finite vector and a radius r >= 0."""
    if len(params) != 2:
        raise TypeError(f"{name} takes 2 parameters (y, r), got {len(params)}")
    y = np.asarray(params[0], dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"{name}: y must be a vector, got shape {y.shape}")
    y = as_array(y, y.shape, "y")
    r = float(as_array(params[1], (), "r"))
    if r < 0:
        raise ValueError(f"{name}: radius r must be nonnegative, got {r}")
    return y, r
