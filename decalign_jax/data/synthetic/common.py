"""What the synthetic generators share: the version that keys demo caches, random MLPs.

Each modality of a synthetic sample is written as latent frames passed through its own
random tanh MLP (:func:`random_mlp`, :func:`apply_mlp`) into the real feature dims.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GENERATOR_VERSION", "LATENT_DIM", "RNG_STREAM", "apply_mlp", "random_mlp"]

#: Bumped whenever the generators' output changes (part of the demo cache key).
#: Version 2: the MMSA ``text_bert`` ids carry the text's sentiment (sentiment words);
#: every other array is drawn exactly as in version 1.
GENERATOR_VERSION = 2

#: Seeds the generators' main random streams; it stays at 1 so that a version change
#: confined to one array leaves the others (and the frozen-feature demo) unchanged.
RNG_STREAM = 1

#: Latent dims per modality before the random MLP.
LATENT_DIM = 8


def random_mlp(rng: np.random.Generator, k: int, d: int) -> tuple[np.ndarray, ...]:
    """A random one-hidden-layer (2k units) MLP ``k -> d``: ``(W_1 [k, 2k], b_1 [2k],
    W_2 [2k, d])``."""
    hidden = 2 * k
    return (
        rng.normal(size=(k, hidden)) / np.sqrt(k),
        rng.normal(scale=0.1, size=hidden),
        rng.normal(size=(hidden, d)) / np.sqrt(hidden),
    )


def apply_mlp(h: np.ndarray, mlp: tuple[np.ndarray, ...]) -> np.ndarray:
    """``tanh(h W_1 + b_1) W_2``: ``[..., k] -> [..., d]``."""
    w1, b1, w2 = mlp
    return np.tanh(h @ w1 + b1) @ w2
