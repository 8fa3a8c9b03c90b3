"""Section ``decalign``: the DecAlign train step at MOSI and MOSEI shapes (HEAD configs).

The step is the driver's own (built through ``benchmarks.decalign_setup``), in three
variants: the HEAD config, ``alpha = 0`` (no EM + Sinkhorn term) and every dropout rate
0 (no dropout RNG). The share of EM + Sinkhorn is ``losses.hetero_loss`` forward +
backward timed alone over the HEAD step, cross-checked by ``1 - step(alpha = 0) /
step``; the dropout RNG share is ``1 - step(no dropout) / step``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from benchmarks import decalign_setup, markdown, steps
from benchmarks.settings import DecAlignCase, Settings
from benchmarks.timing import log, time_jit
from xmodal import sharding

__all__ = ["NAME", "measure", "render", "time_hetero"]

NAME = "decalign"


def time_hetero(
    config: ml_collections.ConfigDict, batch: int, settings: Settings
) -> dict[str, Any]:
    """``losses.hetero_loss`` forward + backward alone on random ``[B, d]`` inputs."""
    fn = jax.jit(jax.value_and_grad(decalign_setup.hetero_loss(config)))
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    pooled = tuple(jax.random.normal(k, (batch, config.model.dim)) for k in keys)
    timing, _ = time_jit(fn, (pooled,), settings)
    return timing


def _measure_variant(
    case: DecAlignCase,
    variant: str,
    batch_np: Mapping[str, Any],
    settings: Settings,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """One DecAlign step variant (``decalign_setup.VARIANTS``) of ``case``."""
    example = {k: v[:1] for k, v in batch_np.items()}
    config = decalign_setup.config(case, settings, variant)
    model = decalign_setup.build_model(config)
    state, shardings = decalign_setup.create_state(config, model, example, mesh)
    step = decalign_setup.jit_step(config, model, shardings, mesh)
    batch = sharding.global_batch(batch_np, mesh)
    label = f"decalign {case.name} B={case.batch} [{variant}]"
    res = steps.run_step(step, state, batch, settings, label=label, guard=False)
    res["config_loss"] = {
        k: config.loss[k] for k in ("alpha", "num_prototypes", "em_iters", "ot_iters")
    }
    log(
        f"{label}: compile {res['compile_s']:.1f} s, step "
        f"{res['median_s'] * 1e3:.2f} ms (median of {res['reps']})"
    )
    return res


def _shares(entry: dict[str, Any]) -> None:
    """EM + Sinkhorn, alpha = 0 and dropout shares of the HEAD step, into ``entry``."""
    timing = entry["hetero_fwd_bwd"]
    head = entry["head"]["median_s"]
    entry["hetero_share"] = timing["median_s"] / head
    entry["alpha0_share"] = 1.0 - entry["alpha0"]["median_s"] / head
    entry["dropout_share"] = 1.0 - entry["no_dropout"]["median_s"] / head
    # The same shares from the fastest call of each (less sensitive to a noisy host).
    head_min = entry["head"]["min_s"]
    entry["hetero_share_min"] = timing["min_s"] / head_min
    entry["alpha0_share_min"] = 1.0 - entry["alpha0"]["min_s"] / head_min
    entry["dropout_share_min"] = 1.0 - entry["no_dropout"]["min_s"] / head_min


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """DecAlign step (HEAD, alpha = 0, no dropout) and hetero_loss alone, per case."""
    del results  # DecAlign reports shares of its own step, not ceiling fractions
    mesh = steps.single_device_mesh()
    rows = []
    for case in settings.decalign:
        batch_np = decalign_setup.random_batch(case)
        entry: dict[str, Any] = {**dataclasses.asdict(case), "model": dict(case.model)}
        for variant in decalign_setup.VARIANTS:
            entry[variant] = _measure_variant(case, variant, batch_np, settings, mesh)
        entry["hetero_fwd_bwd"] = time_hetero(
            decalign_setup.config(case, settings), case.batch, settings
        )
        _shares(entry)
        log(
            f"decalign {case.name}: hetero_loss fwd+bwd "
            f"{entry['hetero_fwd_bwd']['median_s'] * 1e3:.2f} ms = "
            f"{entry['hetero_share']:.1%} of the step (alpha=0 cross-check "
            f"{entry['alpha0_share']:.1%}); dropout RNG {entry['dropout_share']:.1%}"
        )
        rows.append(entry)
    return {"rows": rows}


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## DecAlign train step`` table."""
    ms, pct = markdown.ms, markdown.pct
    lines = [
        "",
        "## DecAlign train step",
        "",
        f"HEAD configs (`configs/decalign_base.py`), {decalign_setup.BUILT_BY}, "
        "random inputs. "
        "EM + Sinkhorn share = `losses.hetero_loss` forward + backward alone on "
        "[B, d] pooled inputs / the HEAD step; cross-check = 1 - step(alpha = 0) / "
        "step. Dropout RNG share = 1 - step(every dropout rate 0) / step. Shares "
        "use medians; a negative share is below this host's noise (the same shares "
        "from the fastest calls are in `benchmarks.json` as `*_share_min`).",
        "",
    ]
    rows = []
    for r in results[NAME]["rows"]:
        head = r["head"]
        rows.append(
            [
                r["name"],
                r["batch"],
                "/".join(map(str, r["lengths"])),
                "/".join(map(str, r["dims"])),
                f"{ms(head['median_s'])} ({head['reps']}; "
                f"{ms(head['min_s'])} - {ms(head['max_s'])})",
                f"{head['compile_s']:.1f} s",
                ms(r["hetero_fwd_bwd"]["median_s"]),
                pct(r["hetero_share"]),
                f"{ms(r['alpha0']['median_s'])} ({pct(r['alpha0_share'])})",
                f"{ms(r['no_dropout']['median_s'])} ({pct(r['dropout_share'])})",
            ]
        )
    header = [
        "set",
        "B",
        "T l/a/v",
        "D l/a/v",
        "step (reps; min - max)",
        "compile",
        "hetero_loss fwd+bwd",
        "EM + Sinkhorn share",
        "alpha = 0 step (share)",
        "no-dropout step (RNG share)",
    ]
    return lines + markdown.table(header, rows)
