r"""DecAlign on IEMOCAP (HEAD defaults of the official repository).

    python -m decalign_jax.train --config configs/iemocap.py --workdir runs/iemocap

Reads ``data/IEMOCAP/iemocap_data.pkl`` (``--config.data.path=...`` to point elsewhere).

Arguments: ``paper`` (alpha = beta = 0.05, the paper's sensitivity optimum),
``demo`` (a synthetic pickle in the real layout; minutes on a CPU), ``tiny`` (tests).
The paper reports (5-run mean; Table 2, six classes): WAcc 73.35, WAF1 73.43. IEMOCAP
has no token ids: the official config runs it on stored features (no BERT), as here.
"""

from __future__ import annotations

import ml_collections

from configs import decalign_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return decalign_base.get_config("iemocap", arg)
