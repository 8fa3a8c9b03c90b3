"""Section ``cdds_backbones``: the CDDS step end to end through ViT-B/16 + BERT-base, and
whether the image pipeline can feed it.

The step is the driver's own (``benchmarks.cdds_setup``: ``build_model`` reading
checkpoint folders, ``create_train_state``, ``jit_train_step``) with a ViT image
backbone and a BERT text backbone, both fine-tuned, on random uint8 images and BERT
ids. The checkpoints are random, written by ``xmodal.backbones.write_random_checkpoint``
into a temporary folder at the mode's sizes (full: ViT-B/16 at 224 px, BERT-base with
its 30,522-word vocabulary, L 40; quick and smoke: smaller). Per batch size: compile
time, step time, model FLOPs (the backbones' transformer layers + the CDDS count of
``cdds_flops``), the fraction of the f32 GEMM rate, memory; then ``model.dtype =
bfloat16`` and ``model.remat = True`` beside the default at one batch size.

The input pipeline alone: ``RawPairSource`` over JPEG files of Flickr30K's typical size
(500 x 375) -> ``TrainImageTransform`` (decode, RandomResizedCrop 0.6-1 bicubic, flip)
through ``xmodal.pipeline.train_iterator`` with N worker processes, in images per
second, beside the images per second each measured step consumes.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from benchmarks import cdds_flops, cdds_setup, ceilings, markdown, memory, steps
from benchmarks.markdown import Target, Targets
from benchmarks.settings import CddsSizes, Settings
from benchmarks.timing import log

__all__ = [
    "NAME",
    "OPTIONS",
    "BackboneSizes",
    "backbone_flops",
    "measure",
    "pipeline_rate",
    "render",
    "sizes_for",
    "targets",
]

NAME = "cdds_backbones"
#: The options measured beside the default step: (row label, ``config.model`` fields).
OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("model.dtype=bfloat16", {"dtype": "bfloat16"}),
    ("model.remat=True", {"remat": True}),
)


@dataclasses.dataclass(frozen=True)
class BackboneSizes:
    """The backbones, batches and pipeline settings of one mode."""

    name: str  # e.g. "ViT-B/16 224 + BERT-base"
    image_size: int
    patch: int
    vit_width: int
    vit_layers: int
    vit_mlp: int
    bert_width: int
    bert_layers: int
    bert_mlp: int
    vocab: int
    text_tokens: int  # L, BERT ids incl. [CLS] / [SEP]
    heads: int
    batches: tuple[int, ...]
    option_batch: int
    workers: tuple[int, ...]  # worker processes of the pipeline rows
    pipeline_images: int  # images decoded per pipeline measurement
    jpeg_size: tuple[int, int] = (500, 375)


def sizes_for(settings: Settings, accelerator: bool) -> tuple[BackboneSizes, CddsSizes]:
    """This mode's backbone sizes and the CDDS head sizes on their tokens."""
    if settings.mode == "full":
        b = BackboneSizes(
            "ViT-B/16 224 + BERT-base", 224, 16, 768, 12, 3072, 768, 12, 3072,
            30522, 40, 12,
            batches=(8, 32, 64, 128) if accelerator else (8, 32),
            option_batch=8, workers=(0, 1, 2, 4, 8) if accelerator else (0, 1, 2),
            pipeline_images=512,
        )  # fmt: skip
        head = settings.cdds
    elif settings.mode == "quick":
        b = BackboneSizes(
            "ViT 224 (width 192, 4 layers) + BERT (width 256, 4 layers)", 224, 16,
            192, 4, 768, 256, 4, 1024, 30522, 32, 4,
            batches=(4, 8), option_batch=4, workers=(0, 2), pipeline_images=128,
        )  # fmt: skip
        head = settings.cdds
    else:
        b = BackboneSizes(
            "tiny ViT 32 px + tiny BERT (smoke)", 32, 8, 32, 1, 64, 32, 1, 64,
            200, 8, 2, batches=(2, 4), option_batch=2, workers=(0,),
            pipeline_images=64, jpeg_size=(60, 45),
        )  # fmt: skip
        head = settings.cdds
    tokens = 1 + (b.image_size // b.patch) ** 2
    head = dataclasses.replace(
        head,
        image_tokens=tokens,
        image_dim=b.vit_width,
        text_tokens=b.text_tokens,
        text_dim=b.bert_width,
        batches=b.batches,
    )
    return b, head


def _layer_flops(tokens: int, width: int, mlp: int) -> float:
    """Forward FLOPs of one transformer layer: QKV + out + MLP denses and attention."""
    return tokens * (8 * width * width + 4 * width * mlp) + 4 * tokens * tokens * width


def backbone_flops(b: BackboneSizes) -> dict[str, float]:
    """Forward + backward FLOPs per (image, caption) pair of the two backbones (x3; the
    patch embedding x2: its input is data; BERT's embedding lookups 0)."""
    patches = (b.image_size // b.patch) ** 2
    vit = 3 * b.vit_layers * _layer_flops(patches + 1, b.vit_width, b.vit_mlp)
    vit += 2 * 2 * patches * (b.patch * b.patch * 3) * b.vit_width
    bert = 3 * b.bert_layers * _layer_flops(b.text_tokens, b.bert_width, b.bert_mlp)
    return {"vit": float(vit), "bert": float(bert)}


def _write_checkpoints(folder: pathlib.Path, b: BackboneSizes) -> tuple[str, str]:
    from xmodal.backbones import default_vocab, write_random_checkpoint

    vit = write_random_checkpoint(
        folder / "vit", "vit", image_size=b.image_size, patch_size=b.patch,
        hidden_size=b.vit_width, num_hidden_layers=b.vit_layers,
        num_attention_heads=b.heads, intermediate_size=b.vit_mlp,
    )  # fmt: skip
    bert = write_random_checkpoint(
        folder / "bert", "bert", vocab=default_vocab(), vocab_size=b.vocab,
        hidden_size=b.bert_width, num_hidden_layers=b.bert_layers,
        num_attention_heads=b.heads, intermediate_size=b.bert_mlp,
        max_position_embeddings=max(64, b.text_tokens),
    )  # fmt: skip
    return str(vit), str(bert)


def _measure_step(
    b: BackboneSizes,
    head: CddsSizes,
    folders: tuple[str, str],
    batch_size: int,
    settings: Settings,
    rate: float | None,
    model: dict[str, Any] | None = None,
    name: str = "",
) -> dict[str, Any]:
    config = cdds_setup.backbone_config(
        head, batch_size, image_backbone=folders[0], text_backbone=folders[1],
        text_tokens=b.text_tokens, model=model,
    )  # fmt: skip
    model_ = cdds_setup.build_model(config)
    batch_np = cdds_setup.random_pixels_batch(
        batch_size, b.image_size, b.text_tokens, b.vocab
    )
    label = f"{NAME} B={batch_size}" + (f" {name}" if name else "")
    entry, n_params, _ = cdds_setup.measure_step(
        config, model_, batch_np, steps.single_device_mesh(), settings, label=label
    )
    per_pair = sum(backbone_flops(b).values()) + sum(
        c["train_per_pair"] for c in cdds_flops.cdds_flops(head, batch_size)
    )
    entry.update(batch=batch_size, params=n_params, model_flops=batch_size * per_pair)
    entry["memory_bytes"], entry["memory_source"] = memory.memory_of(entry)
    if "median_s" in entry:
        entry["achieved_gflops"] = entry["model_flops"] / entry["median_s"] / 1e9
        entry["fraction_of_f32_gemm"] = (
            entry["model_flops"] / entry["median_s"] / rate if rate else None
        )
        entry["images_per_s"] = batch_size / entry["median_s"]
        log(
            f"{label}: step {entry['median_s'] * 1e3:.0f} ms, "
            f"{entry['achieved_gflops']:.1f} GFLOP/s, {entry['images_per_s']:.1f} img/s"
        )
    return entry


def _jpegs(folder: pathlib.Path, b: BackboneSizes, count: int) -> list[str]:
    """JPEG files of ``jpeg_size`` with smooth content and mild noise (quality 90)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    w, h = b.jpeg_size
    for i in range(count):
        base = rng.normal(120, 12, size=(h, w, 3)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(10, w / 4)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        path = folder / f"{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def pipeline_rate(
    b: BackboneSizes, folder: pathlib.Path, workers: int, batch: int, threads: int
) -> dict[str, Any]:
    """Images / s of the training pipeline alone (read, decode, augment, batch) with
    ``workers`` processes, after the first batch (worker start-up excluded).

    The prefetch buffer (4 batches) fills while the first batch is awaited; the
    count is many times larger, so the buffered batches barely inflate the rate.
    """
    from cdds_jax.data import images, raw
    from cdds_jax.data.text import TokenTable
    from xmodal import pipeline

    count = max(b.pipeline_images, 16 * batch)
    paths = _jpegs(folder / "jpeg", b, min(count, 64))
    n = len(paths)
    split = raw.RawSplit(
        root=folder,
        split="bench",
        image_paths=tuple(paths),
        caption_to_image=np.arange(n, dtype=np.int64),
        captions=["a caption"] * n,
    )
    table = TokenTable(
        ids=np.zeros((n, b.text_tokens), np.int32),
        lengths=np.full((n,), 2, np.int32),
        source="zeros",
    )
    source = raw.RawPairSource(split, text="ids", tokens=table)
    transform = images.TrainImageTransform(images.ImageSpec(b.image_size), seed=0)
    it = pipeline.train_iterator(
        source, global_batch_size=batch, seed=0, num_threads=threads,
        worker_count=workers, transform=transform,
    )  # fmt: skip
    t0 = time.perf_counter()
    next(it)
    start_s = time.perf_counter() - t0
    batches = max(1, count // batch - 1)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    wall = time.perf_counter() - t0
    rate = batches * batch / wall
    log(f"{NAME} pipeline, {workers} worker(s): {rate:.0f} images/s")
    return {
        "workers": workers,
        "threads": threads,
        "batch": batch,
        "images": batches * batch,
        "wall_s": wall,
        "first_batch_s": start_s,
        "images_per_s": rate,
    }


def measure(settings: Settings, results: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone CDDS step at each batch size, the options, the pipeline rate."""
    accelerator = jax.default_backend() != "cpu"
    b, head = sizes_for(settings, accelerator)
    if settings.backbone_batches:  # --cdds-backbone-batches
        b = dataclasses.replace(b, batches=settings.backbone_batches)
        head = dataclasses.replace(head, batches=settings.backbone_batches)
    ceil = results.get(ceilings.NAME)
    if ceil:
        gemm = {"gflops": ceil["f32"]["gflops"], "source": "ceilings section"}
    else:  # a partial run: a GEMM rate of this run, never a kept section's
        gemm = {**ceilings.measure_end(settings), "source": "measured by this section"}
        log(f"{NAME}: f32 GEMM {gemm['gflops']:.1f} GFLOP/s")
    rate = gemm["gflops"] * 1e9
    log(
        f"{NAME}: {b.name}, CDDS d {head.dim} on P {head.image_tokens}, L {head.text_tokens}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        folder = pathlib.Path(tmp)
        folders = _write_checkpoints(folder, b)
        rows = [
            _measure_step(b, head, folders, batch, settings, rate)
            for batch in b.batches
        ]
        options = [
            {
                "option": name,
                **_measure_step(
                    b, head, folders, b.option_batch, settings, rate, fields, name
                ),
            }
            for name, fields in OPTIONS
        ]
        pipe = []
        for workers in b.workers:
            try:
                pipe.append(pipeline_rate(b, folder, workers, b.option_batch, 4))
            except Exception as err:  # the step rows above are kept either way
                log(f"{NAME} pipeline, {workers} worker(s): FAILED {err!r}")
                pipe.append({"workers": workers, "error": repr(err)})
    return {
        "gemm": gemm,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "sizes": dataclasses.asdict(b),
        "head_sizes": dataclasses.asdict(head),
        "backbone_flops_per_pair": backbone_flops(b),
        "rows": rows,
        "options": options,
        "pipeline": pipe,
    }


# -- Report ---------------------------------------------------------------------------


def _row(r: Mapping[str, Any], label: str, base: Mapping[str, Any] | None) -> list[Any]:
    ran = "median_s" in r
    ratio = (
        f"x{r['median_s'] / base['median_s']:.2f}"
        if ran and base is not None and "median_s" in base
        else "-"
    )
    mem_ratio = (
        f"x{r['memory_bytes'] / base['memory_bytes']:.2f}"
        if base and r.get("memory_bytes") and base.get("memory_bytes")
        else "-"
    )
    return [
        label,
        r["batch"],
        f"{r['compile_s']:.1f} s",
        markdown.ms(r.get("median_s")) if ran else "skipped",
        ratio,
        f"{r['model_flops'] / 1e9:.1f}",
        markdown.pct(r.get("fraction_of_f32_gemm")) if ran else "-",
        markdown.gib(r.get("memory_bytes")),
        mem_ratio,
        f"{r['images_per_s']:.1f}" if ran else "-",
    ]


def _gemm_note(res: Mapping[str, Any]) -> str:
    gemm = res.get("gemm")
    if not gemm:
        return ""
    return (
        f" GEMM fraction against {gemm['gflops']:.1f} GFLOP/s ({gemm['source']}, "
        f"the same run); measured on a {res.get('cores', '?')}-core machine shared "
        "with other jobs, so the absolute times drift with its load; the GEMM rate is "
        "taken once, at the start, under the load of that moment, so a fraction "
        "above 100% means the load dropped after it (compare within the table)."
    )


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## CDDS with backbones`` section: steps, options, input pipeline."""
    res = results[NAME]
    sz, head = res["sizes"], res["head_sizes"]
    flops = res["backbone_flops_per_pair"]
    lines = [
        "",
        "## CDDS with backbones",
        "",
        f"{sz['name']} (random weights in the Hugging Face layout, read by the "
        f"driver's `build_model`), fine-tuned with backbone dropout on; the CDDS head "
        f"at d {head['dim']}, z {head['samples']}, G {head['levels']} on their P "
        f"{head['image_tokens']} image and L {head['text_tokens']} caption tokens; "
        f"uint8 images of {sz['image_size']} px, normalised on the device. Model "
        f"FLOPs per pair = ViT {flops['vit'] / 1e9:.3g} + BERT "
        f"{flops['bert'] / 1e9:.3g} GFLOP (forward + backward) + the CDDS count of "
        "the section above at these sizes. Step built by "
        f"{cdds_setup.BUILT_BY}.{_gemm_note(res)}",
        "",
    ]
    header = [
        "variant", "B", "compile", "step", "time ratio", "model GFLOP/step",
        "of f32 GEMM", "memory", "memory ratio", "images/s (step)",
    ]  # fmt: skip
    rows = [_row(r, "default", None) for r in res["rows"]]
    base = next(
        (r for r in res["rows"] if r["batch"] == res["options"][0]["batch"]), None
    ) if res["options"] else None  # fmt: skip
    rows += [_row(o, f"`{o['option']}`", base) for o in res["options"]]
    lines += markdown.table(header, rows)
    sources = sorted({r["memory_source"] for r in res["rows"]})
    lines += ["", f"Memory: {'; '.join(sources)}. Ratios against the default row of "
              "the same batch."]  # fmt: skip
    if res["pipeline"]:
        need = max((r.get("images_per_s", 0.0) for r in res["rows"]), default=0.0)
        lines += [
            "",
            f"Input pipeline alone (JPEG {sz['jpeg_size'][0]} x {sz['jpeg_size'][1]} "
            f"-> decode, RandomResizedCrop 0.6-1 bicubic to {sz['image_size']}, flip; "
            "grain with 4 read threads and N worker processes; start-up excluded), "
            f"against the fastest measured step's {need:.1f} images/s:",
            "",
        ]
        prow = [
            [
                p["workers"],
                f"{p['images_per_s']:.0f}",
                f"{p['first_batch_s']:.1f} s",
                f"x{p['images_per_s'] / need:.1f}" if need else "-",
            ]
            for p in res["pipeline"]
            if "images_per_s" in p
        ]
        lines += markdown.table(
            ["workers", "images/s", "first batch", "vs the step's need"], prow
        )
    return lines


def targets(results: Mapping[str, Any]) -> Targets:
    """Whether the pipeline's best rate covers the fastest measured step."""
    res = results.get(NAME) or {}
    rows, pipe = res.get("rows") or [], res.get("pipeline") or []
    need = max((r.get("images_per_s", 0.0) for r in rows), default=0.0)
    if not pipe or not need:
        return Targets()
    pipe = [p for p in pipe if "images_per_s" in p]
    if not pipe:
        return Targets()
    best = max(pipe, key=lambda p: p["images_per_s"])
    return Targets(
        (
            Target(
                "image pipeline feeds the backbone CDDS step",
                f"{best['images_per_s']:.0f} images/s with {best['workers']} "
                f"worker(s) vs {need:.1f} consumed",
                best["images_per_s"] >= need,
            ),
        )
    )
