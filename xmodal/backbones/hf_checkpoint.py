"""Hugging Face checkpoint folders: reading tensors, the explicit name map, writing.

A backbone's parameters are described by a list of :class:`TensorMap` entries, one per
Flax parameter, each naming the Hugging Face tensor(s) it comes from and the layout
change between them (PyTorch ``Linear`` weights ``[out, in]`` -> Flax kernels
``[in, out]``; ``Conv2d`` weights OIHW -> HWIO; separate query / key / value
matrices -> one fused ``[in, 3 * out]`` kernel). The same list drives loading
(:func:`load_params`) and the random-checkpoint writer (:func:`random_hf_tensors`), and
the Hugging Face shape of every tensor is derived from the Flax module's own parameter
shapes, so a wrong config value shows up as a shape error naming the tensor.

Files read (first found wins): ``model.safetensors``; ``model.safetensors.index.json``
(sharded); ``pytorch_model.bin`` / ``pytorch_model.bin.index.json`` (PyTorch pickles,
read only if ``torch`` is importable). Nothing is downloaded. A file that cannot be
opened (truncated by an interrupted copy, damaged) is a :class:`CheckpointError` of
one line naming it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SAFETENSORS",
    "SAFETENSORS_INDEX",
    "TORCH_BIN",
    "TORCH_BIN_INDEX",
    "Checkpoint",
    "CheckpointError",
    "TensorMap",
    "fused_linear",
    "hf_shapes",
    "layer_norm",
    "linear",
    "load_params",
    "open_checkpoint",
    "random_hf_tensors",
]

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"

#: Layouts of :class:`TensorMap`: how Hugging Face tensors become one Flax parameter.
LAYOUTS = ("copy", "linear", "conv", "fused_linear", "fused_bias")


class CheckpointError(ValueError):
    """A checkpoint folder does not fit the model: one line naming file and tensor."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One Flax parameter and the Hugging Face tensor(s) it is made of.

    Attributes:
      path: the parameter's path in the Flax ``params`` tree.
      sources: Hugging Face tensor names (without the checkpoint's prefix such as
        ``bert.``); several only for the fused layouts, in concatenation order.
      layout: one of ``copy`` (same array), ``linear`` (``[out, in]`` -> ``[in,
        out]``), ``conv`` (``[O, I, H, W]`` -> ``[H, W, I, O]``), ``fused_linear``
        (n x ``[out, in]`` -> ``[in, n * out]``), ``fused_bias`` (n x ``[out]`` ->
        ``[n * out]``).
    """

    path: tuple[str, ...]
    sources: tuple[str, ...]
    layout: str = "copy"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} not in {LAYOUTS}")


def linear(path: tuple[str, ...], name: str, *, bias: bool = True) -> list[TensorMap]:
    """A ``nn.Dense`` at ``path`` from the PyTorch ``nn.Linear`` called ``name``."""
    out = [TensorMap((*path, "kernel"), (f"{name}.weight",), "linear")]
    if bias:
        out.append(TensorMap((*path, "bias"), (f"{name}.bias",)))
    return out


def fused_linear(
    path: tuple[str, ...], names: Sequence[str], *, bias: bool = True
) -> list[TensorMap]:
    """One ``nn.Dense`` at ``path`` from the ``nn.Linear`` layers ``names``, fused."""
    out = [
        TensorMap(
            (*path, "kernel"), tuple(f"{n}.weight" for n in names), "fused_linear"
        )
    ]
    if bias:
        out.append(
            TensorMap((*path, "bias"), tuple(f"{n}.bias" for n in names), "fused_bias")
        )
    return out


def layer_norm(path: tuple[str, ...], name: str) -> list[TensorMap]:
    """A ``nn.LayerNorm`` at ``path`` from the PyTorch ``nn.LayerNorm`` ``name``."""
    return [
        TensorMap((*path, "scale"), (f"{name}.weight",)),
        TensorMap((*path, "bias"), (f"{name}.bias",)),
    ]


def hf_shapes(entry: TensorMap, flax_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The Hugging Face shape of each of ``entry.sources`` given the Flax shape."""
    n = len(entry.sources)
    if entry.layout == "copy":
        return [tuple(flax_shape)]
    if entry.layout == "linear":
        return [tuple(flax_shape[::-1])]
    if entry.layout == "conv":
        kh, kw, i, o = flax_shape
        return [(o, i, kh, kw)]
    if entry.layout == "fused_linear":
        d_in, d_out = flax_shape
        return [(d_out // n, d_in)] * n
    (d_out,) = flax_shape  # fused_bias
    return [(d_out // n,)] * n


def _to_flax(layout: str, arrays: list[np.ndarray]) -> np.ndarray:
    if layout == "copy":
        return arrays[0]
    if layout == "linear":
        return arrays[0].T
    if layout == "conv":
        return arrays[0].transpose(2, 3, 1, 0)
    if layout == "fused_linear":
        return np.concatenate([a.T for a in arrays], axis=1)
    return np.concatenate(arrays, axis=0)  # fused_bias


# ------------------------------------------------------------------ reading files


class Checkpoint:
    """The tensors of one checkpoint folder: names, shapes, lazy reads as float32.

    Attributes:
      label: the file (or index file) the tensors come from, for error messages.
      shapes: tensor name -> shape, for every tensor in the checkpoint.
    """

    def __init__(
        self,
        label: str,
        shapes: dict[str, tuple[int, ...]],
        reader: Callable[[str], np.ndarray],
    ) -> None:
        self.label = label
        self.shapes = shapes
        self._reader = reader

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a float32 NumPy array."""
        return np.asarray(self._reader(name), dtype=np.float32)


def _unreadable(path: Path, kind: str, error: Exception) -> str:
    """One line for a weights file that cannot be opened (truncated or damaged)."""
    text = " ".join(str(error).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return (
        f"{path}: not a readable {kind} weights file, truncated or damaged? "
        f"({type(error).__name__}: {text}); copy the checkpoint folder again"
    )


def _safetensors_tables(files: Iterable[Path]) -> Checkpoint:
    from safetensors import safe_open

    files = list(files)
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, Path] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: checkpoint shard not found")
        try:
            with safe_open(str(f), framework="numpy") as handle:
                for name in handle.keys():  # noqa: SIM118 (not a dict)
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
                    where[name] = f
        except Exception as e:  # safetensors' SafetensorError, OSError
            raise CheckpointError(_unreadable(f, "safetensors", e)) from None

    def read(name: str) -> np.ndarray:
        with safe_open(str(where[name]), framework="numpy") as handle:
            if handle.get_slice(name).get_dtype() != "BF16":
                return handle.get_tensor(name)
        # NumPy has no bfloat16: read it through the JAX framework (ml_dtypes).
        with safe_open(str(where[name]), framework="flax") as handle:
            return np.asarray(handle.get_tensor(name), dtype=np.float32)

    label = str(files[0]) if len(files) == 1 else str(files[0].parent)
    return Checkpoint(label, shapes, read)


def _torch_tables(files: Iterable[Path], label: str) -> Checkpoint:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{label}: reading a PyTorch pickle checkpoint needs torch, which is not "
            "installed (convert it to model.safetensors or install torch)"
        ) from None
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: checkpoint shard not found")
        try:
            state = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling and zip errors of several types
            raise CheckpointError(_unreadable(f, "PyTorch", e)) from None
        for name, value in state.items():
            tensors[name] = value.detach().to(torch.float32).numpy()
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    return Checkpoint(label, shapes, tensors.__getitem__)


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a checkpoint index ({e})") from None
    return [index.parent / f for f in sorted(set(weight_map.values()))]


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """The weights of a Hugging Face folder (safetensors first, then PyTorch files)."""
    folder = Path(folder)
    if (folder / SAFETENSORS).is_file():
        return _safetensors_tables([folder / SAFETENSORS])
    if (folder / SAFETENSORS_INDEX).is_file():
        ckpt = _safetensors_tables(_index_files(folder / SAFETENSORS_INDEX))
        ckpt.label = str(folder / SAFETENSORS_INDEX)
        return ckpt
    if (folder / TORCH_BIN).is_file():
        return _torch_tables([folder / TORCH_BIN], str(folder / TORCH_BIN))
    if (folder / TORCH_BIN_INDEX).is_file():
        index = folder / TORCH_BIN_INDEX
        return _torch_tables(_index_files(index), str(index))
    raise CheckpointError(
        f"{folder}: no weights found (expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
        f"{TORCH_BIN} or {TORCH_BIN_INDEX})"
    )


# ------------------------------------------------------------------ name map -> params


def _resolve(name: str, shapes: Mapping[str, Any]) -> str:
    """``name`` or its legacy spelling (TF-era BERT files: ``LayerNorm.gamma/beta``)."""
    if name in shapes or "LayerNorm" not in name:
        return name
    legacy = re.sub(r"\.weight$", ".gamma", re.sub(r"\.bias$", ".beta", name))
    return legacy if legacy in shapes else name


def _choose_prefix(
    entries: Sequence[TensorMap], shapes: Mapping[str, Any], prefixes: Sequence[str]
) -> str:
    def hits(p: str) -> int:
        return sum(
            _resolve(p + s, shapes) in shapes for e in entries for s in e.sources
        )

    return max(prefixes, key=hits)  # ties: the first listed


def _tree_set(tree: dict[str, Any], path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _one_line(label: str, problems: list[str]) -> str:
    more = len(problems) - 1
    msg = f"{label}: {problems[0]}"
    if more:
        shown = "; ".join(problems[1:4])
        msg += f" (and {more} more: {shown}{'; ...' if more > 3 else ''})"
    return msg


def load_params(
    checkpoint: Checkpoint,
    entries: Sequence[TensorMap],
    flax_shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    *,
    prefixes: Sequence[str] = ("",),
    ignore: Sequence[str] = (),
    model_name: str = "the model",
) -> dict[str, Any]:
    """The Flax ``params`` tree (float32 NumPy leaves) read through ``entries``.

    Args:
      checkpoint: from :func:`open_checkpoint`.
      entries: the model's name map, one entry per Flax parameter.
      flax_shapes: path -> shape of every Flax parameter (from ``jax.eval_shape``).
      prefixes: name prefixes a checkpoint may put before the map's names (e.g.
        ``"bert."`` in files saved from a task model); the best-matching is used.
      ignore: regular expressions (``re.search``) of tensors that may be present
        and are not used (task heads, buffers, an unused pooler); matched against
        the name without the prefix, and against the full name.
      model_name: named in the error for unexpected tensors.

    Raises:
      CheckpointError: one line naming the file and the first missing, mis-shaped
        or unexpected tensor, with the expected and actual shapes, and how many
        other problems there are.
    """
    mapped = {e.path for e in entries}
    if mapped != set(flax_shapes):
        # A bug in a name map, not in the checkpoint.
        raise RuntimeError(
            f"name map of {model_name} does not cover its parameters: "
            f"unmapped {sorted(set(flax_shapes) - mapped)}, "
            f"unknown {sorted(mapped - set(flax_shapes))}"
        )
    shapes = checkpoint.shapes
    prefix = _choose_prefix(entries, shapes, prefixes)
    problems: list[str] = []
    used: set[str] = set()
    for e in entries:
        for source, expected in zip(
            e.sources, hf_shapes(e, flax_shapes[e.path]), strict=True
        ):
            name = _resolve(prefix + source, shapes)
            if name not in shapes:
                problems.append(f"missing tensor {name!r} (expected shape {expected})")
                continue
            used.add(name)
            if tuple(shapes[name]) != tuple(expected):
                problems.append(
                    f"tensor {name!r} has shape {tuple(shapes[name])}, expected {expected}"
                )
    patterns = [re.compile(p) for p in ignore]
    for name in shapes:
        if name in used:
            continue
        short = name[len(prefix) :] if name.startswith(prefix) else name
        if any(p.search(short) or p.search(name) for p in patterns):
            continue
        problems.append(
            f"unexpected tensor {name!r} with shape {tuple(shapes[name])} "
            f"(not part of {model_name})"
        )
    if problems:
        raise CheckpointError(_one_line(checkpoint.label, problems))

    params: dict[str, Any] = {}
    for e in entries:
        arrays = [checkpoint.read(_resolve(prefix + s, shapes)) for s in e.sources]
        value = np.ascontiguousarray(_to_flax(e.layout, arrays), dtype=np.float32)
        assert value.shape == tuple(flax_shapes[e.path]), (e, value.shape)
        _tree_set(params, e.path, value)
    return params


def random_hf_tensors(
    entries: Sequence[TensorMap],
    flax_shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    *,
    seed: int,
    std: float,
    prefix: str = "",
) -> dict[str, np.ndarray]:
    """Random float32 tensors under their Hugging Face names, for a test checkpoint.

    Weights and biases are ``N(0, std^2)``; layer-norm scales are ``1 + N(0, std^2)``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for e in entries:
        for source, shape in zip(
            e.sources, hf_shapes(e, flax_shapes[e.path]), strict=True
        ):
            value = std * rng.standard_normal(shape, dtype=np.float32)
            if e.path[-1] == "scale":
                value += 1.0
            out[prefix + source] = value
    return out
