"""Image decoding and augmentation for the image backbones (docs/cdds.md §12.8).

LAPS's transforms, which the paper's numbers assume, on PIL images:

* training: decode -> ``RandomResizedCrop(S, scale=(0.6, 1.0))`` (torchvision's
  sampling: area fraction uniform in ``scale``, log aspect ratio uniform in
  ``log(3/4)..log(4/3)``, 10 tries, then a centre crop) with a BICUBIC resize ->
  horizontal flip with probability 0.5;
* evaluation: decode -> BICUBIC resize to S x S (LAPS), or for CLIP the short side to S
  and a centre crop of S x S (CLIP's own preprocessing).

Images stay uint8 ``[S, S, 3]`` on the host (4x less to copy between processes and to
the device); the model scales them to [0, 1] and normalises them with its backbone's
mean and std (ImageNet for ViT / Swin as LAPS, CLIP's for CLIP;
:mod:`cdds_jax.encoders`).

Randomness: one ``np.random.Generator`` per item seeded with ``(seed, epoch, caption
index)``, so an item's augmentation does not depend on the order, the process or the
worker that reads it, and a resumed run sees exactly the same images.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np
from PIL import Image

from xmodal import files

__all__ = [
    "ImageSpec",
    "TrainImageTransform",
    "decode_rgb",
    "eval_image",
    "random_resized_crop_box",
    "train_image",
]


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """How images are prepared for one backbone.

    Attributes:
      size: S, the backbone's input size (square).
      center_crop: evaluation resizes the short side to S and crops the centre (CLIP);
        False resizes to S x S (LAPS, ViT / Swin).
      scale: area range of the training RandomResizedCrop.
      ratio: aspect-ratio range of the training RandomResizedCrop.
      flip: random horizontal flips in training.
    """

    size: int
    center_crop: bool = False
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"ImageSpec.size: expected >= 1, got {self.size}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"ImageSpec.scale: expected 0 < lo <= hi <= 1, got {self.scale}"
            )


def decode_rgb(data: bytes | np.ndarray, path: str = "") -> Image.Image:
    """Decodes an encoded image (JPEG, PNG, ...) to RGB; one clear error naming ``path``."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for bad files
        raise ValueError(
            files.field_error(
                path or "<image>",
                "images",
                "a decodable image",
                f"{type(e).__name__}: {e}",
            )
        ) from None


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: ``(left, top, w, h)``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_image(
    data: bytes | np.ndarray, spec: ImageSpec, rng: np.random.Generator, path: str = ""
) -> np.ndarray:
    """Decode, random resized crop (bicubic), random flip: uint8 ``[S, S, 3]``."""
    img = decode_rgb(data, path)
    left, top, w, h = random_resized_crop_box(*img.size, rng, spec.scale, spec.ratio)
    img = img.crop((left, top, left + w, top + h)).resize(
        (spec.size, spec.size), Image.Resampling.BICUBIC
    )
    out = np.asarray(img, np.uint8)
    if spec.flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def eval_image(data: bytes | np.ndarray, spec: ImageSpec, path: str = "") -> np.ndarray:
    """Decode and resize for evaluation (see the module docstring): uint8 ``[S, S, 3]``."""
    img = decode_rgb(data, path)
    s = spec.size
    if spec.center_crop:
        width, height = img.size
        short = min(width, height)
        new = (
            (s, int(s * height / width))
            if width == short
            else (int(s * width / height), s)
        )
        img = img.resize(new, Image.Resampling.BICUBIC)
        left = round((new[0] - s) / 2.0)
        top = round((new[1] - s) / 2.0)
        img = img.crop((left, top, left + s, top + s))
    else:
        img = img.resize((s, s), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, np.uint8))


class TrainImageTransform:
    """The training transform of :class:`~cdds_jax.data.raw.RawPairSource` items.

    Replaces ``jpeg`` (and ``path``) by ``image`` uint8 ``[S, S, 3]``; the generator is
    seeded with ``(seed, epoch, index)``. Picklable (it runs in grain workers); an
    :class:`xmodal.pipeline.EpochTransform`.
    """

    def __init__(self, spec: ImageSpec, seed: int) -> None:
        self.spec, self.seed = spec, int(seed)

    def __call__(self, item: dict[str, Any], *, epoch: int) -> dict[str, Any]:
        out = dict(item)
        data = out.pop("jpeg")
        path = str(out.pop("path", ""))
        rng = np.random.default_rng([self.seed, int(epoch), int(out["index"])])
        out["image"] = train_image(data, self.spec, rng, path)
        return out

    def __repr__(self) -> str:
        return f"TrainImageTransform({self.spec}, seed={self.seed})"
