"""From a config to a run's data: the splits, checked, and the source of each.

The driver (``decalign_jax.train``) and the evaluation entry point read their data
through :func:`load_data`: the MMSA pickle (or its ArrayRecord conversion) at
``data.path``, or, for ``:demo`` configs, a synthetic pickle in the same layout written
on first use into the cache folder (:func:`xmodal.files.cache_dir`). The counts of
values the reader sanitised are printed (process 0). With
``model.text_encoder = "bert"`` every split's ``text_bert`` ids are checked against
the BERT checkpoint (:func:`check_token_ids`); :func:`make_source` hands the model the
text input it reads (stored features or ids; docs/decalign.md §3.8).
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from decalign_jax import data as data_lib
from decalign_jax import encoders, objective
from xmodal import backbones
from xmodal.files import cache_dir
from xmodal.writer import log

__all__ = ["check_token_ids", "data_path", "load_data", "make_source"]


def data_path(config: ml_collections.ConfigDict) -> pathlib.Path:
    """``data.path``, or the synthetic pickle (written on first use) for demo configs."""
    syn = config.data.synthetic
    if syn.enabled:
        from decalign_jax.data import synthetic

        return synthetic.ensure_demo_dataset(
            cache_dir() / "decalign",
            dataset=config.data.dataset,
            seed=syn.seed,
            sizes={
                "train": syn.num_train,
                "valid": syn.num_valid,
                "test": syn.num_test,
            },
            num_classes=config.data.num_classes,
        )
    path = pathlib.Path(config.data.path).expanduser()
    if not (path.is_dir() if config.data.format == "arrayrecord" else path.is_file()):
        raise FileNotFoundError(
            f"config.data.path: {config.data.dataset} pickle {str(path)!r} not found. Put "
            "the MMSA file there or pass --config.data.path=... (README 'Real data'), or "
            "use a :demo config"
        )
    return path


def load_data(config: ml_collections.ConfigDict) -> dict[str, data_lib.MMSASplit]:
    """Reads, validates and sanitises the pickle; ``{train, valid, test}`` splits."""
    standardize = {"auto": None, "on": True, "off": False}[config.data.standardize]
    path = data_path(config)
    splits = data_lib.read_dataset(
        path,
        format=config.data.format,
        dataset=config.data.dataset,
        standardize=standardize,
        num_classes=(
            config.data.num_classes if objective.is_classification(config) else None
        ),
    )
    _report_sanitised(splits, path)
    return check_token_ids(config, splits, path)  # ids BERT can embed (bert only)


def _report_sanitised(
    splits: dict[str, data_lib.MMSASplit], path: pathlib.Path
) -> None:
    """The counts of values the reader replaced (README 'Real data' promises them),
    one line on process 0; nothing when none was."""
    counts = [
        f"{name} " + ", ".join(f"{k} {v}" for k, v in split.sanitised.items())
        for name, split in splits.items()
        if split.sanitised
    ]
    if counts:
        log(
            f"{path}: sanitised while reading (*_nonfinite: NaN/Inf and *_overflow: "
            "beyond the float32 range, set to 0; *_lengths_clipped: lengths cut to "
            f"the padded length): {'; '.join(counts)}"
        )


def check_token_ids(
    config: ml_collections.ConfigDict,
    splits: dict[str, data_lib.MMSASplit],
    path: str | pathlib.Path = "",
) -> dict[str, data_lib.MMSASplit]:
    """``splits`` (read from ``path``), checked with ``bert``: every split has
    ``text_bert`` ids the checkpoint can embed, and no sample has an all-zero
    attention mask (no token: BERT would read only padding).

    Raises:
      ValueError: one line naming the file, the split and what is wrong (no
        ``text_bert``, an id outside the vocabulary, a mask that is not 0 / 1, an
        all-zero mask (with the count and the first sample), a segment id outside the
        type vocabulary, a sequence longer than the position table).
    """
    folder = encoders.bert_folder(config)
    if folder is None:
        return splits
    cfg = backbones.load_config(folder)
    for name, split in splits.items():
        where = f"{path}: {name} split text_bert" if path else f"{name} split text_bert"
        if split.text_bert is None:
            raise ValueError(
                f"{where}: missing; model.text_encoder=bert needs the MMSA token ids"
            )
        tb = np.asarray(split.text_bert)
        ids, mask, types = tb[:, 0], tb[:, 1], tb[:, 2]
        if tb.shape[2] > cfg.max_position_embeddings:
            raise ValueError(
                f"{where}: length {tb.shape[2]} > the checkpoint's "
                f"max_position_embeddings {cfg.max_position_embeddings} ({folder})"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise ValueError(
                f"{where}: input ids in [{ids.min()}, {ids.max()}], outside the "
                f"vocabulary [0, {cfg.vocab_size}) of {folder}"
            )
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(
                f"{where}: row 1 is not a 0/1 attention mask (values "
                f"{np.unique(mask)[:5].tolist()}...); expected MMSA's rows (input ids, "
                "attention mask, segment ids)"
            )
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise ValueError(
                f"{where}: {empty.size} of {len(mask)} samples have an all-zero "
                f"attention mask (no token for BERT to read), first sample "
                f"{int(empty[0])} ({split.ids[int(empty[0])]!r}); fix or drop them"
            )
        if types.size and (types.min() < 0 or types.max() >= cfg.type_vocab_size):
            raise ValueError(
                f"{where}: segment ids in [{types.min()}, {types.max()}], outside "
                f"[0, {cfg.type_vocab_size})"
            )
    return splits


def make_source(
    split: data_lib.MMSASplit, config: ml_collections.ConfigDict
) -> data_lib.MMSASource:
    """The split's source with the text input the model reads (features or ids)."""
    bert = encoders.uses_bert(config)
    return data_lib.MMSASource(split, with_text_bert=bert, with_text=not bert)
