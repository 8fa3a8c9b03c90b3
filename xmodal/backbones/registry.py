"""The one registry of backbone architectures; every per-kind table is derived from it.

An :class:`Architecture` is everything the project knows about one backbone family:
its ``kind`` (the name configs use: ``vit``, ``swin``, ``clip``, ``bert``,
``clip_text``), how it is built (typed config, Flax module), how its Hugging Face
folders look (``model_type`` values, tensor-name map, prefixes, ignored tensors, the
multi-tower folder it may sit in), a tiny random config (tests, demos), and how it is
fed (image towers: pixel mean / std and the evaluation crop; text towers: their
tokenizer files). The tables elsewhere are views of :data:`REGISTRY`: :data:`TOWERS`
/ :data:`ARCHITECTURES` (``model_type`` -> architectures: ``load_config`` /
``from_pretrained`` dispatch through :func:`resolve`), ``TINY`` and the kinds of
``write_random_checkpoint`` (``pretrained.py``), ``MODEL_TYPES`` /
``KNOWN_CHECKPOINTS`` (``folders.py``), and a method's list of image / text encoders
(:func:`kinds`).

Output contract. Every module returns tokens ``[B, N, D]``, ``D =
config.hidden_size``, exactly Hugging Face's ``last_hidden_state``: an image tower is
called as ``module.apply(variables, images)`` with ``images [B, H, W, C]`` normalised
by ``pixel_mean_std`` (``(H, W) = config.image_size``), a text tower as
``module.apply(variables, input_ids, attention_mask)`` with ``[B, L]`` int32 arrays;
both take ``deterministic=False`` for dropout, and ``add_pooling_layer=True`` makes
them return ``(tokens, pooled [B, D])``. A backbone whose natural output is a map
``[B, H', W', C]`` (a ConvNet) flattens it to ``[B, H' W', C]`` before returning.

Adding a backbone (ConvNeXt, say):

1. ``xmodal/backbones/convnext.py``: ``ConvNeXtConfig`` (a frozen dataclass with
   Hugging Face's defaults, ``from_hf`` / ``to_hf``, ``model_type`` and
   ``architecture`` class variables, ``hidden_size``, ``image_size``,
   ``num_channels``, ``initializer_range``), the Flax module ``ConvNeXt(config,
   dtype=, remat=, add_pooling_layer=, attention_implementation=)`` keeping the output
   contract above (``blocks.check_images`` checks its input), and
   ``convnext_name_map(config, add_pooling_layer) -> [TensorMap]``.
2. One entry in :data:`REGISTRY` below: ``Architecture(kind="convnext",
   modality="image", model_types=("convnext",), ...)`` with its tiny config, its pixel
   statistics and crop rule (and ``ConvNeXtConfig`` in the ``BackboneConfig`` union).
3. A parity test against ``transformers.ConvNeXtModel`` in ``tests/test_backbones.py``.

Then ``from_pretrained`` reads ConvNeXt folders, ``write_random_checkpoint(folder,
"convnext")`` writes them, ``check_folder`` names them, and CDDS accepts
``model.image_encoder = "convnext"`` with its normalisation and crop.

A text tower is an entry like BERT's (``modality="text"``, its ``tokenizer`` files).
Each tower of a multi-tower folder has its own entry with its own :class:`Composite`:
CLIP's vision tower (kind ``clip``: ``vision_config``, ``vision_model.``) and text
tower (kind ``clip_text``: ``text_config``, ``text_model.``) both read a ``CLIPModel``
folder (``model_type: "clip"``). Such a shared ``model_type`` is allowed only between
the towers of one composite; the tower is picked by the kind the caller asks for
(:func:`resolve`; ``load_config`` / ``from_pretrained`` / ``open_backbone`` take
``kind``), and a folder read without one is read as the composite's first tower in
registry order (CLIP vision, as before the text tower existed). Writing a random
checkpoint of the composite's ``model_type`` writes every tower, its projection and
the composite's scalars (``pretrained.write_random_checkpoint``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xmodal.backbones import clip_tokenizer
from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.bert import Bert, BertConfig, bert_name_map
from xmodal.backbones.clip import CLIPVision, CLIPVisionConfig, clip_vision_name_map
from xmodal.backbones.clip_text import CLIPText, CLIPTextConfig, clip_text_name_map
from xmodal.backbones.swin import Swin, SwinConfig, swin_name_map
from xmodal.backbones.tokenizer import (
    DEFAULT_WORDS,
    default_vocab,
    write_wordpiece_files,
)
from xmodal.backbones.vit import ViT, ViTConfig, vit_name_map

__all__ = [
    "ARCHITECTURES",
    "CLIP_MEAN_STD",
    "IMAGENET_MEAN_STD",
    "REGISTRY",
    "TOWERS",
    "Architecture",
    "BackboneConfig",
    "Composite",
    "MeanStd",
    "TokenizerFiles",
    "architecture_of",
    "kinds",
    "resolve",
]

MeanStd = tuple[tuple[float, ...], tuple[float, ...]]
#: The typed config of any registered architecture.
BackboneConfig = ViTConfig | SwinConfig | CLIPVisionConfig | CLIPTextConfig | BertConfig

#: Pixel mean / std of [0, 1] RGB: ImageNet's (ViT and Swin, as LAPS) and CLIP's.
IMAGENET_MEAN_STD: MeanStd = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_MEAN_STD: MeanStd = (
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
)

#: Harmless extras of real checkpoint files: buffers, heads of task models, unused
#: poolers and mask tokens (``re.search`` patterns, see ``hf_checkpoint.load_params``).
_COMMON_IGNORE = (r"(^|\.)position_ids$", r"(^|\.)mask_token$")


@dataclasses.dataclass(frozen=True)
class Composite:
    """A multi-tower Hugging Face folder one tower is also read from (``CLIPModel``).

    Attributes:
      model_type: of the folder's ``config.json`` (``"clip"``).
      architecture: its ``architectures`` entry (``"CLIPModel"``).
      config_key: where the tower's config sits in it (``"vision_config"``).
      prefix: the tower's tensor-name prefix (``"vision_model."``).
      shared_fields: tower config fields also written at the top level
        (``projection_dim``); every tower of the folder has the same value.
      projection: the folder's bias-free projection of this tower's pooled output
        (``visual_projection``: tensor ``visual_projection.weight [E, D]``, E =
        ``projection_dim``), or "".
      scalars: scalar tensors of the folder (name, value of a random checkpoint):
        CLIP's ``logit_scale`` = log(1 / 0.07).
    """

    model_type: str
    architecture: str
    config_key: str
    prefix: str
    shared_fields: tuple[str, ...] = ()
    projection: str = ""
    scalars: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer files of a text tower's folder.

    Attributes:
      names: the files (for messages: what to put in a folder).
      default_vocab: ``() -> [token]``, the vocabulary of random checkpoints.
      write: ``(folder, vocab, vocab_size, max_length)`` writes them.
      with_words: ``[word] -> [token]``, the default vocabulary extended so that
        each word is one token (the demos' captions).
      config_ids: ``[token] -> {field: id}``, the text-config fields a vocabulary
        fixes (CLIP's ``bos_token_id`` / ``eos_token_id``).
    """

    names: tuple[str, ...]
    default_vocab: Callable[[], list[str]]
    write: Callable[[Path, Sequence[str], int, int], None]
    with_words: Callable[[Sequence[str]], list[str]]
    config_ids: Callable[[Sequence[str]], dict[str, int]] = lambda vocab: {}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One backbone family: how it is built, found on disk, sized and fed.

    Attributes:
      kind: the name configs use (``vit``, ``swin``, ``clip``, ``bert``,
        ``clip_text``).
      name: for messages.
      modality: ``"image"`` or ``"text"`` (its inputs, see the module docstring).
      config_cls: the typed config (``from_hf`` / ``to_hf``, class variables
        ``model_type`` and ``architecture``).
      module_cls: the Flax module, ``module_cls(config, dtype=..., ...)``; it returns
        tokens ``[B, N, D]`` (the output contract of the module docstring).
      name_map: ``(config, add_pooling_layer) -> [TensorMap]``.
      model_types: the ``config.json`` ``model_type`` values read as this
        architecture (the config class's own, and the composite folder's).
      prefixes: name prefixes checkpoint files may use (task models, composites).
      ignore: tensors that may be present and are not used.
      tiny: config fields of a tiny random checkpoint (``write_random_checkpoint``'s
        defaults).
      checkpoints: the Hugging Face checkpoints the configs name; each goes in a
        folder named after its last part (``checkpoints/vit-base-patch16-384``).
      composite: the multi-tower folder this tower also comes in, if any.
      pixel_mean_std: image towers: the normalisation of [0, 1] RGB pixels.
      center_crop: image towers: evaluation images are resized on the short side
        and centre-cropped (CLIP's preprocessing), not resized to the square.
      scaled: image towers: ``(hidden_size, num_layers, image_size) -> config
        fields`` of a small random tower of that width, depth and image side (the
        demos' backbones).
      tokenizer: text towers: their tokenizer files.
    """

    kind: str
    name: str
    modality: str
    config_cls: type
    module_cls: type[nn.Module]
    name_map: Callable[[Any, bool], list[hc.TensorMap]]
    model_types: tuple[str, ...]
    prefixes: tuple[str, ...]
    ignore: tuple[str, ...]
    tiny: Mapping[str, Any]
    checkpoints: tuple[str, ...] = ()
    composite: Composite | None = None
    pixel_mean_std: MeanStd | None = None
    center_crop: bool = False
    scaled: Callable[[int, int, int], dict[str, Any]] | None = None
    tokenizer: TokenizerFiles | None = None

    def dummy_inputs(self, config: Any) -> tuple[Any, ...]:
        """Inputs of ``module.init`` (shapes only): one image, or eight ids and their
        mask."""
        if self.modality == "image":
            shape = (1, *config.image_size, config.num_channels)
            return (jnp.zeros(shape, jnp.float32),)
        ids = jnp.zeros((1, min(8, config.max_position_embeddings)), jnp.int32)
        return (ids, jnp.ones_like(ids))


def _vit_scaled(
    hidden: int, layers: int, image_size: int, **extra: Any
) -> dict[str, Any]:
    # A patch grid of 4 x 4 and one head per 16 channels.
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        intermediate_size=2 * hidden,
        **extra,
        image_size=image_size,
        patch_size=max(1, image_size // 4),
    )


def _swin_scaled(hidden: int, layers: int, image_size: int) -> dict[str, Any]:
    # Two stages of two blocks whatever ``layers``; a window of 1/8 of the image.
    heads = max(1, hidden // 16)
    return dict(
        image_size=image_size,
        patch_size=2,
        embed_dim=hidden // 2,
        depths=(2, 2),
        num_heads=(max(1, heads // 2), heads),
        window_size=max(1, image_size // 8),
    )


_WORDPIECE = TokenizerFiles(
    names=("vocab.txt",),
    default_vocab=default_vocab,
    write=write_wordpiece_files,
    with_words=lambda words: list(dict.fromkeys([*default_vocab(), *words])),
)
_CLIP_BPE = TokenizerFiles(
    names=("vocab.json", "merges.txt"),
    default_vocab=lambda: clip_tokenizer.clip_vocab(DEFAULT_WORDS),
    write=clip_tokenizer.write_bpe_files,
    with_words=lambda words: clip_tokenizer.clip_vocab(
        list(dict.fromkeys([*DEFAULT_WORDS, *words]))
    ),
    config_ids=clip_tokenizer.special_ids,
)


def _clip_model(tower: str, projection: str) -> Composite:
    """A tower of a ``CLIPModel`` folder (``tower`` = "vision" or "text")."""
    return Composite(
        model_type="clip",
        architecture="CLIPModel",
        config_key=f"{tower}_config",
        prefix=f"{tower}_model.",
        shared_fields=("projection_dim",),
        projection=projection,
        scalars=(("logit_scale", 2.6592),),  # log(1 / 0.07), CLIP's initial value
    )


#: Backbone kind -> architecture: the one place a kind is listed.
REGISTRY: dict[str, Architecture] = {
    a.kind: a
    for a in (
        Architecture(
            kind="vit",
            name="ViT",
            modality="image",
            config_cls=ViTConfig,
            module_cls=ViT,
            name_map=vit_name_map,
            model_types=("vit",),
            prefixes=("", "vit."),
            ignore=(*_COMMON_IGNORE, r"^pooler\.", r"^classifier\.", r"^decoder\."),
            tiny=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                image_size=32,
                patch_size=8,
            ),
            checkpoints=(
                "google/vit-base-patch16-224-in21k",
                "google/vit-base-patch16-384",
            ),
            pixel_mean_std=IMAGENET_MEAN_STD,
            scaled=_vit_scaled,
        ),
        Architecture(
            kind="swin",
            name="Swin",
            modality="image",
            config_cls=SwinConfig,
            module_cls=Swin,
            name_map=swin_name_map,
            model_types=("swin",),
            prefixes=("", "swin."),
            ignore=(
                *_COMMON_IGNORE,
                r"\.relative_position_index$",
                r"^classifier\.",
                r"^decoder\.",
            ),
            tiny=dict(
                image_size=32,
                patch_size=2,
                embed_dim=16,
                depths=(2, 2),
                num_heads=(2, 4),
                window_size=4,
            ),
            checkpoints=(
                "microsoft/swin-base-patch4-window7-224",
                "microsoft/swin-base-patch4-window12-384",
            ),
            pixel_mean_std=IMAGENET_MEAN_STD,
            scaled=_swin_scaled,
        ),
        Architecture(
            kind="clip",
            name="CLIP vision",
            modality="image",
            config_cls=CLIPVisionConfig,
            module_cls=CLIPVision,
            name_map=clip_vision_name_map,
            model_types=("clip", "clip_vision_model"),
            prefixes=("", "vision_model."),
            ignore=(
                *_COMMON_IGNORE,
                r"^post_layernorm\.",
                r"^text_model\.",
                r"^text_projection\.",
                r"^visual_projection\.",
                r"^logit_scale$",
            ),
            tiny=dict(
                hidden_size=32,
                intermediate_size=64,
                projection_dim=16,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
            ),
            checkpoints=("openai/clip-vit-large-patch14",),
            composite=_clip_model("vision", "visual_projection"),
            pixel_mean_std=CLIP_MEAN_STD,
            center_crop=True,
            scaled=lambda hidden, layers, size: _vit_scaled(
                hidden, layers, size, projection_dim=hidden
            ),
        ),
        Architecture(
            kind="bert",
            name="BERT",
            modality="text",
            config_cls=BertConfig,
            module_cls=Bert,
            name_map=bert_name_map,
            model_types=("bert",),
            prefixes=("", "bert."),
            ignore=(*_COMMON_IGNORE, r"(^|\.)token_type_ids$", r"^pooler\.", r"^cls\."),
            tiny=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
            ),
            checkpoints=(
                "google-bert/bert-base-uncased",
                "google-bert/bert-base-chinese",
            ),
            tokenizer=_WORDPIECE,
        ),
        Architecture(
            kind="clip_text",
            name="CLIP text",
            modality="text",
            config_cls=CLIPTextConfig,
            module_cls=CLIPText,
            name_map=clip_text_name_map,
            model_types=("clip", "clip_text_model"),
            prefixes=("", "text_model."),
            ignore=(
                *_COMMON_IGNORE,
                r"^vision_model\.",
                r"^text_projection\.",
                r"^visual_projection\.",
                r"^logit_scale$",
            ),
            tiny=dict(
                hidden_size=32,
                intermediate_size=64,
                projection_dim=16,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
            ),
            composite=_clip_model("text", "text_projection"),
            tokenizer=_CLIP_BPE,
        ),
    )
}


def _towers() -> dict[str, tuple[Architecture, ...]]:
    out: dict[str, tuple[Architecture, ...]] = {}
    for arch in REGISTRY.values():
        for model_type in arch.model_types:
            claimed = out.get(model_type, ())
            composite = arch.composite.model_type if arch.composite else None
            if claimed and not (
                composite == model_type
                and all(
                    a.composite and a.composite.model_type == model_type
                    for a in claimed
                )
            ):
                raise ValueError(
                    f"model_type {model_type!r} is claimed by {claimed[0].name} and "
                    f"{arch.name} (only the towers of one composite folder may share "
                    "one)"
                )
            out[model_type] = (*claimed, arch)
    return out


#: ``model_type`` of ``config.json`` -> every architecture that reads it (several for
#: a composite folder: ``"clip"`` -> CLIP vision, CLIP text), in registry order.
TOWERS: dict[str, tuple[Architecture, ...]] = _towers()
#: ``model_type`` -> the architecture a folder is read as when no kind is asked for
#: (a composite's first tower).
ARCHITECTURES: dict[str, Architecture] = {t: a[0] for t, a in TOWERS.items()}


def resolve(model_type: str, kind: str | None = None) -> Architecture:
    """The architecture a folder of ``model_type`` is read as for ``kind`` (None: the
    default of :data:`ARCHITECTURES`).

    Raises:
      ValueError: an unknown ``model_type``, or one that ``kind`` does not read.
    """
    if model_type not in TOWERS:
        raise ValueError(
            f"model_type {model_type!r} is not supported "
            f"(supported: {', '.join(sorted(TOWERS))})"
        )
    if kind is None:
        return ARCHITECTURES[model_type]
    for arch in TOWERS[model_type]:
        if arch.kind == kind:
            return arch
    if kind not in REGISTRY:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(REGISTRY)}")
    raise ValueError(
        f"a {model_type!r} folder holds no {kind} model (expected "
        f"{' or '.join(REGISTRY[kind].model_types)})"
    )


def kinds(modality: str) -> tuple[str, ...]:
    """The kinds of the ``"image"`` or ``"text"`` towers, in registry order."""
    return tuple(k for k, a in REGISTRY.items() if a.modality == modality)


def architecture_of(config: Any) -> Architecture:
    """The architecture of a typed backbone config."""
    for arch in REGISTRY.values():
        if isinstance(config, arch.config_cls):
            return arch
    raise TypeError(f"not a backbone config: {type(config).__name__}")
