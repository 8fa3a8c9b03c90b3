"""The backbones the ``backbones`` section measures, per mode, and how each is built
twice: as the project's Flax module and as ``transformers``' PyTorch model.

Both are random initialisations of one config (ours, ``xmodal.backbones``; the PyTorch
model from its ``to_hf()`` dict, the ``config.json`` transformers reads), so the two
frameworks run the same architecture at the same shapes; nothing is downloaded. Dropout
is off in both (JAX ``deterministic=True``, PyTorch ``eval()``): the rows compare the
arithmetic, not the random number generators.

Also here: the analytical model FLOPs of each backbone (every fraction of the GEMM rate
divides them), the representative layer of each (``layer_shape``, for the op breakdown
of ``benchmarks.backbone_parts``), and the inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.settings import Settings
from xmodal.backbones import REGISTRY, from_config

__all__ = [
    "CONFIG_CLASSES",
    "BackboneCase",
    "LayerShape",
    "cases_for",
    "config_of",
    "jax_step",
    "layer_shape",
    "model_flops",
    "numpy_inputs",
    "torch_step",
]

#: ``BackboneCase.kind`` -> the typed config of ``xmodal.backbones`` (the registry's).
CONFIG_CLASSES: dict[str, type] = {k: a.config_cls for k, a in REGISTRY.items()}


@dataclasses.dataclass(frozen=True)
class BackboneCase:
    """One backbone at the batch sizes it is measured at.

    ``fields`` are the config's fields (the rest: the config's defaults);
    ``option_batches`` the batches of the ``bfloat16`` / remat rows; ``text_tokens``
    BERT's L (ids incl. [CLS] / [SEP], padded, lengths uniform in ``[L / 2, L]``).
    """

    name: str
    kind: str  # "vit" | "swin" | "clip" | "bert"
    fields: tuple[tuple[str, Any], ...]
    batches: tuple[int, ...]
    option_batches: tuple[int, ...]
    forward_only: bool = False
    text_tokens: int = 0


def _full(accelerator: bool) -> tuple[BackboneCase, ...]:
    # CPU: B 8 and 32 (Swin-B 384 and CLIP ViT-L/14 at B 8 only, and their bf16 /
    # remat rows not run: one B 32 call of either takes minutes per framework on 2
    # cores, and a run must stay within ~15 minutes); accelerators up to 128.
    big = (8, 32, 128) if accelerator else (8, 32)
    heavy = (8, 32, 128) if accelerator else (8,)
    opt = (32,) if accelerator else (8,)
    heavy_opt = opt if accelerator else ()
    return (
        BackboneCase("ViT-B/16 224", "vit", (), big, opt),
        BackboneCase(
            "Swin-B 384 (window 12)",
            "swin",
            (
                ("image_size", 384),
                ("embed_dim", 128),
                ("depths", (2, 2, 18, 2)),
                ("num_heads", (4, 8, 16, 32)),
                ("window_size", 12),
                ("drop_path_rate", 0.0),
            ),
            heavy,
            heavy_opt,
        ),
        BackboneCase(
            "CLIP ViT-L/14 224 (forward)",
            "clip",
            (
                ("hidden_size", 1024),
                ("intermediate_size", 4096),
                ("num_hidden_layers", 24),
                ("num_attention_heads", 16),
                ("patch_size", 14),
            ),
            heavy,
            heavy_opt,
            forward_only=True,
        ),
        BackboneCase("BERT-base, L 50", "bert", (), big, opt, text_tokens=50),
    )


def _scaled(
    batches: tuple[int, ...], width: int, layers: int
) -> tuple[BackboneCase, ...]:
    """The four architectures at a reduced width and depth (quick and smoke modes)."""
    heads = max(2, width // 64)
    vit = (("hidden_size", width), ("num_hidden_layers", layers),
           ("num_attention_heads", heads), ("intermediate_size", 4 * width))  # fmt: skip
    small = 64 if width < 64 else 224
    return (
        BackboneCase(
            f"ViT {small} (width {width}, {layers} layers)",
            "vit",
            (*vit, ("image_size", small), ("patch_size", 16)),
            batches,
            batches[:1],
        ),
        BackboneCase(
            f"Swin {small} (embed {width // 4}, depths 1-1-{layers}-1)",
            "swin",
            (
                ("image_size", small),
                ("embed_dim", max(8, width // 4)),
                ("depths", (1, 1, layers, 1)),
                ("num_heads", (1, 2, 2, 4)),
                ("window_size", 7 if small > 64 else 2),
                ("drop_path_rate", 0.0),
            ),
            batches,
            batches[:1],
        ),
        BackboneCase(
            f"CLIP vision {small} (width {width}, {layers} layers, forward)",
            "clip",
            (*vit, ("image_size", small), ("patch_size", 16)),
            batches,
            batches[:1],
            forward_only=True,
        ),
        BackboneCase(
            f"BERT (width {width}, {layers} layers), L 16",
            "bert",
            (*vit, ("vocab_size", 1000), ("max_position_embeddings", 64)),
            batches,
            batches[:1],
            text_tokens=16,
        ),
    )


def cases_for(settings: Settings, accelerator: bool) -> tuple[BackboneCase, ...]:
    """The backbones of this mode; the full mode's batches depend on the platform."""
    if settings.mode == "full":
        return _full(accelerator)
    if settings.mode == "quick":
        return _scaled((4, 8), 192, 4)
    return _scaled((2, 4), 32, 1)


def config_of(case: BackboneCase) -> Any:
    """The case's typed config (``xmodal.backbones``)."""
    return CONFIG_CLASSES[case.kind](**dict(case.fields))


# -- FLOPs ------------------------------------------------------------------------------


def _layer(tokens: int, width: int, mlp: int, keys: int | None = None) -> float:
    """Forward FLOPs of one encoder layer on ``tokens`` rows: QKV + out + MLP denses and
    the two attention products over ``keys`` keys (default: all tokens)."""
    keys = tokens if keys is None else keys
    return tokens * (8 * width * width + 4 * width * mlp) + 4 * tokens * keys * width


def model_flops(case: BackboneCase) -> float:
    """Analytical FLOPs per example: forward (``forward_only``) or forward + backward
    (3x the forward; the patch embedding 2x, its input is data; embedding lookups 0).

    Counted: every dense layer, both attention products, the patch embedding and
    Swin's patch merging; not counted: norms, softmax, activations (< 2%).
    """
    cfg = config_of(case)
    mult, embed_mult = (1, 1) if case.forward_only else (3, 2)
    if case.kind == "bert":
        n = case.text_tokens
        return float(mult * cfg.num_hidden_layers * _layer(
            n, cfg.hidden_size, cfg.intermediate_size))  # fmt: skip
    ph, pw = cfg.patch_size
    h, w = cfg.image_size[0] // ph, cfg.image_size[1] // pw
    embed = 2 * h * w * ph * pw * cfg.num_channels
    if case.kind in ("vit", "clip"):
        d = cfg.hidden_size
        layers = cfg.num_hidden_layers * _layer(h * w + 1, d, cfg.intermediate_size)
        return float(mult * layers + embed_mult * embed * d)
    total = embed_mult * embed * cfg.embed_dim
    for s, depth in enumerate(cfg.depths):
        d = cfg.stage_dim(s)
        ws = min(cfg.window_size, h, w)
        tokens = math.ceil(h / ws) * ws * math.ceil(w / ws) * ws  # padded windows
        total += mult * depth * _layer(tokens, d, int(cfg.mlp_ratio * d), ws * ws)
        if s < len(cfg.depths) - 1:
            h, w = (h + 1) // 2, (w + 1) // 2
            total += mult * 2 * h * w * (4 * d) * (2 * d)  # merging: [4D] -> [2D]
    return float(total)


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """The layer most of a backbone's time goes to: ``rows`` sequences of ``tokens``
    tokens of ``width`` (for Swin, the windows of stage 3), ``count`` such layers."""

    rows_per_example: int
    tokens: int
    width: int
    heads: int
    mlp: int
    count: int
    masked: bool  # BERT: padding mask; Swin: relative-position bias


def layer_shape(case: BackboneCase) -> LayerShape:
    """The representative layer of ``case`` (see :class:`LayerShape`)."""
    cfg = config_of(case)
    if case.kind == "bert":
        return LayerShape(1, case.text_tokens, cfg.hidden_size,
                          cfg.num_attention_heads, cfg.intermediate_size,
                          cfg.num_hidden_layers, True)  # fmt: skip
    ph, pw = cfg.patch_size
    h, w = cfg.image_size[0] // ph, cfg.image_size[1] // pw
    if case.kind in ("vit", "clip"):
        return LayerShape(1, h * w + 1, cfg.hidden_size, cfg.num_attention_heads,
                          cfg.intermediate_size, cfg.num_hidden_layers, False)  # fmt: skip
    stage = max(range(len(cfg.depths)), key=lambda s: cfg.depths[s])
    for _ in range(stage):
        h, w = (h + 1) // 2, (w + 1) // 2
    ws = min(cfg.window_size, h, w)
    windows = math.ceil(h / ws) * math.ceil(w / ws)
    d = cfg.stage_dim(stage)
    return LayerShape(windows, ws * ws, d, cfg.num_heads[stage],
                      int(cfg.mlp_ratio * d), cfg.depths[stage], True)  # fmt: skip


# -- Inputs and steps --------------------------------------------------------------------


def numpy_inputs(
    case: BackboneCase, batch: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs: ``images [B, H, W, C]`` (normalised-like) or BERT ids and mask."""
    rng = np.random.default_rng(seed)
    cfg = config_of(case)
    if case.kind == "bert":
        n = case.text_tokens
        lengths = rng.integers(max(2, n // 2), n + 1, size=batch)
        return {
            "input_ids": rng.integers(1, cfg.vocab_size, (batch, n)).astype(np.int32),
            "attention_mask": (np.arange(n)[None] < lengths[:, None]).astype(np.int32),
        }
    h, w = cfg.image_size
    return {"images": rng.standard_normal((batch, h, w, cfg.num_channels), np.float32)}


def _jax_loss_input(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(x.astype(jnp.float32)))


def jax_step(
    case: BackboneCase, batch: int, *, dtype: Any = jnp.float32, remat: bool = False
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The jitted JAX call and its arguments: ``grad(mean(h^2))`` w.r.t. the
    parameters (forward + backward), or the forward alone for ``forward_only``."""
    module = from_config(config_of(case), dtype=dtype, remat=remat)
    inputs = {k: jnp.asarray(v) for k, v in numpy_inputs(case, batch).items()}
    first = {k: v[:1] for k, v in inputs.items()}
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), *first.values())
    args = tuple(inputs.values())

    def forward(v: Any, *xs: jax.Array) -> jax.Array:
        return module.apply(v, *xs)

    if case.forward_only:
        return jax.jit(forward), (variables, *args)

    def grads(v: Any, *xs: jax.Array) -> Any:
        return jax.grad(lambda p: _jax_loss_input(forward({"params": p}, *xs)))(
            v["params"]
        )

    return jax.jit(grads), (variables, *args)


def torch_model(case: BackboneCase) -> Any:
    """``transformers``' PyTorch model of the same config, random init, ``eval()``."""
    import transformers

    hf = config_of(case).to_hf()
    model_type = hf.pop("model_type")
    hf.pop("architectures", None)
    config = transformers.AutoConfig.for_model(model_type, **hf)
    # The transformers class of the config (ViTModel, CLIPVisionModel, ...).
    cls = getattr(transformers, CONFIG_CLASSES[case.kind].architecture)
    kwargs = {} if case.kind == "clip" else {"add_pooling_layer": False}
    return cls(config, **kwargs).eval()


def torch_step(case: BackboneCase, batch: int) -> tuple[Callable[[], Any], Any]:
    """The PyTorch call (forward + backward of ``mean(h^2)``, gradients dropped after
    each call; or the forward under ``inference_mode``) and the model."""
    import torch

    model = torch_model(case)
    inputs = numpy_inputs(case, batch)
    if case.kind == "bert":
        kw = {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}
    else:
        kw = {
            "pixel_values": torch.from_numpy(
                inputs["images"].transpose(0, 3, 1, 2).copy()
            )
        }
    params = list(model.parameters())

    if case.forward_only:

        def call() -> Any:
            with torch.inference_mode():
                return model(**kw).last_hidden_state

        return call, model

    def call() -> Any:
        with torch.enable_grad():  # whatever the caller's global grad mode
            out = model(**kw).last_hidden_state
            loss = out.float().pow(2).mean()
            loss.backward()
        for p in params:
            p.grad = None
        return loss.detach()

    return call, model
