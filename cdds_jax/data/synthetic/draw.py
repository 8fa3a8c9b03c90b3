"""The draws of the synthetic retrieval sets: a world shared by the splits, one split.

Two generators share the structure (which concepts an image shows, in which tokens;
which of them each caption mentions, in which words) and differ in the feature values
(docs/cdds.md §12.6; the planted effects are listed in the package docstring):

* ``offsets``: ``image token = A_v^T e_c + colour_image + noise``, ``content word =
  A_t^T e_c + noise``, ``filler = F_w + syntax_caption + noise``, with dense random
  ``A_v``, ``A_t``.
* ``mixed``: concepts carried by location and by a zero-mean shape, their latent
  dimensions placed in per-modality permuted columns, under the ``offsets`` nuisances
  plus three more (per-sample per-column gain, per-sample spread direction taken by
  each token with its own coefficient, per-token offset).

Determinism: a split draws from streams keyed by ``(seed, crc32(split))``, so adding a
split does not change the others; ``offsets`` keeps the draw order of the first
generator (its files are byte-identical to those written before ``mixed`` existed).
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any, NamedTuple

import numpy as np

from cdds_jax.data.synthetic.spec import FILLER_WORDS, SyntheticSpec, concept_word

__all__ = ["Structure", "World", "draw_split", "draw_world"]


class World(NamedTuple):
    """What every split of one seed shares.

    Attributes:
      concepts: ``[C, k]`` concept locations ``e_c`` ~ N(0, 1).
      a_v, a_t: ``offsets``: ``[k, D]`` dense maps (N(0, 1/k)); ``mixed``: None.
      fillers: ``[n_fill, D_t]`` filler-word features ~ N(0, 1).
      shapes: ``mixed``: ``[C, k]`` concept shapes ``h_c`` ~ N(0, 1); else None.
      src_v, src_t: ``mixed``: ``[D]`` the latent dimension each column of the
        modality carries (a random permutation of ``arange(D) % k`` per modality, so
        every latent dimension sits in D / k columns, different ones per modality);
        else None.
    """

    concepts: np.ndarray
    a_v: np.ndarray | None
    a_t: np.ndarray | None
    fillers: np.ndarray
    shapes: np.ndarray | None = None
    src_v: np.ndarray | None = None
    src_t: np.ndarray | None = None


def draw_world(seed: int, spec: SyntheticSpec, text_dim: int) -> World:
    """The world of ``seed`` (``text_dim`` may differ from ``spec.text_dim``: the SCAN
    layout writes no caption features and draws a small table)."""
    k, dv = spec.latent_dim, spec.image_dim
    rng = np.random.default_rng([seed, 0])
    concepts = rng.standard_normal((spec.num_concepts, k))
    if spec.generator == "offsets":
        a_v = rng.standard_normal((k, dv)) / np.sqrt(k)
        a_t = rng.standard_normal((k, text_dim)) / np.sqrt(k)
        fillers = rng.standard_normal((len(FILLER_WORDS), text_dim))
        return World(concepts, a_v, a_t, fillers)
    extra = np.random.default_rng([seed, 0, 1])
    return World(
        concepts=concepts,
        a_v=None,
        a_t=None,
        fillers=extra.standard_normal((len(FILLER_WORDS), text_dim)),
        shapes=extra.standard_normal((spec.num_concepts, k)),
        src_v=extra.permutation(np.arange(dv) % k),
        src_t=extra.permutation(np.arange(text_dim) % k),
    )


class Structure(NamedTuple):
    """Which concept each token and word shows (no feature values).

    Attributes:
      own: ``[N, cpi]`` the concepts of each image.
      slots: ``[N, P]`` index into ``own`` per image token; -1 = background.
      c2i: ``[M]`` image of each caption.
      words: ``[M, L]`` word id per position: concept c -> c, filler f -> C + f,
        padding -> -1.
      lengths: ``[M]`` valid words per caption.
    """

    own: np.ndarray
    slots: np.ndarray
    c2i: np.ndarray
    words: np.ndarray
    lengths: np.ndarray


def _image_slots(
    rng: np.random.Generator, n_img: int, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's concepts and its tokens' slots (every concept shows once)."""
    cpi, p = spec.concepts_per_image, spec.num_tokens
    own = np.argsort(rng.random((n_img, spec.num_concepts)), axis=1)[:, :cpi]
    slots = rng.integers(0, cpi, size=(n_img, p))
    slots[rng.random((n_img, p)) < spec.background_prob] = -1
    slots[:, :cpi] = np.arange(cpi)
    slots = np.take_along_axis(
        slots, np.argsort(rng.random((n_img, p)), axis=1), axis=1
    )
    return own, slots


def _caption_words(
    rng: np.random.Generator, own: np.ndarray, spec: SyntheticSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(c2i, words, lengths)``: each caption mentions a non-empty subset of its
    image's concepts (size >= 2 when it has >= 2; an image's captions cycle through a
    random order of the subsets) at random positions among filler words."""
    n_img, cpi = own.shape
    num_concepts, max_words = spec.num_concepts, spec.max_words
    if spec.uneven:
        per_image = rng.integers(
            spec.captions_per_image, spec.captions_per_image + 3, size=n_img
        )
    else:
        per_image = np.full((n_img,), spec.captions_per_image)
    c2i = np.repeat(np.arange(n_img), per_image)
    n_cap = c2i.size
    rank = np.arange(n_cap) - np.repeat(np.cumsum(per_image) - per_image, per_image)

    subsets = [
        s
        for r in range(min(2, cpi), cpi + 1)
        for s in itertools.combinations(range(cpi), r)
    ]
    sub_table = np.full((len(subsets), cpi), -1)
    for j, s in enumerate(subsets):
        sub_table[j, : len(s)] = s
    sub_size = np.array([len(s) for s in subsets])
    order = np.argsort(rng.random((n_img, len(subsets))), axis=1)
    cap_sub = order[c2i, rank % len(subsets)]  # [M]
    size = sub_size[cap_sub]
    members = own[c2i[:, None], np.maximum(sub_table[cap_sub], 0)]  # [M, cpi]

    lo = np.maximum(3, size + 1)
    lengths = lo + (rng.random(n_cap) * (max_words + 1 - lo)).astype(np.int64)
    keys = rng.random((n_cap, max_words))
    keys[np.arange(max_words)[None, :] >= lengths[:, None]] = np.inf
    positions = np.argsort(keys, axis=1)  # the first `size` hold the content words
    filler_ids = rng.integers(0, len(FILLER_WORDS), size=(n_cap, max_words))
    words = num_concepts + filler_ids
    valid = np.arange(max_words)[None, :] < lengths[:, None]
    words[~valid] = -1
    is_content = np.arange(cpi)[None, :] < size[:, None]  # [M, cpi]
    rows = np.repeat(np.arange(n_cap)[:, None], cpi, axis=1)
    words[rows[is_content], positions[:, :cpi][is_content]] = members[is_content]
    return c2i, words, lengths


def _strings(words: np.ndarray, lengths: np.ndarray, num_concepts: int) -> list[str]:
    vocab = [concept_word(c) for c in range(num_concepts)] + list(FILLER_WORDS)
    return [
        " ".join(vocab[w] for w in row[:n])
        for row, n in zip(words, lengths, strict=True)
    ]


def _offsets_split(
    rng: np.random.Generator, n_img: int, world: World, spec: SyntheticSpec
) -> tuple[Structure, np.ndarray, np.ndarray]:
    """The ``offsets`` values, in the first generator's draw order."""
    concepts, a_v, a_t, fillers = world.concepts, world.a_v, world.a_t, world.fillers
    assert a_v is not None and a_t is not None
    num_concepts, latent_dim = concepts.shape
    own, slots = _image_slots(rng, n_img, spec)
    p = spec.num_tokens
    latent = concepts[np.take_along_axis(own, np.maximum(slots, 0), axis=1)]
    background = rng.standard_normal((n_img, p, latent_dim))
    latent = np.where((slots < 0)[..., None], background, latent)
    colour = spec.colour_scale * rng.standard_normal((n_img, 1, a_v.shape[1]))
    noise = spec.noise * rng.standard_normal((n_img, p, a_v.shape[1]))
    images = latent @ a_v + colour + noise

    c2i, words, lengths = _caption_words(rng, own, spec)
    n_cap, text_dim = c2i.size, a_t.shape[1]
    table = np.concatenate([concepts @ a_t, fillers], axis=0)  # [C + n_fill, D_t]
    syntax = spec.syntax_scale * rng.standard_normal((n_cap, 1, text_dim))
    filler_mask = (words >= num_concepts)[..., None]
    text = table[np.maximum(words, 0)] + np.where(filler_mask, syntax, 0.0)
    text = text + spec.noise * rng.standard_normal((n_cap, spec.max_words, text_dim))
    return Structure(own, slots, c2i, words, lengths), images, text


def _nuisances(
    rng: np.random.Generator,
    clean: np.ndarray,
    valid: np.ndarray,
    offset_on: np.ndarray,
    spec: SyntheticSpec,
    offset_scale: float,
) -> np.ndarray:
    """``mixed``: the nuisances on ``clean`` ``[N, T, D]`` (``valid`` ``[N, T]``):
    ``gain * (clean + offset [on offset_on tokens] + r u + o) + noise``."""
    n, t, d = clean.shape
    offset = offset_scale * rng.standard_normal((n, 1, d))
    direction = spec.spread_scale * rng.standard_normal((n, 1, d))
    coeff = rng.standard_normal((n, t, 1))
    token = spec.token_scale * rng.standard_normal((n, t, 1))
    gain = np.exp(spec.gain_scale * rng.standard_normal((n, 1, d)))
    noise = spec.noise * rng.standard_normal((n, t, d))
    shifted = clean + np.where(offset_on[..., None], offset, 0.0)
    out = gain * (shifted + coeff * direction + token) + noise
    return np.where(valid[..., None], out, 0.0)


def _mixed_split(
    split_key: int, seed: int, n_img: int, world: World, spec: SyntheticSpec
) -> tuple[Structure, np.ndarray, np.ndarray]:
    """The ``mixed`` values: structure and values from separate streams."""
    assert world.shapes is not None
    assert world.src_v is not None and world.src_t is not None
    rng = np.random.default_rng([seed, 3, split_key])
    values = np.random.default_rng([seed, 4, split_key])
    own, slots = _image_slots(rng, n_img, spec)
    c2i, words, lengths = _caption_words(rng, own, spec)
    k = spec.latent_dim
    loc_w, shape_w = np.sqrt(1.0 - spec.shape_share), np.sqrt(spec.shape_share)

    def concept_values(ids: np.ndarray) -> np.ndarray:
        """``a e_c + b s h_c`` with a fresh sign ``s`` per token / word."""
        sign = np.where(values.random(ids.shape) < 0.5, -1.0, 1.0)[..., None]
        return loc_w * world.concepts[ids] + shape_w * sign * world.shapes[ids]

    # --- images: concept tokens, background N(0, I_k), in the image's own columns --
    p = spec.num_tokens
    latent = concept_values(np.take_along_axis(own, np.maximum(slots, 0), axis=1))
    background = values.standard_normal((n_img, p, k))
    latent = np.where((slots < 0)[..., None], background, latent)
    everywhere = np.ones((n_img, p), bool)
    images = _nuisances(
        values, latent[..., world.src_v], everywhere, everywhere, spec,
        spec.colour_scale,
    )  # fmt: skip

    # --- captions: content words in the text's own columns, fillers as they are ---
    valid = np.arange(spec.max_words)[None, :] < lengths[:, None]
    content = (words >= 0) & (words < spec.num_concepts)
    latent = concept_values(np.where(content, words, 0))[..., world.src_t]
    filler = np.clip(words - spec.num_concepts, 0, len(FILLER_WORDS) - 1)
    clean = np.where(content[..., None], latent, world.fillers[filler])
    fillers = valid & ~content
    text = _nuisances(values, clean, valid, fillers, spec, spec.syntax_scale)
    return Structure(own, slots, c2i, words, lengths), images, text


def draw_split(
    split: str, n_img: int, *, seed: int, world: World, spec: SyntheticSpec
) -> dict[str, Any]:
    """Draws one split.

    Returns:
      ``images [N, P, D_v]``, ``captions [M, L, D_t]`` (zero-padded),
      ``caption_lengths [M]``, ``caption_to_image [M]``, ``text`` (caption strings;
      word j of a line is token j of its features); float64 / int64.
    """
    key = zlib.crc32(split.encode())
    if spec.generator == "offsets":
        rng = np.random.default_rng([seed, 1, key])
        structure, images, text = _offsets_split(rng, n_img, world, spec)
    else:
        rng = None
        structure, images, text = _mixed_split(key, seed, n_img, world, spec)
    c2i, words, lengths = structure.c2i, structure.words, structure.lengths
    text[~(np.arange(spec.max_words)[None, :] < lengths[:, None])] = 0.0
    strings = _strings(words, lengths, spec.num_concepts)
    if spec.uneven:  # shuffled caption order, like COCO's 25,010
        perm = (rng or np.random.default_rng([seed, 5, key])).permutation(c2i.size)
        c2i, text, lengths = c2i[perm], text[perm], lengths[perm]
        strings = [strings[i] for i in perm]
    return {
        "images": images,
        "captions": text,
        "caption_lengths": lengths,
        "caption_to_image": c2i,
        "text": strings,
    }
