"""Typed, frozen backbone configs read from Hugging Face ``config.json`` dicts.

Hugging Face writes only the fields that differ from its defaults in some files, so
every config dataclass here carries Hugging Face's default for each field it reads
(from the ``transformers`` config classes' documented defaults); unknown keys are
ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["as_pair", "fields_from_hf", "to_hf_dict"]

C = TypeVar("C")


def as_pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` or ``[224, 224]`` -> ``(224, 224)``."""
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def fields_from_hf(cls: type[C], d: Mapping[str, Any], **overrides: Any) -> C:
    """``cls(**{field: d[field]})`` for the dataclass fields present in ``d``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


def to_hf_dict(config: Any) -> dict[str, Any]:
    """The dataclass as a JSON-ready dict (tuples -> lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
