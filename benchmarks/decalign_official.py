"""The official DecAlign PyTorch train step, built from a folder the user names.

``python scripts/benchmark.py --sections decalign --official-src DIR`` times the
official code (taco-group/DecAlign, the model of commit 6fa8df9) beside our step, at
the same shapes and hyperparameters, in the same process. Nothing of it is in this
repository: ``DIR`` is a checkout of that repository, imported at run time (its
top-level packages ``config``, ``models``, ``trains``, ``utils``); every function here
is an adapter around it.

What is built, from our config of the case (``benchmarks.decalign_setup.config``):

- the official ``args``: the repository's own ``config.get_config_regression`` with
  its per-dataset JSON file (``config/dec_<dataset>_config.json``), then every field
  that has a counterpart in our config set from ours (model sizes, kernels, dropout
  rates, GMM / OT settings, loss weights, lr, L2 decay, clip, batch size), so the two
  steps run the same hyperparameters; the fields where the official file said
  otherwise are recorded (``overridden``); without BERT, ``use_bert = False`` (the
  stored text features), with BERT ``pretrained`` = the same random checkpoint folder
  our step reads;
- the official model (``models.DecAlign(args)``, in training mode, seed 0) and trainer
  (``trains.ATIO().getTrain(args)(args)``, whose ``_main_loss``, ``_combined_loss``
  and ``_contrastive_loss`` give the loss);
- the optimizer exactly as ``DecAlignTrainer.do_train`` builds it (Adam with coupled
  L2 decay; a separate BERT group when ``bert_learning_rate`` is set).

One call is the body of ``do_train``'s batch loop on a fixed batch: ``zero_grad``,
forward, the task + weighted DecAlign losses (+ the CT term), ``backward``,
``clip_grad_norm_``, ``optimizer.step()``, ``loss.item()``. The data loader and the
per-batch ``logits.cpu()`` bookkeeping are left out (ours has no such cost either).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np

__all__ = [
    "MODULES",
    "Official",
    "args_for",
    "check_source",
    "load",
    "step_call",
    "unload",
]

#: The official top-level modules the adapter imports from ``DIR``.
MODULES: tuple[str, ...] = ("config", "models", "trains", "utils")
#: Files that must exist in ``DIR`` (checked before anything is imported).
REQUIRED_FILES: tuple[str, ...] = (
    "config.py",
    "models/model.py",
    "trains/ATIO.py",
    "trains/subNets/transformer.py",
)


@dataclasses.dataclass(frozen=True)
class Official:
    """The imported official code: its config module, model class, trainer registry."""

    src: pathlib.Path
    commit: str | None
    config: Any  # the module ``config``
    model_class: Any  # ``models.DecAlign``
    atio: Any  # ``trains.ATIO``


def check_source(src: str | pathlib.Path) -> pathlib.Path:
    """``src`` resolved, after checking it holds the official repository's files."""
    folder = pathlib.Path(src).expanduser().resolve()
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--official-src {str(src)!r}: not a checkout of taco-group/DecAlign "
            f"(missing {missing}); e.g. git clone "
            "https://github.com/taco-group/DecAlign DIR"
        )
    return folder


def _git_commit(folder: pathlib.Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # A folder inside another repository (ours) would report that one's commit.
    top = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() if top and pathlib.Path(top) == folder else None


@contextlib.contextmanager
def _first_on_path(folder: pathlib.Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def load(src: str | pathlib.Path) -> Official:
    """Imports the official code from ``src`` (its top-level modules must not be
    imported from anywhere else already)."""
    folder = check_source(src)
    for name in MODULES:
        mod = sys.modules.get(name)
        if mod is not None:
            where = pathlib.Path(getattr(mod, "__file__", "") or "").resolve()
            if folder not in where.parents:
                raise ImportError(
                    f"module {name!r} is already imported from {where}, not from "
                    f"{folder}: run the benchmark in a fresh process"
                )
    with _first_on_path(folder):
        config = importlib.import_module("config")
        models = importlib.import_module("models")
        trains = importlib.import_module("trains")
    for mod in (config, models, trains):
        where = pathlib.Path(mod.__file__).resolve()
        if folder not in where.parents:
            raise ImportError(f"{mod.__name__} came from {where}, not from {folder}")
    return Official(
        src=folder,
        commit=_git_commit(folder),
        config=config,
        model_class=models.DecAlign,
        atio=trains.ATIO,
    )


def unload(official: Official) -> list[str]:
    """Removes every module imported from ``official.src`` from ``sys.modules`` (so a
    later ``load`` of another folder works); returns their names."""
    gone = [
        name
        for name, mod in list(sys.modules.items())
        if official.src in pathlib.Path(getattr(mod, "__file__", None) or "/").parents
    ]
    for name in gone:
        del sys.modules[name]
    return gone


def _ours_as_official(
    config: ml_collections.ConfigDict,
    dims: tuple[int, int, int],
    bert_folder: pathlib.Path | None,
    bert_hidden: int | None,
) -> dict[str, Any]:
    """The official ``args`` fields that our ``config`` sets (names: the official)."""
    m, lc, o = config.model, config.loss, config.optim
    kl, ka, kv = m.kernel_sizes
    fields: dict[str, Any] = {
        "train_mode": "classification" if lc.task == "ce" else "regression",
        "task_loss": "mse",
        "use_bert": bert_folder is not None,
        "feature_dims": [bert_hidden or dims[0], dims[1], dims[2]],
        "dst_feature_dim_nheads": [m.dim, m.num_heads],
        "nlevels": m.num_layers,
        "conv1d_kernel_size_l": kl,
        "conv1d_kernel_size_a": ka,
        "conv1d_kernel_size_v": kv,
        "pde_dim": m.pde_dim,
        "attn_dropout": m.attn_dropout[0],
        "attn_dropout_a": m.attn_dropout[1],
        "attn_dropout_v": m.attn_dropout[2],
        "relu_dropout": m.relu_dropout,
        "embed_dropout": m.embed_dropout,
        "res_dropout": m.res_dropout,
        "output_dropout": m.output_dropout,
        "text_dropout": m.text_dropout,
        "use_sequence_mask": m.padding_mask,
        "num_prototypes": lc.num_prototypes,
        "gmm_em_iters": lc.em_iters,
        "gmm_var_floor": lc.var_floor,
        "lambda_ot": lc.ot_epsilon,
        "ot_num_iters": lc.ot_iters,
        "hetero_cost_reduction": lc.cost_reduction,
        "local_proto_mahalanobis": lc.local_mahalanobis,
        "mmd_bandwidth": lc.mmd_bandwidth,
        "dec_loss_weight": lc.dec_weight,
        "alpha": lc.alpha,
        "beta": lc.beta,
        "ct_weight": lc.ct_weight,
        "ct_temperature": lc.ct_temperature,
        "binary_task_weight": lc.binary_weight,
        "batch_size": config.train.batch_size,
        "learning_rate": o.lr,
        "weight_decay": o.weight_decay,
        "clip": o.clip_norm,
    }
    if bert_folder is not None:
        fields.update(
            use_finetune=True,
            transformers="bert",
            pretrained=str(bert_folder),
            bert_learning_rate=o.bert_lr if o.bert_lr > 0 else None,
        )
    return fields


def args_for(
    official: Official,
    config: ml_collections.ConfigDict,
    dims: tuple[int, int, int],
    *,
    bert_folder: pathlib.Path | None = None,
    bert_hidden: int | None = None,
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The official ``args`` for our ``config`` of a case with feature ``dims``.

    Returns ``(args, overridden)``: ``overridden[field] = {"official": value in the
    repository's config file, "ours": value used}`` for every field where they
    differ (tuples and lists compare equal).
    """
    dataset = config.data.dataset
    file = official.src / "config" / f"dec_{dataset}_config.json"
    args = official.config.get_config_regression(
        "decalign", dataset, config_file=str(file) if file.is_file() else ""
    )
    overridden: dict[str, dict[str, Any]] = {}
    for key, value in _ours_as_official(config, dims, bert_folder, bert_hidden).items():
        value = list(value) if isinstance(value, tuple) else value
        before = getattr(args, key, None)
        before = list(before) if isinstance(before, tuple) else before
        if before != value:
            overridden[key] = {"official": before, "ours": value}
        setattr(args, key, value)
    return args, overridden


def _optimizer(torch: Any, model: Any, args: Any) -> Any:
    """Adam as ``DecAlignTrainer.do_train`` builds it (coupled L2 decay; BERT's own
    group when ``bert_learning_rate`` is set)."""
    decay = getattr(args, "weight_decay", 0.0)
    bert_lr = getattr(args, "bert_learning_rate", None)
    if bert_lr is not None and hasattr(model, "text_model"):
        bert = list(model.text_model.parameters())
        ids = {id(p) for p in bert}
        rest = [p for p in model.parameters() if id(p) not in ids]
        return torch.optim.Adam(
            [
                {"params": bert, "weight_decay": decay, "lr": bert_lr},
                {"params": rest, "weight_decay": decay, "lr": args.learning_rate},
            ]
        )
    return torch.optim.Adam(
        [{"params": model.parameters(), "weight_decay": decay}],
        lr=args.learning_rate,
    )


def _tensors(torch: Any, batch: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """``(text, audio, vision, labels)`` as the official loader hands them over."""
    if "text_bert" in batch:
        text = torch.from_numpy(np.asarray(batch["text_bert"], np.int64))
    else:
        text = torch.from_numpy(np.ascontiguousarray(batch["text"], np.float32))
    audio, vision = (
        torch.from_numpy(np.ascontiguousarray(batch[k], np.float32))
        for k in ("audio", "vision")
    )
    labels = torch.from_numpy(np.asarray(batch["label"], np.float32))
    return text, audio, vision, labels


def step_call(
    official: Official, args: Any, batch: Mapping[str, np.ndarray], seed: int = 0
) -> tuple[Callable[[], float], dict[str, Any]]:
    """The official train step on ``batch`` (our batch format) as a call, and facts
    about it (parameter counts, torch's threads).

    ``call()`` runs one step of ``DecAlignTrainer.do_train``'s loop and returns the
    loss as a float (``loss.item()``, as the trainer).
    """
    import torch

    with contextlib.suppress(ImportError):  # its BERT loads with a progress bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = official.model_class(args)
    model.train()
    trainer = official.atio().getTrain(args)(args)
    optimizer = _optimizer(torch, model, args)
    text, audio, vision, labels = _tensors(torch, batch)
    ct_weight = getattr(args, "ct_weight", 0.0)
    params = list(model.parameters())

    def call() -> float:
        with torch.enable_grad():
            model.zero_grad()
            outputs = model(text, audio, vision)
            logits = outputs["output_logit"]
            loss = trainer._main_loss(logits, labels)
            loss = trainer._combined_loss(loss, outputs)
            if ct_weight > 0:
                ct = trainer._contrastive_loss(outputs.get("final_rep"), labels)
                loss = loss + ct_weight * ct
            loss.backward()
            if hasattr(args, "clip"):
                torch.nn.utils.clip_grad_norm_(params, args.clip)
            optimizer.step()
            return loss.item()

    bert = getattr(model, "text_model", None)
    facts = {
        "params": int(sum(p.numel() for p in params)),
        "bert_params": int(sum(p.numel() for p in bert.parameters())) if bert else 0,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    return call, facts
