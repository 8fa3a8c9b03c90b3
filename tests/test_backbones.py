"""Backbones against transformers' PyTorch models, tokenizer ids, checkpoint errors.

Every architecture is built tiny and random by ``transformers`` itself (parameters
redrawn so biases and norms are not trivial), saved with ``save_pretrained``, loaded
with ``xmodal.backbones.from_pretrained`` and compared on the same inputs in float32:
max |ours - HF| <= 1e-5 * max |HF|. The project's own random-checkpoint writer is
checked the other way round: transformers loads what it writes, with no missing or
unexpected tensors, and computes the same outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from xmodal import backbones as bb
from xmodal.backbones import hf_checkpoint

transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True)
def _torch_no_grad():
    """The reference forwards here need no autograd; scoped to this module's tests
    (a global switch would leak into other modules' gradient tests in the worker)."""
    with torch.no_grad():
        yield


RTOL = 1e-5  # of the reference output's scale (max |HF|)


# ----------------------------------------------------------------- helpers


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Redraws every parameter: weights / biases N(0, std^2), norm scales 1 + N(0, std^2)."""
    g = torch.Generator().manual_seed(seed)
    norm_scales = {
        id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)
    }
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=g) * std
        p.copy_(noise + 1.0 if id(p) in norm_scales else noise)
    return model.eval()


def _save(model: torch.nn.Module, folder: Path, seed: int = 0, **kwargs) -> Path:
    _randomize(model, seed).save_pretrained(folder, **kwargs)
    return folder


def _images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _hf_vision(model: torch.nn.Module, images: np.ndarray):
    return model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))


def _assert_close(ours, ref, what: str = "output") -> None:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    assert np.all(np.isfinite(ours)), what
    err = np.max(np.abs(ours - ref))
    scale = np.max(np.abs(ref))
    assert err <= RTOL * scale, f"{what}: max abs diff {err:.3g}, scale {scale:.3g}"


def _apply(module, variables, *args, **kwargs):
    return jax.jit(lambda v, *a: module.apply(v, *a, **kwargs))(variables, *args)


# ----------------------------------------------------------------- ViT


@pytest.mark.parametrize(
    "fields",
    [
        dict(image_size=32, patch_size=8, qkv_bias=True, hidden_act="gelu"),
        dict(image_size=[32, 24], patch_size=8, qkv_bias=False, hidden_act="gelu_new"),
    ],
    ids=["square", "rect_nobias"],
)
def test_vit_matches_transformers(tmp_path, fields):
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        **fields,
    )
    hf = _save(transformers.ViTModel(cfg), tmp_path)
    module, variables = bb.from_pretrained(tmp_path, add_pooling_layer=True)
    assert isinstance(module, bb.ViT)
    size = cfg.image_size if isinstance(cfg.image_size, list) else [cfg.image_size] * 2
    x = _images((3, *size, 3))
    ref = _hf_vision(transformers.ViTModel.from_pretrained(hf), x)
    hidden, pooled = _apply(module, variables, x)
    assert hidden.shape == (3, 1 + (size[0] // 8) * (size[1] // 8), 32)
    _assert_close(hidden, ref.last_hidden_state, "last_hidden_state")
    _assert_close(pooled, ref.pooler_output, "pooler_output")
    # Without the pooler the same folder loads (pooler tensors are ignored).
    module, variables = bb.from_pretrained(tmp_path)
    _assert_close(_apply(module, variables, x), ref.last_hidden_state)


# ----------------------------------------------------------------- Swin


@pytest.mark.parametrize(
    "fields, image_hw",
    [
        # 25 x 28 px, patch 2 -> pads to 26 x 28 -> 13 x 14 tokens: window 5 pads to
        # 15 x 15, odd blocks shift by 2; merging pads 13 -> 14 -> 7 x 7: pads to
        # 10 x 10, shifted again.
        (dict(image_size=28, patch_size=2, window_size=5, depths=[2, 2]), (25, 28)),
        # 32 px, patch 4 -> 8 x 8, window 4; stage 2 is 4 x 4: one window, no shift;
        # absolute position embeddings, tanh GELU.
        (
            dict(
                image_size=32,
                patch_size=4,
                window_size=4,
                depths=[2, 2],
                use_absolute_embeddings=True,
                hidden_act="gelu_new",
            ),
            (32, 32),
        ),
    ],
    ids=["padding_and_shift", "stage_equals_window"],
)
def test_swin_matches_transformers(tmp_path, fields, image_hw):
    cfg = transformers.SwinConfig(embed_dim=16, num_heads=[2, 4], **fields)
    hf = _save(transformers.SwinModel(cfg), tmp_path)
    module, variables = bb.from_pretrained(tmp_path, add_pooling_layer=True)
    assert isinstance(module, bb.Swin)
    x = _images((2, *image_hw, 3), seed=1)
    ref = _hf_vision(transformers.SwinModel.from_pretrained(hf), x)
    hidden, pooled = _apply(module, variables, x)
    _assert_close(hidden, ref.last_hidden_state, "last_hidden_state")
    _assert_close(pooled, ref.pooler_output, "pooler_output")


def test_swin_shift_mask_and_window_plan():
    # One window per stage no larger than the window; smaller stages are refused
    # (transformers' SwinModel fails on them as well).
    assert bb.swin.window_plan((7, 7), 7, 3) == (7, 0, (7, 7))
    assert bb.swin.window_plan((13, 14), 5, 2) == (5, 2, (15, 15))
    with pytest.raises(ValueError, match="smaller than the window 7"):
        bb.swin.window_plan((6, 9), 7, 3)
    mask = bb.swin.shift_mask((8, 8), 4, 2)
    assert mask.shape == (4, 16, 16)
    assert not mask[0].any()  # the top-left window holds one region
    assert set(np.unique(mask)) == {0.0, -100.0}


# ----------------------------------------------------------------- CLIP vision

_CLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)


def test_clip_vision_matches_transformers(tmp_path):
    cfg = transformers.CLIPVisionConfig(**_CLIP_VISION)
    hf = _save(transformers.CLIPVisionModel(cfg), tmp_path)
    module, variables = bb.from_pretrained(tmp_path, add_pooling_layer=True)
    assert isinstance(module, bb.CLIPVision)
    x = _images((3, 32, 32, 3), seed=2)
    ref = _hf_vision(transformers.CLIPVisionModel.from_pretrained(hf), x)
    hidden, pooled = _apply(module, variables, x)
    # last_hidden_state is the encoder output (no post_layernorm); pooler_output is
    # post_layernorm of the class token.
    _assert_close(hidden, ref.last_hidden_state, "last_hidden_state")
    _assert_close(pooled, ref.pooler_output, "pooler_output")


def test_clip_full_model_folder(tmp_path):
    # A CLIPModel folder (like openai/clip-vit-large-patch14): config.json has
    # model_type "clip" with a vision_config; tensors under vision_model.; the text
    # tower and projections are ignored.
    cfg = transformers.CLIPConfig(
        vision_config=_CLIP_VISION,
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            vocab_size=99,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        projection_dim=16,
    )
    hf = _save(transformers.CLIPModel(cfg), tmp_path, seed=3)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clip"
    module, variables = bb.from_pretrained(tmp_path)
    x = _images((2, 32, 32, 3), seed=3)
    clip = transformers.CLIPModel.from_pretrained(hf)
    ref = clip.vision_model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)))
    _assert_close(_apply(module, variables, x), ref.last_hidden_state)


# ----------------------------------------------------------------- BERT

_BERT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _bert_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = np.array([12, 7, 1, 0])  # the last row is all padding
    ids = rng.integers(1, 100, size=(4, 12)).astype(np.int32)
    mask = (np.arange(12)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, 0).astype(np.int32)
    types = (np.arange(12)[None] >= 5).astype(np.int32) * mask
    return ids, mask, types


def _bert_ref(model, ids, mask, types):
    return model(
        input_ids=torch.from_numpy(ids).long(),
        attention_mask=torch.from_numpy(mask).long(),
        token_type_ids=torch.from_numpy(types).long(),
    )


def _assert_bert_close(hidden, pooled, ref, mask):
    # Rows with at least one real token are defined in HF at every position (padded
    # queries attend to the real keys). An all-padding row has no defined attention:
    # torch's SDPA gives it zero attention output, HF's eager path (and ours) uniform
    # weights; it is only required to be finite.
    ref_h = ref.last_hidden_state.numpy()
    defined = mask.any(axis=1)
    assert np.all(np.isfinite(np.asarray(hidden)))
    _assert_close(np.asarray(hidden)[defined], ref_h[defined], "last_hidden_state")
    if pooled is not None:
        _assert_close(
            np.asarray(pooled)[defined], ref.pooler_output.numpy()[defined], "pooler"
        )


def test_bert_matches_transformers_with_padding(tmp_path):
    hf = _save(transformers.BertModel(transformers.BertConfig(**_BERT)), tmp_path)
    module, variables = bb.from_pretrained(tmp_path, add_pooling_layer=True)
    assert isinstance(module, bb.Bert)
    ids, mask, types = _bert_inputs()
    ref = _bert_ref(transformers.BertModel.from_pretrained(hf), ids, mask, types)
    hidden, pooled = _apply(module, variables, ids, mask, types)
    _assert_bert_close(hidden, pooled, ref, mask)
    # token_type_ids default to zeros, attention_mask to all ones.
    module, variables = bb.from_pretrained(tmp_path)
    ref0 = transformers.BertModel.from_pretrained(hf)(
        input_ids=torch.from_numpy(ids[:2]).long()
    )
    _assert_close(_apply(module, variables, ids[:2]), ref0.last_hidden_state)


def test_bert_legacy_pytorch_bin_layout(tmp_path):
    # bert-base-uncased's files come from BertForPreTraining in the TF era: names
    # under "bert.", LayerNorm.gamma / beta, and cls.* heads; read from a PyTorch
    # pickle here (pytorch_model.bin).
    model = _randomize(transformers.BertModel(transformers.BertConfig(**_BERT)), 4)
    state = {}
    for name, value in model.state_dict().items():
        if "LayerNorm" in name:
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        state[f"bert.{name}"] = value.clone()
    state["cls.predictions.bias"] = torch.zeros(100)
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    model.config.to_json_file(tmp_path / "config.json")
    module, variables = bb.from_pretrained(tmp_path, add_pooling_layer=True)
    ids, mask, types = _bert_inputs(seed=4)
    hidden, pooled = _apply(module, variables, ids, mask, types)
    _assert_bert_close(hidden, pooled, _bert_ref(model, ids, mask, types), mask)


def test_sharded_safetensors(tmp_path):
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
    )
    hf = _save(transformers.ViTModel(cfg), tmp_path, seed=5, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    module, variables = bb.from_pretrained(tmp_path)
    x = _images((2, 16, 16, 3), seed=5)
    ref = _hf_vision(transformers.ViTModel.from_pretrained(hf), x)
    _assert_close(_apply(module, variables, x), ref.last_hidden_state)


# ----------------------------------------------------------------- options


def test_bf16_remat_and_dropout_options(tmp_path):
    bb.write_random_checkpoint(tmp_path, "bert", weight_std=0.2, num_hidden_layers=1)
    ids, mask, types = _bert_inputs(seed=6)
    module, variables = bb.from_pretrained(tmp_path)
    ref = _apply(module, variables, ids, mask, types)

    # bf16 compute, float32 parameters: close to float32.
    m16, v16 = bb.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    out16 = _apply(m16, v16, ids, mask, types)
    assert out16.dtype == jnp.bfloat16
    assert jax.tree.leaves(v16)[0].dtype == np.float32
    assert np.max(np.abs(np.asarray(out16, np.float32) - ref)) < 0.1

    # remat: the same loss and gradients.
    def grads(m):
        def loss(v):
            return jnp.sum(m.apply(v, ids, mask, types) ** 2)

        return jax.jit(jax.value_and_grad(loss))(variables)

    (l0, g0), (l1, g1) = grads(module), grads(module.clone(remat=True))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())

    # dropout (BERT's 0.1): random, finite, and off by default.
    drop = _apply(
        module,
        variables,
        ids,
        mask,
        types,
        deterministic=False,
        rngs={"dropout": jax.random.PRNGKey(0)},
    )
    assert np.all(np.isfinite(drop)) and not np.allclose(drop, ref)


def test_training_mode_vision_paths_run(tmp_path):
    # Swin stochastic depth + attention dropout, under remat and jit.
    bb.write_random_checkpoint(
        tmp_path,
        "swin",
        image_size=16,
        depths=(2,),
        num_heads=(2,),
        attention_probs_dropout_prob=0.1,
        drop_path_rate=0.2,
    )
    module, variables = bb.from_pretrained(tmp_path, remat=True)
    x = _images((2, 16, 16, 3), seed=7)

    def loss(v, rng):
        y = module.apply(v, x, deterministic=False, rngs={"dropout": rng})
        return jnp.mean(y**2)

    g = jax.jit(jax.grad(loss))(variables, jax.random.PRNGKey(1))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))


# ----------------------------------------------------------------- registry


def test_registry_entries_keep_the_output_contract():
    # Every architecture at its tiny size returns tokens [B, N, D], D = hidden_size
    # (the contract of xmodal/backbones/registry.py), and the tables derived from
    # the registry list its kind and model types.
    from xmodal.backbones import folders, pretrained, registry

    for kind, arch in bb.REGISTRY.items():
        config = arch.config_cls(**arch.tiny)
        module = bb.from_config(config)
        inputs = arch.dummy_inputs(config)
        variables = module.init(jax.random.PRNGKey(0), *inputs)
        tokens = module.apply(variables, *inputs)
        assert tokens.ndim == 3 and tokens.shape[0] == 1, (kind, tokens.shape)
        assert tokens.shape[2] == config.hidden_size, (kind, tokens.shape)
        assert folders.MODEL_TYPES[kind] == arch.model_types
        # A model_type is written and read by default as its first tower.
        for t in arch.model_types:
            assert registry.resolve(t, kind) is arch
            if registry.resolve(t) is arch:
                assert pretrained.TINY[t] == dict(arch.tiny)
        assert (arch.modality == "image") == (arch.pixel_mean_std is not None)
        assert (arch.modality == "text") == (arch.tokenizer is not None)


# ----------------------------------------------------------------- writer


@pytest.mark.parametrize(
    "kind", ["vit", "swin", "clip_vision_model", "clip", "clip_text_model", "bert"]
)
def test_random_checkpoint_loads_in_transformers(tmp_path, kind):
    bb.write_random_checkpoint(tmp_path, kind, seed=8, weight_std=0.2)
    cls = {
        "vit": transformers.ViTModel,
        "swin": transformers.SwinModel,
        "clip_vision_model": transformers.CLIPVisionModel,
        "clip": transformers.CLIPModel,  # both towers, projections, logit_scale
        "clip_text_model": transformers.CLIPTextModel,
        "bert": transformers.BertModel,
    }[kind]
    hf, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    hf.eval()
    module, variables = bb.from_pretrained(tmp_path, add_pooling_layer=True)
    if kind in ("clip", "clip_text_model"):
        text, text_vars = bb.from_pretrained(
            tmp_path, kind="clip_text", add_pooling_layer=True
        )
        texts = ["a red circle and a blue cross", "THE dog's ball!", ""]
        batch = bb.load_tokenizer(tmp_path).encode(texts, 12)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
        ref_ids = tokenizer(texts, max_length=12, padding="max_length", truncation=True)
        np.testing.assert_array_equal(batch.input_ids, ref_ids["input_ids"])
        text_model = hf if kind == "clip_text_model" else hf.text_model
        ref = text_model(
            input_ids=torch.from_numpy(batch.input_ids).long(),
            attention_mask=torch.from_numpy(batch.attention_mask).long(),
        )
        hidden, pooled = _apply(text, text_vars, batch.input_ids, batch.attention_mask)
        _assert_close(hidden, ref.last_hidden_state, "text last_hidden_state")
        _assert_close(pooled, ref.pooler_output, "text pooler_output")
        if kind == "clip_text_model":
            return
        hf = hf.vision_model
    if kind == "bert":
        ids, mask, types = _bert_inputs(seed=8)
        ids = ids % module.config.vocab_size
        ref = _bert_ref(hf, ids, mask, types)
        hidden, pooled = _apply(module, variables, ids, mask, types)
        _assert_bert_close(hidden, pooled, ref, mask)
        auto = transformers.AutoModel.from_pretrained(tmp_path)
        assert type(auto).__name__ == "BertModel"
        return
    x = _images((2, *module.config.image_size, 3), seed=8)
    ref = _hf_vision(hf, x)
    hidden, pooled = _apply(module, variables, x)
    _assert_close(hidden, ref.last_hidden_state, "last_hidden_state")
    _assert_close(pooled, ref.pooler_output, "pooler_output")


def test_random_checkpoint_tokenizer_matches_transformers(tmp_path):
    bb.write_random_checkpoint(tmp_path, "bert")
    texts = ["This movie was REALLY funny!", "我很喜欢这个电影", "zebra qux"]
    ours = bb.load_tokenizer(tmp_path).encode(texts, 16)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ref = hf(texts, max_length=16, padding="max_length", truncation=True)
    np.testing.assert_array_equal(ours.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(ours.attention_mask, ref["attention_mask"])
    np.testing.assert_array_equal(ours.token_type_ids, ref["token_type_ids"])


# ----------------------------------------------------------------- tokenizer

_SENTENCES = [
    "Hello, World! The café served crème brûlée; naïve résumé?",
    "unbelievably-long-hyphenated words... and (parentheses) [brackets]",
    "我喜欢看电影，但是不喜欢下雨天。",
    "Mixed 中文 and English: 电影 is film!",
    "zzyzx qwertyuiop xylophone",  # unknown words
    "a " * 40 + "end",  # truncated
    "   ",  # empty after normalisation
    "Tabs\tand\nnewlines\r\nand \u00a0 odd\u200bspaces \x00 control",
    "[MASK] is a special token, [mask] is not",
    "Ünïcödé ÀÇÇÈÑTS ÅÄÖ ÆØ",
]

_UNCASED_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    *".,!?;:'\"()[]-",
    "the", "a", "and", "is", "not", "end", "hello", "world", "cafe", "served",
    "creme", "brulee", "naive", "resume", "words", "long", "un", "##believ",
    "##ably", "##s", "##ed", "hyp", "##hen", "##ated", "paren", "##theses",
    "brack", "##ets", "mixed", "english", "film", "tabs", "new", "##lines",
    "odd", "spaces", "control", "mask", "special", "token", "unicode", "accents",
    "x", "##y", "##lo", "##phone", "u", "##n", "##i", "##c", "##o", "##d", "##e",
    "a", "e", "i", "o", "##t", "##s", "##a", "##r",
    *"我喜欢看电影但是不下雨天中文",
]  # fmt: skip

_CHINESE_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    *"，。！？；：,.!?;:()[]-",
    *"我喜欢看电影但是不下雨天中文",
    "Hello", "World", "The", "café", "Mixed", "English", "film", "is", "and",
    "a", "end", "##s", "##ed", "[", "]", "M", "##A", "##S", "##K", "mask",
    "Ü", "##n", "##ï", "##c", "##ö", "##d", "##é",
]  # fmt: skip


def _vocab_folder(folder: Path, vocab: list[str], config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    seen: list[str] = []
    for t in vocab:
        if t not in seen:
            seen.append(t)
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in seen), encoding="utf-8")
    cfg = {"tokenizer_class": "BertTokenizer", **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def _compare_tokenizers(folder: Path, max_length: int = 24) -> None:
    ours = bb.load_tokenizer(folder)
    hf = transformers.BertTokenizerFast.from_pretrained(folder)
    for pairs in (None, _SENTENCES[::-1]):
        got = ours.encode(_SENTENCES, max_length, text_pairs=pairs)
        ref = hf(
            _SENTENCES,
            pairs,
            max_length=max_length,
            padding="max_length",
            truncation=True,
            return_tensors="np",
        )
        for field in ("input_ids", "attention_mask", "token_type_ids"):
            value = getattr(got, field)
            assert value.dtype == np.int32 and value.shape == (
                len(_SENTENCES),
                max_length,
            )
            np.testing.assert_array_equal(
                value, ref[field], err_msg=f"{folder.name} {field}"
            )
    unk = hf.convert_tokens_to_ids("[UNK]")
    assert (got.input_ids == unk).any()  # unknown words are in the test


@pytest.mark.parametrize(
    "vocab, config",
    [
        (_UNCASED_VOCAB, {"do_lower_case": True}),
        (_CHINESE_VOCAB, {"do_lower_case": False}),
        (_UNCASED_VOCAB, {"do_lower_case": True, "strip_accents": False}),
        (_CHINESE_VOCAB, {"do_lower_case": False, "tokenize_chinese_chars": False}),
    ],
    ids=["uncased", "chinese", "uncased_keep_accents", "no_cjk_split"],
)
def test_tokenizer_matches_bert_tokenizer_fast(tmp_path, vocab, config):
    folder = _vocab_folder(tmp_path / "vocab", vocab, config)
    _compare_tokenizers(folder)
    # The tokenizer.json that transformers saves is read too (preferred).
    saved = tmp_path / "saved"
    transformers.BertTokenizerFast.from_pretrained(folder).save_pretrained(saved)
    assert (saved / "tokenizer.json").is_file()
    (saved / "vocab.txt").unlink(missing_ok=True)
    _compare_tokenizers(saved)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json, vocab\.txt"):
        bb.load_tokenizer(tmp_path)
    _vocab_folder(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "x"], {})
    with pytest.raises(
        ValueError, match=r"sep token '\[SEP\]' is not in the vocabulary"
    ):
        bb.load_tokenizer(tmp_path)


# ----------------------------------------------------------------- errors


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def test_missing_tensor_is_one_line_error(tmp_path):
    bb.write_random_checkpoint(tmp_path, "vit")
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    del tensors["encoder.layer.1.output.dense.bias"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(bb.CheckpointError) as e:
        bb.from_pretrained(tmp_path)
    msg = _one_line_error(e)
    assert str(path) in msg
    assert (
        "missing tensor 'encoder.layer.1.output.dense.bias' (expected shape (32,))"
        in msg
    )


def test_misshaped_tensor_is_one_line_error(tmp_path):
    bb.write_random_checkpoint(tmp_path, "swin")
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    name = "encoder.layers.0.blocks.1.attention.self.key.weight"
    tensors[name] = np.zeros((16, 8), np.float32)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(bb.CheckpointError) as e:
        bb.from_pretrained(tmp_path)
    msg = _one_line_error(e)
    assert f"{path}: tensor '{name}' has shape (16, 8), expected (16, 16)" in msg


def test_unexpected_tensor_and_harmless_extras(tmp_path):
    bb.write_random_checkpoint(tmp_path, "bert")
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    # Harmless: a task head, a buffer; not harmless: an unknown tensor.
    tensors["cls.predictions.bias"] = np.zeros(3, np.float32)
    tensors["embeddings.position_ids"] = np.zeros((1, 64), np.float32)
    save_file(tensors, path, metadata={"format": "pt"})
    bb.from_pretrained(tmp_path)
    tensors["encoder.layer.0.attention.self.extra.weight"] = np.zeros(
        (2, 2), np.float32
    )
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(bb.CheckpointError) as e:
        bb.from_pretrained(tmp_path)
    msg = _one_line_error(e)
    assert "unexpected tensor 'encoder.layer.0.attention.self.extra.weight'" in msg
    assert "(2, 2)" in msg


def test_several_problems_are_counted_on_one_line(tmp_path):
    bb.write_random_checkpoint(tmp_path, "clip_vision_model")
    path = tmp_path / "model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if ".layers.1." not in k}
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(bb.CheckpointError) as e:
        bb.from_pretrained(tmp_path)
    msg = _one_line_error(e)
    assert "missing tensor 'encoder.layers.1." in msg and "more:" in msg


def test_unknown_model_type_and_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError) as e:
        bb.from_pretrained(tmp_path)
    msg = _one_line_error(e)
    assert "config.json: model_type 'gpt2' is not supported" in msg
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(bb.CheckpointError, match="no weights found"):
        bb.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        bb.from_pretrained(tmp_path / "nowhere")


def test_pytorch_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    bb.write_random_checkpoint(tmp_path, "vit")
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(bb.CheckpointError) as e:
        bb.from_pretrained(tmp_path)
    assert "pytorch_model.bin: reading a PyTorch pickle checkpoint needs torch" in (
        _one_line_error(e)
    )


def test_bf16_safetensors_are_read(tmp_path):
    bb.write_random_checkpoint(tmp_path, "vit", weight_std=0.2)
    _, ref = bb.from_pretrained(tmp_path)
    state = {
        k: torch.from_numpy(v).to(torch.bfloat16)
        for k, v in load_file(tmp_path / "model.safetensors").items()
    }
    import safetensors.torch

    safetensors.torch.save_file(
        state, tmp_path / "model.safetensors", metadata={"format": "pt"}
    )
    _, got = bb.from_pretrained(tmp_path)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2), got, ref
    )
    assert hf_checkpoint.SAFETENSORS == "model.safetensors"
