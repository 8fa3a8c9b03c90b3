"""Synthetic multimodal sentiment / emotion data WRITTEN in the real file formats.

Tests and ``:demo`` configs read these files through the real readers
(``decalign_jax.data.read_mmsa`` / ``convert_iemocap``), never through a side door.

Generative model of ``write_mmsa_pickle`` (one draw of "world" parameters per seed,
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

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from decalign_jax.data import (
    GCNET_FEATURE_NAMES,
    SPLITS,
    _write_pickle_atomic,
    canonical_dataset,
    convert_iemocap,
)

__all__ = [
    "DATASET_DEFAULTS",
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "ensure_demo_pickle",
    "mmsa_file_name",
    "write_iemocap_raw",
    "write_mmsa_pickle",
]

#: Bumped whenever the generator's output changes (part of the demo cache key).
GENERATOR_VERSION = 1

#: Real MMSA shapes per dataset (``spec/decalign.md`` 1.2, ``spec/ecosystem.md`` 1b).
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

_LATENT = 8  # latent dims per modality before the random MLP
_N_STYLE = 3  # speaker-style dims shared across modalities
_GAIN = 1.5  # amplitude of the sentiment factors in the latent frames


def _unit(rng: np.random.Generator, k: int) -> np.ndarray:
    v = rng.normal(size=k)
    return v / np.linalg.norm(v)


def _mlp(rng: np.random.Generator, k: int, d: int) -> tuple[np.ndarray, ...]:
    hidden = 2 * k
    return (
        rng.normal(size=(k, hidden)) / np.sqrt(k),
        rng.normal(scale=0.1, size=hidden),
        rng.normal(size=(hidden, d)) / np.sqrt(hidden),
    )


def _apply_mlp(h: np.ndarray, mlp: tuple[np.ndarray, ...]) -> np.ndarray:
    w1, b1, w2 = mlp
    return np.tanh(h @ w1 + b1) @ w2


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

    rng = np.random.default_rng(np.random.SeedSequence([seed, GENERATOR_VERSION]))
    kinds = ("text", "audio", "vision")
    world = []
    for m, d in enumerate(dims):
        a = _unit(rng, _LATENT)
        b = _unit(rng, _LATENT)
        b = b - (b @ a) * a
        b /= np.linalg.norm(b)
        scale = np.exp(rng.uniform(np.log(0.05), np.log(50.0), size=d))
        world.append(
            {
                "a": a,
                "b": b,
                "style": 0.6 * rng.normal(size=(_N_STYLE, _LATENT)),
                "mlp": _mlp(rng, _LATENT, d),
                "scale": scale,
                "offset": 2.0 * scale * rng.normal(size=d),
                "pad": 0.5 * rng.normal(size=d) if m == 0 else None,
            }
        )
    rho = shared_fraction
    out: dict[str, Any] = {}
    for split in SPLITS:
        n = sizes[split]
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
        feats = []
        for m, kind in enumerate(kinds):
            w = world[m]
            t_m = seq_lens[m]
            env = _profiles(rng, lens[m], t_m, kind)
            signal = _GAIN * (c[:, None] * w["a"] + p[:, m : m + 1] * w["b"])  # [n, k]
            static = u @ w["style"] + 0.5 * rng.normal(size=(n, _LATENT))
            h = (
                env[:, :, None] * signal[:, None, :]
                + static[:, None, :]
                + 0.6 * noise_scale * rng.normal(size=(n, t_m, _LATENT))
            )
            x = _apply_mlp(h, w["mlp"])
            x += 0.3 * noise_scale * rng.normal(size=x.shape)
            valid = (np.arange(t_m)[None, :] < lens[m][:, None])[:, :, None]
            if kind == "text":
                pad = w["pad"] + 0.05 * rng.normal(size=x.shape)
                x = np.where(valid, 0.5 * x, pad)
            else:
                if raw_scale:
                    x = x * w["scale"] + w["offset"]
                    spikes = rng.random(x.shape) < 1e-3
                    x = np.where(spikes, 25.0 * x, x)
                x = x * valid
            feats.append(x)
        text, audio, vision = feats
        audio_dtype = np.float64 if corrupt_audio else np.float32
        audio = audio.astype(audio_dtype)
        if corrupt_audio:
            col = 7 % dims[1]
            rows = rng.random(n) < 0.08
            frames = rng.random((n, seq_lens[1])) < 0.3
            valid_a = np.arange(seq_lens[1])[None, :] < lens[1][:, None]
            hit = rows[:, None] & frames & valid_a
            audio[:, :, col][hit] = -np.inf
            big = rng.random(audio.shape) < 2e-4
            big &= valid_a[:, :, None]
            audio[big] = 3e39 * np.where(rng.random(int(big.sum())) < 0.5, -1.0, 1.0)

        ann = defaults["annotators"]
        if name == "sims":
            label = _ratings(rng, z, annotators=5, scale=0.9, noise=0.45, limit=1)
        else:
            label = _ratings(rng, z, annotators=ann, scale=1.6, noise=0.6, limit=3)

        # [CLS] w ... w [SEP] [PAD]...
        t = np.arange(t_l)[None, :]
        ids = rng.integers(1996, 29612, size=(n, t_l))
        ids = np.where(t == 0, 101, ids)
        ids = np.where(t == text_len[:, None] - 1, 102, ids)
        mask = (t < text_len[:, None]).astype(np.int64)
        ids = ids * mask
        text_bert = np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(
            text_bert_dtype
        )
        raw_text = [
            " ".join(f"w{tok}" for tok in row[1 : k - 1])
            for row, k in zip(ids, text_len, strict=True)
        ]
        clips = rng.integers(1, 9, size=n)
        video = np.repeat(np.arange(n), clips)[:n]
        first = np.searchsorted(video, video)  # first row of each video
        clip_no = np.arange(n) - first + 1
        sample_ids = np.asarray(
            [
                f"syn{name}{split[:2]}{v:05d}$_${k}"
                for v, k in zip(video, clip_no, strict=True)
            ],
            dtype=object,
        )
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
        out[split] = part
    path = Path(path)
    _write_pickle_atomic(out, path)
    return path


def write_iemocap_raw(
    path: str | os.PathLike[str],
    *,
    seed: int,
    num_classes: int = 6,
    dims: Sequence[int] = (1024, 512, 1024),
    layout: str = "gcnet",
    feature_root: str | os.PathLike[str] | None = None,
    dialogues_per_session: int = 3,
    utterances_per_dialogue: tuple[int, int] = (8, 16),
    class_separation: float = 0.5,
    noise_scale: float = 1.0,
    empty_face_folders: int = 1,
    zero_modalities: Sequence[str] = (),
) -> Path:
    """Write a small raw IEMOCAP release in a layout ``convert_iemocap`` reads.

    ``layout="gcnet"`` (default) writes the GCNet / MoMKE label 6-tuple ``(videoIDs,
    videoLabels, videoSpeakers, videoSentences, trainVid, testVid)`` to ``path`` and one
    feature per utterance under ``feature_root`` (default ``path.parent / "features"``)
    in the GCNet folders (``GCNET_FEATURE_NAMES``): text ``<utt>.npy`` ``[D]``, audio
    ``<utt>.npy`` ``[1, D]``, vision a folder ``<utt>/`` of 1-3 per-face ``[D]`` files
    (``empty_face_folders`` of them empty: no face found). ``layout="dialoguernn"``
    writes the 9-tuple with per-dialogue ``[n_utt, D]`` features inline.

    Dialogues: ``dialogues_per_session`` per session 1-5 (``Ses0<s>{F,M}_{impro,script}..``),
    ``trainVid`` = sessions 1-4 and ``testVid`` = session 5, both Python sets. Classes are
    imbalanced; each modality sees the class through its own prototypes, speaker style,
    noise and a random tanh MLP. ``zero_modalities`` writes all-zero features for those
    modalities (to test the converter's refusal).

    Returns:
      ``path`` as a ``Path``.
    """
    if layout not in ("gcnet", "dialoguernn"):
        raise ValueError(f"layout: expected 'gcnet' or 'dialoguernn', got {layout!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"dims: expected 3 positive dims, got {dims}")
    bad = set(zero_modalities) - {"text", "audio", "vision"}
    if bad:
        raise ValueError(f"zero_modalities: unknown {sorted(bad)}")
    lo, hi = utterances_per_dialogue
    if not 2 <= lo <= hi:
        raise ValueError(
            f"utterances_per_dialogue: expected 2 <= lo <= hi, got {(lo, hi)}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, GENERATOR_VERSION, 7]))
    path = Path(path)

    dialogues: list[str] = []
    for s in range(1, 6):
        for j in range(dialogues_per_session):
            kind = "script" if j % 3 == 2 else "impro"
            dialogues.append(f"Ses0{s}{'FM'[j % 2]}_{kind}{j + 1:02d}")
    counts = rng.integers(lo, hi + 1, size=len(dialogues))
    total = int(counts.sum())
    if num_classes == 6:
        probs = np.array([0.08, 0.15, 0.23, 0.15, 0.14, 0.25])
    elif num_classes == 4:
        probs = np.array([0.25, 0.2, 0.33, 0.22])
    else:
        probs = rng.dirichlet(np.full(num_classes, 5.0))
    labels = rng.choice(num_classes, size=total, p=probs)
    labels[:num_classes] = np.arange(num_classes)  # every class occurs
    rng.shuffle(labels)
    speakers = np.where(rng.random(total) < 0.5, "F", "M")
    speaker_style = rng.normal(size=(2, _LATENT))
    utt_speaker = (speakers == "M").astype(np.int64)

    feats = {}
    for mod, d in zip(("text", "audio", "vision"), dims, strict=True):
        protos = class_separation * rng.normal(size=(num_classes, _LATENT))
        h = (
            protos[labels]
            + 0.5 * speaker_style[utt_speaker]
            + noise_scale * rng.normal(size=(total, _LATENT))
        )
        x = _apply_mlp(h, _mlp(rng, _LATENT, d)) + 0.1 * noise_scale * rng.normal(
            size=(total, d)
        )
        feats[mod] = (np.zeros_like(x) if mod in zero_modalities else x).astype(
            np.float32
        )

    video_ids: dict[str, list[str]] = {}
    video_labels: dict[str, list[int]] = {}
    video_speakers: dict[str, list[str]] = {}
    video_sentences: dict[str, list[str]] = {}
    starts = np.concatenate([[0], np.cumsum(counts)])
    utt_names: list[str] = []
    for i, vid in enumerate(dialogues):
        per_spk = {"F": 0, "M": 0}
        names = []
        for spk in speakers[starts[i] : starts[i + 1]]:
            names.append(f"{vid}_{spk}{per_spk[spk]:03d}")
            per_spk[spk] += 1
        utt_names += names
        video_ids[vid] = names
        video_labels[vid] = [int(v) for v in labels[starts[i] : starts[i + 1]]]
        video_speakers[vid] = [str(v) for v in speakers[starts[i] : starts[i + 1]]]
        video_sentences[vid] = [
            f"synthetic sentence {k} of {vid}" for k in range(len(names))
        ]
    train_vids = {v for v in dialogues if not v.startswith("Ses05")}
    test_vids = {v for v in dialogues if v.startswith("Ses05")}

    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "dialoguernn":

        def per_dialogue(x: np.ndarray) -> dict[str, np.ndarray]:
            return {v: x[starts[i] : starts[i + 1]] for i, v in enumerate(dialogues)}

        obj: tuple[Any, ...] = (
            video_ids,
            video_speakers,
            video_labels,
            per_dialogue(feats["text"]),
            per_dialogue(feats["audio"]),
            per_dialogue(feats["vision"]),
            video_sentences,
            train_vids,
            test_vids,
        )
    else:
        obj = (
            video_ids,
            video_labels,
            video_speakers,
            video_sentences,
            train_vids,
            test_vids,
        )
        root = (
            Path(feature_root) if feature_root is not None else path.parent / "features"
        )
        folders = {
            m: root / GCNET_FEATURE_NAMES[m] for m in ("text", "audio", "vision")
        }
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        empty = set(
            rng.choice(
                total, size=min(empty_face_folders, total), replace=False
            ).tolist()
        )
        n_faces = rng.integers(1, 4, size=total)
        for i, utt in enumerate(utt_names):  # one file per utterance, as in the release
            np.save(folders["text"] / f"{utt}.npy", feats["text"][i])
            np.save(folders["audio"] / f"{utt}.npy", feats["audio"][i][None, :])
            face_dir = folders["vision"] / utt
            face_dir.mkdir(exist_ok=True)
            if i in empty:
                continue
            jitter = 0.05 * rng.normal(size=(n_faces[i], dims[2]))
            if "vision" in zero_modalities:
                jitter[:] = 0.0
            for j in range(n_faces[i]):
                face = (feats["vision"][i] + jitter[j]).astype(np.float32)
                np.save(face_dir / f"{utt}_face{j}.npy", face)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(
        f"ensure_demo_pickle: argument value {value!r} is not JSON-serialisable"
    )


_IEMOCAP_CONVERT_KEYS = ("valid_fraction", "class_names")


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
        {"generator_version": GENERATOR_VERSION, **_jsonable(kwargs)}, sort_keys=True
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
