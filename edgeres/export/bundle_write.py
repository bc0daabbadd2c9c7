"""Writing a bundle folder whole or not at all, and what ``--force`` may replace.

A bundle is built in ``.NAME.partial-PID`` beside ``out`` and renamed into place when whole
(:func:`replace_dir`); leftovers of killed exports are removed (:func:`clean_stale_partials`).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeres.files import write_bytes_atomic
from edgeres.outputs import (BUNDLE_ENTRIES, Kind, OutputExistsError, check_output,  # noqa: F401
                             clean_stale_partials, replace_dir)
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
            version=meta["versions"].get("edgeres", ""), extra_json=extra,
            score_threshold=(meta.get("uncertain") or {}).get("threshold"))  # the uncertain band (export/band.py)
        write_bytes_atomic(tmp / info["file"], blob)
        sizes[fmt] = len(blob)
    return sizes


def check_replaceable(out: Path, run_dir: Path, *, force: bool) -> None:
    """Refuse to touch ``out`` unless it is absent, or ``force`` and it is an edgeres bundle only
    (:func:`edgeres.outputs.check_output`: ``edgeres.json`` and nothing but the files an export
    or an evaluation report writes). ``--force`` once deleted whatever ``--out`` named (the
    training run itself, a parent folder of bundles)."""
    out, run_dir = Path(out), Path(run_dir)
    if out.exists() and not out.is_symlink():
        resolved, run = out.resolve(), run_dir.resolve()
        if resolved == run or resolved in run.parents:
            raise OutputExistsError(f"--out {out} is the training run {run_dir} or a folder above it; an export "
                                    f"never replaces it. Choose another --out, e.g. export/{run_dir.name}.")
    check_output(out, Kind.BUNDLE, force=force, instead=f"export/{run_dir.name}")


def _replace_dir(tmp: Path, out: Path, *, force: bool) -> None:
    replace_dir(tmp, out, replace=force, writer="export")
