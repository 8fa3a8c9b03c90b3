"""The IEMOCAP adapter: raw IEMOCAP releases -> our utterance-level MMSA-style pickle.

Source layouts (detected from the file; docs/decalign.md, 'Data'):

* GCNet / MoMKE ``IEMOCAP_features_raw_{4,6}way.pkl`` (the files behind DecAlign's
  Google-Drive link): a pickled 6-tuple ``(videoIDs, videoLabels, videoSpeakers,
  videoSentences, trainVid, testVid)``: dicts keyed by dialogue id (utterance ids,
  class ids, "M"/"F" speakers, sentences) and two SETS of dialogue ids. It holds NO
  features: GCNet reads them from per-utterance files under ``features/<extractor>/``
  (:data:`GCNET_FEATURE_NAMES`: ``deberta-large-4-UTT`` text 1024-d,
  ``wav2vec-large-c-UTT`` audio 512-d, ``manet_UTT`` vision 1024-d); each
  ``<utterance>.npy`` holds ``[D]``, ``[1, D]`` or ``[T, D]`` (averaged over T) or is a
  folder of per-face ``.npy`` files (averaged; an empty folder, no face found, gives a
  zero row, as in GCNet). DecAlign's ``scripts/prepare_iemocap.py`` reads only the label
  file, which is why it writes all-zero features; we refuse those.
* DialogueRNN / MMGCN ``IEMOCAP_features*.pkl``: a 9-tuple ``(videoIDs, videoSpeakers,
  videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid)``
  with per-dialogue feature arrays ``[n_utt, D]`` inline (other extractors and dims than
  GCNet's).
* a dict with those field names.

Splits: sessions (two actors each) are the speaker-independent unit of IEMOCAP. By
default ``trainVid`` / ``testVid`` come from the file (in the DialogueRNN release 120
dialogues of Sessions 1-4 vs 31 of Session 5); ``test_session=k`` instead tests on every
dialogue of Session ``k`` (parsed from ids ``Ses0k...``) and trains on the other four, one
fold of the leave-one-session-out protocol GCNet's baselines use. ``valid`` is a seeded
random share of the TRAINING DIALOGUES (whole dialogues, never single utterances), so
valid shares speakers with train.

Output (``read_mmsa(out, dataset="iemocap")`` reads it): ``{"train", "valid", "test",
"meta"}``; each split has ``text`` / ``audio`` / ``vision`` float32 ``[N, 1, D]``,
``classification_labels`` int32 ``[N]``, ``id`` (``"dialogue$_$utterance"``),
``raw_text``, ``speaker``. ``meta`` records the variant (``"iemocap-4way"`` /
``"iemocap-6way"``), source file and SHA-256, layout, feature folders, dims, seed, valid
dialogues, per-split counts and zero rows, so reports can say which IEMOCAP variant a
number uses.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from decalign_jax.data.mmsa import load_pickle
from decalign_jax.data.split import MODALITIES, SPLITS, MMSAFormatError
from xmodal import files

__all__ = ["GCNET_FEATURE_NAMES", "convert_iemocap"]

logger = logging.getLogger(__name__)

#: Feature folders of the GCNet / MoMKE IEMOCAP release (utterance-level, "UTT").
GCNET_FEATURE_NAMES: dict[str, str] = {
    "text": "deberta-large-4-UTT",  # 1024-d
    "audio": "wav2vec-large-c-UTT",  # 512-d
    "vision": "manet_UTT",  # 1024-d
}


# --------------------------------------------------------------------------------------
# Reading the raw release
# --------------------------------------------------------------------------------------

# Field names as used by the GCNet / DialogueRNN releases.
_IEMO_NAMES = {
    "ids": ("videoIDs",),
    "labels": ("videoLabels",),
    "speakers": ("videoSpeakers",),
    "sentences": ("videoSentences", "videoSentence"),
    "train": ("trainVid",),
    "test": ("testVid",),
    "text": ("videoText",),
    "audio": ("videoAudio",),
    "vision": ("videoVisual", "videoVision", "videoVideo"),
}


def _first_item(d: Mapping[Any, Any]) -> Any:
    for value in d.values():
        seq = list(value) if not isinstance(value, str) else [value]
        if seq:
            return seq[0]
    return None


def _is_speaker_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and isinstance(_first_item(d), str)


def _parse_iemocap_raw(obj: Any, path: Path) -> dict[str, Any]:
    """Normalise the known raw IEMOCAP layouts into one dict of named fields."""
    fields: dict[str, Any]
    if isinstance(obj, Mapping):
        lowered = {str(k).lower(): k for k in obj}
        fields = {}
        for name, candidates in _IEMO_NAMES.items():
            for cand in candidates:
                if cand.lower() in lowered:
                    fields[name] = obj[lowered[cand.lower()]]
                    break
        layout = "dict"
    elif isinstance(obj, (tuple, list)) and len(obj) == 6:
        # GCNet / MoMKE: (videoIDs, videoLabels, videoSpeakers, videoSentences,
        # trainVid, testVid); the features live in separate per-utterance folders.
        keys = ("ids", "labels", "speakers", "sentences", "train", "test")
        fields = dict(zip(keys, obj, strict=True))
        layout = "gcnet"
    elif isinstance(obj, (tuple, list)) and len(obj) == 9:
        # DialogueRNN / MMGCN: (videoIDs, videoSpeakers, videoLabels, videoText,
        # videoAudio, videoVisual, videoSentence, trainVid, testVid), features inline.
        keys = (
            "ids",
            "speakers",
            "labels",
            "text",
            "audio",
            "vision",
            "sentences",
            "train",
            "test",
        )
        fields = dict(zip(keys, obj, strict=True))
        layout = "dialoguernn"
    elif isinstance(obj, (tuple, list)) and len(obj) == 7:
        raise MMSAFormatError(
            f"{path}: a 7-item tuple looks like a GCNet CMU-MOSI/MOSEI label file "
            "(videoIDs, videoLabels, videoSpeakers, videoSentence, trainVid, valVid, "
            "testVid); convert_iemocap reads IEMOCAP files only"
        )
    else:
        size = len(obj) if isinstance(obj, (tuple, list)) else None
        raise MMSAFormatError(
            f"{path}: unknown IEMOCAP layout: got {type(obj).__name__}"
            + (f" of {size} items" if size is not None else "")
            + "; expected the GCNet 6-tuple (videoIDs, videoLabels, videoSpeakers, "
            "videoSentences, trainVid, testVid), the DialogueRNN 9-tuple (videoIDs, "
            "videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, "
            "videoSentence, trainVid, testVid) or a dict with those names"
        )

    missing = [
        n for n in ("ids", "labels", "speakers", "train", "test") if n not in fields
    ]
    if missing:
        raise MMSAFormatError(
            f"{path}: IEMOCAP file lacks {[_IEMO_NAMES[m][0] for m in missing]}"
        )
    # Some re-shares swap labels and speakers; the content decides.
    if _is_speaker_dict(fields["labels"]) and not _is_speaker_dict(fields["speakers"]):
        fields["labels"], fields["speakers"] = fields["speakers"], fields["labels"]
    for name in ("ids", "labels", "speakers"):
        if not isinstance(fields[name], Mapping):
            raise MMSAFormatError(
                f"{path}: {_IEMO_NAMES[name][0]}: expected a dict keyed by dialogue id, "
                f"got {type(fields[name]).__name__}"
            )
    fields["layout"] = layout
    return fields


def _utterance_vector(file_or_dir: Path) -> np.ndarray | None:
    """One utterance feature ``[D]`` from a GCNet ``.npy`` file or a face folder.

    Files hold ``[D]``, ``[1, D]`` or ``[T, D]`` (averaged over T). A folder holds one
    ``.npy`` per detected face / frame, averaged; an empty folder (no face found)
    returns ``None``.
    """
    if file_or_dir.is_dir():
        paths = sorted(file_or_dir.glob("*.npy"))
        if not paths:
            return None
    else:
        paths = [file_or_dir]
    rows = []
    for p in paths:
        arr = np.asarray(np.load(p), np.float64)
        if arr.ndim == 0:
            raise MMSAFormatError(
                f"{p}: expected a feature [D], [1, D] or [T, D], got a scalar"
            )
        rows.append(arr.reshape(-1, arr.shape[-1]))
    if len({r.shape[1] for r in rows}) != 1:
        raise MMSAFormatError(f"{file_or_dir}: files with different feature dims")
    return np.concatenate(rows).mean(axis=0)


def _features_from_folder(
    root: Path, modality: str, folder_name: str, utterances: Sequence[str]
) -> tuple[np.ndarray, int]:
    folder = root / folder_name
    if not folder.is_dir():
        found = (
            sorted(p.name for p in root.iterdir() if p.is_dir())
            if root.is_dir()
            else []
        )
        raise FileNotFoundError(
            f"IEMOCAP {modality} feature folder not found: {folder} "
            f"(folders in {root}: {found}); pass feature_names= to name it"
        )
    vectors: list[np.ndarray | None] = []
    for utt in utterances:  # one file per utterance: I/O bound, a loop is unavoidable
        candidate = folder / f"{utt}.npy"
        if not candidate.exists():
            candidate = folder / utt
        if not candidate.exists():
            sample = sorted(p.name for p in folder.iterdir())[:5]
            raise FileNotFoundError(
                f"IEMOCAP {modality} feature for utterance {utt!r} not found in {folder} "
                f"(looked for {utt}.npy and {utt}/; the folder holds e.g. {sample})"
            )
        vectors.append(_utterance_vector(candidate))
    dims = {v.shape[0] for v in vectors if v is not None}
    if not dims:
        raise MMSAFormatError(f"{folder}: every {modality} feature folder is empty")
    if len(dims) != 1:
        raise MMSAFormatError(
            f"{folder}: {modality} features have different dims {sorted(dims)}"
        )
    (dim,) = dims
    n_empty = sum(v is None for v in vectors)
    out = np.stack([np.zeros(dim) if v is None else v for v in vectors])
    return out, n_empty


def _features_inline(
    table: Any,
    modality: str,
    dialogues: Sequence[str],
    counts: Sequence[int],
    path: Path,
) -> np.ndarray:
    if not isinstance(table, Mapping):
        raise MMSAFormatError(
            f"{path}: {modality} features: expected a dict keyed by dialogue id, got "
            f"{type(table).__name__}"
        )
    blocks = []
    for vid, n in zip(dialogues, counts, strict=True):
        if vid not in table:
            raise MMSAFormatError(f"{path}: {modality} features lack dialogue {vid!r}")
        arr = np.asarray(table[vid], dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise MMSAFormatError(
                f"{path}: {modality} features of dialogue {vid!r}: expected "
                f"[{n} utterances, D], got shape {arr.shape}"
            )
        blocks.append(arr)
    dims = {b.shape[1] for b in blocks}
    if len(dims) != 1:
        raise MMSAFormatError(f"{path}: {modality} features have different dims {dims}")
    return np.concatenate(blocks)


# --------------------------------------------------------------------------------------
# Splits, utterances, labels, features
# --------------------------------------------------------------------------------------


def _dialogue_ids(fields: Mapping[str, Any], name: str, src: Path) -> list[str]:
    value = fields[name]
    if isinstance(value, (Mapping, str)):
        raise MMSAFormatError(
            f"{src}: {_IEMO_NAMES[name][0]}: expected a set/list of dialogue ids, "
            f"got {type(value).__name__}"
        )
    return sorted(str(v) for v in value)


def _session(vid: str, src: Path) -> int:
    if not (vid.startswith("Ses") and vid[3:5].isdigit()):
        raise MMSAFormatError(
            f"{src}: cannot read a session number from dialogue id {vid!r} "
            "(expected 'Ses0<k>...'); test_session needs IEMOCAP ids"
        )
    return int(vid[3:5])


def _train_test_dialogues(
    fields: Mapping[str, Any], src: Path, test_session: int | None
) -> tuple[list[str], list[str], str]:
    """Training and test dialogue ids (the file's, or leave one session out)."""
    train_vids = _dialogue_ids(fields, "train", src)
    test_vids = _dialogue_ids(fields, "test", src)
    protocol = "file trainVid/testVid"
    if test_session is not None:
        everything = sorted(set(train_vids) | set(test_vids))
        sessions = {v: _session(v, src) for v in everything}
        if test_session not in set(sessions.values()):
            raise ValueError(
                f"test_session: expected one of {sorted(set(sessions.values()))}, "
                f"got {test_session}"
            )
        test_vids = [v for v in everything if sessions[v] == test_session]
        train_vids = [v for v in everything if sessions[v] != test_session]
        protocol = f"leave-session-{test_session}-out"
    if not train_vids or not test_vids:
        raise MMSAFormatError(
            f"{src}: trainVid has {len(train_vids)} and testVid {len(test_vids)} "
            "dialogues; both must be non-empty"
        )
    overlap = sorted(set(train_vids) & set(test_vids))
    if overlap:
        raise MMSAFormatError(
            f"{src}: dialogues in both trainVid and testVid: {overlap[:5]}"
        )
    if len(train_vids) < 2:
        raise MMSAFormatError(f"{src}: need >= 2 training dialogues to carve out valid")
    return train_vids, test_vids, protocol


def _utterances(
    fields: Mapping[str, Any], dialogues: Sequence[str], src: Path
) -> dict[str, list[Any]]:
    """Per-utterance ``ids``, ``labels``, ``speakers``, ``sentences`` in dialogue order,
    and ``counts``: utterances per dialogue."""
    out: dict[str, list[Any]] = {
        k: [] for k in ("ids", "labels", "speakers", "sentences", "counts")
    }
    for vid in dialogues:  # ragged per-dialogue tables: a loop over dialogues
        for name in ("ids", "labels", "speakers"):
            if vid not in fields[name]:
                raise MMSAFormatError(
                    f"{src}: {_IEMO_NAMES[name][0]} lacks dialogue {vid!r}"
                )
        ids = [str(u) for u in fields["ids"][vid]]
        labs = list(fields["labels"][vid])
        spk = [str(s) for s in fields["speakers"][vid]]
        sents = (
            [str(s) for s in fields["sentences"][vid]]
            if "sentences" in fields and vid in fields["sentences"]
            else [""] * len(ids)
        )
        if not len(ids) == len(labs) == len(spk) == len(sents):
            raise MMSAFormatError(
                f"{src}: dialogue {vid!r}: {len(ids)} utterance ids, {len(labs)} labels, "
                f"{len(spk)} speakers, {len(sents)} sentences (must match)"
            )
        out["ids"] += ids
        out["labels"] += labs
        out["speakers"] += spk
        out["sentences"] += sents
        out["counts"].append(len(ids))
    return out


def _class_ids(labels: Sequence[Any], src: Path, num_classes: int) -> np.ndarray:
    """The labels as float64 class ids in ``[0, num_classes)`` (warns on unused classes)."""
    try:
        label_arr = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MMSAFormatError(
            f"{src}: videoLabels: expected integer class ids, got e.g. {labels[:3]!r}"
        ) from e
    if label_arr.size == 0:
        raise MMSAFormatError(f"{src}: no utterances")
    if not np.all(label_arr == np.round(label_arr)):
        raise MMSAFormatError(f"{src}: videoLabels: expected integer class ids")
    if label_arr.min() < 0 or label_arr.max() >= num_classes:
        raise MMSAFormatError(
            f"{src}: videoLabels: expected class ids in [0, {num_classes}) for "
            f"num_classes={num_classes}, found min {label_arr.min():g} max "
            f"{label_arr.max():g} (a {int(label_arr.max()) + 1}-way file?)"
        )
    n_used = len(np.unique(label_arr))
    if n_used < num_classes:
        warnings.warn(
            f"{src}: only {n_used} of num_classes={num_classes} classes occur",
            stacklevel=3,
        )
    return label_arr


def _utterance_features(
    fields: Mapping[str, Any],
    src: Path,
    utt: Mapping[str, list[Any]],
    dialogues: Sequence[str],
    feature_root: str | os.PathLike[str] | None,
    feature_names: Mapping[str, str] | None,
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, str] | str]:
    """``[N, D]`` float64 features per modality (from the feature folders or inline),
    the count of empty face folders per modality, and where the features came from."""
    names = dict(GCNET_FEATURE_NAMES)
    if feature_names is not None:
        unknown = set(feature_names) - set(MODALITIES)
        if unknown:
            raise ValueError(f"feature_names: unknown modalities {sorted(unknown)}")
        names.update(feature_names)
    feats: dict[str, np.ndarray] = {}
    empty_rows: dict[str, int] = {}
    layout = fields["layout"]
    if layout != "gcnet" and all(m in fields for m in MODALITIES):
        for m in MODALITIES:
            feats[m] = _features_inline(fields[m], m, dialogues, utt["counts"], src)
            empty_rows[m] = 0
        return feats, empty_rows, "inline"
    if feature_root is None:
        raise MMSAFormatError(
            f"{src}: this IEMOCAP file holds labels only ({layout} layout: videoIDs, "
            "videoLabels, videoSpeakers, videoSentences, trainVid, testVid); pass "
            "feature_root= the GCNet 'features' folder with "
            f"{sorted(names.values())} (DecAlign's prepare_iemocap.py ignores it and "
            "writes all-zero features)"
        )
    root = Path(feature_root)
    for m in MODALITIES:
        feats[m], empty_rows[m] = _features_from_folder(root, m, names[m], utt["ids"])
    return feats, empty_rows, {m: names[m] for m in MODALITIES}


def _check_features(feats: Mapping[str, np.ndarray], src: Path) -> None:
    """Finite, and not all zero (DecAlign's own script writes zero placeholders)."""
    for m in MODALITIES:
        x = feats[m]
        scan = files.scan_values(x)
        if scan.nonfinite:
            raise MMSAFormatError(
                f"{src}: {m} features hold {scan.nonfinite} NaN/inf values"
            )
        if scan.all_zero:
            raise MMSAFormatError(
                f"{src}: {m} features are ALL ZERO ({x.shape[0]} utterances x "
                f"{x.shape[1]} dims); refusing to convert (DecAlign's "
                "scripts/prepare_iemocap.py writes such placeholders; use real features)"
            )


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def _valid_dialogues(
    train_vids: Sequence[str], valid_fraction: float, seed: int
) -> list[str]:
    """A seeded ``valid_fraction`` of the training dialogues (at least 1, not all)."""
    rng = np.random.default_rng(seed)
    n_valid = min(len(train_vids) - 1, max(1, round(valid_fraction * len(train_vids))))
    return sorted(train_vids[i] for i in rng.permutation(len(train_vids))[:n_valid])


def _assemble_splits(
    feats: Mapping[str, np.ndarray],
    label_arr: np.ndarray,
    utt: Mapping[str, list[Any]],
    dialogues: Sequence[str],
    split_of_dialogue: Mapping[str, str],
    src: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """The output's ``{train, valid, test}`` dicts and their zero rows per modality."""
    counts = np.asarray(utt["counts"])
    utt_split = np.repeat(np.asarray([split_of_dialogue[v] for v in dialogues]), counts)
    utt_dialogue = np.repeat(np.asarray(dialogues, dtype=object), counts)
    out: dict[str, Any] = {}
    zero_rows: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        idx = np.flatnonzero(utt_split == s)
        part: dict[str, Any] = {
            m: feats[m][idx][:, None, :].astype(np.float32) for m in MODALITIES
        }
        for m in MODALITIES:
            if idx.size and not np.any(part[m]):
                raise MMSAFormatError(
                    f"{src}: {m} features are ALL ZERO in the {s} split "
                    f"({idx.size} utterances); refusing to convert"
                )
            zero_rows.setdefault(s, {})[m] = int((~part[m].any(axis=(1, 2))).sum())
        part["classification_labels"] = label_arr[idx].astype(np.int32)
        part["id"] = np.asarray(
            [f"{utt_dialogue[i]}$_${utt['ids'][i]}" for i in idx], dtype=object
        )
        part["raw_text"] = [utt["sentences"][i] for i in idx]
        part["speaker"] = [utt["speakers"][i] for i in idx]
        out[s] = part
    return out, zero_rows


def convert_iemocap(
    src_pkl: str | os.PathLike[str],
    out_pkl: str | os.PathLike[str],
    *,
    num_classes: int,
    feature_root: str | os.PathLike[str] | None = None,
    feature_names: Mapping[str, str] | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    test_session: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert a raw IEMOCAP release into our utterance-level MMSA-style pickle.

    Layouts, splits and the output are described in the module docstring.

    Args:
      src_pkl: the raw IEMOCAP pickle.
      out_pkl: where to write (atomically: temp file, then rename).
      num_classes: 4 or 6 for the GCNet files (any >= 2 accepted); every label must be
        in ``[0, num_classes)``.
      feature_root: GCNet ``features`` folder (required for the 6-tuple layout).
      feature_names: modality -> folder name under ``feature_root``; default
        :data:`GCNET_FEATURE_NAMES`.
      valid_fraction: share of training dialogues moved to ``valid``, in ``(0, 1)``.
      seed: seed of the valid split.
      test_session: ``None`` (the file's split) or a session number 1-5.
      class_names: optional names recorded in ``meta`` (index order of the file).

    Returns:
      The ``meta`` dict written into the output.

    Raises:
      FileNotFoundError: missing source file, feature folder or utterance feature.
      MMSAFormatError: unknown layout, inconsistent dialogue tables, labels out of
        range, non-finite features, or an ALL-ZERO feature array (named by modality).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction: expected in (0, 1), got {valid_fraction}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names: expected {num_classes} names, got {len(class_names)}"
        )
    src = Path(src_pkl)
    fields = _parse_iemocap_raw(load_pickle(src, "raw IEMOCAP pickle"), src)
    train_vids, test_vids, protocol = _train_test_dialogues(fields, src, test_session)
    dialogues = sorted(train_vids + test_vids)
    utt = _utterances(fields, dialogues, src)
    label_arr = _class_ids(utt["labels"], src, num_classes)
    feats, empty_rows, feature_source = _utterance_features(
        fields, src, utt, dialogues, feature_root, feature_names
    )
    _check_features(feats, src)

    valid_vids = _valid_dialogues(train_vids, valid_fraction, seed)
    split_of_dialogue = {v: "train" for v in train_vids}
    split_of_dialogue.update({v: "valid" for v in valid_vids})
    split_of_dialogue.update({v: "test" for v in test_vids})
    out, zero_rows = _assemble_splits(
        feats, label_arr, utt, dialogues, split_of_dialogue, src
    )
    meta: dict[str, Any] = {
        "dataset": "iemocap",
        "variant": f"iemocap-{num_classes}way",
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "source_file": src.name,
        "source_sha256": files.sha256_file(src),
        "source_layout": fields["layout"],
        "features": feature_source,
        "feature_dims": {m: int(feats[m].shape[1]) for m in MODALITIES},
        "split_unit": "dialogue",
        "protocol": protocol,
        "test_session": test_session,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "train_dialogues": sorted(set(train_vids) - set(valid_vids)),
        "valid_dialogues": valid_vids,
        "test_dialogues": test_vids,
        "counts": {s: int(out[s]["classification_labels"].shape[0]) for s in SPLITS},
        "empty_feature_folders": empty_rows,
        "zero_rows": zero_rows,
        "converter": "decalign_jax.data.convert_iemocap",
    }
    out["meta"] = meta
    files.atomic_write_pickle(out_pkl, out)
    logger.info(
        "Wrote %s (%s from %s): train/valid/test = %s utterances",
        out_pkl,
        meta["variant"],
        src.name,
        meta["counts"],
    )
    return meta
