"""The readings of the CDDS score: presets, overrides, filling a config, records."""

from __future__ import annotations

import pytest

from cdds_jax import reading
from xmodal import config as config_lib


def _config(arg: str, *overrides: str):
    c = config_lib.load_config(f"configs/flickr.py:{arg}")
    config_lib.apply_overrides(c, list(overrides))
    return c


def test_paper_preset_is_the_paper_reading():
    r = reading.PRESETS["paper"]
    assert (r.w_source, r.table_compare, r.table_scale, r.tau_mode) == (
        "batch",
        "cosine",
        False,
        "fixed",
    )


def test_unset_fields_take_the_preset_and_set_ones_are_overrides():
    c = _config("tiny", "semantics.reading=paper")
    r = reading.of(c)
    assert r.name == "paper" and r.overrides == ()
    assert reading.of(c.semantics) == r
    c = _config("tiny", "semantics.reading=paper", "semantics.w_source=ema")
    r = reading.of(c)
    assert r.w_source == "ema" and r.overrides == (("w_source", "ema"),)
    assert "overrides of the paper preset: w_source=ema" in reading.describe(c)
    assert "not the paper's reading" in reading.describe(c)
    # Setting a field to the preset's own value is not an override.
    c = _config("tiny", "semantics.reading=paper", "semantics.table_compare=cosine")
    assert reading.of(c).overrides == ()
    assert "not the paper's" not in reading.describe(c)


def test_fill_writes_the_resolved_values_and_is_idempotent():
    c = _config("tiny", "semantics.reading=paper", "semantics.tau_mode=relative")
    filled = reading.fill(c)
    assert filled.semantics.w_source == "batch"
    assert filled.semantics.table_compare == "cosine"
    assert filled.semantics.table_scale is False
    assert filled.semantics.tau_mode == "relative"
    assert reading.of(filled) == reading.of(c)
    assert reading.fill(filled).to_dict() == filled.to_dict()
    assert reading.record(filled) == {
        "name": "paper",
        "w_source": "batch",
        "table_compare": "cosine",
        "table_scale": False,
        "tau_mode": "relative",
        "overrides": {"tau_mode": "relative"},
    }


def test_unknown_reading_is_named():
    c = _config("tiny", "semantics.reading=mine")
    with pytest.raises(ValueError, match=r"semantics\.reading.*'mine'"):
        reading.of(c)
