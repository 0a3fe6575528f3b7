"""What the command line shares between its subcommands: the usage error and KEY=VALUE
options."""

from __future__ import annotations

from typing import Any

USAGE_ERROR = 2  # the exit status of a usage error


class UsageError(Exception):
    """A mistake on the command line: printed, exit status :data:`USAGE_ERROR`."""


def parse_value(text: str) -> Any:
    """``"true"`` → True, ``"3"`` → 3, ``"1e-9"`` → 1e-09, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key_values(pairs: list[str], option: str) -> dict[str, Any]:
    """``["eps_abs=1e-9", "refine=false"]`` → ``{"eps_abs": 1e-09, "refine": False}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects KEY=VALUE, got {pair!r}.")
        out[key.strip()] = parse_value(value.strip())
    return out
