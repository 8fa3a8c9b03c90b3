"""The machine a run measured: CPU, cores, memory, JAX backend, versions, settings.

``machine_info()`` is written to ``benchmarks.json`` as ``machine`` and rendered as the
first table of BENCHMARKS.md; the XLA flags and glibc tunables the run set (see
``benchmarks.process``) are part of it, so a number is never read without them.
"""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jaxlib

from benchmarks import markdown

__all__ = [
    "git_commit",
    "machine_info",
    "meminfo_bytes",
    "read_proc",
    "render",
    "total_memory",
]


def read_proc(path: str) -> str:
    """The text of a ``/proc`` or ``/sys`` file; empty where it does not exist."""
    try:
        return pathlib.Path(path).read_text()
    except OSError:
        return ""


def meminfo_bytes(field: str) -> int | None:
    """A ``/proc/meminfo`` field (``MemTotal``, ``MemAvailable``) in bytes; None off Linux."""
    for line in read_proc("/proc/meminfo").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _cpu_model() -> str:
    for line in read_proc("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def total_memory() -> int | None:
    """Physical memory in bytes (``MemTotal``, else ``sysconf``); None if unknown."""
    total = meminfo_bytes("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    return total


def git_commit() -> str | None:
    """The short commit of this checkout, or None outside a git repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=pathlib.Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, JAX backend, device kinds and versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    devices = jax.devices()
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_bytes": total_memory(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "device_count": len(devices),
        "device_kinds": sorted({d.device_kind for d in devices}),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "transparent_hugepages": read_proc(
            "/sys/kernel/mm/transparent_hugepage/enabled"
        ).strip(),
    }


def _code(value: str | None) -> str:
    return f"`{value}`" if value else "-"


def render(results: Mapping[str, Any]) -> list[str]:
    """The ``## Machine`` section of BENCHMARKS.md."""
    mach = results["machine"]
    lines = ["## Machine", ""]
    lines += markdown.table(
        ["", ""],
        [
            ["CPU", mach["cpu_model"]],
            ["cores", f"{mach['cpu_cores']} ({mach['cpu_cores_usable']} usable)"],
            ["memory", markdown.gib(mach.get("memory_bytes"))],
            ["jax backend", mach["jax_backend"]],
            ["devices", f"{mach['device_count']} x {', '.join(mach['device_kinds'])}"],
            ["jax / jaxlib", f"{mach['jax']} / {mach['jaxlib']}"],
            ["python", mach["python"]],
            ["platform", mach["platform"]],
            ["XLA_FLAGS", _code(mach.get("xla_flags"))],
            ["GLIBC_TUNABLES", _code(mach.get("glibc_tunables"))],
            ["transparent hugepages", mach.get("transparent_hugepages") or "-"],
        ],
    )
    return lines
