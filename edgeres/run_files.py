"""A run directory's own files: whether ``--out`` is free, what a start writes before its first
epoch, putting a folder back after a failed start, and reading a run back to resume it."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from edgeres import data as data_lib
from edgeres.config import Arch, TrainConfig, from_dict, versions, write_bytes_atomic, write_json_atomic
from edgeres.files import BadFileError, is_temp_name, read_json


class RunExistsError(FileExistsError):
    pass


class OptionError(ValueError):
    """Training options that cannot make a run; the message names them and the fix."""


class ResumeError(OptionError):
    """``--resume`` with options that contradict the run; the message says what the run was made with."""


def recorded_weights(run_dir: Path, config: TrainConfig) -> str:
    """What a resumed run started from (runs from before ``weights_used``: their ``weights``)."""
    path = run_dir / "config.json"
    saved = read_run_config(run_dir, fields=("weights",)) if path.is_file() else {}
    return saved.get("weights_used", config.weights)


# What ``export`` reads of a run's settings; ``--resume`` reads them all.
EXPORT_FIELDS = ("arch", "image_size", "seed", "val_fraction", "resize")


def read_run_config(run_dir: Path, *, fix: str | None = None, fields: tuple[str, ...] | None = None) -> dict:
    """A run's ``config.json``, checked for the shape its readers rely on: ``labels``, and the
    ``train`` settings named in ``fields`` (default: all of them, as ``--resume`` rebuilds the
    TrainConfig; ``export`` reads :data:`EXPORT_FIELDS`, and must be present). Anything else is
    one BadFileError naming the file. Settings not read are not judged: a run written by another
    edgeres version (say with ``precision: mixed_bfloat16``) still exports."""
    path = Path(run_dir) / "config.json"
    fix = fix or "Restore it from a copy, or train the run again (another --out)."
    run = read_json(path, fix=fix)
    train, labels = run.get("train"), run.get("labels")
    if not isinstance(train, dict):
        raise BadFileError(f"{path}: has no \"train\" object (the settings the run was made with). {fix}")
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)):
        raise BadFileError(f"{path}: \"labels\" must list the class names (at least 2). Received: {labels!r:.80}. {fix}")
    names = fields or tuple(f.name for f in dataclasses.fields(TrainConfig))
    missing = [n for n in ("arch", "image_size") if fields and n in names and n not in train]
    if missing:
        raise BadFileError(f"{path}: \"train\" has no {' or '.join(missing)}. {fix}")
    try:
        config = from_dict(TrainConfig, {k: v for k, v in train.items() if k in names})
    except (TypeError, ValueError) as e:
        raise BadFileError(f"{path}: \"train\" is not an edgeres training config ({e}). {fix}") from None
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        if f.name in names and not _is(value, str(f.type)):
            raise BadFileError(f"{path}: \"train\".{f.name} is {value!r:.40}, not {f.type}. {fix}")
    if config.arch not in {a.value for a in Arch}:
        raise BadFileError(f"{path}: \"train\".arch {config.arch!r:.40} is none of {', '.join(a.value for a in Arch)}. {fix}")
    if config.image_size < 32 or config.batch_size < 1 or config.epochs < 0:
        raise BadFileError(f"{path}: \"train\" has image_size {config.image_size}, batch_size {config.batch_size}, "
                           f"epochs {config.epochs}; these cannot be. {fix}")
    return run


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "None": type(None)}


def _is(value, annotation: str) -> bool:
    """``value`` fits a field annotation such as ``int | None`` (enums: from_dict made them)."""
    parts = [p.strip() for p in annotation.split("|")]
    if not all(p in _TYPES for p in parts):
        return True  # an enum, converted (or refused) by from_dict
    if isinstance(value, bool) and "bool" not in parts:
        return False
    return any(isinstance(value, _TYPES[p]) for p in parts)


def read_state(run_dir: Path) -> dict:
    """A run's ``state.json`` (epochs done, best score, history), checked."""
    path = Path(run_dir) / "state.json"
    fix = ("Delete it to restart the run from scratch in place, or restore it from a copy "
           "(history.json holds the epochs done).")
    state = read_json(path, fix=fix)
    epoch, best, history = state.get("epoch"), state.get("best_val_accuracy"), state.get("history")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        raise BadFileError(f"{path}: \"epoch\" must be the epochs done (0 or more). Received: {epoch!r:.40}. {fix}")
    if not (isinstance(best, (int, float)) and not isinstance(best, bool)):
        raise BadFileError(f"{path}: \"best_val_accuracy\" must be a number. Received: {best!r:.40}. {fix}")
    if not (isinstance(history, list) and all(isinstance(h, dict) and isinstance(h.get("epoch"), int)
                                              for h in history)):
        raise BadFileError(f"{path}: \"history\" must be a list of epochs ({{\"epoch\": N, ...}}). {fix}")
    if epoch and not (Path(run_dir) / "last.keras").is_file():
        raise BadFileError(f"{path} says {epoch} epoch(s) are done, but {Path(run_dir) / 'last.keras'} (what "
                           f"--resume continues from) is missing. Restore it, or start a new run (another --out).")
    return state


# What a start writes before its first epoch is saved; a folder holding only these (and no
# state.json) is a start that died (kill -9, power cut) and may be started over.
START_FILES = frozenset({"config.json", "labels.txt", "dataset.json", "skipped.txt"})


def check_out_is_free(run_dir: Path, log: Callable[[str], None], data: str | Path | None = None) -> None:
    """``--out`` may take a new run: absent, empty, or a start that died; writable; not inside
    ``data`` (the next scan would find a class named after the run). A run there is continued
    with ``--resume``; anything else is never replaced (:func:`edgeres.outputs.check_output`)."""
    from edgeres.outputs import Kind, OutputExistsError, check_not_inside, check_output, check_writable

    if data is not None:
        check_not_inside(run_dir, data, "--out", "--data",
                         "the next training on it would see a class named after the run folder")
    if run_dir.is_dir() and not run_dir.is_symlink():
        names = {p.name for p in run_dir.iterdir() if not is_temp_name(p.name)}
        if names and names <= START_FILES:
            check_writable(run_dir / "config.json")
            log(f"{run_dir} holds only the files of a start that never finished an epoch; starting over.")
            return
    try:
        check_output(run_dir, Kind.RUN, force=False, again="Continue it with --resume")
    except OutputExistsError as e:
        raise RunExistsError(str(e)) from None
    if run_dir.is_dir():  # empty: the run is written into it
        check_writable(run_dir / "config.json")


class Claim:
    """Remembers what a folder held before this attempt, so a failed start can put it back."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.existed = folder.exists()
        self.before = {p.name for p in folder.iterdir()} if self.existed else set()

    def undo(self) -> None:
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name not in self.before:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if not self.existed:
            with contextlib.suppress(OSError):  # only if now empty
                self.folder.rmdir()


# TrainConfig fields whose flag is not --<field-name>.
_FLAGS = {"jit_compile": "--xla/--no-xla", "freeze_backbone": "--freeze-backbone/--no-freeze-backbone"}
# Honoured on resume, never recorded as the run's: how this attempt spreads over devices.
RESUME_FREE = frozenset({"out", "strategy"})


def load_for_resume(run_dir: Path, overrides: TrainConfig, worker: int = 0,
                    given: Collection[str] = ()) -> tuple[TrainConfig, dict]:
    """The run's own config (more ``epochs`` if asked) and its state. ``given``: the fields the
    user set (command-line flags); one that contradicts the run is refused, naming what the run
    was made with. Fields not given are the run's, silently."""
    config_path, state_path = run_dir / "config.json", run_dir / "state.json"
    if not config_path.is_file():
        if worker:
            raise FileNotFoundError(
                f"Worker {worker} cannot read {config_path}: every worker resumes from the chief's run "
                f"directory. Put it on a shared filesystem, or copy it to the same path on every worker."
            )
        raise FileNotFoundError(f"Nothing to resume in {run_dir}: no config.json. Start it without --resume.")
    run = read_run_config(run_dir, fix="Start a new run with another --out (or restore the file).")
    saved = from_dict(TrainConfig, run["train"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = _check_resume_options(run_dir, run, saved, overrides, (set(given) & fields) - RESUME_FREE)
    # Only the length of the run may change on resume (to more epochs); the rest is the run's own.
    config = saved.replace(epochs=max(saved.epochs, overrides.epochs), out=str(run_dir))
    if not state_path.is_file():  # interrupted before the first epoch ended: start over
        return config, {"epoch": 0, "best_val_accuracy": -1.0, "history": []}
    return config, read_state(run_dir)


def _check_resume_options(run_dir: Path, run: dict, saved: TrainConfig, asked: TrainConfig,
                          given: set[str]) -> TrainConfig:
    clashes = []
    for name in sorted(given):
        mine, theirs = getattr(asked, name), getattr(saved, name)
        if name == "epochs":
            if mine < theirs:
                clashes.append(f"--epochs {mine} (the run has {theirs}; --resume can only add epochs)")
            continue
        if name == "data":
            recorded = run.get("data_root") or theirs
            if mine is not None and recorded and Path(mine).expanduser().resolve() == Path(recorded).expanduser().resolve():
                saved = saved.replace(data=mine)  # the same folder, as named from here
                continue
            theirs = recorded
        if name == "weights" and mine == run.get("weights_used"):  # auto became this: the same weights
            continue
        if name == "jit_compile" and theirs is None:  # left to the device: what the run used
            theirs = run.get("jit_compile")
        if name == "precision" and _value(theirs) == "auto" and isinstance(run.get("mixed_precision"), bool):
            theirs = "mixed" if run["mixed_precision"] else "float32"
            mine = theirs if _value(mine) == "auto" else mine
        if _value(mine) != _value(theirs):
            clashes.append(f"{_flag(name, mine)} (the run: {_flag(name, theirs) if name in _FLAGS else _value(theirs)})")
    if clashes:
        raise ResumeError(f"--resume {run_dir}: {'; '.join(clashes)}. A resumed run keeps the settings it was "
                          f"made with ({run_dir}/config.json): drop these options, or start a new run with "
                          f"another --out.")
    return saved


def _flag(name: str, value) -> str:
    if name in _FLAGS:  # a --x/--no-x pair: the one given
        yes, no = _FLAGS[name].split("/")
        return yes if value else no if value is not None else f"neither {yes} nor {no}"
    return f"--{name.replace('_', '-')} {_value(value)}"


def _value(v):
    v = getattr(v, "value", v)  # enums
    return round(v, 12) if isinstance(v, float) else v


def write_run_files(run_dir, config, dataset, root, device, mixed, jit, weights_used, extra=None) -> None:
    """What a start writes before its first epoch (:data:`START_FILES`): labels, skipped files,
    the dataset's counts and hashes, and config.json (every setting, device, versions; ``extra``:
    more top-level keys, e.g. ``"qat"``)."""
    write_bytes_atomic(run_dir / "labels.txt", "".join(c + "\n" for c in dataset.classes).encode())
    data_lib.write_skipped(dataset, run_dir / "skipped.txt")
    counts = {s.name: dict(zip(dataset.classes, np.bincount(s.labels, minlength=len(dataset.classes)).tolist()))
              for s in (dataset.train, dataset.validation)}
    write_json_atomic(run_dir / "dataset.json", {
        "root": str(Path(root).resolve()), "layout": dataset.layout, "classes": dataset.classes,
        "counts": counts, "sha256": {"train": dataset.train.digest, "validation": dataset.validation.digest},
        "skipped": len(dataset.skipped),
    })
    write_json_atomic(run_dir / "config.json", {
        "train": config, "weights_used": weights_used, "labels": dataset.classes,
        "data_root": str(Path(root).resolve()),
        "dataset_sha256": {"train": dataset.train.digest, "validation": dataset.validation.digest},
        "device": device, "mixed_precision": mixed, "jit_compile": jit, "versions": versions(), **(extra or {}),
    })
