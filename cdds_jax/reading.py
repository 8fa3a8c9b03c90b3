"""Which reading of the CDDS score a run uses: the paper's, or the project's.

The paper leaves four choices of the distribution-sampling score open or stated only in
words (docs/cdds.md §10.3-10.5): where the KL matrix S that W is built from comes from
in training (``w_source``), how two quantile tables are compared (``table_compare``,
``table_scale``) and the temperature of ``p(j|i)`` (``tau_mode``). A *reading* fixes
all four; ``semantics.reading`` names one of two presets:

* ``paper``: S from each training batch's matched pairs (the paper computes it "every
  batch", sec. 3.2 and Table 5), W from it; tables compared by cosine; tau fixed. At
  evaluation there are no matched test pairs, so W comes from the training statistics
  (the EMA of the batch matrices): the one place the paper forces a choice on us.
* ``project``: the reading the project's evidence table chose (docs/cdds.md §10.18),
  measured on synthetic data only.

Each of the four fields may also be set on its own (``--config.semantics.w_source=ema``);
a field left unset (None) takes the preset's value, and a set one is an override the
run reports next to the preset's name. :func:`fill` writes the resolved values into a
config (the driver does this before the workdir stores ``config.json``, so the file
holds the values the run trained with); every consumer reads them through :func:`of`,
which also accepts an unfilled config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_collections

__all__ = [
    "FIELDS",
    "PRESETS",
    "READINGS",
    "Reading",
    "describe",
    "fill",
    "of",
    "record",
]

#: The ``config.semantics`` fields a reading fixes.
FIELDS = ("w_source", "table_compare", "table_scale", "tau_mode")


class Reading(NamedTuple):
    """A resolved reading: the preset's name, the four values, the overrides.

    Attributes:
      name: ``semantics.reading`` (a key of ``PRESETS``).
      w_source: ``cdds_jax.kl_statistics.W_SOURCES`` entry.
      table_compare: ``cdds_jax.scores.TABLE_COMPARES`` entry.
      table_scale: centred comparisons divided by their spread.
      tau_mode: ``cdds_jax.semantics.TAU_MODES`` entry.
      overrides: the fields set explicitly to a value other than the preset's,
        ``((field, value), ...)`` in ``FIELDS`` order.
    """

    name: str
    w_source: str
    table_compare: str
    table_scale: bool
    tau_mode: str
    overrides: tuple[tuple[str, Any], ...] = ()


#: The presets (``semantics.reading``).
PRESETS: dict[str, Reading] = {
    "paper": Reading("paper", "batch", "cosine", False, "fixed"),
    "project": Reading("project", "ema", "centred", False, "fixed"),
}
READINGS = tuple(PRESETS)

_WORDS = {
    "w_source": {
        "batch": "W from each training batch's S (matched pairs)",
        "ema": "W from the EMA of the batch S",
        "window": "W from the mean S of the last batches",
        "subset": "W from S of a random training subset, refreshed each epoch",
        "precompute": "W from S of all training pairs, refreshed each epoch",
        "identity": "W = I (no related-semantics identification)",
    },
    "table_compare": {
        "cosine": "tables compared by cosine",
        "centred": "tables centred per column, then cosine",
        "level_centred": "tables centred per level, then cosine",
        "w2": "tables compared by minus the squared W2 distance",
    },
}


def _block(config: Any) -> Any:
    """The ``semantics`` block of a config (or the block itself)."""
    return config.semantics if "semantics" in config else config


def of(config: ml_collections.ConfigDict | Mapping[str, Any]) -> Reading:
    """The reading of a CDDS config (or of its ``semantics`` block).

    Raises:
      ValueError: an unknown ``semantics.reading``.
    """
    sc = _block(config)
    name = str(sc.get("reading", "project"))
    if name not in PRESETS:
        raise ValueError(
            f"config.semantics.reading: expected one of {list(READINGS)}, got {name!r}"
        )
    preset = PRESETS[name]
    values, overrides = {}, []
    for field in FIELDS:
        value = sc.get(field)
        if value is None or value == "":
            value = getattr(preset, field)
        elif field == "table_scale":
            value = bool(value)
        else:
            value = str(value)
        if value != getattr(preset, field):
            overrides.append((field, value))
        values[field] = value
    return Reading(name=name, overrides=tuple(overrides), **values)


def fill(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the reading's four fields written in (unset ones
    from the preset), so ``config.json`` holds what the run trains with."""
    out = ml_collections.ConfigDict(config.to_dict())
    r = of(out)
    for field in FIELDS:
        out.semantics[field] = getattr(r, field)
    return out


def describe(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
    """One line naming the reading, e.g. ``reading paper: W from each training
    batch's S (matched pairs); tables compared by cosine; tau fixed``."""
    r = of(config)
    parts = [
        _WORDS["w_source"].get(r.w_source, r.w_source),
        _WORDS["table_compare"].get(r.table_compare, r.table_compare)
        + (" and spread" if r.table_scale else ""),
        f"tau {r.tau_mode}",
    ]
    line = f"reading {r.name}: " + "; ".join(parts)
    if r.overrides:
        changed = ", ".join(f"{k}={v}" for k, v in r.overrides)
        line += f" (overrides of the {r.name} preset: {changed})"
    if r.name == "project" or r.overrides:
        line += "; not the paper's reading"
    return line


def record(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """The reading as ``results.json`` stores it."""
    r = of(config)
    out = {field: getattr(r, field) for field in FIELDS}
    return {"name": r.name, **out, "overrides": dict(r.overrides)}
