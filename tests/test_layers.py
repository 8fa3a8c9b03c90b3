"""Fast dropout quality, sharding invariance; remat and bf16 options of both models."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax.model import Decoupler
from decalign_jax.model import CrossModalTransformer
from xmodal import layers, sharding

# ----------------------------------------------------------------- hash dropout masks


@functools.partial(jax.jit, static_argnames=("shape", "keep"))
def _mask(rng, shape, keep):
    return layers.keep_mask(rng, keep, shape)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.125])
def test_hash_mask_keep_rate_and_pair_independence(keep):
    n = 1 << 20
    m = np.asarray(_mask(jax.random.PRNGKey(0), (n,), keep))
    sd = np.sqrt(keep * (1 - keep) / n)
    assert abs(m.mean() - keep) < 5 * sd
    # Neighbours (index i, i+1), a power-of-two stride, and a far pair are independent.
    for lag in (1, 1024, n // 2):
        both = np.mean(m[:-lag] & m[lag:])
        sd2 = np.sqrt(keep**2 * (1 - keep**2) / (n - lag))
        assert abs(both - keep**2) < 6 * sd2, lag
    # Rows of a 2-D mask are not copies of each other.
    m2 = np.asarray(_mask(jax.random.PRNGKey(1), (256, 4096), keep))
    corr = np.corrcoef(m2[:-1].ravel().astype(float), m2[1:].ravel().astype(float))[
        0, 1
    ]
    assert abs(corr) < 6 / np.sqrt(m2[1:].size)


def test_hash_masks_of_different_keys_are_independent_and_bits_balanced():
    n = 1 << 20
    keys = jax.random.split(jax.random.PRNGKey(7), 8)
    masks = np.stack([np.asarray(_mask(k, (n,), 0.5)) for k in keys]).astype(float)
    corr = np.corrcoef(masks)
    off_diag = corr[~np.eye(8, dtype=bool)]
    assert np.max(np.abs(off_diag)) < 6 / np.sqrt(n)
    bits = np.asarray(jax.jit(layers.hash_bits, static_argnums=1)(keys[0], (n,)))
    per_bit = [np.mean((bits >> b) & 1) for b in range(32)]
    assert np.max(np.abs(np.asarray(per_bit) - 0.5)) < 6 * 0.5 / np.sqrt(n)


def test_hash_mask_does_not_depend_on_sharding():
    shape = (8, 64, 33)

    def draw(devices):
        mesh = sharding.make_mesh((("data", -1),), devices=devices)
        x = jax.device_put(jnp.ones(shape), sharding.data_sharding(mesh))
        f = jax.jit(
            lambda x, k: layers.Dropout(0.3).apply(
                {}, x, deterministic=False, rngs={"dropout": k}
            ),
            out_shardings=sharding.data_sharding(mesh),
        )
        return np.asarray(f(x, jax.random.PRNGKey(3)))

    one, eight = draw(jax.devices()[:1]), draw(jax.devices())
    np.testing.assert_array_equal(one, eight)
    assert 0.6 < np.mean(one != 0) < 0.8  # keep 0.7, scaled by 1 / 0.7
    np.testing.assert_allclose(one[one != 0], 1 / 0.7, rtol=1e-6)


def test_dropout_rates_zero_and_one_and_threefry():
    x = jnp.ones((4, 5))
    k = {"dropout": jax.random.PRNGKey(0)}
    assert np.all(layers.Dropout(0.0).apply({}, x, deterministic=False, rngs=k) == 1)
    assert np.all(layers.Dropout(1.0).apply({}, x, deterministic=False, rngs=k) == 0)
    assert np.all(layers.Dropout(0.5).apply({}, x, deterministic=True) == 1)
    y = layers.Dropout(0.5, impl="threefry").apply({}, x, deterministic=False, rngs=k)
    assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError, match="dropout impl"):
        layers.keep_mask(jax.random.PRNGKey(0), 0.5, (3,), impl="bogus")


def test_attention_fn_without_dropout_matches_flax():
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 5, 3, 4)) for i in range(3))
    ours = layers.dot_product_attention(q, k, v, deterministic=True)
    ref = jax.nn.dot_product_attention(q, k, v)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- remat and bf16


def _close(ref, other):
    """Leaf-wise equality up to float32 reassociation (remat fuses differently)."""

    def check(a, b):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(
            b, a, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(a).max())
        )

    jax.tree_util.tree_map(check, ref, other)


def _grads(module, variables, args, rngs, **kw):
    def loss(params):
        out = module.apply({**variables, "params": params}, *args, rngs=rngs, **kw)
        out = out if isinstance(out, tuple) else (out,)
        return sum(jnp.sum(jnp.sin(o.astype(jnp.float32))) for o in out)

    return jax.jit(jax.value_and_grad(loss))(variables["params"])


def test_remat_and_bf16_decoupler():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 16))
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
    base = Decoupler(dim=16, num_heads=2, num_samples=2, sigma=0.1)
    rngs = {"noise": jax.random.PRNGKey(4)}
    variables = jax.jit(base.init, static_argnames="train")(
        {"params": jax.random.PRNGKey(1), **rngs}, x, mask, train=True
    )
    ref = _grads(base, variables, (x, mask), rngs, train=True)
    remat = _grads(base.clone(remat=True), variables, (x, mask), rngs, train=True)
    _close(ref, remat)
    low = _grads(base.clone(dtype=jnp.bfloat16), variables, (x, mask), rngs, train=True)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    np.testing.assert_allclose(low[0], ref[0], rtol=0.05)
    assert all(
        np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(low[1])
    )


def test_remat_and_bf16_cross_modal_transformer_with_dropout():
    q = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    ctx = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 16))
    base = CrossModalTransformer(16, 2, 2, 0.2, 0.1, 0.1, 0.1)
    rngs = {"dropout": jax.random.PRNGKey(2)}
    variables = jax.jit(base.init, static_argnames="train")(
        {"params": jax.random.PRNGKey(3), **rngs}, q, ctx, train=False
    )
    ref = _grads(base, variables, (q, ctx), rngs, train=True)
    remat = _grads(base.clone(remat=True), variables, (q, ctx), rngs, train=True)
    # Same dropout masks under remat (the recomputation redraws the same bits).
    _close(ref, remat)
    low = _grads(base.clone(dtype=jnp.bfloat16), variables, (q, ctx), rngs, train=True)
    np.testing.assert_allclose(low[0], ref[0], rtol=0.05, atol=0.5)
    assert all(
        np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(low[1])
    )


def test_remat_recomputes_the_decoupler_blocks_in_the_backward_pass():
    # remat is in effect: the gradient program runs each block's forward matmuls
    # again before the block's backward, those whose outputs the backward reads: q,
    # k, v, the two attention einsums, out and mlp_in (mlp_out's output only feeds the
    # residual sum), 7 per block, 6 blocks. The UNet skip denses are not rematted.
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 16))
    mask = jnp.ones((2, 6), bool)
    rngs = {"noise": jax.random.PRNGKey(4)}
    base = Decoupler(dim=16, num_heads=2, num_samples=2, sigma=0.1)
    variables = jax.eval_shape(
        functools.partial(base.init, train=True),
        {"params": jax.random.PRNGKey(1), **rngs},
        x,
        mask,
    )

    def dots(module):
        def loss(params):
            s, m = module.apply({"params": params}, x, mask, train=True, rngs=rngs)
            return jnp.sum(s**2) + jnp.sum(m**2)

        text = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
        return text.count("stablehlo.dot_general")

    plain, remat = dots(base), dots(base.clone(remat=True))
    assert remat - plain == 6 * 7, (plain, remat)


def test_cpu_memory_scheduler_flag_parsing_and_remat_warning(monkeypatch, caplog):
    flag = layers.CPU_MEMORY_SCHEDULER_FLAG
    # conftest spells the flag out (it runs before any import): the same flag.
    assert layers.cpu_memory_scheduler_enabled()
    for value, enabled in (
        ("", False),
        (f"--foo=1 {flag}", True),
        (f"{flag} --xla_cpu_enable_concurrency_optimized_scheduler=true", False),
        ("--xla_cpu_enable_concurrency_optimized_scheduler", False),
        ("--xla_cpu_enable_concurrency_optimized_scheduler=0", True),
    ):
        monkeypatch.setenv("XLA_FLAGS", value)
        assert layers.cpu_memory_scheduler_enabled() is enabled, value
    monkeypatch.setenv("XLA_FLAGS", "")
    with caplog.at_level("WARNING"):
        assert layers.warn_if_remat_ineffective(True)  # the test backend is the CPU
    assert flag in caplog.text
    assert not layers.warn_if_remat_ineffective(False)
    monkeypatch.setenv("XLA_FLAGS", flag)
    assert not layers.warn_if_remat_ineffective(True)
