"""Datasets: find the images, check every file before training, and feed them to Keras.

Layouts accepted (class names are folder names, sorted):

    ROOT/<split>/<class>/*      splits: train, and validation (or val, or test)
    ROOT/<class>/*              split here, stratified per class, seeded

Every file is decoded once up front (:func:`scan`): unreadable, truncated or empty files are
skipped, counted and listed, so training never dies mid-epoch on a bad file. No TensorFlow:
``evaluate`` and ``calibrate`` use this on a device too; :mod:`edgeres.pipeline` feeds the
checked files to Keras.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeres.files import image_files
from edgeres.preprocess import ImageError, decode

DATA_ENV = "EDGERES_DATA"
CATS_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("validation", "val", "test")


class DataError(ValueError):
    """A dataset that cannot be used; the message names the folder and the fix."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class Split:
    """The checked files of one split."""

    name: str
    samples: tuple[Sample, ...]
    skipped: tuple[BadFile, ...] = ()
    digest: str = ""  # SHA-256 over (relative path, content SHA-256) of every kept file

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


@dataclass(frozen=True)
class Dataset:
    root: Path
    classes: tuple[str, ...]
    train: Split
    validation: Split
    layout: str = "split"  # "split" (ROOT/<split>/<class>) or "flat" (ROOT/<class>, split here)
    sha256: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def skipped(self) -> tuple[BadFile, ...]:
        return self.train.skipped + self.validation.skipped


def resolve_data_dir(data: str | Path | None, *, log=None) -> Path:
    """Where the photos are, in one order: ``--data``; ``$EDGERES_DATA``; a cats_and_dogs_filtered
    copy already on this machine (Keras's download cache, ``./data/``, or a ``shared/data/`` folder
    beside the checkout); else the download through Keras's cache. ``log`` hears which was used."""
    say = log or (lambda message: None)
    named = "--data"
    if data is None and os.environ.get(DATA_ENV):
        data, named = os.environ[DATA_ENV], f"${DATA_ENV}"
        say(f"Data: ${DATA_ENV} = {data}")
    if data is not None:
        if not str(data).strip():  # Path("") is the working folder: never scanned by accident
            raise DataError(f"{named} is empty. Pass the dataset folder: --data DIR.")
        root = Path(data).expanduser()
        check_data_dir(root, named)
        return root
    local = local_cats_and_dogs()
    if local is not None:
        say(f"Data: cats_and_dogs_filtered found at {local}")
        return local
    say("Data: downloading cats_and_dogs_filtered (68 MB) into Keras's cache (~/.keras/datasets)")
    return download_cats_and_dogs()


def local_cats_and_dogs() -> Path | None:
    """A cats_and_dogs_filtered copy already on this machine, if any."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"
    here = Path.cwd()
    candidates = [keras_home / "cats_and_dogs_filtered", keras_home / "cats_and_dogs_filtered_extracted" / "cats_and_dogs_filtered",
                  here / "data" / "cats_and_dogs_filtered"]
    candidates += [parent / "shared" / "data" / "cats_and_dogs_filtered" for parent in (here, *here.parents)][:4]
    for candidate in candidates:
        if (candidate / "train").is_dir() and (candidate / "validation").is_dir():
            return candidate
    return None


def resolve_run_data(run: dict, run_dir: Path, data: str | Path | None, *, log=None) -> Path:
    """The data set of a finished run, for export: ``--data``; the run's recorded absolute path;
    the path it was given, relative to here and to the run; ``$EDGERES_DATA``; then as
    :func:`resolve_data_dir`. Says which one it used, so a moved folder is never a silent surprise."""
    say = log or (lambda message: None)
    if data is not None:
        return resolve_data_dir(data)
    given = (run.get("train") or {}).get("data")
    tries = [("the run's recorded path", run.get("data_root"))]
    if given:
        tries += [("the run's relative path", given), ("the run's path, from the run folder", Path(run_dir) / given)]
    for what, path in tries:
        if path and Path(path).expanduser().is_dir():
            say(f"Data: {what}, {path}")
            return Path(path).expanduser()
    if run.get("data_root") or given:
        say(f"Data: the run's folder ({run.get('data_root') or given}) is not here; looking elsewhere")
    return resolve_data_dir(None, log=say)


def check_data_dir(root: Path, named: str = "--data") -> None:
    """A dataset root must be a readable folder; say which of those it is not (``named``: where
    the path came from, ``--data`` or ``$EDGERES_DATA``)."""
    if root.is_dir():
        if not os.access(root, os.R_OK | os.X_OK):
            raise DataError(f"Dataset folder {root}: permission denied. Make it readable (chmod) or copy it.")
        return
    if root.exists():
        raise DataError(f"{named} {root} is a file, not a folder. Pass the folder that holds one folder per class "
                        f"(or train/ and validation/).")
    raise DataError(f"Dataset folder not found: {root} ({named}). Pass an existing folder with --data DIR"
                    + (f", or fix or unset ${DATA_ENV}." if named != "--data" else "."))


def download_cats_and_dogs() -> Path:
    """Fetch cats_and_dogs_filtered through Keras's download cache (~/.keras/datasets)."""
    import keras  # a download needs the training extra

    try:
        path = Path(keras.utils.get_file("cats_and_dogs_filtered.zip", origin=CATS_DOGS_URL, extract=True))
    except Exception as e:  # Keras wraps URLError, HTTPError, SSL errors alike
        raise DataError(
            f"Could not download the cats_and_dogs_filtered dataset ({type(e).__name__}: {str(e)[:120]}). "
            f"This machine may be offline. Point edgeres at a local copy instead: --data DIR "
            f"or {DATA_ENV}=DIR, with DIR holding train/<class>/ and validation/<class>/ folders."
        ) from e
    for candidate in (path, path / "cats_and_dogs_filtered", path.parent / "cats_and_dogs_filtered"):
        if (candidate / "train").is_dir():
            return candidate
    raise DataError(f"Downloaded archive at {path} has no train/ folder.")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (:func:`edgeres.files.image_files`: broken symlinks named like
    images included, so they are listed as skipped, not lost)."""
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"Class folder {folder}: permission denied. Make it readable (chmod -R u+rX) or remove it.")
    return image_files(folder)


def _broken_link(path: Path) -> str | None:
    """Why a symlink cannot be followed (dangling, or a loop), or None."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except FileNotFoundError:
        return f"dangling symlink (target {os.readlink(path)} does not exist)"
    except OSError as e:
        if e.errno == 40:  # ELOOP
            return "symlink loop"
        return f"cannot follow symlink ({e.strerror or e})"
    return None


def find_layout(root: Path) -> tuple[tuple[str, ...], dict[str, dict[str, list[Path]]]]:
    """Return the class names and ``{split: {class: [files]}}`` found under ``root``."""
    root = Path(root)
    sub = {d.name.lower(): d for d in _class_dirs(root)}
    train_dir = next((sub[s] for s in TRAIN_SPLITS if s in sub), None)
    if train_dir is not None:
        val_dir = next((sub[s] for s in VAL_SPLITS if s in sub), None)
        if val_dir is None:
            raise DataError(
                f"{root} has a train/ folder but no validation/, val/ or test/ folder beside it. "
                f"Add one, or put the class folders directly under {root} to have edgeres split them."
            )
        classes = tuple(d.name for d in _class_dirs(train_dir))
        splits = {"train": {}, "validation": {}}
        for name, folder in (("train", train_dir), ("validation", val_dir)):
            for c in classes:
                splits[name][c] = _images(folder / c) if (folder / c).is_dir() else []
        extra = sorted({d.name for d in _class_dirs(val_dir)} - set(classes))
        if extra:
            raise DataError(f"{val_dir} has class folders not in {train_dir}: {', '.join(extra)}.")
        return classes, splits
    val_dir = next((sub[s] for s in VAL_SPLITS if s in sub), None)
    if val_dir is not None and len(sub) == 1:
        # Only validation/ (an evaluation set): its subfolders are the classes, not "validation".
        classes = tuple(d.name for d in _class_dirs(val_dir))
        return classes, {"validation": {c: _images(val_dir / c) for c in classes}}
    classes = tuple(d.name for d in _class_dirs(root))
    return classes, {"all": {c: _images(root / c) for c in classes}}


def split_images(root: Path, split: str = "validation") -> tuple[str, tuple[str, ...], dict[str, list[Path]]]:
    """``(split used, classes, {class: [files]})`` of one split, for evaluation.

    ``ROOT/<split>/`` when it exists (any of train, validation, val, test; the classes are
    train's when there is one, so labels line up with training); ``validation`` falls back to
    ``val/`` or ``test/``; a flat ``ROOT/<class>/`` layout is used whole, as ``"all"``.
    """
    root = Path(root)
    sub = {d.name.lower(): d for d in _class_dirs(root)}
    train_dir = next((sub[s] for s in TRAIN_SPLITS if s in sub), None)
    # As find_layout: split folders beside train/, or one validation/val/test folder alone.
    has_splits = train_dir is not None or (len(sub) == 1 and next(iter(sub)) in VAL_SPLITS)
    if not split.strip() or Path(split).name != split:
        raise DataError(f"--split {split!r}: name one split folder of {root} (train, validation, val, test...).")
    candidates = VAL_SPLITS if split.lower() == "validation" else (split.lower(),)
    folder = next((sub[s] for s in candidates if s in sub), None) if has_splits else None
    if folder is None:
        if has_splits:
            present = ", ".join(f"{sub[s].name}/" for s in TRAIN_SPLITS + VAL_SPLITS if s in sub)
            raise DataError(f"{root} has no {split}/ folder (it has {present}). "
                            f"Pass --split with one of those, or add {root}/{split}/<class>/.")
        classes = tuple(d.name for d in _class_dirs(root))
        return "all", classes, {c: _images(root / c) for c in classes}
    classes = tuple(d.name for d in _class_dirs(train_dir if train_dir is not None else folder))
    extra = sorted({d.name for d in _class_dirs(folder)} - set(classes))
    if extra:
        raise DataError(f"{folder} has class folders not in {train_dir}: {', '.join(extra)}.")
    return folder.name, classes, {c: _images(folder / c) if (folder / c).is_dir() else [] for c in classes}


def _check(path: Path) -> tuple[str, str | None]:
    """Content SHA-256 and, for a file that will not decode, the reason."""
    link = _broken_link(path)
    if link:
        return "", link
    try:
        data = path.read_bytes()
    except OSError as e:
        return "", f"cannot read ({e.strerror or e})"
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return digest, "file is empty (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (64, 64))  # JPEG DCT scaling: checks the whole stream, 8x faster
            im.load()
        decode(data, name=str(path))  # catches what draft skips (EXIF, odd modes)
    except ImageError as e:
        return digest, str(e).split(": ", 1)[-1]
    except UnidentifiedImageError:
        return digest, "not an image Pillow can decode (JPEG, PNG, BMP, GIF, WebP, TIFF)"
    except Exception as e:
        return digest, f"corrupt or truncated image ({e})"
    return digest, None


def scan(
    root: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_per_class: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Find, decode-check and hash every image under ``root``; split a flat layout."""
    root = Path(root)
    check_data_dir(root)
    classes, splits = find_layout(root)
    if "train" not in splits and "all" not in splits:
        raise DataError(f"{root} holds only a validation split; training and calibration need "
                        f"{root}/train/<class>/ too (or class folders directly under {root}).")
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            f"a classifier needs at least 2: ROOT/train/<class>/*.jpg or ROOT/<class>/*.jpg."
        )
    _check_class_names(root, classes)
    if max_per_class is not None:
        rng = random.Random(seed)
        splits = {
            s: {c: sorted(rng.sample(f, min(len(f), max_per_class if s != "validation" else max(1, max_per_class // 2))))
                for c, f in per.items()}
            for s, per in splits.items()
        }
    files = [p for per in splits.values() for f in per.values() for p in f]
    results = _run_checks(files, progress=progress)
    hashes = {p: h for p, (h, _) in results.items()}
    bad = {p: r for p, (_, r) in results.items() if r is not None}

    def build(name: str, per_class: dict[str, list[Path]]) -> Split:
        samples, skipped = [], []
        for label, c in enumerate(classes):
            for p in per_class[c]:
                (skipped.append(BadFile(p, bad[p])) if p in bad else samples.append(Sample(p, label)))
        lines = sorted(f"{s.path.relative_to(root).as_posix()} {hashes[s.path]}" for s in samples)
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        return Split(name, tuple(samples), tuple(skipped), digest)

    if "all" in splits:
        train_files, val_files = {}, {}
        rng = random.Random(seed)
        for c, f in splits["all"].items():
            good = [p for p in f if p not in bad]
            shuffled = rng.sample(good, len(good))
            n_val = max(1, round(len(good) * val_fraction)) if len(good) > 1 else 0
            val_files[c] = sorted(shuffled[:n_val]) + [p for p in f if p in bad]
            train_files[c] = sorted(shuffled[n_val:])
        train, val, layout = build("train", train_files), build("validation", val_files), "flat"
    else:
        train, val, layout = build("train", splits["train"]), build("validation", splits["validation"]), "split"

    for split, folder_of in ((train, "train"), (val, "validation")):
        counts = np.bincount(split.labels, minlength=len(classes)) if split.samples else np.zeros(len(classes), int)
        for c, n in zip(classes, counts):
            if n == 0:
                where = root / c if layout == "flat" else root / folder_of / c
                raise DataError(
                    f"Class '{c}' has no valid image in the {split.name} split ({where}). "
                    f"Add images there (JPEG, PNG, BMP, GIF) or remove the class folder."
                )
    sha = {p.relative_to(root).as_posix(): h for p, h in hashes.items() if p not in bad}
    return Dataset(root, classes, train, val, layout, sha)


def _check_class_names(root: Path, classes: tuple[str, ...]) -> None:
    """Class folders whose names differ only in case (``Cats/``, ``cats/``) are refused before any
    work: a model trained on both could never be exported or evaluated, whose clients (and
    case-insensitive file systems) match labels without case."""
    seen: dict[str, str] = {}
    for c in classes:
        other = seen.setdefault(c.strip().casefold(), c)
        if other != c:
            raise DataError(f"Class folders '{other}' and '{c}' under {root} differ only in case; edgeres matches "
                            f"labels without case, so they would be one class. Rename one (or merge them).")


def _run_checks(files: list[Path], *, progress: bool) -> dict[Path, tuple[str, str | None]]:
    # Pillow releases the GIL while decoding, so threads use every core.
    workers = min(32, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_check, files)
        if progress:
            from edgeres._stderr import track

            results = track(results, total=len(files), description=f"Checking {len(files)} images")
        return dict(zip(files, results))


def write_skipped(dataset: Dataset, path: Path) -> None:
    """List the skipped files (``path<TAB>reason``) so the user can fix or delete them."""
    lines = [f"{b.path}\t{b.reason}" for b in dataset.skipped]
    path.write_text("".join(line + "\n" for line in lines))
