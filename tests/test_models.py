"""Model-level tests: the BiGRU against a NumPy loop, masking and noise properties of the
CDDS decoupler, DecAlign shapes / padding-mask option / tiny batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdds_jax.model import CDDSModel, Decoupler, TextGRU
from decalign_jax.model import DecAlignModel


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gru_reference(params, emb, length, reverse):
    """Float64 GRU over the first ``length`` steps (reversed for the backward pass)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    hidden = p["hr"]["kernel"].shape[0]
    h = np.zeros(hidden)
    out = np.zeros((emb.shape[0], hidden))
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        x = emb[t]
        r = _sigmoid(x @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
        z = _sigmoid(x @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
        n = np.tanh(
            x @ p["in"]["kernel"]
            + p["in"]["bias"]
            + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"])
        )
        h = (1 - z) * n + z * h
        out[t] = h
    return out


def test_bigru_matches_numpy_loop_with_padding():
    model = TextGRU(vocab_size=11, word_dim=5, dim=4)
    tokens = jnp.array([[3, 4, 5, 6, 0, 0], [7, 1, 0, 0, 0, 0], [2, 3, 4, 5, 6, 7]])
    mask = tokens > 0
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, mask)["params"]
    out = np.asarray(jax.jit(model.apply)({"params": params}, tokens, mask))
    emb_table = np.asarray(params["embed"]["embedding"], np.float64)
    cells = {"forward": params["gru_forward"], "backward": params["gru_backward"]}
    for b in range(tokens.shape[0]):
        n = int(mask[b].sum())
        emb = emb_table[np.asarray(tokens[b])]
        fwd = _gru_reference(cells["forward"], emb, n, reverse=False)
        bwd = _gru_reference(cells["backward"], emb, n, reverse=True)
        expected = (fwd + bwd) / 2
        expected[n:] = 0.0
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-6)


def test_decoupler_ignores_padded_tokens_and_noise_is_train_only():
    model = Decoupler(dim=8, num_heads=2, num_samples=3, sigma=0.5)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    params = model.init(
        {"params": jax.random.PRNGKey(2), "noise": jax.random.PRNGKey(3)},
        x,
        mask,
        train=True,
    )
    apply = jax.jit(model.apply, static_argnames="train")
    s, m = apply(params, x, mask, train=False)
    assert s.shape == m.shape == (2, 5, 8)
    # Padded tokens (sample 0, positions 3-4) do not influence valid outputs.
    x2 = x.at[0, 3:].set(1e3)
    s2, m2 = apply(params, x2, mask, train=False)
    np.testing.assert_allclose(s2[0, :3], s[0, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m2[0, :3], m[0, :3], rtol=1e-5, atol=1e-5)
    # Evaluation is deterministic; training draws noise from the "noise" stream.
    s_a, _ = apply(params, x, mask, train=True, rngs={"noise": jax.random.PRNGKey(4)})
    s_b, _ = apply(params, x, mask, train=True, rngs={"noise": jax.random.PRNGKey(5)})
    assert not np.allclose(s_a, s_b)
    assert not np.allclose(s_a, s)
    quiet = Decoupler(dim=8, num_heads=2, num_samples=3, sigma=0.0)
    s_q, _ = jax.jit(quiet.apply, static_argnames="train")(params, x, mask, train=True)
    np.testing.assert_allclose(s_q, s, rtol=1e-6, atol=1e-6)


def test_cdds_model_without_decoupling_passes_tokens_through():
    model = CDDSModel(dim=8, num_heads=2, decouple=False)
    images = jnp.ones((2, 3, 5))
    text = jnp.ones((2, 4, 6))
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    params = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(0), images, text, mask, train=True
    )
    img, txt, scalars = jax.jit(model.apply, static_argnames="train")(
        params, images, text, mask, train=True
    )
    np.testing.assert_array_equal(img["s"], img["x"])
    np.testing.assert_array_equal(txt["s"], txt["x"])
    assert float(jnp.abs(txt["x"][0, 2:]).max()) == 0.0  # padded text tokens zeroed
    assert scalars["alpha_v"].shape == (8,)
    assert "image_decoupler" not in params["params"]


def _decalign_batch(b, lengths=(6, 7, 8), dims=(10, 3, 4), valid=None):
    rng = np.random.default_rng(0)
    batch = {
        m: rng.normal(size=(b, t, d)).astype(np.float32)
        for m, t, d in zip(("text", "audio", "vision"), lengths, dims, strict=True)
    }
    batch["audio_lengths"] = np.full(
        (b,), lengths[1] if valid is None else valid, np.int32
    )
    batch["vision_lengths"] = np.full((b,), lengths[2], np.int32)
    return batch


def test_decalign_shapes():
    kernels = (3, 2, 5)
    model = DecAlignModel(
        dim=12, num_heads=2, num_layers=1, kernel_sizes=kernels, pde_dim=6
    )
    batch = _decalign_batch(3)
    params = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(0), batch, train=False
    )
    out = jax.jit(model.apply, static_argnames="train")(params, batch, train=False)
    assert out["output"].shape == (3,)
    for seq, t, k in zip(out["unique"], (6, 7, 8), kernels, strict=True):
        assert seq.shape == (3, t - k + 1, 12)
    assert out["final_rep"].shape == (3, 72)
    assert all(z.shape == (3, 6) for z in out["z"])


def test_decalign_padding_mask_option_ignores_padded_frames():
    batch = _decalign_batch(2, valid=4)  # audio: 4 valid frames of 7
    padded = dict(batch)
    padded["audio"] = batch["audio"].copy()
    padded["audio"][:, 4:] = 50.0
    for mask_on in (True, False):
        model = DecAlignModel(
            dim=8, num_heads=2, num_layers=1, kernel_sizes=(1, 1, 1), pde_dim=8,
            padding_mask=mask_on,
        )  # fmt: skip
        params = jax.jit(model.init, static_argnames="train")(
            jax.random.PRNGKey(0), batch, train=False
        )
        apply = jax.jit(model.apply, static_argnames="train")
        a = apply(params, batch, train=False)["output"]
        b = apply(params, padded, train=False)["output"]
        if mask_on:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        else:  # the official model attends to and averages padded frames
            assert not np.allclose(a, b)


def test_decalign_batch_of_one_with_dropout_is_finite():
    model = DecAlignModel(
        dim=8, num_heads=2, num_layers=1, pde_dim=8, attn_dropout=(0.3, 0.3, 0.3),
        relu_dropout=0.3, res_dropout=0.3, embed_dropout=0.3, output_dropout=0.3,
        text_dropout=0.3,
    )  # fmt: skip
    batch = _decalign_batch(1)
    params = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(0), batch, train=False
    )
    out = model.apply(
        params, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)}
    )
    assert np.isfinite(np.asarray(out["output"])).all()
    with pytest.raises(ValueError, match="shorter than its conv kernel"):
        DecAlignModel(kernel_sizes=(9, 1, 1)).init(
            jax.random.PRNGKey(0), batch, train=False
        )
