"""Row formatting for BENCHMARKS.md, shared by every section: units, tables, targets.

A section's ``render`` builds its rows from these helpers only, so a number reads the
same everywhere (``12.3 ms`` below 10 s, ``12.3 s`` above; ``1.23 GiB``; ``45.6%``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["Target", "Targets", "gib", "ms", "pct", "ratio", "table"]


class Target(NamedTuple):
    """One row of the Targets table: the goal, what this run measured, met or not."""

    goal: str
    measured: str
    met: bool | None  # None: not measured


class Targets(NamedTuple):
    """A section's rows of the Targets table and its paragraphs printed below it."""

    rows: tuple[Target, ...] = ()
    notes: tuple[str, ...] = ()


def gib(x: float | None) -> str:
    """Bytes as ``1.23 GiB``; ``-`` for None."""
    return "-" if x is None else f"{x / 2**30:.2f} GiB"


def ms(x: float | None) -> str:
    """Seconds as ``12.3 ms`` below 10 s and ``12.3 s`` from 10 s; ``-`` for None."""
    if x is None:
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 10 else f"{x:.1f} s"


def pct(x: float | None) -> str:
    """A fraction as ``45.6%``; ``-`` for None."""
    return "-" if x is None else f"{x:.1%}"


def ratio(x: float | None) -> str:
    """A ratio as ``x1.23``; ``-`` for None."""
    return "-" if x is None else f"x{x:.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table: the header row, the rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
