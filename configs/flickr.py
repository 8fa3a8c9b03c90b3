r"""CDDS on Flickr30K (the defaults of docs/cdds.md, 'Training and evaluation').

    python -m cdds_jax.train --config configs/flickr.py --workdir runs/f30k \
        --config.data.root=data/f30k

Expected: the paper reports rSum 510.6 with ViT-224 and 552.5 with Swin-384, both
fine-tuned end to end (the ``vit224`` / ``swin384`` arguments); stored frozen
features (this default) give lower numbers.

Arguments (``configs/flickr.py:ARG``):

- ``demo``: a synthetic feature store written on first use into the cache folder
  (``$XMODAL_CACHE`` or ``~/.cache/xmodal``: 1,000 training images, dev and test of
  1,000 images x 5 captions each) and a small model; minutes on a 2-core CPU. See the
  README for the expected numbers.
- ``tiny``: the demo shrunk further, for tests.
- ``scan``: the SCAN/VSE precomp layout (``{split}_ims.npy`` + ``{split}_caps.txt``,
  bottom-up regions 36 x 2048) with the BiGRU text encoder.
- ``scan_demo``: the demo's synthetic data written in that layout (16 regions of 64
  dims, caption text) into the cache folder, through the BiGRU; the Table 4 analogue
  (``scripts/cdds_heads.py``) runs on it. ``scan_tiny``: shrunk for the tests.
- ``demo_raw``: JPEG files with planted visual concepts (coloured shapes), a
  Karpathy-style JSON and tiny random ViT + BERT checkpoints, written on first use
  into the cache folder; trains end to end through the backbones in minutes on a
  2-core CPU (README for the numbers). With ``--config.model.image_encoder=clip
  --config.model.text_encoder=clip_text`` it trains through a tiny random CLIPModel.
- ``clip_zeroshot_demo``: the zero-shot command on the same JPEGs and a tiny random
  CLIPModel (``python -m cdds_jax.zeroshot``; random weights score near chance).

Every argument takes ``--config.model.head=vse|scan|sgr|chan|laps`` (a Table 4 head
on the same encoders in place of the CDDS score, with its published loss settings,
``config.heads.<name>``) and ``--config.plugin.enabled=True`` (distribution sampling
added to that head, ``plugin.weight`` x its score; docs/cdds.md §15.7):

    python -m cdds_jax.train --config configs/flickr.py:scan --workdir runs/f30k_scan_ds \
        --config.model.head=scan --config.plugin.enabled=True

The paper's rows: an image backbone and BERT-base (CLIP: its own text tower)
fine-tuned at 0.1x the base lr on the LAPS files in ``data/f30k`` (``{split}_caps.txt``, ``{split}_ids.txt``,
``id_mapping.json``) with the images in ``data/flickr30k-images`` (docs/cdds.md §13):

    python -m cdds_jax.train --config configs/flickr.py:vit224 --workdir runs/f30k_vit224

- ``vit224``: ``checkpoints/vit-base-patch16-224-in21k`` (google/vit-base-patch16-224-in21k);
  the paper reports rSum 510.6 (LAPS 507.3).
- ``vit384``: ``checkpoints/vit-base-patch16-384`` (google/vit-base-patch16-384); no
  number is known for this row.
- ``swin224``: ``checkpoints/swin-base-patch4-window7-224``
  (microsoft/swin-base-patch4-window7-224); no number is known for this row.
- ``swin384``: ``checkpoints/swin-base-patch4-window12-384``
  (microsoft/swin-base-patch4-window12-384); the paper reports rSum 552.5 (LAPS 545.3).
- ``clip_vitl``: ``checkpoints/clip-vit-large-patch14`` (openai/clip-vit-large-patch14),
  CLIP's vision and text towers from that one folder (docs/cdds.md §3.5); the paper
  reports i2t R@1 95.2 (previous best 94.6).
- ``clip_zeroshot``: the same pretrained CLIP scored without training
  (``python -m cdds_jax.zeroshot --config configs/flickr.py:clip_zeroshot --workdir
  runs/f30k_clip_zeroshot``; results table and results.json, no checkpoint); the
  paper's zero-shot number is not known here.

Every row but the CLIP ones also needs ``checkpoints/bert-base-uncased``
(google-bert/bert-base-uncased).
A missing folder stops the run at start with one line saying what to put there. With
the Karpathy JSON instead: ``--config.data.format=karpathy
--config.data.root=data/dataset_flickr30k.json``.

The defaults and what each argument changes live in ``configs/cdds_base.py``.
"""

from __future__ import annotations

import ml_collections

from configs import cdds_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return cdds_base.get_config("flickr", arg)
