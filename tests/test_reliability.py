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
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from multihost_worker import restore_target

from cdds_jax import train as cdds_train
from cdds_jax.data import inputs as cdds_inputs
from decalign_jax import encoders as decalign_encoders
from decalign_jax import train as decalign_train
from xmodal import checkpoint, cli, errors, files
from xmodal import config as config_lib
from xmodal import lock as lock_lib
from xmodal import workdir as workdir_lib
from xmodal.writer import MetricWriter

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Case(NamedTuple):
    """A run of the kill tests: its entry point, config and overrides."""

    name: str
    module: str
    spec: str
    train: Any
    overrides: tuple[str, ...] = ()

    @property
    def seeded(self) -> bool:
        """DecAlign trains each seed in ``seed_<s>/``."""
        return self.train is decalign_train

    def argv(self) -> list[str]:
        return ["--config", self.spec, *(f"--config.{o}" for o in self.overrides)]


CDDS = Case("cdds", "cdds_jax.train", "configs/flickr.py:tiny", cdds_train)
DECALIGN = Case(
    "decalign", "decalign_jax.train", "configs/mosi.py:tiny", decalign_train
)
# configs/flickr.py:demo_raw shrunk: 8 / 4 / 4 JPEGs of 32 px, ViT and BERT of width 16,
# no worker processes (tests/test_cdds_raw_data.py resumes them): 5 steps per epoch,
# 10 steps, dev, best and checkpoint at 5 and 10, logs every 2.
RAW_TINY = (
    "data.synthetic.num_train=8",
    "data.synthetic.num_dev=4",
    "data.synthetic.num_test=4",
    "data.synthetic.backbone_size=16",
    "data.max_words=8",
    "data.worker_count=0",
    "model.dim=16",
    "model.num_heads=2",
    "semantics.num_levels=4",
    "semantics.num_bins=4",
    "train.batch_size=8",
    "train.num_epochs=2",
    "train.log_every_steps=2",
    "train.checkpoint_every_steps=0",
    "eval.batch_size=8",
    "eval.block_size=32",
)
CDDS_RAW = Case(
    "cdds-raw", "cdds_jax.train", "configs/flickr.py:demo_raw", cdds_train, RAW_TINY
)
# DecAlign tiny with the demo's tiny random BERT fine-tuned on the token ids.
DECALIGN_BERT = Case(
    "decalign-bert",
    "decalign_jax.train",
    "configs/mosi.py:tiny",
    decalign_train,
    ("model.text_encoder=bert",),
)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(spec: str, *items: str, **overrides):
    c = config_lib.load_config(spec)
    c.unlock()
    config_lib.apply_overrides(c, [*items, *(f"{k}={v}" for k, v in overrides.items())])
    c.lock()
    return c


def _case_config(case: Case, *items: str):
    return _config(case.spec, *case.overrides, *items)


def _run_dir(case: Case, workdir: pathlib.Path) -> pathlib.Path:
    """The folder holding checkpoints: DecAlign trains each seed in seed_<s>/."""
    return workdir / "seed_1111" if case.seeded else workdir


def _snapshot(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _latest_params(case: Case, workdir: pathlib.Path):
    """The latest checkpoint's state, restored onto the abstract target of the
    multi-host worker (the driver's ``create_train_state`` traced, not compiled)."""
    method = "cdds" if case.train is cdds_train else "decalign"
    target, _, path = restore_target(method, _case_config(case), workdir)
    state, _, which = checkpoint.restore_for_eval(path, target, which="latest")
    return state, which


class _Straight:
    """Uninterrupted runs (the references), each trained on first use."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base, self.done = base, {}

    def __getitem__(self, case: Case) -> pathlib.Path:
        if case.name not in self.done:
            workdir = self.base / case.name
            case.train.train_and_evaluate(_case_config(case), workdir)
            self.done[case.name] = workdir
        return self.done[case.name]


@pytest.fixture(scope="session")
def straight_runs(tmp_path_factory):
    return _Straight(tmp_path_factory.mktemp("straight"))


# Kill windows: (point, step). CDDS tiny: 15 steps/epoch, 30 steps, checkpoints every
# 10, dev (and best) at 15 and 30, logs every 5. DecAlign tiny: 4 steps/epoch, 8 steps,
# dev + checkpoint every 4, logs every 2. The backbone paths (RAW_TINY above; DecAlign
# tiny with BERT) are killed between two log rows after a checkpoint, so the resumed
# run restores the backbones' weights from it and replays augmented / dropout steps.
WINDOWS = {
    CDDS: [
        ("checkpoint_write", 10),
        ("best_write", 15),
        ("after_best", 15),
        ("log", 25),
    ],
    DECALIGN: [
        ("checkpoint_write", 4),
        ("best_write", 4),
        ("after_best", 4),
        ("log", 6),
    ],
    CDDS_RAW: [("log", 8)],
    DECALIGN_BERT: [("log", 6)],
}
CASES = [(m, p, s) for m, windows in WINDOWS.items() for p, s in windows]


# The tests that read straight runs share one worker: each reference trains once.
STRAIGHT = pytest.mark.xdist_group("straight_runs")


@STRAIGHT
@pytest.mark.parametrize(
    ("method", "point", "step"), CASES, ids=[f"{m.name}-{p}@{s}" for m, p, s in CASES]
)
def test_killed_run_resumes_bit_identical(method, point, step, straight_runs, tmp_path):
    reference_dir = straight_runs[method]
    workdir = tmp_path / "run"
    env = dict(os.environ, XMODAL_FAULT=f"{point}@{step}")
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                method.module,
                *method.argv(),
                "--workdir",
                str(workdir),
            ],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    assert proc.returncode == -9, log.read_text()[-3000:]
    assert not (_run_dir(method, workdir) / "results.json").exists()
    # The same command again (in this process): it must resume and finish.
    method.train.train_and_evaluate(_case_config(method), workdir)
    reference = json.loads((reference_dir / "results.json").read_text())
    assert json.loads((workdir / "results.json").read_text()) == reference
    a, which_a = _latest_params(method, workdir)
    b, which_b = _latest_params(method, reference_dir)
    assert which_a == which_b
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.opt_state, b.opt_state)
    rows = [
        json.loads(x)
        for x in (_run_dir(method, workdir) / "metrics.jsonl").read_text().splitlines()
    ]
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), "a step was written twice"
    ref_rows = (_run_dir(method, reference_dir) / "metrics.jsonl").read_text()
    assert len(rows) == len(ref_rows.splitlines())
    assert not list(_run_dir(method, workdir).rglob("*orbax-checkpoint-tmp*"))
    assert (_run_dir(method, workdir) / "curves.png").is_file()


# ----------------------------------------------------------------- lock and config


def test_second_run_on_live_workdir_exits_with_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    config = _config(CDDS.spec)
    with workdir_lib.open_workdir(workdir, config):
        before = _snapshot(workdir)
        code = cli.main(
            cdds_train.train_and_evaluate,
            ["--config", CDDS.spec, "--workdir", str(workdir)],
            prog="cdds_jax.train",
            evaluate=False,
        )
        assert _snapshot(workdir) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: workdir")
    assert f"process {os.getpid()}" in err[0]


def _write_lock(workdir: pathlib.Path, host: str, pid: int = 999999) -> pathlib.Path:
    workdir.mkdir(exist_ok=True)
    lock = workdir / ".lock"
    lock.write_text(json.dumps({"pid": pid, "host": host, "started": "earlier"}))
    return lock


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
    workdir = tmp_path / "run"
    _write_lock(workdir, socket.gethostname())  # a dead process of this host
    with (
        pytest.warns(UserWarning, match="ended without releasing") as record,
        workdir_lib.open_workdir(workdir, _config(CDDS.spec)),
    ):
        owner = json.loads((workdir / ".lock").read_text())
        assert owner["pid"] == os.getpid()
    # The warning points at the code that opened the workdir, not at contextlib.
    assert record[0].filename == __file__


def test_lock_of_another_host_needs_break_lock(tmp_path, capsys):
    workdir = tmp_path / "run"
    _write_lock(workdir, "elsewhere", pid=4242)
    argv = ["--config", CDDS.spec, "--workdir", str(workdir)]
    code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "host elsewhere" in err[0] and "ssh elsewhere ps -p 4242" in err[0]
    assert "--break_lock" in err[0]
    assert not (workdir / "config.json").exists()
    with (
        pytest.warns(UserWarning, match="--break_lock"),
        workdir_lib.open_workdir(workdir, _config(CDDS.spec), break_lock=True),
    ):
        assert json.loads((workdir / ".lock").read_text())["pid"] == os.getpid()


def test_lock_without_flock_falls_back_to_a_lock_file(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_lib.fcntl, "flock", no_flock)
    monkeypatch.setattr(lock_lib, "_said_fallback", False)
    monkeypatch.setattr(lock_lib, "HEARTBEAT_S", 0.02)
    config = _config(CDDS.spec)
    workdir = tmp_path / "run"
    lock = workdir / ".lock"
    with pytest.warns(UserWarning) as record:
        with workdir_lib.open_workdir(workdir, config):
            owner = json.loads(lock.read_text())
            assert owner["pid"] == os.getpid()
            assert owner["host"] == socket.gethostname()
            # A second run while this one lives is refused.
            with (
                pytest.raises(errors.WorkdirBusyError, match=f"process {os.getpid()}"),
                workdir_lib.open_workdir(workdir, config),
            ):
                pass
            os.utime(lock, (1.0, 1.0))  # the heartbeat brings it back to now
            deadline = time.monotonic() + 10
            while os.stat(lock).st_mtime < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert os.stat(lock).st_mtime > time.time() - 60
        assert not lock.exists()  # released: removed
    said = [w for w in record if "not supported" in str(w.message)]
    assert len(said) == 1 and "ENOLCK" in str(said[0].message)  # said once
    # A lock file of a dead process of this host is taken over.
    _write_lock(workdir, socket.gethostname())
    with (
        pytest.warns(UserWarning, match="ended without releasing"),
        workdir_lib.open_workdir(workdir, config),
    ):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    # Another host: live while its heartbeat is fresh; then only with --break_lock.
    _write_lock(workdir, "elsewhere", pid=4242)
    with (
        pytest.raises(errors.WorkdirBusyError, match="in use by process 4242"),
        workdir_lib.open_workdir(workdir, config),
    ):
        pass
    old = time.time() - 2 * lock_lib.STALE_S
    os.utime(lock, (old, old))
    with (
        pytest.raises(errors.WorkdirBusyError, match="ssh elsewhere ps -p 4242"),
        workdir_lib.open_workdir(workdir, config),
    ):
        pass
    with (
        pytest.warns(UserWarning, match="--break_lock"),
        workdir_lib.open_workdir(workdir, config, break_lock=True),
    ):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_warnings_print_as_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    _write_lock(workdir, socket.gethostname())

    def fn(config, workdir, **kwargs):
        with workdir_lib.open_workdir(workdir, config):
            warnings.warn("a second notice", UserWarning, stacklevel=1)

    argv = ["--config", CDDS.spec, "--workdir", str(workdir)]
    assert cli.main(fn, argv, prog="x", evaluate=False) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith(f"warning: taking over the lock of {workdir} from process")
    assert err[1] == "warning: a second notice"


def test_disk_full_at_start_names_the_file(tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # write(): no file

    workdir = tmp_path / "run"
    monkeypatch.setattr(os, "pwrite", no_space)  # the lock's owner record
    argv = ["--config", CDDS.spec, "--workdir", str(workdir)]
    code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == f"error: cannot write {workdir / '.lock'}: No space left on device"
    monkeypatch.undo()

    class Full:  # config.json and every other atomic write
        def __reduce__(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        files.atomic_write_pickle(tmp_path / "config.pkl", Full())
    line, code = errors.describe(e.value)
    assert (
        code == 2
        and line == f"cannot write {tmp_path / 'config.pkl'}: No space left on device"
    )
    assert not list(tmp_path.glob(".config.pkl*"))
    # metrics.jsonl, appended at every log step.
    writer = MetricWriter(tmp_path, tensorboard=False)
    monkeypatch.setattr(writer._jsonl, "flush", no_space)
    with pytest.raises(OSError) as e:
        writer.write(1, {"loss": 1.0})
    line, _ = errors.describe(e.value)
    assert line.startswith(f"cannot write {tmp_path / 'metrics.jsonl'}: No space")
    monkeypatch.undo()
    writer.close()


@STRAIGHT
def test_changed_config_on_finished_workdir(straight_runs, tmp_path, capsys):
    workdir = tmp_path / "run"
    src = straight_runs[CDDS]
    subprocess.run(["cp", "-a", str(src), str(workdir)], check=True)
    before = _snapshot(workdir)
    argv = ["--config", CDDS.spec, "--workdir", str(workdir), "--config.optim.lr=0.1"]
    code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: the config differs")
    assert "optim.lr: 0.0005 -> 0.1" in err and "--accept_config_changes" in err
    assert _snapshot(workdir) == before
    # Accepting it is refused too: config.json must keep describing results.json.
    code = cli.main(
        cdds_train.train_and_evaluate,
        [*argv, "--accept_config_changes"],
        prog="x",
        evaluate=False,
    )
    err = capsys.readouterr().err
    assert code == 2 and "results of a finished run" in err, err
    assert "use another --workdir" in err
    assert _snapshot(workdir) == before
    # An evaluation-only change is allowed and written beside the earlier results.
    stored = (workdir / "results.json").read_text()
    results = cdds_train.train_and_evaluate(
        _config(CDDS.spec, **{"eval.batch_size": 8}), workdir
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
    argv = ["--help", "--config", CDDS.spec]
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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_names_the_path_and_the_last_checkpoint(tmp_path, monkeypatch, capfd):
    # From the save of step 20 on, no file may grow past 100 KB (RLIMIT_FSIZE with
    # SIGXFSZ ignored: the write fails with EFBIG), so Orbax's background writers fail
    # as on a full disk: its logs, hundreds of callback tracebacks, a temporary
    # folder checkpoints/20.orbax-checkpoint-tmp that must not be named as saved.
    workdir = tmp_path / "run"
    real_save = checkpoint.Checkpointer.save
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def save(self, step, state, **kwargs):
        if step >= 20:
            resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
        return real_save(self, step, state, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    argv = ["--config", CDDS.spec, "--workdir", str(workdir)]
    try:
        code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err[:30]
    assert "File too large" in err[0]
    assert f"last checkpoint saved: {workdir.absolute()}/checkpoints/10" in err[0]
    assert (workdir / "checkpoints" / "10").is_dir()
    # After space is freed, the same command resumes and finishes.
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    cdds_train.train_and_evaluate(_config(CDDS.spec), workdir)
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
    (
        "bad-type",
        None,
        {"train.batch_size": "abc"},
        "config field 'train.batch_size' takes int (now 16), got 'abc'",
    ),
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
    argv = ["--config", CDDS.spec, "--workdir", str(tmp_path / "run")]
    if mutate is not None:
        if mutate != "missing":
            _store(root)
            mutate(root)
        argv += ["--config.data.synthetic.enabled=False", f"--config.data.root={root}"]
    argv += [f"--config.{k}={v}" for k, v in overrides.items()]
    _one_line_before_training(argv, expected, capsys, tmp_path / "run")


def _one_line_before_training(argv, expected, capsys, run: pathlib.Path) -> None:
    """CDDS's command line stops with one line holding ``expected``, untrained."""
    code = cli.main(cdds_train.train_and_evaluate, argv, prog="x", evaluate=False)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]
    assert "step 1/" not in captured.out  # failed before training
    assert not (run / "checkpoints").exists()


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
    # Padded epochs (epoch_mode official) too: not one batch of mostly padding.
    ("batch-too-big", None, {"train.batch_size": 4096}, "fewer than one batch"),
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
    argv = ["--config", DECALIGN.spec, "--workdir", str(tmp_path / "run")]
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


def test_decalign_nan_features_are_sanitised_not_fatal(tmp_path, capsys):
    # MMSA files carry -inf / overflow in MOSEI audio: the reader sets non-finite
    # values to 0 (documented safe behaviour) and says how many, on the console.
    path = _mmsa(tmp_path / "aligned_50.pkl", _nan_vision)
    config = _config(DECALIGN.spec, "data.synthetic.enabled=False", f"data.path={path}")
    splits = decalign_train.load_data(config)
    assert np.isfinite(np.asarray(splits["train"].vision)).all()
    out = capsys.readouterr().out.splitlines()
    said = [line for line in out if "sanitised" in line]
    assert len(said) == 1 and str(path) in said[0], out
    assert "train vision_nonfinite 1, vision_overflow 0" in said[0]


def _big_token_id(obj) -> None:
    obj["train"]["text_bert"][5, 0, 1] = 10**6


def _zero_attention_mask(obj) -> None:
    obj["valid"]["text_bert"][[2, 7], 1, :] = 0


DECALIGN_BERT_BAD = [
    ("token-id-out-of-range", _big_token_id, "input ids in [0, 1000000]"),
    (
        "all-zero-attention-mask",
        _zero_attention_mask,
        "2 of 24 samples have an all-zero",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [c[1:] for c in DECALIGN_BERT_BAD],
    ids=[c[0] for c in DECALIGN_BERT_BAD],
)
def test_decalign_bert_bad_ids_name_the_pickle(mutate, expected, tmp_path, capsys):
    path = _mmsa(tmp_path / "aligned_50.pkl", mutate)
    bert = decalign_encoders.ensure_demo_bert(files.cache_dir() / "decalign")
    argv = [
        *DECALIGN_BERT.argv(),
        "--workdir",
        str(tmp_path / "run"),
        "--config.data.synthetic.enabled=False",
        f"--config.data.path={path}",
        f"--config.model.bert_path={bert}",
    ]
    code = cli.main(decalign_train.train_and_evaluate, argv, prog="x", evaluate=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {path}: ") and expected in err[0], err[0]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------- image files and backbone checkpoints


@pytest.fixture
def raw_copy(tmp_path) -> pathlib.Path:
    """A private copy of the RAW_TINY demo data (JPEGs, Karpathy JSON, backbones)."""
    demo = cdds_inputs.demo_raw(_case_config(CDDS_RAW))
    assert demo is not None
    return pathlib.Path(shutil.copytree(demo.image_root, tmp_path / "data"))


def _raw_data(root: pathlib.Path) -> list[str]:
    """Overrides reading the files in ``root`` instead of the synthetic demo's."""
    return [
        "data.synthetic.enabled=False",
        f"data.root={root / 'dataset_synthetic.json'}",
        f"data.image_root={root}",
        f"model.image_backbone_path={root / 'backbones' / 'vit'}",
        f"model.text_backbone_path={root / 'backbones' / 'bert'}",
    ]


def _raw_argv(root: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    return [
        *CDDS_RAW.argv(),
        "--workdir",
        str(workdir),
        *(f"--config.{o}" for o in _raw_data(root)),
    ]


def _damage(split: str, name: str, how: str):
    def apply(root: pathlib.Path) -> None:
        path = root / "images" / split / name
        data = path.read_bytes()
        path.write_bytes(
            {"garbage": b"<html>not found</html>", "empty": b"", "cut": data[:-300]}[
                how
            ]
        )

    return apply


def _entry_without_split(root: pathlib.Path) -> None:
    path = root / "dataset_synthetic.json"
    doc = json.loads(path.read_text())
    del doc["images"][3]["split"]
    path.write_text(json.dumps(doc))


def _truncated_safetensors(root: pathlib.Path) -> None:
    path = root / "backbones" / "vit" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def _corrupt_torch_bin(root: pathlib.Path) -> None:
    folder = root / "backbones" / "bert"
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")


# (id, damage, substring of the one-line error)
RAW_BAD = [
    ("garbage-test-jpeg", _damage("test", "00002.jpg", "garbage"), "test/00002.jpg"),
    ("empty-dev-jpeg", _damage("dev", "00001.jpg", "empty"), "an empty file (0 bytes)"),
    ("truncated-train-jpeg", _damage("train", "00006.jpg", "cut"), "train/00006.jpg"),
    ("karpathy-entry-without-split", _entry_without_split, "images[3] ('00003.jpg'"),
    ("truncated-safetensors", _truncated_safetensors, "vit/model.safetensors"),
    ("corrupt-pytorch-bin", _corrupt_torch_bin, "bert/pytorch_model.bin"),
]


@pytest.mark.parametrize(
    ("damage", "expected"), [c[1:] for c in RAW_BAD], ids=[c[0] for c in RAW_BAD]
)
def test_cdds_raw_bad_input_is_one_line_before_training(
    damage, expected, raw_copy, tmp_path, capsys
):
    damage(raw_copy)
    argv = _raw_argv(raw_copy, tmp_path / "run")
    _one_line_before_training(argv, expected, capsys, tmp_path / "run")


def test_captions_empty_after_tokenisation_are_counted(raw_copy, tmp_path, capsys):
    path = raw_copy / "dataset_synthetic.json"
    doc = json.loads(path.read_text())
    doc["images"][0]["sentences"][1]["raw"] = "\x00\x01"  # BERT drops control chars
    path.write_text(json.dumps(doc))
    config = _case_config(CDDS_RAW, *_raw_data(raw_copy))
    data = cdds_inputs.load_data(config, tmp_path, splits=("train",))
    data.tokens(data.train)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "warning: train: 1 of 40 captions are empty"
    )
    assert "caption 1" in err[0]


# ---------------------------------------- NaN weights (the NaN loss: test_xmodal.py)


def _toy_state(w):
    import optax

    from xmodal.state import TrainState

    params = {"w": jnp.asarray(w, jnp.float32)}
    return TrainState.create(
        params=params, tx=optax.sgd(0.1), rng=jax.random.PRNGKey(0)
    )


def test_checkpoint_with_nan_weights_is_refused_at_load(tmp_path):
    state = _toy_state([1.0, float("nan")])
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(7, state)
    ckpt.wait()
    with pytest.raises(checkpoint.NonFiniteCheckpointError) as err:
        ckpt.restore(7, state)
    ckpt.close()
    line, code = errors.describe(err.value)
    assert code == 2 and "\n" not in line
    assert line.startswith(f"checkpoint {tmp_path / 'checkpoints'}/7 holds NaN/Inf")
    assert "in params['w']:" in line
