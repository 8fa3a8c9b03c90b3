"""The train state: parameters, optimiser state, step, RNG and method statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from flax import struct

__all__ = ["TrainState", "create_sharded"]


class TrainState(struct.PyTreeNode):
    """Everything a resumed run needs besides the data iterator position.

    Attributes:
      step: int32 scalar, number of optimiser updates applied.
      params: the model parameters.
      opt_state: the optax state (includes the host learning-rate factor).
      rng: raw ``uint32[2]`` PRNG key; a step folds in ``step`` so it never reuses noise.
      extra: method statistics that are not parameters (e.g. CDDS's EMA of S).
      tx: the optax transformation (static).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extra: Any
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        params: Any,
        tx: optax.GradientTransformation,
        rng: jax.Array,
        extra: Any = None,
    ) -> TrainState:
        return cls(
            step=jax.numpy.zeros((), jax.numpy.int32),
            params=params,
            opt_state=tx.init(params),
            rng=rng,
            extra={} if extra is None else extra,
            tx=tx,
        )

    def apply_gradients(self, grads: Any, **changes: Any) -> tuple[TrainState, Any]:
        """One optimiser update; returns the new state and the updates (for norms)."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        new = self.replace(
            step=self.step + 1, params=params, opt_state=opt_state, **changes
        )
        return new, updates


def create_sharded(
    init: Callable[..., TrainState],
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[str, Sequence[str | None]]] = (),
    *,
    args: Sequence[Any] = (),
) -> tuple[TrainState, Any]:
    """Runs ``init(*args)`` once, directly into its shardings; returns ``(state, shardings)``.

    The state is first traced abstractly (``jax.eval_shape``), the shardings come from
    the ``(regex, partition)`` rules, and ``init`` is jitted with those output
    shardings: nothing is created on one device and moved afterwards. ``args`` are
    arrays ``init`` reads (pretrained weights), passed as arguments so that they are
    not baked into the program as constants.
    """
    from xmodal import sharding

    abstract = jax.eval_shape(init, *args)
    shardings = sharding.param_shardings(abstract, mesh, rules)
    return jax.jit(init, out_shardings=shardings)(*args), shardings
