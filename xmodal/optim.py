"""Config -> optax chain: Adam(W), learning-rate groups by regex, schedules, clipping.

The chain is ``global-norm clip -> [coupled L2 decay] -> scale_by_adam ->
[decoupled decay] -> lr schedule -> per-group multipliers -> host factor -> -1``:

- ``clip_rule`` (with ``clip_norm`` > 0): ``optax`` (default) is
  ``optax.clip_by_global_norm``: ``g * c / ||g||`` when ``||g|| > c``; ``official`` is
  PyTorch's ``clip_grad_norm_`` (the official DecAlign trainer's, docs/decalign.md
  §5.1): ``g * min(1, c / (||g|| + 1e-6))``. They differ by the 1e-6 (a relative
  ``1e-6 / ||g||`` on every clipped step) and at the boundary (torch scales by
  ``c / (c + 1e-6)`` at ``||g|| = c``); both see the raw gradient, before any decay.
- ``weight_decay`` with ``decoupled_weight_decay=True`` is AdamW (PyTorch ``AdamW``:
  ``p -= lr_group * (adam + wd * p)``); ``False`` is PyTorch ``Adam(weight_decay=...)``,
  the decay added to the gradient *after* clipping, as ``clip_grad_norm_`` sees it.
- ``lr_groups``: ``((regex, multiplier), ...)``; the first regex that matches a
  parameter path (``text_encoder/embed/embedding``) scales its learning rate (and so
  its decoupled decay, as in PyTorch parameter groups).
- ``schedule``: ``constant``, ``step`` (x ``decay_factor`` at each of ``decay_epochs``),
  ``cosine``; optional linear ``warmup_steps``.
- A *host factor* in the optimiser state multiplies the learning rate; drivers change it
  between steps (ReduceLROnPlateau) with :func:`set_lr_factor`. It is checkpointed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

__all__ = [
    "CLIP_RULES",
    "HostFactorState",
    "clip_by_global_norm_torch",
    "get_lr_factor",
    "learning_rate_fn",
    "lr_multipliers",
    "make_optimizer",
    "plateau_update",
    "scale_by_host_factor",
    "set_lr_factor",
]


#: ``clip_rule`` values: ``optax.clip_by_global_norm`` or PyTorch's ``clip_grad_norm_``.
CLIP_RULES: tuple[str, ...] = ("optax", "official")


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """PyTorch's ``clip_grad_norm_(params, max_norm)`` (2-norm over every leaf):
    ``g * min(1, max_norm / (||g|| + 1e-6))``."""

    def update_fn(updates: Any, state: Any, params: Any = None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        updates = jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates)
        return updates, state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


class HostFactorState(NamedTuple):
    """State of :func:`scale_by_host_factor`: the current learning-rate factor."""

    lr_factor: jax.Array


def scale_by_host_factor() -> optax.GradientTransformation:
    """Multiplies updates by a factor held in the state and set from the host."""

    def init_fn(params: Any) -> HostFactorState:
        del params
        return HostFactorState(lr_factor=jnp.ones((), jnp.float32))

    def update_fn(updates: Any, state: HostFactorState, params: Any = None):
        del params
        updates = jax.tree_util.tree_map(
            lambda u: u * state.lr_factor.astype(u.dtype), updates
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def get_lr_factor(opt_state: Any) -> float:
    """The host learning-rate factor stored in ``opt_state``."""
    return float(optax.tree_utils.tree_get(opt_state, "lr_factor"))


def set_lr_factor(opt_state: Any, factor: float) -> Any:
    """A copy of ``opt_state`` with the host learning-rate factor set to ``factor``."""
    current = optax.tree_utils.tree_get(opt_state, "lr_factor")
    value = jnp.asarray(factor, jnp.float32)
    if isinstance(current, jax.Array):
        value = jax.device_put(value, current.sharding)
    return optax.tree_utils.tree_set(opt_state, lr_factor=value)


def lr_multipliers(params: Any, groups: Sequence[tuple[str, float]]) -> Any:
    """Per-leaf learning-rate multipliers (a tree of Python floats) from regex groups."""
    compiled = [(re.compile(pattern), float(mult)) for pattern, mult in groups]

    def leaf_mult(path: Sequence[Any], leaf: Any) -> float:
        del leaf
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        for pattern, mult in compiled:
            if pattern.search(name):
                return mult
        return 1.0

    return jax.tree_util.tree_map_with_path(leaf_mult, params)


def _scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    def update_fn(updates: Any, state: Any, params: Any = None):
        del params
        return jax.tree_util.tree_map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update_fn)


def learning_rate_fn(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int
) -> Callable[[jax.Array], jax.Array]:
    """The base learning-rate schedule (without group multipliers / host factor)."""
    base = float(cfg.lr)
    kind = cfg.get("schedule", "constant")
    if kind == "constant":
        schedule = optax.constant_schedule(base)
    elif kind == "step":
        boundaries = {
            int(e * steps_per_epoch): float(cfg.decay_factor)
            for e in cfg.decay_epochs
            if e * steps_per_epoch > 0
        }
        schedule = optax.piecewise_constant_schedule(base, boundaries)
    elif kind == "cosine":
        total = int(cfg.total_epochs * steps_per_epoch)
        schedule = optax.cosine_decay_schedule(base, max(total, 1))
    else:
        raise ValueError(f"optim.schedule: unknown schedule {kind!r}")
    warmup = int(cfg.get("warmup_steps", 0))
    if warmup > 0:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, base, warmup), schedule], [warmup]
        )
    return schedule


def make_optimizer(
    cfg: ml_collections.ConfigDict, params: Any, *, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Builds the optax chain described in the module docstring from ``cfg``.

    Fields of ``cfg``: ``lr``, ``b1``, ``b2``, ``eps``, ``weight_decay``,
    ``decoupled_weight_decay``, ``clip_norm`` (0 = off), ``clip_rule`` (``optax`` |
    ``official``; default ``optax``), ``lr_groups``, ``schedule`` (+ ``decay_epochs``,
    ``decay_factor`` / ``total_epochs``), ``warmup_steps``.
    """
    parts: list[optax.GradientTransformation] = []
    rule = cfg.get("clip_rule", "optax")
    if rule not in CLIP_RULES:
        raise ValueError(
            f"optim.clip_rule: expected one of {list(CLIP_RULES)}, got {rule!r}"
        )
    if cfg.get("clip_norm", 0.0):
        clip = (
            optax.clip_by_global_norm if rule == "optax" else clip_by_global_norm_torch
        )
        parts.append(clip(float(cfg.clip_norm)))
    weight_decay = float(cfg.get("weight_decay", 0.0))
    decoupled = bool(cfg.get("decoupled_weight_decay", True))
    if weight_decay and not decoupled:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(
        optax.scale_by_adam(
            b1=float(cfg.get("b1", 0.9)),
            b2=float(cfg.get("b2", 0.999)),
            eps=float(cfg.get("eps", 1e-8)),
        )
    )
    if weight_decay and decoupled:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_schedule(learning_rate_fn(cfg, steps_per_epoch)))
    groups = tuple(cfg.get("lr_groups", ()))
    if groups:
        parts.append(_scale_by_tree(lr_multipliers(params, groups)))
    parts.append(scale_by_host_factor())
    parts.append(optax.scale(-1.0))
    return optax.chain(*parts)


def plateau_update(
    state: dict[str, Any] | None,
    value: float,
    *,
    mode: str,
    patience: int,
    factor: float,
    threshold: float = 1e-4,
) -> dict[str, Any]:
    """One epoch of PyTorch ``ReduceLROnPlateau`` (relative threshold, no cooldown).

    ``state`` is a JSON-able dict (kept in the checkpoint metadata) with ``best``,
    ``bad_epochs`` and ``lr_factor``; pass None the first time. A value is better when
    it beats ``best`` by the relative ``threshold``; after more than ``patience`` bad
    epochs the factor is multiplied by ``factor`` and the count resets. Apply the
    returned ``lr_factor`` with :func:`set_lr_factor`.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
    state = dict(state or {"best": None, "bad_epochs": 0, "lr_factor": 1.0})
    best = state["best"]
    if best is None:
        better = True
    elif mode == "min":  # exactly torch's rule, including for negative values
        better = value < best * (1.0 - threshold)
    else:
        better = value > best * (1.0 + threshold)
    if better:
        state["best"], state["bad_epochs"] = float(value), 0
    else:
        state["bad_epochs"] += 1
    if state["bad_epochs"] > patience:
        state["lr_factor"] *= factor
        state["bad_epochs"] = 0
    return state
