"""SGR / SAF of SGRAF (Diao et al., AAAI 2021): similarity vectors and graph reasoning.

The authors' code (Paranioar/SGRAF, ``model.py``: ``VisualSA``, ``TextSA``,
``GraphReasoning``, ``AttentionFiltration``, ``EncoderSimilarity``, ``SCAN_attention``)
scores one caption against every image in a Python loop. For all pairs ``(i, t)``
(docs/cdds.md §15.3), with l2norm-ed tokens:

1. global vectors by self-attention: ``VisualSA`` (Linear + BatchNorm1d over the
   REGION index + tanh + dropout 0.4 on the regions; Linear + BatchNorm1d + tanh +
   dropout on the mean region; a Linear to one logit per region, softmax over the
   regions, the weighted regions' sum, l2norm) and ``TextSA`` (the same without
   BatchNorm, over the valid words);
2. local alignments: SCAN t2i attention with ``smooth = 9`` and the attended vector
   l2norm-ed (``SCAN_attention``), ``s_l = l2norm(W_loc (c_l - w_l)^2)``; global
   alignment ``s_g = l2norm(W_glo (g_i - g_t)^2)``: ``1 + n_word`` similarity nodes of
   ``sim_dim``;
3. SGR (``module="SGR"``): ``sgr_step`` rounds of ``x <- relu(W_g softmax(W_q x (W_k
   x)^T) x)`` over the valid nodes, then the global node; SAF (``"SAF"``): a sigmoid gate
   per node (Linear, BatchNorm1d(1), sigmoid), l1-normalised over the nodes, the gated
   sum, l2norm;
4. the score ``sigmoid(W_eval x)``.

BatchNorm follows ``torch.nn.BatchNorm1d`` (`TorchBatchNorm1d`): batch statistics in
training (``train=True``, with ``mutable=["batch_stats"]``), running ones otherwise.
SAF's BatchNorm runs once per caption in the authors' loop, so in training its
statistics are per caption over (images, that caption's nodes) and the running
statistics take one momentum step per caption, in caption order, as theirs do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cdds_jax.heads import ops
from cdds_jax.heads.base import PairHead
from cdds_jax.heads.scan import attended_context

__all__ = ["MODULES", "SGRHead", "TorchBatchNorm1d"]

#: ``SGRHead.module`` values.
MODULES = ("SGR", "SAF")

_xavier = nn.initializers.xavier_uniform()


def _dense(features: int, name: str, precision: Any) -> nn.Dense:
    """A Linear with the authors' init (Xavier uniform weight, zero bias)."""
    return nn.Dense(
        features,
        kernel_init=_xavier,
        bias_init=nn.initializers.zeros,
        precision=precision,
        name=name,
    )


class TorchBatchNorm1d(nn.Module):
    """``torch.nn.BatchNorm1d`` over one channel axis, with a validity mask.

    Training: each channel is normalised by the mean and the biased variance of its
    valid entries (over every axis but ``axis`` and ``group_axes``: with group axes the
    statistics are per group), and the running statistics move by ``momentum`` towards
    the batch mean and the UNBIASED variance (torch's rule), one step per group in
    row-major order. Evaluation: the running statistics. ``y = gamma x_hat + beta``.

    Attributes:
      axis: the channel axis of the input.
      group_axes: axes along which statistics are kept apart (one BatchNorm call per
        index in the authors' loop).
      momentum: torch's momentum (0.1: ``running = 0.9 running + 0.1 batch``).
      epsilon: added to the variance (torch's 1e-5).
    """

    axis: int
    group_axes: Sequence[int] = ()
    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """``x`` any shape, ``mask`` broadcastable to it -> normalised ``x``."""
        ndim = x.ndim
        axis = self.axis % ndim
        groups = tuple(sorted(a % ndim for a in self.group_axes))
        c = x.shape[axis]
        gamma = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        beta = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        shape = [1] * ndim
        shape[axis] = c
        if not train:
            mean = ra_mean.value.reshape(shape)
            var = ra_var.value.reshape(shape)
        else:
            reduce = tuple(a for a in range(ndim) if a != axis and a not in groups)
            m = jnp.broadcast_to(mask, x.shape)
            n = jnp.sum(m, axis=reduce, keepdims=True, dtype=jnp.float32)
            mean = jnp.sum(jnp.where(m, x, 0.0), reduce, keepdims=True) / jnp.maximum(
                n, 1.0
            )
            sq = jnp.where(m, jnp.square(x - mean), 0.0)
            var = jnp.sum(sq, reduce, keepdims=True) / jnp.maximum(n, 1.0)
            if not self.is_initializing():
                unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
                ra_mean.value = self._running(ra_mean.value, mean, axis, groups)
                ra_var.value = self._running(ra_var.value, unbiased, axis, groups)
        y = (x - mean) / jnp.sqrt(var + self.epsilon)
        return y * gamma.reshape(shape) + beta.reshape(shape)

    def _running(
        self, old: jax.Array, stat: jax.Array, axis: int, groups: tuple[int, ...]
    ) -> jax.Array:
        """``old [C]`` after one momentum step per group of ``stat`` (keepdims)."""
        keep = sorted((*groups, axis))
        per_group = jnp.moveaxis(
            jnp.squeeze(stat, tuple(a for a in range(stat.ndim) if a not in keep)),
            keep.index(axis),
            -1,
        ).reshape(-1, old.shape[0])  # [G, C], groups in row-major order
        num = per_group.shape[0]
        keep_old = (1.0 - self.momentum) ** jnp.arange(num - 1, -1, -1, jnp.float32)
        new = self.momentum * jnp.sum(keep_old[:, None] * per_group, axis=0)
        return jax.lax.stop_gradient((1.0 - self.momentum) ** num * old + new)


class _SelfAttentionPool(nn.Module):
    """SGRAF ``VisualSA`` (``batch_norm=True``) / ``TextSA``: ``[B, N, d]`` tokens ->
    ``[B, d]`` global vector, the tokens weighted by a self-attention softmax."""

    batch_norm: bool
    dropout_rate: float
    precision: Any

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array, *, train: bool):
        d = tokens.shape[-1]
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        raw_global = ops.masked_mean(tokens, mask[..., None], axis=1)
        local = _dense(d, "embedding_local", self.precision)(tokens)
        glob = _dense(d, "embedding_global", self.precision)(raw_global)
        if self.batch_norm:
            # BatchNorm1d(num_region) on the regions: the region index is the channel.
            local = TorchBatchNorm1d(axis=1, name="bn_local")(
                local, mask[..., None], train=train
            )
            glob = TorchBatchNorm1d(axis=1, name="bn_global")(
                glob, jnp.any(mask, axis=1)[:, None], train=train
            )
        local, glob = drop(jnp.tanh(local)), drop(jnp.tanh(glob))
        logits = _dense(1, "embedding_common", self.precision)(local * glob[:, None])
        weights = ops.masked_softmax(logits[..., 0], mask, axis=1)
        return ops.l2norm(jnp.sum(weights[..., None] * tokens, axis=1))


class _GraphReasoning(nn.Module):
    """One SGR step over the nodes ``[Bi, Bt, N, S]`` (valid nodes ``[.., N]``)."""

    precision: Any

    @nn.compact
    def __call__(self, nodes: jax.Array, mask: jax.Array) -> jax.Array:
        s = nodes.shape[-1]
        query = _dense(s, "graph_query_w", self.precision)(nodes)
        key = _dense(s, "graph_key_w", self.precision)(nodes)
        logits = jnp.einsum("itns,itms->itnm", query, key, precision=self.precision)
        edges = ops.masked_softmax(logits, mask[:, :, None, :], axis=-1)
        mixed = jnp.einsum("itnm,itms->itns", edges, nodes, precision=self.precision)
        out = jax.nn.relu(_dense(s, "sim_graph_w", self.precision)(mixed))
        return jnp.where(mask[..., None], out, 0.0)


class _AttentionFiltration(nn.Module):
    """SAF: ``[Bi, Bt, N, S]`` nodes -> ``[Bi, Bt, S]`` filtered similarity vector."""

    precision: Any

    @nn.compact
    def __call__(self, nodes: jax.Array, mask: jax.Array, *, train: bool):
        gate = _dense(1, "attn_sim_w", self.precision)(nodes)  # [Bi, Bt, N, 1]
        # BatchNorm1d(1) once per caption in the authors' loop: statistics per caption.
        gate = TorchBatchNorm1d(axis=-1, group_axes=(1,), name="bn")(
            gate, mask[..., None], train=train
        )
        gate = jnp.where(mask, jax.nn.sigmoid(gate[..., 0]), 0.0)
        gate = gate / (jnp.sum(jnp.abs(gate), axis=-1, keepdims=True) + ops.AUTHORS_EPS)
        return ops.l2norm(
            jnp.einsum("itn,itns->its", gate, nodes, precision=self.precision)
        )


class SGRHead(PairHead):
    """SGRAF's SGR (or SAF) similarity for all pairs, with its parameters.

    The region-index BatchNorm of ``VisualSA`` fixes the number of image tokens ``P``
    at initialisation (36 regions in the authors' runs), as in their code.

    Attributes:
      module: ``"SGR"`` (default) or ``"SAF"``.
      sim_dim: width of the similarity vectors (256).
      sgr_step: graph reasoning steps (3).
      smooth: ``lambda_softmax`` of the t2i attention (9).
      dropout_rate: of ``VisualSA`` / ``TextSA`` in training (0.4; rng ``dropout``).
      normalize: l2norm the tokens first (SGRAF's encoders end with it).
      precision: of the einsums and Linears (None: the backend default).
    """

    module: str = "SGR"
    sim_dim: int = 256
    sgr_step: int = 3
    smooth: float = 9.0
    dropout_rate: float = 0.4
    normalize: bool = True
    precision: Any = None

    def scores(
        self,
        img: jax.Array,
        img_mask: jax.Array,
        cap: jax.Array,
        cap_mask: jax.Array,
        *,
        train: bool,
    ) -> jax.Array:
        """Scores in ``(0, 1)``. ``train=True`` uses batch statistics and dropout (pass
        ``mutable=["batch_stats"]`` and a ``dropout`` rng)."""
        if self.module not in MODULES:
            raise ValueError(f"`module` must be one of {MODULES}; got {self.module!r}.")
        im, cm = img_mask, cap_mask
        p = self.precision
        rate = self.dropout_rate
        img_glo = _SelfAttentionPool(True, rate, p, name="v_global_w")(
            img, im, train=train
        )
        cap_glo = _SelfAttentionPool(False, rate, p, name="t_global_w")(
            cap, cm, train=train
        )

        context = attended_context(
            img, im, cap, cm, query="words", smooth=self.smooth, precision=p
        )
        context = ops.l2norm(context)  # [Bi, Bt, L, d]
        sim_loc = _dense(self.sim_dim, "sim_tranloc_w", p)(
            jnp.square(context - cap[None])
        )
        sim_loc = ops.l2norm(sim_loc)  # [Bi, Bt, L, S]
        sim_glo = _dense(self.sim_dim, "sim_tranglo_w", p)(
            jnp.square(img_glo[:, None] - cap_glo[None])
        )
        sim_glo = ops.l2norm(sim_glo)  # [Bi, Bt, S]
        nodes = jnp.concatenate([sim_glo[:, :, None], sim_loc], axis=2)
        node_mask = jnp.concatenate([jnp.ones((cm.shape[0], 1), bool), cm], axis=1)
        node_mask = jnp.broadcast_to(node_mask[None], nodes.shape[:3])
        nodes = jnp.where(node_mask[..., None], nodes, 0.0)

        if self.module == "SGR":
            for step in range(self.sgr_step):
                nodes = _GraphReasoning(p, name=f"SGR_module_{step}")(nodes, node_mask)
            vector = nodes[:, :, 0]
        else:
            vector = _AttentionFiltration(p, name="SAF_module")(
                nodes, node_mask, train=train
            )
        return jax.nn.sigmoid(_dense(1, "sim_eval_w", p)(vector)[..., 0])
