"""Validated schemas of the JSON records memeguard keeps on disk, and one way to read them.

Every stage reads folders another stage (or an older version, or a user's editor) wrote, so a record is
parsed once, at the edge, through a pydantic schema: a corrupt file or a wrong type becomes one line that
names the file (a :class:`RecordError`), never a JSONDecodeError or AttributeError traceback deep inside
a stage. Schemas accept extra keys (records written by newer versions stay readable) and the fields
older versions wrote (an old ``DONE`` without ``outputs``).

The module sits beside ``names.py`` and imports nothing above ``io``, so every stage can use it:
``read_record(path, Schema)`` for any schema, including ``dict[str, Any]`` for a free-form JSON object.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from memeguard.errors import MemeguardError
from memeguard.names import (
    CLEANING_REPORT_FILE,
    ENSEMBLE_WEIGHTS_FILE,
    FAMILIES_FILE,
    IMAGE_DIR,
    MODEL_CONFIG_FILE,
    MODEL_WEIGHTS_FILE,
    OFFICIAL_SPLITS,
    PRETRAIN_CONFIG_FILE,
    REPORT_FILE,
    STAGES_DIR,
    STORE_FEATURES_FILE,
    STORE_INDEX_FILE,
    STORE_LAYOUT_FILE,
    SYNTH_META_FILE,
    TIMINGS_FILE,
    TRAIN_CONFIG_FILE,
    split_file,
)

Record = TypeVar("Record")
# Records are small; a bigger file is not one of ours (and is not read into memory to find out).
MAX_RECORD_BYTES = 64 * 1024 * 1024
HASH_CHUNK_BYTES = 1 << 20


class RecordError(MemeguardError):
    """An on-disk record (DONE, meta.json, layout.json, a saved config ...) that is corrupt or mistyped."""


class Schema(BaseModel):
    """Base of the record schemas: unknown keys are kept (newer writers), types are checked strictly
    enough that ``"lots"`` is not a count."""

    model_config = ConfigDict(extra="allow", frozen=True)


def _first_problem(exc: ValidationError) -> str:
    """pydantic's first error as ``key.path: message`` (one line; the count when there are more)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def load_json(path: str | os.PathLike[str], error: type[MemeguardError] = RecordError) -> Any:
    """A JSON file's value; a missing, oversized, undecodable or malformed file raises ``error``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise error(f"{path}: {size} bytes is too large for a memeguard record")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None


def validate_record(
    value: Any, schema: type[Record], path: str | os.PathLike[str], error: type[MemeguardError] = RecordError
) -> Record:
    """An already loaded JSON value validated as ``schema``; a problem is one ``error`` line naming
    ``path``."""
    try:
        return TypeAdapter(schema).validate_python(value)
    except ValidationError as exc:
        name = schema.__name__ if isinstance(schema, type) and issubclass(schema, BaseModel) else "contents"
        raise error(f"{path}: invalid {name}: {_first_problem(exc)}") from None


def read_record(
    path: str | os.PathLike[str], schema: type[Record], error: type[MemeguardError] = RecordError
) -> Record:
    """``path`` parsed and validated as ``schema`` (a pydantic model or any type pydantic validates,
    e.g. ``dict[str, Any]``); every problem is one ``error`` line naming the file."""
    return validate_record(load_json(path, error), schema, path, error)


# -- run dir: DONE ---------------------------------------------------------------------------------------


class OutputRecord(Schema):
    """One output of a finished run, as it was when ``DONE`` was written."""

    size: StrictInt = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DoneRecord(Schema):
    """A run dir's (or a pipeline stage's) ``DONE``. ``outputs`` (path relative to the folder -> record)
    exists since runs verify their outputs; older ``DONE`` files have only the other keys."""

    finished: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    updates: StrictInt | None = None
    outputs: dict[str, OutputRecord] | None = None
    seconds: float | None = None  # a pipeline stage's running time, added by the runner


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def output_records(folder: Path, relative_paths: list[str]) -> dict[str, OutputRecord]:
    """Size and sha256 of each output, to record in ``DONE``."""
    return {
        rel: OutputRecord(size=(folder / rel).stat().st_size, sha256=file_sha256(folder / rel))
        for rel in relative_paths
    }


def output_problems(folder: Path, expected: dict[str, OutputRecord | None]) -> list[str]:
    """What is wrong with a finished folder's outputs: ``missing X``, ``X changed (...)``. ``None`` as a
    record (an old ``DONE``) checks only that the file exists."""
    problems = []
    for rel, record in expected.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif record is not None and path.stat().st_size != record.size:
            problems.append(f"{rel} has {path.stat().st_size} bytes, DONE recorded {record.size}")
        elif record is not None and file_sha256(path) != record.sha256:
            problems.append(f"{rel} changed since the run finished (sha256 differs from DONE)")
    return problems


# -- feature store: layout.json / meta.json ------------------------------------------------------------


class StoreLayout(Schema):
    """``layout.json``: what every record of a store holds (written at the first record)."""

    format: str
    version: StrictInt
    feature_dim: StrictInt = Field(gt=0)
    dtype: str
    fields: list[str] = Field(default_factory=list)
    extras: dict[str, StrictInt] = Field(default_factory=dict)


class StoreInfo(StoreLayout):
    """``meta.json``'s ``store`` section: the layout plus the counts and file sizes at finalisation."""

    num_images: StrictInt = Field(ge=0)
    num_rows: StrictInt = Field(ge=0)
    files: dict[str, StrictInt]


class StoreMeta(Schema):
    """``meta.json``: the user's meta (extractor, its settings ...) and the ``store`` section."""

    store: StoreInfo


# -- which kind of memeguard folder is this? -------------------------------------------------------------

# kind -> files (or folders) any one of which marks a folder as that kind.
FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "feature store": (STORE_LAYOUT_FILE, STORE_INDEX_FILE, STORE_FEATURES_FILE),
    "dataset folder": (IMAGE_DIR, CLEANING_REPORT_FILE, SYNTH_META_FILE, *map(split_file, OFFICIAL_SPLITS)),
    "pipeline output": (STAGES_DIR, TIMINGS_FILE, REPORT_FILE),
    "ensemble output": (ENSEMBLE_WEIGHTS_FILE, FAMILIES_FILE),
    "fine-tuning run dir": (TRAIN_CONFIG_FILE,),
    "pretraining run dir": (PRETRAIN_CONFIG_FILE,),
}


def folder_kinds(folder: Path) -> dict[str, str]:
    """The kinds of memeguard folder ``folder`` looks like -> the file that says so (empty: none)."""
    found = {}
    for kind, markers in FOLDER_MARKERS.items():
        present = [name for name in markers if (folder / name).exists()]
        if present:
            found[kind] = present[0]
    if (folder / MODEL_CONFIG_FILE).is_file() and (folder / MODEL_WEIGHTS_FILE).is_file():
        found["model dir"] = MODEL_WEIGHTS_FILE
    return found
