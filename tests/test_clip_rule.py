"""``optim.clip_rule``: optax's global-norm clip and PyTorch's ``clip_grad_norm_``,
against a float64 NumPy reference (and torch itself) under ``jax.jit``."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax
import pytest
import torch

from xmodal import optim


def _grads(norm: float, seed: int = 0) -> dict:
    """A gradient tree of global 2-norm ``norm``."""
    rng = np.random.default_rng(seed)
    g = {"a": rng.normal(size=(3, 4)), "b": {"c": rng.normal(size=(5,))}}
    total = np.sqrt(sum(np.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
    return jax.tree_util.tree_map(lambda x: (x * norm / total).astype(np.float32), g)


def _reference_clip(g, max_norm: float, rule: str):
    """torch: ``g * min(1, c / (n + 1e-6))``; optax: ``g * c / n`` when ``n > c``."""
    n = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in jax.tree_util.tree_leaves(g)))
    if rule == "official":
        scale = min(1.0, max_norm / (n + 1e-6))
    else:
        scale = max_norm / n if n > max_norm else 1.0
    return jax.tree_util.tree_map(lambda x: np.float64(x) * scale, g)


def _assert_trees_close(ours, ref, rtol: float = 1e-6) -> None:
    for a, b in zip(
        jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=0)


# A small bound makes the rules differ visibly (by 1e-6 / ||g|| ~ 1e-3 when clipping):
# 2.5 c clips; 0.3 c does not; at c only torch's rule scales (by c / (c + 1e-6)).
C = 1e-3


@pytest.mark.parametrize("norm", [2.5 * C, 0.3 * C, C])
@pytest.mark.parametrize("rule", optim.CLIP_RULES)
def test_clip_rule_matches_reference(rule, norm):
    g = _grads(norm)
    want = _reference_clip(g, C, rule)
    clip = (
        optim.clip_by_global_norm_torch(C)
        if rule == "official"
        else optax.clip_by_global_norm(C)
    )
    clipped, _ = jax.jit(clip.update)(g, clip.init(g))
    _assert_trees_close(clipped, want)
    other = "optax" if rule == "official" else "official"
    differ = not np.allclose(
        clipped["a"], _reference_clip(g, C, other)["a"], rtol=1e-4, atol=0
    )
    assert differ == (norm >= C)  # the test tells the rules apart
    # Through make_optimizer: Adam's first step is -lr * g_c / (|g_c| + eps) (bias
    # corrections cancel); eps = 1 keeps it linear enough in g_c to see the rule.
    cfg = ml_collections.ConfigDict(
        dict(lr=1.0, eps=1.0, clip_norm=C, clip_rule=rule, weight_decay=0.0)
    )
    tx = optim.make_optimizer(cfg, g, steps_per_epoch=1)
    updates, _ = jax.jit(tx.update)(g, tx.init(g), g)
    _assert_trees_close(
        updates, jax.tree_util.tree_map(lambda x: -x / (np.abs(x) + 1.0), want)
    )
    if rule == "official":  # and torch itself
        params = []
        for x in jax.tree_util.tree_leaves(g):
            p = torch.zeros(x.shape, requires_grad=True)
            p.grad = torch.tensor(np.asarray(x))
            params.append(p)
        torch.nn.utils.clip_grad_norm_(params, C)
        _assert_trees_close(
            jax.tree_util.tree_leaves(clipped), [p.grad.numpy() for p in params]
        )


def test_unknown_clip_rule_is_refused():
    cfg = ml_collections.ConfigDict(dict(lr=1.0, clip_norm=1.0, clip_rule="torch"))
    with pytest.raises(ValueError, match=r"optim.clip_rule: expected one of"):
        optim.make_optimizer(cfg, _grads(1.0), steps_per_epoch=1)
