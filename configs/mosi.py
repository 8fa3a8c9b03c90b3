r"""DecAlign on MOSI (HEAD defaults of the official repository).

    python -m decalign_jax.train --config configs/mosi.py --workdir runs/mosi

Reads ``data/MOSI/aligned_50.pkl`` (``--config.data.path=...`` to point elsewhere).

Arguments: ``paper`` (alpha = beta = 0.05, the paper's sensitivity optimum),
``demo`` (a synthetic pickle in the real layout; minutes on a CPU), ``tiny`` (tests).
Text: ``--config.model.text_encoder=bert`` fine-tunes BERT on the ids (as the official
config; ``bert-base-uncased`` in ``checkpoints/bert-base-uncased``, BERT at the main lr);
the default reads the stored BERT features. The paper reports (5-run mean, fine-tuned
BERT; Table 1): MAE 0.735, Corr 0.811, Acc-2 85.75, F1 85.82, Acc-7 45.07. A
frozen-feature run or a single seed is not that setting (docs/decalign.md §3.8).
"""

from __future__ import annotations

import ml_collections

from configs import decalign_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return decalign_base.get_config("mosi", arg)
