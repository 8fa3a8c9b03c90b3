"""Local Hugging Face folders -> (Flax module, variables); tiny random folders.

``from_pretrained(folder, kind=None)`` builds the module from ``config.json`` (dispatch
on ``model_type``, and on ``kind`` for the towers of a multi-tower folder) and reads
the weights through the architecture's explicit name map
(:mod:`xmodal.backbones.hf_checkpoint`). Nothing is downloaded.

``write_random_checkpoint(folder, kind, **fields)`` writes a small random checkpoint in
Hugging Face's layout (``config.json`` + ``model.safetensors``; text towers also their
tokenizer files; a ``CLIPModel`` folder both towers and the projections) without
``transformers``: for demos and for tests of the methods. ``transformers`` loads these
folders (tested).

Both follow the architecture registry (:mod:`xmodal.backbones.registry`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.registry import (
    ARCHITECTURES,
    TOWERS,
    Architecture,
    BackboneConfig,
    architecture_of,
    resolve,
)

__all__ = [
    "TINY",
    "BackboneConfig",
    "folder_model_type",
    "from_config",
    "from_pretrained",
    "load_config",
    "param_shapes",
    "write_random_checkpoint",
]


def _read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found (a Hugging Face model folder has one)"
        )
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return d


def folder_model_type(folder: str | Path) -> Any:
    """The ``model_type`` of a folder's ``config.json`` (None when absent)."""
    return _read_config_json(Path(folder)).get("model_type")


def load_config(folder: str | Path, kind: str | None = None) -> BackboneConfig:
    """The typed config of a Hugging Face folder (``config.json``).

    ``kind`` picks the tower of a multi-tower folder (``"clip_text"`` of a
    ``CLIPModel`` folder; None: the registry's default, its vision tower) and must
    be one the folder's ``model_type`` holds.

    Raises:
      FileNotFoundError: no ``config.json``.
      ValueError: one line naming ``config.json`` and the unsupported
        ``model_type``, the missing tower or the invalid field.
    """
    folder = Path(folder)
    d = _read_config_json(folder)
    try:
        return resolve(d.get("model_type"), kind).config_cls.from_hf(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder / 'config.json'}: {e}") from None


def from_config(
    config: BackboneConfig,
    *,
    dtype: Any = jnp.float32,
    remat: bool = False,
    add_pooling_layer: bool = False,
    attention_implementation: str | None = None,
) -> nn.Module:
    """The Flax module of ``config`` (parameters float32, compute in ``dtype``)."""
    arch = architecture_of(config)
    return arch.module_cls(
        config,
        dtype=dtype,
        remat=remat,
        add_pooling_layer=add_pooling_layer,
        attention_implementation=attention_implementation,
    )


def param_shapes(module: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Path -> shape of every parameter of a backbone module (no computation)."""
    arch = architecture_of(module.config)
    abstract = jax.eval_shape(
        module.init, jax.random.PRNGKey(0), *arch.dummy_inputs(module.config)
    )
    flat = traverse_util.flatten_dict(abstract["params"])
    return {k: tuple(v.shape) for k, v in flat.items()}


def from_pretrained(
    folder: str | Path,
    *,
    kind: str | None = None,
    dtype: Any = jnp.float32,
    remat: bool = False,
    add_pooling_layer: bool = False,
    attention_implementation: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A backbone and its weights from a local Hugging Face folder.

    Args:
      folder: holds ``config.json`` and the weights (``model.safetensors``, a
        sharded ``model.safetensors.index.json``, or ``pytorch_model.bin`` when
        torch is installed).
      kind: the tower to read (:func:`load_config`): ``"clip_text"`` reads the text
        tower of a ``CLIPModel`` folder; None reads its vision tower.
      dtype: compute dtype; parameters stay float32.
      remat: rematerialise each block in the backward pass.
      add_pooling_layer: the module also returns Hugging Face's ``pooler_output``
        (then the checkpoint must hold the pooler's weights: ``pooler.dense`` for
        ViT / BERT, ``post_layernorm`` for CLIP).
      attention_implementation: passed to ``jax.nn.dot_product_attention``.

    Returns:
      ``(module, variables)``: ``variables = {"params": ...}`` with float32 NumPy
      leaves (place them with ``jax.device_put`` and the run's shardings). Vision:
      ``module.apply(variables, images)``, ``images [B, H, W, 3]`` normalised;
      text: ``module.apply(variables, input_ids, attention_mask)``. All return the
      last hidden state ``[B, N, D]`` exactly like the Hugging Face model's
      ``last_hidden_state``.

    Raises:
      FileNotFoundError / ValueError: bad ``config.json`` (one line naming it).
      CheckpointError: missing, mis-shaped or unexpected tensors (one line naming
        the file, the tensor, the expected and actual shapes).
    """
    config = load_config(folder, kind)
    arch = architecture_of(config)
    module = from_config(
        config,
        dtype=dtype,
        remat=remat,
        add_pooling_layer=add_pooling_layer,
        attention_implementation=attention_implementation,
    )
    checkpoint = hc.open_checkpoint(folder)
    params = hc.load_params(
        checkpoint,
        arch.name_map(config, add_pooling_layer),
        param_shapes(module),
        prefixes=arch.prefixes,
        ignore=arch.ignore,
        model_name=arch.name,
    )
    return module, {"params": params}


# ----------------------------------------------------------------- random checkpoints

#: Tiny default sizes per ``model_type`` (``registry.Architecture.tiny`` of the
#: architecture a folder of that type is read as by default; any config field can be
#: overridden).
TINY: dict[str, dict[str, Any]] = {
    model_type: dict(arch.tiny) for model_type, arch in ARCHITECTURES.items()
}


def _tower_config(
    arch: Architecture, fields: dict[str, Any], vocab: Sequence[str] | None
) -> tuple[Any, list[str] | None]:
    """The typed config of one tower of a random checkpoint, and its vocabulary."""
    values = {**arch.tiny, **fields}
    if arch.tokenizer is None:
        return arch.config_cls(**values), None
    vocab = list(vocab) if vocab is not None else arch.tokenizer.default_vocab()
    values.setdefault("vocab_size", len(vocab))
    if values["vocab_size"] < len(vocab):
        raise ValueError(
            f"vocab_size {values['vocab_size']} < {len(vocab)} vocabulary entries"
        )
    values = {**arch.tokenizer.config_ids(vocab), **values}
    return arch.config_cls(**values), vocab


def write_random_checkpoint(
    folder: str | Path,
    kind: str,
    *,
    seed: int = 0,
    weight_std: float | None = None,
    vocab: Sequence[str] | None = None,
    towers: Mapping[str, Mapping[str, Any]] | None = None,
    **fields: Any,
) -> Path:
    """Writes a random checkpoint in Hugging Face's layout; returns ``folder``.

    Args:
      folder: created if needed; ``config.json`` and ``model.safetensors`` (and for
        text towers their tokenizer files: BERT's ``vocab.txt`` +
        ``tokenizer_config.json``, CLIP's ``vocab.json`` + ``merges.txt`` +
        ``tokenizer_config.json``) are (over)written.
      kind: a ``model_type`` of the registry: ``"vit"``, ``"swin"``,
        ``"clip_vision_model"``, ``"clip_text_model"``, ``"bert"``, or ``"clip"``: a
        full ``CLIPModel`` folder (``config.json`` with a ``vision_config`` and a
        ``text_config``; tensors under ``vision_model.`` / ``text_model.``,
        ``visual_projection``, ``text_projection``, ``logit_scale``).
      seed: of the weights (tower ``i`` of a composite folder draws from ``seed +
        i``).
      weight_std: standard deviation of the weights (default: the config's
        ``initializer_range``, 0.02); layer-norm scales are ``1 + N(0, std^2)``.
      vocab: text towers only: the vocabulary (default: the tokenizer's,
        :func:`~xmodal.backbones.tokenizer.default_vocab` for BERT); ``vocab_size``
        defaults to its length, and CLIP's ``bos`` / ``eos`` ids follow it.
      towers: a composite folder's other towers: ``{tower kind: config fields}``
        (e.g. ``{"clip_text": {"hidden_size": 64}}``); ``**fields`` are the first
        tower's. Fields shared by the towers (``projection_dim``) default to the
        first tower's.
      **fields: config fields (e.g. ``hidden_size=64``) over the tiny defaults
        (``TINY``) and Hugging Face's defaults.
    """
    if kind not in TINY:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(TINY)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = ARCHITECTURES[kind]
    # A composite's model_type ("clip") writes the multi-tower folder: every tower.
    composite = arch.composite
    if composite is None or composite.model_type != kind:
        composite, members = None, (arch,)
    else:
        members = TOWERS[kind]
    towers = dict(towers or {})
    unknown = sorted(set(towers) - {a.kind for a in members[1:]})
    if unknown:
        raise ValueError(
            f"towers: {unknown} are not other towers of a {kind!r} folder "
            f"({[a.kind for a in members[1:]]})"
        )
    tensors: dict[str, Any] = {}
    configs: list[Any] = []
    text_files: list[tuple[Architecture, Any, list[str]]] = []
    rng = np.random.default_rng(seed)
    for i, member in enumerate(members):
        tower_fields = dict(fields) if i == 0 else dict(towers.get(member.kind, {}))
        if composite is not None and configs:
            for name in composite.shared_fields:
                tower_fields.setdefault(name, getattr(configs[0], name))
        config, tower_vocab = _tower_config(member, tower_fields, vocab)
        configs.append(config)
        if tower_vocab is not None:
            text_files.append((member, config, tower_vocab))
        module = from_config(config)
        std = config.initializer_range if weight_std is None else weight_std
        prefix = member.composite.prefix if composite else ""
        tensors.update(
            hc.random_hf_tensors(
                member.name_map(config, True),
                param_shapes(module.clone(add_pooling_layer=True)),
                seed=seed + i,
                std=std,
                prefix=prefix,
            )
        )
        if composite is not None and member.composite.projection:
            shape = (config.projection_dim, config.hidden_size)
            value = std * rng.standard_normal(shape, dtype=np.float32)
            tensors[f"{member.composite.projection}.weight"] = value
    hf_config = configs[0].to_hf()
    if composite is not None:
        for name in composite.shared_fields:
            values = {getattr(c, name) for c in configs}
            if len(values) > 1:
                raise ValueError(
                    f"{name}: the towers of a {kind!r} folder must agree, got "
                    f"{sorted(values)}"
                )
        for name, value in composite.scalars:
            tensors[name] = np.asarray(value, np.float32)
        hf_config = {
            "model_type": composite.model_type,
            "architectures": [composite.architecture],
            **{name: getattr(configs[0], name) for name in composite.shared_fields},
        }
        for member, config in zip(members, configs, strict=True):
            tower = {k: v for k, v in config.to_hf().items() if k != "architectures"}
            hf_config[member.composite.config_key] = tower
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / hc.SAFETENSORS), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    for member, config, tower_vocab in text_files:
        member.tokenizer.write(
            folder, tower_vocab, config.vocab_size, config.max_position_embeddings
        )
    return folder
