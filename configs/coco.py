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
"""

from __future__ import annotations

import ml_collections

from configs import flickr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = flickr.base_config()
    c.data.root = "data/coco"
    c.data.test_protocols = ("1k_5fold", "full")  # COCO 1K (5 folds) and COCO 5K
    if arg in ("demo", "tiny"):
        flickr.demo_overrides(c, tiny=arg == "tiny")
        # 5 folds of the synthetic test images, as COCO 1K (demo: 5 x 200).
        if arg == "tiny":
            c.data.synthetic.num_test = 20
        c.data.test_protocols = ("1k_5fold", "full")
    elif arg == "scan":
        c.data.format = "scan_precomp"
        c.data.root = "data/coco_precomp"
        c.data.test_split = "testall"
        c.model.text_encoder = "bigru"
    elif arg:
        raise ValueError(
            f"configs/coco.py: unknown argument {arg!r} (demo, tiny, scan)"
        )
    return c
