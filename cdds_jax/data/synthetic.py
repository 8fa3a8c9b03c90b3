"""Synthetic image-text retrieval data with planted structure, written as real files.

The generator WRITES the formats the readers in :mod:`cdds_jax.data` read (the
``features`` store and the SCAN ``scan_precomp`` layout); tests and ``:demo`` configs
read them back through the real readers.

Planted structure (docs/cdds.md, 'Data'). A "world" drawn from the seed and
shared by all splits holds:

- ``num_concepts`` latent concepts, embeddings ``E`` [C, k] ~ N(0, 1), k =
  ``latent_dim``, each with a fixed pseudo-word (concept 17 -> ``"zorb17"``);
- one linear transform per modality, ``A_v`` [k, D_v] and ``A_t`` [k, D_t], entries
  N(0, 1/k) (independent, so no fixed projection maps one modality onto the other);
- fixed feature vectors ``F`` [n_fill, D_t] ~ N(0, 1) for syntax-like filler words
  ("a", "the", "with", "of", ...).

Each image draws ``concepts_per_image`` distinct concepts. Its P tokens each express one
of them (every concept at least once) or, with probability ``background_prob``,
background clutter ``A_v^T b`` (b ~ N(0, I_k)):

    image token = A_v^T e_concept + colour_image + noise * N(0, I)

where ``colour_image`` ~ N(0, colour_scale^2 I) is one image-level offset shared by all
its tokens (the modality nuisance). Each caption mentions a non-empty subset of its
image's concepts (size >= 2 when the image has >= 2 concepts; the captions of one image
cycle through a random order of those subsets, so they differ until the subsets run
out) as content words, at random positions among syntax-like filler words; lengths
vary in [max(3, |subset| + 1), max_words]:

    content token = A_t^T e_concept + noise * N(0, I)
    filler token  = F_word + syntax_caption + noise * N(0, I)

where ``syntax_caption`` ~ N(0, syntax_scale^2 I) is one caption-level offset shared by
its fillers. ``captions.txt`` holds the matching words (token j of ``captions.npy`` is
word j of the line), so a BiGRU can learn from the text alone. Chance R@1 is 1/N_img;
the identity of an image (its concept set) is recoverable from both modalities, but only
through the unknown transforms and past the nuisance and the noise.

Determinism: the same arguments give byte-identical files. Each split draws from its own
stream ``(seed, crc32(split))``, so adding a split does not change the others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pathlib
import shutil
import tempfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "FILLER_WORDS",
    "GENERATOR_VERSION",
    "concept_word",
    "ensure_cached",
    "ensure_demo_store",
    "write_feature_store",
    "write_scan_precomp",
]

#: Bumped whenever the generator's output changes (it keys :func:`ensure_demo_store`).
GENERATOR_VERSION = 1

#: Syntax-like filler words (no digits, so they never collide with concept words).
FILLER_WORDS: tuple[str, ...] = (
    "a",
    "the",
    "with",
    "of",
    "in",
    "on",
    "and",
    "is",
    "near",
    "an",
    "at",
    "some",
    "two",
    "its",
    "by",
    "next",
    "to",
    "over",
)

_PREFIXES = (
    "zorb",
    "quel",
    "mip",
    "dax",
    "blick",
    "wug",
    "fep",
    "toma",
    "lorp",
    "snib",
    "vab",
    "gorp",
)

_DEFAULT_IMAGES = {"train": 1000, "dev": 100, "test": 100}


def concept_word(c: int) -> str:
    """The fixed pseudo-word of concept ``c`` (e.g. 17 -> ``"zorb17"``)."""
    return f"{_PREFIXES[c % len(_PREFIXES)]}{c}"


def _check_args(
    num_images: Mapping[str, int],
    captions_per_image: int,
    num_tokens: int,
    image_dim: int,
    max_words: int,
    text_dim: int,
    num_concepts: int,
    concepts_per_image: int,
    latent_dim: int,
    noise: float,
    colour_scale: float,
    syntax_scale: float,
    background_prob: float,
    dtype: str,
) -> None:
    if not num_images:
        raise ValueError(
            "num_images: expected a non-empty {split: count} mapping, got {}"
        )
    for split, n in num_images.items():
        if not isinstance(split, str) or not split or "/" in split:
            raise ValueError(
                f"num_images: expected split names without '/', got {split!r}"
            )
        if int(n) < 1:
            raise ValueError(f"num_images[{split!r}]: expected >= 1, got {n}")
    for name, value in (
        ("captions_per_image", captions_per_image),
        ("num_tokens", num_tokens),
        ("image_dim", image_dim),
        ("text_dim", text_dim),
        ("latent_dim", latent_dim),
    ):
        if int(value) < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if not 1 <= concepts_per_image <= num_concepts:
        raise ValueError(
            f"concepts_per_image: expected in [1, num_concepts={num_concepts}], got {concepts_per_image}"
        )
    if num_tokens < concepts_per_image:
        raise ValueError(
            f"num_tokens: expected >= concepts_per_image={concepts_per_image} (every concept "
            f"shows in a token), got {num_tokens}"
        )
    if max_words < max(3, concepts_per_image + 1):
        raise ValueError(
            f"max_words: expected >= max(3, concepts_per_image + 1) = "
            f"{max(3, concepts_per_image + 1)}, got {max_words}"
        )
    for name, value in (
        ("noise", noise),
        ("colour_scale", colour_scale),
        ("syntax_scale", syntax_scale),
    ):
        if not value >= 0:
            raise ValueError(f"{name}: expected >= 0, got {value}")
    if not 0 <= background_prob < 1:
        raise ValueError(f"background_prob: expected in [0, 1), got {background_prob}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype: expected 'float16' or 'float32', got {dtype!r}")


def _world(
    seed: int, num_concepts: int, latent_dim: int, image_dim: int, text_dim: int
):
    rng = np.random.default_rng([seed, 0])
    concepts = rng.standard_normal((num_concepts, latent_dim))
    a_v = rng.standard_normal((latent_dim, image_dim)) / np.sqrt(latent_dim)
    a_t = rng.standard_normal((latent_dim, text_dim)) / np.sqrt(latent_dim)
    fillers = rng.standard_normal((len(FILLER_WORDS), text_dim))
    return concepts, a_v, a_t, fillers


def _generate_split(
    split: str,
    n_img: int,
    *,
    seed: int,
    world,
    captions_per_image: int,
    uneven: bool,
    num_tokens: int,
    max_words: int,
    concepts_per_image: int,
    noise: float,
    colour_scale: float,
    syntax_scale: float,
    background_prob: float,
) -> dict[str, Any]:
    """Draws one split. Returns images [N, P, D_v], caption features [M, L, D_t],
    lengths [M], caption_to_image [M], caption strings (all float64 / int64)."""
    concepts, a_v, a_t, fillers = world
    num_concepts, latent_dim = concepts.shape
    rng = np.random.default_rng([seed, 1, zlib.crc32(split.encode())])
    cpi, p = concepts_per_image, num_tokens

    # --- images ------------------------------------------------------------------------
    own = np.argsort(rng.random((n_img, num_concepts)), axis=1)[:, :cpi]  # [N, cpi]
    # Token -> slot in the image's concepts; -1 = background. Every concept shows once.
    slots = rng.integers(0, cpi, size=(n_img, p))
    slots[rng.random((n_img, p)) < background_prob] = -1
    slots[:, :cpi] = np.arange(cpi)
    slots = np.take_along_axis(
        slots, np.argsort(rng.random((n_img, p)), axis=1), axis=1
    )
    latent = concepts[
        np.take_along_axis(own, np.maximum(slots, 0), axis=1)
    ]  # [N, P, k]
    background = rng.standard_normal((n_img, p, latent_dim))
    latent = np.where((slots < 0)[..., None], background, latent)
    colour = colour_scale * rng.standard_normal((n_img, 1, a_v.shape[1]))
    images = (
        latent @ a_v + colour + noise * rng.standard_normal((n_img, p, a_v.shape[1]))
    )

    # --- captions ----------------------------------------------------------------------
    if uneven:
        per_image = rng.integers(captions_per_image, captions_per_image + 3, size=n_img)
    else:
        per_image = np.full((n_img,), captions_per_image)
    c2i = np.repeat(np.arange(n_img), per_image)
    n_cap = c2i.size
    rank = np.arange(n_cap) - np.repeat(np.cumsum(per_image) - per_image, per_image)

    min_size = min(2, cpi)
    subsets = [
        s
        for r in range(min_size, cpi + 1)
        for s in itertools.combinations(range(cpi), r)
    ]
    sub_table = np.full((len(subsets), cpi), -1)
    for j, s in enumerate(subsets):
        sub_table[j, : len(s)] = s
    sub_size = np.array([len(s) for s in subsets])
    order = np.argsort(
        rng.random((n_img, len(subsets))), axis=1
    )  # per-image subset order
    cap_sub = order[c2i, rank % len(subsets)]  # [M]
    size = sub_size[cap_sub]
    members = own[
        c2i[:, None], np.maximum(sub_table[cap_sub], 0)
    ]  # [M, cpi] concept ids

    lo = np.maximum(3, size + 1)
    lengths = lo + (rng.random(n_cap) * (max_words + 1 - lo)).astype(np.int64)
    keys = rng.random((n_cap, max_words))
    keys[np.arange(max_words)[None, :] >= lengths[:, None]] = np.inf
    positions = np.argsort(
        keys, axis=1
    )  # first `size` positions hold the content words
    filler_ids = rng.integers(0, len(FILLER_WORDS), size=(n_cap, max_words))
    # Word ids: concept c -> c, filler f -> C + f, padding -> -1.
    words = num_concepts + filler_ids
    valid = np.arange(max_words)[None, :] < lengths[:, None]
    words[~valid] = -1
    is_content = np.arange(cpi)[None, :] < size[:, None]  # [M, cpi]
    rows = np.repeat(np.arange(n_cap)[:, None], cpi, axis=1)
    words[rows[is_content], positions[:, :cpi][is_content]] = members[is_content]

    table = np.concatenate([concepts @ a_t, fillers], axis=0)  # [C + n_fill, D_t]
    text_dim = a_t.shape[1]
    syntax = syntax_scale * rng.standard_normal((n_cap, 1, text_dim))
    filler_mask = (words >= num_concepts)[..., None]
    text = table[np.maximum(words, 0)] + np.where(filler_mask, syntax, 0.0)
    text = text + noise * rng.standard_normal((n_cap, max_words, text_dim))
    text[~valid] = 0.0

    vocab = [concept_word(c) for c in range(num_concepts)] + list(FILLER_WORDS)
    strings = [
        " ".join(vocab[w] for w in row[:n])
        for row, n in zip(words, lengths, strict=True)
    ]

    if uneven:  # shuffled caption order, like COCO's 25,010
        perm = rng.permutation(n_cap)
        c2i, text, lengths = c2i[perm], text[perm], lengths[perm]
        strings = [strings[i] for i in perm]
    return {
        "images": images,
        "captions": text,
        "caption_lengths": lengths,
        "caption_to_image": c2i,
        "text": strings,
    }


def _generator_args(**kwargs) -> dict[str, Any]:
    out = dict(kwargs)
    out["num_images"] = {str(k): int(v) for k, v in out["num_images"].items()}
    return out


def write_feature_store(
    root: str | os.PathLike,
    *,
    seed: int,
    num_images: Mapping[str, int] | None = None,
    captions_per_image: int = 5,
    uneven: bool = False,
    num_tokens: int = 16,
    image_dim: int = 64,
    max_words: int = 12,
    text_dim: int = 48,
    num_concepts: int = 48,
    concepts_per_image: int = 3,
    latent_dim: int = 32,
    noise: float = 0.5,
    colour_scale: float = 0.5,
    syntax_scale: float = 0.5,
    background_prob: float = 0.25,
    dtype: str = "float16",
) -> pathlib.Path:
    """Writes a synthetic ``features`` store ``root/{split}/`` for each split.

    Each split folder gets ``images.npy`` [N_img, num_tokens, image_dim],
    ``captions.npy`` [N_cap, max_words, text_dim] (zero-padded), ``caption_lengths.npy``
    int32, ``captions.txt`` (the matching words), ``caption_to_image.npy`` int64 and
    ``meta.json`` (dataset "synthetic", counts, dims and every generator argument).

    Args:
      root: output folder (created; existing files of the same names are overwritten).
      seed: the seed; the same arguments give byte-identical files.
      num_images: {split: number of images}; default {"train": 1000, "dev": 100,
        "test": 100}.
      captions_per_image: captions per image (with ``uneven``: the minimum).
      uneven: 5-7 (``captions_per_image`` .. ``+2``) captions per image, caption rows in
        shuffled order, like COCO's 25,010 Karpathy test captions.
      num_tokens: P, image tokens (>= concepts_per_image).
      image_dim: D_v.
      max_words: L_max (>= max(3, concepts_per_image + 1)); lengths vary in
        [max(3, |subset| + 1), max_words].
      text_dim: D_t.
      num_concepts: number of latent concepts (pseudo-words).
      concepts_per_image: concepts per image.
      latent_dim: k, size of the concept embeddings.
      noise: std of the per-token Gaussian noise (both modalities).
      colour_scale: std of the image-level colour offset (image nuisance).
      syntax_scale: std of the caption-level offset of the filler words (text nuisance).
      background_prob: probability that an image token is background clutter.
      dtype: "float16" or "float32" for the feature arrays.

    Returns:
      ``root`` as a :class:`pathlib.Path`.
    """
    num_images = dict(_DEFAULT_IMAGES if num_images is None else num_images)
    _check_args(
        num_images, captions_per_image, num_tokens, image_dim, max_words, text_dim,
        num_concepts, concepts_per_image, latent_dim, noise, colour_scale, syntax_scale,
        background_prob, dtype,
    )  # fmt: skip
    args = _generator_args(
        seed=seed, num_images=num_images, captions_per_image=captions_per_image,
        uneven=uneven, num_tokens=num_tokens, image_dim=image_dim, max_words=max_words,
        text_dim=text_dim, num_concepts=num_concepts, concepts_per_image=concepts_per_image,
        latent_dim=latent_dim, noise=noise, colour_scale=colour_scale,
        syntax_scale=syntax_scale, background_prob=background_prob, dtype=dtype,
    )  # fmt: skip
    root = pathlib.Path(root)
    world = _world(seed, num_concepts, latent_dim, image_dim, text_dim)
    for split, n_img in num_images.items():
        data = _generate_split(
            split, int(n_img), seed=seed, world=world,
            captions_per_image=captions_per_image, uneven=uneven, num_tokens=num_tokens,
            max_words=max_words, concepts_per_image=concepts_per_image, noise=noise,
            colour_scale=colour_scale, syntax_scale=syntax_scale,
            background_prob=background_prob,
        )  # fmt: skip
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "images.npy", data["images"].astype(dtype))
        np.save(folder / "captions.npy", data["captions"].astype(dtype))
        np.save(
            folder / "caption_lengths.npy", data["caption_lengths"].astype(np.int32)
        )
        np.save(
            folder / "caption_to_image.npy", data["caption_to_image"].astype(np.int64)
        )
        (folder / "captions.txt").write_text(
            "".join(line + "\n" for line in data["text"]), encoding="utf-8"
        )
        meta = {
            "dataset": "synthetic",
            "split": split,
            "format": "features",
            "image_backbone": "synthetic",
            "text_encoder": "synthetic",
            "num_images": int(n_img),
            "num_captions": len(data["text"]),
            "num_tokens": num_tokens,
            "image_dim": image_dim,
            "max_words": max_words,
            "text_dim": text_dim,
            "generator": {
                "name": "cdds_jax.data.synthetic",
                "version": GENERATOR_VERSION,
                **args,
            },
        }
        (folder / "meta.json").write_text(
            json.dumps(meta, indent=2, sort_keys=True) + "\n"
        )
    return root


def write_scan_precomp(
    root: str | os.PathLike,
    *,
    seed: int,
    num_images: Mapping[str, int] | None = None,
    captions_per_image: int = 5,
    num_tokens: int = 36,
    image_dim: int = 64,
    max_words: int = 12,
    num_concepts: int = 48,
    concepts_per_image: int = 3,
    latent_dim: int = 32,
    noise: float = 0.5,
    colour_scale: float = 0.5,
    syntax_scale: float = 0.5,
    background_prob: float = 0.25,
) -> pathlib.Path:
    """Writes the SCAN precomp layout ``root/{split}_ims.npy`` (float32) + ``{split}_caps.txt``.

    Same world and planted structure as :func:`write_feature_store` (caption i belongs to
    image i // captions_per_image; no caption features, the text only). Arguments as
    there. Returns ``root``.
    """
    num_images = dict(_DEFAULT_IMAGES if num_images is None else num_images)
    text_dim = 8  # text features are not written; a small table keeps the draw cheap
    _check_args(
        num_images, captions_per_image, num_tokens, image_dim, max_words, text_dim,
        num_concepts, concepts_per_image, latent_dim, noise, colour_scale, syntax_scale,
        background_prob, "float32",
    )  # fmt: skip
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    world = _world(seed, num_concepts, latent_dim, image_dim, text_dim)
    for split, n_img in num_images.items():
        data = _generate_split(
            split, int(n_img), seed=seed, world=world,
            captions_per_image=captions_per_image, uneven=False, num_tokens=num_tokens,
            max_words=max_words, concepts_per_image=concepts_per_image, noise=noise,
            colour_scale=colour_scale, syntax_scale=syntax_scale,
            background_prob=background_prob,
        )  # fmt: skip
        np.save(root / f"{split}_ims.npy", data["images"].astype(np.float32))
        (root / f"{split}_caps.txt").write_text(
            "".join(line + "\n" for line in data["text"]), encoding="utf-8"
        )
    return root


def ensure_cached(
    cache_dir: str | os.PathLike,
    name: str,
    spec: Mapping[str, Any],
    write: Callable[[pathlib.Path], Any],
) -> pathlib.Path:
    """``cache_dir/<name>-<hash of spec>``, written once by ``write(folder)``.

    The folder is written into a temporary folder beside it and renamed into place, so
    a killed run never leaves a half-written one; later calls (and concurrent writers,
    whichever renames first) reuse it. ``spec`` (JSON-able) must hold everything the
    output depends on, its generator version included.
    """
    cache_dir = pathlib.Path(cache_dir)
    key_src = json.dumps(dict(spec), sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    final = cache_dir / f"{name}-{key}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{key}-", dir=cache_dir))
    try:
        write(tmp)
        (tmp / "generator.json").write_text(key_src + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_demo_store(cache_dir: str | os.PathLike, **kwargs: Any) -> pathlib.Path:
    """Writes :func:`write_feature_store` ``(**kwargs)`` once and returns its root.

    The store lives in ``cache_dir/synthetic-<hash>``, keyed by a hash of the arguments
    and :data:`GENERATOR_VERSION` (:func:`ensure_cached`).

    Args:
      cache_dir: folder for cached stores (created).
      **kwargs: keyword arguments of :func:`write_feature_store` (``seed`` required).
    """
    if "seed" not in kwargs:
        raise ValueError("seed: ensure_demo_store needs seed=..., got none")
    spec = dict(kwargs)
    if spec.get("num_images") is not None:
        spec["num_images"] = {str(k): int(v) for k, v in spec["num_images"].items()}
    return ensure_cached(
        cache_dir,
        "synthetic",
        {"version": GENERATOR_VERSION, **spec},
        lambda folder: write_feature_store(folder, **kwargs),
    )
