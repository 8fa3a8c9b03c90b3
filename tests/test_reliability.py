"""Reliability: every killed run resumes bit-identically, one run per workdir, a
workdir remembers its config, errors are one line, bad inputs fail before training.

The kill tests run the real entry point in a subprocess and kill it with SIGKILL at
a named point (``XMODAL_FAULT``, :mod:`xmodal.faults`): during a checkpoint write,
during a best-checkpoint write, between a best save and the next checkpoint, between
two log flushes. The same command is then rerun and must end with exactly the
parameters and test numbers of a straight run, and no step twice in metrics.jsonl.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
import warnings

import chex
import numpy as np
import pytest

from cdds_jax import train as cdds_train
from decalign_jax import train as decalign_train
from xmodal import checkpoint, cli, errors
from xmodal import config as config_lib
from xmodal import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

CDDS = ("cdds_jax.train", "configs/flickr.py:tiny", cdds_train)
DECALIGN = ("decalign_jax.train", "configs/mosi.py:tiny", decalign_train)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(spec: str, **overrides):
    c = config_lib.load_config(spec)
    c.unlock()
    config_lib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
    c.lock()
    return c


def _run_dir(method, workdir: pathlib.Path) -> pathlib.Path:
    """The folder holding checkpoints: DecAlign trains each seed in seed_<s>/."""
    return workdir / "seed_1111" if method is DECALIGN else workdir


def _snapshot(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _latest_params(method, workdir: pathlib.Path):
    _, spec, train = method
    config = _config(spec)
    path = _run_dir(method, workdir)
    mesh = train.sharding.make_mesh(config.mesh)
    if train is cdds_train:
        data = train.load_data(config, path, splits=("train",))
        source = data.pair_source(data.train)
        example = {k: np.asarray(v)[None] for k, v in source[0].items()}
        target, _ = train.create_train_state(
            config,
            train.build_model(config, data.backbones),
            example,
            mesh,
            steps_per_epoch=1,
        )
    else:
        splits = train.load_data(config)
        source = train.data_lib.MMSASource(splits["train"])
        example = {k: np.asarray(v)[None] for k, v in source[0].items()}
        target, _ = train.create_train_state(
            config,
            train.build_model(config),
            example,
            mesh,
            seed=1111,
            steps_per_epoch=1,
        )
    state, _, which = checkpoint.restore_for_eval(path, target, which="latest")
    return state, which


@pytest.fixture(scope="session")
def straight_runs(tmp_path_factory):
    """One uninterrupted run of each method (the reference)."""
    base = tmp_path_factory.mktemp("straight")
    os.environ.setdefault("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    out = {}
    for method in (CDDS, DECALIGN):
        module, spec, train = method
        workdir = base / module.split(".")[0]
        train.train_and_evaluate(_config(spec), workdir)
        out[module] = workdir
    return out


# Kill windows: (point, step). CDDS tiny: 15 steps/epoch, 30 steps, checkpoints every
# 10, dev (and best) at 15 and 30, logs every 5. DecAlign tiny: 4 steps/epoch, 8 steps,
# dev + checkpoint every 4, logs every 2.
WINDOWS = {
    "cdds_jax.train": [
        ("checkpoint_write", 10),
        ("best_write", 15),
        ("after_best", 15),
        ("log", 25),
    ],
    "decalign_jax.train": [
        ("checkpoint_write", 4),
        ("best_write", 4),
        ("after_best", 4),
        ("log", 6),
    ],
}
CASES = [(m, p, s) for m in (CDDS, DECALIGN) for p, s in WINDOWS[m[0]]]


@pytest.mark.parametrize(
    ("method", "point", "step"), CASES, ids=[f"{m[0]}-{p}@{s}" for m, p, s in CASES]
)
def test_killed_run_resumes_bit_identical(method, point, step, straight_runs, tmp_path):
    module, spec, train = method
    workdir = tmp_path / "run"
    env = dict(os.environ, XMODAL_FAULT=f"{point}@{step}")
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--config", spec, "--workdir", str(workdir)],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    assert proc.returncode == -9, log.read_text()[-3000:]
    assert not (_run_dir(method, workdir) / "results.json").exists()
    # The same command again (in this process): it must resume and finish.
    results = train.train_and_evaluate(_config(spec), workdir)
    reference = json.loads((straight_runs[module] / "results.json").read_text())
    assert json.loads((workdir / "results.json").read_text()) == reference
    del results
    a, which_a = _latest_params(method, workdir)
    b, which_b = _latest_params(method, straight_runs[module])
    assert which_a == which_b
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)
    rows = [
        json.loads(x)
        for x in (_run_dir(method, workdir) / "metrics.jsonl").read_text().splitlines()
    ]
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), "a step was written twice"
    ref_rows = (_run_dir(method, straight_runs[module]) / "metrics.jsonl").read_text()
    assert len(rows) == len(ref_rows.splitlines())
    assert not list(_run_dir(method, workdir).rglob("*orbax-checkpoint-tmp*"))
    assert (_run_dir(method, workdir) / "curves.png").is_file()


# ----------------------------------------------------------------- lock and config


def test_second_run_on_live_workdir_exits_with_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    config = _config(CDDS[1])
    with workdir_lib.open_workdir(workdir, config):
        before = _snapshot(workdir)
        code = cli.main(
            cdds_train.train_and_evaluate,
            ["--config", CDDS[1], "--workdir", str(workdir)],
            prog="cdds_jax.train",
            evaluate=False,
        )
        assert _snapshot(workdir) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: workdir")
    assert f"process {os.getpid()}" in err[0]


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone"}))
    with (
        pytest.warns(UserWarning, match="ended without releasing"),
        workdir_lib.open_workdir(workdir, _config(CDDS[1])),
    ):
        owner = json.loads((workdir / ".lock").read_text())
        assert owner["pid"] == os.getpid()


def test_changed_config_on_finished_workdir(straight_runs, tmp_path, capsys):
    workdir = tmp_path / "run"
    src = straight_runs["cdds_jax.train"]
    subprocess.run(["cp", "-a", str(src), str(workdir)], check=True)
    before = _snapshot(workdir)
    argv = ["--config", CDDS[1], "--workdir", str(workdir), "--config.optim.lr=0.1"]
    code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: the config differs")
    assert "optim.lr: 0.0005 -> 0.1" in err and "--accept_config_changes" in err
    assert _snapshot(workdir) == before
    # An evaluation-only change is allowed and written beside the earlier results.
    stored = (workdir / "results.json").read_text()
    results = cdds_train.train_and_evaluate(
        _config(CDDS[1], **{"eval.batch_size": 8}), workdir
    )
    assert (workdir / "results.json").read_text() == stored
    beside = workdir / "results__eval.batch_size-8.json"
    assert beside.is_file()
    assert results["test"] == json.loads(stored)["test"]  # same state, same scores
    history = (workdir / "config_history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["changed"] == {"eval.batch_size": [16, 8]}


def test_wrong_config_path_creates_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["--config", "configs/nope.py", "--workdir", str(workdir)]
    code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "configs/nope.py" in err[0]
    assert not workdir.exists()


def test_help_exits_zero_and_lists_flags_and_config(capsys):
    argv = ["--help", "--config", CDDS[1]]
    assert cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False) == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--workdir", "--config.train.batch_size=16", "tiny"):
        assert flag in out, flag


def test_help_of_the_real_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "decalign_jax.train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout and "--workdir" in proc.stdout


def test_disk_full_names_the_path_and_the_last_checkpoint(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    real_save = checkpoint.Checkpointer.save

    def save(self, step, state, **kwargs):
        if step >= 20 and self.directory.name == "checkpoints":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory))
        return real_save(self, step, state, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    with pytest.raises(errors.DiskError) as err:
        cdds_train.train_and_evaluate(_config(CDDS[1]), workdir)
    line, code = errors.describe(err.value)
    assert code == 2 and "No space left on device" in line
    assert f"last checkpoint saved: {workdir.absolute()}/checkpoints/10" in line
    # After space is freed, the same command resumes and finishes.
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    cdds_train.train_and_evaluate(_config(CDDS[1]), workdir)
    assert (workdir / "results.json").is_file()


# ------------------------------------------------------------ the bad-input catalog


def _store(root: pathlib.Path, **kwargs) -> pathlib.Path:
    from cdds_jax.data import synthetic

    sizes = {"train": 24, "dev": 8, "test": 8}
    args = dict(
        seed=0, num_images=sizes, num_tokens=6, image_dim=12, text_dim=10, max_words=6
    )
    args.update(kwargs)
    return synthetic.write_feature_store(root, **args)


def _break_dim(root: pathlib.Path) -> None:
    images = np.load(root / "test" / "images.npy")
    np.save(root / "test" / "images.npy", images[..., :-1])


def _zero_images(root: pathlib.Path) -> None:
    images = np.load(root / "train" / "images.npy")
    np.save(root / "train" / "images.npy", np.zeros_like(images))


def _nan_images(root: pathlib.Path) -> None:
    images = np.load(root / "dev" / "images.npy")
    images[0, 0, 0] = np.nan
    np.save(root / "dev" / "images.npy", images)


def _drop_file(name: str):
    def apply(root: pathlib.Path) -> None:
        (root / "train" / name).unlink()

    return apply


def _empty_dev(root: pathlib.Path) -> None:
    d = root / "dev"
    np.save(d / "images.npy", np.zeros((0, 6, 12), np.float16))
    np.save(d / "captions.npy", np.zeros((0, 6, 10), np.float16))
    np.save(d / "caption_lengths.npy", np.zeros((0,), np.int32))
    np.save(d / "caption_to_image.npy", np.zeros((0,), np.int64))
    (d / "captions.txt").write_text("")


def _bad_c2i(root: pathlib.Path) -> None:
    c2i = np.load(root / "train" / "caption_to_image.npy")
    c2i[3] = 10_000
    np.save(root / "train" / "caption_to_image.npy", c2i)


# (id, store mutation or None, overrides, substring of the one-line error)
CDDS_BAD = [
    ("batch-zero", None, {"train.batch_size": 0}, "train.batch_size = 0"),
    ("eval-batch-indivisible", None, {"eval.batch_size": 12}, "eval.batch_size = 12"),
    ("batch-indivisible", None, {"train.batch_size": 20}, "train.batch_size = 20"),
    ("batch-too-big", None, {"train.batch_size": 4096}, "fewer than one batch"),
    ("unknown-key", None, {"train.batchsize": 8}, "train.batchsize"),
    ("bad-type", None, {"train.batch_size": "big"}, "big"),
    ("unknown-format", None, {"data.format": "hdf5"}, "hdf5"),
    ("missing-root", "missing", {}, "not found"),
    ("dim-mismatch", _break_dim, {}, "test"),
    ("nan-features", _nan_images, {}, "images.npy"),
    ("missing-images", _drop_file("images.npy"), {}, "images.npy"),
    ("missing-c2i", _drop_file("caption_to_image.npy"), {}, "caption_to_image"),
    ("c2i-out-of-range", _bad_c2i, {}, "caption_to_image"),
    ("empty-dev", _empty_dev, {}, "dev"),
    ("unknown-split", None, {"data.dev_split": "valid"}, "valid"),
]


@pytest.mark.parametrize(
    ("mutate", "overrides", "expected"),
    [c[1:] for c in CDDS_BAD],
    ids=[c[0] for c in CDDS_BAD],
)
def test_cdds_bad_input_is_one_line_before_training(
    mutate, overrides, expected, tmp_path, capsys
):
    root = tmp_path / "store"
    argv = ["--config", CDDS[1], "--workdir", str(tmp_path / "run")]
    if mutate is not None:
        if mutate != "missing":
            _store(root)
            mutate(root)
        argv += ["--config.data.synthetic.enabled=False", f"--config.data.root={root}"]
    argv += [f"--config.{k}={v}" for k, v in overrides.items()]
    code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]
    assert "step 1/" not in captured.out  # failed before training
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cdds_all_zero_features_warn(tmp_path):
    root = tmp_path / "store"
    _store(root)
    _zero_images(root)
    from cdds_jax import data as data_lib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data_lib.read_split("features", root, "train")
    assert any("zero" in str(w.message) for w in caught)


def _mmsa(path: pathlib.Path, mutate=None) -> pathlib.Path:
    import pickle

    from decalign_jax.data import synthetic

    synthetic.write_mmsa_pickle(
        path, seed=0, dataset="mosi", sizes={"train": 64, "valid": 24, "test": 24}
    )
    if mutate is not None:
        with open(path, "rb") as f:
            obj = pickle.load(f)
        mutate(obj)
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return path


def _empty_valid(obj) -> None:
    obj["valid"] = {k: v[:0] for k, v in obj["valid"].items()}


def _audio_dim(obj) -> None:
    obj["test"]["audio"] = obj["test"]["audio"][..., :-1]


def _nan_vision(obj) -> None:
    obj["train"]["vision"][0, 0, 0] = np.nan


def _no_labels(obj) -> None:
    del obj["train"]["regression_labels"]


DECALIGN_BAD = [
    ("empty-valid", _empty_valid, {}, "valid"),
    ("dim-mismatch", _audio_dim, {}, "audio"),
    ("missing-labels", _no_labels, {}, "regression_labels"),
    ("missing-file", "missing", {}, "not found"),
    ("batch-zero", None, {"train.batch_size": 0}, "train.batch_size = 0"),
    ("eval-batch-indivisible", None, {"eval.batch_size": 12}, "eval.batch_size = 12"),
    ("unknown-dataset", None, {"data.dataset": "mosx"}, "mosx"),
]


@pytest.mark.parametrize(
    ("mutate", "overrides", "expected"),
    [c[1:] for c in DECALIGN_BAD],
    ids=[c[0] for c in DECALIGN_BAD],
)
def test_decalign_bad_input_is_one_line_before_training(
    mutate, overrides, expected, tmp_path, capsys
):
    argv = ["--config", DECALIGN[1], "--workdir", str(tmp_path / "run")]
    if mutate is not None:
        path = tmp_path / "aligned_50.pkl"
        if mutate != "missing":
            _mmsa(path, mutate)
        argv += ["--config.data.synthetic.enabled=False", f"--config.data.path={path}"]
    argv += [f"--config.{k}={v}" for k, v in overrides.items()]
    code = cli.main(decalign_train.train_and_evaluate, argv, prog="x", evaluate=False)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]
    assert not (tmp_path / "run" / "seed_1111" / "checkpoints").exists()


def test_decalign_nan_features_are_sanitised_not_fatal(tmp_path):
    # MMSA files carry -inf / overflow in MOSEI audio: the reader sets non-finite
    # values to 0 (documented safe behaviour) and says how many.
    path = _mmsa(tmp_path / "aligned_50.pkl", _nan_vision)
    splits = decalign_train.data_lib.read_dataset(path, format="mmsa", dataset="mosi")
    assert np.isfinite(np.asarray(splits["train"].vision)).all()
