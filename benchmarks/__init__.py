r"""Throughput benchmark: machine ceilings, CDDS and DecAlign steps, evaluation, kernels.

    python scripts/benchmark.py                     # full sizes -> ./BENCHMARKS.md + ./benchmarks.json
    python scripts/benchmark.py --quick             # laptop sizes (< 10 min on 2 CPU cores)
    python scripts/benchmark.py --render benchmarks.json   # rebuild BENCHMARKS.md only

Everything is measured in ONE run so that every ratio compares numbers taken side by side
on the same machine (the CI machine's ceilings drift by 2x between runs). One module per
measured thing, each with its ``measure`` and ``render``:

- ``ceilings``: f32 / bf16 GEMM rates and copy bandwidths (every ratio divides by them);
- ``cdds_train``: the CDDS train step of the driver at several batch sizes, with the
  analytical FLOP count of ``cdds_flops`` and the ``model.remat`` / bf16 options;
- ``cdds_eval``: ``retrieval.score_matrix`` + ``rank_metrics`` at Flickr30K and COCO-5K
  sizes against their GEMM floor and against argsort ranks;
- ``decalign``: the DecAlign train step at MOSI and MOSEI shapes and the shares of EM +
  Sinkhorn and of dropout RNG, and the same step with BERT fine-tuned on token ids;
  with ``--official-src DIR`` beside the official PyTorch step (``decalign_official``
  builds it from a checkout of the official code);
- ``kernels``: each library kernel against its naive form, same inputs, same run;
- ``backbones``: each backbone's (ViT, Swin, CLIP vision, BERT) step in JAX beside
  ``transformers``' PyTorch model at the same shapes, with an op breakdown where JAX
  is behind (``backbone_cases``: what is built; ``backbone_parts``: the breakdown);
- ``cdds_backbones``: the CDDS step through ViT-B/16 + BERT-base (bf16 / remat
  options) and the image pipeline's images/s beside it.

Shared by all of them: ``settings`` (sizes per mode), ``timing`` (the one timing loop),
``memory`` (step memory and its growth), ``steps`` (compile + time a donated train step),
``machine`` (the machine table), ``markdown`` (row formatting) and ``process`` (the XLA
flag and the glibc hugepages restart). ``cdds_setup`` and ``decalign_setup`` hold every
call into the two drivers. ``runner`` orders the sections and writes the files; its
docstring says how to add a section.
"""

__all__ = [
    "backbone_cases",
    "backbone_parts",
    "backbones",
    "cdds_backbones",
    "cdds_eval",
    "cdds_flops",
    "cdds_setup",
    "cdds_train",
    "ceilings",
    "decalign",
    "decalign_official",
    "decalign_setup",
    "kernels",
    "machine",
    "markdown",
    "memory",
    "process",
    "runner",
    "settings",
    "steps",
    "timing",
]
