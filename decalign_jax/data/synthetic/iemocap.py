"""A synthetic raw IEMOCAP release (GCNet or DialogueRNN layout) for the converter.

Utterances of 15 dialogues (3 per session) with imbalanced emotion classes; each
modality sees the class through its own prototypes, the speaker's style, noise and a
random tanh MLP, so the class is learnable from every modality. The files are the raw
release's, read by :func:`decalign_jax.data.iemocap.convert_iemocap` (docs/decalign.md,
'Data').
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from decalign_jax.data.iemocap import GCNET_FEATURE_NAMES
from decalign_jax.data.synthetic.common import (
    LATENT_DIM,
    RNG_STREAM,
    apply_mlp,
    random_mlp,
)
from xmodal import files

__all__ = ["write_iemocap_raw"]


def _iemocap_utterances(
    rng: np.random.Generator,
    dialogues: Sequence[str],
    num_classes: int,
    lo: int,
    hi: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Utterances per dialogue, imbalanced class ids (every class occurs), speakers."""
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
    return counts, labels, speakers


def _iemocap_features(
    rng: np.random.Generator,
    labels: np.ndarray,
    speakers: np.ndarray,
    num_classes: int,
    dims: Sequence[int],
    class_separation: float,
    noise_scale: float,
    zero_modalities: Sequence[str],
) -> dict[str, np.ndarray]:
    """``[N, D_m]`` float32 per modality: class prototypes + speaker style + noise,
    through a random tanh MLP (all zero for ``zero_modalities``)."""
    total = labels.shape[0]
    speaker_style = rng.normal(size=(2, LATENT_DIM))
    utt_speaker = (speakers == "M").astype(np.int64)
    feats = {}
    for mod, d in zip(("text", "audio", "vision"), dims, strict=True):
        protos = class_separation * rng.normal(size=(num_classes, LATENT_DIM))
        h = (
            protos[labels]
            + 0.5 * speaker_style[utt_speaker]
            + noise_scale * rng.normal(size=(total, LATENT_DIM))
        )
        x = apply_mlp(
            h, random_mlp(rng, LATENT_DIM, d)
        ) + 0.1 * noise_scale * rng.normal(size=(total, d))
        feats[mod] = (np.zeros_like(x) if mod in zero_modalities else x).astype(
            np.float32
        )
    return feats


def _dialogue_tables(
    dialogues: Sequence[str],
    counts: np.ndarray,
    labels: np.ndarray,
    speakers: np.ndarray,
) -> tuple[dict[str, list[Any]], ...]:
    """``videoIDs``, ``videoLabels``, ``videoSpeakers``, ``videoSentences`` dicts."""
    video_ids: dict[str, list[str]] = {}
    video_labels: dict[str, list[int]] = {}
    video_speakers: dict[str, list[str]] = {}
    video_sentences: dict[str, list[str]] = {}
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i, vid in enumerate(dialogues):
        per_spk = {"F": 0, "M": 0}
        names = []
        for spk in speakers[starts[i] : starts[i + 1]]:
            names.append(f"{vid}_{spk}{per_spk[spk]:03d}")
            per_spk[spk] += 1
        video_ids[vid] = names
        video_labels[vid] = [int(v) for v in labels[starts[i] : starts[i + 1]]]
        video_speakers[vid] = [str(v) for v in speakers[starts[i] : starts[i + 1]]]
        video_sentences[vid] = [
            f"synthetic sentence {k} of {vid}" for k in range(len(names))
        ]
    return video_ids, video_labels, video_speakers, video_sentences


def _write_gcnet_features(
    rng: np.random.Generator,
    root: Path,
    utt_names: Sequence[str],
    feats: Mapping[str, np.ndarray],
    empty_face_folders: int,
    zero_vision: bool,
) -> None:
    """One feature file per utterance in the GCNet folders (vision: per-face files)."""
    folders = {m: root / GCNET_FEATURE_NAMES[m] for m in ("text", "audio", "vision")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    total = len(utt_names)
    empty = set(
        rng.choice(total, size=min(empty_face_folders, total), replace=False).tolist()
    )
    n_faces = rng.integers(1, 4, size=total)
    d_v = feats["vision"].shape[1]
    for i, utt in enumerate(utt_names):  # one file per utterance, as in the release
        np.save(folders["text"] / f"{utt}.npy", feats["text"][i])
        np.save(folders["audio"] / f"{utt}.npy", feats["audio"][i][None, :])
        face_dir = folders["vision"] / utt
        face_dir.mkdir(exist_ok=True)
        if i in empty:
            continue
        jitter = 0.05 * rng.normal(size=(n_faces[i], d_v))
        if zero_vision:
            jitter[:] = 0.0
        for j in range(n_faces[i]):
            face = (feats["vision"][i] + jitter[j]).astype(np.float32)
            np.save(face_dir / f"{utt}_face{j}.npy", face)


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
    rng = np.random.default_rng(np.random.SeedSequence([seed, RNG_STREAM, 7]))
    path = Path(path)
    dialogues = [
        f"Ses0{s}{'FM'[j % 2]}_{'script' if j % 3 == 2 else 'impro'}{j + 1:02d}"
        for s in range(1, 6)
        for j in range(dialogues_per_session)
    ]
    counts, labels, speakers = _iemocap_utterances(rng, dialogues, num_classes, lo, hi)
    feats = _iemocap_features(
        rng,
        labels,
        speakers,
        num_classes,
        dims,
        class_separation,
        noise_scale,
        zero_modalities,
    )
    tables = _dialogue_tables(dialogues, counts, labels, speakers)
    train_vids = {v for v in dialogues if not v.startswith("Ses05")}
    test_vids = {v for v in dialogues if v.startswith("Ses05")}
    if layout == "dialoguernn":
        video_ids, video_labels, video_speakers, video_sentences = tables
        starts = np.concatenate([[0], np.cumsum(counts)])
        inline = [
            {v: feats[m][starts[i] : starts[i + 1]] for i, v in enumerate(dialogues)}
            for m in ("text", "audio", "vision")
        ]
        obj: tuple[Any, ...] = (
            video_ids,
            video_speakers,
            video_labels,
            *inline,
            video_sentences,
            train_vids,
            test_vids,
        )
    else:
        obj = (*tables, train_vids, test_vids)
        root = (
            Path(feature_root) if feature_root is not None else path.parent / "features"
        )
        utt_names = [u for names in tables[0].values() for u in names]
        _write_gcnet_features(
            rng,
            root,
            utt_names,
            feats,
            empty_face_folders,
            "vision" in zero_modalities,
        )
    return files.atomic_write_pickle(path, obj)
