"""A retrieval head on the project's encoders, with or without the distribution-sampling
plug-in: the models of the Table 4 analogue (docs/cdds.md §15.7).

``model.head`` picks the score: ``cdds`` (the default) is :class:`~cdds_jax.model.CDDSModel`;
any name of ``cdds_jax.heads.HEADS`` is a :class:`HeadModel`: the encoders of
docs/cdds.md §3.1 / §3.4 (stored features or backbones through ``image_proj``; stored
features, the BiGRU or a text backbone; no decoupler: the published heads have none)
whose tokens the head scores, every image with every caption. With ``plugin.enabled``
the model also holds :class:`~cdds_jax.plugin.DistributionSampling`, fed the same
tokens, and the trained score is ``s_head + plugin.weight * s_DS``.

Each head's module fields and published loss settings live in ``config.heads.<name>``
(:func:`head_fields`, :class:`HeadLoss`); choosing the head chooses its section, so a
command-line ``--config.model.head=chan`` trains with CHAN's margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cdds_jax import heads, plugin
from cdds_jax.model import TokenEncoders
from cdds_jax.plugin import DistributionSampling, DSOutput

__all__ = [
    "HEAD_NAMES",
    "LOSS_FIELDS",
    "HeadLoss",
    "HeadModel",
    "build_head",
    "head_fields",
    "head_name",
    "is_head",
    "method_name",
    "plugin_record",
    "uses_sampling",
]

#: ``model.head`` values: the CDDS model or a Table 4 head.
HEAD_NAMES: tuple[str, ...] = ("cdds", *heads.HEADS)
#: The fields of a ``config.heads.<name>`` section that set the loss, not the module.
LOSS_FIELDS = ("margin", "max_violation_after_epochs", "ramp_epochs")
#: LAPS's ratios by image backbone (its README): ``(sparse_ratio, aggr_ratio)``.
_LAPS_RATIOS = {"swin": (0.8, 0.6)}
_LAPS_DEFAULT = (0.5, 0.4)  # ViT, and anything else (regions, CLIP)
#: How logs and results name each head.
_TITLES = {"vse": "VSE++", "scan": "SCAN", "sgr": "SGR", "chan": "CHAN", "laps": "LAPS"}


def head_name(config: ml_collections.ConfigDict | Any) -> str:
    """``model.head``, checked (``cdds`` when the config has no such field)."""
    name = str(config.model.get("head", "cdds"))
    if name not in HEAD_NAMES:
        raise ValueError(
            f"config.model.head: expected one of {list(HEAD_NAMES)}, got {name!r}"
        )
    return name


def is_head(config: ml_collections.ConfigDict | Any) -> bool:
    """Whether the run scores with a Table 4 head (``model.head != "cdds"``)."""
    return head_name(config) != "cdds"


def head_fields(
    config: ml_collections.ConfigDict, image_kind: str = "features"
) -> dict[str, Any]:
    """The module fields of the configured head (``config.heads.<name>`` without
    ``LOSS_FIELDS``). LAPS's ratios left unset take its README's values for the image
    backbone (Swin 0.8 / 0.6, otherwise ViT's 0.5 / 0.4); ``num_patches`` 0 = the
    number of spatial tokens."""
    name = head_name(config)
    section = config.heads[name].to_dict()
    fields = {k: v for k, v in section.items() if k not in LOSS_FIELDS}
    if name == "laps":
        sparse, aggr = _LAPS_RATIOS.get(image_kind, _LAPS_DEFAULT)
        fields["sparse_ratio"] = fields.get("sparse_ratio") or sparse
        fields["aggr_ratio"] = fields.get("aggr_ratio") or aggr
        fields["num_patches"] = fields.get("num_patches") or None
    return fields


def method_name(config: ml_collections.ConfigDict) -> str:
    """The run's name in logs and results: ``CDDS``, or the head's (``SCAN``,
    ``SAF`` for SGRAF's SAF module, ...) with `` + DS`` when the plug-in is on."""
    name = head_name(config)
    if name == "cdds":
        return "CDDS"
    title = _TITLES[name]
    if name == "sgr" and config.heads.sgr.module == "SAF":
        title = "SAF"
    return title + (" + DS" if plugin.enabled(config) else "")


def plugin_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The plug-in as ``results.json`` stores it: ``{"enabled", "weight"}``."""
    on = plugin.enabled(config)
    return {"enabled": on, "weight": float(config.plugin.weight) if on else None}


def uses_sampling(config: ml_collections.ConfigDict) -> bool:
    """Whether the run computes a distribution-sampling score (and so S statistics):
    CDDS unless ``ablate.sampling=False``; a head with the plug-in."""
    if is_head(config):
        return plugin.enabled(config)
    return bool(config.ablate.sampling)


def build_head(config: ml_collections.ConfigDict, image_kind: str) -> nn.Module:
    """The configured head module (``cdds_jax.heads.make_head``)."""
    return heads.make_head(head_name(config), **head_fields(config, image_kind))


class HeadLoss(NamedTuple):
    """A head's loss settings (``config.heads.<name>``): the VSE++ hinge of
    ``losses.hinge_loss`` with its published margin, the epoch from which only the
    hardest negative counts (0: from the start, VSE++ / SCAN / SGRAF; 1: after one
    epoch of all violations, CHAN / LAPS; -1: never) and LAPS's linear ramp
    (``ramp_epochs``; 0: none)."""

    margin: float
    max_violation_after_epochs: float
    ramp_epochs: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> HeadLoss:
        section = config.heads[head_name(config)]
        return cls(*(float(section[k]) for k in LOSS_FIELDS))


class HeadModel(TokenEncoders):
    """The encoders, a retrieval head and optionally the distribution-sampling plug-in.

    Parameters: the encoders' (``image_proj``, ``text_proj`` / ``text_gru``, the
    backbones), ``head/...`` (SGR's and LAPS's; VSE++, SCAN and CHAN have none) and
    ``plugin/...`` (``alpha_v``, ``alpha_t``, ``log_tau``). SGR / SAF keep BatchNorm
    statistics in the ``batch_stats`` collection (``batch_stats/head/...``).

    Methods (for ``model.apply(..., method=...)``):

    * ``__call__(images, text, text_mask, train)`` -> ``(img, txt, {})``: the token
      dicts (``s`` the tokens, ``mask``), as ``CDDSModel`` returns them (so the
      dataset pass of ``cdds_jax.dataset_statistics`` reads both models alike);
    * ``scores(img, txt, train)`` -> ``[Bi, Bt]`` the head's scores of every image with
      every caption;
    * ``sample(img, txt, s_v, s_t)`` -> the plug-in's :class:`~cdds_jax.plugin.DSOutput`
      (either dict may be None);
    * ``initialize(images, text, text_mask)``: every parameter (``model.init``).

    Attributes (besides those of :class:`~cdds_jax.model.TokenEncoders`):
      head: the head module (``cdds_jax.heads.HEADS``).
      plugin: the plug-in, or None.
    """

    head: nn.Module | None = None
    plugin: DistributionSampling | None = None

    def __call__(
        self, images: jax.Array, text: jax.Array, text_mask: jax.Array, *, train: bool
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
        img = self.encode_image(images, train=train)
        txt = self.encode_text(text, text_mask, train=train)
        return img, txt, {}

    def scores(
        self,
        img: Mapping[str, jax.Array],
        txt: Mapping[str, jax.Array],
        *,
        train: bool,
    ) -> jax.Array:
        """The head's ``[Bi, Bt]`` scores of the token dicts (docs/cdds.md §15.1)."""
        if self.head is None:
            raise ValueError("HeadModel needs a head")
        return self.head(img["s"], img["mask"], txt["s"], txt["mask"], train=train)

    def sample(
        self,
        img: Mapping[str, jax.Array] | None,
        txt: Mapping[str, jax.Array] | None,
        s_v: jax.Array,
        s_t: jax.Array,
    ) -> DSOutput:
        """The plug-in's output for the token dicts (None skips a side)."""
        if self.plugin is None:
            raise ValueError("HeadModel.sample: the model has no plug-in")
        v, vm = (None, None) if img is None else (img["s"], img["mask"])
        t, tm = (None, None) if txt is None else (txt["s"], txt["mask"])
        return self.plugin(v, vm, t, tm, s_v=s_v, s_t=s_t)

    def initialize(
        self, images: jax.Array, text: jax.Array, text_mask: jax.Array
    ) -> jax.Array:
        """Creates every variable: encoders, head (evaluation mode) and plug-in."""
        img, txt, _ = self(images, text, text_mask, train=False)
        out = self.scores(img, txt, train=False)
        if self.plugin is not None:
            zeros = jnp.zeros((self.dim, self.dim), jnp.float32)
            out = out + self.sample(img, txt, zeros, zeros).scores()
        return out
