"""DecAlign configs shared by mosi.py, mosei.py, sims.py and iemocap.py.

The defaults are the official repository's HEAD per-dataset settings
(docs/decalign.md §5 and §7); ``:paper`` sets alpha = beta = 0.05 (the
paper's sensitivity study); ``:demo`` trains on a synthetic pickle in the real MMSA
layout (written on first use into ``$XMODAL_CACHE`` or ``~/.cache/xmodal``).
``model.text_encoder="bert"`` fine-tunes BERT on the token ids (docs/decalign.md §3.8):
from ``model.bert_path``, or, in ``:demo`` / ``:tiny`` with an empty path, a tiny random
BERT written into the same cache.
"""

from __future__ import annotations

import ml_collections

from decalign_jax.metrics import SELECTION

# Per-dataset HEAD settings: model, loss weights, training (docs/decalign.md §7).
HEAD = {
    "mosi": dict(
        dim=64, heads=8, layers=5, kernels=(1, 1, 1), pde_dim=64,
        attn=(0.1, 0.0, 0.0), relu=0.1, embed=0.1, res=0.05, output=0.0, text=0.0,
        alpha=0.05, beta=0.07, ct_weight=0.003, ct_temperature=0.1, binary_weight=0.0,
        task="mse", num_prototypes=7, batch=32, lr=6e-5, clip=0.6, epochs=18,
        early_stop=6, file="MOSI/aligned_50.pkl", bert="bert-base-uncased",
        bert_lr=0.0,
    ),
    "mosei": dict(
        dim=64, heads=8, layers=4, kernels=(5, 5, 5), pde_dim=64,
        attn=(0.125, 0.125, 0.125), relu=0.125, embed=0.125, res=0.125, output=0.125,
        text=0.125, alpha=0.005, beta=0.0, ct_weight=0.001, ct_temperature=0.1,
        binary_weight=0.0, task="mse", num_prototypes=7, batch=128, lr=5e-5, clip=0.6,
        epochs=16, early_stop=5, file="MOSEI/aligned_50.pkl", bert="bert-base-uncased",
        bert_lr=1e-5,
    ),
    "sims": dict(
        dim=32, heads=8, layers=4, kernels=(5, 5, 5), pde_dim=32,
        attn=(0.4, 0.3, 0.1), relu=0.1, embed=0.3, res=0.1, output=0.35, text=0.25,
        alpha=0.0175, beta=0.0525, ct_weight=0.01, ct_temperature=0.07,
        binary_weight=0.01, task="mse", num_prototypes=7, batch=24, lr=3.5e-5, clip=0.5,
        epochs=55, early_stop=11, file="SIMS/unaligned_39.pkl", bert="bert-base-chinese",
        bert_lr=7.5e-6,
    ),
    "iemocap": dict(
        dim=48, heads=4, layers=4, kernels=(1, 1, 1), pde_dim=48,
        attn=(0.2, 0.2, 0.2), relu=0.2, embed=0.2, res=0.2, output=0.2, text=0.2,
        alpha=0.05, beta=0.05, ct_weight=0.0, ct_temperature=0.1, binary_weight=0.0,
        task="ce", num_prototypes=6, batch=32, lr=1e-4, clip=0.6, epochs=50,
        early_stop=5, file="IEMOCAP/iemocap_data.pkl", bert="", bert_lr=0.0,
    ),
}  # fmt: skip


def get_config(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
    """The config of ``dataset`` for argument ``arg`` (None, "paper", "demo", "tiny")."""
    h = HEAD[dataset]
    c = ml_collections.ConfigDict()
    c.seed = 1111  # init, shuffling and dropout derive from it
    c.seeds = (1111,)  # several (--config.seeds=1111,1112,1113): mean and std each

    _data(c, dataset, h)
    _model(c, h)
    _loss(c, h)
    _optim(c, h)
    _train(c, h)
    _eval(c, dataset, h)

    c.mesh = (("data", -1),)
    c.sharding_rules = ()

    _variant(c, arg)
    return c


def _data(c: ml_collections.ConfigDict, dataset: str, h: dict) -> None:
    """Which data set, where it is and how it is read (``c.data``)."""
    # ------------------------------------------------------------------ data
    c.data = ml_collections.ConfigDict()
    c.data.dataset = dataset  # mosi | mosei | sims | iemocap
    c.data.format = "mmsa"  # "mmsa" (the pickle) | "arrayrecord" (a TFDS folder from
    # scripts/convert_to_arrayrecord.py; data.path = that folder)
    c.data.path = "data/" + h["file"]  # the MMSA pickle (or converted IEMOCAP file)
    c.data.standardize = "auto"  # "auto" (MOSEI, SIMS on), "on", "off": audio/vision
    c.data.num_classes = 6 if dataset == "iemocap" else 1
    c.data.num_threads = 4  # grain read threads
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.enabled = False  # the :demo configs
    c.data.synthetic.seed = 0
    c.data.synthetic.num_train = 1284  # MOSI's split sizes by default
    c.data.synthetic.num_valid = 229
    c.data.synthetic.num_test = 686


def _model(c: ml_collections.ConfigDict, h: dict) -> None:
    """The encoders, the cross-modal transformers and the text input (``c.model``)."""
    # ----------------------------------------------------------------- model
    c.model = ml_collections.ConfigDict()
    c.model.dim = h["dim"]  # d
    c.model.num_heads = h["heads"]
    c.model.num_layers = h["layers"]  # per cross-modal transformer
    c.model.kernel_sizes = h["kernels"]  # temporal conv kernel: text, audio, vision
    c.model.pde_dim = h["pde_dim"]
    c.model.attn_dropout = h["attn"]  # text, audio, vision
    c.model.relu_dropout = h["relu"]
    c.model.embed_dropout = h["embed"]
    c.model.res_dropout = h["res"]
    c.model.output_dropout = h["output"]
    c.model.text_dropout = h["text"]
    c.model.positional = False  # sinusoidal positions (the official model has none)
    c.model.padding_mask = False  # mask padded frames (the official model does not)
    c.model.dropout_impl = "hash"  # "hash" (fast counter-based masks) | "threefry"
    c.model.remat = False  # recompute transformer activations in backward (memory)
    c.model.dtype = "float32"  # transformer compute dtype ("bfloat16"); params float32
    # Text input: "features" (the pickle's stored BERT features) | "bert" (BERT
    # fine-tuned on the text_bert ids, as the official MOSI / MOSEI / SIMS configs).
    c.model.text_encoder = "features"
    # The local Hugging Face folder of that BERT (read only, never downloaded).
    c.model.bert_path = f"checkpoints/{h['bert']}" if h["bert"] else ""


def _loss(c: ml_collections.ConfigDict, h: dict) -> None:
    """The five loss terms and their options (``c.loss``)."""
    # ------------------------------------------------------------------ loss
    c.loss = ml_collections.ConfigDict()
    c.loss.task = h["task"]  # "mse" (regression) | "ce" (classification)
    c.loss.dec_weight = 1.0
    c.loss.alpha = h["alpha"]  # L_hete weight
    c.loss.beta = h["beta"]  # L_homo weight
    c.loss.ct_weight = h["ct_weight"]  # SupCon ("CT") weight
    c.loss.ct_temperature = h["ct_temperature"]
    c.loss.binary_weight = h["binary_weight"]  # SIMS: BCE on the sign of y != 0
    c.loss.num_prototypes = h["num_prototypes"]  # K GMM components per modality
    c.loss.em_iters = 5
    c.loss.var_floor = 1e-4
    c.loss.ot_epsilon = 0.1  # entropic OT epsilon (lambda_ot)
    c.loss.ot_iters = 50
    c.loss.ot_solver = "ott"  # "ott" (ott-jax Sinkhorn) | "official" (plain domain)
    c.loss.cost_reduction = "mean"  # Bures cost over dims: "mean" (official) | "sum"
    c.loss.local_mahalanobis = False
    c.loss.mmd_bandwidth = 1.0


def _optim(c: ml_collections.ConfigDict, h: dict) -> None:
    """Adam with L2 decay, clipping and BERT's lr group (``c.optim``)."""
    # ----------------------------------------------------------------- optim
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = h["lr"]
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.005
    c.optim.decoupled_weight_decay = False  # torch Adam(weight_decay): L2 in the grad
    c.optim.clip_norm = h["clip"]
    # "optax" (clip_by_global_norm) | "official" (torch clip_grad_norm_, as its trainer)
    c.optim.clip_rule = "optax"
    c.optim.schedule = "constant"  # ReduceLROnPlateau acts through the host factor
    c.optim.warmup_steps = 0
    c.optim.lr_groups = ()  # (regex on parameter path, lr multiplier)
    c.optim.bert_lr = h["bert_lr"]  # BERT's lr (text_encoder=bert); 0 = optim.lr


def _train(c: ml_collections.ConfigDict, h: dict) -> None:
    """Batch, epochs, early stopping and the plateau rule (``c.train``)."""
    # ----------------------------------------------------------------- train
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = h["batch"]
    c.train.num_epochs = h["epochs"]
    c.train.num_steps = -1  # > 0 overrides num_epochs (tests)
    # Evaluations (epochs) without a better valid metric before stopping.
    c.train.early_stop_patience = h["early_stop"]
    c.train.plateau_patience = 5  # ReduceLROnPlateau on the selection metric
    c.train.plateau_factor = 0.1
    c.train.log_every_steps = 20
    c.train.eval_every_steps = 0  # 0 = every epoch
    # "official": every epoch is one pass with its short last batch (padded + masked;
    # docs/decalign.md section 9.4); "continuous": full batches
    # running across epoch boundaries.
    c.train.epoch_mode = "official"


def _eval(c: ml_collections.ConfigDict, dataset: str, h: dict) -> None:
    """Evaluation batches and the selection rule (``c.eval``)."""
    # ------------------------------------------------------------------ eval
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256
    # The selection "loss" is the mean of per-batch mean task losses at this batch
    # size, as the official evaluation loop (its eval batch is the train batch).
    c.eval.loss_batch_size = h["batch"]
    # Selection on the valid split: decalign_jax.metrics.SELECTION per dataset.
    c.eval.select_metric, c.eval.select_mode = SELECTION[dataset]


def _variant(c: ml_collections.ConfigDict, arg: str | None) -> None:
    """The config argument: ``paper``, ``demo``, ``tiny`` (None: the HEAD defaults)."""
    if arg == "paper":
        c.loss.alpha = 0.05
        c.loss.beta = 0.05
    elif arg in ("demo", "tiny"):
        c.data.synthetic.enabled = True
        c.model.bert_path = ""  # "" = a tiny random BERT written into the cache
        c.optim.lr = 1e-3
        c.optim.bert_lr = 0.0  # the random tiny BERT learns at the main lr
        c.train.num_epochs = 8
        c.train.early_stop_patience = 8
        if arg == "tiny":
            c.data.synthetic.num_train = 64
            c.data.synthetic.num_valid = 24
            c.data.synthetic.num_test = 24
            c.model.dim = 16
            c.model.num_heads = 2
            c.model.num_layers = 1
            c.model.pde_dim = 16
            c.train.batch_size = 16
            c.train.num_epochs = 2
            c.train.log_every_steps = 2
            c.eval.batch_size = 16
            c.eval.loss_batch_size = 16
    elif arg:
        raise ValueError(f"unknown config argument {arg!r} (paper, demo, tiny)")
