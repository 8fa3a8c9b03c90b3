"""Local Hugging Face folders -> (Flax module, variables); tiny random folders.

``from_pretrained(folder)`` builds the module from ``config.json`` (dispatch on
``model_type``) and reads the weights through the architecture's explicit name map
(:mod:`xmodal.backbones.hf_checkpoint`). Nothing is downloaded.

``write_random_checkpoint(folder, kind, **fields)`` writes a small random checkpoint in
Hugging Face's layout (``config.json`` + ``model.safetensors``; BERT also
``vocab.txt`` + ``tokenizer_config.json``) without ``transformers``: for demos and for
tests of the methods. ``transformers`` loads these folders (tested).

Both follow the architecture registry (:mod:`xmodal.backbones.registry`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.registry import ARCHITECTURES, BackboneConfig, architecture_of

__all__ = [
    "TINY",
    "BackboneConfig",
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


def load_config(folder: str | Path) -> BackboneConfig:
    """The typed config of a Hugging Face folder (``config.json``).

    Raises:
      FileNotFoundError: no ``config.json``.
      ValueError: one line naming ``config.json`` and the unsupported
        ``model_type`` or invalid field.
    """
    folder = Path(folder)
    d = _read_config_json(folder)
    model_type = d.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{folder / 'config.json'}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    try:
        return ARCHITECTURES[model_type].config_cls.from_hf(d)
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
      BERT: ``module.apply(variables, input_ids, attention_mask,
      token_type_ids=None)``. Both return the last hidden state ``[B, N, D]``
      exactly like the Hugging Face model's ``last_hidden_state``.

    Raises:
      FileNotFoundError / ValueError: bad ``config.json`` (one line naming it).
      CheckpointError: missing, mis-shaped or unexpected tensors (one line naming
        the file, the tensor, the expected and actual shapes).
    """
    config = load_config(folder)
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

#: Tiny default sizes per ``model_type`` (``registry.Architecture.tiny``; any config
#: field can be overridden).
TINY: dict[str, dict[str, Any]] = {
    model_type: dict(arch.tiny) for model_type, arch in ARCHITECTURES.items()
}


def write_random_checkpoint(
    folder: str | Path,
    kind: str,
    *,
    seed: int = 0,
    weight_std: float | None = None,
    vocab: Sequence[str] | None = None,
    **fields: Any,
) -> Path:
    """Writes a random checkpoint in Hugging Face's layout; returns ``folder``.

    Args:
      folder: created if needed; ``config.json`` and ``model.safetensors`` (and for
        text towers their tokenizer files, BERT's ``vocab.txt`` +
        ``tokenizer_config.json``) are (over)written.
      kind: a ``model_type`` of the registry: ``"vit"``, ``"swin"``,
        ``"clip_vision_model"``, ``"clip"`` (a ``CLIPModel``-style folder:
        ``config.json`` with a ``vision_config``, tensors under ``vision_model.``;
        vision tower only) or ``"bert"``.
      seed: of the weights.
      weight_std: standard deviation of the weights (default: the config's
        ``initializer_range``, 0.02); layer-norm scales are ``1 + N(0, std^2)``.
      vocab: text towers only: the vocabulary (default: the tokenizer's,
        :func:`~xmodal.backbones.tokenizer.default_vocab` for BERT); ``vocab_size``
        defaults to its length.
      **fields: config fields (e.g. ``hidden_size=64``) over the tiny defaults
        (``TINY``) and Hugging Face's defaults.
    """
    if kind not in TINY:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(TINY)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = ARCHITECTURES[kind]
    # A composite's model_type ("clip") writes the multi-tower folder around the tower.
    composite = arch.composite
    if composite is not None and composite.model_type != kind:
        composite = None
    values = {**TINY[kind], **fields}
    if arch.tokenizer is not None:
        vocab = list(vocab) if vocab is not None else arch.tokenizer.default_vocab()
        values.setdefault("vocab_size", len(vocab))
        if values["vocab_size"] < len(vocab):
            raise ValueError(
                f"vocab_size {values['vocab_size']} < {len(vocab)} vocabulary entries"
            )
    config = arch.config_cls(**values)
    module = from_config(config)
    std = config.initializer_range if weight_std is None else weight_std
    tensors = hc.random_hf_tensors(
        arch.name_map(config, True),
        param_shapes(module.clone(add_pooling_layer=True)),
        seed=seed,
        std=std,
        prefix=composite.prefix if composite else "",
    )
    hf_config = config.to_hf()
    if composite:
        tower = {k: v for k, v in hf_config.items() if k != "architectures"}
        hf_config = {
            "model_type": composite.model_type,
            "architectures": [composite.architecture],
            **{name: getattr(config, name) for name in composite.shared_fields},
            composite.config_key: tower,
        }
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / hc.SAFETENSORS), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    if arch.tokenizer is not None:
        assert vocab is not None
        arch.tokenizer.write(
            folder, vocab, config.vocab_size, config.max_position_embeddings
        )
    return folder
