r"""Throughput benchmark of both methods; writes BENCHMARKS.md + benchmarks.json.

    python scripts/benchmark.py                     # full sizes -> ./BENCHMARKS.md + ./benchmarks.json
    python scripts/benchmark.py --quick             # laptop sizes (< 10 min on 2 CPU cores)
    python scripts/benchmark.py --cdds-batches 8,16 --sections ceilings,cdds_train
    python scripts/benchmark.py --render benchmarks.json   # rebuild BENCHMARKS.md only

Output (``--out``; default ``.`` for the full run, ``runs/benchmark-quick`` /
``runs/benchmark-smoke`` otherwise so a small run never overwrites the committed
table): ``BENCHMARKS.md`` and ``benchmarks.json`` (every number), both rewritten after
each section so an interrupted run keeps what it measured.

The code is the ``benchmarks`` package (one module per section; ``benchmarks.runner``
says how to add one). On Linux this script first restarts itself with glibc hugepages
(``benchmarks.process.reexec_with_hugepages``), then runs ``benchmarks.runner.main``,
which adds XLA:CPU's memory-aware scheduler flag before JAX starts.
"""

import pathlib
import sys

# This checkout's packages, also when an editable install predates ``benchmarks/``.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import process, runner

if __name__ == "__main__":
    process.reexec_with_hugepages()
    runner.main()
