"""The LAPS data layout: ``{split}_caps.txt`` + ``{split}_ids.txt`` + ``id_mapping.json``.

The files of the LAPS code (CVPR 2024), which the CDDS paper's numbers are measured
on (docs/cdds.md §12.7, §13.3), in ``root``:

- ``{split}_caps.txt``: one caption per line;
- ``{split}_ids.txt``: one integer image id per line. Training files have one line per
  IMAGE (caption i belongs to ``ids[i // k]``, k = captions / ids = 5); dev / test
  files one line per CAPTION (the id repeated for each of an image's captions);
- ``id_mapping.json``: ``{"<id>": "<path relative to the image folder>"}``.

The images live in ``image_root`` (Flickr30K's ``flickr30k-images/``, COCO's folder
holding ``train2014/`` and ``val2014/``). Each unique image is read and encoded ONCE,
whatever the layout of the id file (LAPS's evaluation re-encodes every test image once
per caption). Splits: F30K ``train`` / ``dev`` / ``test``, COCO ``train`` / ``dev`` /
``testall`` (5K).
"""

from __future__ import annotations

import os
import pathlib

from cdds_jax.data.raw import (
    MISSING_SHOWN,
    RawSplit,
    check_image_files,
    make_split,
    unique_in_order,
)
from cdds_jax.data.split import read_lines
from xmodal import files

__all__ = ["read_laps"]

_msg = files.field_error


def _read_ids(path: pathlib.Path) -> list[int]:
    ids = []
    for n, line in enumerate(read_lines(path, "image ids"), start=1):
        try:
            ids.append(int(line.strip()))
        except ValueError:
            raise ValueError(
                _msg(
                    path,
                    "image ids",
                    "one integer id per line",
                    f"{line!r} at line {n}",
                )
            ) from None
    return ids


def read_laps(
    root: str | os.PathLike, split: str, *, image_root: str | os.PathLike | None = None
) -> RawSplit:
    """Opens ``split`` of the LAPS layout in ``root`` with images under ``image_root``.

    Raises:
      FileNotFoundError: the folder, a file of the split (an unknown split: the message
        lists the splits present), the image folder or image files (the count and the
        first few) are missing.
      ValueError: a caption count that is neither the id count nor a multiple of it, a
        non-integer id, ids missing from ``id_mapping.json``, empty captions.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} [data.root]: LAPS data folder not found")
    caps_path = root / f"{split}_caps.txt"
    ids_path = root / f"{split}_ids.txt"
    if not caps_path.is_file():
        present = sorted(p.name[: -len("_caps.txt")] for p in root.glob("*_caps.txt"))
        raise FileNotFoundError(
            _msg(
                caps_path,
                "split",
                f"a split of {root}: {present}",
                f"unknown split {split!r}",
            )
        )
    captions = read_lines(caps_path, "captions")
    ids = _read_ids(ids_path)
    n_cap, n_ids = len(captions), len(ids)
    if n_ids == 0 or n_cap % n_ids:
        raise ValueError(
            _msg(
                caps_path,
                "captions",
                f"as many captions as the {n_ids} lines of {ids_path.name} (one id per "
                "caption) or a multiple of them (one id per image, k captions each)",
                f"{n_cap} captions",
            )
        )
    per_id = n_cap // n_ids
    keys = ids if per_id == 1 else [ids[i // per_id] for i in range(n_cap)]
    image_ids, c2i = unique_in_order(keys)
    mapping_path = root / "id_mapping.json"
    mapping = files.read_json_object(
        mapping_path, "id_mapping", expected="a JSON object {id: image path}"
    )
    unknown = [i for i in image_ids if str(i) not in mapping]
    if unknown:
        raise ValueError(
            _msg(
                mapping_path,
                "id_mapping",
                f"a path for every id of {ids_path.name}",
                f"{len(unknown)} ids missing, first {unknown[:MISSING_SHOWN]}",
            )
        )
    image_root = pathlib.Path(image_root) if image_root else root
    paths = [str(image_root / mapping[str(i)]) for i in image_ids]
    check_image_files(paths, image_root, mapping_path)
    return make_split(
        root=root,
        split=split,
        image_paths=paths,
        caption_to_image=c2i,
        captions=captions,
        format="laps",
        files_={
            "captions": str(caps_path),
            "caption_to_image": f"{ids_path} ({'one id per caption' if per_id == 1 else f'caption i -> line i // {per_id}'})",
            "images": str(image_root),
        },
        meta={
            "ids_layout": "per caption"
            if per_id == 1
            else f"per image ({per_id} captions)",
            "image_root": str(image_root),
        },
    )
