"""Test set-up: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os
import tempfile

# 8 simulated devices so the sharded paths run in every test. PJRT_NPROC >= 2x the
# device count avoids the XLA CPU deadlock of simulated devices on a 2-core machine.
# XLA:CPU's memory-aware scheduler, as scripts/benchmark.py runs (remat only saves
# memory with it; xmodal.layers.CPU_MEMORY_SCHEDULER_FLAG says why).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_cpu_enable_concurrency_optimized_scheduler=false"
    # Test-only: compilation is most of the suite's time and these flags cut it by
    # ~40%; every comparison in the suite is between programs compiled alike or
    # against independent references with float32 tolerances.
    + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("PJRT_NPROC", "16")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Identical programs (the same step compiled by a straight and a resumed run, by two
# seeds) are compiled once per test session: a persistent cache in a fresh folder.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="xmodal-test-jax-cache-")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from absl import flags

# grain workers read absl flags; nothing here goes through absl.app.run.
flags.FLAGS.mark_as_parsed()


# The longest groups start first, so the other worker fills in around them.
_FIRST = ("tests/test_reliability.py", "tests/test_multihost.py")


def pytest_collection_modifyitems(config, items):
    """``--dist loadgroup`` for pytest 9, and the long groups first.

    pytest-xdist 3.8 puts a test in its ``xdist_group`` by renaming it
    ``nodeid@group`` through ``item._nodeid``, which pytest 9 no longer reads (a
    node's id is ``item._id``): the groups were silently spread over both workers,
    each running the group's session fixtures (the multi-host jobs, the straight
    runs) once. Renamed here the way pytest 9 stores it; a test already renamed (a
    fixed xdist, pytest 8) is left alone.
    """
    from _pytest import nodes

    if getattr(config.option, "loadgroup", False):
        for item in items:
            names = sorted(
                {
                    str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")
                }
            )
            if names and "@" not in item.nodeid and hasattr(item, "_id"):
                item._id = nodes.coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
    items.sort(
        key=lambda i: (
            0
            if i.nodeid.startswith(_FIRST) and i.get_closest_marker("xdist_group")
            else 1
        )
    )
