"""The jitted train step as every driver runs it, and the metrics every step logs.

A method writes ``train_step(state, batch) -> (state, metrics)`` as a pure function;
:func:`jit_train_step` compiles it with the state's shardings in and out, the batch
split over the mesh, the metrics replicated and the state donated (an in-place update
is several times faster than writing a fresh copy). :func:`apply_update` is the common
tail of a step: one optimiser update plus the norms and learning rate to log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from xmodal import optim, sharding
from xmodal.state import TrainState

__all__ = ["apply_update", "jit_train_step"]


def jit_train_step(
    step_fn: Callable[[TrainState, Any], tuple[TrainState, Any]],
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, Any], tuple[TrainState, Any]]:
    """``step_fn`` jitted with explicit shardings and the state donated.

    The benchmark times this same function, so its numbers are the driver's.
    """
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, sharding.data_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def apply_update(
    state: TrainState,
    grads: Any,
    *,
    optim_config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    extra: Any = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser update; returns the new state and its norms and learning rate.

    Metrics: ``grad_norm``, ``param_norm`` (before the update), ``update_norm`` and
    ``lr`` (the schedule's value times the host plateau factor, before group
    multipliers).
    """
    changes = {} if extra is None else {"extra": extra}
    new_state, updates = state.apply_gradients(grads, **changes)
    schedule = optim.learning_rate_fn(optim_config, steps_per_epoch)
    metrics = {
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        "update_norm": optax.tree.norm(updates),
        "lr": schedule(state.step)
        * optax.tree_utils.tree_get(state.opt_state, "lr_factor"),
    }
    return new_state, metrics
