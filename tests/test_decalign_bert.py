"""DecAlign with BERT fine-tuned on token ids (docs/decalign.md §3.8).

References: ``transformers``' ``BertModel`` (built tiny and random, saved with
``save_pretrained``) run through a torch mirror of the official text encoder, and
``torch.optim.Adam`` with parameter groups after ``clip_grad_norm_`` (the official
trainer's update). The driver's step trains BERT on 8 simulated devices.
"""

from __future__ import annotations

import functools
import pickle

import chex
import jax
import numpy as np
import pytest
import torch
import transformers

from decalign_jax import data as data_lib
from decalign_jax import encoders, train
from decalign_jax.data import inputs
from decalign_jax.data.synthetic import write_mmsa_pickle
from decalign_jax.data.synthetic.mmsa import NEGATIVE_IDS, POSITIVE_IDS
from xmodal import backbones, sharding
from xmodal import config as config_lib
from xmodal.errors import UserError

transformers.logging.set_verbosity_error()

_BERT = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(spec: str = "configs/mosi.py:tiny", **overrides):
    c = config_lib.load_config(spec)
    overrides = {"model.text_encoder": "bert", **overrides}
    config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
    return c


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    """A tiny random ``BertModel`` saved by transformers (non-trivial norms, biases)."""
    folder = tmp_path_factory.mktemp("hf_bert")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**_BERT))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    model.save_pretrained(folder)
    return folder


def _text_bert(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """MMSA rows ``[B, 3, T]``: [CLS] ids [SEP] then padding; a second segment."""
    rng = np.random.default_rng(seed)
    lengths = np.array([length, 7, 3, 2, length - 1, 5][:batch])
    t = np.arange(length)[None]
    mask = (t < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, _BERT["vocab_size"], size=(batch, length))
    ids = np.where(t == 0, 2, ids)
    ids = np.where(t == lengths[:, None] - 1, 3, ids) * mask
    types = ((t >= 4) & (t < lengths[:, None] - 1)).astype(np.int32)
    return np.stack([ids, mask, types], axis=1).astype(np.int32)


def _official_text_feature(bert: torch.nn.Module, text_bert: np.ndarray) -> np.ndarray:
    """The official BertTextEncoder on MMSA ids: it infers which of rows 1 and 2 is
    the attention mask and returns BERT's ``last_hidden_state`` ``[B, T, D]``."""
    x = torch.from_numpy(text_bert).long()
    ids, row_1, row_2 = x[:, 0], x[:, 1], x[:, 2]
    if row_2.sum() == 0 or row_1.sum() >= row_2.sum():
        mask, types = row_1, row_2
    else:
        mask, types = row_2, row_1
    with torch.no_grad():
        out = bert.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
    return out.last_hidden_state.numpy()


def _model_batch(text_bert: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, _, t = text_bert.shape
    return {
        "text_bert": text_bert,
        "audio": rng.normal(size=(b, t, 5)).astype(np.float32),
        "vision": rng.normal(size=(b, t, 20)).astype(np.float32),
        "label": rng.uniform(-3, 3, size=b).astype(np.float32),
    }


def _init_params(config, model, batch):
    init = jax.jit(functools.partial(model.init, train=False))
    params = init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, batch
    )["params"]
    return backbones.merge_pretrained(params, encoders.pretrained_params(config))


def test_bert_text_feature_matches_the_official_encoder(hf_bert):
    config = _config(**{"model.bert_path": str(hf_bert)})
    model = train.build_model(config)
    text_bert = _text_bert(6, 12)
    batch = _model_batch(text_bert)
    params = _init_params(config, model, batch)
    ref = _official_text_feature(
        transformers.BertModel.from_pretrained(hf_bert), text_bert
    )
    # Hidden states at every position, padding included (the official model convolves
    # and averages all T_l positions).
    ids, mask, types = (text_bert[:, i] for i in range(3))
    hidden = model.bert.apply({"params": params["bert"]}, ids, mask, types)
    np.testing.assert_allclose(np.asarray(hidden), ref, rtol=1e-5, atol=2e-5)
    assert np.abs(ref).max() > 0.5  # not a trivial output
    # What the rest of the model receives: the same outputs as the frozen-feature
    # model fed the official encoder's output as ``text``.
    out = jax.jit(functools.partial(model.apply, train=False))(
        {"params": params}, batch
    )
    features = model.clone(bert=None)
    fed = {**{k: v for k, v in batch.items() if k != "text_bert"}, "text": ref}
    rest = {k: v for k, v in params.items() if k != "bert"}
    want = jax.jit(functools.partial(features.apply, train=False))(
        {"params": rest}, fed
    )
    for key in ("output", "final_rep", "pooled_unique", "z"):
        chex.assert_trees_all_close(out[key], want[key], rtol=1e-5, atol=1e-5)
    # Padded ids (mask 0) change BERT's outputs at the padded positions only: the
    # official model sees them (no mask); with model.padding_mask the text lengths
    # come from the BERT mask and nothing sees them.
    changed = text_bert.copy()
    changed[:, 0] = np.where(text_bert[:, 1] == 0, 7, text_bert[:, 0])
    for padding_mask, same in ((True, True), (False, False)):
        masked = model.clone(padding_mask=padding_mask)
        apply = jax.jit(functools.partial(masked.apply, train=False))
        a = apply({"params": params}, batch)["output"]
        b = apply({"params": params}, {**batch, "text_bert": changed})["output"]
        assert np.allclose(a, b, atol=1e-6) == same


def test_bert_dropout_is_on_in_training(hf_bert):
    zero = {
        f"model.{k}": 0.0
        for k in ("relu_dropout", "res_dropout", "embed_dropout", "output_dropout")
    }
    config = _config(
        **{"model.bert_path": str(hf_bert), "model.attn_dropout": (0.0, 0.0, 0.0)},
        **zero,
    )
    model = train.build_model(config)
    batch = _model_batch(_text_bert(4, 12))
    params = _init_params(config, model, batch)

    @functools.partial(jax.jit, static_argnums=0)
    def apply(train_mode, key):
        out = model.apply(
            {"params": params}, batch, train=train_mode, rngs={"dropout": key}
        )
        return out["final_rep"]

    def rep(train_mode, seed=0):
        return apply(train_mode, jax.random.PRNGKey(seed))

    # Every DecAlign dropout is 0 here: only BERT's own (0.1) can change the output.
    assert not np.allclose(rep(True), rep(False), atol=1e-4)
    assert not np.allclose(rep(True, 0), rep(True, 1), atol=1e-4)
    np.testing.assert_allclose(rep(True, 3), rep(True, 3))


def test_optimizer_matches_torch_adam_groups_with_clip_and_l2():
    # Official trainer: clip_grad_norm_(all parameters, clip), then Adam(weight_decay)
    # with BERT in its own group at bert_learning_rate (MOSEI: 1e-5 vs 5e-5).
    config = _config("configs/mosei.py", **{"optim.clip_norm": 0.05, "optim.lr": 5e-3})
    config.optim.bert_lr = 1e-3
    rng = np.random.default_rng(0)
    params = {
        "bert": {"w": rng.normal(size=(3, 4)).astype(np.float32)},
        "head": {"w": rng.normal(size=(5,)).astype(np.float32)},
    }
    grads = [
        jax.tree_util.tree_map(
            lambda p: rng.normal(size=p.shape).astype(np.float32), params
        )
        for _ in range(3)
    ]
    tx = encoders.make_optimizer(config, params, steps_per_epoch=1)
    state, ours = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, ours)
        ours = jax.tree_util.tree_map(lambda p, u: p + u, ours, updates)

    tb = torch.tensor(params["bert"]["w"], requires_grad=True)
    th = torch.tensor(params["head"]["w"], requires_grad=True)
    wd = config.optim.weight_decay
    opt = torch.optim.Adam(
        [
            {"params": [tb], "weight_decay": wd, "lr": config.optim.bert_lr},
            {"params": [th], "weight_decay": wd, "lr": config.optim.lr},
        ]
    )
    for g in grads:
        tb.grad = torch.tensor(g["bert"]["w"])
        th.grad = torch.tensor(g["head"]["w"])
        torch.nn.utils.clip_grad_norm_([tb, th], config.optim.clip_norm)
        opt.step()
    np.testing.assert_allclose(ours["bert"]["w"], tb.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(ours["head"]["w"], th.detach().numpy(), atol=1e-6)
    # MOSI keeps BERT in the main group; features configs have no BERT group.
    assert encoders.optimizer_config(_config()).lr_groups == ()
    assert encoders.optimizer_config(_config("configs/mosei.py")).lr_groups == (
        ("^bert/", pytest.approx(0.2)),
    )


def test_missing_or_wrong_checkpoint_is_one_line(tmp_path, hf_bert):
    config = _config("configs/mosi.py")
    with pytest.raises(UserError) as e:
        encoders.bert_folder(config)
    msg = str(e.value)
    assert "\n" not in msg
    assert "config.model.bert_path" in msg and "checkpoints/bert-base-uncased" in msg
    assert "google-bert/bert-base-uncased" in msg
    config = _config("configs/sims.py", **{"model.bert_path": str(tmp_path / "x")})
    with pytest.raises(UserError, match="google-bert/bert-base-chinese"):
        encoders.bert_folder(config)
    with pytest.raises(UserError, match="iemocap has no token ids"):
        encoders.bert_folder(_config("configs/iemocap.py"))
    vit = backbones.write_random_checkpoint(tmp_path / "vit", "vit")
    with pytest.raises(ValueError, match="holds a 'vit' model"):
        encoders.bert_folder(_config(**{"model.bert_path": str(vit)}))
    # Ids the checkpoint cannot embed (vocab 100 < the synthetic ids).
    config = _config(**{"model.bert_path": str(hf_bert)})
    with pytest.raises(ValueError, match=r"train split text_bert: input ids in .*100"):
        train.load_data(config)


def test_synthetic_ids_carry_the_text_sentiment(tmp_path):
    sizes = {"train": 500, "valid": 8, "test": 8}
    path = write_mmsa_pickle(tmp_path / "m.pkl", seed=0, sizes=sizes, dims=(8, 5, 20))
    raw = pickle.loads(path.read_bytes())["train"]
    tb = np.asarray(raw["text_bert"]).astype(np.int64)
    ids, mask = tb[:, 0], tb[:, 1]
    lengths = mask.sum(1)
    assert (ids[:, 0] == 101).all()
    assert (ids[np.arange(len(ids)), lengths - 1] == 102).all()
    assert (ids[mask == 0] == 0).all() and ids.max() < 21128  # bert-base-chinese too
    pos = np.isin(ids, POSITIVE_IDS).sum(1)
    neg = np.isin(ids, NEGATIVE_IDS).sum(1)
    polarity = (pos - neg) / np.maximum(pos + neg, 1)
    assert np.corrcoef(polarity, raw["regression_labels"])[0, 1] > 0.5


def test_bert_trains_in_the_sharded_step():
    # The demo's tiny random BERT (written into the cache) on the synthetic ids, two
    # driver steps on 8 devices (the 1-vs-8 equality of the step is tested on the
    # features path; BERT adds replicated parameters only).
    # The prototype / OT terms are off (their compile dominates, BERT does not
    # touch them; they are tested with BERT's features in the driver tests).
    config = _config(**{"loss.alpha": 0.0})
    splits = train.load_data(config)
    source = inputs.make_source(splits["train"], config)
    rows = [source[i] for i in range(16)]
    local = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    assert "text" not in local and local["text_bert"].dtype == np.int32
    model = train.build_model(config)
    mesh = sharding.make_mesh((("data", -1),))
    assert mesh.size == 8
    state, shardings = train.create_train_state(
        config,
        model,
        {k: v[:1] for k, v in local.items()},
        mesh,
        seed=0,
        steps_per_epoch=4,
    )
    before = jax.device_get(state.params["bert"])
    chex.assert_trees_all_close(before, encoders.pretrained_params(config)["bert"])
    step = train.jit_train_step(config, model, shardings, mesh)
    batch = sharding.global_batch(local, mesh)
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[0] != losses[1]
    after = jax.device_get(state.params["bert"])
    moved = jax.tree_util.tree_map(
        lambda x, y: float(np.abs(x - y).max()), before, after
    )
    assert min(jax.tree_util.tree_leaves(moved)) > 0  # every BERT tensor learns


def test_cli_without_checkpoint_is_one_line(tmp_path, capsys):
    from xmodal import cli

    sizes = {"train": 8, "valid": 8, "test": 8}
    data = write_mmsa_pickle(
        tmp_path / "aligned_50.pkl", seed=0, sizes=sizes, dims=(8, 5, 20)
    )
    argv = [
        "--config=configs/mosi.py",
        f"--workdir={tmp_path / 'real'}",
        "--config.model.text_encoder=bert",
        f"--config.data.path={data}",
    ]
    assert cli.main(train.train_and_evaluate, argv, prog="x", evaluate=False) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: config.model.bert_path")
    assert "google-bert/bert-base-uncased" in err


def test_source_without_text_features():
    config = _config()
    split = train.load_data(config)["valid"]
    item = inputs.make_source(split, config)[0]
    assert "text" not in item and item["text_bert"].shape == (3, 50)
    assert "text" in data_lib.MMSASource(split)[0]
