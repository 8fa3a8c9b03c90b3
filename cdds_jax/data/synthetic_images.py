"""Synthetic image-text data as real files: JPEGs, a Karpathy JSON, the LAPS layout.

For tests and ``configs/flickr.py:demo_raw`` (docs/cdds.md §12.9): the readers, the
image pipeline and the backbones run on these files exactly as on Flickr30K.

Planted structure. A concept is a coloured shape (``num_concepts`` of the
:data:`COLOURS` x :data:`SHAPES` combinations, e.g. "red circle"). An image of
``image_size`` px is a ``grid`` x ``grid`` board of cells; it draws
``concepts_per_image`` distinct concepts and paints each into its own random cell (size
55-85% of the cell, position jittered) on a background whose grey level, tint and pixel
noise change per image (the image nuisance). Each caption names a subset of its
image's concepts (at least 2 of 3; the captions of an image cycle through different
subsets) in random order, in random sentence frames ("there is a red circle next to a
blue cross"). Recognising an image's concept set needs colour AND shape; chance R@1 is
1 / N_img.

Files, under ``root``: ``images/{split}/{i:05d}.jpg``; ``dataset_synthetic.json`` (the
Karpathy layout: ``dev`` images are ``val``, and every 10th training image is
``restval``, which the reader folds back into ``train`` as for COCO); ``laps/`` with
``{split}_caps.txt``, ``{split}_ids.txt`` (one id per image for ``train``, one per
caption otherwise) and ``id_mapping.json`` (paths relative to ``root``).
Same arguments, same bytes.

:func:`ensure_demo_raw` also writes tiny random backbones (ViT + BERT by default, or
the configured kinds; CLIP's two towers share one ``CLIPModel`` folder; Hugging Face
layout, :func:`xmodal.backbones.write_random_checkpoint`) whose text vocabulary holds
the caption words, and caches everything in one folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cdds_jax.data.synthetic import ensure_cached

__all__ = [
    "COLOURS",
    "GENERATOR_VERSION",
    "SHAPES",
    "DemoRaw",
    "caption_words",
    "concept_name",
    "demo_vocab",
    "ensure_demo_raw",
    "write_demo_backbones",
    "write_image_dataset",
]

#: Bumped whenever the output changes (it keys :func:`ensure_demo_raw`).
GENERATOR_VERSION = 2

#: Colour name -> RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 190),
    "orange": (245, 135, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
_FRAMES = ("", "a photo of", "there is", "we see", "an image with", "look at")
_JOINS = ("and", "next to", "with", "beside", "and also")

_KARPATHY_SPLIT = {"dev": "val"}


def concept_name(c: int) -> str:
    """The two words of concept ``c``: colour ``c // |SHAPES|``, shape ``c % |SHAPES|``."""
    colour = list(COLOURS)[c // len(SHAPES)]
    return f"{colour} {SHAPES[c % len(SHAPES)]}"


def caption_words() -> list[str]:
    """Every word a synthetic caption can use (for the demo vocabularies)."""
    words = [*COLOURS, *SHAPES, "a"]
    for text in (*_FRAMES, *_JOINS):
        words += text.split()
    return list(dict.fromkeys(words))


def demo_vocab(kind: str = "bert") -> list[str]:
    """The vocabulary of the demo's text backbone ``kind``: its default one plus the
    caption words (BERT's WordPiece entries; CLIP's BPE merge chains)."""
    from xmodal.backbones import REGISTRY

    tokenizer = REGISTRY[kind].tokenizer
    if tokenizer is None:
        raise ValueError(f"{kind!r} is not a text backbone")
    return tokenizer.with_words(caption_words())


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...], colour: tuple
) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:  # cross
        w, h = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=colour)
        draw.rectangle((x0, y0 + h, x1, y1 - h), fill=colour)


def _render(
    concepts: np.ndarray, size: int, grid: int, rng: np.random.Generator
) -> Image.Image:
    """One image: background nuisance + each concept in its own cell."""
    grey = rng.uniform(70, 185)
    tint = rng.normal(0.0, 18.0, size=3)
    noise = rng.normal(0.0, 12.0, size=(size, size, 3))
    base = np.clip(grey + tint + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    cell = size / grid
    cells = rng.permutation(grid * grid)[: len(concepts)]
    colours = list(COLOURS.values())
    for c, where in zip(concepts, cells, strict=True):
        extent = cell * rng.uniform(0.55, 0.85)
        cx = (where % grid) * cell + rng.uniform(0, cell - extent)
        cy = (where // grid) * cell + rng.uniform(0, cell - extent)
        colour = colours[int(c) // len(SHAPES)]
        _draw_shape(
            draw,
            SHAPES[int(c) % len(SHAPES)],
            (cx, cy, cx + extent, cy + extent),
            colour,
        )
    return img


def _captions(concepts: np.ndarray, count: int, rng: np.random.Generator) -> list[str]:
    k = len(concepts)
    subsets = [
        s for r in range(min(2, k), k + 1) for s in itertools.combinations(range(k), r)
    ]
    order = rng.permutation(len(subsets))
    out = []
    for j in range(count):
        chosen = list(subsets[order[j % len(subsets)]])
        rng.shuffle(chosen)
        phrases = [f"a {concept_name(int(concepts[i]))}" for i in chosen]
        text = phrases[0]
        for phrase in phrases[1:]:
            text += f" {_JOINS[rng.integers(len(_JOINS))]} {phrase}"
        frame = _FRAMES[rng.integers(len(_FRAMES))]
        out.append(f"{frame} {text}".strip())
    return out


def write_image_dataset(
    root: str | os.PathLike,
    *,
    seed: int,
    num_images: Mapping[str, int],
    image_size: int = 32,
    grid: int = 2,
    num_concepts: int = 32,
    concepts_per_image: int = 3,
    captions_per_image: int = 5,
    quality: int = 90,
) -> pathlib.Path:
    """Writes the images, the Karpathy JSON and the LAPS layout (module docstring).

    Args:
      root: output folder (created).
      seed: the seed; each split draws from ``(seed, crc32(split))``.
      num_images: ``{split: images}``; ``dev`` becomes Karpathy ``val``.
      image_size: square image side in pixels.
      grid: cells per side (``concepts_per_image <= grid^2``).
      num_concepts: concepts used, at most ``len(COLOURS) * len(SHAPES)`` (32).
      concepts_per_image: concepts painted per image.
      captions_per_image: captions per image.
      quality: JPEG quality.

    Returns:
      ``root / "dataset_synthetic.json"``, the Karpathy file.
    """
    if not 1 <= num_concepts <= len(COLOURS) * len(SHAPES):
        raise ValueError(
            f"num_concepts: expected 1..{len(COLOURS) * len(SHAPES)}, got {num_concepts}"
        )
    if not 1 <= concepts_per_image <= min(num_concepts, grid * grid):
        raise ValueError(
            f"concepts_per_image: expected 1..min(num_concepts, grid^2) = "
            f"{min(num_concepts, grid * grid)}, got {concepts_per_image}"
        )
    root = pathlib.Path(root)
    (root / "laps").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    mapping: dict[str, str] = {}
    for split, n in num_images.items():
        rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        caps, ids = [], []
        for i in range(int(n)):
            concepts = rng.permutation(num_concepts)[:concepts_per_image]
            name = f"{i:05d}.jpg"
            _render(concepts, image_size, grid, rng).save(
                folder / name, quality=quality
            )
            sentences = _captions(concepts, captions_per_image, rng)
            kind = _KARPATHY_SPLIT.get(split, split)
            if split == "train" and i % 10 == 9:
                kind = "restval"
            image_id = len(mapping)
            mapping[str(image_id)] = f"images/{split}/{name}"
            entries.append(
                {
                    "filepath": f"images/{split}",
                    "filename": name,
                    "split": kind,
                    "imgid": image_id,
                    "concepts": [int(c) for c in concepts],
                    "sentences": [{"raw": s, "tokens": s.split()} for s in sentences],
                }
            )
            caps += sentences
            ids += [image_id] if split == "train" else [image_id] * len(sentences)
        (root / "laps" / f"{split}_caps.txt").write_text(
            "".join(c + "\n" for c in caps)
        )
        (root / "laps" / f"{split}_ids.txt").write_text("".join(f"{x}\n" for x in ids))
    (root / "laps" / "id_mapping.json").write_text(json.dumps(mapping))
    path = root / "dataset_synthetic.json"
    path.write_text(json.dumps({"dataset": "synthetic", "images": entries}))
    return path


def write_demo_backbones(
    root: str | os.PathLike,
    *,
    seed: int,
    image_kind: str = "vit",
    text_kind: str = "bert",
    image_size: int = 32,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 64,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Tiny random backbones in the Hugging Face layout: ``(image, text)`` folders.

    The image backbone is ``image_kind`` (an image kind of the backbone registry:
    ``vit``, ``swin``, ``clip``) at ``image_size`` px, sized by the registry's
    ``scaled``; the text backbone is ``text_kind`` (``bert``, ``clip_text``) of the
    same width and depth, its vocabulary the default one plus the caption words
    (whole words, so captions tokenise to one id per word, :func:`demo_vocab`).
    Towers of one composite folder (``clip`` + ``clip_text``) are written into that
    one folder (a ``CLIPModel``), which is then both paths.
    """
    from xmodal.backbones import REGISTRY, write_random_checkpoint

    root = pathlib.Path(root)
    scaled = {k: a.scaled for k, a in REGISTRY.items() if a.scaled is not None}
    if image_kind not in scaled:
        raise ValueError(
            f"image_kind: expected one of {sorted(scaled)}, got {image_kind!r}"
        )
    texts = [k for k, a in REGISTRY.items() if a.modality == "text"]
    if text_kind not in texts:
        raise ValueError(f"text_kind: expected one of {texts}, got {text_kind!r}")
    text_fields = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 16),
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
    )
    image_fields = scaled[image_kind](hidden_size, num_layers, image_size)
    vocab = demo_vocab(text_kind)
    image, text = _demo_folders(root, image_kind, text_kind)
    if image == text:  # one composite folder ("clip") holds both towers
        write_random_checkpoint(
            image,
            image.name,
            seed=seed,
            vocab=vocab,
            towers={text_kind: text_fields},
            **image_fields,
        )
        return image, text
    write_random_checkpoint(image, image_kind, seed=seed, **image_fields)
    write_random_checkpoint(
        text,
        REGISTRY[text_kind].config_cls.model_type,
        seed=seed + 1,
        vocab=vocab,
        **text_fields,
    )
    return image, text


@dataclasses.dataclass(frozen=True)
class DemoRaw:
    """Where :func:`ensure_demo_raw` put things.

    Attributes:
      annotation: the Karpathy JSON (``data.root`` of ``karpathy``).
      laps: the LAPS folder (``data.root`` of ``laps``).
      image_root: the image folder of both.
      image_backbone, text_backbone: the tiny checkpoint folders (one folder for
        both towers of a ``CLIPModel``).
    """

    annotation: pathlib.Path
    laps: pathlib.Path
    image_root: pathlib.Path
    image_backbone: pathlib.Path
    text_backbone: pathlib.Path


def ensure_demo_raw(
    cache_dir: str | os.PathLike,
    *,
    seed: int,
    num_images: Mapping[str, int],
    image_kind: str = "vit",
    text_kind: str = "bert",
    backbone_size: int = 64,
    **kwargs: Any,
) -> DemoRaw:
    """Writes :func:`write_image_dataset` + :func:`write_demo_backbones` once
    (``cache_dir/raw-<hash>``, :func:`~cdds_jax.data.synthetic.ensure_cached`).

    Args:
      cache_dir: folder for cached data (created).
      seed, num_images, **kwargs: of :func:`write_image_dataset`.
      image_kind: image backbone architecture (``vit``, ``swin``, ``clip``).
      text_kind: text backbone architecture (``bert``, ``clip_text``).
      backbone_size: hidden size of both tiny backbones.
    """
    num_images = {str(k): int(v) for k, v in num_images.items()}
    image_size = int(kwargs.get("image_size", 32))
    spec = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_images": num_images,
        "image_kind": image_kind,
        "text_kind": text_kind,
        "backbone_size": backbone_size,
        **kwargs,
    }

    def write(folder: pathlib.Path) -> None:
        write_image_dataset(folder, seed=seed, num_images=num_images, **kwargs)
        write_demo_backbones(
            folder / "backbones",
            seed=seed,
            image_kind=image_kind,
            text_kind=text_kind,
            image_size=image_size,
            hidden_size=backbone_size,
        )

    root = ensure_cached(cache_dir, "raw", spec, write)
    image, text = _demo_folders(root / "backbones", image_kind, text_kind)
    return DemoRaw(
        annotation=root / "dataset_synthetic.json",
        laps=root / "laps",
        image_root=root,
        image_backbone=image,
        text_backbone=text,
    )


def _demo_folders(
    root: pathlib.Path, image_kind: str, text_kind: str
) -> tuple[pathlib.Path, pathlib.Path]:
    """Where :func:`write_demo_backbones` puts the two towers."""
    from xmodal.backbones import REGISTRY

    image, text = REGISTRY[image_kind].composite, REGISTRY[text_kind].composite
    if image is not None and text is not None and image.model_type == text.model_type:
        return root / image.model_type, root / image.model_type
    return root / image_kind, root / text_kind
