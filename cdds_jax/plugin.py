"""Distribution sampling as a plug-in any retrieval head adds (the paper's Table 4;
docs/cdds.md §15.7).

The paper adds its distribution sampling (DS) to VSE++, SCAN, SGR, CHAN and LAPS and
reports +0.4 to +1.1%. Here DS is one Flax module, :class:`DistributionSampling`, that
any head adds beside its own score:

* it owns the learnable soft-threshold multipliers ``alpha_v``, ``alpha_t`` ``[d]``
  (docs/cdds.md §4.2) and, with ``semantics.tau_mode="learned"``, the log-temperature
  ``log_tau`` (§10.4);
* it takes two token sets with their masks (images ``[Bi, P, d]``, captions ``[Bt, L,
  d]``) and the KL matrices ``S^v``, ``S^t`` W is built from, and returns
  :class:`DSOutput`: per-item embeddings whose inner product is the DS score
  ``s_DS(a, b) = cmp(Q^v_a, X^v_b) + cmp(Q^t_b, X^t_a)`` (quantile tables and W,
  exactly ``cdds_jax.scores`` / ``cdds_jax.semantics``, §5-§6), plus the tables and W
  that L_x's x-semantic tokens of the matched pairs are sampled from
  (:func:`x_semantic_tokens`, §5.3, §7.4).

S is a statistic, not a parameter: it comes from the same machinery as CDDS's
(``kl_statistics.step_correlation`` with the run's reading, ``reading.of``; the
dataset sources refreshed at each epoch start by ``dataset_statistics.make_refresh``;
``W = I`` for ``w_source="identity"``), and a head model keeps it in
``TrainState.extra[STATS_KEY]`` (CDDS keeps it as ``extra`` itself). Evaluation builds
W from the stored statistics (``kl_statistics.evaluation_correlation``), never from
the evaluated pairs.

:func:`plugin_loss` puts ``lambda * s_DS`` (``plugin.weight``) on the head's own score
matrix under the head's loss: ``loss(s_head + lambda * s_DS)``. ``lambda = 0`` gives
exactly the head alone (the loss and the gradients of every shared parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cdds_jax import scores, semantics

__all__ = [
    "STATS_KEY",
    "DSOutput",
    "DistributionSampling",
    "combined_scores",
    "enabled",
    "from_config",
    "plugin_loss",
    "x_semantic_tokens",
]

#: Where a head model's train state keeps the plug-in's S statistics:
#: ``TrainState.extra[STATS_KEY]`` (``kl_statistics.init_from_config``'s dict).
STATS_KEY = "ds"


class DSOutput(NamedTuple):
    """What :class:`DistributionSampling` returns for a batch (either side may be
    absent: evaluation embeds images and captions apart).

    ``image @ caption.T`` is the DS score matrix ``[Bi, Bt]`` (:meth:`scores`).
    """

    image: jax.Array | None  # [Bi, E] image embeddings
    caption: jax.Array | None  # [Bt, E] caption embeddings
    q_v: jax.Array | None  # [Bi, G, d] image quantile tables
    q_t: jax.Array | None  # [Bt, G, d] caption quantile tables
    w_v: jax.Array  # [d, d] image-direction weights W^v
    w_t: jax.Array  # [d, d] text-direction weights W^t

    def scores(self) -> jax.Array:
        """``[Bi, Bt]`` float32 DS scores: one GEMM of the embeddings (§6.2)."""
        if self.image is None or self.caption is None:
            raise ValueError("DSOutput.scores needs both the image and caption side")
        return scores.score_gemm(self.image, self.caption)


class DistributionSampling(nn.Module):
    """The distribution-sampling score of docs/cdds.md §4-§6 as a module.

    Parameters: ``alpha_v``, ``alpha_t`` ``[d]`` (init ``alpha_init``) and, with
    ``options.tau_mode == "learned"``, ``log_tau`` (init ``log(options.tau)``).

    Attributes:
      dim: d, the width of the tokens it is given.
      options: the score function (``scores.ScoreOptions``: levels G, table
        comparison, temperature, ``identity_weights`` for ``w_source="identity"``);
        ``options.sampling`` must be True.
      alpha_init: initial soft-threshold multiplier (``semantics.alpha_init``).
    """

    dim: int
    options: scores.ScoreOptions = scores.ScoreOptions()
    alpha_init: float = 1.0

    def setup(self) -> None:
        self.options.validate()
        if not self.options.sampling:
            raise ValueError(
                "DistributionSampling: options.sampling=False has no tables to sample "
                "(the mean-pooled cosine is ablate.sampling of CDDS, not a plug-in)"
            )
        init = nn.initializers.constant(self.alpha_init)
        self.alpha_v = self.param("alpha_v", init, (self.dim,), jnp.float32)
        self.alpha_t = self.param("alpha_t", init, (self.dim,), jnp.float32)
        if self.options.tau_mode == "learned":
            tau0 = nn.initializers.constant(float(np.log(self.options.tau)))
            self.log_tau = self.param("log_tau", tau0, (), jnp.float32)

    def scalars(self) -> dict[str, jax.Array]:
        """``alpha_v``, ``alpha_t`` (and ``log_tau`` when learned)."""
        out = {"alpha_v": self.alpha_v, "alpha_t": self.alpha_t}
        if self.options.tau_mode == "learned":
            out["log_tau"] = self.log_tau
        return out

    def weights(
        self, s_v: jax.typing.ArrayLike, s_t: jax.typing.ArrayLike
    ) -> tuple[jax.Array, jax.Array]:
        """``(W^v, W^t)`` ``[d, d]`` from ``S^v``, ``S^t`` and the learned alpha
        (docs/cdds.md §4.2); ``(I, I)`` with ``options.identity_weights``."""
        out = scores.weights_from_scalars(
            self.scalars(), jnp.asarray(s_v), jnp.asarray(s_t), self.options
        )
        assert out is not None  # sampling is on
        return out

    def __call__(
        self,
        v: jax.Array | None,
        v_mask: jax.Array | None,
        t: jax.Array | None,
        t_mask: jax.Array | None,
        *,
        s_v: jax.typing.ArrayLike,
        s_t: jax.typing.ArrayLike,
    ) -> DSOutput:
        """The DS embeddings of two token sets (pass None for a side to skip it).

        Args:
          v: ``[Bi, P, d]`` image tokens or None; v_mask: ``[Bi, P]``.
          t: ``[Bt, L, d]`` caption tokens or None; t_mask: ``[Bt, L]``.
          s_v, s_t: ``[d, d]`` KL matrices W is built from (training:
            ``kl_statistics.step_correlation``; evaluation:
            ``kl_statistics.evaluation_correlation``; zeros with
            ``identity_weights``).

        Returns:
          :class:`DSOutput`; ``out.scores()`` is ``[Bi, Bt]`` s_DS.
        """
        for name, x in (("v", v), ("t", t)):
            if x is not None and jnp.shape(x)[-1] != self.dim:
                raise ValueError(
                    f"DistributionSampling(dim={self.dim}): `{name}` has width "
                    f"{jnp.shape(x)[-1]} ({jnp.shape(x)})"
                )
        w_v, w_t = self.weights(s_v, s_t)
        emb = scores.retrieval_embeddings(
            v, v_mask, t, t_mask, (w_v, w_t), options=self.options
        )
        return DSOutput(emb.image, emb.caption, emb.q_v, emb.q_t, w_v, w_t)


def x_semantic_tokens(
    out: DSOutput,
    v: jax.typing.ArrayLike,
    v_mask: jax.typing.ArrayLike,
    t: jax.typing.ArrayLike,
    t_mask: jax.typing.ArrayLike,
) -> tuple[jax.Array, jax.Array]:
    """``(V^x, T^x)`` of the B matched pairs ``(v[b], t[b])`` (docs/cdds.md §5.3), what
    L_x compares with the tokens (``losses.completeness_loss``, §7.4).

    ``out`` is :class:`DistributionSampling`'s output for the same batch (both sides).
    Returns ``[B, P, d]`` and ``[B, L, d]`` float32.
    """
    if out.q_v is None or out.q_t is None:
        raise ValueError("x_semantic_tokens needs the tables of both sides")
    if out.q_v.shape[0] != out.q_t.shape[0]:
        raise ValueError(
            f"x_semantic_tokens: matched pairs need as many images as captions; got "
            f"{out.q_v.shape[0]} and {out.q_t.shape[0]}"
        )
    v_x = semantics.x_semantic_tokens(v, v_mask, out.q_t, out.w_v)
    t_x = semantics.x_semantic_tokens(t, t_mask, out.q_v, out.w_t)
    return v_x, t_x


def combined_scores(
    head_scores: jax.typing.ArrayLike,
    ds_scores: jax.typing.ArrayLike | None,
    weight: float,
) -> jax.Array:
    """``s_head + weight * s_DS`` (``[Bi, Bt]`` float32); ``s_head`` when ``ds_scores``
    is None (the plug-in off)."""
    head = jnp.asarray(head_scores, jnp.float32)
    if ds_scores is None:
        return head
    ds = jnp.asarray(ds_scores, jnp.float32)
    if ds.shape != head.shape:
        raise ValueError(
            f"the DS scores {ds.shape} must match the head's scores {head.shape}"
        )
    return head + weight * ds


def plugin_loss(
    loss: Callable[[jax.Array], jax.Array],
    head_scores: jax.typing.ArrayLike,
    out: DSOutput | None,
    *,
    weight: float,
) -> jax.Array:
    """The head's loss on its score plus the plug-in's: ``loss(s_head + weight s_DS)``.

    Args:
      loss: the head's own loss of a ``[B, B]`` score matrix (e.g.
        ``functools.partial(losses.hinge_loss, image_ids=..., margin=...,
        max_violation=...)``).
      head_scores: ``[B, B]`` the head's scores of the batch's pairs.
      out: the plug-in's output for the same batch, or None (the head alone).
      weight: lambda (``plugin.weight``); 0 gives the head's loss exactly.
    """
    return loss(
        combined_scores(head_scores, None if out is None else out.scores(), weight)
    )


def enabled(config: ml_collections.ConfigDict | Any) -> bool:
    """Whether the run adds the plug-in (``plugin.enabled``; never with the CDDS head,
    whose score is distribution sampling already)."""
    pc = config.get("plugin")
    on = bool(pc is not None and pc.enabled)
    head = str(config.model.get("head", "cdds"))
    if on and head == "cdds":
        raise ValueError(
            "config.plugin.enabled=True with model.head='cdds': CDDS's score is "
            "distribution sampling already; pick a head (vse, scan, sgr, chan, laps)"
        )
    return on


def from_config(config: ml_collections.ConfigDict) -> DistributionSampling | None:
    """The plug-in of a head config (``plugin.enabled``), or None.

    Its score follows the run's reading (``semantics.*`` through ``reading.of``: the
    table comparison, ``table_scale``, the temperature, W = I for ``identity``) and
    ``semantics.num_levels``; ``ablate.*`` (CDDS's switches) do not apply.
    """
    if not enabled(config):
        return None
    options = scores.ScoreOptions.from_config(config)._replace(sampling=True)
    return DistributionSampling(
        dim=int(config.model.dim),
        options=options.validate(),
        alpha_init=float(config.semantics.alpha_init),
    )
