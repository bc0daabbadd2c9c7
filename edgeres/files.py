"""Files: written whole or not at all, and images found by one rule.

    with atomic_path(out / "curves.png") as tmp:    # any writer that takes a path
        fig.savefig(tmp)
    write_bytes_atomic(out / "labels.txt", data)
    image_files(folder)                             # what train, predict and camera read

Nothing heavier than the preprocessing module: this module ships to devices.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from edgeres.preprocess import IMAGE_SUFFIXES


# -- written whole ---------------------------------------------------------------------------


def temp_name(path: str | Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, beside it, with the
    process id (two writers never share one) and the same suffix (writers that choose the
    format from it, such as ``savefig``, ``keras.Model.save`` and ``cv2.VideoWriter``, still work)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def is_temp_name(name: str) -> bool:
    """A name :func:`temp_name` makes (a leftover of a writer that was killed)."""
    return name.startswith(".") and ".tmp" in name


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through: renamed to ``path`` when the block ends,
    removed when it raises. A crash never leaves a half-written ``path``."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# -- read back -------------------------------------------------------------------------------


class BadFileError(ValueError):
    """A file edgeres reads that is missing, cut, corrupt or of the wrong shape; the message
    names the file, what is wrong with it and what to do."""


def read_json(path: str | Path, *, fix: str, shape: type = dict):
    """The JSON value in ``path``, which must be a ``shape`` (an object by default); anything
    else is a :class:`BadFileError` naming the file and ending with ``fix``."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadFileError(f"{path}: no such file. {fix}") from None
    except UnicodeDecodeError:
        raise BadFileError(f"{path}: is not text (UTF-8 JSON); it may be corrupt. {fix}") from None
    except OSError as e:
        raise BadFileError(f"{path}: cannot be read ({e.strerror or e}). {fix}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        what = "is empty" if not text.strip() else f"is not valid JSON ({e.msg}, line {e.lineno})"
        raise BadFileError(f"{path}: {what}; it may be cut or corrupt. {fix}") from None
    if not isinstance(value, shape):
        raise BadFileError(f"{path}: holds a JSON {_json_kind(value)}, not {_json_kind(shape())}. {fix}")
    return value


def _json_kind(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


# -- images ----------------------------------------------------------------------------------


def is_image_name(path: Path) -> bool:
    """Named like an image: a known suffix, not hidden."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: str | Path) -> list[Path]:
    """The images under ``folder``, in every subfolder, sorted by path: files named like an
    image (:data:`IMAGE_SUFFIXES`, any case), skipping hidden files and hidden folders.

    A symlink named like an image whose target is gone is listed too, so that the reader
    reports it instead of it vanishing without a word. Training, ``predict`` and ``camera``
    all walk folders with this function.
    """
    folder = Path(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        found += [here / name for name in filenames if is_image_name(here / name)]
    return sorted(p for p in found if p.is_file() or p.is_symlink())
