"""Writing a bundle folder whole or not at all, and what ``--force`` may replace.

A bundle is built in ``.NAME.partial-PID`` beside ``out`` and renamed into place when whole
(:func:`replace_dir`); leftovers of killed exports are removed (:func:`clean_stale_partials`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from edgeres.files import write_bytes_atomic
from edgeres.metadata import embed_metadata


def _write_models(tmp: Path, files: dict, meta: dict, labels, size: int) -> dict[str, int]:
    """Each model of ``files`` (format -> ``{"file", "raw"}``) into ``tmp`` with ``meta`` embedded
    as TFLite Model Metadata; returns the size in bytes of each file as written."""
    sizes = {}
    extra = json.dumps({k: v for k, v in meta.items() if k != "run"}, default=str)
    for fmt, info in files.items():
        blob = embed_metadata(
            info["raw"], labels=list(labels), name=f"{meta['name']} ({fmt})",
            description=f"edgeres {meta['arch']} image classifier, {fmt}. Input: RGB pixels "
                        f"{size}x{size}, 0..255, normalisation inside the graph. Resize: "
                        f"{meta['input']['resize_rule']}.",
            input_size=size, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
            version=meta["versions"].get("edgeres", ""), extra_json=extra)
        write_bytes_atomic(tmp / info["file"], blob)
        sizes[fmt] = len(blob)
    return sizes


# What an export writes into a bundle, and what `edgeres evaluate --report` may add to it: the
# only entries `--force` will delete. Anything else in the folder means it is not (only) ours.
BUNDLE_ENTRIES = ("edgeres.json", "labels.txt", "calibration.txt", "FAILED", "probes.npz", "runtime_probes.bin",
                  "model_*.tflite", "layer_errors.*", "client_check.json")


def check_replaceable(out: Path, run_dir: Path, *, force: bool) -> None:
    """Refuse to touch ``out`` unless it is absent, or ``force`` and it is an edgeres bundle only.

    ``--force`` once deleted whatever ``--out`` named (the training run itself, a parent folder of
    bundles): now it replaces a directory only when it holds ``edgeres.json`` and nothing but the
    files an export or an evaluation report writes.
    """
    out, run_dir = Path(out), Path(run_dir)
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise FileExistsError(f"Bundle {out} already exists. Pass --force to replace it, or choose another --out.")
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or resolved in run.parents:
        raise FileExistsError(f"--out {out} is the training run {run_dir} or a folder above it; "
                              f"--force replaces only an export bundle. Choose another --out.")
    if not out.is_dir() or not (out / "edgeres.json").is_file():
        raise FileExistsError(f"--out {out} exists and is not an edgeres bundle (no edgeres.json); "
                              f"--force replaces only bundles. Choose another --out or remove it yourself.")
    if (out / "model.keras").exists() or (out / "config.json").exists():
        raise FileExistsError(f"--out {out} holds a training run (model.keras/config.json); "
                              f"--force replaces only an export bundle. Choose another --out.")
    foreign = sorted(p.name for p in out.iterdir() if not _is_bundle_entry(p))
    if foreign:
        raise FileExistsError(f"--out {out} holds files an export did not write ({', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}); --force will not delete them. "
                              f"Move them out or choose another --out.")


def _is_bundle_entry(path: Path) -> bool:
    if path.is_symlink():
        return False
    if path.is_dir():  # an `edgeres evaluate --report DIR` folder inside the bundle
        return (path / "report.json").is_file() and all(
            p.is_file() and not p.is_symlink() and p.suffix in (".json", ".csv", ".png") for p in path.iterdir())
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in BUNDLE_ENTRIES)


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID`` / ``.NAME.old-PID`` folders left by exports that were killed."""
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


def _replace_dir(tmp: Path, out: Path, *, force: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if force and out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return
    # Without --force the name is claimed atomically: rename(2) fails on a non-empty directory,
    # so of two exports racing to the same --out exactly one wins and the other says so.
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"Bundle {out} was created by another export while this one ran; "
                              f"nothing was replaced. Pass --force to replace it, or choose another --out.")
    try:
        tmp.rename(out)
    except OSError as e:
        raise FileExistsError(f"Bundle {out} was created by another export while this one ran; "
                              f"nothing was replaced ({e.strerror}).") from e
