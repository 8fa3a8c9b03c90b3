"""Gradients through BERT against transformers' ``BertModel``, and its [PAD] row.

``BertEmbeddings`` builds the word table with ``padding_idx=pad_token_id``: the pad
id's row gets no gradient (``xmodal/backbones/bert.py``'s module docstring). Every test
builds a tiny random ``BertModel`` with transformers (parameters redrawn so that no
tensor, the pad row included, is trivial), saves it with ``save_pretrained``, loads it
with our loader and compares the gradient of one scalar loss for every parameter,
mapped through ``bert_name_map``: max |ours - torch| <= 1e-5 * max |torch| per tensor
(float32). The padded ids are in every batch. The witness that a test would catch a
trained pad row: the same torch model with ``padding_idx = None`` gives that row a
gradient.

Paths: BERT alone (hidden states and pooler), DecAlign's text path (the driver's loss
on ``text_bert [B, 3, L]``; the official encoder's row handling mirrored in torch,
docs/decalign.md §3.8) and CDDS's ``encode_text`` (BERT -> ``text_proj`` -> mask,
docs/cdds.md §3.4).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import traverse_util

from cdds_jax.model import CDDSModel
from decalign_jax import objective, train
from xmodal import backbones as bb
from xmodal import config as config_lib
from xmodal import sharding
from xmodal.backbones import hf_checkpoint as hc
from xmodal.backbones.bert import bert_name_map

transformers.logging.set_verbosity_error()

RTOL = 1e-5  # of each reference tensor's scale (max |torch|)

# Dropout 0: the DecAlign loss runs the model in train mode (BERT's own dropout on).
_BERT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def _hf_bert(folder: Path, seed: int = 0, **fields) -> Path:
    """A ``BertModel`` with every parameter redrawn (norm scales 1 + noise), saved."""
    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**{**_BERT, **fields}))
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for p in model.parameters():
            noise = 0.2 * torch.randn(p.shape, generator=g)
            p.copy_(noise + 1.0 if id(p) in norms else noise)
    model.save_pretrained(folder)
    return folder


def _torch_bert(folder: Path, padding_idx: bool = True) -> torch.nn.Module:
    model = transformers.BertModel.from_pretrained(folder).eval()
    if not padding_idx:  # the witness: the pad row trained like any other
        model.embeddings.word_embeddings.padding_idx = None
    return model


def _tree_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    return {k: np.shape(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _torch_grads(model: torch.nn.Module, like, pooler: bool = False):
    """The ``.grad`` of every parameter of ``model`` in our Flax layout (the loader's
    name map; a parameter without gradient is a missing tensor there)."""
    grads = {
        n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None
    }
    table = hc.Checkpoint(
        "torch gradients", {n: g.shape for n, g in grads.items()}, grads.__getitem__
    )
    config = bb.BertConfig.from_hf(model.config.to_dict())
    return hc.load_params(
        table,
        bert_name_map(config, pooler),
        _tree_shapes(like),
        ignore=() if pooler else (r"^pooler\.",),
    )


def _assert_grads_close(ours, ref) -> dict[str, float]:
    """Per-tensor max |ours - ref| <= RTOL * max |ref|; returns the differences."""
    ours, ref = traverse_util.flatten_dict(ours), traverse_util.flatten_dict(ref)
    assert set(ours) == set(ref)
    diffs = {}
    for path in sorted(ref):
        a, b = np.asarray(ours[path], np.float64), np.asarray(ref[path], np.float64)
        name = "/".join(path)
        assert a.shape == b.shape, name
        err, scale = np.max(np.abs(a - b)), np.max(np.abs(b))
        assert scale > 0, f"{name}: no gradient in the reference"
        assert err <= RTOL * scale, f"{name}: max diff {err:.3g}, scale {scale:.3g}"
        diffs[name] = float(err)
    return diffs


def _word_grad(grads) -> np.ndarray:
    return np.asarray(grads["word_embeddings"]["embedding"])


def _inputs(pad: int, seed: int = 0):
    """Ids ``[4, 12]`` with 12, 7, 3, 9 real tokens then the pad id; one real
    position also holds the pad id (nn.Embedding skips it too); two segments."""
    rng = np.random.default_rng(seed)
    lengths = np.array([12, 7, 3, 9])
    t = np.arange(12)[None]
    mask = (t < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, _BERT["vocab_size"], size=(4, 12))
    ids[0, 1:3] = (pad + 1, (pad - 1) % _BERT["vocab_size"])  # the pad's neighbours
    ids = np.where(mask == 1, ids, pad)
    ids[0, 5] = pad
    types = ((t >= 4) & (mask == 1)).astype(np.int32)
    return ids.astype(np.int32), mask, types


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)).long()


# ----------------------------------------------------------------- BERT alone


def test_bert_gradients_match_transformers(tmp_path):
    # Loss over every position, padded ones included, and the pooler: every parameter
    # of BertModel gets a gradient, the pad row none. pad_token_id 7 (not the
    # default 0), so the rule follows the config.
    pad = 7
    folder = _hf_bert(tmp_path, pad_token_id=pad)
    module, variables = bb.from_pretrained(folder, add_pooling_layer=True)
    assert module.config.pad_token_id == pad
    ids, mask, types = _inputs(pad)
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 12, _BERT["hidden_size"])).astype(np.float32)
    v = rng.normal(size=(4, _BERT["hidden_size"])).astype(np.float32)

    @jax.jit
    def grad(params):
        def loss(params):
            h, pooled = module.apply({"params": params}, ids, mask, types)
            return jnp.sum(w * h) + jnp.sum(v * pooled)

        return jax.grad(loss)(params)

    ours = grad(variables["params"])
    refs = []
    for padding_idx in (True, False):
        model = _torch_bert(folder, padding_idx)
        out = model(
            input_ids=_t(ids), attention_mask=_t(mask), token_type_ids=_t(types)
        )
        loss = (torch.from_numpy(w) * out.last_hidden_state).sum()
        (loss + (torch.from_numpy(v) * out.pooler_output).sum()).backward()
        refs.append(_torch_grads(model, ours, pooler=True))
    ref, witness = refs
    _assert_grads_close(ours, ref)
    word = _word_grad(ours)
    assert not word[pad].any() and not _word_grad(ref)[pad].any()
    assert word[pad - 1].any() and word[pad + 1].any()
    # Without padding_idx the pad row learns, every other gradient is the same.
    assert np.abs(_word_grad(witness)[pad]).max() > 0.1 * np.abs(word).max()
    keep = np.arange(_BERT["vocab_size"]) != pad
    np.testing.assert_allclose(
        word[keep], _word_grad(witness)[keep], atol=RTOL * np.abs(word).max()
    )


def test_pad_row_does_not_move_in_an_adam_step(tmp_path):
    # The fine-tuning step: clipped gradients into Adam. The pad row keeps its value
    # exactly (its gradient is 0, so are Adam's moments); the rows next to it and
    # every other tensor move. The same module without a pad id (pad_token_id=None,
    # as a config.json with "pad_token_id": null) gives the same forward and moves it.
    pad = 0
    folder = _hf_bert(tmp_path, seed=2)
    module, variables = bb.from_pretrained(folder)
    params = jax.tree_util.tree_map(jnp.asarray, variables["params"])
    ids, mask, types = _inputs(pad, seed=3)
    w = np.random.default_rng(4).normal(size=(4, 12, 32)).astype(np.float32)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    untrained = module.clone(
        config=dataclasses.replace(module.config, pad_token_id=None)
    )

    @functools.partial(jax.jit, static_argnums=0)
    def step(m, params):
        def loss(params):
            return jnp.sum(w * m.apply({"params": params}, ids, mask, types))

        grads = jax.grad(loss)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return grads, optax.apply_updates(params, updates)

    grads, new = step(module, params)
    grads_none, new_none = step(untrained, params)
    forward = jax.jit(lambda m: m.apply(variables, ids, mask, types), static_argnums=0)
    np.testing.assert_array_equal(forward(module), forward(untrained))
    table, word = params["word_embeddings"]["embedding"], _word_grad(grads)
    moved = new["word_embeddings"]["embedding"]
    assert not word[pad].any() and word[pad + 1].any()
    np.testing.assert_array_equal(moved[pad], table[pad])
    assert np.abs(moved[pad + 1] - table[pad + 1]).min() > 0
    for path, before in traverse_util.flatten_dict(params).items():
        after = traverse_util.flatten_dict(new)[path]
        assert np.abs(after - before).max() > 0, path
    assert np.abs(_word_grad(grads_none)[pad]).max() > 0
    moved_none = new_none["word_embeddings"]["embedding"]
    assert np.abs(moved_none[pad] - table[pad]).min() > 0


def test_config_pad_token_id():
    config = bb.BertConfig.from_hf({"model_type": "bert", "vocab_size": 10})
    assert config.pad_token_id == 0 and config.padding_idx == 0
    config = bb.BertConfig.from_hf({"vocab_size": 10, "pad_token_id": None})
    assert config.padding_idx is None and config.to_hf()["pad_token_id"] is None
    assert bb.BertConfig(vocab_size=10, pad_token_id=-1).padding_idx == 9
    with pytest.raises(ValueError, match="pad_token_id 10 is outside"):
        bb.BertConfig(vocab_size=10, pad_token_id=10)
    # A freshly initialised table has the pad row at zero, as nn.Embedding's.
    module = bb.Bert(
        bb.BertConfig(
            vocab_size=10,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            pad_token_id=3,
        )
    )
    ids = jnp.zeros((1, 4), jnp.int32)
    table = module.init(jax.random.PRNGKey(0), ids)["params"]["word_embeddings"]
    table = np.asarray(table["embedding"])
    assert not table[3].any() and np.delete(table, 3, axis=0).all()


# ----------------------------------------------------------------- DecAlign


def _text_bert(pad: int = 0) -> np.ndarray:
    """MMSA rows ``[B, 3, L]``: ids ([CLS] .. [SEP], then the pad id), mask, segments."""
    ids, mask, types = _inputs(pad, seed=5)
    ids[:, 0] = 2
    ids[np.arange(4), mask.sum(1) - 1] = 3
    return np.stack([ids, mask, types], axis=1).astype(np.int32)


def _official_text_hidden(bert: torch.nn.Module, text_bert: np.ndarray):
    """The official BertTextEncoder: the row with the larger sum is the mask."""
    x = torch.from_numpy(text_bert).long()
    ids, row_1, row_2 = x[:, 0], x[:, 1], x[:, 2]
    if row_2.sum() == 0 or row_1.sum() >= row_2.sum():
        mask, types = row_1, row_2
    else:
        mask, types = row_2, row_1
    out = bert(input_ids=ids, token_type_ids=types, attention_mask=mask)
    return out.last_hidden_state


def test_decalign_bert_gradients_match_transformers(tmp_path):
    # The driver's loss (objective.compute_loss, train mode, every dropout 0; the
    # OT term off, its compile dominates and it never reaches BERT other than through
    # the text sequence) differentiated through BERT. The torch side: the loss's
    # cotangent at BERT's output (from our model fed that output as stored features),
    # back through BertModel under the official encoder.
    folder = _hf_bert(tmp_path, seed=6)
    overrides = {
        "model.text_encoder": "bert",
        "model.bert_path": folder,
        "model.attn_dropout": (0.0, 0.0, 0.0),
        "loss.alpha": 0.0,
        **{
            f"model.{k}": 0.0
            for k in ("relu_dropout", "res_dropout", "embed_dropout", "output_dropout")
        },
        "model.text_dropout": 0.0,
    }
    config = config_lib.load_config("configs/mosi.py:tiny")
    config_lib.apply_overrides(config, [f"{k}={v}" for k, v in overrides.items()])
    model = train.build_model(config)
    text_bert = _text_bert()
    rng = np.random.default_rng(7)
    batch = {
        "text_bert": text_bert,
        "audio": rng.normal(size=(4, 12, 5)).astype(np.float32),
        "vision": rng.normal(size=(4, 12, 20)).astype(np.float32),
        "label": rng.uniform(-3, 3, size=4).astype(np.float32),
    }
    mesh = sharding.make_mesh((("data", -1),), devices=jax.devices()[:1])
    state, _ = train.create_train_state(
        config, model, batch, mesh, seed=0, steps_per_epoch=1
    )
    params = state.params
    loss_fn = functools.partial(objective.compute_loss, model=model, config=config)
    key = jax.random.PRNGKey(0)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, batch, key)[0]))(params)

    ids, mask, types = (text_bert[:, i] for i in range(3))
    hidden = jax.jit(model.bert.apply)({"params": params["bert"]}, ids, mask, types)
    features = model.clone(bert=None)
    rest = {k: v for k, v in params.items() if k != "bert"}
    fed = {**{k: v for k, v in batch.items() if k != "text_bert"}, "text": hidden}

    def fed_loss(text):
        return objective.compute_loss(
            rest, {**fed, "text": text}, key, model=features, config=config
        )[0]

    cotangent = np.array(jax.jit(jax.grad(fed_loss))(hidden))
    assert np.abs(cotangent[mask == 0]).max() > 0  # padded positions reach the loss
    refs = []
    for padding_idx in (True, False):
        bert = _torch_bert(folder, padding_idx)
        out = _official_text_hidden(bert, text_bert)
        np.testing.assert_allclose(out.detach().numpy(), hidden, rtol=1e-5, atol=2e-5)
        out.backward(torch.from_numpy(cotangent))
        refs.append(_torch_grads(bert, grads["bert"]))
    ref, witness = refs
    _assert_grads_close(grads["bert"], ref)
    assert not _word_grad(grads["bert"])[0].any()
    assert np.abs(_word_grad(witness)[0]).max() > 0


# ----------------------------------------------------------------- CDDS


def test_cdds_text_encoder_gradients_match_transformers(tmp_path):
    # CDDSModel.encode_text with text_encoder="bert": BERT's last hidden state ->
    # text_proj -> x masked; the loss a fixed linear functional of x, the same in
    # torch. Masked positions never reach x, so the pad id also sits at one real
    # position (row 0): there it would get a gradient without padding_idx.
    folder = _hf_bert(tmp_path, seed=8)
    backbone, variables = bb.from_pretrained(folder)
    model = CDDSModel(
        dim=16,
        num_heads=2,
        text_encoder="bert",
        text_backbone=backbone,
        decouple=False,
        num_samples=1,
        sigma=0.0,
    )
    ids, mask, _ = _inputs(0, seed=9)
    encode = functools.partial(model.apply, method=CDDSModel.encode_text, train=False)
    init = jax.jit(
        functools.partial(model.init, method=CDDSModel.encode_text, train=False)
    )
    params = init(jax.random.PRNGKey(0), ids, mask)["params"]
    params = {**params, "text_backbone": variables["params"]}
    w = np.random.default_rng(10).normal(size=(4, 12, 16)).astype(np.float32)

    @jax.jit
    def grad(params):
        return jax.grad(lambda p: jnp.sum(w * encode({"params": p}, ids, mask)["x"]))(
            params
        )

    grads = grad(params)
    proj = params["text_proj"]
    refs = []
    for padding_idx in (True, False):
        bert = _torch_bert(folder, padding_idx)
        kernel = torch.tensor(np.asarray(proj["kernel"]), requires_grad=True)
        bias = torch.tensor(np.asarray(proj["bias"]), requires_grad=True)
        hidden = bert(input_ids=_t(ids), attention_mask=_t(mask)).last_hidden_state
        x = (hidden @ kernel + bias) * torch.from_numpy(mask)[..., None]
        (torch.from_numpy(w) * x).sum().backward()
        refs.append(_torch_grads(bert, grads["text_backbone"]))
        if padding_idx:
            np.testing.assert_allclose(
                grads["text_proj"]["kernel"], kernel.grad.numpy(), rtol=1e-5, atol=1e-5
            )
            np.testing.assert_allclose(
                grads["text_proj"]["bias"], bias.grad.numpy(), rtol=1e-5, atol=1e-5
            )
    ref, witness = refs
    _assert_grads_close(grads["text_backbone"], ref)
    assert not _word_grad(grads["text_backbone"])[0].any()
    assert np.abs(_word_grad(witness)[0]).max() > 0
