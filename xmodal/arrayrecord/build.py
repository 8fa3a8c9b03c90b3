"""Building TFDS ArrayRecord datasets from local inputs: the base builder and the step.

The method packages turn their inputs (``cdds_jax``'s feature store, ``decalign_jax``'s
MMSA pickles) into TFDS datasets written as ArrayRecord files
(``file_format="array_record"``), one record per row, read back with the columns of
:mod:`xmodal.arrayrecord.columns`. What the two builders share lives here:

* :class:`RowBuilder` - a ``tfds.core.GeneratorBasedBuilder`` for a local input (nothing
  is downloaded): the input is given to the constructor (TFDS fixes a dataset's feature
  spec when the builder is constructed), records are kept in row order
  (``disable_shuffling``; record ``i`` holds ``index = i``), and the metadata records
  the layout and the input's identity. Without an input the builder is read-only (TFDS
  restores the feature spec from the prepared folder).
* :func:`agreed_value` - every converted split must agree on what the feature spec is
  made of (shapes, dtypes, optional fields): one clear error otherwise.
* :func:`prepare` - the shared build step: refuse to mix two inputs in one TFDS
  ``data_dir``, reuse an identical earlier conversion, overwrite on request, and write
  the ArrayRecord files with :data:`WRITER_OPTIONS` (uncompressed by default).
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from etils import epath

from xmodal import files
from xmodal.arrayrecord.columns import open_builder

__all__ = ["WRITER_OPTIONS", "RowBuilder", "agreed_value", "prepare"]

logger = logging.getLogger(__name__)

#: ArrayRecord writer options for :func:`prepare`: one record per chunk (random access,
#: as TFDS writes) and NO compression. TFDS's default compression saved ~8% on float16
#: features but made reading a 36 x 2048 float16 record ~5x slower (430 us vs 85 us,
#: decompression-bound); features are read every epoch, so speed wins. Readers handle
#: any options (they are stored in the file).
WRITER_OPTIONS = "group_size:1,uncompressed"


def agreed_value(
    where: os.PathLike | str, key: str, values: Mapping[str, Any], hint: str
) -> Any:
    """The one value every split has for ``key`` (one TFDS feature spec for all splits).

    Args:
      where: the input, for the message.
      key: what is compared (a file, field or property name).
      values: split name -> its value (compared by ``repr``).
      hint: what to do instead, appended to the message.

    Raises:
      ValueError: ``where [key]: expected every converted split to agree (one TFDS
        feature spec), got {split: value}; hint``.
    """
    if len({repr(v) for v in values.values()}) != 1:
        raise ValueError(
            f"{where} [{key}]: expected every converted split to agree (one TFDS "
            f"feature spec), got {dict(values)}; {hint}"
        )
    return next(iter(values.values()))


class RowBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder converting one local input into records in row order.

    Subclasses set ``VERSION``, ``RELEASE_NOTES``, ``BUILDER_CONFIGS``,
    ``MANUAL_DOWNLOAD_INSTRUCTIONS`` and :attr:`INPUT_ARG`, keep their input before
    calling ``super().__init__`` and implement :attr:`input_path`, :meth:`split_names`,
    :meth:`source_identity`, :meth:`feature_spec`, :meth:`description`,
    :meth:`split_metadata` and ``_generate_examples(split)``.

    Args:
      input_state: the subclass's own constructor arguments (TFDS re-creates a builder
        from its constructor arguments when it is unpickled).
      **kwargs: ``data_dir``, ``config``, ``file_format`` ... for
        ``GeneratorBasedBuilder``.
    """

    #: The constructor argument that names the input (for error messages).
    INPUT_ARG: ClassVar[str] = "manual_dir"

    def __init__(self, *, input_state: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._original_state.update(input_state)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # The subclass's own file. TFDS's lookup of a packaged builder evaluates
        # `importlib_resources.abc.Traversable`, a package we do not install.
        return epath.Path(inspect.getfile(cls))

    # ----------------------------------------------------------------- to implement

    @property
    @abc.abstractmethod
    def input_path(self) -> pathlib.Path | None:
        """The input converted (None: a read-only builder)."""
        raise NotImplementedError

    @property
    def manual_dir(self) -> pathlib.Path | None:
        """The input folder handed to TFDS's ``DownloadConfig`` (None: a file input)."""
        return None

    @abc.abstractmethod
    def split_names(self) -> Sequence[str]:
        """The splits to write, in order."""
        raise NotImplementedError

    @abc.abstractmethod
    def source_identity(self) -> Mapping[str, Any]:
        """What the conversion is made from (recorded; :func:`prepare` compares it)."""
        raise NotImplementedError

    @abc.abstractmethod
    def feature_spec(self) -> tfds.features.FeaturesDict:
        """The record features (the same for every split)."""
        raise NotImplementedError

    @abc.abstractmethod
    def description(self) -> str:
        """The dataset description: what the input was and what was done to it."""
        raise NotImplementedError

    @abc.abstractmethod
    def split_metadata(self) -> Mapping[str, Any]:
        """Metadata entries beside ``layout`` and ``source`` (made JSON-able)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared

    def _info(self) -> tfds.core.DatasetInfo:
        if self.input_path is None:
            # Read-only: TFDS restores the features from the prepared folder.
            return tfds.core.DatasetInfo(
                builder=self, disable_shuffling=True, metadata=tfds.core.MetadataDict()
            )
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.description(),
            features=self.feature_spec(),
            disable_shuffling=True,  # row order = record order (keys are rows)
            metadata=tfds.core.MetadataDict(),
        )

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        if self.input_path is None:
            raise ValueError(
                f"{self.INPUT_ARG}: the input must be passed when constructing "
                f"{type(self).__name__}({self.INPUT_ARG}=...) (TFDS fixes the feature "
                "spec at construction)"
            )
        given, own = download_config.manual_dir, self.manual_dir
        if (
            given is not None
            and own is not None
            and pathlib.Path(given).resolve() != own.resolve()
        ):
            raise ValueError(
                f"download_config.manual_dir: expected the constructor's "
                f"{self.INPUT_ARG} {own}, got {given}"
            )
        super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        del dl_manager  # nothing is downloaded
        md = self.info.metadata
        md["layout"] = {"builder": type(self).__module__, "version": str(self.VERSION)}
        md["source"] = files.jsonable(self.source_identity())
        for key, value in self.split_metadata().items():
            md[key] = files.jsonable(value)
        return {name: self._generate_examples(name) for name in self.split_names()}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(files.jsonable(a), sort_keys=True) == json.dumps(
        files.jsonable(b), sort_keys=True
    )


def _brief(source: Mapping[str, Any]) -> str:
    """A one-line summary of a source identity (nested mappings by their keys)."""
    parts = [
        f"{k}={sorted(v) if isinstance(v, Mapping) else v!r}"
        for k, v in sorted(source.items())
    ]
    return "{" + ", ".join(parts) + "}"


@contextlib.contextmanager
def _writer_options(options: str) -> Iterator[None]:
    """Makes TFDS write ArrayRecord files with ``options`` (restored on exit).

    TFDS hard-codes ``"group_size:1"`` in ``ArrayRecordFileAdapter.write_examples``;
    this swaps that one classmethod for the duration of a build.
    """
    from array_record.python import array_record_module
    from tensorflow_datasets.core import file_adapters

    adapter = file_adapters.ArrayRecordFileAdapter
    original = adapter.__dict__["write_examples"]

    def write_examples(cls, path, iterator):
        writer = array_record_module.ArrayRecordWriter(os.fspath(path), options)
        try:
            for _, serialized in iterator:
                writer.write(serialized)
        finally:
            writer.close()
        return None

    adapter.write_examples = classmethod(write_examples)
    try:
        yield
    finally:
        adapter.write_examples = original


def prepare(
    make_builder: Callable[[], RowBuilder],
    path: str | os.PathLike,
    *,
    source: Mapping[str, Any],
    overwrite: bool = False,
    writer_options: str = WRITER_OPTIONS,
) -> pathlib.Path:
    """Builds one TFDS dataset as ArrayRecord files, or reuses an identical one.

    Args:
      make_builder: ``() -> RowBuilder``; called only when building (the
        builders read their input when constructed).
      path: the dataset folder the builder writes (``data_dir/name/config/version``).
      source: what the dataset is made from (input path, settings), as recorded in its
        metadata under ``"source"`` (the builder records it).
      overwrite: delete an existing dataset at ``path`` first.
      writer_options: ArrayRecord writer options (recorded in the metadata under
        ``"writer_options"``), e.g. ``"group_size:1,zstd:3"`` to trade read speed for
        disk.

    Returns:
      ``path``.

    Raises:
      FileExistsError: ``path`` holds a dataset made from a different ``source`` (or
        with other ``writer_options``) and ``overwrite`` is False (one TFDS
        ``data_dir`` holds one input per builder config).
    """
    path = pathlib.Path(path)
    wanted = {"source": dict(source), "writer_options": writer_options}
    if (path / "dataset_info.json").is_file():
        if overwrite:
            logger.info("Deleting %s (overwrite)", path)
            shutil.rmtree(path)
        else:
            md = open_builder(path).info.metadata or {}
            old = {
                "source": md.get("source") or {},
                "writer_options": md.get("writer_options"),
            }
            if _same(old, wanted):
                logger.info("Reusing %s: already built from the same input", path)
                return path
            differ = sorted(
                k
                for k in set(old["source"]) | set(source)
                if not _same(old["source"].get(k), source.get(k))
            )
            if old["writer_options"] != writer_options:
                differ.append("writer_options")
            raise FileExistsError(
                f"{path}: already holds a dataset built from {_brief(old['source'])}; "
                f"the new input {_brief(source)} differs in {differ}; pass "
                "overwrite=True (--overwrite) or another output folder"
            )
    builder = make_builder()
    if pathlib.Path(os.fspath(builder.data_dir)) != path:
        raise AssertionError(f"builder writes {builder.data_dir}, expected {path}")
    builder.info.metadata["writer_options"] = writer_options
    # Nothing is downloaded; keep TFDS's empty downloads/ folder out of data_dir.
    with (
        tempfile.TemporaryDirectory(prefix="tfds-downloads-") as tmp,
        _writer_options(writer_options),
    ):
        builder.download_and_prepare(
            file_format="array_record",
            download_dir=tmp,
            download_config=tfds.download.DownloadConfig(
                manual_dir=getattr(builder, "manual_dir", None)
            ),
        )
    return path
