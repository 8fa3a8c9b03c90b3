"""Synthetic multimodal sentiment / emotion data WRITTEN in the real file formats.

Tests and ``:demo`` configs read these files through the real readers
(:func:`decalign_jax.data.mmsa.read_mmsa`, :func:`decalign_jax.data.iemocap.convert_iemocap`),
never through a side door (docs/decalign.md, 'Data'):

* :func:`write_mmsa_pickle` (:mod:`~decalign_jax.data.synthetic.mmsa`): MOSI / MOSEI /
  SIMS pickles with a planted sentiment signal that needs all three modalities;
* :func:`write_iemocap_raw` (:mod:`~decalign_jax.data.synthetic.iemocap`): a raw IEMOCAP
  release for the converter;
* :func:`ensure_demo_pickle`: either, written once into a cache folder for ``:demo``
  configs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from decalign_jax.data.iemocap import convert_iemocap
from decalign_jax.data.split import canonical_dataset
from decalign_jax.data.synthetic.common import GENERATOR_VERSION
from decalign_jax.data.synthetic.iemocap import write_iemocap_raw
from decalign_jax.data.synthetic.mmsa import (
    DATASET_DEFAULTS,
    DEFAULT_SIZES,
    mmsa_file_name,
    write_mmsa_pickle,
)
from xmodal import files

__all__ = [
    "DATASET_DEFAULTS",
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "ensure_demo_dataset",
    "ensure_demo_pickle",
    "mmsa_file_name",
    "write_iemocap_raw",
    "write_mmsa_pickle",
]

_IEMOCAP_CONVERT_KEYS = ("valid_fraction", "class_names")


def ensure_demo_dataset(
    cache_dir: str | os.PathLike[str],
    *,
    dataset: str,
    seed: int,
    sizes: Mapping[str, int],
    num_classes: int,
) -> Path:
    """The demo data of ``dataset`` (what a ``:demo`` config trains on).

    MOSI / MOSEI / SIMS: an MMSA pickle with ``sizes``; IEMOCAP: the GCNet-layout
    file through the real converter, with its own session split (``sizes`` unused).
    """
    if canonical_dataset(dataset) == "iemocap":
        return ensure_demo_pickle(
            cache_dir, seed=seed, dataset="iemocap", num_classes=num_classes
        )
    return ensure_demo_pickle(cache_dir, seed=seed, dataset=dataset, sizes=dict(sizes))


def ensure_demo_pickle(cache_dir: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write a synthetic dataset once into ``cache_dir`` and reuse it afterwards.

    ``kwargs`` go to ``write_mmsa_pickle`` (``dataset`` in mosi/mosei/sims) or, for
    ``dataset="iemocap"``, to ``write_iemocap_raw`` (+ ``valid_fraction`` /
    ``class_names`` to ``convert_iemocap``; ``num_classes`` to both) followed by the real
    converter. The folder is ``<cache_dir>/<dataset>-<hash of kwargs and
    GENERATOR_VERSION>`` and the file carries the real MMSA name
    (``aligned_50.pkl``, ``unaligned_39.pkl``, ``iemocap_data.pkl``). Writes go to a temp
    file renamed into place, so concurrent callers never see a partial file.

    Returns:
      Path of the pickle (read it with ``read_mmsa(path, dataset=...)``).
    """
    if "seed" not in kwargs:
        raise ValueError("ensure_demo_pickle: pass seed=")
    dataset = canonical_dataset(kwargs.get("dataset", "mosi"))
    spec = json.dumps(
        {"generator_version": GENERATOR_VERSION, **files.jsonable(kwargs)},
        sort_keys=True,
    )
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"{dataset}-{key}"
    if dataset == "iemocap":
        out = folder / "iemocap_data.pkl"
    else:
        out = folder / mmsa_file_name(
            dataset, aligned=kwargs.get("aligned"), seq_lens=kwargs.get("seq_lens")
        )
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    if dataset == "iemocap":
        raw_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k not in ("dataset", *_IEMOCAP_CONVERT_KEYS)
        }
        conv_kwargs = {k: kwargs[k] for k in _IEMOCAP_CONVERT_KEYS if k in kwargs}
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            raw = write_iemocap_raw(
                Path(tmp) / "IEMOCAP_features_raw.pkl", **raw_kwargs
            )
            convert_iemocap(
                raw,
                out,
                num_classes=raw_kwargs.get("num_classes", 6),
                feature_root=Path(tmp) / "features",
                seed=int(kwargs["seed"]),
                **conv_kwargs,
            )
    else:
        write_mmsa_pickle(out, **kwargs)
    (folder / "demo_args.json").write_text(spec + "\n")
    return out
