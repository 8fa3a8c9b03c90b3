"""CLIP's text tower and BPE tokenizer against transformers (docs/cdds.md §3.5).

Forward and gradients of ``CLIPText`` against ``transformers.CLIPTextModel`` /
``CLIPModel`` built tiny and random by transformers (parameters redrawn so that no
tensor is trivial), on right-padded batches, for both of transformers' pooling rules
(``eos_token_id == 2``: arg-max id; otherwise the first end-of-text position):
max |ours - torch| <= 1e-5 * max |torch| per tensor (float32). The tokenizer's ids
equal ``CLIPTokenizerFast``'s on a caption set that exercises normalisation,
contractions, digits, bytes outside ASCII, special tokens and truncation, for a
merge-chain vocabulary (the random checkpoints') and a BPE trained by ``tokenizers``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch
import transformers
from flax import traverse_util
from tokenizers import Regex, models, pre_tokenizers, trainers

from cdds_jax.data import synthetic_images
from xmodal import backbones as bb
from xmodal.backbones import clip_tokenizer
from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.clip_text import clip_text_name_map, eos_positions
from xmodal.backbones.tokenizer import DEFAULT_WORDS

transformers.logging.set_verbosity_error()

RTOL = 1e-5  # of each reference tensor's scale (max |torch|)
VOCAB = 64
LENGTHS = (12, 7, 3, 9)  # real tokens per row (bos + words + eos), then padding

_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    projection_dim=8,
    bos_token_id=VOCAB - 2,
    eos_token_id=VOCAB - 1,
)


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for p in model.parameters():
            noise = std * torch.randn(p.shape, generator=g)
            p.copy_(noise + 1.0 if id(p) in norms else noise)
    return model.eval()


def _inputs(pad: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``[4, 12]`` ids: bos, random words, eos (the highest id), then ``pad``."""
    rng = np.random.default_rng(seed)
    t = np.arange(12)[None]
    lengths = np.asarray(LENGTHS)[:, None]
    ids = rng.integers(0, VOCAB - 2, size=(4, 12))
    ids[:, 0] = VOCAB - 2
    ids = np.where(t == lengths - 1, VOCAB - 1, ids)
    ids = np.where(t < lengths, ids, pad)
    return ids.astype(np.int32), (t < lengths).astype(np.int32)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)).long()


def _assert_close(ours, ref, what: str) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err, scale = np.max(np.abs(ours - ref)), np.max(np.abs(ref))
    assert scale > 0 and err <= RTOL * scale, (
        f"{what}: diff {err:.3g}, scale {scale:.3g}"
    )
    return float(err / scale)


# The pooling rules of CLIPTextModel: the OpenAI configs' eos_token_id = 2 pools the
# arg-max id (their padding is the end-of-text id, the highest); newer configs pool
# the first eos position, whatever the pad id.
RULES = {
    "legacy_argmax": dict(eos_token_id=2, pad=VOCAB - 1),
    "first_eos_pad_is_eos": dict(eos_token_id=VOCAB - 1, pad=VOCAB - 1),
    "first_eos_pad_0": dict(eos_token_id=VOCAB - 1, pad=0),
}


def _hf_text(folder: Path, rule: str, seed: int = 0) -> Path:
    fields = {**_TEXT, "eos_token_id": RULES[rule]["eos_token_id"]}
    model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**fields))
    _randomize(model, seed).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("rule", list(RULES))
def test_clip_text_forward_matches_transformers(tmp_path, rule):
    folder = _hf_text(tmp_path, rule)
    module, variables = bb.from_pretrained(folder, add_pooling_layer=True)
    assert isinstance(module, bb.CLIPText)
    assert module.config.eos_token_id == RULES[rule]["eos_token_id"]
    hf = transformers.CLIPTextModel.from_pretrained(folder).eval()
    ids, mask = _inputs(RULES[rule]["pad"])
    with torch.no_grad():
        ref = hf(input_ids=_t(ids), attention_mask=_t(mask))
        ref_unmasked = hf(input_ids=_t(ids))
    apply = jax.jit(lambda v, *a: module.apply(v, *a))
    hidden, pooled = apply(variables, ids, mask)
    # Every position, padded ones included, and the pooled end-of-text row.
    _assert_close(hidden, ref.last_hidden_state, "last_hidden_state")
    _assert_close(pooled, ref.pooler_output, "pooler_output")
    np.testing.assert_array_equal(
        eos_positions(ids, module.config.eos_token_id), np.asarray(LENGTHS) - 1
    )
    hidden, pooled = apply(variables, ids, None)
    _assert_close(hidden, ref_unmasked.last_hidden_state, "unmasked")
    _assert_close(pooled, ref_unmasked.pooler_output, "unmasked pooler")
    # Causal and key-masked: a real token's output does not depend on the padding.
    other_pad, _ = _inputs(pad=5)
    h2, _ = apply(variables, other_pad, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(h2)[real], np.asarray(hidden)[real], atol=1e-5
    )


def test_clip_text_input_errors():
    config = bb.CLIPTextConfig(**_TEXT)
    module = bb.CLIPText(config)
    ids = np.zeros((2, 17), np.int32)  # 16 positions
    with pytest.raises(
        ValueError, match="length 17 exceeds max_position_embeddings 16"
    ):
        module.init(jax.random.PRNGKey(0), ids)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\)"):
        module.init(jax.random.PRNGKey(0), ids[:, :4], np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match=r"CLIP text expects input_ids \[B, L\]"):
        module.init(jax.random.PRNGKey(0), ids[0])
    with pytest.raises(ValueError, match="not divisible"):
        bb.CLIPTextConfig(hidden_size=30, num_attention_heads=4)


def _torch_grads(model: torch.nn.Module, like) -> dict:
    grads = {
        n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None
    }
    table = hc.Checkpoint(
        "torch gradients", {n: g.shape for n, g in grads.items()}, grads.__getitem__
    )
    config = bb.CLIPTextConfig.from_hf(model.config.to_dict())
    shapes = {k: np.shape(v) for k, v in traverse_util.flatten_dict(like).items()}
    return hc.load_params(table, clip_text_name_map(config, True), shapes)


@pytest.mark.parametrize("rule", ["legacy_argmax", "first_eos_pad_0"])
def test_clip_text_gradients_match_transformers(tmp_path, rule):
    # A loss over every position (padded ones included) and the pooled row: every
    # parameter gets a gradient, equal to torch's through the loader's name map.
    folder = _hf_text(tmp_path, rule, seed=1)
    module, variables = bb.from_pretrained(folder, add_pooling_layer=True)
    ids, mask = _inputs(RULES[rule]["pad"], seed=1)
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 12, _TEXT["hidden_size"])).astype(np.float32)
    v = rng.normal(size=(4, _TEXT["hidden_size"])).astype(np.float32)

    @jax.jit
    def grad(params):
        def loss(params):
            h, pooled = module.apply({"params": params}, ids, mask)
            return jnp.sum(w * h) + jnp.sum(v * pooled)

        return jax.grad(loss)(params)

    ours = jax.device_get(grad(variables["params"]))
    model = transformers.CLIPTextModel.from_pretrained(folder).eval()
    out = model(input_ids=_t(ids), attention_mask=_t(mask))
    loss = (torch.from_numpy(w) * out.last_hidden_state).sum()
    (loss + (torch.from_numpy(v) * out.pooler_output).sum()).backward()
    ref = _torch_grads(model, ours)
    flat_ours, flat_ref = (
        traverse_util.flatten_dict(ours),
        traverse_util.flatten_dict(ref),
    )
    assert set(flat_ours) == set(flat_ref)
    worst = max(_assert_close(flat_ours[k], flat_ref[k], "/".join(k)) for k in flat_ref)
    assert worst <= RTOL

    # Tokens after a row's end of text reach no pooled output: with the loss on the
    # pooled rows only, the position rows past the longest caption get no gradient.
    def pooled_loss(params):
        return jnp.sum(v * module.apply({"params": params}, ids, mask)[1])

    g = jax.grad(pooled_loss)(variables["params"])
    position = np.asarray(g["position_embedding"])
    assert not position[max(LENGTHS) :].any() and position[: max(LENGTHS)].any()


def test_clip_model_folder_text_tower_and_projections(tmp_path):
    # A CLIPModel folder (openai/clip-vit-large-patch14's layout): kind picks the
    # tower; the projections are read for zero-shot embeddings.
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    cfg = transformers.CLIPConfig(
        vision_config=vision, text_config={**_TEXT, "eos_token_id": 2}, projection_dim=8
    )
    _randomize(transformers.CLIPModel(cfg), seed=3).save_pretrained(tmp_path)
    clip = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    assert isinstance(bb.from_pretrained(tmp_path)[0], bb.CLIPVision)  # the default
    with pytest.raises(ValueError, match="holds no bert model"):
        bb.load_config(tmp_path, "bert")
    text = bb.open_backbone(tmp_path, "model.text_backbone_path", "clip_text")
    image = bb.open_backbone(tmp_path, "model.image_backbone_path", "clip")
    assert isinstance(text.module, bb.CLIPText) and text.module.config.eos_token_id == 2
    ids, mask = _inputs(pad=VOCAB - 1, seed=4)
    x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(np.float32)
    t_module = text.module.clone(add_pooling_layer=True)
    i_module = image.module.clone(add_pooling_layer=True)
    t_params = {"params": text.load_params(add_pooling_layer=True)}
    i_params = {"params": image.load_params(add_pooling_layer=True)}
    hidden, pooled = t_module.apply(t_params, ids, mask)
    _, image_pooled = i_module.apply(i_params, x)
    with torch.no_grad():
        ref = clip.text_model(input_ids=_t(ids), attention_mask=_t(mask))
        ref_text = clip.text_projection(ref.pooler_output)
        pixels = torch.from_numpy(x.transpose(0, 3, 1, 2))
        ref_image = clip.visual_projection(
            clip.vision_model(pixel_values=pixels).pooler_output
        )
    _assert_close(hidden, ref.last_hidden_state, "last_hidden_state")
    _assert_close(np.asarray(pooled) @ text.load_projection(), ref_text, "text_embeds")
    _assert_close(
        np.asarray(image_pooled) @ image.load_projection(), ref_image, "image_embeds"
    )


def test_clip_text_folder_without_projection(tmp_path):
    _hf_text(tmp_path, "first_eos_pad_0")
    text = bb.open_backbone(tmp_path, "model.text_backbone_path", "clip_text")
    with pytest.raises(
        bb.CheckpointError, match=r"no tensor 'text_projection\.weight'"
    ):
        text.load_projection()
    with pytest.raises(ValueError, match="holds a 'clip_text_model' model, expected"):
        bb.check_folder(tmp_path, "model.image_backbone_path", "clip")


# ----------------------------------------------------------------- tokenizer

CAPTIONS = [
    "A man in a red shirt is riding a bike.",
    "Two  dogs\tplay in the\nsnow!!!",
    "There's a girl who'll say she'd've been... THERE",
    "The café's crème brûlée: naïve RÉSUMÉ",
    "1234 apples, 5.6 kg & 7% off?",
    "中文 和 日本語のテキスト",
    "emoji 🙂👍 and symbols ©®™ — dashes",
    "<|endoftext|> inside <|startoftext|> text",
    "",
    "   ",
    "word " * 100,  # truncated
    "ALL CAPS SHOUTING at the dog's ball",
]


def _merge_chain_folder(folder: Path) -> Path:
    # The random checkpoints' layout: one merge chain per word.
    words = [w.strip(".,!?:") for c in CAPTIONS[:5] for w in c.lower().split()][::2]
    folder.mkdir(parents=True)
    vocab = clip_tokenizer.clip_vocab(words)
    clip_tokenizer.write_bpe_files(folder, vocab, len(vocab), 77)
    return folder


def _trained_folder(folder: Path) -> Path:
    # A BPE trained by tokenizers on CLIP's words (competing merges, sub-words).
    model = models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix="")
    tok = tokenizers.Tokenizer(model)
    tok.normalizer = tokenizers.normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(clip_tokenizer.WORD_PATTERN), "removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    text = CAPTIONS * 3 + [
        "a dog runs on the grass",
        "two people ride bikes",
        "the snow",
    ]
    tok.train_from_iterator(text, trainer)
    spec = json.loads(tok.to_str())["model"]
    vocab = dict(spec["vocab"])
    for special in (clip_tokenizer.BOS, clip_tokenizer.EOS):
        vocab[special] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False), encoding="utf-8"
    )
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    return folder


def _compare(folder: Path) -> None:
    ours = bb.load_tokenizer(folder)
    hf = transformers.CLIPTokenizerFast.from_pretrained(folder)
    eos = hf.convert_tokens_to_ids(clip_tokenizer.EOS)
    assert ours.pad_id == eos == hf.pad_token_id
    for max_length in (77, 16):
        got = ours.encode(CAPTIONS, max_length)
        ref = hf(
            CAPTIONS,
            max_length=max_length,
            padding="max_length",
            truncation=True,
            return_tensors="np",
        )
        for field in ("input_ids", "attention_mask"):
            value = getattr(got, field)
            assert value.dtype == np.int32 and value.shape == (
                len(CAPTIONS),
                max_length,
            )
            np.testing.assert_array_equal(
                value, ref[field], err_msg=f"{folder.name} {field}"
            )
        # <|startoftext|> ... <|endoftext|> on every caption, truncated ones too.
        lengths = got.attention_mask.sum(1)
        assert (got.input_ids[:, 0] == hf.bos_token_id).all()
        assert (got.input_ids[np.arange(len(CAPTIONS)), lengths - 1] == eos).all()
        assert lengths.max() == max_length


@pytest.mark.parametrize(
    "build", [_merge_chain_folder, _trained_folder], ids=["chains", "trained"]
)
def test_clip_tokenizer_matches_clip_tokenizer_fast(tmp_path, build):
    folder = build(tmp_path / "files")
    _compare(folder)
    # The tokenizer.json transformers saves is read too (preferred), without the
    # vocab / merges files.
    saved = tmp_path / "saved"
    transformers.CLIPTokenizerFast.from_pretrained(folder).save_pretrained(saved)
    assert (saved / "tokenizer.json").is_file()
    for name in ("vocab.json", "merges.txt"):
        (saved / name).unlink(missing_ok=True)
    _compare(saved)


def test_clip_vocab_conventions():
    vocab = clip_tokenizer.clip_vocab(["red", "circle", "a"])
    assert vocab[-2:] == [clip_tokenizer.BOS, clip_tokenizer.EOS]  # eos: the highest id
    assert (
        len(set(vocab))
        == len(vocab)
        == 512 + len(["re", "red</w>", "ci", "cir", "circ", "circl", "circle</w>"]) + 2
    )
    merges = clip_tokenizer.merges_of(vocab)
    assert ("re", "d</w>") in merges and ("circl", "e</w>") in merges
    with pytest.raises(ValueError, match="must both come before it"):
        clip_tokenizer.merges_of([*vocab[:512], "xyz"])
    assert clip_tokenizer.special_ids(vocab) == {
        "bos_token_id": len(vocab) - 2,
        "eos_token_id": len(vocab) - 1,
    }


def test_demo_vocabulary_has_one_token_per_caption_word(tmp_path):
    # The demos' CLIP vocabulary: the merge chains are ordered so that no chain
    # splits another word ("a n" of "and" inside "triangle").
    vocab = synthetic_images.demo_vocab("clip_text")
    clip_tokenizer.write_bpe_files(tmp_path, vocab, len(vocab), 77)
    words = [*synthetic_images.caption_words(), *DEFAULT_WORDS]
    got = bb.load_tokenizer(tmp_path).encode(words, 4)
    split = [w for w, n in zip(words, got.attention_mask.sum(1), strict=True) if n != 3]
    assert not split
