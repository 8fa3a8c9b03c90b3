"""The retrieval heads of the paper's Table 4 (docs/cdds.md §15): VSE++, SCAN, SGR, CHAN
and LAPS ``cross_net``, each with its published score, as Flax Linen modules.

Calling convention (every head)::

    scores = head.apply(variables, img, img_mask, cap, cap_mask, train=False)

* ``img [Bi, P, d]`` image tokens (regions or patches, our encoders' output) with
  ``img_mask [Bi, P]``; ``cap [Bt, L, d]`` caption tokens with ``cap_mask [Bt, L]``
  (right padded). Masks may be bool, int or float (non-zero = valid).
* The result is ``[Bi, Bt]`` float32: the score of EVERY image with EVERY caption (the
  two sets need not have the same size). A training batch of matched pairs passes the
  same ``B`` items on both sides and gets the ``[B, B]`` matrix the hinge loss takes
  (``cdds_jax.losses.hinge_loss``, VSE++'s hardest-negative loss, which all five
  papers train with).
* Padded tokens never contribute a value or receive a gradient (they may hold anything,
  even NaN); an item without valid tokens gets a finite score.
* ``train`` selects batch statistics and dropout where the published head has them
  (SGR / SAF: pass ``mutable=["batch_stats"]`` and a ``dropout`` rng); it changes
  nothing for the other heads.
* The heads l2-normalise the tokens themselves where the authors' encoders end with
  ``l2norm`` (``normalize=True``); the encoders (and their projections) are ours
  (docs/cdds.md §15, "What the heads are fed").

``HEADS`` maps a name to the module class; ``make_head(name, **fields)`` builds one.
For evaluation over a split, ``head_score_matrix`` scores all pairs in memory-bounded
blocks and ``evaluate_head`` runs the retrieval protocols on them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from cdds_jax.heads.blocked import (
    block_memory_bytes,
    evaluate_head,
    head_score_matrix,
)
from cdds_jax.heads.chan import CHANHead
from cdds_jax.heads.laps import LAPSHead
from cdds_jax.heads.scan import SCAN_CONFIGS, SCANHead
from cdds_jax.heads.sgr import SGRHead
from cdds_jax.heads.vse import VSEHead

__all__ = [
    "HEADS",
    "SCAN_CONFIGS",
    "CHANHead",
    "LAPSHead",
    "SCANHead",
    "SGRHead",
    "VSEHead",
    "block_memory_bytes",
    "evaluate_head",
    "head_score_matrix",
    "make_head",
]

#: Head name -> module class (the names of ``--config.model.head``).
HEADS: dict[str, type[nn.Module]] = {
    "vse": VSEHead,
    "scan": SCANHead,
    "sgr": SGRHead,
    "chan": CHANHead,
    "laps": LAPSHead,
}


def make_head(name: str, **fields: Any) -> nn.Module:
    """``HEADS[name](**fields)``; a ValueError naming the known heads otherwise."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; known: {tuple(HEADS)}")
    return HEADS[name](**fields)
