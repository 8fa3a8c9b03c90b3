"""The CDDS training objective: the loss terms composed with the weights and the
ablation switches (paper sec. 3.4, Table 3; docs/cdds.md, 'Scores and losses' and
'Ablations').

* :func:`objective`: ``L = a_s ramp L_s + a_m L_m + a_f L_f + a_x L_x`` from a score
  matrix and the model's components (the pure terms are :mod:`cdds_jax.losses`);
* :func:`compute_loss`: the model applied to a global batch, the S statistics and the
  scores it trains (:mod:`cdds_jax.kl_statistics`, :mod:`cdds_jax.scores`), then
  :func:`objective`: what ``cdds_jax.train.train_step`` differentiates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from cdds_jax import kl_statistics, losses, semantics
from cdds_jax import model as model_lib
from cdds_jax import scores as scores_lib
from cdds_jax.data import inputs
from cdds_jax.model import CDDSModel

__all__ = [
    "CONTRASTIVE",
    "Objective",
    "ObjectiveOptions",
    "SampledTables",
    "compute_loss",
    "objective",
]

#: ``loss.contrastive`` values.
CONTRASTIVE = ("hinge", "infonce")


class ObjectiveOptions(NamedTuple):
    """The loss weights and ablation switches (static: every field is a Python value).

    Attributes:
      contrastive: ``"hinge"`` or ``"infonce"`` (``CONTRASTIVE``).
      margin: hinge margin.
      temperature: InfoNCE temperature.
      max_violation_after_epochs: hinge sums all violations before this (fractional)
        epoch and keeps the hardest negative from it on; < 0 never switches.
      ramp_epochs: L_s is scaled by ``min(epoch / ramp_epochs, 1)`` (LAPS); <= 0 none.
      a_s, a_m, a_f: weights of L_s, L_m, L_f; L_x gets ``1 - a_f``.
      decouple, modality, integrity, sampling: Table 3's switches (``ablate.*``).
    """

    contrastive: str = "hinge"
    margin: float = 0.2
    temperature: float = 0.05
    max_violation_after_epochs: float = 1.0
    ramp_epochs: float = 1.0
    a_s: float = 1.0
    a_m: float = 1.0
    a_f: float = 0.5
    decouple: bool = True
    modality: bool = True
    integrity: bool = True
    sampling: bool = True

    @classmethod
    def from_config(cls, config: Any) -> ObjectiveOptions:
        """The loss weights (``loss.*``) and Table 3 switches (``ablate.*``) of a CDDS
        config."""
        lc, ab = config.loss, config.ablate
        return cls(
            contrastive=str(lc.contrastive),
            margin=float(lc.margin),
            temperature=float(lc.temperature),
            max_violation_after_epochs=float(lc.max_violation_after_epochs),
            ramp_epochs=float(lc.ramp_epochs),
            a_s=float(lc.a_s),
            a_m=float(lc.a_m),
            a_f=float(lc.a_f),
            decouple=bool(ab.decouple),
            modality=bool(ab.modality),
            integrity=bool(ab.integrity),
            sampling=bool(ab.sampling),
        )

    def term_weights(self) -> tuple[float, float, float, float]:
        """``(a_s, a_m, a_f, a_x)`` after the switches: the weights ``objective`` uses.

        * no decoupler: only L_s (V^s = V; there is nothing to reconstruct from);
        * ``modality=False``: ``a_m = 0``; ``integrity=False``: ``a_f = a_x = 0``;
        * ``sampling=False``: there is no x-semantic component, so L_f takes the whole
          completeness weight (``a_f = 1``, ``a_x = 0``); with sampling ``a_x = 1 - a_f``.
        """
        a_m = self.a_m if self.decouple and self.modality else 0.0
        if not (self.decouple and self.integrity):
            return self.a_s, a_m, 0.0, 0.0
        if not self.sampling:
            return self.a_s, a_m, 1.0, 0.0
        return self.a_s, a_m, self.a_f, 1.0 - self.a_f


class SampledTables(NamedTuple):
    """What the x-semantic components (L_x) are sampled from, for the B matched pairs."""

    q_v: jax.Array  # [B, G, d] image quantile tables
    q_t: jax.Array  # [B, G, d] caption quantile tables
    w_v: jax.Array  # [d, d] image-direction weights
    w_t: jax.Array  # [d, d] text-direction weights


class Objective(NamedTuple):
    """The training objective and its parts (float32 scalars, batch-summed).

    ``total = a_s ramp L_s + a_m L_m + a_f L_f + a_x L_x`` with the weights of
    ``ObjectiveOptions.term_weights``; the parts are unweighted (``l_s`` before the
    ramp) and a part the switches turn off is 0.
    """

    total: jax.Array
    l_s: jax.Array
    l_m: jax.Array
    l_f: jax.Array
    l_x: jax.Array


def objective(
    scores: jax.typing.ArrayLike,
    image_ids: jax.typing.ArrayLike,
    image: Mapping[str, jax.Array],
    text: Mapping[str, jax.Array],
    *,
    w_s: jax.typing.ArrayLike,
    w_m: jax.typing.ArrayLike,
    epoch: jax.typing.ArrayLike,
    options: ObjectiveOptions,
    tables: SampledTables | None = None,
) -> Objective:
    """The CDDS objective on a batch of B (image, caption) pairs (paper eq. total loss).

    ``L = a_s ramp(epoch) L_s + a_m L_m + a_f L_f + (1 - a_f) L_x`` with the ablation
    switches of ``options`` applied by ``ObjectiveOptions.term_weights`` (a term whose
    switch is off is not computed). The x-semantic tokens of L_x are sampled here
    from ``tables``: ``V^x = x_semantic_tokens(V^s, Q^t, W^v)``, ``T^x`` likewise.

    Args:
      scores: ``[B, B]`` scores, ``scores[a, b] = s(image a, caption b)``.
      image_ids: ``[B]`` image id of each pair (shared ids are not negatives).
      image, text: the model's components of each side: ``"x"`` (encoder output, the
        reconstruction target) ``"s"`` (semantic), ``"m"`` (modality), each
        ``[B, N, d]``, and ``"mask"`` ``[B, N]``.
      w_s, w_m: scalar reconstruction weights (learnable).
      epoch: fractional epoch (traced scalar): the L_s ramp and the hinge's switch to
        the hardest negative.
      options: weights and switches (static).
      tables: needed when L_x is on (decouple, integrity and sampling).

    Returns:
      ``Objective``.
    """
    o = options
    if o.contrastive not in CONTRASTIVE:
        raise ValueError(
            f"loss.contrastive: unknown {o.contrastive!r} (one of {CONTRASTIVE})"
        )
    a_s, a_m, a_f, a_x = o.term_weights()
    # A term is computed (and logged) when its switches are on, whatever its weight.
    completeness_on = o.decouple and o.integrity
    x_on = completeness_on and o.sampling
    if x_on and tables is None:
        raise ValueError(
            "L_x is on (decouple, integrity, sampling) but `tables` is None."
        )
    epoch = jnp.asarray(epoch, jnp.float32)

    if o.contrastive == "hinge":
        after = o.max_violation_after_epochs
        hardest = (epoch >= after) if after >= 0 else jnp.zeros((), jnp.bool_)
        l_s = losses.hinge_loss(
            scores, image_ids, margin=o.margin, max_violation=hardest
        )
    else:
        l_s = losses.infonce_loss(scores, image_ids, temperature=o.temperature)
    ramp = jnp.clip(epoch / o.ramp_epochs, 0.0, 1.0) if o.ramp_epochs > 0 else 1.0

    zero = jnp.zeros((), jnp.float32)
    l_m = l_f = l_x = zero
    sides = (image, text)
    if o.decouple and o.modality:
        l_m = sum(jnp.sum(losses.modality_loss(c["m"], c["mask"])) for c in sides)

    def completeness(c: Mapping[str, jax.Array], comp: jax.Array) -> jax.Array:
        return jnp.sum(
            losses.completeness_loss(c["x"], comp, c["m"], w_s, w_m, c["mask"])
        )

    if completeness_on:
        l_f = sum(completeness(c, c["s"]) for c in sides)
    if x_on:
        assert tables is not None
        v_x = semantics.x_semantic_tokens(
            image["s"], image["mask"], tables.q_t, tables.w_v
        )
        t_x = semantics.x_semantic_tokens(
            text["s"], text["mask"], tables.q_v, tables.w_t
        )
        l_x = completeness(image, v_x) + completeness(text, t_x)
    total = a_s * ramp * l_s + a_m * l_m + a_f * l_f + a_x * l_x
    return Objective(total=total, l_s=l_s, l_m=l_m, l_f=l_f, l_x=l_x)


def compute_loss(
    params: Any,
    extra: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    model: CDDSModel,
    config: ml_collections.ConfigDict,
    epoch: jax.Array,
) -> tuple[jax.Array, dict[str, Any]]:
    """The CDDS objective on a global batch of B (image, caption) pairs.

    ``extra`` holds the S statistics of the state (``init_extra``); ``epoch`` is the
    fractional epoch (step / steps_per_epoch), for the L_s ramp and the hinge switch.
    Returns ``(loss, aux)``: aux holds the loss parts, the training score statistics,
    the updated S statistics (``"stats"``, for the state) and the ``(W^v, W^t)`` the
    scores used (``"weights"``; None without sampling).
    """
    options = scores_lib.ScoreOptions.from_config(config)
    img, txt, scalars = model.apply(
        {"params": params},
        batch["image"],
        inputs.text_input(batch),
        batch["text_mask"],
        train=True,
        rngs=model_lib.model_rngs(rng),
    )
    w_s_v, w_s_t, stats = kl_statistics.step_correlation(
        img, txt, extra, config.semantics, sampling=options.sampling
    )
    weights = scores_lib.weights_from_scalars(scalars, w_s_v, w_s_t, options)
    emb = scores_lib.retrieval_embeddings(
        img["s"], img["mask"], txt["s"], txt["mask"], weights, options=options
    )
    score = scores_lib.score_gemm(emb.image, emb.caption)
    tables = None if weights is None else SampledTables(emb.q_v, emb.q_t, *weights)
    obj = objective(
        score,
        batch["image_id"],
        img,
        txt,
        w_s=scalars["w_s"],
        w_m=scalars["w_m"],
        epoch=epoch,
        options=ObjectiveOptions.from_config(config),
        tables=tables,
    )
    parts = {k: v for k, v in obj._asdict().items() if k != "total"}
    aux = {**parts, **scores_lib.score_statistics(score), "stats": stats}
    return obj.total, {**aux, "weights": weights}
