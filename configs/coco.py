r"""CDDS on MS-COCO (Karpathy split; docs/cdds.md, 'Training and evaluation').

    python -m cdds_jax.train --config configs/coco.py --workdir runs/coco \
        --config.data.root=data/coco

Expected (paper, Table 1): rSum 548.6 (COCO 1K, 5-fold mean) and 472.1 (COCO 5K) with
Swin-384; 437.8 (5K) with ViT-224 (fine-tuned backbones; stored frozen features give
lower numbers). The test split holds the 5,000 Karpathy test images with an explicit
caption -> image index (25,010 captions, or 25,000 in the SCAN/LAPS files); both the
5-fold 1K protocol and the 5K protocol are reported.

Arguments: ``demo`` (synthetic store, minutes on a CPU), ``tiny`` (tests),
``scan`` (SCAN precomp layout: ``testall_ims.npy`` / ``testall_caps.txt``, BiGRU text).

The paper's rows (fine-tuned image backbone + BERT-base, or CLIP's two towers, on the
LAPS files in ``data/coco`` with the images under
``data/coco-images/{train2014,val2014}``; each names its checkpoint folder,
docs/cdds.md §13):

    python -m cdds_jax.train --config configs/coco.py:swin384 --workdir runs/coco_swin384

- ``vit224``: ``checkpoints/vit-base-patch16-224-in21k`` (google/vit-base-patch16-224-in21k);
  the paper reports rSum 437.8 on COCO 5K (LAPS 434.4).
- ``vit384``: ``checkpoints/vit-base-patch16-384`` (google/vit-base-patch16-384); no
  number is known for this row.
- ``swin224``: ``checkpoints/swin-base-patch4-window7-224``
  (microsoft/swin-base-patch4-window7-224); no number is known for this row.
- ``swin384``: ``checkpoints/swin-base-patch4-window12-384``
  (microsoft/swin-base-patch4-window12-384); the paper reports rSum 548.6 on COCO 1K
  (5-fold mean) and 472.1 on COCO 5K (LAPS 544.1 / 470.1).
- ``clip_vitl``: ``checkpoints/clip-vit-large-patch14`` (openai/clip-vit-large-patch14),
  CLIP's vision and text towers from that one folder (docs/cdds.md §3.5); a
  leaderboard entry (backbone attribution uncertain) gives COCO 5K R@1 73.3 (i2t) /
  57.6 (t2i).
- ``clip_zeroshot``: the same pretrained CLIP scored without training
  (``python -m cdds_jax.zeroshot --config configs/coco.py:clip_zeroshot --workdir
  runs/coco_clip_zeroshot``); the paper's zero-shot number is not known here.

Every row but the CLIP ones also needs ``checkpoints/bert-base-uncased``
(google-bert/bert-base-uncased).
With the Karpathy JSON instead of the LAPS files: ``--config.data.format=karpathy
--config.data.root=data/coco/dataset_coco.json`` (``testall`` reads as ``test``; dev
is then Karpathy's 5,000-image ``val``).

The defaults and what each argument changes live in ``configs/cdds_base.py``.
"""

from __future__ import annotations

import ml_collections

from configs import cdds_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return cdds_base.get_config("coco", arg)
