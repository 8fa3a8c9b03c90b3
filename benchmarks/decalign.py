"""Section ``decalign``: the DecAlign train step at MOSI and MOSEI shapes (HEAD configs).

The step is the driver's own (built through ``benchmarks.decalign_setup``), in three
variants on the stored (frozen) text features: the HEAD config, ``alpha = 0`` (no EM +
Sinkhorn term) and every dropout rate 0 (no dropout RNG). The share of EM + Sinkhorn is
``losses.hetero_loss`` forward + backward timed alone over the HEAD step, cross-checked
by ``1 - step(alpha = 0) / step``; the dropout RNG share is ``1 - step(no dropout) /
step``.

Beside them, the same HEAD step with BERT fine-tuned on the token ids
(``model.text_encoder = "bert"``): a random BERT of ``decalign_setup.BERT_SIZES``
(BERT-base in the full run) written in Hugging Face's layout into a temporary folder,
read by the driver, learning at the dataset's HEAD ``optim.bert_lr``, on random MMSA
``text_bert`` ids ``[B, 3, T_l]``; reported as its step time and its ratio to the
frozen-feature step. A BERT step whose compiled memory exceeds ``MEMORY_GUARD`` of the
available memory is compiled and reported (its planned memory), not run.

With ``--official-src DIR`` (``Settings.official_src``), the official PyTorch train
step (``benchmarks.decalign_official``: the official code imported from ``DIR``, built
with the same shapes and hyperparameters) is timed beside the HEAD step of every case
and beside the BERT step of the cases in ``OFFICIAL_BERT_CASES``, call for call in the
same process (``timing.side_by_side``), so both see the same machine load; the entry
gets ``official`` (its timing, what was built, and the speed-ups official / ours).
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from benchmarks import decalign_official, decalign_setup, markdown, memory, steps
from benchmarks.settings import DecAlignCase, Settings
from benchmarks.timing import log, time_jit
from xmodal import sharding

__all__ = [
    "LOSS_FIELDS",
    "NAME",
    "OFFICIAL_BERT_CASES",
    "TARGETS",
    "measure",
    "render",
    "speedups",
    "targets",
    "time_hetero",
]

NAME = "decalign"
#: The ``config.loss`` fields recorded with every step.
LOSS_FIELDS: tuple[str, ...] = (
    "alpha",
    "num_prototypes",
    "em_iters",
    "ot_iters",
    "ot_solver",
)
#: The cases whose step with BERT is also timed beside the official one: MOSI (one
#: official BERT-base call at MOSEI's B 128 takes tens of seconds on 2 cores).
OFFICIAL_BERT_CASES: tuple[str, ...] = ("MOSI",)
#: The speed-up over the official step the project asks for: frozen features, BERT.
TARGETS: dict[str, float] = {"head": 3.0, decalign_setup.BERT: 1.5}


def time_hetero(
    config: ml_collections.ConfigDict, batch: int, settings: Settings
) -> dict[str, Any]:
    """``losses.hetero_loss`` forward + backward alone on random ``[B, d]`` inputs."""
    fn = jax.jit(jax.value_and_grad(decalign_setup.hetero_loss(config)))
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    pooled = tuple(jax.random.normal(k, (batch, config.model.dim)) for k in keys)
    timing, _ = time_jit(fn, (pooled,), settings)
    return timing


def _count(tree: Any) -> int:
    """Number of parameters in ``tree``."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def _run(
    case: DecAlignCase,
    config: ml_collections.ConfigDict,
    variant: str,
    batch_np: Mapping[str, Any],
    settings: Settings,
    mesh: jax.sharding.Mesh,
    *,
    guard: bool = False,
    official: decalign_official.Official | None = None,
) -> dict[str, Any]:
    """The driver's step for ``config`` on ``batch_np``, compiled and timed (beside
    the ``official`` step of the same config when given)."""
    example = {k: v[:1] for k, v in batch_np.items()}
    model = decalign_setup.build_model(config)
    state, shardings = decalign_setup.create_state(config, model, example, mesh)
    params = state.params
    counts = {
        "params": _count(params),
        "bert_params": _count(params.get(decalign_setup.BERT_PARAMS, {})),
    }
    del params
    step = decalign_setup.jit_step(config, model, shardings, mesh)
    batch = sharding.global_batch(batch_np, mesh)
    label = f"decalign {case.name} B={case.batch} [{variant}]"
    beside, built = {}, None
    if official is not None:
        call, built = _official_step(official, case, config, batch_np)
        beside[OFFICIAL] = call
    res = steps.run_step(
        step, state, batch, settings, label=label, guard=guard, beside=beside
    )
    del state, batch, beside
    if built is not None and OFFICIAL in res.get("beside", {}):
        res[OFFICIAL] = {**res.pop("beside")[OFFICIAL], **built}
        res[OFFICIAL].update(speedups(res, res[OFFICIAL]))
    res.update(counts)
    res["config_loss"] = {k: config.loss[k] for k in LOSS_FIELDS}
    res["memory_bytes"], res["memory_source"] = memory.memory_of(res)
    if "median_s" in res:
        log(
            f"{label}: compile {res['compile_s']:.1f} s, step "
            f"{res['median_s'] * 1e3:.2f} ms (median of {res['reps']}), memory "
            f"{markdown.gib(res['memory_bytes'])}"
        )
    if OFFICIAL in res:
        off = res[OFFICIAL]
        log(
            f"{label}: official PyTorch step {off['median_s'] * 1e3:.2f} ms, ours "
            f"{res['median_s'] * 1e3:.2f} ms (interleaved, {off['reps']} each): ours "
            f"x{off['speedup']:.2f} the official speed (fastest calls "
            f"x{off['speedup_min']:.2f}, per round x{off['speedup_rounds']:.2f})"
        )
    return res


#: The key of the official step's timing in a step entry.
OFFICIAL = "official"


def speedups(ours: Mapping[str, Any], official: Mapping[str, Any]) -> dict[str, float]:
    """Official time / our time: of the medians, of the fastest calls, and the median
    over rounds of the per-round ratio (each round times both once, back to back)."""
    pairs = zip(official.get("times_s", []), ours.get("times_s", []), strict=True)
    rounds = [o / u for o, u in pairs if u > 0]
    return {
        "speedup": official["median_s"] / ours["median_s"],
        "speedup_min": official["min_s"] / ours["min_s"],
        "speedup_rounds": statistics.median(rounds) if rounds else None,
    }


def _official_step(
    official: decalign_official.Official,
    case: DecAlignCase,
    config: ml_collections.ConfigDict,
    batch_np: Mapping[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The official step for our ``config`` of ``case``, and what was built."""
    bert_folder = hidden = None
    if config.model.text_encoder == "bert":
        bert_folder = decalign_setup.bert_folder(config)
        hidden = decalign_setup.bert_setup(config)["bert_config"]["hidden_size"]
    args, overridden = decalign_official.args_for(
        official, config, case.dims, bert_folder=bert_folder, bert_hidden=hidden
    )
    call, facts = decalign_official.step_call(official, args, batch_np)
    return call, {
        **facts,
        "src": str(official.src),
        "commit": official.commit,
        "overridden": overridden,
    }


def _measure_variant(
    case: DecAlignCase,
    variant: str,
    batch_np: Mapping[str, Any],
    settings: Settings,
    mesh: jax.sharding.Mesh,
    official: decalign_official.Official | None,
) -> dict[str, Any]:
    """One frozen-feature step variant (``decalign_setup.VARIANTS``) of ``case``; the
    HEAD variant beside the ``official`` step when given."""
    config = decalign_setup.config(case, settings, variant)
    beside = official if variant == "head" else None
    return _run(case, config, variant, batch_np, settings, mesh, official=beside)


def _measure_bert(
    case: DecAlignCase,
    folder: pathlib.Path,
    settings: Settings,
    mesh: jax.sharding.Mesh,
    official: decalign_official.Official | None,
) -> dict[str, Any]:
    """The HEAD step of ``case`` with the BERT of ``folder`` fine-tuned on random ids
    (memory-guarded: a step that does not fit is compiled and reported, not run),
    beside the ``official`` step when given and ``case`` is in
    ``OFFICIAL_BERT_CASES``."""
    config = decalign_setup.config(
        case, settings, decalign_setup.BERT, bert_path=folder
    )
    setup = decalign_setup.bert_setup(config)
    vocab = setup["bert_config"]["vocab_size"]
    batch_np = decalign_setup.random_bert_batch(case, vocab)
    tb = batch_np["text_bert"]
    ids = {
        "shape": list(tb.shape),
        "dtype": str(tb.dtype),
        "rows": ["input ids", "attention mask", "segment ids"],
        "tokens_min": int(tb[:, 1].sum(1).min()),
        "tokens_mean": float(tb[:, 1].sum(1).mean()),
        "tokens_max": int(tb[:, 1].sum(1).max()),
        "segment_ids_nonzero": int((tb[:, 2] != 0).sum()),
    }
    beside = official if case.name in OFFICIAL_BERT_CASES else None
    res = _run(
        case,
        config,
        decalign_setup.BERT,
        batch_np,
        settings,
        mesh,
        guard=True,
        official=beside,
    )
    return {**res, **setup, "text_bert": ids}


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


def _bert_ratio(entry: dict[str, Any]) -> None:
    """BERT step / frozen-feature HEAD step (medians; fastest calls), into ``entry``;
    None when the BERT step was not run."""
    bert, head = entry[decalign_setup.BERT], entry["head"]
    ran = "median_s" in bert
    entry["bert_over_frozen"] = bert["median_s"] / head["median_s"] if ran else None
    entry["bert_over_frozen_min"] = bert["min_s"] / head["min_s"] if ran else None


def _measure_case(
    case: DecAlignCase,
    bert_folder: pathlib.Path,
    settings: Settings,
    mesh: jax.sharding.Mesh,
    official: decalign_official.Official | None,
) -> dict[str, Any]:
    """Every variant of ``case``, hetero_loss alone, the BERT step; shares, ratio."""
    batch_np = decalign_setup.random_batch(case)
    entry: dict[str, Any] = {**dataclasses.asdict(case), "model": dict(case.model)}
    for variant in decalign_setup.VARIANTS:
        entry[variant] = _measure_variant(
            case, variant, batch_np, settings, mesh, official
        )
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
    del batch_np
    entry[decalign_setup.BERT] = _measure_bert(
        case, bert_folder, settings, mesh, official
    )
    _bert_ratio(entry)
    if entry["bert_over_frozen"] is not None:
        log(
            f"decalign {case.name}: with BERT x{entry['bert_over_frozen']:.1f} the "
            "frozen-feature step"
        )
    return entry


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """Per case: the step (HEAD, alpha = 0, no dropout), hetero_loss alone and the
    step with BERT (a random checkpoint of the mode's size, written once); beside the
    official step (``settings.official_src``) where one is given."""
    del results  # DecAlign reports shares of its own step, not ceiling fractions
    mesh = steps.single_device_mesh()
    official = None
    if settings.official_src:
        official = decalign_official.load(settings.official_src)
        log(
            f"decalign: the official step from {official.src} (commit "
            f"{official.commit or 'unknown: not a git checkout'})"
        )
    with tempfile.TemporaryDirectory(prefix="decalign-bert-") as tmp:
        folder = decalign_setup.write_bert(pathlib.Path(tmp) / "bert", settings.mode)
        log(f"decalign: random BERT {decalign_setup.BERT_SIZES[settings.mode]}")
        rows = [
            _measure_case(c, folder, settings, mesh, official)
            for c in settings.decalign
        ]
    if official is not None:
        decalign_official.unload(official)
    return {"rows": rows}


def _solver_note(rows: list[Mapping[str, Any]]) -> str:
    """Which transport solver the rows' EM + Sinkhorn ran (``loss.ot_solver``)."""
    solvers = {r["head"].get("config_loss", {}).get("ot_solver") for r in rows}
    if None in solvers:
        return (
            "`loss.ot_solver` is not recorded with these rows: they were measured "
            "before it existed, with the library's own log-domain Sinkhorn sweep in a "
            '`lax.fori_loop` (replaced since by ott-jax\'s, `loss.ot_solver = "ott"`, '
            "the default)."
        )
    names = ", ".join(
        f'`loss.ot_solver = "{s}"` ({decalign_setup.SOLVER_FORMS.get(s, s)})'
        for s in sorted(solvers)
    )
    return f"Transport: {names}."


def _frozen_rows(rows: list[Mapping[str, Any]]) -> list[list[Any]]:
    """The frozen-feature table: HEAD step, hetero_loss share, alpha = 0, no dropout."""
    ms, pct = markdown.ms, markdown.pct
    out = []
    for r in rows:
        head = r["head"]
        out.append(
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
                *_official_cells(head),
            ]
        )
    return out


def _official_cells(step: Mapping[str, Any]) -> list[str]:
    """The official step's time and our speed-up over it; ``-`` when not measured."""
    off = step.get(OFFICIAL)
    if not off:
        return ["-", "-"]
    ms = markdown.ms
    return [
        f"{ms(off['median_s'])} ({off['reps']}; {ms(off['min_s'])} - "
        f"{ms(off['max_s'])})",
        f"**{markdown.ratio(off['speedup'])}**",
    ]


def _official_lines(rows: list[Mapping[str, Any]]) -> list[str]:
    """How the official step was run (or that it was not)."""
    measured = [
        r[v][OFFICIAL]
        for r in rows
        for v in ("head", decalign_setup.BERT)
        if (r.get(v) or {}).get(OFFICIAL)
    ]
    if not measured:
        return [
            "Official step: not measured in this run (`python scripts/benchmark.py "
            "--sections decalign --official-src DIR`, DIR a checkout of "
            "taco-group/DecAlign, times it beside ours).",
        ]
    first = measured[0]
    changed = sorted(
        {
            f"`{k}` {v['official']} -> {v['ours']}"
            for m in measured
            for k, v in m["overridden"].items()
            if v["official"] is not None
        }
    )
    return [
        "Official step: taco-group/DecAlign "
        f"(commit `{first.get('commit') or 'unknown, not a git checkout'}`) imported "
        "at run time from `--official-src` (never copied here; "
        "`benchmarks/decalign_official.py` builds it), PyTorch "
        f"{first['torch']} on {first['torch_threads']} threads: its `DecAlign` model "
        "in training mode, its trainer's task + DecAlign + CT losses, Adam as its "
        "`do_train` builds it, `clip_grad_norm_`, `optimizer.step()` and "
        "`loss.item()`, on the same batch. Hyperparameters: its own config file, then "
        "every field our config has set from ours"
        + (f" (where they differ: {'; '.join(changed)})" if changed else "")
        + ". Each round runs the two steps back to back, so both see the same load; "
        "speed-up = official median / our median (`benchmarks.json` also has the "
        "ratio of the fastest calls and the median per-round ratio).",
    ]


def _bert_cells(bert: Mapping[str, Any]) -> list[str]:
    """The ids, BERT and lr cells of a measured (or memory-skipped) BERT step."""
    ids, cfg = bert["text_bert"], bert["bert_config"]
    b, rows, t = ids["shape"]
    lr = f"{bert['bert_lr_used']:g} / {bert['lr']:g}" + (
        "" if bert["bert_lr"] > 0 else " (`bert_lr` 0: the main lr)"
    )
    return [
        f"[{b}, {rows}, {t}] {ids['dtype']}; {ids['tokens_min']}-{ids['tokens_max']} "
        f"tokens (mean {ids['tokens_mean']:.1f})",
        f"{cfg['num_hidden_layers']} x {cfg['hidden_size']}, "
        f"{cfg['num_attention_heads']} heads, FF {cfg['intermediate_size']}, vocab "
        f"{cfg['vocab_size']}, {cfg['max_position_embeddings']} positions "
        f"({bert['bert_params'] / 1e6:.1f} M)",
        lr,
    ]


def _bert_rows(rows: list[Mapping[str, Any]]) -> list[list[Any]]:
    """The BERT table: the step with BERT beside the frozen-feature HEAD step."""
    ms = markdown.ms
    out = []
    for r in rows:
        head, bert = r["head"], r.get(decalign_setup.BERT)
        frozen = ms(head["median_s"])
        if not bert:
            out.append(
                [r["name"], r["batch"], *["not run"] * 6, frozen, "not run", "-", "-"]
            )
            continue
        if "median_s" in bert:
            step = (
                f"{ms(bert['median_s'])} ({bert['reps']}; {ms(bert['min_s'])} - "
                f"{ms(bert['max_s'])})"
            )
        else:
            step = f"not run: {bert.get('skipped', 'no timing')}"
        out.append(
            [
                r["name"],
                r["batch"],
                *_bert_cells(bert),
                step,
                f"{bert['compile_s']:.1f} s",
                markdown.gib(bert.get("memory_bytes")),
                frozen,
                markdown.ratio(r.get("bert_over_frozen")),
                *_official_cells(bert),
            ]
        )
    return out


def _bert_lines(rows: list[Mapping[str, Any]]) -> list[str]:
    """The ``### With BERT fine-tuned on the token ids`` paragraph and table."""
    measured = [r[decalign_setup.BERT] for r in rows if r.get(decalign_setup.BERT)]
    text = (
        'The HEAD step above with `model.text_encoder = "bert"`: a randomly '
        "initialised BERT written in Hugging Face's layout into a temporary folder "
        "and read by the driver (`model.bert_path`; its weights join the train state "
        "and are fine-tuned with BERT's dropout on, under the L2 decay and the "
        "global-norm clip), fed random MMSA `text_bert` ids [B, 3, T_l] (input ids "
        "with [CLS] first and [SEP] last, attention mask, segment ids 0) in place of "
        "the stored features; audio, vision and labels as above. BERT learns at the "
        "HEAD config's `optim.bert_lr` (0: the main `optim.lr`, MOSI's single "
        "parameter group). BERT / frozen = step with BERT / frozen-feature HEAD step "
        "(medians; from the fastest calls in `benchmarks.json` as "
        f"`bert_over_frozen_min`). A step whose compiled memory exceeds "
        f"{memory.MEMORY_GUARD:.0%} of the available memory is compiled and "
        "reported, not run."
    )
    if measured:
        text += f" Memory: {measured[0].get('memory_source', 'unavailable')}."
    else:
        text += (
            " Not run: `benchmarks.json` has no BERT rows yet (`python "
            "scripts/benchmark.py --sections decalign` measures the whole section "
            "with them)."
        )
    header = [
        "set",
        "B",
        "text_bert ids",
        "BERT: layers x width (params)",
        "BERT lr / main lr",
        "step with BERT (reps; min - max)",
        "compile",
        "memory",
        "frozen-feature step",
        "BERT / frozen",
        "official step with BERT (reps; min - max)",
        "speed-up over official",
    ]
    title = ["", "### With BERT fine-tuned on the token ids", "", text, ""]
    return title + markdown.table(header, _bert_rows(rows))


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## DecAlign train step`` tables: frozen features, then with BERT."""
    rows = results[NAME]["rows"]
    lines = [
        "",
        "## DecAlign train step",
        "",
        f"HEAD configs (`configs/decalign_base.py`), {decalign_setup.BUILT_BY}, "
        "random inputs, the stored (frozen) text features. "
        "EM + Sinkhorn share = `losses.hetero_loss` forward + backward alone on "
        "[B, d] pooled inputs / the HEAD step; cross-check = 1 - step(alpha = 0) / "
        "step. Dropout RNG share = 1 - step(every dropout rate 0) / step. Shares "
        "use medians; a negative share is below this host's noise (the same shares "
        "from the fastest calls are in `benchmarks.json` as `*_share_min`). "
        + _solver_note(rows),
        "",
    ]
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
        "official step (reps; min - max)",
        "speed-up over official",
    ]
    return (
        lines
        + markdown.table(header, _frozen_rows(rows))
        + ["", *_official_lines(rows)]
        + _bert_lines(rows)
    )


def targets(results: Mapping[str, Any]) -> markdown.Targets:
    """Our step at least ``TARGETS`` x the official one (frozen features; BERT)."""
    rows = (results.get(NAME) or {}).get("rows") or []
    if not rows:
        return markdown.Targets()
    out = []
    for variant, goal in (
        ("head", "frozen features"),
        (decalign_setup.BERT, "BERT fine-tuned"),
    ):
        want = TARGETS[variant]
        got = [
            (r["name"], r[variant][OFFICIAL]["speedup"])
            for r in rows
            if (r.get(variant) or {}).get(OFFICIAL)
        ]
        measured = ", ".join(f"{name} x{x:.2f}" for name, x in got)
        out.append(
            markdown.Target(
                f"DecAlign train step ({goal}): >= x{want:g} the official PyTorch "
                "step, timed beside it",
                measured or "not measured (no `--official-src`)",
                all(x >= want for _, x in got) if got else None,
            )
        )
    return markdown.Targets(tuple(out))
