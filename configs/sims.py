r"""DecAlign on SIMS (HEAD defaults of the official repository).

    python -m decalign_jax.train --config configs/sims.py --workdir runs/sims

Reads ``data/SIMS/unaligned_39.pkl`` (``--config.data.path=...`` to point elsewhere).

Arguments: ``paper`` (alpha = beta = 0.05, the paper's sensitivity optimum),
``demo`` (a synthetic pickle in the real layout; minutes on a CPU), ``tiny`` (tests).
Expected (paper, Table 2): MAE 0.403, F1 81.85 (the paper fine-tunes BERT; these
configs read the stored BERT features for now).
"""

from __future__ import annotations

import ml_collections

from configs import decalign_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return decalign_base.get_config("sims", arg)
