"""What a synthetic retrieval set is drawn from: :class:`SyntheticSpec` and the words.

One frozen dataclass holds every generator argument except the seed and the split
sizes (docs/cdds.md §12.6), validated once; the writers
(:mod:`cdds_jax.data.synthetic.writers`) and the draws
(:mod:`cdds_jax.data.synthetic.draw`) take it whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FILLER_WORDS",
    "GENERATORS",
    "MIXED_ONLY",
    "SyntheticSpec",
    "check_num_images",
    "concept_word",
]

#: ``generator``: ``offsets`` (the first demo generator: per-sample constant offsets
#: as the only nuisance) and ``mixed`` (nuisances no single table comparison removes,
#: concepts carried by location and by shape, per-modality column permutations).
GENERATORS = ("offsets", "mixed")
#: Fields only the ``mixed`` generator reads, and ``generator`` itself.
MIXED_ONLY = ("generator", "shape_share", "spread_scale", "token_scale", "gain_scale")

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


def concept_word(c: int) -> str:
    """The fixed pseudo-word of concept ``c`` (e.g. 17 -> ``"zorb17"``)."""
    return f"{_PREFIXES[c % len(_PREFIXES)]}{c}"


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Every argument of a synthetic draw but the seed and the split sizes.

    Attributes:
      captions_per_image: captions per image (with ``uneven``: the minimum).
      uneven: 5-7 (``captions_per_image`` .. ``+2``) captions per image, caption rows
        in shuffled order, like COCO's 25,010 Karpathy test captions.
      num_tokens: P, image tokens (>= concepts_per_image).
      image_dim: D_v.
      max_words: L_max (>= max(3, concepts_per_image + 1)); lengths vary in
        [max(3, |subset| + 1), max_words].
      text_dim: D_t.
      num_concepts: number of latent concepts (pseudo-words).
      concepts_per_image: concepts per image.
      latent_dim: k, size of the concept embeddings.
      noise: std of the per-token Gaussian noise (both modalities).
      colour_scale: std of the per-image constant offset (image nuisance).
      syntax_scale: std of the per-caption constant offset of the filler words.
      background_prob: probability that an image token is background clutter.
      dtype: "float16" or "float32" for the feature arrays.
      generator: one of ``GENERATORS``.
      shape_share: ``mixed``: share of a concept's variance carried by a zero-mean
        +-pattern (its "shape") instead of its location, in [0, 1].
      spread_scale: ``mixed``: std of the per-sample nuisance direction that each
        token adds with its own N(0, 1) coefficient.
      token_scale: ``mixed``: std of each token's own scalar offset (all columns).
      gain_scale: ``mixed``: std of the log of each sample's per-column gain.
    """

    captions_per_image: int = 5
    uneven: bool = False
    num_tokens: int = 16
    image_dim: int = 64
    max_words: int = 12
    text_dim: int = 48
    num_concepts: int = 48
    concepts_per_image: int = 3
    latent_dim: int = 32
    noise: float = 0.5
    colour_scale: float = 0.5
    syntax_scale: float = 0.5
    background_prob: float = 0.25
    dtype: str = "float16"
    generator: str = "offsets"
    shape_share: float = 0.3
    spread_scale: float = 0.3
    token_scale: float = 0.3
    gain_scale: float = 0.2

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad field and its value."""
        for name in (
            "captions_per_image",
            "num_tokens",
            "image_dim",
            "text_dim",
            "latent_dim",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        cpi, num_concepts = self.concepts_per_image, self.num_concepts
        if not 1 <= cpi <= num_concepts:
            raise ValueError(
                f"concepts_per_image: expected in [1, num_concepts={num_concepts}], "
                f"got {cpi}"
            )
        if self.num_tokens < cpi:
            raise ValueError(
                f"num_tokens: expected >= concepts_per_image={cpi} (every concept "
                f"shows in a token), got {self.num_tokens}"
            )
        if self.max_words < max(3, cpi + 1):
            raise ValueError(
                f"max_words: expected >= max(3, concepts_per_image + 1) = "
                f"{max(3, cpi + 1)}, got {self.max_words}"
            )
        for name in (
            "noise",
            "colour_scale",
            "syntax_scale",
            "spread_scale",
            "token_scale",
            "gain_scale",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if not 0 <= self.background_prob < 1:
            raise ValueError(
                f"background_prob: expected in [0, 1), got {self.background_prob}"
            )
        if not 0 <= self.shape_share <= 1:
            raise ValueError(f"shape_share: expected in [0, 1], got {self.shape_share}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(
                f"dtype: expected 'float16' or 'float32', got {self.dtype!r}"
            )
        if self.generator not in GENERATORS:
            raise ValueError(
                f"generator: expected one of {GENERATORS}, got {self.generator!r}"
            )

    def record(self) -> dict[str, Any]:
        """The fields a store's ``meta.json`` records: all of them, except
        ``MIXED_ONLY`` for the ``offsets`` generator (whose files predate them)."""
        out = dataclasses.asdict(self)
        if self.generator == "offsets":
            for name in MIXED_ONLY:
                out.pop(name)
        return out


def check_num_images(num_images: Mapping[str, int]) -> dict[str, int]:
    """``{split: count}`` with string split names without '/' and counts >= 1."""
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
    return {str(k): int(v) for k, v in num_images.items()}
