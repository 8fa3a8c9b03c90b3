"""The process settings a benchmark run measures under, set before JAX starts.

Both are recorded in the machine table (``XLA_FLAGS``, ``GLIBC_TUNABLES``); set either
yourself to measure without it:

- XLA:CPU's memory-aware scheduler (``xmodal.layers.CPU_MEMORY_SCHEDULER_FLAG`` added to
  ``XLA_FLAGS``): with it remat takes effect and the default CDDS step needs 24% less
  memory.
- On Linux, a restart with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: hugepages for the
  step's per-call temporary buffer, far fewer page faults, 18% faster at B = 32.
"""

from __future__ import annotations

import os
import sys

from benchmarks.timing import log
from xmodal import layers

__all__ = ["HUGETLB_TUNABLE", "reexec_with_hugepages", "use_cpu_memory_scheduler"]

#: glibc >= 2.35: back malloc's large (mmap) chunks with transparent hugepages.
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"


def use_cpu_memory_scheduler() -> bool:
    """Adds ``layers.CPU_MEMORY_SCHEDULER_FLAG`` to ``XLA_FLAGS`` unless the flag is
    already set either way; True if the flag is now on.

    Effective only before JAX's backend starts (``runner.main`` calls it first). The
    step is measured as a memory-conscious CPU user runs it; set
    ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true`` to measure
    XLA's default instead.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {layers.CPU_MEMORY_SCHEDULER_FLAG}".strip()
    return layers.cpu_memory_scheduler_enabled()


def reexec_with_hugepages() -> None:
    """Restarts this process with ``HUGETLB_TUNABLE`` in ``GLIBC_TUNABLES`` (Linux).

    XLA:CPU allocates a step's temporary buffer (GBs at paper sizes) at every call and
    frees it after; glibc serves it with a fresh ``mmap`` whose 4 KiB pages the kernel
    faults in and zeroes one by one. Measured here on the CDDS step at B = 32: 10.8 M
    page faults per 4 calls, 28% of the CPU time in the kernel and 30.4 s per step by
    default, 79 K faults and 24.9 s with the tunable (-18%). glibc reads tunables only
    at start-up, hence the restart (same interpreter, same ``sys.argv``);
    ``GLIBC_TUNABLES`` already naming ``glibc.malloc.hugetlb`` (either way) or
    ``XMODAL_BENCH_NO_REEXEC=1`` skips it.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        not sys.platform.startswith("linux")
        or "glibc.malloc.hugetlb" in tunables
        or os.environ.get("XMODAL_BENCH_NO_REEXEC") == "1"
    ):
        return
    env = dict(os.environ, XMODAL_BENCH_NO_REEXEC="1")
    env["GLIBC_TUNABLES"] = ":".join(x for x in (tunables, HUGETLB_TUNABLE) if x)
    log(f"restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']}")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
