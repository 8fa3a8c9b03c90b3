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
