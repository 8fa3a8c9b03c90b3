"""grain input pipelines: seeded shuffle, per-process shard, batch; padded evaluation.

A *source* is any picklable object with ``__len__`` and ``__getitem__(i) -> dict of
NumPy arrays`` of identical shapes (the method packages' readers provide them).

Training: ``source -> seeded shuffle (a new permutation every epoch) -> repeat ->
[transform] -> this process's block of every global batch -> batch(drop_remainder)``.
With ``pad_last_batch``, every epoch is instead one pass over the data whose last
global batch is completed with copies of a real item marked ``valid = False``
(:class:`PadEpochs`): the official PyTorch loaders' ``drop_last=False`` at a static
shape. The optional transform (decoding and augmenting images, say) sees each item with its
epoch, so its randomness can be a pure function of (seed, epoch, item): it runs
before the per-process split and gives the same global batch on any process layout. Every process
walks the same global permutation; global batch g is elements ``[gB, (g+1)B)`` of it and
process p reads rows ``[p B/P, (p+1) B/P)`` of that batch, so the shards are disjoint,
their union is the global batch, and the global array assembled in process order is the
batch a single process would have built, in the same order (losses that depend on the
order within a batch, such as DecAlign's GMM initialisation, match exactly). The
iterator state (``get_state``/``set_state``) is saved with the checkpoint, so a resumed
run sees exactly the batches it would have seen.

Evaluation: the index set is padded up to a multiple of the global batch size with
copies of item 0 marked ``valid = False``; every item carries its ``index`` so results
can be put back in order whatever the process layout. Nothing is dropped.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any, Protocol

import grain
import jax
import numpy as np

__all__ = [
    "BlockShard",
    "Chain",
    "EpochTransform",
    "PadEpochs",
    "PaddedSource",
    "Source",
    "eval_batches",
    "local_batch_size",
    "steps_per_epoch",
    "train_iterator",
]


class Source(Protocol):
    """What the pipelines read: random access to dicts of NumPy arrays."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


class EpochTransform(Protocol):
    """A per-item training transform that may depend on the epoch (augmentation).

    Must be picklable (it runs in grain worker processes) and deterministic given
    ``(item, epoch)``; it changes item shapes only to fixed ones.
    """

    def __call__(
        self, item: dict[str, np.ndarray], *, epoch: int
    ) -> dict[str, np.ndarray]: ...


class Chain:
    """Epoch transforms applied in order (an :class:`EpochTransform`; picklable when
    its parts are)."""

    def __init__(self, *transforms: EpochTransform) -> None:
        self.transforms = transforms

    def __call__(
        self, item: dict[str, np.ndarray], *, epoch: int
    ) -> dict[str, np.ndarray]:
        for transform in self.transforms:
            item = transform(item, epoch=epoch)
        return item

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.transforms))})"


class _WithEpoch:
    """``map_with_index`` adapter: element ``i`` of the repeated dataset is in epoch
    ``i // length``."""

    def __init__(self, transform: EpochTransform, length: int) -> None:
        self.transform, self.length = transform, length

    def __call__(self, index: int, item: dict[str, np.ndarray]) -> dict[str, Any]:
        return self.transform(item, epoch=int(index) // self.length)


def local_batch_size(global_batch_size: int) -> int:
    """This process's share of a global batch (must divide evenly)."""
    count = jax.process_count()
    if global_batch_size % count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the "
            f"{count} processes"
        )
    return global_batch_size // count


class BlockShard(grain.MapDataset):
    """Process ``index`` of ``count``'s rows of every global batch of ``count * block``.

    Element ``j`` of the shard is element ``(j // block * count + index) * block +
    j % block`` of the parent: the ``index``-th block of ``block`` consecutive elements
    in each run of ``count`` blocks.
    """

    def __init__(self, parent: grain.MapDataset, *, block: int, index: int, count: int):
        super().__init__(parent)
        if not 0 <= index < count or block < 1:
            raise ValueError(
                f"BlockShard: bad block={block} index={index} count={count}"
            )
        self.block, self.index, self.count = block, index, count

    def __len__(self) -> int:
        return len(self._parent) // (self.block * self.count) * self.block

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return self.slice(j)
        k, r = divmod(j, self.block)
        return self._parent[(k * self.count + self.index) * self.block + r]

    def __str__(self) -> str:
        return f"BlockShard(block={self.block}, index={self.index}, count={self.count})"


class PadEpochs(grain.MapDataset):
    """Epochs of ``epoch_length`` items padded to ``padded_length`` with ``valid``.

    Element ``i`` is item ``j = i mod padded_length`` of epoch ``e = i //
    padded_length``: for ``j < epoch_length`` element ``e * epoch_length + j`` of the
    parent (an epoch-by-epoch repeated dataset) with ``valid = True``, otherwise a copy
    of the epoch's first element with ``valid = False`` (finite values, to be masked).
    """

    def __init__(
        self, parent: grain.MapDataset, *, epoch_length: int, padded_length: int
    ):
        super().__init__(parent)
        if not 0 < epoch_length <= padded_length:
            raise ValueError(
                f"PadEpochs: bad epoch_length={epoch_length} "
                f"padded_length={padded_length}"
            )
        self.epoch_length, self.padded_length = epoch_length, padded_length

    def __len__(self) -> int:
        epochs = len(self._parent) // self.epoch_length
        return min(epochs * self.padded_length, sys.maxsize)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.slice(i)
        epoch, j = divmod(i, self.padded_length)
        valid = j < self.epoch_length
        item = dict(self._parent[epoch * self.epoch_length + (j if valid else 0)])
        item["valid"] = np.bool_(valid)
        return item

    def __str__(self) -> str:
        return f"PadEpochs({self.epoch_length} -> {self.padded_length})"


def steps_per_epoch(
    num_examples: int, global_batch_size: int, *, pad_last_batch: bool = False
) -> int:
    """Batches in one epoch: ``ceil`` with a padded last batch, else ``floor``."""
    if pad_last_batch:
        return math.ceil(num_examples / global_batch_size)
    return num_examples // global_batch_size


def train_iterator(
    source: Source,
    *,
    global_batch_size: int,
    seed: int,
    num_threads: int = 4,
    prefetch_batches: int = 4,
    worker_count: int = 0,
    transform: EpochTransform | None = None,
    pad_last_batch: bool = False,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's training batches.

    Args:
      source: the training source (one item per training example).
      global_batch_size: examples per step over all processes.
      seed: shuffle seed; epoch ``e`` uses a permutation derived from it.
      num_threads: threads reading items (memory-mapped reads release the GIL).
      prefetch_batches: batches read ahead.
      worker_count: if > 0, read in that many worker processes (``mp_prefetch``).
      transform: applied to every item with its epoch, before batching (in the
        worker processes when ``worker_count`` > 0).
      pad_last_batch: each epoch is one pass over ``source`` whose last global batch
        is padded (:class:`PadEpochs`); items then carry ``valid``. Otherwise batches
        are full and run across epoch boundaries.

    Returns:
      A grain iterator over dicts of stacked arrays ``[global_batch / processes, ...]``.
    """
    if len(source) < global_batch_size and not pad_last_batch:
        raise ValueError(
            f"training set has {len(source)} examples, fewer than one batch of "
            f"{global_batch_size}"
        )
    local = local_batch_size(global_batch_size)
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
    if transform is not None:
        ds = ds.map_with_index(_WithEpoch(transform, len(source)))
    if pad_last_batch:
        padded = steps_per_epoch(len(source), global_batch_size, pad_last_batch=True)
        ds = PadEpochs(
            ds, epoch_length=len(source), padded_length=padded * global_batch_size
        )
    if jax.process_count() > 1:
        ds = BlockShard(
            ds, block=local, index=jax.process_index(), count=jax.process_count()
        )
    ds = ds.batch(local, drop_remainder=True)
    options = grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=prefetch_batches * local
    )
    iter_ds = ds.to_iter_dataset(options)
    if worker_count > 0:
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count)
        )
    return iter(iter_ds)


class PaddedSource:
    """``source`` padded to ``length`` items; adds ``valid`` and ``index`` fields."""

    def __init__(self, source: Source, length: int) -> None:
        if len(source) == 0:
            raise ValueError("cannot evaluate an empty source")
        self.source = source
        self.length = length
        self.size = len(source)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        valid = index < self.size
        item = dict(self.source[index if valid else 0])
        item["valid"] = np.bool_(valid)
        item["index"] = np.int64(index)
        return item


def eval_batches(
    source: Source, *, global_batch_size: int, num_threads: int = 4
) -> Iterator[dict[str, np.ndarray]]:
    """This process's padded evaluation batches, each ``[global_batch / processes]``.

    The number of batches is ``ceil(len(source) / global_batch_size)`` on every
    process; padded rows have ``valid == False``.
    """
    local = local_batch_size(global_batch_size)
    padded = math.ceil(len(source) / global_batch_size) * global_batch_size
    ds = grain.MapDataset.source(PaddedSource(source, padded))
    if jax.process_count() > 1:
        ds = BlockShard(
            ds, block=local, index=jax.process_index(), count=jax.process_count()
        )
    ds = ds.batch(local)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * local)
    yield from ds.to_iter_dataset(options)
