"""Calibration manifests: which images set the int8 ranges, chosen how, with content hashes.

A manifest is a text file ``sha256sum -c`` can check from the dataset root:

    # edgeres calibration manifest v1
    # root: /data/cats_and_dogs_filtered
    # split: train
    # seed: 0
    # requested: 300
    # classes: cats=150 dogs=150
    3b5c...e1  train/cats/cat.17.jpg

Images are drawn stratified per class from the train split, never augmented: they go through
:func:`edgeres.preprocess.load_pixels`, the same path as evaluation and the runtime.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgeres.data import DataError, Dataset
from edgeres.outputs import MANIFEST_HEADER as HEADER
from edgeres.outputs import Kind, check_output, written_file
# Ultralytics' rule of thumb: fewer than ~300 images gives noisy activation ranges.
RECOMMENDED_SIZE = 300


class CalibrationError(ValueError):
    """A calibration set that cannot be used; names the files and the fix."""


@dataclass(frozen=True)
class CalibrationSet:
    root: Path
    entries: tuple[tuple[str, str], ...]  # (relative posix path, sha256)
    seed: int
    requested: int
    split: str = "train"
    # How the images become model input (edgeres.preprocess.Resize value): the run's rule, set by
    # export. Not part of the manifest: the same images serve runs with any resize.
    resize: str = "bilinear"

    @property
    def paths(self) -> list[Path]:
        return [self.root / rel for rel, _ in self.entries]

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(Path(rel).parent.name for rel, _ in self.entries).items()))

    def text(self) -> str:
        counts = " ".join(f"{c}={n}" for c, n in self.class_counts().items())
        head = [HEADER, f"# root: {self.root}", f"# split: {self.split}", f"# seed: {self.seed}",
                f"# requested: {self.requested}", f"# classes: {counts}"]
        return "\n".join(head + [f"{digest}  {rel}" for rel, digest in self.entries]) + "\n"

    @property
    def sha256(self) -> str:
        """Hash of the manifest's image list (paths and contents), independent of its root."""
        body = "".join(f"{digest}  {rel}\n" for rel, digest in self.entries)
        return hashlib.sha256(body.encode()).hexdigest()

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the manifest to ``path``, whole. An existing file is replaced only with ``force``
        and only when it is itself a manifest (:func:`edgeres.outputs.check_output`)."""
        path = check_output(path, Kind.MANIFEST, force=force, instead="calibration/NAME.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_file(path, replace=force) as tmp:
            tmp.write_bytes(self.text().encode())
        return path


def draw(dataset: Dataset, size: int = RECOMMENDED_SIZE, *, seed: int = 0) -> CalibrationSet:
    """Draw ``size`` images from the train split, the same number per class where possible."""
    if size < 1:
        raise CalibrationError(f"Calibration size must be at least 1. Received: size={size}")
    per_class = {c: [s.path for s in dataset.train.samples if s.label == i] for i, c in enumerate(dataset.classes)}
    usable = {c: p for c, p in per_class.items() if p}
    if len(usable) < 2:
        raise CalibrationError(
            f"Calibration needs readable images of at least 2 classes in {dataset.root}; found "
            f"{', '.join(f'{c}: {len(p)}' for c, p in per_class.items()) or 'no classes'}."
        )
    rng = random.Random(seed)
    quota = _split_quota(size, {c: len(p) for c, p in usable.items()})
    chosen = []
    for c, paths in usable.items():
        chosen += rng.sample(paths, quota[c])
    if len(chosen) < size:
        warnings.warn(f"Asked for {size} calibration images; the train split has only {len(chosen)} "
                      f"readable ones. Using {len(chosen)}.", stacklevel=2)
    elif len(chosen) < RECOMMENDED_SIZE:
        warnings.warn(f"{len(chosen)} calibration images: int8 ranges may be noisy; "
                      f"~{RECOMMENDED_SIZE} is recommended.", stacklevel=2)
    entries = []
    for p in sorted(chosen):
        rel = p.relative_to(dataset.root).as_posix()
        entries.append((rel, dataset.sha256.get(rel) or _sha256(p)))
    return CalibrationSet(dataset.root, tuple(entries), seed, size)


def _split_quota(size: int, available: dict[str, int]) -> dict[str, int]:
    """Equal shares per class; a class that runs short hands its share to the others."""
    quota = {c: 0 for c in available}
    remaining, open_classes = size, sorted(available)
    while remaining > 0 and open_classes:
        share, extra = divmod(remaining, len(open_classes))
        for i, c in enumerate(list(open_classes)):
            take = min(share + (1 if i < extra else 0), available[c] - quota[c])
            quota[c] += take
            remaining -= take
            if quota[c] == available[c]:
                open_classes.remove(c)
        if share == 0 and extra == 0:
            break
    return quota


def load(path: str | Path, root: str | Path | None = None) -> CalibrationSet:
    """Read a manifest and check every file is there and unchanged (SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"Calibration manifest not found: {path}. Make one with: edgeres calibrate --out {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        lines = []
    if not lines or lines[0].strip() != HEADER:
        raise CalibrationError(f"{path} is not an edgeres calibration manifest (first line should be '{HEADER}').")
    meta = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# ") and ": " in line)
    root = Path(root) if root is not None else Path(meta.get("root", "."))
    remake = f"Make a new one with: edgeres calibrate --data {root} --out {path}"
    entries = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.startswith("#"):
            digest, _, rel = line.partition("  ")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not rel.strip() \
                    or Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise CalibrationError(f"{path}, line {number}: not '<sha256>  <path under the data root>' "
                                       f"(received {line[:60]!r}); the manifest may be cut or edited. {remake}")
            entries.append((rel, digest))
    for key in ("seed", "requested"):
        if key in meta and not meta[key].strip().lstrip("-").isdigit():
            raise CalibrationError(f"{path}: '# {key}: {meta[key][:20]}' is not a whole number. {remake}")
    if not entries:
        raise CalibrationError(f"{path} lists no images. Make a new one with: edgeres calibrate --out {path}")
    missing = [rel for rel, _ in entries if not (root / rel).is_file()]
    changed = [rel for rel, d in entries if rel not in missing and _sha256(root / rel) != d]
    if missing or changed:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if changed:
            parts.append(f"{len(changed)} changed since the manifest was written "
                         f"({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})")
        raise CalibrationError(
            f"Calibration manifest {path} does not match the files under {root}: {'; '.join(parts)}. "
            f"Restore them, or draw a new manifest with: edgeres calibrate --data {root} --out {path}"
        )
    if len({Path(rel).parent.name for rel, _ in entries}) < 2:
        raise CalibrationError(f"{path} covers a single class; calibration needs images of every class.")
    return CalibrationSet(root, tuple(entries), int(meta.get("seed", 0)), int(meta.get("requested", len(entries))),
                          meta.get("split", "train"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


__all__ = ["CalibrationSet", "CalibrationError", "DataError", "draw", "load", "RECOMMENDED_SIZE"]
