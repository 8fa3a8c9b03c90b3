"""DecAlign training losses (pure ``jax.numpy``), ``docs/decalign.md`` sections 2.4-3.

Every function is a pure, jit-able function of arrays; options that change shapes or
control flow are keyword-only Python values (bind them with ``functools.partial`` or
mark them static). Sequences are **batch-first** ``[B, T, d]`` (the official PyTorch
code is channel-first ``[B, d, T]``; the losses are invariant to that layout).

Losses are computed in at least float32 (bf16 / f16 inputs are promoted). GEMMs that
feed distances or covariances run at ``Precision.HIGHEST`` so TPU / GPU TF32 defaults
do not cancel catastrophically in ``|x|^2 + |y|^2 - 2 x.y``.

Modules, one concept each:

* :mod:`~decalign_jax.losses.decoupling` - L_dec, squared cosine between unique and
  common features.
* :mod:`~decalign_jax.losses.hetero` - L_hete = L_OT + L_local, GMM prototypes +
  3-marginal OT.
* :mod:`~decalign_jax.losses.homo` - L_homo = L_sem + L_MMD (moments + MMD).
* :mod:`~decalign_jax.losses.contrastive` - the supervised contrastive ("CT") term.
* :mod:`~decalign_jax.losses.task` - MSE / cross-entropy / SIMS BCE and the total.
* :mod:`~decalign_jax.losses.numerics` - shared constants, checks and masked means.

Every batch loss takes an optional ``valid`` ``[B]`` mask (False for the padding of a
short last batch); with it the value is that of the call on the valid rows alone
(:mod:`~decalign_jax.losses.numerics` states the convention).
"""

from __future__ import annotations

from decalign_jax.losses.contrastive import regression_bins, supcon_loss
from decalign_jax.losses.decoupling import decoupling_loss
from decalign_jax.losses.hetero import OT_SOLVERS, bind_hetero_loss, hetero_loss
from decalign_jax.losses.homo import homo_loss, mmd_rbf, moment_matching
from decalign_jax.losses.numerics import COSINE_EPS, NORMALIZE_EPS, SKEW_VAR_FLOOR
from decalign_jax.losses.task import (
    cross_entropy_loss,
    mse_loss,
    sims_binary_loss,
    total_loss,
)

__all__ = [
    "COSINE_EPS",
    "NORMALIZE_EPS",
    "OT_SOLVERS",
    "SKEW_VAR_FLOOR",
    "bind_hetero_loss",
    "cross_entropy_loss",
    "decoupling_loss",
    "hetero_loss",
    "homo_loss",
    "mmd_rbf",
    "moment_matching",
    "mse_loss",
    "regression_bins",
    "sims_binary_loss",
    "supcon_loss",
    "total_loss",
]
