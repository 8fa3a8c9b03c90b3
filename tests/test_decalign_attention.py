"""decalign_jax.attention against torch.nn.MultiheadAttention: outputs and init spread."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from decalign_jax.attention import TorchMultiheadAttention


def _torch_mha(dim, heads, params):
    mha = torch.nn.MultiheadAttention(dim, heads, bias=True)
    p = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a)), params)
    with torch.no_grad():
        mha.in_proj_weight.copy_(p["in_proj_kernel"].T)  # ours [D, 3D], torch [3D, D]
        mha.in_proj_bias.copy_(p["in_proj_bias"])
        mha.out_proj.weight.copy_(p["out_proj_kernel"].T)
        mha.out_proj.bias.copy_(p["out_proj_bias"])
    return mha


@pytest.mark.parametrize("same_kv", [True, False])
def test_matches_torch_multihead_attention(same_kv):
    dim, heads, b, t, s = 16, 4, 3, 5, 7
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, t, dim)).astype(np.float32)
    k = rng.normal(size=(b, s, dim)).astype(np.float32)
    v = k if same_kv else rng.normal(size=(b, s, dim)).astype(np.float32)
    mask = np.ones((b, s), bool)
    mask[1, 4:] = False  # padded keys of sample 1
    attn = TorchMultiheadAttention(dim, heads)
    params = attn.init(jax.random.PRNGKey(0), x, k, v, deterministic=True)["params"]
    # Non-zero biases, so their Q / K / V slices are checked too.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params
    )
    kv_v = k if same_kv else jnp.asarray(v)
    kj = jnp.asarray(k)
    ours = jax.jit(
        lambda p, x, k, v, m: attn.apply(
            {"params": p}, x, k, k if same_kv else v, m, deterministic=True
        )
    )(params, x, kj, kv_v, jnp.asarray(mask)[:, None, None, :])
    mha = _torch_mha(dim, heads, params)
    tt = lambda a: torch.tensor(np.asarray(a)).transpose(0, 1)  # torch is [T, B, D]
    want, _ = mha(tt(x), tt(k), tt(v), key_padding_mask=torch.tensor(~mask))
    np.testing.assert_allclose(
        ours, want.transpose(0, 1).detach().numpy(), rtol=1e-5, atol=1e-5
    )


def test_dropout_keeps_expectation_and_is_train_only():
    dim, heads = 8, 2
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, dim))
    attn = TorchMultiheadAttention(dim, heads, dropout_rate=0.5)
    params = attn.init(jax.random.PRNGKey(1), x, x, x, deterministic=True)
    det = attn.apply(params, x, x, x, deterministic=True)
    outs = jax.vmap(
        lambda r: attn.apply(params, x, x, x, deterministic=False, rngs={"dropout": r})
    )(jax.random.split(jax.random.PRNGKey(2), 500))
    assert not np.allclose(outs[0], det)
    np.testing.assert_allclose(jnp.mean(outs, axis=0), det, atol=0.06)


@pytest.mark.parametrize("dim", [64, 32])
def test_init_spread_matches_torch(dim):
    """Std of fresh Q / K / V / out kernels (and zero biases) as torch's init."""
    heads = 8
    x = jnp.zeros((1, 2, dim))
    attn = TorchMultiheadAttention(dim, heads)
    inits = jax.jit(jax.vmap(lambda r: attn.init(r, x, x, x, deterministic=True)))(
        jax.random.split(jax.random.PRNGKey(0), 64)
    )["params"]
    torch.manual_seed(0)
    t_in, t_out = [], []
    for _ in range(64):
        m = torch.nn.MultiheadAttention(dim, heads)
        t_in.append(m.in_proj_weight.detach().numpy().T)  # [D, 3D] as ours
        t_out.append(m.out_proj.weight.detach().numpy())
        assert not m.in_proj_bias.any() and not m.out_proj.bias.any()
    t_in, t_out = np.stack(t_in), np.stack(t_out)
    ours_in = np.asarray(inits["in_proj_kernel"])
    for j in range(3):  # Q, K, V each: xavier of fan_in D, fan_out 3D
        sl = slice(j * dim, (j + 1) * dim)
        want = np.std(t_in[..., sl])
        assert np.std(ours_in[..., sl]) == pytest.approx(want, rel=0.03)
        assert want == pytest.approx(np.sqrt(6 / (4 * dim)) / np.sqrt(3), rel=0.03)
    want_out = np.std(t_out)  # nn.Linear default: U(+-1/sqrt(D)), std 1/sqrt(3 D)
    assert np.std(inits["out_proj_kernel"]) == pytest.approx(want_out, rel=0.03)
    assert want_out == pytest.approx(1 / np.sqrt(3 * dim), rel=0.03)
    assert np.abs(np.asarray(inits["out_proj_kernel"])).max() <= 1 / np.sqrt(dim)
    assert not np.any(inits["in_proj_bias"]) and not np.any(inits["out_proj_bias"])
