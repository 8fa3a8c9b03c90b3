"""The command line shared by every entry point.

    python -m cdds_jax.train --config configs/flickr.py:demo --workdir runs/demo \
        --config.train.batch_size=32

Flags: ``--config FILE[:ARG]`` (a config file and its argument), ``--workdir DIR``,
``--config.KEY=VALUE`` overrides (parsed to the type of the field they replace; an
unknown key is an error), ``--accept_config_changes`` (continue a workdir whose
config changed), ``--break_lock`` (take over a workdir whose lock names another host,
once that host's run is known to be gone), ``--debug`` (tracebacks instead of
one-line errors; also ``XMODAL_DEBUG=1``), ``--help`` (with ``--config``: the config's
arguments and every field). Evaluation adds ``--checkpoint best|latest`` and
``--split NAME``.

Known errors print one line ``error: ...`` and exit with status 2
(:mod:`xmodal.errors`). Multi-host start-up (:func:`xmodal.sharding.initialize_distributed`)
runs before anything else.

Console hygiene without ``--debug``: a warning prints as one line ``warning: ...``
(no source line); the libraries' own error logs (Orbax logs every failed background
write with its traceback, through absl) and the exceptions their callbacks raise
after an event loop closed ("Exception ignored", hundreds after one failed
checkpoint write) are not shown: the failure reaches the command as an exception and
is reported in its one line.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["Args", "main", "parse_args", "run_evaluate", "run_train"]


@dataclasses.dataclass
class Args:
    """Parsed command line."""

    config: str | None = None
    workdir: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    accept_config_changes: bool = False
    break_lock: bool = False
    debug: bool = False
    help: bool = False
    checkpoint: str = "best"
    split: str | None = None


_VALUE_FLAGS = ("config", "workdir", "checkpoint", "split")
_BOOL_FLAGS = ("accept_config_changes", "break_lock", "debug", "help")


def parse_args(argv: Sequence[str], *, evaluate: bool = False) -> Args:
    """Parses ``argv`` (without the program name).

    Raises:
      ValueError: an unknown or malformed flag (the message names it).
    """
    args = Args(debug=os.environ.get("XMODAL_DEBUG", "") not in ("", "0"))
    allowed = _VALUE_FLAGS if evaluate else ("config", "workdir")
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if item in ("-h", "--help", "--helpfull"):
            args.help = True
            continue
        if not item.startswith("--"):
            raise ValueError(f"unexpected argument {item!r} (flags start with --)")
        name, eq, value = item[2:].partition("=")
        if name.startswith("config."):
            if not eq:
                if i >= len(items):
                    raise ValueError(f"--{name} needs a value (--{name}=VALUE)")
                value, i = items[i], i + 1
            args.overrides.append(f"{name[len('config.') :]}={value}")
        elif name in allowed:
            if not eq:
                if i >= len(items):
                    raise ValueError(f"--{name} needs a value")
                value, i = items[i], i + 1
            setattr(args, name, value)
        elif name in _BOOL_FLAGS:
            setattr(args, name, value.lower() not in ("false", "0", "no"))
        else:
            raise ValueError(
                f"unknown flag --{name}; known: "
                + ", ".join(f"--{n}" for n in (*allowed, *_BOOL_FLAGS))
                + ", --config.KEY=VALUE"
            )
    if args.checkpoint not in ("best", "latest"):
        raise ValueError(
            f"--checkpoint: expected best or latest, got {args.checkpoint!r}"
        )
    return args


def _usage(prog: str, evaluate: bool) -> str:
    extra = " [--checkpoint best|latest] [--split NAME]" if evaluate else ""
    return (
        f"usage: python -m {prog} --config FILE[:ARG] --workdir DIR "
        f"[--config.KEY=VALUE ...]{extra} [--accept_config_changes]"
        f"{'' if evaluate else ' [--break_lock]'} [--debug]\n\n"
        "  --config FILE[:ARG]       config file, optionally with its argument "
        "(e.g. configs/flickr.py:demo)\n"
        "  --workdir DIR             run folder (created; rerunning the same "
        "command resumes)\n"
        "  --config.KEY=VALUE        override a config field "
        "(e.g. --config.train.batch_size=32)\n"
        + (
            "  --checkpoint best|latest  which state to score (default best)\n"
            "  --split NAME              split to score (default: the test split)\n"
            if evaluate
            else ""
        )
        + "  --accept_config_changes   continue a workdir whose config changed\n"
        + (
            ""
            if evaluate
            else "  --break_lock              take over a lock left by a run on "
            "another host (check that run is gone first)\n"
        )
        + "  --debug                   show tracebacks (also XMODAL_DEBUG=1)\n"
    )


def _config_help(spec: str) -> str:
    from xmodal import config as config_lib

    path = pathlib.Path(spec.partition(":")[0])
    doc = ""
    if path.is_file():
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    config = config_lib.load_config(spec)
    flat = config_lib.flatten(config_lib.config_to_dict(config))
    fields = "\n".join(f"  --config.{k}={json.dumps(v)}" for k, v in flat.items())
    return f"{path}:\n{doc}\n\nfields (current values):\n{fields}\n"


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the command line: ``warning: MESSAGE``."""
    del category, filename, lineno, line
    print(f"warning: {message}", file=file or sys.stderr, flush=True)


@contextlib.contextmanager
def _console(debug: bool) -> Iterator[None]:
    """One-line warnings and no library tracebacks, unless ``debug`` (see the module
    docstring); everything is put back afterwards."""
    if debug:
        yield
        return
    absl = logging.getLogger("absl")
    saved = (warnings.showwarning, sys.unraisablehook, absl.level)
    warnings.showwarning = _one_line_warning
    sys.unraisablehook = lambda unraisable: None
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        warnings.showwarning, sys.unraisablehook = saved[0], saved[1]
        absl.setLevel(saved[2])


def main(
    fn: Callable[..., Any], argv: Sequence[str], *, prog: str, evaluate: bool
) -> int:
    debug = os.environ.get("XMODAL_DEBUG", "") not in ("", "0") or "--debug" in argv
    with _console(debug):
        return _main(fn, argv, prog=prog, evaluate=evaluate, debug=debug)


def _main(
    fn: Callable[..., Any],
    argv: Sequence[str],
    *,
    prog: str,
    evaluate: bool,
    debug: bool,
) -> int:
    try:
        args = parse_args(argv, evaluate=evaluate)
        if args.help:
            print(_usage(prog, evaluate))
            if args.config:
                print(_config_help(args.config))
            return 0
        if not args.config or not args.workdir:
            missing = [f"--{n}" for n in ("config", "workdir") if not getattr(args, n)]
            raise ValueError(
                f"missing {' and '.join(missing)} (python -m {prog} --help for usage)"
            )
        from absl import flags

        # grain worker processes read absl flags; nothing here parses them.
        flags.FLAGS.mark_as_parsed()
        if debug:
            # Library chatter (orbax's "waiting for previous save", backend probing)
            # is not the run's output; errors still surface as exceptions.
            logging.getLogger("absl").setLevel(logging.ERROR)
        from xmodal import config as config_lib
        from xmodal import sharding

        config = config_lib.load_config(args.config)
        config.unlock()
        config_lib.apply_overrides(config, args.overrides)
        config.lock()
        sharding.initialize_distributed()
        kwargs: dict[str, Any] = {}
        if evaluate:
            kwargs["checkpoint"] = args.checkpoint
            if args.split:
                kwargs["split"] = args.split
        else:
            kwargs["accept_config_changes"] = args.accept_config_changes
            if args.break_lock:
                kwargs["break_lock"] = True
        fn(config, args.workdir, **kwargs)
        return 0
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        from xmodal import errors

        line, code = errors.describe(exc)
        print(f"error: {line}", file=sys.stderr, flush=True)
        return code


def _exit(code: int) -> None:
    if code == 0:
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown after an error: after a failed asynchronous checkpoint
    # write, orbax's event loop prints hundreds of lines while it is torn down.
    os._exit(code)


def run_train(train_and_evaluate: Callable[..., Any], prog: str = "") -> None:
    """``python -m <method>.train``: parses flags, starts JAX, calls the driver."""
    prog = prog or pathlib.Path(sys.argv[0]).stem
    _exit(main(train_and_evaluate, sys.argv[1:], prog=prog, evaluate=False))


def run_evaluate(evaluate: Callable[..., Any], prog: str = "") -> None:
    """``python -m <method>.evaluate``: also ``--checkpoint`` and ``--split``."""
    prog = prog or pathlib.Path(sys.argv[0]).stem
    _exit(main(evaluate, sys.argv[1:], prog=prog, evaluate=True))
