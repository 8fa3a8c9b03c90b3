"""Multi-host: a 2-process CPU job trains both methods like 1 process on 4 devices.

Two worker processes (``tests/multihost_worker.py``) with 2 simulated CPU devices each
form one JAX job over loopback (``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``, read by :func:`xmodal.sharding.initialize_distributed`; gloo for
the cross-process collectives). They train CDDS and DecAlign for a few steps through
the real drivers into one shared workdir, exactly as a multi-host job does. A third
process, alone with the same 4 devices, is the reference. The per-step training
metrics (process 0's ``metrics.jsonl``) and the final train state restored from the
checkpoints must agree.

Why some leaves are compared differently. The two runs reduce the gradient in a
different order (gloo's all-reduce across processes vs XLA's in-process reduction),
so gradients differ by float32 rounding (~1e-7 relative; the step-1 metrics show it).
Two kinds of parameter have a gradient that is exactly zero in exact arithmetic:

- attention key biases: softmax is invariant to adding ``q . b_k`` to every logit of
  a query row (:func:`test_attention_key_bias_has_no_gradient`); in DecAlign's packed
  ``in_proj_bias`` ``[3 D]`` (PyTorch's layout: query, key, value) the middle third;
- CDDS's soft-threshold multipliers ``alpha_v`` / ``alpha_t`` on rows of W with a
  single survivor, which are one-hot whatever alpha is
  (:func:`test_soft_threshold_alpha_has_no_gradient_on_one_hot_rows`; in the runs we
  checked every differing alpha element sat on such a row, the others were equal).

Adam's first step turns such a gradient, pure rounding noise, into a move of about
``+-lr`` whose sign the noise decides, so the two runs legitimately move these
elements differently. They are held only to Adam's bound (``|diff| <= 2 lr steps``);
every other parameter must agree to ``atol 2e-5`` + ``rtol 1e-5``, whereas a
sharding bug (a process training on the wrong rows, a missing all-reduce) changes an
update by O(lr) = 5e-4..1e-3 per step in nearly every element. The soft threshold also
amplifies the rounding noise of S into the CDDS gradients (~1e-4 relative, see
``tests/test_cdds_train.py``), so after step 1 the loss parts and norms get ``rtol
1e-4`` (``update_norm``, which contains the noise-driven moves, ``1e-3``); the total
loss keeps ``2e-5`` and step 1 (identical parameters) ``1e-5``. Adam's moments are
compared norm-wise per leaf (``1e-3``).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# One worker runs the whole module (its runs are one session-scoped fixture, made once).
pytestmark = pytest.mark.xdist_group("multihost")
ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
STEPS = 4
# The three workers together take ~100-120 s on 2 idle cores. The limits only catch a
# hang (a peer that died, a collective or barrier that never completes), with room
# for a loaded machine: a worker dumps every thread's stack and exits at
# WORKER_TIMEOUT_S, the test kills what is left at TIMEOUT_S.
TIMEOUT_S = 360
WORKER_TIMEOUT_S = TIMEOUT_S - 30
# Test-only: compile with less optimisation (both runs alike, so the comparison is
# unaffected); XLA compilation is ~80% of this test and these cut it by ~40%.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
# Leaves whose gradient is identically zero (see the module docstring).
ZERO_GRAD = re.compile(r"\['attn'\]\['key'\]\['bias'\]|\['alpha_[vt]'\]")
RUN_DIRS = {"cdds": "cdds", "decalign": "decalign/seed_1111"}


# ------------------------------------------------------------------ launching


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(local_devices: int, cache: pathlib.Path, **extra: str) -> dict[str, str]:
    """A clean environment: ``local_devices`` simulated CPU devices, no inherited
    distributed settings (the conftest's 8 devices do not leak), the data in
    ``cache`` and a compilation cache beside it that every job of the session shares
    (the killed-and-resumed job compiles nothing the first job did not)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAX_", "XLA_", "PJRT_", "SLURM_", "OMPI_", "TPU_"))
    }
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices} "
        + FAST_COMPILE,
        PJRT_NPROC="16",  # >= 2x devices: no simulated-device deadlock (ENVIRONMENT.md)
        JAX_PLATFORMS="cpu",
        XMODAL_CACHE=str(cache),
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=str(cache.with_name("jax-cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.update(extra)
    return env


def _tail(path: pathlib.Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no output)"
    return text[-chars:]


Jobs = dict[str, tuple[list[str], dict[str, str]]]


def _start_workers(jobs: Jobs, logs: pathlib.Path) -> dict[str, subprocess.Popen]:
    procs = {}
    for name, (args, env) in jobs.items():
        log = (logs / f"{name}.log").open("w")
        procs[name] = subprocess.Popen(
            [sys.executable, str(WORKER), *args, f"--timeout={WORKER_TIMEOUT_S}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
    return procs


def _report(procs: dict[str, subprocess.Popen], logs: pathlib.Path) -> str:
    return "\n".join(
        f"---- {name} (exit {p.returncode}) ----\n{_tail(logs / f'{name}.log')}"
        for name, p in procs.items()
    )


def _run_workers(jobs: Jobs, logs: pathlib.Path):
    """Starts every job, waits for all; on a crash or timeout kills the rest and fails
    with each worker's output tail."""
    procs = _start_workers(jobs, logs)
    deadline = time.monotonic() + TIMEOUT_S
    failure = None
    while True:
        codes = {name: p.poll() for name, p in procs.items()}
        if all(c is not None for c in codes.values()):
            break
        bad = [n for n, c in codes.items() if c not in (None, 0)]
        if bad:
            # A dead peer leaves the other process waiting in a collective forever.
            failure = f"worker {bad[0]} exited with code {codes[bad[0]]}"
            break
        if time.monotonic() > deadline:
            failure = f"workers did not finish within {TIMEOUT_S} s"
            break
        time.sleep(0.5)
    if failure is None and any(p.returncode for p in procs.values()):
        # (A crashed process may linger in jax.distributed's shutdown barrier until
        # its peer fails too, so both can end between two polls.)
        failure = "workers failed: " + ", ".join(
            f"{name} (exit {p.returncode})" for name, p in procs.items() if p.returncode
        )
    if failure is not None:
        for p in procs.values():
            if p.poll() is None:
                time.sleep(2)  # let it finish writing a traceback if it is exiting
                p.kill()
            p.wait()
        pytest.fail(f"{failure}\n{_report(procs, logs)}", pytrace=False)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Runs the 2-process job and the 1-process reference (concurrently)."""
    base = tmp_path_factory.mktemp("multihost")
    cache = base / "data-cache"
    port = _free_port()
    coordinator = f"127.0.0.1:{port}"
    multi = dict(
        JAX_COORDINATOR_ADDRESS=coordinator,
        # Bind the coordinator to loopback too (the default "[::]" needs IPv6).
        JAX_COORDINATOR_BIND_ADDRESS=coordinator,
        JAX_NUM_PROCESSES="2",
    )
    common = ["--steps", str(STEPS)]
    jobs = {
        f"process{i}": (
            [
                "--workdir",
                str(base / "multi"),
                "--out",
                str(base / "out-multi"),
                *common,
            ],
            _env(2, cache, JAX_PROCESS_ID=str(i), **multi),
        )
        for i in range(2)
    }
    jobs["reference"] = (
        ["--workdir", str(base / "single"), "--out", str(base / "out-single"), *common],
        _env(4, cache),
    )
    start = time.monotonic()
    _run_workers(jobs, base)
    print(f"multi-host workers took {time.monotonic() - start:.0f} s")
    return {
        "multi": base / "multi",
        "single": base / "single",
        "out_multi": base / "out-multi",
        "out_single": base / "out-single",
        "data_cache": cache,
    }


# ------------------------------------------------------------------ comparisons


def _metrics(path: pathlib.Path) -> dict[tuple[str, int], dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    keyed = {(r["split"], r["step"]): r for r in records}
    # Only process 0 writes: one record per (split, step), no duplicates.
    assert len(keyed) == len(records), f"{path}: duplicate records"
    return keyed


def _config(run_dir: pathlib.Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def _close(got: float, want: float, *, rtol: float, atol: float = 0.0) -> bool:
    return abs(got - want) <= atol + rtol * abs(want)


def _compare_train_metrics(method: str, runs) -> None:
    single = _metrics(runs["single"] / RUN_DIRS[method] / "metrics.jsonl")
    multi = _metrics(runs["multi"] / RUN_DIRS[method] / "metrics.jsonl")
    assert single.keys() == multi.keys()
    lr = _config(runs["single"] / RUN_DIRS[method])["optim"]["lr"]
    train_steps = sorted(s for split, s in single if split == "train")
    assert train_steps == list(range(1, STEPS + 1))
    bad = []
    for step in train_steps:
        want, got = single[("train", step)], multi[("train", step)]
        assert want.keys() == got.keys()
        for key in want.keys() - {"time", "split", "step"}:
            if key == "alpha_v":  # mean of a zero-gradient leaf: Adam's bound
                ok = _close(got[key], want[key], rtol=0, atol=2 * lr * step)
            elif key == "update_norm":
                # Includes the zero-gradient leaves, whose Adam step is lr g / (|g| +
                # eps) of a noise g: its size is noise too where |g| ~ eps.
                ok = _close(got[key], want[key], rtol=1e-3)
            elif step == 1:  # identical parameters: rounding only
                ok = _close(got[key], want[key], rtol=1e-5, atol=1e-6)
            elif key == "loss":
                ok = _close(got[key], want[key], rtol=2e-5)
            else:
                ok = _close(got[key], want[key], rtol=1e-4, atol=1e-6)
            if not ok:
                bad.append(
                    f"step {step} {key}: 1 process {want[key]} 2 processes {got[key]}"
                )
    assert not bad, f"{method}: training metrics differ:\n" + "\n".join(bad)


def _compare_states(method: str, runs) -> None:
    single = dict(np.load(runs["out_single"] / f"{method}_state_p0.npz"))
    p0 = dict(np.load(runs["out_multi"] / f"{method}_state_p0.npz"))
    p1 = dict(np.load(runs["out_multi"] / f"{method}_state_p1.npz"))
    # Every process restored (and gathered) the same state.
    chex.assert_trees_all_equal(p0, p1)
    assert single.keys() == p0.keys()
    lr = _config(runs["single"] / RUN_DIRS[method])["optim"]["lr"]
    for name in (".step", ".rng"):
        np.testing.assert_array_equal(p0[name], single[name], err_msg=name)
    assert int(single[".step"]) == STEPS
    params = [k for k in single if k.startswith(".params")]
    zero_grad = [k for k in params if ZERO_GRAD.search(k)]
    packed = [k for k in params if k.endswith("['in_proj_bias']")]
    assert zero_grad or packed, "expected attention key biases among the parameters"
    for k in params:
        if k in packed:  # query | key | value biases; the key third has no gradient
            want, got = np.split(single[k], 3), np.split(p0[k], 3)
            np.testing.assert_array_less(
                np.abs(got[1] - want[1]), 2 * lr * STEPS, err_msg=k
            )
            for i in (0, 2):
                np.testing.assert_allclose(
                    got[i], want[i], rtol=1e-5, atol=2e-5, err_msg=k
                )
        elif k in zero_grad:
            np.testing.assert_array_less(
                np.abs(p0[k] - single[k]), 2 * lr * STEPS, err_msg=k
            )
        else:
            np.testing.assert_allclose(
                p0[k], single[k], rtol=1e-5, atol=2e-5, err_msg=k
            )
    for k in single:
        if k.startswith(".extra"):  # CDDS's EMA of S
            np.testing.assert_allclose(
                p0[k], single[k], rtol=1e-5, atol=1e-5, err_msg=k
            )
        elif k.startswith(".opt_state") and not ZERO_GRAD.search(k):
            # Adam's moments hold the raw gradients (~1e-4 relative noise in CDDS).
            want, got = single[k].astype(np.float64), p0[k].astype(np.float64)
            assert np.linalg.norm(got - want) <= 1e-3 * np.linalg.norm(want) + 1e-12, k


def test_cdds_two_processes_match_one_process(runs):
    _compare_train_metrics("cdds", runs)
    _compare_states("cdds", runs)
    # Retrieval metrics are ranks: equal up to one flipped near-tie (1 of 16 images).
    for split in ("dev", "test_full"):
        single = _metrics(runs["single"] / "cdds" / "metrics.jsonl")
        multi = _metrics(runs["multi"] / "cdds" / "metrics.jsonl")
        want, got = single[(split, STEPS)], multi[(split, STEPS)]
        for key in want.keys() - {"time", "split", "step"}:
            limit = 3 * 100 / 16 + 3 * 100 / 80 if key == "rsum" else 100 / 16
            assert abs(got[key] - want[key]) <= limit, (split, key, got, want)


def test_decalign_two_processes_match_one_process(runs):
    _compare_train_metrics("decalign", runs)
    _compare_states("decalign", runs)
    single = _metrics(runs["single"] / RUN_DIRS["decalign"] / "metrics.jsonl")
    multi = _metrics(runs["multi"] / RUN_DIRS["decalign"] / "metrics.jsonl")
    for split in ("dev", "test"):  # continuous metrics, gathered across processes
        want, got = single[(split, STEPS)], multi[(split, STEPS)]
        for key in want.keys() - {"time", "split", "step"}:
            assert _close(got[key], want[key], rtol=1e-5, atol=1e-6), (split, key)
    for results in ("results.json", "seed_1111/results.json"):
        want = json.loads((runs["single"] / "decalign" / results).read_text())
        got = json.loads((runs["multi"] / "decalign" / results).read_text())
        assert got.keys() == want.keys()


def test_multihost_bookkeeping(runs):
    probes = [
        json.loads((runs["out_multi"] / f"probes_p{i}.json").read_text())
        for i in range(2)
    ]
    reference = json.loads((runs["out_single"] / "probes_p0.json").read_text())
    assert reference["process_count"] == 1 and reference["device_count"] == 4
    for i, probe in enumerate(probes):
        assert probe["process_index"] == i
        assert probe["process_count"] == 2 and probe["device_count"] == 4
        # The global device order is process-major, so a global batch assembled from
        # the per-process blocks is the single-process batch in the same row order.
        owners = [owner for _, owner in probe["devices"]]
        assert owners == sorted(owners) == [0, 0, 1, 1]
        for method in RUN_DIRS:
            p = probe[method]
            assert p["checkpoint"] == f"checkpoints/{STEPS}" and p["step"] == STEPS
            assert p["lr_factor"] == 0.25  # set on a state spread over 2 processes
            assert p["iterator"] == {
                "step": STEPS,
                "resumes_same_batch": True,
                "is_own_block": True,
            }, (i, method)
        # bigru vocabulary: process 0 wrote it; every process reads the same table.
        assert probe["vocab"]["reload_equal"] and probe["vocab"]["size"] > 4
        assert probe["vocab"] == reference["vocab"]
    assert (runs["multi"] / "vocab" / "vocab.json").is_file()
    assert not list((runs["multi"] / "vocab").glob(".*partial"))
    for method, sub in RUN_DIRS.items():
        run = runs["multi"] / sub
        for name in ("config.json", "metrics.jsonl", "results.json"):
            assert (run / name).is_file(), (method, name)
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
        # One grain iterator state per process in every checkpoint.
        for step_dir in (run / "checkpoints").iterdir():
            names = sorted(f.name for f in (step_dir / "data").glob("process_*.json"))
            assert names == ["process_0-of-2.json", "process_1-of-2.json"], step_dir
        assert (run / "best").is_dir()


# ---------------------------------------------- a killed process, the job resumed


def _cdds_job(runs, workdir: pathlib.Path, out: pathlib.Path, fault: str = "") -> Jobs:
    """The 2-process CDDS job of ``runs`` (same config, steps and compiled programs)
    into ``workdir``; ``fault`` (``XMODAL_FAULT``) is armed in process 1 only."""
    coordinator = f"127.0.0.1:{_free_port()}"
    args = ["--workdir", str(workdir), "--out", str(out), "--steps", str(STEPS)]
    args += ["--methods", "cdds", "--no-vocab"]
    return {
        f"process{i}": (
            args,
            _env(
                2,
                runs["data_cache"],
                JAX_COORDINATOR_ADDRESS=coordinator,
                JAX_COORDINATOR_BIND_ADDRESS=coordinator,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                **({"XMODAL_FAULT": fault} if fault and i == 1 else {}),
            ),
        )
        for i in range(2)
    }


def test_job_with_a_killed_process_resumes_bit_identical(runs, tmp_path):
    # Process 1 is killed (SIGKILL) while the checkpoint of step 4 is being written;
    # process 0, waiting for it in a barrier, is stopped as a scheduler stops a job
    # that lost a process. The same job again resumes from checkpoints/2 and must end
    # exactly where the uninterrupted job of ``runs`` did.
    workdir, out = tmp_path / "job", tmp_path / "out"
    fault = f"checkpoint_write@{STEPS}"
    procs = _start_workers(_cdds_job(runs, workdir, out, fault), tmp_path)
    deadline = time.monotonic() + TIMEOUT_S
    while procs["process1"].poll() is None and time.monotonic() < deadline:
        if procs["process0"].poll() not in (None, 0):
            break  # process 0 failed on its own: reported below
        time.sleep(0.2)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
        p.wait()
    assert procs["process1"].returncode == -9, _report(procs, tmp_path)
    run = workdir / "cdds"
    assert not (run / "results.json").exists()
    assert (run / "checkpoints" / "2").is_dir(), sorted(os.listdir(run / "checkpoints"))
    _run_workers(_cdds_job(runs, workdir, out), tmp_path)
    resumed = dict(np.load(out / "cdds_state_p0.npz"))
    straight = dict(np.load(runs["out_multi"] / "cdds_state_p0.npz"))
    chex.assert_trees_all_equal(resumed, straight)
    want = _metrics(runs["multi"] / "cdds" / "metrics.jsonl")  # no duplicates
    got = _metrics(run / "metrics.jsonl")
    assert got.keys() == want.keys()
    for key, row in want.items():
        assert {k: v for k, v in got[key].items() if k != "time"} == {
            k: v for k, v in row.items() if k != "time"
        }, key
    results = json.loads((run / "results.json").read_text())
    assert results == json.loads((runs["multi"] / "cdds" / "results.json").read_text())
    assert not list(run.rglob("*orbax-checkpoint-tmp*"))


# ---------------------------------------------- the zero-gradient leaves, proven


def test_attention_key_bias_has_no_gradient():
    # The models' attention (flax MultiHeadDotProductAttention, with a key mask).
    attn = nn.MultiHeadDotProductAttention(
        num_heads=2, qkv_features=16, out_features=16
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)
    weights = rng.normal(size=(3, 5, 16)).astype(np.float32)
    mask = np.arange(5)[None, None, None, :] < np.array([5, 3, 4])[:, None, None, None]

    @jax.jit  # one compile: init, perturbation and gradient together
    def grads():
        params = attn.init(jax.random.PRNGKey(0), x, x, mask=mask)["params"]
        # Non-zero biases everywhere: the zero gradient is not an artefact of zeros.
        params = jax.tree_util.tree_map(
            lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
            params,
        )
        loss = lambda p: jnp.sum(attn.apply({"params": p}, x, x, mask=mask) * weights)
        return jax.grad(loss)(params)

    g = jax.device_get(grads())
    scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree_util.tree_leaves(g))
    assert float(np.max(np.abs(g["key"]["bias"]))) <= 1e-6 * scale
    for name in ("query", "value", "out"):
        assert float(np.max(np.abs(g[name]["bias"]))) > 1e-3 * scale, name
    assert float(np.max(np.abs(g["key"]["kernel"]))) > 1e-3 * scale


def test_soft_threshold_alpha_has_no_gradient_on_one_hot_rows():
    from cdds_jax import semantics

    s = np.array(
        [
            [0.0, 5.0, 5.0, 5.0, 5.0],  # one clear minimum: a single survivor
            [0.0, 0.1, 3.0, 4.0, 5.0],  # two survivors
            [1.0, 0.5, 0.2, 2.0, 0.4],  # several
        ],
        np.float32,
    )
    alpha = np.array([0.5, 0.5, 0.5], np.float32)
    weights = jax.random.normal(jax.random.PRNGKey(1), s.shape)
    f = functools.partial(semantics.soft_threshold, s)
    w = np.asarray(f(alpha))
    assert (w > 0).sum(axis=1).tolist()[0] == 1 and (w[1:] > 0).sum(axis=1).min() > 1
    g = jax.jit(jax.grad(lambda a: jnp.sum(f(a) * weights)))(alpha)
    assert float(g[0]) == 0.0 or abs(float(g[0])) <= 1e-6 * float(jnp.max(jnp.abs(g)))
    assert float(jnp.min(jnp.abs(g[1:]))) > 0


def test_initialize_distributed_reads_process_count_and_id(monkeypatch):
    # jax 0.10 reads JAX_COORDINATOR_ADDRESS itself but not these two (the job above
    # shows the good path); a bad value fails before anything connects.
    from xmodal import sharding

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match=r"JAX_NUM_PROCESSES.*'two'"):
        sharding.initialize_distributed()


def test_initialize_distributed_switch(monkeypatch):
    from xmodal import sharding

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
    monkeypatch.delenv("TPU_PROCESS_ADDRESSES", raising=False)
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)

    monkeypatch.delenv("XMODAL_DISTRIBUTED", raising=False)
    sharding.initialize_distributed()  # nothing detected: one process
    assert calls == []
    monkeypatch.setenv("XMODAL_DISTRIBUTED", "1")  # a TPU VM slice: always
    sharding.initialize_distributed()
    assert calls == [{}]
    monkeypatch.setenv("XMODAL_DISTRIBUTED", "0")  # never, even when detected
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    sharding.initialize_distributed()
    assert calls == [{}]
    monkeypatch.setenv("XMODAL_DISTRIBUTED", "auto")  # detected
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    sharding.initialize_distributed()
    assert calls == [{}, {"num_processes": 2, "process_id": 1}]
    monkeypatch.setenv("XMODAL_DISTRIBUTED", "yes")
    with pytest.raises(ValueError, match=r"XMODAL_DISTRIBUTED.*'yes'"):
        sharding.initialize_distributed()
