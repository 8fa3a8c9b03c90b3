r"""DecAlign on MOSEI (HEAD defaults of the official repository).

    python -m decalign_jax.train --config configs/mosei.py --workdir runs/mosei

Reads ``data/MOSEI/aligned_50.pkl`` (``--config.data.path=...`` to point elsewhere).

Arguments: ``paper`` (alpha = beta = 0.05, the paper's sensitivity optimum),
``demo`` (a synthetic pickle in the real layout; minutes on a CPU), ``tiny`` (tests).
Text: ``--config.model.text_encoder=bert`` fine-tunes BERT on the ids (as the official
config; ``bert-base-uncased`` in ``checkpoints/bert-base-uncased``, BERT lr 1e-5); the
default reads the stored BERT features. The paper reports (5-run mean, fine-tuned BERT;
Table 1): MAE 0.543, Corr 0.768, Acc-2 86.48, F1 86.07, Acc-7 55.02. A frozen-feature
run or a single seed is not that setting (docs/decalign.md §3.8).
"""

from __future__ import annotations

import ml_collections

from configs import decalign_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return decalign_base.get_config("mosei", arg)
