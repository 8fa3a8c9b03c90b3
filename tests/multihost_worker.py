r"""One process of the multi-host test job of ``tests/test_multihost.py`` (not a test).

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
        python tests/multihost_worker.py --workdir W --out O --steps 4

Started by the test once per process of a 2-process job (and once, without the
``JAX_*`` variables, as the 1-process reference). Each process:

1. starts multi-host JAX exactly as the command line entry points do
   (:func:`xmodal.sharding.initialize_distributed`);
2. trains CDDS (``configs/flickr.py:tiny``) and DecAlign (``configs/mosi.py:tiny``) for
   ``--steps`` steps through the real drivers, every process writing into the same
   ``--workdir/<method>`` as a real multi-host job would;
3. restores the final train state (parameters, optimiser state, step, RNG, method
   statistics) from the latest checkpoint and writes it, as fetched by
   :func:`xmodal.sharding.to_host`, to ``--out/<method>_state_p<i>.npz``;
4. checks that the data iterator position saved in the checkpoint resumes this
   process's own shard, and that the host learning-rate factor can be set on a
   multi-process state (the plateau rule does it), and that the bigru vocabulary is
   written once and read back identically, writing ``--out/probes_p<i>.json``.

It lives beside the tests (so ``python tests/multihost_worker.py`` works from the
repository root) and is named so that pytest does not collect it.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import pathlib
import sys
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("cdds", "decalign")
# The tiny configs, shortened: a loss record every step, evaluation only at the end
# (dev, then test on the restored best state), two checkpoints for CDDS.
CONFIGS = {
    "cdds": (
        f"{ROOT}/configs/flickr.py:tiny",
        [
            "train.log_every_steps=1",
            "train.checkpoint_every_steps=2",
        ],
    ),
    "decalign": (f"{ROOT}/configs/mosi.py:tiny", ["train.log_every_steps=1"]),
}


def load_config(method: str, steps: int) -> Any:
    """The tiny config of ``method`` trained for ``steps`` steps."""
    from xmodal import config as config_lib

    spec, overrides = CONFIGS[method]
    config = config_lib.load_config(spec)
    config_lib.apply_overrides(config, [*overrides, f"train.num_steps={steps}"])
    if method == "cdds":
        config_lib.apply_overrides(config, [f"train.eval_every_steps={steps}"])
    return config


def flatten(tree: Any) -> dict[str, np.ndarray]:
    """``{"['params']['dense']['kernel']": array}``: the leaves of ``tree`` by path."""
    import jax

    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def restore_target(method: str, config: Any, workdir: pathlib.Path) -> tuple:
    """``(target, train_source, run_dir)``: what to restore the run's state onto.

    The target is abstract (ShapeDtypeStructs with the driver's shardings): the
    driver's ``create_train_state`` is only traced (``jax.eval_shape``), not compiled.
    Any config of the method (image files and backbones, BERT ids); the kill tests
    of ``tests/test_reliability.py`` use it too.
    """
    import jax

    from xmodal import sharding

    mesh = sharding.make_mesh(config.mesh)
    bs = int(config.train.batch_size)
    if method == "cdds":
        from cdds_jax import train

        data = train.load_data(config, workdir, splits=("train",))
        source = data.pair_source(data.train)
        example = data.example(data.train)
        vocab_size = len(data.vocab) if data.vocab else 0
        model = train.build_model(config, data.backbones, vocab_size)
        kwargs: dict[str, Any] = {}
        run_dir = workdir
    else:
        from decalign_jax import train

        source = train.inputs.make_source(train.load_data(config)["train"], config)
        example = {k: np.asarray(v)[None] for k, v in source[0].items()}
        model = train.build_model(config)
        kwargs = {"seed": int(config.seed)}
        run_dir = workdir / f"seed_{int(config.seed)}"
    shardings: list[Any] = []

    def build() -> Any:
        state, state_shardings = train.create_train_state(
            config, model, example, mesh, steps_per_epoch=len(source) // bs, **kwargs
        )
        shardings.append(state_shardings)
        return state

    abstract = jax.eval_shape(build)
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract,
        shardings[0],
    )
    return target, source, run_dir


def check_iterator_resume(
    config: Any, target: Any, source: Any, run_dir: pathlib.Path, steps: int
) -> dict[str, Any]:
    """The saved iterator position resumes this process's shard at batch ``steps``.

    A fresh iterator restored from the checkpoint must yield the same batch as a fresh
    iterator advanced by ``steps`` batches, and that batch must be this process's
    block of the global batch (its rows of a single-process iterator's batch).
    """
    import grain
    import jax

    from xmodal import pipeline
    from xmodal.checkpoint import Checkpointer

    bs = int(config.train.batch_size)
    seed = int(config.seed)

    def fresh() -> Any:
        return pipeline.train_iterator(
            source, global_batch_size=bs, seed=seed, num_threads=1
        )

    skipped = fresh()
    for _ in range(steps):
        next(skipped)
    expected = next(skipped)
    restored_iter = fresh()
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=None)
    try:
        step = ckpt.latest_step()
        ckpt.restore(step, target, data_iter=restored_iter)
    finally:
        ckpt.close()
    got = next(restored_iter)
    same = all(np.array_equal(got[k], expected[k]) for k in expected)
    # The rows of the global batch this process owns, from the same global
    # permutation (``seed``): elements [steps*B, (steps+1)*B) of the shuffled order.
    order = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
    local = bs // jax.process_count()
    start = steps * bs + jax.process_index() * local
    rows = [order[start + i] for i in range(local)]
    block = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    own = all(np.array_equal(got[k], block[k]) for k in block)
    return {"step": step, "resumes_same_batch": same, "is_own_block": own}


def check_lr_factor(state: Any) -> float:
    """Sets the host learning-rate factor on a (multi-process) state and reads it."""
    from xmodal import optim

    opt_state = optim.set_lr_factor(state.opt_state, 0.25)
    return optim.get_lr_factor(opt_state)


def check_vocab(workdir: pathlib.Path, steps: int) -> dict[str, Any]:
    """The bigru vocabulary of a multi-process run: written once, read by everyone.

    Every process builds the table while ``vocab.json`` is absent and process 0 saves
    it (``train.save_vocab``, as the driver does once the workdir is open); after a
    barrier every process reads process 0's file.
    """
    import hashlib

    from jax.experimental import multihost_utils

    from cdds_jax import train
    from xmodal import config as config_lib

    config = load_config("cdds", steps)
    config_lib.apply_overrides(config, ["model.text_encoder=bigru"])
    data = train.load_data(config, workdir, splits=("train",))
    built = data.vocab
    workdir.mkdir(parents=True, exist_ok=True)
    train.save_vocab(data, workdir)
    multihost_utils.sync_global_devices("multihost_worker: vocab written")
    loaded = train.load_data(config, workdir, splits=("train",)).vocab
    assert built is not None and loaded is not None
    digest = hashlib.sha256(json.dumps(built.tokens).encode()).hexdigest()
    return {"size": len(built), "sha256": digest, "reload_equal": built == loaded}


def run_method(
    method: str, workdir: pathlib.Path, out: pathlib.Path, steps: int
) -> dict[str, Any]:
    import jax

    from xmodal import sharding
    from xmodal.checkpoint import restore_for_eval

    config = load_config(method, steps)
    if method == "cdds":
        from cdds_jax import train
    else:
        from decalign_jax import train
    train.train_and_evaluate(config, workdir)

    target, source, run_dir = restore_target(method, config, workdir)
    state, _, which = restore_for_eval(run_dir, target, which="latest")
    leaves = flatten(sharding.to_host(state))
    np.savez(out / f"{method}_state_p{jax.process_index()}.npz", **leaves)
    probes = {
        "checkpoint": which,
        "step": int(jax.device_get(state.step)),
        "lr_factor": check_lr_factor(state),
        "iterator": check_iterator_resume(config, target, source, run_dir, steps),
    }
    return probes


def gloo_on_loopback_if_hostname_unresolvable() -> bool:
    """Binds gloo to 127.0.0.1 when this host's name does not resolve; True if so.

    gloo names the local endpoint by resolving ``gethostname()``; in a sandbox whose
    hostname does not resolve, the CPU backend fails to start ("gloo/transport/tcp/
    device.cc:99 rv == 0"). Real hosts resolve their names, so only then (this job is
    on loopback anyway) is the CPU backend made with gloo on 127.0.0.1, through
    JAX's private backend-factory hook (jax 0.10 has no public setting for it). Call
    before the CPU backend starts (``initialize_distributed`` starts it).
    """
    import socket

    try:
        socket.getaddrinfo(socket.gethostname(), None)
        return False
    except OSError:
        pass
    from jax._src import distributed, xla_bridge
    from jax._src.lib import _jax

    def factory() -> Any:
        client = distributed.global_state.client  # set by then
        if client is None:
            return xla_bridge.make_cpu_client()
        collectives = _jax.make_gloo_tcp_collectives(
            distributed_client=client, hostname="127.0.0.1"
        )
        return xla_bridge.make_cpu_client(collectives=collectives)

    xla_bridge.register_backend_factory("cpu", factory, priority=0, fail_quietly=False)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--vocab",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also check the bigru vocabulary (check_vocab)",
    )
    parser.add_argument(
        "--timeout", type=float, default=0, help="dump all stacks and exit after (s)"
    )
    args = parser.parse_args(argv)
    if args.timeout > 0:
        # A hung collective or barrier: print where every thread is, then exit, so
        # the test reports the stack instead of only a timeout.
        faulthandler.dump_traceback_later(args.timeout, exit=True)

    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags; no absl.app.run here
    import jax

    from xmodal import sharding

    if gloo_on_loopback_if_hostname_unresolvable():
        print("hostname does not resolve: gloo bound to 127.0.0.1", flush=True)
    sharding.initialize_distributed()
    me = jax.process_index()
    print(
        f"worker {me}/{jax.process_count()}: {jax.local_device_count()} local, "
        f"{jax.device_count()} global devices",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "process_index": me,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "devices": [[d.id, d.process_index] for d in jax.devices()],  # the global order
    }
    for method in args.methods.split(","):
        report[method] = run_method(method, args.workdir / method, args.out, args.steps)
    if args.vocab:
        report["vocab"] = check_vocab(args.workdir / "vocab", args.steps)
    (args.out / f"probes_p{me}.json").write_text(json.dumps(report, indent=2))
    print(f"worker {me}: done", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the packages, also without an editable install
    main()
