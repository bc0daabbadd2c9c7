"""A run directory's own files: whether ``--out`` is free, what a start writes before its first
epoch, putting a folder back after a failed start, and reading a run back to resume it."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from edgeres import data as data_lib
from edgeres.config import TrainConfig, from_dict, versions, write_bytes_atomic, write_json_atomic
from edgeres.files import is_temp_name


class RunExistsError(FileExistsError):
    pass


def recorded_weights(run_dir: Path, config: TrainConfig) -> str:
    """What a resumed run started from (runs from before ``weights_used``: their ``weights``)."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved.get("weights_used", config.weights)


# What a start writes before its first epoch is saved; a folder holding only these (and no
# state.json) is a start that died (kill -9, power cut) and may be started over.
START_FILES = frozenset({"config.json", "labels.txt", "dataset.json", "skipped.txt"})


def check_out_is_free(run_dir: Path, log: Callable[[str], None]) -> None:
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunExistsError(f"--out {run_dir} is a file, not a run directory. Choose another --out.")
    names = {p.name for p in run_dir.iterdir() if not is_temp_name(p.name)}
    if not names:
        return
    if names <= START_FILES:
        log(f"{run_dir} holds only the files of a start that never finished an epoch; starting over.")
        return
    raise RunExistsError(
        f"Run directory {run_dir} already exists. Continue it with --resume, or choose another --out."
    )


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


def load_for_resume(run_dir: Path, overrides: TrainConfig, worker: int = 0) -> tuple[TrainConfig, dict]:
    config_path, state_path = run_dir / "config.json", run_dir / "state.json"
    if not config_path.is_file():
        if worker:
            raise FileNotFoundError(
                f"Worker {worker} cannot read {config_path}: every worker resumes from the chief's run "
                f"directory. Put it on a shared filesystem, or copy it to the same path on every worker."
            )
        raise FileNotFoundError(f"Nothing to resume in {run_dir}: no config.json. Start it without --resume.")
    saved = from_dict(TrainConfig, json.loads(config_path.read_text())["train"])
    # Only the length of the run may change on resume (to more epochs); the rest is the run's own.
    config = saved.replace(epochs=max(saved.epochs, overrides.epochs), out=str(run_dir))
    if not state_path.is_file():  # interrupted before the first epoch ended: start over
        return config, {"epoch": 0, "best_val_accuracy": -1.0, "history": []}
    return config, json.loads(state_path.read_text())


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
