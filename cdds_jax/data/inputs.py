"""From a config to a run's data: backbones, splits, caption ids, sources, the training
transform.

The driver (``cdds_jax.train``) and the evaluation entry point read their data through
:func:`load_data`. It resolves the backbones first, once per run
(:func:`resolve_backbones`: the checkpoint folders checked, the modules built, no
weights read; ``Data.backbones``, which ``cdds_jax.encoders`` wires into the model),
so a missing checkpoint is named before any data is read. :class:`Data` hands out the
grain sources of each split:

- stored features (``features``, ``scan_precomp``, ``arrayrecord``): image features
  from the split, captions as features, BiGRU word ids or backbone ids;
- image files (``karpathy``, ``laps``; docs/cdds.md §12.7-12.8), each checked to
  decode when its split is opened (:mod:`~cdds_jax.data.image_check`): JPEG bytes
  decoded and augmented by :class:`~cdds_jax.data.images.TrainImageTransform` in the input
  pipeline (its worker processes with ``data.worker_count`` > 0), evaluation images
  resized once per unique image; captions tokenised ONCE per split by the tokenizer of
  the text backbone's folder (``model.text_backbone_path``: BERT's WordPiece, CLIP's
  BPE) into ``data.max_words`` ids, and with ``data.caption_augment`` (BERT only) the
  training captions augmented per epoch as LAPS does
  (:class:`~cdds_jax.data.captions.CaptionAugment`, docs/cdds.md §12.8).

``data.synthetic`` writes demo data on first use into the cache folder
(:func:`xmodal.files.cache_dir`): a feature store (``kind = "features"``) or JPEG files
with a Karpathy JSON and tiny backbones of the configured kinds (``kind = "images"``,
:func:`demo_raw`).
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cdds_jax.data import synthetic_images
from cdds_jax.data.captions import CaptionAugment, rate_threshold
from cdds_jax.data.image_check import check_images
from cdds_jax.data.images import ImageSpec, TrainImageTransform, eval_image
from cdds_jax.data.raw import RawImageSource, RawPairSource, RawSplit
from cdds_jax.data.sources import CaptionSource, ImageSource, PairSource
from cdds_jax.data.split import RetrievalSplit, check_compatible
from cdds_jax.data.text import TokenTable, Vocabulary, WordPieces
from xmodal.backbones import registry
from xmodal.backbones.folders import Backbones, open_backbone
from xmodal.files import cache_dir
from xmodal.pipeline import Chain, EpochTransform

__all__ = [
    "IMAGE_ENCODERS",
    "TEXT_ENCODERS",
    "Data",
    "EvalPairs",
    "Split",
    "demo_raw",
    "encoder_kinds",
    "image_spec",
    "load_data",
    "read_config_split",
    "resolve_backbones",
    "save_vocab",
    "text_input",
]

Split = RetrievalSplit | RawSplit

#: ``model.image_encoder``: stored features or an image tower of the backbone registry.
IMAGE_ENCODERS: tuple[str, ...] = ("features", *registry.kinds("image"))
#: ``model.text_encoder``: stored features, the BiGRU, or a text tower of the registry.
TEXT_ENCODERS: tuple[str, ...] = ("features", "bigru", *registry.kinds("text"))
#: Old names still read (configs written before the backbones).
_ALIASES = {"precomputed": "features"}


def encoder_kinds(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """``(model.image_encoder, model.text_encoder)``, checked, old names mapped."""
    image = _ALIASES.get(config.model.image_encoder, config.model.image_encoder)
    text = _ALIASES.get(config.model.text_encoder, config.model.text_encoder)
    if image not in IMAGE_ENCODERS:
        raise ValueError(
            f"config.model.image_encoder: expected one of {list(IMAGE_ENCODERS)}, "
            f"got {config.model.image_encoder!r}"
        )
    if text not in TEXT_ENCODERS:
        raise ValueError(
            f"config.model.text_encoder: expected one of {list(TEXT_ENCODERS)}, "
            f"got {config.model.text_encoder!r}"
        )
    return image, text


def demo_raw(
    config: ml_collections.ConfigDict,
) -> synthetic_images.DemoRaw | None:
    """The synthetic JPEG set + tiny backbones of ``data.synthetic.kind = "images"``
    (written on first use), or None."""
    syn = config.data.synthetic
    if not syn.enabled or syn.get("kind", "features") != "images":
        return None
    image_kind, text_kind = encoder_kinds(config)
    return synthetic_images.ensure_demo_raw(
        cache_dir() / "cdds",
        seed=int(syn.seed),
        num_images={"train": syn.num_train, "dev": syn.num_dev, "test": syn.num_test},
        image_kind="vit" if image_kind == "features" else image_kind,
        text_kind=text_kind if text_kind in registry.kinds("text") else "bert",
        backbone_size=int(syn.backbone_size),
        image_size=int(syn.image_size),
        num_concepts=int(syn.num_concepts),
        concepts_per_image=int(syn.concepts_per_image),
    )


def text_input(batch: Mapping[str, Any]) -> Any:
    """The caption input of a batch: stored features (``text``) or ids (``tokens``)."""
    return batch["text"] if "text" in batch else batch["tokens"]


def _generator_fields(syn: ml_collections.ConfigDict) -> dict[str, Any]:
    """The synthetic generator and, for ``mixed``, its nuisance scales (the
    ``offsets`` store is keyed without them, so its cache predates them)."""
    generator = str(syn.get("generator", "offsets"))
    if generator == "offsets":
        return {}
    names = ("shape_share", "spread_scale", "token_scale", "gain_scale")
    return {"generator": generator, **{k: float(syn[k]) for k in names}}


def _data_root(
    config: ml_collections.ConfigDict, demo: synthetic_images.DemoRaw | None
) -> pathlib.Path:
    """``data.root``, or the synthetic data (written on first use) for demo configs."""
    syn = config.data.synthetic
    if demo is not None:
        return demo.laps if config.data.format == "laps" else demo.annotation
    if syn.enabled:
        from cdds_jax.data import synthetic

        return synthetic.ensure_demo_store(
            cache_dir() / "cdds",
            seed=syn.seed,
            num_images={
                "train": syn.num_train,
                "dev": syn.num_dev,
                "test": syn.num_test,
            },
            num_tokens=syn.num_tokens,
            image_dim=syn.image_dim,
            text_dim=syn.text_dim,
            max_words=syn.max_words,
            num_concepts=syn.num_concepts,
            concepts_per_image=syn.concepts_per_image,
            noise=syn.noise,
            colour_scale=syn.colour_scale,
            syntax_scale=syn.syntax_scale,
            **_generator_fields(syn),
        )
    root = pathlib.Path(config.data.root).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"config.data.root: data folder {str(root)!r} not found. Put the "
            f"{config.data.format!r} files there or pass --config.data.root=... (README "
            "'Real data'), or use a :demo config"
        )
    return root


def _image_root(
    config: ml_collections.ConfigDict, demo: synthetic_images.DemoRaw | None
) -> pathlib.Path | None:
    """The image folder of the raw formats (``data.image_root``; the demo's)."""
    if demo is not None:
        return demo.image_root
    value = config.data.get("image_root", "")
    return pathlib.Path(value).expanduser() if value else None


def _read_split(
    config: ml_collections.ConfigDict,
    name: str,
    demo: synthetic_images.DemoRaw | None,
) -> Split:
    from cdds_jax.data import read_split

    split = read_split(
        config.data.format,
        _data_root(config, demo),
        name,
        image_root=_image_root(config, demo),
    )
    if isinstance(split, RawSplit):  # every image decodes, before any training step
        check_images(split.image_paths, f"the {name} split of {split.root}")
    return split


def read_config_split(config: ml_collections.ConfigDict, name: str) -> Split:
    """Split ``name`` in the config's format, root and image folder."""
    return _read_split(config, name, demo_raw(config))


def resolve_backbones(config: ml_collections.ConfigDict) -> Backbones:
    """The backbones of ``config``: checkpoint folders checked (the configured ones, or
    the synthetic demo's), modules built in ``model.dtype`` with ``model.remat`` (no
    weights read). :func:`load_data` does this once per run (``Data.backbones``)."""
    return _resolve_backbones(config, demo_raw(config))


def _resolve_backbones(
    config: ml_collections.ConfigDict, demo: synthetic_images.DemoRaw | None
) -> Backbones:
    image_kind, text_kind = encoder_kinds(config)
    image_arch = registry.REGISTRY.get(image_kind)
    text_arch = registry.REGISTRY.get(text_kind)
    if image_arch is None and text_arch is None:
        return Backbones(image_kind, text_kind)
    if demo is not None:
        image_path, text_path = demo.image_backbone, demo.text_backbone
    else:
        image_path = config.model.image_backbone_path
        text_path = config.model.text_backbone_path
    options = dict(dtype=jnp.dtype(config.model.dtype), remat=bool(config.model.remat))
    image = text = None
    if image_arch is not None:
        field = "model.image_backbone_path"
        image = open_backbone(image_path, field, image_kind, **options)
    if text_arch is not None:
        field = "model.text_backbone_path"
        text = open_backbone(text_path, field, text_kind, **options)
    return Backbones(image_kind, text_kind, image, text)


def image_spec(backbones: Backbones) -> ImageSpec | None:
    """How images are prepared for the image backbone (None without one): its size,
    and its evaluation crop (the registry's ``center_crop``: CLIP's resize + centre
    crop)."""
    if backbones.image is None:
        return None
    height, width = backbones.image.module.config.image_size
    if height != width:
        raise ValueError(
            f"{backbones.image.folder}: image_size {(height, width)}: only square "
            "inputs are supported"
        )
    return ImageSpec(
        size=int(height), center_crop=backbones.image.architecture.center_crop
    )


class Data:
    """The splits of a run and how each reaches the model.

    Attributes:
      train, dev, test: the opened splits (None when not asked for).
      text_mode: ``features`` | ``tokens`` (BiGRU vocabulary) | ``ids`` (backbone
        tokenizer).
      vocab, max_words: the BiGRU vocabulary and the caption length L.
      tokenizer: the backbone tokenizer (``ids``).
      backbones: the run's backbones (folders, modules), resolved once.
      image_spec: image preparation for the image backbone (raw formats).
      seed: of the training augmentation.
      caption_augment: LAPS's caption augmentation in training (BERT ids), at rate
        ``caption_augment_rate``.
    """

    def __init__(
        self,
        train: Split | None,
        dev: Split | None,
        test: Split | None,
        *,
        text_mode: str,
        vocab: Vocabulary | None = None,
        max_words: int | None = None,
        tokenizer: Any = None,
        backbones: Backbones,
        seed: int = 0,
        caption_augment: bool = False,
        caption_augment_rate: float = 0.2,
    ) -> None:
        self.train, self.dev, self.test = train, dev, test
        self.text_mode, self.vocab, self.max_words = text_mode, vocab, max_words
        self.tokenizer, self.backbones, self.seed = tokenizer, backbones, seed
        self.caption_augment = caption_augment
        self.caption_augment_rate = caption_augment_rate
        self.image_spec = image_spec(backbones)
        self._tables: dict[tuple[str, str], TokenTable] = {}
        self._pieces: dict[tuple[str, str], WordPieces] = {}

    def tokens(self, split: Split) -> TokenTable | None:
        """The split's captions as backbone ids (made once per split), or None."""
        if self.text_mode != "ids":
            return None
        key = (str(split.root), split.split)
        if key not in self._tables:
            if split.captions is None:
                raise ValueError(
                    f"{split.root} [{split.split}]: model.text_encoder="
                    f"{self.backbones.text_kind!r} needs caption text (captions.txt), "
                    f"the split has {sorted(split.files)}"
                )
            assert self.max_words is not None
            table = TokenTable.encode(split.captions, self.tokenizer, self.max_words)
            self._tables[key] = table
            if table.num_full and jax.process_index() == 0:
                print(
                    f"{split.split}: {table.num_full} of {len(table)} captions fill all "
                    f"{table.max_length} ids of data.max_words (truncated or exactly "
                    "that long)",
                    flush=True,
                )
            _warn_empty_captions(split, table, self.tokenizer)
        return self._tables[key]

    def word_pieces(self, split: Split) -> WordPieces:
        """The split's captions untruncated, as WordPiece ids with their words (made
        once per split; the caption augmentation's input)."""
        key = (str(split.root), split.split)
        if key not in self._pieces:
            if self.tokens(split) is None:  # also checks there is caption text
                raise ValueError(
                    "data.caption_augment: needs the ids of a BERT text backbone, the "
                    f"captions reach the model as {self.text_mode!r}"
                )
            self._pieces[key] = WordPieces.encode(split.captions, self.tokenizer)
        return self._pieces[key]

    def _text(self, split: Split) -> dict[str, Any]:
        return dict(
            text=self.text_mode,
            vocab=self.vocab,
            max_words=self.max_words,
            tokens=self.tokens(split),
        )

    def _spec(self, split: Split) -> ImageSpec:
        if self.image_spec is None:
            raise ValueError(
                f"{split.root} [{split.split}]: data.format={split.format!r} holds image "
                "files: set model.image_encoder to an image backbone "
                f"({', '.join(registry.kinds('image'))})"
            )
        return self.image_spec

    def pair_source(self, split: Split) -> PairSource | RawPairSource:
        """Training items, one per caption."""
        if isinstance(split, RawSplit):
            self._spec(split)
            return RawPairSource(split, **self._text(split))
        return PairSource(split, **self._text(split))

    def caption_source(self, split: Split) -> CaptionSource:
        """Evaluation captions (raw splits have the same caption side)."""
        return CaptionSource(split, **self._text(split))  # type: ignore[arg-type]

    def image_source(self, split: Split) -> ImageSource | RawImageSource:
        """Evaluation images, one per unique image."""
        if isinstance(split, RawSplit):
            return RawImageSource(split, self._spec(split))
        if self.image_spec is not None:
            raise ValueError(
                f"{split.root} [{split.split}]: model.image_encoder is an image "
                f"backbone but data.format={split.format!r} holds stored features"
            )
        return ImageSource(split)

    def train_transform(self) -> EpochTransform | None:
        """Decoding + augmentation of the training images (raw formats), then the
        caption augmentation (``caption_augment``); None without either."""
        transforms: list[EpochTransform] = []
        if isinstance(self.train, RawSplit):
            transforms.append(TrainImageTransform(self._spec(self.train), self.seed))
        if self.caption_augment and self.train is not None:
            pieces = self.word_pieces(self.train)
            rate = self.caption_augment_rate
            transforms.append(CaptionAugment(pieces, seed=self.seed, rate=rate))
        if len(transforms) > 1:
            return Chain(*transforms)
        return transforms[0] if transforms else None

    def pair_eval_source(self, split: Split) -> PairSource | EvalPairs:
        """The split's matched pairs prepared as for evaluation (no augmentation;
        image files decoded and resized per item): what the dataset-level S of the
        ``subset`` / ``precompute`` sources is computed over."""
        pairs = self.pair_source(split)
        if isinstance(split, RawSplit):
            return EvalPairs(pairs, self._spec(split))
        return pairs

    def example(self, split: Split) -> dict[str, np.ndarray]:
        """Item 0 of the split's training source as a batch of one (model init)."""
        item = self.pair_eval_source(split)[0]
        return {k: np.asarray(v)[None] for k, v in item.items()}


class EvalPairs:
    """Raw training pairs with the evaluation image transform (picklable)."""

    def __init__(self, pairs: RawPairSource, spec: ImageSpec) -> None:
        self.pairs, self.spec = pairs, spec

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.pairs[i])
        path = str(item.pop("path", ""))
        item["image"] = eval_image(item.pop("jpeg"), self.spec, path)
        return item


def _warn_empty_captions(split: Split, table: TokenTable, tokenizer: Any) -> None:
    """One line (process 0) when captions tokenise to nothing but the special tokens
    (characters the tokenizer drops): the text tower then sees no word of them."""
    specials = int(tokenizer.encode([""], table.max_length).attention_mask.sum())
    empty = np.flatnonzero(table.lengths <= specials)
    if empty.size and jax.process_index() == 0:
        first = int(empty[0])
        print(
            f"warning: {split.split}: {empty.size} of {len(table)} captions are empty "
            f"after tokenisation by {table.source} (first, caption {first}: "
            f"{split.captions[first]!r}); they train and are scored as empty text",
            file=sys.stderr,
            flush=True,
        )


def load_data(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, *, splits: Sequence[str]
) -> Data:
    """Resolves the backbones, opens the requested splits (``train``/``dev``/``test``)
    and the caption ids.

    The bigru vocabulary is ``workdir/vocab.json`` when it exists (resume, evaluate);
    otherwise it is built from the training captions and :func:`save_vocab` writes it.
    With a text backbone (``model.text_encoder = "bert"`` / ``"clip_text"``) captions
    become ids of its folder's tokenizer (``data.max_words`` of them, the special
    tokens included: [CLS] / [SEP], or CLIP's start / end of text).
    """
    from xmodal.backbones import load_tokenizer

    # The synthetic demo's files once (None without one), then the checkpoint folders:
    # a missing one is named before any data is read.
    demo = demo_raw(config)
    found = _resolve_backbones(config, demo)
    caption_augment = bool(config.data.get("caption_augment", False))
    if caption_augment and found.text_kind != "bert":
        raise ValueError(
            "config.data.caption_augment = True: LAPS's caption augmentation works on "
            f"BERT WordPiece ids, but model.text_encoder = {found.text_kind!r}; set "
            "model.text_encoder = 'bert' or --config.data.caption_augment=False"
        )
    caption_augment_rate = float(config.data.get("caption_augment_rate", 0.2))
    if caption_augment:
        rate_threshold(caption_augment_rate)  # in [0, 1], else an error naming it
    opened: dict[str, Split | None] = {}
    for role in ("train", "dev", "test"):
        name = config.data[f"{role}_split"]
        opened[role] = _read_split(config, name, demo) if role in splits else None
    # Dimensions across splits, before any training (a mismatch would otherwise
    # surface as a shape error at the first evaluation).
    check_compatible(opened)
    if found.text is not None:  # the text backbone's tokenizer ids
        text_mode = "ids"
    elif found.text_kind == "bigru":  # the BiGRU's word ids
        text_mode = "tokens"
    else:
        text_mode = "features"
    vocab = tokenizer = None
    max_words: int | None = None
    if found.text is not None:
        max_words = int(config.data.max_words)
        limit = found.text.module.config.max_position_embeddings
        if max_words > limit:
            raise ValueError(
                f"config.data.max_words = {max_words}: more than the "
                f"{limit} positions of {found.text.folder}"
            )
        tokenizer = load_tokenizer(found.text.folder)
    elif text_mode == "tokens":
        max_words = int(config.data.max_words)
        vocab_path = workdir / "vocab.json"
        if vocab_path.exists():
            vocab = Vocabulary.load(vocab_path)
        else:
            # Built here, saved by the driver once the workdir is open (nothing is
            # written into a workdir before its lock and config check).
            train = opened["train"] or _read_split(
                config, config.data.train_split, demo
            )
            if train.captions is None:
                raise ValueError(
                    f"{train.root}: model.text_encoder='bigru' needs caption text "
                    "(captions.txt / {split}_caps.txt) in the training split"
                )
            vocab = Vocabulary.build(
                train.captions, min_count=int(config.data.vocab_min_count)
            )
    return Data(
        opened["train"],
        opened["dev"],
        opened["test"],
        text_mode=text_mode,
        vocab=vocab,
        max_words=max_words,
        tokenizer=tokenizer,
        backbones=found,
        seed=int(config.seed),
        caption_augment=caption_augment,
        caption_augment_rate=caption_augment_rate,
    )


def save_vocab(data: Data, workdir: pathlib.Path) -> None:
    """Writes ``workdir/vocab.json`` once (process 0; atomically, so other processes
    of a multi-host job never read it half written)."""
    path = workdir / "vocab.json"
    if data.vocab is not None and not path.exists() and jax.process_index() == 0:
        data.vocab.save(path)
