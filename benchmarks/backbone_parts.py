"""Which op dominates a backbone step: one encoder layer's parts timed apart, JAX beside
PyTorch, at the shape of the backbone's representative layer.

The parts of a layer (``backbone_cases.layer_shape``: for Swin the windows of its
deepest stage, for BERT the padded sequences with their mask):

- ``attention``: ``softmax(q k^T / sqrt(K) + bias) v`` on ``[R, T, H, K]``
  (``xmodal.backbones.blocks.attention``, the backbones' own path, beside
  ``torch.nn.functional.scaled_dot_product_attention``, which ``transformers`` uses);
- ``dense``: the layer's four GEMMs (QKV ``D -> 3D``, out ``D -> D``, MLP ``D -> F ->
  D``) chained;
- ``norms + activation``: two layer norms on ``[R, T, D]`` and the activation on
  ``[R, T, F]``.

Each part is timed forward + backward (gradients w.r.t. inputs and weights; forward
only for a forward-only backbone) and multiplied by the number of such layers; the rest
of the step (embeddings, patch merging, the other stages) is the step's time minus
these. Used for the rows where JAX is slower than PyTorch or ViT-B's GEMM fraction is
below the target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.backbone_cases import BackboneCase, LayerShape, config_of, layer_shape
from benchmarks.settings import Settings
from benchmarks.timing import side_by_side
from xmodal.backbones.blocks import activation, attention

__all__ = ["PARTS", "dominant", "measure_parts", "side_by_side"]

#: The parts, in the order of the table.
PARTS: tuple[str, ...] = ("attention", "dense", "norms + activation")


def _jax_parts(
    s: LayerShape, rows: int, act: str, forward_only: bool
) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    rng = np.random.default_rng(0)
    k = s.width // s.heads

    def arr(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, np.float32) * 0.1)

    q, kk, v = (arr(rows, s.tokens, s.heads, k) for _ in range(3))
    bias = arr(1, s.heads, s.tokens, s.tokens) if s.masked else None
    x = arr(rows, s.tokens, s.width)
    w_qkv, w_out = arr(s.width, 3 * s.width), arr(s.width, s.width)
    w1, w2 = arr(s.width, s.mlp), arr(s.mlp, s.width)
    hidden = arr(rows, s.tokens, s.mlp)
    g, b = arr(s.width), arr(s.width)
    fn = activation(act)

    def attn(q: Any, kk: Any, v: Any, bias: Any) -> jax.Array:
        return attention(q, kk, v, bias=bias)

    def dense(x: Any, w_qkv: Any, w_out: Any, w1: Any, w2: Any) -> jax.Array:
        t = (x @ w_qkv)[..., : s.width] @ w_out
        return (t @ w1) @ w2

    def layer_norm(x: jax.Array, g: jax.Array, b: jax.Array) -> jax.Array:
        mu = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-6) * g + b

    def norms(x: Any, hidden: Any, g: Any, b: Any) -> tuple[jax.Array, jax.Array]:
        y = layer_norm(layer_norm(x, g, b) + x, g, b)
        return y, fn(hidden)

    def loss_of(f: Callable[..., Any]) -> Callable[..., Any]:
        if forward_only:
            return jax.jit(f)

        def total(*a: Any) -> jax.Array:
            outs = jax.tree_util.tree_leaves(f(*a))
            return sum(jnp.mean(jnp.square(o)) for o in outs)

        nargs = 4 if f is not dense else 5
        return jax.jit(jax.grad(total, argnums=tuple(range(nargs))))

    return {
        "attention": (loss_of(attn), (q, kk, v, bias)),
        "dense": (loss_of(dense), (x, w_qkv, w_out, w1, w2)),
        "norms + activation": (loss_of(norms), (x, hidden, g, b)),
    }


def _torch_parts(
    s: LayerShape, rows: int, act: str, forward_only: bool
) -> dict[str, Callable[[], Any]]:
    import torch
    import torch.nn.functional as F
    from transformers.activations import ACT2FN

    gen = torch.Generator().manual_seed(0)
    k = s.width // s.heads
    grad = not forward_only

    def arr(*shape: int) -> Any:
        return (torch.randn(*shape, generator=gen) * 0.1).requires_grad_(grad)

    q, kk, v = (arr(rows, s.heads, s.tokens, k) for _ in range(3))
    bias = arr(1, s.heads, s.tokens, s.tokens) if s.masked else None
    x = arr(rows, s.tokens, s.width)
    w_qkv, w_out = arr(3 * s.width, s.width), arr(s.width, s.width)
    w1, w2 = arr(s.mlp, s.width), arr(s.width, s.mlp)
    hidden = arr(rows, s.tokens, s.mlp)
    g, b = arr(s.width), arr(s.width)
    fn = ACT2FN[act]

    def run(f: Callable[[], Any], leaves: list[Any]) -> Callable[[], Any]:
        def call() -> Any:
            if forward_only:
                with torch.inference_mode():
                    return f()
            with torch.enable_grad():  # whatever the caller's global grad mode
                outs = f()
                outs = outs if isinstance(outs, tuple) else (outs,)
                sum(o.pow(2).mean() for o in outs).backward()
            for leaf in leaves:
                leaf.grad = None
            return None

        return call

    def norms() -> tuple[Any, Any]:
        y = F.layer_norm(x, (s.width,), g, b, 1e-6) + x
        return F.layer_norm(y, (s.width,), g, b, 1e-6), fn(hidden)

    def dense() -> Any:
        t = F.linear(F.linear(x, w_qkv)[..., : s.width], w_out)
        return F.linear(F.linear(t, w1), w2)

    return {
        "attention": run(
            lambda: F.scaled_dot_product_attention(q, kk, v, attn_mask=bias),
            [q, kk, v] + ([bias] if bias is not None else []),
        ),
        "dense": run(dense, [x, w_qkv, w_out, w1, w2]),
        "norms + activation": run(norms, [x, hidden, g, b]),
    }


def measure_parts(case: BackboneCase, batch: int, settings: Settings) -> dict[str, Any]:
    """Each part of ``case``'s representative layer at ``batch``, JAX beside PyTorch,
    times the number of such layers (seconds per step)."""
    s = layer_shape(case)
    rows = batch * s.rows_per_example
    act = config_of(case).hidden_act
    jax_parts = _jax_parts(s, rows, act, case.forward_only)
    torch_parts = _torch_parts(s, rows, act, case.forward_only)
    out: dict[str, Any] = {
        "layer": {**s.__dict__, "rows": rows},
        "parts": {},
    }
    for name in PARTS:
        fn, args = jax_parts[name]
        compiled = fn.lower(*args).compile()
        calls = {"jax": lambda c=compiled, a=args: c(*a), "torch": torch_parts[name]}
        timing = side_by_side(
            calls,
            settings,
            block={"jax": jax.block_until_ready, "torch": lambda r: r},
        )
        out["parts"][name] = {
            "jax_s": timing["jax"]["median_s"] * s.count,
            "torch_s": timing["torch"]["median_s"] * s.count,
            "reps": timing["jax"]["reps"],
        }
    return out


def dominant(entry: Mapping[str, Any], jax_total_s: float, torch_total_s: float) -> str:
    """The op that explains the row: where JAX is behind, the part with the largest
    JAX - PyTorch gap (or "the rest of the step"); else the largest JAX part."""
    parts = dict(entry["parts"])
    rest_jax = jax_total_s - sum(p["jax_s"] for p in parts.values())
    rest_torch = torch_total_s - sum(p["torch_s"] for p in parts.values())
    parts["rest of the step"] = {"jax_s": rest_jax, "torch_s": rest_torch}
    if jax_total_s > torch_total_s:
        name = max(parts, key=lambda n: parts[n]["jax_s"] - parts[n]["torch_s"])
        p = parts[name]
        return (
            f"{name}: JAX {p['jax_s']:.2f} s vs PyTorch {p['torch_s']:.2f} s "
            f"(+{p['jax_s'] - p['torch_s']:.2f} s)"
        )
    name = max(parts, key=lambda n: parts[n]["jax_s"])
    return f"{name}: {parts[name]['jax_s'] / jax_total_s:.0%} of the JAX step"
