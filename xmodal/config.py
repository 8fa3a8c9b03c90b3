"""Config files, command-line overrides and the resolved config written with a run.

A config file is a Python module with ``get_config(arg: str | None) -> ConfigDict``; a
config spec is ``path/to/file.py`` or ``path/to/file.py:arg`` (``arg`` is passed to
``get_config``), the big_vision / ml-collections convention. Command-line overrides
(``--config.train.batch_size=128``) go through ``ml_collections.config_flags`` in the
entry points; :func:`apply_overrides` is the same thing for code and tests.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

__all__ = [
    "apply_overrides",
    "config_to_dict",
    "flatten",
    "load_config",
]


def load_config(spec: str, *, lock: bool = True) -> ml_collections.ConfigDict:
    """Loads ``path.py[:arg]`` and returns ``get_config(arg)``.

    Args:
      spec: a config file path, optionally followed by ``:arg``.
      lock: lock the config so that assigning an unknown key fails (typos fail loudly).

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the module has no ``get_config``.
    """
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path_str!r} not found (spec {spec!r})")
    if (path.parent / "__init__.py").is_file():
        # A config in a package folder imports its siblings (configs/mosi.py:
        # `from configs import decalign_base`) from the folder above, also when the
        # command runs elsewhere: no installed package provides them.
        root = str(path.resolve().parent.parent)
        if root not in sys.path:
            sys.path.insert(0, root)
    module_name = f"_xmodal_config_{path.stem}_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path_str!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    if lock:
        config.lock()
    return config


def _parse_value(text: str, current: Any) -> Any:
    """Parses ``text`` to the type of the current value (ml-collections style)."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a bool, got {text!r}")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str) or current is None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        return value if current is None else str(value)
    if isinstance(current, tuple | list):
        value = ast.literal_eval(text if "(" in text or "[" in text else f"({text},)")
        return type(current)(value)
    return ast.literal_eval(text)


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[str]
) -> ml_collections.ConfigDict:
    """Applies ``["a.b=value", ...]`` to ``config`` in place and returns it.

    Values are parsed to the type of the field they replace; unknown keys raise
    ``KeyError`` naming the key, unparsable values ``ValueError`` naming the key, its
    type and the value.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.strip().split(".")
        node = config
        for name in parents:
            if name not in node:
                raise KeyError(f"override {item!r}: config has no field {key!r}")
            node = node[name]
        if leaf not in node:
            raise KeyError(f"override {item!r}: config has no field {key!r}")
        current = node[leaf]
        try:
            value = _parse_value(text, current)
        except (ValueError, SyntaxError, TypeError):
            kind = "a value" if current is None else type(current).__name__
            raise ValueError(
                f"override {item!r}: config field {key!r} takes {kind} (now "
                f"{current!r}), got {text!r}"
            ) from None
        with node.ignore_type():
            node[leaf] = value
    return config


def config_to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict:
    """A JSON-serialisable plain dict of the (resolved) config."""

    def convert(value: Any) -> Any:
        if isinstance(value, ml_collections.ConfigDict | Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, int | float | str | bool) or value is None:
            return value
        return repr(value)

    return convert(config)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` for a nested mapping (a config as a dict)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}
