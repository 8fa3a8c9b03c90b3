"""Synthetic MOSI / MOSEI / SIMS data WRITTEN as MMSA pickles, read by the real reader.

Generative model of :func:`write_mmsa_pickle` (docs/decalign.md, 'Data') (one draw of "world" parameters per seed,
shared by all splits):

* per sample a shared sentiment factor ``c`` and one private factor ``p_m`` per modality
  (all standard normal); the latent score is
  ``z = sqrt(rho) c + sqrt(1 - rho) * sum_m sqrt(w_m) p_m`` (unit variance) with
  ``rho = shared_fraction`` and modality weights ``w = modality_weights``. Modality ``m``
  sees only ``c`` and ``p_m``, so no single modality determines ``z``; all three do.
* each modality writes its factors along two fixed latent directions, modulated by its
  own time profile (text: a few "sentiment words" + [CLS]; audio: a Gaussian bump;
  vision: a slow oscillation), adds a speaker-style vector shared across modalities, a
  modality-private nuisance and frame noise, then passes the latent frames through its
  own random tanh MLP into ``D_m`` dims plus observation noise.
* ``text_bert`` token ids (BERT layout, synthetic ids) carry the text's visible
  sentiment too: some word positions hold positive or negative "sentiment words"
  (:data:`POSITIVE_IDS`, :data:`NEGATIVE_IDS`) whose balance follows it, so a BERT
  fine-tuned on the ids can learn what the frozen ``text`` features show.
* MOSEI / SIMS audio and vision get wild per-column scales, offsets and rare spikes
  (what the reader's percentile clip + z-score is for); ``corrupt_audio=True`` adds
  MOSEI's ``-inf`` and float32-overflowing values (audio then stored as float64).
* labels: MOSI / MOSEI are means of 5 / 3 annotators' integer ratings in ``[-3, 3]``
  (so a realistic share of integers and zeros), SIMS means of 5 ratings in
  ``{-1, 0, 1}`` (multiples of 0.2 in ``[-1, 1]``) plus unimodal ``regression_labels_T/A/V``
  rated from each modality's visible part.

Unaligned files are right-padded with zeros and carry ``audio_lengths`` /
``vision_lengths``; aligned files pad audio / vision beyond the word count with zeros.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from decalign_jax.data.split import SPLITS, canonical_dataset
from decalign_jax.data.synthetic.common import (
    LATENT_DIM,
    RNG_STREAM,
    apply_mlp,
    random_mlp,
)
from xmodal import files

__all__ = [
    "CLS_ID",
    "DATASET_DEFAULTS",
    "DEFAULT_SIZES",
    "FILLER_IDS",
    "NEGATIVE_IDS",
    "POSITIVE_IDS",
    "SEP_ID",
    "mmsa_file_name",
    "write_mmsa_pickle",
]

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mosi": {
        "seq_lens": (50, 50, 50),
        "unaligned_seq_lens": (50, 375, 500),
        "dims": (768, 5, 20),
        "aligned": True,
        "annotators": 5,
        "raw_scale": False,
    },
    "mosei": {
        "seq_lens": (50, 50, 50),
        "unaligned_seq_lens": (50, 500, 500),
        "dims": (768, 74, 35),
        "aligned": True,
        "annotators": 3,
        "raw_scale": True,
    },
    "sims": {
        "seq_lens": (39, 400, 55),
        "unaligned_seq_lens": (39, 400, 55),
        "dims": (768, 33, 709),
        "aligned": False,
        "annotators": 5,
        "raw_scale": True,
    },
}

#: Small default split sizes (the real ones are 1284/229/686 for MOSI).
DEFAULT_SIZES: dict[str, int] = {"train": 256, "valid": 64, "test": 128}

_N_STYLE = 3  # speaker-style dims shared across modalities
_GAIN = 1.5  # amplitude of the sentiment factors in the latent frames


def _unit(rng: np.random.Generator, k: int) -> np.ndarray:
    v = rng.normal(size=k)
    return v / np.linalg.norm(v)


def _resolve(
    dataset: str,
    sizes: Mapping[str, int] | None,
    seq_lens: Sequence[int] | None,
    dims: Sequence[int] | None,
    aligned: bool | None,
) -> tuple[str, dict[str, int], tuple[int, ...], tuple[int, ...], bool]:
    name = canonical_dataset(dataset)
    if name not in DATASET_DEFAULTS:
        raise ValueError(
            f"dataset={dataset!r}: write_mmsa_pickle writes {sorted(DATASET_DEFAULTS)}; "
            "use write_iemocap_raw + convert_iemocap for IEMOCAP"
        )
    d = DATASET_DEFAULTS[name]
    aligned = d["aligned"] if aligned is None else bool(aligned)
    if seq_lens is None:
        seq_lens = d["seq_lens"] if aligned else d["unaligned_seq_lens"]
    seq_lens = tuple(int(t) for t in seq_lens)
    dims = tuple(int(x) for x in (d["dims"] if dims is None else dims))
    if len(seq_lens) != 3 or len(dims) != 3:
        raise ValueError(
            f"seq_lens / dims: expected 3 entries each, got {seq_lens} / {dims}"
        )
    if seq_lens[0] < 3 or min(seq_lens) < 1 or min(dims) < 1:
        raise ValueError(
            f"seq_lens={seq_lens}, dims={dims}: need T_l >= 3 ([CLS] word [SEP]) and "
            "positive sizes"
        )
    if aligned and len(set(seq_lens)) != 1:
        raise ValueError(f"seq_lens={seq_lens}: aligned files need T_l == T_a == T_v")
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if set(sizes) != set(SPLITS) or min(sizes.values()) < 1:
        raise ValueError(
            f"sizes: expected positive sizes for {list(SPLITS)}, got {sizes}"
        )
    return name, sizes, seq_lens, dims, aligned


def mmsa_file_name(
    dataset: str = "mosi",
    *,
    aligned: bool | None = None,
    seq_lens: Sequence[int] | None = None,
) -> str:
    """The MMSA file name for these settings: ``aligned_50.pkl``, ``unaligned_39.pkl``..."""
    name = canonical_dataset(dataset)
    if name == "iemocap":
        return "iemocap_data.pkl"
    _, _, seq_lens, _, aligned = _resolve(name, None, seq_lens, None, aligned)
    return f"{'aligned' if aligned else 'unaligned'}_{seq_lens[0]}.pkl"


def _profiles(
    rng: np.random.Generator, lengths: np.ndarray, t_max: int, kind: str
) -> np.ndarray:
    """``[N, T]`` non-negative time profiles with mean 1 over the valid frames."""
    t = np.arange(t_max)[None, :]
    lens = lengths[:, None].astype(np.float64)
    valid = t < lens
    if kind == "text":
        # [CLS] (position 0) summarises the sentence; a few sentiment words carry it.
        word = (t >= 1) & (t <= lens - 2)
        hits = (rng.random(valid.shape) < 0.35) & word
        none = ~hits.any(axis=1)
        hits[none, 1] = True  # T_l >= 3 so position 1 is a word
        env = hits * (word.sum(axis=1, keepdims=True) / hits.sum(axis=1, keepdims=True))
        return env + (t == 0)
    if kind == "audio":
        centre = lens * rng.uniform(0.2, 0.8, size=lens.shape)
        width = np.maximum(1.0, 0.25 * lens)
        env = np.exp(-0.5 * ((t - centre) / width) ** 2) * valid
    else:
        freq = rng.uniform(0.5, 2.0, size=lens.shape)
        phase = rng.uniform(0.0, 2 * np.pi, size=lens.shape)
        env = (1.0 + 0.8 * np.sin(2 * np.pi * freq * t / lens + phase)) * valid
    return env * lens / np.maximum(env.sum(axis=1, keepdims=True), 1e-12)


def _ratings(
    rng: np.random.Generator,
    score: np.ndarray,
    *,
    annotators: int,
    scale: float,
    noise: float,
    limit: int,
) -> np.ndarray:
    """Mean of ``annotators`` integer ratings ``clip(rint(scale*score + noise), ±limit)``."""
    draws = scale * score[:, None] + noise * rng.normal(
        size=(score.shape[0], annotators)
    )
    return np.clip(np.rint(draws), -limit, limit).sum(axis=1) / annotators


def _modality_world(rng: np.random.Generator, m: int, d: int) -> dict[str, Any]:
    """The fixed parameters of modality ``m`` (``D_m = d``), drawn once per seed."""
    a = _unit(rng, LATENT_DIM)
    b = _unit(rng, LATENT_DIM)
    b = b - (b @ a) * a
    b /= np.linalg.norm(b)
    scale = np.exp(rng.uniform(np.log(0.05), np.log(50.0), size=d))
    return {
        "a": a,
        "b": b,
        "style": 0.6 * rng.normal(size=(_N_STYLE, LATENT_DIM)),
        "mlp": random_mlp(rng, LATENT_DIM, d),
        "scale": scale,
        "offset": 2.0 * scale * rng.normal(size=d),
        "pad": 0.5 * rng.normal(size=d) if m == 0 else None,
    }


def _modality_frames(
    rng: np.random.Generator,
    w: Mapping[str, Any],
    kind: str,
    lengths: np.ndarray,
    t_m: int,
    factors: tuple[np.ndarray, np.ndarray, np.ndarray],
    noise_scale: float,
    raw_scale: bool,
) -> np.ndarray:
    """``[n, T_m, D_m]`` frames of one modality: its factors along two latent
    directions under its time profile, speaker style, noise, the random MLP, padding."""
    c, p_m, u = factors  # shared factor [n], private factor [n, 1], style [n, 3]
    n = c.shape[0]
    env = _profiles(rng, lengths, t_m, kind)
    signal = _GAIN * (c[:, None] * w["a"] + p_m * w["b"])  # [n, k]
    static = u @ w["style"] + 0.5 * rng.normal(size=(n, LATENT_DIM))
    h = (
        env[:, :, None] * signal[:, None, :]
        + static[:, None, :]
        + 0.6 * noise_scale * rng.normal(size=(n, t_m, LATENT_DIM))
    )
    x = apply_mlp(h, w["mlp"])
    x += 0.3 * noise_scale * rng.normal(size=x.shape)
    valid = (np.arange(t_m)[None, :] < lengths[:, None])[:, :, None]
    if kind == "text":
        pad = w["pad"] + 0.05 * rng.normal(size=x.shape)
        return np.where(valid, 0.5 * x, pad)
    if raw_scale:
        x = x * w["scale"] + w["offset"]
        spikes = rng.random(x.shape) < 1e-3
        x = np.where(spikes, 25.0 * x, x)
    return x * valid


def _corrupt(rng: np.random.Generator, audio: np.ndarray, lengths: np.ndarray) -> None:
    """MOSEI-style corruption of float64 audio in place: ``-inf`` runs in one column
    and values beyond the float32 range."""
    n, t_a, d_a = audio.shape
    col = 7 % d_a
    rows = rng.random(n) < 0.08
    frames = rng.random((n, t_a)) < 0.3
    valid_a = np.arange(t_a)[None, :] < lengths[:, None]
    hit = rows[:, None] & frames & valid_a
    audio[:, :, col][hit] = -np.inf
    big = rng.random(audio.shape) < 2e-4
    big &= valid_a[:, :, None]
    audio[big] = 3e39 * np.where(rng.random(int(big.sum())) < 0.5, -1.0, 1.0)


#: ``text_bert`` id layout (BERT's): [PAD] 0, [CLS] 101, [SEP] 102. Filler words are
#: ids in [1996, 21128), valid in both bert-base-uncased (30522) and bert-base-chinese
#: (21128); the sentiment words are two small sets below that range. The ids are
#: synthetic: they are not the real vocabularies' words.
CLS_ID, SEP_ID = 101, 102
FILLER_IDS = (1996, 21128)
POSITIVE_IDS = tuple(range(1100, 1108))
NEGATIVE_IDS = tuple(range(1200, 1208))
_SENTIMENT_WORD_RATE = 0.3  # share of word positions holding a sentiment word
_POLARITY_GAIN = 2.0  # P(positive word) = sigmoid(gain * text score)


def _bert_inputs(
    rng: np.random.Generator,
    word_rng: np.random.Generator,
    text_len: np.ndarray,
    t_l: int,
    score: np.ndarray,
    dtype: str,
) -> tuple[np.ndarray, list[str]]:
    """``text_bert`` [n, 3, T_l] (``[CLS] w ... w [SEP] [PAD]...``) and its words.

    Each word position holds, with probability ``_SENTIMENT_WORD_RATE``, a sentiment
    word: positive with probability ``sigmoid(_POLARITY_GAIN * score)`` (``score [n]``,
    the text modality's visible sentiment), else a filler word. ``rng`` draws the
    filler ids exactly as generator version 1 did; the sentiment words come from
    ``word_rng`` so that no other array of the file changes.
    """
    n = text_len.shape[0]
    t = np.arange(t_l)[None, :]
    raw = rng.integers(1996, 29612, size=(n, t_l))  # version 1's draw
    lo, hi = FILLER_IDS
    ids = lo + (raw - lo) % (hi - lo)
    word = (t >= 1) & (t <= text_len[:, None] - 2)
    sentiment = word & (word_rng.random((n, t_l)) < _SENTIMENT_WORD_RATE)
    p_positive = 1.0 / (1.0 + np.exp(-_POLARITY_GAIN * score))
    positive = word_rng.random((n, t_l)) < p_positive[:, None]
    pos = np.asarray(POSITIVE_IDS)[word_rng.integers(len(POSITIVE_IDS), size=(n, t_l))]
    neg = np.asarray(NEGATIVE_IDS)[word_rng.integers(len(NEGATIVE_IDS), size=(n, t_l))]
    ids = np.where(sentiment, np.where(positive, pos, neg), ids)
    ids = np.where(t == 0, CLS_ID, ids)
    ids = np.where(t == text_len[:, None] - 1, SEP_ID, ids)
    mask = (t < text_len[:, None]).astype(np.int64)
    ids = ids * mask
    text_bert = np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(dtype)
    raw_text = [
        " ".join(f"w{tok}" for tok in row[1 : k - 1])
        for row, k in zip(ids, text_len, strict=True)
    ]
    return text_bert, raw_text


def _sample_ids(rng: np.random.Generator, n: int, name: str, split: str) -> np.ndarray:
    """``"video$_$clip"`` ids: consecutive samples share a video, 1-8 clips each."""
    clips = rng.integers(1, 9, size=n)
    video = np.repeat(np.arange(n), clips)[:n]
    first = np.searchsorted(video, video)  # first row of each video
    clip_no = np.arange(n) - first + 1
    return np.asarray(
        [
            f"syn{name}{split[:2]}{v:05d}$_${k}"
            for v, k in zip(video, clip_no, strict=True)
        ],
        dtype=object,
    )


def _draw_split(
    rng: np.random.Generator,
    name: str,
    split: str,
    n: int,
    world: Sequence[Mapping[str, Any]],
    seq_lens: tuple[int, ...],
    aligned: bool,
    opts: Mapping[str, Any],
) -> dict[str, Any]:
    """One split of the MMSA dict (keys as in the real files)."""
    rho, weights = opts["shared_fraction"], opts["weights"]
    c = rng.normal(size=n)
    p = rng.normal(size=(n, 3))
    u = rng.normal(size=(n, _N_STYLE))
    z = np.sqrt(rho) * c + np.sqrt(1 - rho) * (p * np.sqrt(weights)).sum(axis=1)

    t_l = seq_lens[0]
    text_len = rng.integers(max(3, t_l // 3), t_l + 1, size=n)
    if aligned:
        lens = [text_len, text_len, text_len]
    else:
        lens = [text_len] + [
            rng.integers(max(1, t // 3), t + 1, size=n) for t in seq_lens[1:]
        ]
    text, audio, vision = (
        _modality_frames(
            rng,
            world[m],
            kind,
            lens[m],
            seq_lens[m],
            (c, p[:, m : m + 1], u),
            opts["noise_scale"],
            opts["raw_scale"],
        )
        for m, kind in enumerate(("text", "audio", "vision"))
    )
    audio = audio.astype(np.float64 if opts["corrupt_audio"] else np.float32)
    if opts["corrupt_audio"]:
        _corrupt(rng, audio, lens[1])

    if name == "sims":
        label = _ratings(rng, z, annotators=5, scale=0.9, noise=0.45, limit=1)
    else:
        ann = DATASET_DEFAULTS[name]["annotators"]
        label = _ratings(rng, z, annotators=ann, scale=1.6, noise=0.6, limit=3)
    # The text's visible sentiment (what its frozen features carry), unit variance.
    w_l = (1 - rho) * weights[0]
    text_score = (np.sqrt(rho) * c + np.sqrt(w_l) * p[:, 0]) / np.sqrt(rho + w_l)
    word_rng = np.random.default_rng(
        np.random.SeedSequence([opts["seed"], RNG_STREAM, 11, SPLITS.index(split)])
    )
    text_bert, raw_text = _bert_inputs(
        rng, word_rng, text_len, t_l, text_score, opts["text_bert_dtype"]
    )
    sample_ids = _sample_ids(rng, n, name, split)
    sign = np.sign(label).astype(np.int64)
    part: dict[str, Any] = {
        "raw_text": raw_text,
        "audio": audio,
        "vision": vision.astype(np.float32),
        "id": sample_ids,
        "text": text.astype(np.float32),
        "text_bert": text_bert,
        "annotations": np.asarray(
            np.array(["Negative", "Neutral", "Positive"], dtype=object)[sign + 1]
        ),
        "classification_labels": (sign + 1).astype(np.int64),
        "regression_labels": label.astype(np.float32),
    }
    if name == "sims":
        for m, key in enumerate("TAV"):
            visible = np.sqrt(rho) * c + np.sqrt((1 - rho) * weights[m]) * p[:, m]
            visible /= np.sqrt(rho + (1 - rho) * weights[m])
            part[f"regression_labels_{key}"] = _ratings(
                rng, visible, annotators=5, scale=0.9, noise=0.45, limit=1
            ).astype(np.float32)
    if not aligned:
        part["audio_lengths"] = lens[1].astype(np.int64)
        part["vision_lengths"] = lens[2].astype(np.int64)
    return part


def write_mmsa_pickle(
    path: str | os.PathLike[str],
    *,
    seed: int,
    dataset: str = "mosi",
    sizes: Mapping[str, int] | None = None,
    seq_lens: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    aligned: bool | None = None,
    corrupt_audio: bool = False,
    shared_fraction: float = 0.2,
    modality_weights: Sequence[float] = (0.45, 0.3, 0.25),
    noise_scale: float = 1.0,
    raw_scale: bool | None = None,
    text_bert_dtype: str = "float64",
) -> Path:
    """Write an MMSA-layout pickle with a planted, all-modality sentiment signal.

    Args:
      path: output file (written atomically: temp file, then rename).
      seed: everything is a deterministic function of the arguments.
      dataset: ``"mosi"``, ``"mosei"`` or ``"sims"``: label range / rounding, default
        shapes, and whether audio/vision get raw-feature scales.
      sizes: ``{"train", "valid", "test"}`` sample counts (default ``DEFAULT_SIZES``).
      seq_lens: ``(T_l, T_a, T_v)``; default the dataset's real lengths.
      dims: ``(D_l, D_a, D_v)``; default the dataset's real dims (768-d BERT text).
      aligned: word-aligned (equal lengths, no length keys) or unaligned (right padded,
        with ``audio_lengths`` / ``vision_lengths``); default the dataset's release.
      corrupt_audio: MOSEI-style corruption: ``-inf`` entries and values beyond the
        float32 range (audio stored as float64).
      shared_fraction: share of the latent score seen by every modality.
      modality_weights: how the private part of the score is spread over text, audio,
        vision (normalised to sum 1).
      noise_scale: multiplies frame and observation noise.
      raw_scale: wild per-column scales/offsets/spikes on audio and vision; default on
        for MOSEI and SIMS.
      text_bert_dtype: ``"float64"`` (as some releases store it) or ``"int64"``.

    Returns:
      ``path`` as a ``Path``.
    """
    name, sizes, seq_lens, dims, aligned = _resolve(
        dataset, sizes, seq_lens, dims, aligned
    )
    defaults = DATASET_DEFAULTS[name]
    raw_scale = defaults["raw_scale"] if raw_scale is None else bool(raw_scale)
    if not 0.0 <= shared_fraction < 1.0:
        raise ValueError(f"shared_fraction: expected in [0, 1), got {shared_fraction}")
    weights = np.asarray(modality_weights, dtype=np.float64)
    if weights.shape != (3,) or np.any(weights <= 0):
        raise ValueError(
            f"modality_weights: expected 3 positive values, got {modality_weights}"
        )
    weights = weights / weights.sum()
    if text_bert_dtype not in ("float64", "int64"):
        raise ValueError(
            f"text_bert_dtype: expected 'float64' or 'int64', got {text_bert_dtype!r}"
        )

    rng = np.random.default_rng(np.random.SeedSequence([seed, RNG_STREAM]))
    world = [_modality_world(rng, m, d) for m, d in enumerate(dims)]
    opts = {
        "seed": seed,
        "shared_fraction": shared_fraction,
        "weights": weights,
        "noise_scale": noise_scale,
        "raw_scale": raw_scale,
        "corrupt_audio": corrupt_audio,
        "text_bert_dtype": text_bert_dtype,
    }
    out = {
        split: _draw_split(
            rng, name, split, sizes[split], world, seq_lens, aligned, opts
        )
        for split in SPLITS
    }
    return files.atomic_write_pickle(path, out)
