#!/usr/bin/env python
r"""Convert training inputs to TFDS ArrayRecord datasets (the input path for large runs).

    python scripts/convert_to_arrayrecord.py cdds --src data/f30k --out data/tfds
    python scripts/convert_to_arrayrecord.py decalign --dataset mosi \
        --src data/MOSI/aligned_50.pkl --out data/tfds

``cdds`` reads a ``features`` store (every split folder, or ``--splits``) and writes
``OUT/cdds_feature_store/{images,captions,caption_features}/1.0.0``; ``decalign`` reads
an MMSA pickle through ``read_mmsa`` (sanitising + train-statistics standardisation
applied and recorded) and writes ``OUT/decalign_mmsa/<dataset>/1.0.0``. Nothing is
downloaded and TensorFlow is not used (``tensorflow_datasets`` writes ArrayRecord files
and reads them with ``tfds.data_source`` machinery). Re-running with the same input
reuses the result; a different input for the same dataset in the same ``--out`` is an
error unless ``--overwrite``. The command prints the config overrides that use the
result.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from xmodal.arrayrecord import WRITER_OPTIONS


def _cdds(args: argparse.Namespace) -> str:
    from cdds_jax import data
    from cdds_jax.data import arrayrecord

    splits = args.splits or arrayrecord.store_splits(args.src)
    print(f"cdds: {args.src} splits {splits} -> {args.out}", flush=True)
    out = arrayrecord.build_arrayrecord(
        args.src,
        args.out,
        splits=splits,
        overwrite=args.overwrite,
        writer_options=args.writer_options,
    )
    for config, path in out.items():
        print(f"  {config}: {path}", flush=True)
    for split in splits:
        s = data.read_split("arrayrecord", args.out, split)
        text = [
            k for k in ("caption_features", "captions") if getattr(s, k) is not None
        ]
        print(
            f"  {split}: {s.num_images} images {s.images.dtype}{list(s.images.shape[1:])}, "
            f"{s.num_captions} captions, text {text}",
            flush=True,
        )
    return f"--config.data.format=arrayrecord --config.data.root={args.out}"


def _decalign(args: argparse.Namespace) -> str:
    from decalign_jax import data
    from decalign_jax.data import arrayrecord

    standardize = {"auto": None, "on": True, "off": False}[args.standardize]
    print(f"decalign: {args.dataset} {args.src} -> {args.out}", flush=True)
    path = arrayrecord.build_arrayrecord(
        args.src,
        args.out,
        dataset=args.dataset,
        standardize=standardize,
        clip_percentiles=args.clip_percentiles,
        num_classes=args.num_classes,
        overwrite=args.overwrite,
        writer_options=args.writer_options,
    )
    print(f"  {path}", flush=True)
    splits = data.read_dataset(args.out, dataset=args.dataset, format="arrayrecord")
    for name, s in splits.items():
        print(
            f"  {name}: {s.num_samples} samples, seq lens {s.seq_lens}, dims "
            f"{s.feature_dims}, sanitised {s.sanitised or 'none'}, standardised "
            f"{sorted(s.meta['standardization']) or 'no'}",
            flush=True,
        )
    return f"--config.data.format=arrayrecord --config.data.path={args.out}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    c = sub.add_parser("cdds", help="a cdds_jax 'features' store")
    c.add_argument("--src", required=True, help="feature store root (data/f30k)")
    c.add_argument("--out", required=True, help="TFDS data folder to write")
    c.add_argument("--splits", nargs="+", help="splits to convert (default: all)")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier result")
    d = sub.add_parser("decalign", help="an MMSA pickle")
    d.add_argument("--dataset", required=True, help="mosi | mosei | sims | iemocap")
    d.add_argument("--src", required=True, help="the pickle (data/MOSI/aligned_50.pkl)")
    d.add_argument("--out", required=True, help="TFDS data folder to write")
    d.add_argument(
        "--standardize",
        choices=("auto", "on", "off"),
        default="auto",
        help="audio/vision clip + z-score with train statistics (auto: MOSEI, SIMS)",
    )
    d.add_argument("--clip-percentiles", nargs=2, type=float, metavar=("LOW", "HIGH"))
    d.add_argument("--num-classes", type=int, help="IEMOCAP class count")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier result")
    for p in (c, d):
        p.add_argument(
            "--writer-options",
            default=WRITER_OPTIONS,
            help="ArrayRecord writer options (default: uncompressed, fastest to read; "
            "e.g. group_size:1,zstd:3 for smaller files)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the conversion; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.time()
    try:
        override = _cdds(args) if args.kind == "cdds" else _decalign(args)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(
        f"done in {time.time() - start:.1f} s; use it with:\n  {override}", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
