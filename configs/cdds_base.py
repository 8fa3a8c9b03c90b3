"""CDDS configs shared by flickr.py and coco.py (docs/cdds.md, 'Training and
evaluation').

``base_config`` holds the paper's defaults, in sections (data, model, semantics,
objective, schedule); ``get_config(dataset, arg)`` applies a dataset's facts
(:data:`DATASETS`: its folders, test split and protocols) and the argument: ``demo`` /
``tiny`` (a synthetic feature store written on first use into ``$XMODAL_CACHE`` or
``~/.cache/xmodal``), ``scan`` (the SCAN precomp layout with the BiGRU), a paper row of
:data:`PAPER_ROWS` (an image backbone and BERT-base, or CLIP's two towers, fine-tuned
end to end on the LAPS files, docs/cdds.md §13), a zero-shot row of
:data:`ZEROSHOT_ROWS` (pretrained CLIP, no training), or ``demo_raw`` /
``clip_zeroshot_demo`` (JPEG files and tiny random backbones; Flickr only).
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    """Paper defaults shared by Flickr30K and COCO (docs/cdds.md)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter init, shuffling and noise all derive from it
    # Several seeds (--config.seeds=0,1,2): one run per seed, mean and std per metric;
    # empty = the single run of c.seed.
    c.seeds = ()

    _data(c)
    _model(c)
    _semantics(c)
    _objective(c)
    _schedule(c)

    # Data-parallel mesh; param sharding rules (regex, partition) - replicated here.
    c.mesh = (("data", -1),)
    c.sharding_rules = ()
    return c


def _data(c: ml_collections.ConfigDict) -> None:
    """Where the data is and how it is read (``c.data``)."""
    # ------------------------------------------------------------------ data
    c.data = ml_collections.ConfigDict()
    # "features" (our store) | "scan_precomp" | "arrayrecord" | "karpathy" (split
    # JSON + images) | "laps" ({split}_caps/ids.txt + images)
    c.data.format = "features"
    c.data.root = "data/f30k"  # folder holding the splits (unused by data.synthetic)
    # image folder of "karpathy" / "laps" ("" = beside data.root)
    c.data.image_root = ""
    c.data.train_split = "train"
    c.data.dev_split = "dev"  # model selection (rSum on the "full" protocol)
    c.data.test_split = "test"  # reported at the end with the best-on-dev state
    c.data.test_protocols = ("full",)  # "full" (F30K 1K, COCO 5K), "1k_5fold" (COCO 1K)
    c.data.max_words = 32  # caption length L: bigru words / backbone ids, with ends
    c.data.vocab_min_count = 4  # words seen fewer times in train -> <unk> (SCAN: 4)
    # LAPS's caption size augmentation in training (BERT ids; docs/cdds.md §12.8): each
    # word with probability caption_augment_rate -> [MASK] 50% / random ids 10% /
    # deleted 40%, seeded by (seed, epoch, caption). On in the paper rows.
    c.data.caption_augment = False
    c.data.caption_augment_rate = 0.2  # LAPS's mask_rate
    c.data.num_threads = 4  # grain read threads
    c.data.worker_count = 0  # grain worker processes (0 = read in the main process)
    # Synthetic feature store (the :demo configs): empty = use data.root.
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.enabled = False
    # "features" (a feature store) | "images" (JPEGs + Karpathy JSON + tiny ViT / BERT)
    c.data.synthetic.kind = "features"
    c.data.synthetic.seed = 0
    c.data.synthetic.num_train = 1000  # images; 5 captions each
    c.data.synthetic.num_dev = 100
    c.data.synthetic.num_test = 100
    c.data.synthetic.num_tokens = 16  # P
    c.data.synthetic.image_dim = 64  # D_v
    c.data.synthetic.text_dim = 48  # D_t
    c.data.synthetic.max_words = 12
    c.data.synthetic.num_concepts = 48
    c.data.synthetic.concepts_per_image = 3
    # kind "features": "offsets" (per-sample constant offsets, the nuisance per-column
    # centring cancels) | "mixed" (concepts by location and shape, per-modality column
    # permutations, nuisances no single table comparison removes); what each planted
    # effect rewards: cdds_jax/data/synthetic/__init__.py, docs/cdds.md §12.6.
    c.data.synthetic.generator = "offsets"
    c.data.synthetic.noise = 0.5  # token noise (both modalities)
    c.data.synthetic.colour_scale = 0.5  # image-level nuisance offset
    c.data.synthetic.syntax_scale = 0.5  # caption-level offset ("offsets": fillers)
    c.data.synthetic.shape_share = 0.3  # "mixed": concept variance carried by shape
    c.data.synthetic.spread_scale = 0.3  # "mixed": per-sample direction x token coeff
    c.data.synthetic.token_scale = 0.3  # "mixed": per-token scalar offset
    c.data.synthetic.gain_scale = 0.2  # "mixed": log per-sample per-column gain
    c.data.synthetic.image_size = 32  # kind "images": JPEG side (px)
    c.data.synthetic.backbone_size = 64  # kind "images": width of the tiny backbones


def _model(c: ml_collections.ConfigDict) -> None:
    """The encoders and the decoupler (``c.model``)."""
    # ----------------------------------------------------------------- model
    c.model = ml_collections.ConfigDict()
    # "features" (stored token features -> Dense(d)) | "vit" | "swin" | "clip"
    c.model.image_encoder = "features"
    c.model.text_encoder = "features"  # "features" | "bigru" | "bert" | "clip_text"
    # Hugging Face checkpoint folders of the backbones (read only, never downloaded).
    c.model.image_backbone_path = ""
    c.model.text_backbone_path = ""
    c.model.backbone_dropout = True  # the checkpoints' dropout in training (LAPS)
    c.model.dim = 512  # d
    c.model.num_heads = 8
    c.model.mlp_ratio = 4
    c.model.word_dim = 300  # bigru word embeddings
    c.model.num_samples = 4  # z noisy bottleneck copies
    c.model.sigma = 0.1  # bottleneck noise scale
    c.model.dtype = "float32"  # compute dtype of the encoders ("bfloat16"); params f32
    # recompute block activations in backward (memory), backbones too
    c.model.remat = False


def _semantics(c: ml_collections.ConfigDict) -> None:
    """The distribution sampling score (``c.semantics``)."""
    # ------------------------------------------------------------- semantics
    c.semantics = ml_collections.ConfigDict()
    # The reading of the score (cdds_jax/reading.py, docs/cdds.md §10.18): "paper"
    # (W from each training batch's S; tables compared by cosine; tau fixed) |
    # "project" (the demo evidence table's choice, synthetic data only). The four
    # fields below left unset (None) take the reading's value; set, they override it.
    c.semantics.reading = "paper"
    # Where S (and so W) comes from in training: "batch" | "ema" | "window" |
    # "subset" | "precompute" | "identity" (W = I; docs/cdds.md §4.4, §10.3).
    c.semantics.w_source = config_dict.placeholder(str)
    # "cosine" | "centred" | "level_centred" | "w2" (docs/cdds.md §10.5).
    c.semantics.table_compare = config_dict.placeholder(str)
    c.semantics.table_scale = config_dict.placeholder(bool)  # centred: / spread
    # "fixed" (tau) | "relative" (tau x each row's std of S) | "learned" (a learnable
    # log-temperature, initialised at log tau).
    c.semantics.tau_mode = config_dict.placeholder(str)
    c.semantics.kl = "histogram"  # "histogram" | "gaussian" column KL estimator
    c.semantics.num_bins = 16  # K soft histogram bins
    c.semantics.kl_chunk_size = 16  # pairs per chunk of the histogram KL (memory)
    c.semantics.tau = 1.0  # temperature of p(j|i) = softmax(-S / tau)
    c.semantics.alpha_init = 1.0  # soft-threshold alpha (learnable per row)
    c.semantics.num_levels = 32  # G quantile levels
    # EMA of the batch S ("ema"; evaluation builds W from it for "batch" and "ema").
    c.semantics.ema_momentum = 0.99
    c.semantics.window_steps = 16  # batches of the "window" source
    # "subset": this fraction of the training pairs, drawn afresh each epoch.
    c.semantics.subset_fraction = 0.1


def _objective(c: ml_collections.ConfigDict) -> None:
    """The loss terms, the collapse guard and the Table 3 switches."""
    # ------------------------------------------------------------------ loss
    c.loss = ml_collections.ConfigDict()
    c.loss.contrastive = "hinge"  # "hinge" (VSE++, LAPS) | "infonce"
    c.loss.margin = 0.2
    c.loss.temperature = 0.05  # infonce only
    # All violations before this epoch, the hardest negative after; -1 never.
    c.loss.max_violation_after_epochs = 1
    c.loss.ramp_epochs = 1  # L_s x (step / steps) over the first epoch(s), LAPS
    c.loss.a_s = 1.0
    c.loss.a_m = 1.0
    c.loss.a_f = 0.5  # L_f weight; L_x gets 1 - a_f

    # ---------------------------------------------------------- collapse guard
    # The training metric score_std (std of the B x B scores) below max(floor,
    # relative_floor x its largest value so far in the run) for patience_steps steps
    # warns once; a dev evaluation whose score std is below that floor (or whose
    # positives all tie with most candidates) is "degenerate" and never selected.
    # Relative because a healthy model's spread at initialisation depends on the
    # sizes (cosine tables: ~1e-3 at paper sizes, ~0.05 on the demo); a collapse
    # falls to ~1% of the run's peak (docs/cdds.md §10.11).
    c.collapse = ml_collections.ConfigDict()
    c.collapse.floor = 1e-6
    c.collapse.relative_floor = 0.05
    c.collapse.patience_steps = 100

    # -------------------------------------------------- ablations (Table 3)
    c.ablate = ml_collections.ConfigDict()
    c.ablate.decouple = True  # False: V^s = V, no UNet, no L_m / L_f / L_x
    c.ablate.modality = True  # False: a_m = 0
    c.ablate.integrity = True  # False: no L_f, L_x
    c.ablate.noise = True  # False: sigma = 0 in training too
    c.ablate.sampling = True  # False: mean-pooled cosine of V^s, T^s, same hinge


def _schedule(c: ml_collections.ConfigDict) -> None:
    """Optimiser, training length and evaluation (``c.optim``, ``c.train``, ``c.eval``)."""
    # ----------------------------------------------------------------- optim
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 1e-4
    c.optim.decoupled_weight_decay = True  # AdamW
    c.optim.clip_norm = 2.0
    c.optim.clip_rule = "optax"  # "optax" (clip_by_global_norm) | "official" (torch)
    c.optim.schedule = "step"
    c.optim.decay_epochs = (9, 15, 20)
    c.optim.decay_factor = 0.3
    c.optim.warmup_steps = 0
    # (regex on parameter path, lr multiplier): image_backbone/, text_backbone/ at 0.1x.
    c.optim.lr_groups = (("backbone", 0.1),)

    # ----------------------------------------------------------------- train
    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 64  # global, in captions
    c.train.num_epochs = 25
    c.train.num_steps = -1  # > 0 overrides num_epochs (tests, smoke runs)
    c.train.log_every_steps = 100
    c.train.eval_every_epochs = 1
    c.train.eval_every_steps = 0  # > 0 overrides eval_every_epochs
    c.train.checkpoint_every_steps = 1000
    c.train.keep_checkpoints = 2

    # ------------------------------------------------------------------ eval
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 128  # items per encoding batch (global)
    c.eval.block_size = 1024  # score matrix block (images and captions)
    c.eval.select_on_test = False  # True = LAPS protocol (selects on TEST; flagged)


def _demo_schedule(c: ml_collections.ConfigDict) -> None:
    """The demos' length and cadence: 8 epochs of 64 captions, small eval blocks."""
    c.train.batch_size = 64
    c.train.num_epochs = 8
    c.train.log_every_steps = 20
    c.train.checkpoint_every_steps = 200
    c.eval.batch_size = 100
    c.eval.block_size = 256


def demo_overrides(c: ml_collections.ConfigDict, *, tiny: bool = False) -> None:
    """Shrinks ``c`` to the synthetic demo (few minutes on 2 CPU cores)."""
    c.data.synthetic.enabled = True
    # The demo runs the project's reading (docs/cdds.md §10.18); the paper's reading
    # is --config.semantics.reading=paper.
    c.semantics.reading = "project"
    # Dev and test of 1,000 images x 5 captions, as Flickr30K's: with 100 test images
    # i2t R@1 varies by ~4.6 points from run to run, too much to rank variants.
    c.data.synthetic.num_dev = 1000
    c.data.synthetic.num_test = 1000
    c.data.test_protocols = ("full",)
    c.model.dim = 64
    c.model.num_heads = 4
    c.model.num_samples = 2
    c.model.word_dim = 32
    c.semantics.num_levels = 8
    c.semantics.num_bins = 8
    c.semantics.kl_chunk_size = 0
    c.optim.lr = 5e-4  # a choice, not a stability limit (docs/cdds.md §10.13)
    # From-scratch features: the hardest-negative hinge collapses every score to one
    # value unless R@1 is already high (VSE++'s known failure; LAPS switches after one
    # epoch because its backbones are pretrained), so the demo keeps all violations.
    c.loss.max_violation_after_epochs = -1
    c.optim.decay_epochs = (6,)
    _demo_schedule(c)
    if tiny:
        c.data.synthetic.num_train = 48
        c.data.synthetic.num_dev = 16
        c.data.synthetic.num_test = 16
        c.data.synthetic.num_tokens = 6
        c.data.synthetic.image_dim = 12
        c.data.synthetic.text_dim = 10
        c.data.synthetic.max_words = 6
        c.data.synthetic.num_concepts = 12
        c.data.max_words = 8
        c.model.dim = 16
        c.model.num_heads = 2
        c.model.word_dim = 8
        c.semantics.num_levels = 4
        c.semantics.num_bins = 4
        c.train.batch_size = 16
        c.train.num_epochs = 2
        c.train.log_every_steps = 5
        c.train.checkpoint_every_steps = 10
        c.eval.batch_size = 16
        c.eval.block_size = 32


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One of the paper's rows (docs/cdds.md §13): its backbones and checkpoints.

    Attributes:
      image_encoder: the image kind (``model.image_encoder``).
      folder: the image checkpoint's folder name under ``checkpoints/``.
      checkpoint: the Hugging Face checkpoint to put there.
      text_encoder: the text kind (``model.text_encoder``): BERT-base, or CLIP's own
        text tower, read from the same ``CLIPModel`` folder (docs/cdds.md §3.5).
      text_folder: the text checkpoint's folder name under ``checkpoints/``.
      max_words: ``data.max_words``, caption ids with the special tokens (LAPS's
        BERT captions fit 40; CLIP's text tower has 77 positions).
    """

    image_encoder: str
    folder: str
    checkpoint: str
    text_encoder: str = "bert"
    text_folder: str = "bert-base-uncased"  # google-bert/bert-base-uncased
    max_words: int = 40


#: The paper's rows: argument -> :class:`PaperRow`.
PAPER_ROWS: dict[str, PaperRow] = {
    "vit224": PaperRow(
        "vit", "vit-base-patch16-224-in21k", "google/vit-base-patch16-224-in21k"
    ),
    "vit384": PaperRow("vit", "vit-base-patch16-384", "google/vit-base-patch16-384"),
    "swin224": PaperRow(
        "swin",
        "swin-base-patch4-window7-224",
        "microsoft/swin-base-patch4-window7-224",
    ),
    "swin384": PaperRow(
        "swin",
        "swin-base-patch4-window12-384",
        "microsoft/swin-base-patch4-window12-384",
    ),
    # Table 2's CLIP row: CLIP ViT-L/14's vision AND text towers, both fine-tuned.
    "clip_vitl": PaperRow(
        "clip",
        "clip-vit-large-patch14",
        "openai/clip-vit-large-patch14",
        text_encoder="clip_text",
        text_folder="clip-vit-large-patch14",
        max_words=77,
    ),
}
#: Zero-shot arguments (no training: ``python -m cdds_jax.zeroshot``, docs/cdds.md
#: §3.5) -> the paper row whose backbones they evaluate.
ZEROSHOT_ROWS: dict[str, str] = {"clip_zeroshot": "clip_vitl"}


def paper_row_overrides(
    c: ml_collections.ConfigDict, row: str, *, image_root: str
) -> None:
    """A paper row's backbones fine-tuned end to end at 0.1x the base lr on the LAPS
    data files (docs/cdds.md §3.4, §3.5, §12.7, §13.3)."""
    r = PAPER_ROWS[row]
    c.data.format = "laps"  # {split}_caps.txt / _ids.txt / id_mapping.json in data.root
    c.data.image_root = image_root
    c.data.max_words = r.max_words  # ids incl. the special tokens (LAPS pads per batch)
    c.data.worker_count = 8  # decoding + augmentation processes (feed the step)
    # LAPS's size augmentation (its size_augment=1); BERT's [MASK] only, so not for
    # CLIP's text tower (no mask token; LAPS never ran CLIP).
    c.data.caption_augment = r.text_encoder == "bert"
    c.model.image_encoder = r.image_encoder
    c.model.image_backbone_path = f"checkpoints/{r.folder}"
    c.model.text_encoder = r.text_encoder
    c.model.text_backbone_path = f"checkpoints/{r.text_folder}"
    c.eval.batch_size = 64


def zeroshot_overrides(c: ml_collections.ConfigDict) -> None:
    """Marks ``c`` as a zero-shot evaluation of its pretrained CLIP (docs/cdds.md
    §3.5): ``python -m cdds_jax.zeroshot`` scores it, ``cdds_jax.train`` refuses it."""
    if (c.model.image_encoder, c.model.text_encoder) != ("clip", "clip_text"):
        raise ValueError("a zero-shot config evaluates CLIP's vision + text towers")
    c.eval.zeroshot = True  # read by cdds_jax.zeroshot and cdds_jax.train


def demo_raw_overrides(c: ml_collections.ConfigDict) -> None:
    """JPEG files + tiny random ViT / BERT end to end, minutes on 2 CPU cores."""
    c.data.format = "karpathy"
    c.data.synthetic.enabled = True
    c.data.synthetic.kind = "images"
    c.data.synthetic.num_train = 1000
    c.data.synthetic.num_dev = 100
    c.data.synthetic.num_test = 100
    c.data.synthetic.num_concepts = 32  # 8 colours x 4 shapes
    c.data.synthetic.image_size = 32
    c.data.synthetic.backbone_size = 64
    c.data.max_words = 20
    c.data.test_protocols = ("full",)
    c.model.image_encoder = "vit"
    c.model.text_encoder = "bert"
    c.model.backbone_dropout = False
    c.model.dim = 64
    c.model.num_heads = 4
    c.model.num_samples = 2
    c.semantics.num_levels = 8
    c.semantics.num_bins = 8
    c.semantics.kl_chunk_size = 0
    c.optim.lr = 5e-4
    c.optim.decay_epochs = (3, 6)  # x0.3 each: 5e-4 alone stalls near chance
    # Random tiny backbones have nothing to preserve: they learn at the full rate.
    c.optim.lr_groups = (("backbone", 1.0),)
    c.loss.max_violation_after_epochs = -1  # from scratch (see demo_overrides)
    _demo_schedule(c)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset's configs change in :func:`base_config`.

    Attributes:
      root: ``data.root`` (the stored features, and the LAPS files of the paper rows).
      test_protocols: ``data.test_protocols``.
      images: ``data.image_root`` of the paper rows (the image files).
      scan_root, scan_test_split: ``data.root`` / ``data.test_split`` of ``scan``.
      rows_test_split: ``data.test_split`` of the paper rows.
      tiny_test_images: ``data.synthetic.num_test`` of ``tiny``.
      demo_raw: whether the ``demo_raw`` argument exists.
    """

    root: str
    test_protocols: tuple[str, ...]
    images: str
    scan_root: str
    scan_test_split: str
    rows_test_split: str
    tiny_test_images: int
    demo_raw: bool = False


#: The datasets of configs/<name>.py.
DATASETS: dict[str, Dataset] = {
    "flickr": Dataset(
        root="data/f30k",
        test_protocols=("full",),  # Flickr30K 1K
        images="data/flickr30k-images",
        scan_root="data/f30k",
        scan_test_split="test",
        rows_test_split="test",
        tiny_test_images=16,
        demo_raw=True,
    ),
    "coco": Dataset(
        root="data/coco",
        test_protocols=("1k_5fold", "full"),  # COCO 1K (5 folds) and COCO 5K
        images="data/coco-images",
        scan_root="data/coco_precomp",
        scan_test_split="testall",
        rows_test_split="testall",  # COCO 5K in the LAPS files
        tiny_test_images=20,  # 5 folds of the synthetic test images, as COCO 1K
    ),
}


def get_config(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
    """The config of ``dataset`` (a key of :data:`DATASETS`) for argument ``arg``."""
    d = DATASETS[dataset]
    c = base_config()
    c.data.root = d.root
    c.data.test_protocols = d.test_protocols
    if arg in ("demo", "tiny"):
        demo_overrides(c, tiny=arg == "tiny")
        if arg == "tiny":
            c.data.synthetic.num_test = d.tiny_test_images
        c.data.test_protocols = d.test_protocols
    elif arg == "scan":
        c.data.format = "scan_precomp"
        c.data.root = d.scan_root
        c.data.test_split = d.scan_test_split
        c.model.text_encoder = "bigru"
    elif arg in PAPER_ROWS or arg in ZEROSHOT_ROWS:
        c.data.test_split = d.rows_test_split
        paper_row_overrides(c, ZEROSHOT_ROWS.get(arg, arg), image_root=d.images)
        if arg in ZEROSHOT_ROWS:
            zeroshot_overrides(c)
    elif arg in ("demo_raw", "clip_zeroshot_demo") and d.demo_raw:
        demo_raw_overrides(c)
        if arg == "clip_zeroshot_demo":
            # The zero-shot command on the demo's JPEGs and a tiny random CLIPModel
            # (both towers and projections) written into the cache: near chance, it
            # shows the command end to end.
            c.model.image_encoder = "clip"
            c.model.text_encoder = "clip_text"
            zeroshot_overrides(c)
    elif arg:
        known = ["demo", "tiny", "scan"]
        known += ["demo_raw", "clip_zeroshot_demo"] if d.demo_raw else []
        raise ValueError(
            f"configs/{dataset}.py: unknown argument {arg!r} "
            f"({', '.join([*known, *PAPER_ROWS, *ZEROSHOT_ROWS])})"
        )
    return c
