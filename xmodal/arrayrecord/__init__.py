"""TFDS ArrayRecord datasets: lazy columns to read them, a base builder to write them.

The method packages convert their inputs (``cdds_jax``'s feature store, ``decalign_jax``'s
MMSA pickles) with builders derived from :class:`RowBuilder`
(``cdds_jax/data/arrayrecord.py``, ``decalign_jax/data/arrayrecord.py``) and read them
back through :class:`ArrayColumn` / :class:`TextColumn`, which stand where in-memory or
memory-mapped arrays stand for the other formats. TensorFlow is never imported
(``tensorflow_datasets`` is).
"""

from xmodal.arrayrecord.build import WRITER_OPTIONS, RowBuilder, agreed_value, prepare
from xmodal.arrayrecord.columns import (
    ITER_CHUNK,
    ArrayColumn,
    RecordTable,
    TextColumn,
    builder_dir,
    open_builder,
)

__all__ = [
    "ITER_CHUNK",
    "WRITER_OPTIONS",
    "ArrayColumn",
    "RecordTable",
    "RowBuilder",
    "TextColumn",
    "agreed_value",
    "builder_dir",
    "open_builder",
    "prepare",
]
