"""Text tables, number formatting and JSON writing for every report the tools print.

One renderer: :class:`Columns` lays out rows in fixed-width columns (so that a table can
be printed row by row as results arrive), and :func:`table` sizes the columns from the
rows it is given. Numbers: :func:`sci` for errors, :func:`duration` for times,
:func:`ratio` for speed-ups. JSON is strict (no NaN or inf): :func:`finite_or_none`
writes a non-finite number as null, :func:`none_to_inf` reads it back.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WIDTH = 100  # wrapped notes under a table


# -- numbers ---------------------------------------------------------------------------------
def sci(v: float | None) -> str:
    """An error: ``1.2e-09``; ``inf``/``nan`` as such; ``-`` for None."""
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.1e}" if math.isfinite(v) else str(v)


def duration(v: float | None) -> str:
    """Seconds as ``12.3s``, ``1.23s`` or ``45.6ms``; ``-`` for None or non-finite."""
    if v is None or not math.isfinite(v):
        return "-"
    if v >= 10:
        return f"{v:.1f}s"
    if v >= 1:
        return f"{v:.2f}s"
    return f"{v * 1e3:.3g}ms"


def ratio(v: float | None) -> str:
    """A speed ratio: ``2.50x``; ``-`` for None."""
    return "-" if v is None else f"{v:.2f}x"


def size_text(values: dict[str, int]) -> str:
    """Problem sizes as ``n=10,m=5``."""
    return ",".join(f"{k}={v}" for k, v in values.items())


# -- JSON ------------------------------------------------------------------------------------
def finite_or_none(v: float | None) -> float | None:
    """A float for strict JSON: None for None, NaN and inf."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def none_to_inf(v: float | None) -> float:
    """Read back an error written by :func:`finite_or_none` (null meant non-finite)."""
    return math.inf if v is None else float(v)


def array_to_json(a: Any) -> Any:
    """Nested lists of floats, NaN/inf as None."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return float(a) if np.isfinite(a) else None
    return [array_to_json(x) for x in a]


def array_from_json(v: Any) -> np.ndarray:
    """Nested lists back to an array (None becomes NaN)."""
    return np.array(v, dtype=float)


def json_text(doc: Any, **kwargs: Any) -> str:
    """Strict JSON (``allow_nan=False``), indented by 2 unless told otherwise."""
    kwargs.setdefault("indent", 2)
    return json.dumps(doc, allow_nan=False, **kwargs)


def write_json(doc: Any, path: str) -> None:
    """``doc`` as strict JSON to ``path``, with a final newline."""
    with open(path, "w") as f:
        f.write(json_text(doc) + "\n")


# -- tables ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    width: int
    right: bool = False


class Columns:
    """Fixed-width columns, two spaces apart; rows can be printed as they come."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns) + 2 * (len(self.columns) - 1)

    def line(self, values: Sequence[str]) -> str:
        return "  ".join(f"{v:>{c.width}}" if c.right else f"{v:<{c.width}}"
                         for v, c in zip(values, self.columns, strict=True)).rstrip()

    def header(self, groups: Sequence[tuple[int, int, str]] = ()) -> str:
        """The column names and a rule as long as they are; ``groups`` (first, last, text)
        adds a line above with ``text`` centred over columns first..last."""
        lines = []
        if groups:
            starts = np.cumsum([0] + [c.width + 2 for c in self.columns])
            top = [" "] * self.width
            for first, last, text in groups:
                lo, hi = starts[first], starts[last] + self.columns[last].width
                top[lo:hi] = f" {text} ".center(hi - lo, "-")
            lines.append("".join(top).rstrip())
        head = self.line([c.name for c in self.columns])
        lines += [head, "-" * len(head)]
        return "\n".join(lines)


def table(header: Sequence[str], rows: Sequence[Sequence[str]],
          right: Sequence[bool] | None = None) -> str:
    """An aligned table, columns as wide as their widest cell; the first column left-aligned
    and the others right-aligned unless ``right`` says otherwise."""
    right = list(right) if right is not None else [False] + [True] * (len(header) - 1)
    widths = [max(len(str(r[k])) for r in [header, *rows]) for k in range(len(header))]
    cols = Columns([Column(h, w, rt) for h, w, rt in zip(header, widths, right, strict=True)])
    return "\n".join([cols.header(), *(cols.line([str(v) for v in r]) for r in rows)])


def wrap(text: str) -> str:
    """A note under a table, wrapped at :data:`WIDTH` with a hanging indent."""
    return textwrap.fill(text, width=WIDTH, subsequent_indent="  ",
                         break_on_hyphens=False) if text else text
