"""Local Hugging Face folders -> (Flax module, variables); tiny random folders.

``from_pretrained(folder)`` builds the module from ``config.json`` (dispatch on
``model_type``) and reads the weights through the architecture's explicit name map
(:mod:`xmodal.backbones.hf_checkpoint`). Nothing is downloaded.

``write_random_checkpoint(folder, kind, **fields)`` writes a small random checkpoint in
Hugging Face's layout (``config.json`` + ``model.safetensors``; BERT also
``vocab.txt`` + ``tokenizer_config.json``) without ``transformers``: for demos and for
tests of the methods. ``transformers`` loads these folders (tested).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.bert import Bert, BertConfig, bert_name_map
from xmodal.backbones.clip import CLIPVision, CLIPVisionConfig, clip_vision_name_map
from xmodal.backbones.swin import Swin, SwinConfig, swin_name_map
from xmodal.backbones.vit import ViT, ViTConfig, vit_name_map

__all__ = [
    "ARCHITECTURES",
    "TINY",
    "Architecture",
    "BackboneConfig",
    "default_vocab",
    "from_config",
    "from_pretrained",
    "load_config",
    "param_shapes",
    "write_random_checkpoint",
]

BackboneConfig = ViTConfig | SwinConfig | CLIPVisionConfig | BertConfig

#: Harmless extras of real checkpoint files: buffers, heads of task models, unused
#: poolers and mask tokens (``re.search`` patterns, see ``hf_checkpoint.load_params``).
_COMMON_IGNORE = (r"(^|\.)position_ids$", r"(^|\.)mask_token$")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one backbone family is built, named on disk and probed.

    Attributes:
      name: for messages.
      config_cls: the typed config (``from_hf`` / ``to_hf``).
      module_cls: the Flax module, ``module_cls(config, dtype=..., ...)``.
      name_map: ``(config, add_pooling_layer) -> [TensorMap]``.
      prefixes: name prefixes checkpoint files may use (task models, CLIPModel).
      ignore: tensors that may be present and are not used.
      dummy_inputs: ``config -> args`` for ``module.init`` (shapes only).
    """

    name: str
    config_cls: type
    module_cls: type[nn.Module]
    name_map: Callable[[Any, bool], list[hc.TensorMap]]
    prefixes: tuple[str, ...]
    ignore: tuple[str, ...]
    dummy_inputs: Callable[[Any], tuple[Any, ...]]


def _image_inputs(cfg: Any) -> tuple[Any, ...]:
    return (jnp.zeros((1, *cfg.image_size, cfg.num_channels), jnp.float32),)


def _text_inputs(cfg: Any) -> tuple[Any, ...]:
    ids = jnp.zeros((1, min(8, cfg.max_position_embeddings)), jnp.int32)
    return (ids, jnp.ones_like(ids), jnp.zeros_like(ids))


_VIT = Architecture(
    "ViT",
    ViTConfig,
    ViT,
    vit_name_map,
    ("", "vit."),
    (*_COMMON_IGNORE, r"^pooler\.", r"^classifier\.", r"^decoder\."),
    _image_inputs,
)
_SWIN = Architecture(
    "Swin",
    SwinConfig,
    Swin,
    swin_name_map,
    ("", "swin."),
    (
        *_COMMON_IGNORE,
        r"\.relative_position_index$",
        r"^classifier\.",
        r"^decoder\.",
    ),
    _image_inputs,
)
_CLIP = Architecture(
    "CLIP vision",
    CLIPVisionConfig,
    CLIPVision,
    clip_vision_name_map,
    ("", "vision_model."),
    (
        *_COMMON_IGNORE,
        r"^post_layernorm\.",
        r"^text_model\.",
        r"^text_projection\.",
        r"^visual_projection\.",
        r"^logit_scale$",
    ),
    _image_inputs,
)
_BERT = Architecture(
    "BERT",
    BertConfig,
    Bert,
    bert_name_map,
    ("", "bert."),
    (*_COMMON_IGNORE, r"(^|\.)token_type_ids$", r"^pooler\.", r"^cls\."),
    _text_inputs,
)

#: ``model_type`` of ``config.json`` -> architecture.
ARCHITECTURES: dict[str, Architecture] = {
    "vit": _VIT,
    "swin": _SWIN,
    "clip": _CLIP,
    "clip_vision_model": _CLIP,
    "bert": _BERT,
}


def _architecture_of(config: Any) -> Architecture:
    for arch in ARCHITECTURES.values():
        if isinstance(config, arch.config_cls):
            return arch
    raise TypeError(f"not a backbone config: {type(config).__name__}")


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
    arch = _architecture_of(config)
    return arch.module_cls(
        config,
        dtype=dtype,
        remat=remat,
        add_pooling_layer=add_pooling_layer,
        attention_implementation=attention_implementation,
    )


def param_shapes(module: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Path -> shape of every parameter of a backbone module (no computation)."""
    arch = _architecture_of(module.config)
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
    arch = _architecture_of(config)
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

#: Tiny default sizes per ``kind`` (any config field can be overridden).
TINY: dict[str, dict[str, Any]] = {
    "vit": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    ),
    "swin": dict(
        image_size=32,
        patch_size=2,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(2, 4),
        window_size=4,
    ),
    "clip_vision_model": dict(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    ),
    "bert": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
}

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORDS = [
    "the",
    "a",
    "an",
    "is",
    "was",
    "be",
    "it",
    "this",
    "that",
    "not",
    "very",
    "so",
    "and",
    "or",
    "but",
    "of",
    "to",
    "in",
    "on",
    "for",
    "with",
    "good",
    "bad",
    "great",
    "movie",
    "film",
    "story",
    "love",
    "hate",
    "like",
    "really",
    "funny",
    "boring",
    "happy",
    "sad",
    "i",
    "you",
    "he",
    "she",
    "we",
    "they",
]
_CHINESE = "我你他的是不很好电影看喜欢讨厌"
_PUNCTUATION = ".,!?;:'\"()-"


def default_vocab() -> list[str]:
    """A small WordPiece vocabulary: BERT's special tokens, characters, words, and
    ``##`` continuations of letters and common suffixes."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(i) for i in range(10)]
    vocab = [*_SPECIAL_TOKENS, *_PUNCTUATION, *digits, *letters, *_CHINESE, *_WORDS]
    vocab += [f"##{c}" for c in letters + digits] + ["##s", "##ing", "##ed", "##ly"]
    seen: set[str] = set()
    return [t for t in vocab if not (t in seen or seen.add(t))]


def _write_vocab(folder: Path, vocab: Sequence[str], max_length: int) -> None:
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab))
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": max_length,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2)
    )


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
        BERT ``vocab.txt`` + ``tokenizer_config.json``) are (over)written.
      kind: ``"vit"``, ``"swin"``, ``"clip_vision_model"``, ``"clip"`` (a
        ``CLIPModel``-style folder: ``config.json`` with a ``vision_config``,
        tensors under ``vision_model.``; vision tower only) or ``"bert"``.
      seed: of the weights.
      weight_std: standard deviation of the weights (default: the config's
        ``initializer_range``, 0.02); layer-norm scales are ``1 + N(0, std^2)``.
      vocab: BERT only: the WordPiece vocabulary (default :func:`default_vocab`);
        ``vocab_size`` defaults to its length.
      **fields: config fields (e.g. ``hidden_size=64``) over the tiny defaults
        (``TINY``) and Hugging Face's defaults.
    """
    if kind not in (*TINY, "clip"):
        raise ValueError(f"kind {kind!r}: expected one of {sorted((*TINY, 'clip'))}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base_kind = "clip_vision_model" if kind == "clip" else kind
    arch = ARCHITECTURES[base_kind]
    values = {**TINY[base_kind], **fields}
    if kind == "bert":
        vocab = list(vocab) if vocab is not None else default_vocab()
        values.setdefault("vocab_size", len(vocab))
        if values["vocab_size"] < len(vocab):
            raise ValueError(
                f"vocab_size {values['vocab_size']} < {len(vocab)} vocabulary entries"
            )
    config = arch.config_cls(**values)
    module = from_config(config)
    std = config.initializer_range if weight_std is None else weight_std
    prefix = "vision_model." if kind == "clip" else ""
    tensors = hc.random_hf_tensors(
        arch.name_map(config, True),
        param_shapes(module.clone(add_pooling_layer=True)),
        seed=seed,
        std=std,
        prefix=prefix,
    )
    hf_config = config.to_hf()
    if kind == "clip":
        vision = {k: v for k, v in hf_config.items() if k != "architectures"}
        hf_config = {
            "model_type": "clip",
            "architectures": ["CLIPModel"],
            "projection_dim": config.projection_dim,
            "vision_config": vision,
        }
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / hc.SAFETENSORS), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    if kind == "bert":
        assert vocab is not None
        padded = [
            *vocab,
            *(f"[unused{i}]" for i in range(config.vocab_size - len(vocab))),
        ]
        _write_vocab(folder, padded, config.max_position_embeddings)
    return folder
