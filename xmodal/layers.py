"""Fast dropout: counter-based hash masks instead of threefry random bits.

On CPU, ``jax.random.bernoulli`` costs ~13-20 ns per element (threefry), which makes
dropout (attention weights above all) the largest part of a small model's step. A
counter-based hash is a few integer operations per element:

    h = fmix32(fmix32(i * 0x9E3779B1 + s0) ^ s1),   keep = h < round(keep_prob * 2**32)

where ``i`` is the element's index in the GLOBAL array (``lax.iota`` over the full
shape, which the SPMD partitioner offsets per shard, so a mask does not depend on how
the array is sharded) and ``(s0, s1)`` are 32 random bits drawn from the layer's flax
RNG stream (so masks are fresh at every call and step, and reproducible from the seed).
``fmix32`` is MurmurHash3's finaliser, a bijection with full avalanche; two rounds
decorrelate neighbouring indices and nearby seeds (tested in ``tests/test_layers.py``:
keep rate, pair independence, seed independence, bit balance).

``impl="threefry"`` uses ``jax.random.bernoulli`` instead (JAX's default quality).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CPU_MEMORY_SCHEDULER_FLAG",
    "Dropout",
    "cpu_memory_scheduler_enabled",
    "dot_product_attention",
    "hash_bits",
    "keep_mask",
    "warn_if_remat_ineffective",
]

#: XLA:CPU's default scheduler (``xla_cpu_enable_concurrency_optimized_scheduler``,
#: on in jaxlib 0.10) orders independent work for concurrency, not memory: it runs the
#: recomputations of rematerialised blocks all at the start of the backward pass, so
#: ``jax.checkpoint`` saves no memory, and it keeps more activations live than needed.
#: With this flag in ``XLA_FLAGS`` (before JAX starts) the CDDS step at paper sizes
#: needs 24% less memory at about the same speed, and remat then saves another 21%
#: for 28% more time (measured by ``scripts/benchmark.py``, which sets it). GPU / TPU
#: compilers ignore it.
CPU_MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

_GOLDEN = 0x9E3779B1


def cpu_memory_scheduler_enabled() -> bool:
    """True when ``XLA_FLAGS`` turns XLA:CPU's concurrency-optimised scheduler off."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    values = [
        f.split("=", 1)[1].lower() if "=" in f else "true"
        for f in flags
        if f.lstrip("-").split("=", 1)[0]
        == "xla_cpu_enable_concurrency_optimized_scheduler"
    ]
    return bool(values) and values[-1] in ("false", "0")


def warn_if_remat_ineffective(remat: bool) -> bool:
    """Warns (and returns True) when remat is asked for where XLA:CPU undoes it.

    Call after JAX has started (it reads the default backend).
    """
    if not remat or jax.default_backend() != "cpu" or cpu_memory_scheduler_enabled():
        return False
    logging.warning(
        "model.remat=True on CPU saves no memory under XLA:CPU's default scheduler; "
        "start with XLA_FLAGS='%s' to make it effective",
        CPU_MEMORY_SCHEDULER_FLAG,
    )
    return True


def _fmix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def hash_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """32 pseudo-random bits per element of ``shape`` (uint32), keyed by ``rng``."""
    seeds = jax.random.bits(rng, (2,), jnp.uint32)
    size = 1
    for n in shape:
        size *= n
    index = lax.iota(jnp.uint32, size).reshape(shape)
    h = _fmix32(index * jnp.uint32(_GOLDEN) + seeds[0])
    return _fmix32(h ^ seeds[1])


def keep_mask(
    rng: jax.Array, keep_prob: float, shape: tuple[int, ...], *, impl: str = "hash"
) -> jax.Array:
    """Boolean mask, True with probability ``keep_prob`` (static, in (0, 1))."""
    if impl == "threefry":
        return jax.random.bernoulli(rng, keep_prob, shape)
    if impl != "hash":
        raise ValueError(f"dropout impl: expected 'hash' or 'threefry', got {impl!r}")
    threshold = min(round(keep_prob * 2.0**32), 2**32 - 1)
    return hash_bits(rng, shape) < jnp.uint32(threshold)


def _apply(x: jax.Array, rate: float, rng: jax.Array, impl: str) -> jax.Array:
    keep = 1.0 - rate
    mask = keep_mask(rng, keep, x.shape, impl=impl)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """Inverted dropout drawing its mask with :func:`keep_mask` (no draw at rate 0)."""

    rate: float
    impl: str = "hash"
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param(
            "deterministic", self.deterministic, deterministic
        )
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        return _apply(x, self.rate, self.make_rng(self.rng_collection), self.impl)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Any = None,
    *,
    impl: str = "hash",
    **unused: Any,
) -> jax.Array:
    """``flax.linen.dot_product_attention`` with the attention-weight dropout of
    :func:`keep_mask` (pass as ``attention_fn=functools.partial(..., impl=...)``)."""
    del unused
    weights = nn.dot_product_attention_weights(
        query,
        key,
        bias,
        mask,
        broadcast_dropout,
        None,
        0.0,
        True,
        dtype,
        precision,
        module,
    )
    if not deterministic and dropout_rate > 0.0:
        assert dropout_rng is not None
        shape = weights.shape
        if broadcast_dropout:  # one mask for all queries of a head, as flax does
            shape = (*weights.shape[:-2], 1, weights.shape[-1])
        keep = keep_mask(dropout_rng, 1.0 - dropout_rate, shape, impl=impl)
        weights = jnp.where(
            keep, weights / jnp.asarray(1.0 - dropout_rate, weights.dtype), 0.0
        ).astype(weights.dtype)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)
