r"""DecAlign on SIMS (HEAD defaults of the official repository).

    python -m decalign_jax.train --config configs/sims.py --workdir runs/sims

Reads ``data/SIMS/unaligned_39.pkl`` (``--config.data.path=...`` to point elsewhere).

Arguments: ``paper`` (alpha = beta = 0.05, the paper's sensitivity optimum),
``demo`` (a synthetic pickle in the real layout; minutes on a CPU), ``tiny`` (tests).
Text: ``--config.model.text_encoder=bert`` fine-tunes BERT on the ids (as the official
config; ``bert-base-chinese`` in ``checkpoints/bert-base-chinese``, BERT lr 7.5e-6); the
default reads the stored BERT features. The paper reports (5-run mean, fine-tuned BERT;
Table 2): MAE 0.403, F1 81.85. A frozen-feature run or a single seed is not that
setting (docs/decalign.md §3.8).
"""

from __future__ import annotations

import ml_collections

from configs import decalign_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return decalign_base.get_config("sims", arg)
