"""train.epoch_mode = "official": the padded short last batch equals the unpadded one."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decalign_jax import losses, prototypes, train
from decalign_jax.objective import compute_loss
from xmodal import config as config_lib


def _no_dropout_mosi(**overrides):
    c = config_lib.load_config("configs/mosi.py")
    c.model.attn_dropout = (0.0, 0.0, 0.0)
    for key in ("relu", "res", "embed", "output", "text"):
        c.model[f"{key}_dropout"] = 0.0
    c.model.num_layers = 1  # the losses are what is tested; keep the compile short
    c.loss.beta = 0.05  # every term on (MOSI's HEAD has them all but keep it explicit)
    for k, v in overrides.items():
        section, name = k.split(".")
        c[section][name] = v
    return c


def _batch(b, rng):
    batch = {
        "text": rng.normal(size=(b, 6, 12)).astype(np.float32),
        "audio": rng.normal(size=(b, 6, 5)).astype(np.float32),
        "vision": rng.normal(size=(b, 6, 7)).astype(np.float32),
        "label": rng.uniform(-3, 3, size=b).astype(np.float32),
    }
    batch["label"][:2] = [1.2, 0.8]  # two anchors share a SupCon bin
    return batch


def test_mosi_short_last_batch_padded_equals_unpadded():
    """MOSI's last batch: 4 valid samples (< K = 7 prototypes) padded to B = 32."""
    config = _no_dropout_mosi()
    assert config.loss.num_prototypes == 7 and config.train.batch_size == 32
    rng = np.random.default_rng(0)
    short = _batch(4, rng)
    pad_rows = {k: np.repeat(v[:1], 28, axis=0) for k, v in short.items()}
    padded = {k: np.concatenate([short[k], pad_rows[k] * 3.0]) for k in short}
    padded["valid"] = np.arange(32) < 4
    model = train.build_model(config)
    params = model.init(jax.random.PRNGKey(0), short, train=False)["params"]
    fn = jax.jit(
        jax.value_and_grad(
            functools.partial(compute_loss, model=model, config=config), has_aux=True
        )
    )
    rng_key = jax.random.PRNGKey(1)
    (loss_s, parts_s), grads_s = fn(params, short, rng_key)
    (loss_p, parts_p), grads_p = fn(params, padded, rng_key)
    chex.assert_tree_all_finite((loss_p, parts_p, grads_p))
    for key in ("task", "dec", "hete", "ot", "local", "homo", "ct"):
        assert parts_s[key] != 0, key  # every term is live
    chex.assert_trees_all_close(parts_p, parts_s, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(loss_p, loss_s, rtol=2e-5)
    chex.assert_trees_all_close(grads_p, grads_s, rtol=2e-4, atol=2e-6)


def test_masked_gmm_and_hetero_equal_the_valid_rows_alone():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(12, 5)).astype(np.float32) for _ in range(3)]
    valid = np.zeros(12, bool)
    valid[[0, 3, 4, 7, 8, 11]] = True  # not a prefix: any valid pattern works
    fit = jax.jit(prototypes.fit_diag_gmm, static_argnums=1)
    fit_all = fit(xs[0][valid], 4)
    fit_mask = fit(xs[0], 4, valid=jnp.asarray(valid))
    np.testing.assert_allclose(fit_mask.means, fit_all.means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit_mask.variances, fit_all.variances, rtol=1e-5)
    np.testing.assert_allclose(
        fit_mask.responsibilities[valid], fit_all.responsibilities, atol=1e-6
    )
    hetero = jax.jit(functools.partial(losses.hetero_loss, num_prototypes=4))
    want, aux_w = hetero(tuple(x[valid] for x in xs))
    got, aux_g = hetero(tuple(xs), valid=valid)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(aux_g["plan"], aux_w["plan"], atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5, 7, 8])
def test_gmm_init_rows_equal_the_static_rule(k):
    for n in range(1, 20):
        valid = np.arange(24) < n
        rows = np.asarray(prototypes.gmm_init_rows(jnp.asarray(valid), k))
        np.testing.assert_array_equal(rows, prototypes.gmm_init_indices(n, k))


def test_homo_and_decoupling_masks_equal_the_valid_rows_alone():
    rng = np.random.default_rng(2)
    z = [rng.normal(size=(9, 6)).astype(np.float32) for _ in range(3)]
    valid = np.arange(9) < 5
    homo = jax.jit(losses.homo_loss)
    np.testing.assert_allclose(
        homo(z, valid=valid), homo([a[:5] for a in z]), rtol=1e-5
    )
    s = [rng.normal(size=(9, 4, 3)).astype(np.float32) for _ in range(3)]
    c = [rng.normal(size=(9, 4, 3)).astype(np.float32) for _ in range(3)]
    dec = jax.jit(losses.decoupling_loss)
    np.testing.assert_allclose(
        dec(s, c, valid), dec([a[:5] for a in s], [a[:5] for a in c]), rtol=1e-6
    )
