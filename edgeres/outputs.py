"""What edgeres may write where: the one rule every writer follows.

    target = check_output(out, Kind.MANIFEST, force=force)    # before any work starts
    with written_file(target, replace=force) as tmp:           # whole or not at all
        tmp.write_bytes(text)

The rule: a target that does not exist is written (its folder must be writable, and no part of
its path may be a file). One that exists is refused unless ``--force``, and ``--force`` replaces
only an artifact edgeres itself wrote, of the kind being written: a bundle (``edgeres.json`` and
only the files an export writes), a calibration manifest (its header line), an evaluation report
folder, a recording or a certificate (a mark edgeres puts in the file). Anything else (the
trained model, ``config.json``, a photo, a folder of other things, a link) is never replaced: the
message names it and what to do instead, never a ``--force`` that would then be refused.
An empty folder holds nothing to lose: a folder target may take its place.

This module ships to devices (``camera --record``, ``serve`` certificates): no heavy imports.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Iterator

from edgeres.files import is_temp_name, temp_name

# -- how edgeres knows its own artifacts -----------------------------------------------------

MANIFEST_HEADER = "# edgeres calibration manifest v1"  # the first line of every manifest
# The last bytes of a recording (inside an MP4 `free` box or an AVI `JUNK` chunk, which players
# skip), and the first line of a PEM file (OpenSSL skips text before `-----BEGIN`).
RECORDING_MARK = b"edgeres: camera --record v1\n"  # even length: RIFF chunks are word-aligned
CERTIFICATE_MARK = "edgeres serve --https: self-signed, made by edgeres; delete or replace freely"

# What an export writes into a bundle, and what `edgeres evaluate --report` may add to it: the
# only entries `--force` will delete. Anything else in the folder means it is not (only) ours.
BUNDLE_ENTRIES = ("edgeres.json", "labels.txt", "calibration.txt", "FAILED", "probes.npz", "runtime_probes.bin",
                  "model_*.tflite", "layer_errors.*", "client_check.json")
# What `edgeres evaluate --report` writes: report.json beside CSVs, PNGs, clients.json, README.txt.
REPORT_SUFFIXES = (".json", ".csv", ".png", ".txt")


class Kind(Enum):
    """What a command writes. ``value``: its name in messages."""

    RUN = "training run"
    BUNDLE = "export bundle"
    MANIFEST = "calibration manifest"
    REPORT = "evaluation report"
    RECORDING = "recording"
    CERTIFICATE = "certificate"

    @property
    def folder(self) -> bool:
        return self in (Kind.RUN, Kind.BUNDLE, Kind.REPORT)

    @property
    def example(self) -> str:
        return {Kind.MANIFEST: "calibration.txt", Kind.RECORDING: "recording.mp4",
                Kind.CERTIFICATE: "cert.pem"}.get(self, self.name.lower())


class OutputError(Exception):
    """An output that cannot be written where asked; the message names it and the fix."""


class OutputExistsError(OutputError, FileExistsError):
    """The target exists and this command may not replace it (or not without ``--force``)."""


def identify(path: str | Path) -> Kind | None:
    """The kind of edgeres artifact ``path`` is, whole, or None (not ours, or holding more)."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return None
    if path.is_dir():
        if _is_run(path):
            return Kind.RUN
        if (path / "edgeres.json").is_file() and all(_is_bundle_entry(p) for p in path.iterdir()):
            return Kind.BUNDLE
        if _is_report(path):
            return Kind.REPORT
        return None
    if not path.is_file():
        return None
    head = _head(path)
    if head.startswith(MANIFEST_HEADER.encode() + b"\n"):
        return Kind.MANIFEST
    if head.startswith(CERTIFICATE_MARK.encode() + b"\n"):
        return Kind.CERTIFICATE
    if path.suffix.lower() in (".mp4", ".avi") and _tail(path, len(RECORDING_MARK)) == RECORDING_MARK:
        return Kind.RECORDING
    return None


# Files of a training run a user may point an output at by mistake, in words.
_RUN_FILES = {"model.keras": "the trained model", "last.keras": "the last checkpoint",
              "config.json": "the settings file", "state.json": "the training state",
              "history.json": "the training history", "labels.txt": "the labels"}


def describe(path: str | Path) -> str:
    """What is at ``path``, in words, for a message: 'the trained model of the training run R'."""
    path = Path(path)
    if path.is_symlink():
        return f"a symbolic link (to {os.readlink(path)})"
    kind = identify(path)
    if kind is not None:
        return f"an edgeres {kind.value}"
    parent_kind = identify(path.parent) if path.parent != path else None
    if parent_kind in (Kind.RUN, Kind.BUNDLE, Kind.REPORT):
        what = _RUN_FILES.get(path.name, f"{path.name}") if parent_kind is Kind.RUN else path.name
        return f"{what} of the {parent_kind.value} {path.parent}"
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if (path / "edgeres.json").is_file():
            foreign = sorted(p.name for p in path.iterdir() if not _is_bundle_entry(p))
            return f"an export bundle holding files an export did not write ({_few(foreign)})"
        if not entries:
            return "an empty folder"
        ours = [f"the {identify(path / e).value} {e}" for e in entries[:50] if identify(path / e) is not None]
        return f"a folder holding {_few(ours)}" if ours else f"a folder holding other things ({_few(entries)})"
    if path.is_file():
        return f"a file edgeres did not write ({path.stat().st_size} bytes)"
    return "not a regular file"


# -- the rule --------------------------------------------------------------------------------


def check_output(path: str | Path, kind: Kind, *, force: bool, option: str = "--out",
                 again: str = "Pass --force to replace it", instead: str | None = None) -> Path:
    """Refuse ``path`` as the target of ``kind`` unless it may be written: absent (in a writable
    folder, below no file), an empty folder for a folder kind, or, with ``force``, an edgeres
    artifact of this ``kind``. ``again``: how to replace an artifact of the kind when ``force``
    is not given (``train`` says ``--resume``); ``instead``: a suggestion for another target.

    Raises :class:`OutputError` (:class:`OutputExistsError` when it exists), naming ``path``."""
    path = Path(path)
    elsewhere = f"Choose another {option}" + (f" (e.g. {instead})" if instead else "")
    check_writable(path, option)
    if not path.exists() and not path.is_symlink():
        return path
    if path.is_symlink():
        raise OutputExistsError(f"{option} {path} is {describe(path)}; edgeres does not write through or replace "
                                f"links. {elsewhere}.")
    if kind.folder and path.is_dir() and not [p for p in path.iterdir() if not is_temp_name(p.name)]:
        return path
    if not kind.folder and path.is_dir():
        raise OutputExistsError(f"{option} {path} is a directory; name a {kind.value} file, "
                                f"e.g. {path / kind.example}.")
    if identify(path) is kind:
        if force:
            return path
        raise OutputExistsError(f"{option} {path} already exists (an edgeres {kind.value}). {again}, or "
                                f"{elsewhere[0].lower()}{elsewhere[1:]}.")
    raise OutputExistsError(f"{option} {path} is {describe(path)}, not an edgeres {kind.value}: edgeres "
                            f"never replaces it{', not even with --force' if force else ''}. {elsewhere}.")


def check_writable(path: str | Path, option: str = "--out") -> None:
    """``path`` can be created: no part of its folder path is a file, and the nearest folder that
    exists is writable."""
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):
        if not folder.exists() and not folder.is_symlink():
            continue
        if not folder.is_dir():
            raise OutputError(f"{option} {path} is below {folder}, which is "
                              f"{'a file' if folder.is_file() else 'not a folder'}. Choose another {option}.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path}: the folder {folder} is not writable (read-only, or not "
                              f"yours). Choose another {option}, or make {folder} writable.")
        return


def check_not_inside(path: str | Path, folder: str | Path, option: str, folder_option: str, why: str) -> None:
    """Refuse ``path`` at or below ``folder`` (``train --out`` inside ``--data``): ``why`` says what breaks."""
    inner, outer = Path(path).resolve(), Path(folder).resolve()
    if inner == outer or outer in inner.parents:
        raise OutputError(f"{option} {path} is inside {folder_option} {folder}: {why}. "
                          f"Choose an {option} outside {folder}.")


# -- writing whole ---------------------------------------------------------------------------


@contextlib.contextmanager
def written_file(path: str | Path, *, replace: bool) -> Iterator[Path]:
    """A temporary path beside ``path`` to write it through, put in place when the block ends.
    Without ``replace`` a file that appeared meanwhile is never clobbered: the name is claimed
    with ``link(2)``, which fails on an existing name."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        publish_file(tmp, path, replace=replace)
    finally:
        tmp.unlink(missing_ok=True)


def publish_file(tmp: Path, path: Path, *, replace: bool) -> None:
    """Put the finished file ``tmp`` in place as ``path``; without ``replace`` never over a file
    that appeared meanwhile."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path} was created by another program while edgeres wrote it; "
                                f"nothing was replaced. Choose another name.") from None
    except OSError as e:  # a filesystem without hard links: check, then rename
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists() or path.is_symlink():
            raise OutputExistsError(f"{path} was created by another program while edgeres wrote it; "
                                    f"nothing was replaced. Choose another name.") from None
        os.replace(tmp, path)


@contextlib.contextmanager
def written_dir(out: str | Path, *, replace: bool, writer: str = "edgeres command") -> Iterator[Path]:
    """A folder ``.NAME.partial-PID`` beside ``out`` to build it in, renamed into place when the
    block ends (:func:`replace_dir`), removed when it raises."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, out, replace=replace, writer=writer)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, out: Path, *, replace: bool, writer: str = "edgeres command") -> None:
    """Rename the finished folder ``tmp`` to ``out``; with ``replace``, the folder there goes (it
    was checked with :func:`check_output`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if replace and out.exists() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return
    # Without --force the name is claimed atomically: rename(2) fails on a non-empty directory,
    # so of two writers racing to the same folder exactly one wins and the other says so.
    if out.is_symlink() or (out.exists() and not (out.is_dir() and not any(out.iterdir()))):
        raise OutputExistsError(f"{out} was created by another {writer} while this one ran; "
                                f"nothing was replaced. Pass --force to replace it, or choose another --out.")
    try:
        tmp.rename(out)
    except OSError as e:
        raise OutputExistsError(f"{out} was created by another {writer} while this one ran; "
                                f"nothing was replaced ({e.strerror}).") from e


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID`` / ``.NAME.old-PID`` folders left by writers that were killed."""
    removed = []
    parent = Path(out).parent
    if not parent.is_dir():
        return removed
    for leftover in parent.glob(f".{Path(out).name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if not kind.endswith((".partial", ".old")) or not pid.isdigit() or not leftover.is_dir():
            continue
        if _process_alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def mark_recording(path: str | Path) -> None:
    """Append :data:`RECORDING_MARK` to a finished ``.mp4``/``.avi`` so that ``--force`` may
    replace it later: an MP4 ``free`` box or a RIFF ``JUNK`` chunk, both skipped by players."""
    path = Path(path)
    mark = RECORDING_MARK
    if path.suffix.lower() == ".avi":
        with open(path, "r+b") as f:
            head = f.read(8)
            size = f.seek(0, os.SEEK_END)
            if head[:4] != b"RIFF" or int.from_bytes(head[4:8], "little") + 8 != size or size % 2:
                return  # not the one-RIFF file we expect: leave it unmarked (never replaced)
            f.write(b"JUNK" + len(mark).to_bytes(4, "little") + mark)
            f.seek(4)
            f.write((size - 8 + 8 + len(mark)).to_bytes(4, "little"))
    else:
        with open(path, "ab") as f:
            f.write((8 + len(mark)).to_bytes(4, "big") + b"free" + mark)


def mark_pem(pem: bytes) -> bytes:
    """A PEM file's bytes with :data:`CERTIFICATE_MARK` as its first line (OpenSSL skips it)."""
    return CERTIFICATE_MARK.encode() + b"\n" + pem


def write_pem(path: str | Path, pem: bytes, *, force: bool = False, private: bool = False,
              option: str = "--cert-dir") -> Path:
    """Write a certificate or key (``serve --https``) marked as edgeres's own, whole; ``private``:
    readable by its owner only. An existing file is replaced only with ``force`` and only when
    edgeres wrote it (:func:`check_output`)."""
    path = check_output(path, Kind.CERTIFICATE, force=force, option=option)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_file(path, replace=force) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(mark_pem(pem))
    return path


# -- helpers ---------------------------------------------------------------------------------


def _is_run(path: Path) -> bool:
    if (path / "state.json").is_file():
        return True
    try:
        return "train" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _is_report(path: Path) -> bool:
    return (path / "report.json").is_file() and all(
        p.is_file() and not p.is_symlink() and p.suffix in REPORT_SUFFIXES for p in path.iterdir())


def _is_bundle_entry(path: Path) -> bool:
    if path.is_symlink():
        return False
    if path.is_dir():  # an `edgeres evaluate --report DIR` folder inside the bundle
        return _is_report(path)
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in BUNDLE_ENTRIES)


def _head(path: Path, n: int = 128) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _tail(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - n))
            return f.read()
    except OSError:
        return b""


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
