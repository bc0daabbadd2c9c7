"""An export bundle as the device reads it: which ``.tflite`` to load, its ``edgeres.json``,
its labels, and the probe photos the accelerator self-check runs. Never imports TensorFlow.

    export/cats-dogs/
        edgeres.json          what the bundle holds (models, labels, input, resize, numbers)
        model_int8.tflite     ... one file per variant (int8, float16, dynamic, float32)
        labels.txt
        probes.npz            a few real photos at the model's size, for the self-check
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from edgeres.accelerators import first_line
from edgeres.files import atomic_path
from edgeres.tflite import is_tflite

BUNDLE_JSON = "edgeres.json"
# A bundle's models, best first for a device: what Classifier(bundle) loads when not told.
BUNDLE_PREFERENCE = ("int8", "float16", "dynamic", "float32")
# What a bundle runs on the GPU: LiteRT's GPU accelerator computes int8 ResNets wrongly (58.7% vs
# 80.0% top-1 on the reference model, benchmarks/gpu.md) and float16 exactly (100% agreement).
GPU_PREFERENCE = ("float16", "float32")

# Probe pixels a bundle may carry for the self-check: ``pixels`` uint8 [N, H, W, 3] (real photos
# through edgeres.preprocess.to_pixels at the model's size). See write_probes().
PROBES_FILE = "probes.npz"
MAX_BUNDLE_PROBES = 6
SYNTHETIC_PROBES = 4  # seeded smooth images, always added (8 when the bundle carries none)
PROBE_SEED = 16


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file and the reason."""


def resolve_model(path: str | Path, variant: str | None = None) -> Path:
    """A ``.tflite`` path, or the chosen (default: int8) model file of a bundle directory."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory. Pass a .tflite file or an export bundle directory.")
    if path.is_file():
        return path
    meta = path / BUNDLE_JSON
    if not meta.is_file():
        found = sorted(path.glob("*.tflite"))
        if len(found) == 1:
            return found[0]
        raise ModelError(f"{path}: not an edgeres bundle (no {BUNDLE_JSON}) and holds {len(found)} .tflite files; name one.")
    models = bundle_models(path)
    for name in ((variant,) if variant else BUNDLE_PREFERENCE):
        if name in models:
            file = path / models[name]["file"]
            if not file.is_file():  # listed but gone: never a silent switch to another model
                raise ModelError(f"{file}: {BUNDLE_JSON} lists it as the {name} model, but it is "
                                 f"{'not a file' if file.exists() else 'missing'}. Re-export the bundle, "
                                 f"or pass another model file of it.")
            return file
    raise ModelError(f"{path}: bundle has no {variant or 'model'} .tflite (has: {', '.join(models) or 'none'}).")


def bundle_info(model_path: Path) -> dict:
    """The ``edgeres.json`` beside a model (checked, see :func:`read_bundle_json`), or ``{}``."""
    folder = Path(model_path).parent
    return read_bundle_json(folder) if (folder / BUNDLE_JSON).is_file() else {}


def bundle_models(bundle: Path) -> dict:
    """``edgeres.json``'s ``models`` table (variant -> its file and numbers), or ``{}``."""
    return read_bundle_json(bundle).get("models") or {} if (Path(bundle) / BUNDLE_JSON).is_file() else {}


def read_bundle_json(bundle: str | Path) -> dict:
    """A bundle's ``edgeres.json``, checked for the shape the runtime reads: ``models`` maps each
    variant to ``{"file": NAME}`` (a file in the bundle), ``labels`` lists names, ``input`` is an
    object. Cut, corrupt or otherwise: a ModelError naming the file."""
    from edgeres.files import BadFileError, read_json

    path = Path(bundle) / BUNDLE_JSON
    fix = f"Re-export the bundle (edgeres export RUN --out {Path(bundle)} --force), or pass one .tflite file."
    try:
        meta = read_json(path, fix=fix)
    except BadFileError as e:
        raise ModelError(str(e)) from None
    models = meta.get("models", {})
    if not isinstance(models, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("file"), str) and v["file"] and Path(v["file"]).name == v["file"]
            and v["file"] not in (".", "..") for v in models.values()):
        raise ModelError(f"{path}: \"models\" must map each variant to {{\"file\": NAME}}, a file in the bundle. "
                         f"Received: {json.dumps(models)[:80]}. {fix}")
    labels = meta.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{path}: \"labels\" must be a list of class names. Received: {json.dumps(labels)[:60]}. {fix}")
    for key in ("input", "verification", "run"):
        if not isinstance(meta.get(key, {}), dict):
            raise ModelError(f"{path}: \"{key}\" must be an object. Received: {json.dumps(meta[key])[:60]}. {fix}")
    if not isinstance(meta.get("status", ""), str):
        raise ModelError(f"{path}: \"status\" must be \"passed\" or \"failed\". {fix}")
    return meta


def gpu_variant(model: str | Path) -> str | None:
    """The bundle model the GPU should run (float16), when ``model`` is a bundle that has one."""
    path = Path(model)
    if not path.is_dir() or not (path / BUNDLE_JSON).is_file():
        return None
    models = bundle_models(path)
    for name in GPU_PREFERENCE:
        if name in models and (path / models[name]["file"]).is_file():
            return name
    return None


def read_model_bytes(path: Path) -> bytes:
    """The bytes of a ``.tflite`` file; ModelError when unreadable or not a TFLite flatbuffer."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e}).") from e
    if not is_tflite(data):
        raise ModelError(f"{path}: not a .tflite model (no TFL3 flatbuffer header). "
                         f"Export one with: edgeres export RUN_DIR --int8")
    return data


def model_labels(path: Path, data: bytes, classes: int, log) -> tuple[str, ...]:
    """The class names of the model at ``path`` (bytes ``data``, ``classes`` outputs): its
    embedded labels, else the bundle's ``edgeres.json`` or ``labels.txt`` when the count
    matches, else ``class_0..`` with one warning on ``log``."""
    from edgeres.metadata import read_labels

    try:
        embedded = read_labels(data)
    except ValueError:  # no metadata: a bare .tflite from elsewhere
        embedded = None
    if embedded is not None:
        if len(embedded) != classes:
            raise ModelError(f"{path}: its embedded labels.txt has {len(embedded)} labels, the model "
                             f"outputs {classes} classes. Re-export it.")
        return tuple(embedded)
    found = []
    labels = bundle_info(path).get("labels")
    if labels:
        found.append((f"{BUNDLE_JSON} ({len(labels)} labels)", labels))
    labels_txt = path.parent / "labels.txt"
    if labels_txt.is_file():
        try:
            labels = [line.strip() for line in labels_txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"{labels_txt}: cannot be read as text ({getattr(e, 'strerror', None) or e.__class__.__name__}); "
                             f"it should list one class name per line. Re-export the bundle.") from None
        found.append((f"labels.txt ({len(labels)} labels)", labels))
    for _, labels in found:
        if len(labels) == classes:
            return tuple(labels)
    beside = f"; beside it: {', '.join(w for w, _ in found)}, not {classes}" if found else ""
    log(f"edgeres: warning: {path} has no labels (no TFLite metadata{beside}); "
        f"classes are named class_0..class_{classes - 1}.")
    return tuple(f"class_{i}" for i in range(classes))


# -- self-check probes ------------------------------------------------------------------------


def write_probes(path: str | Path, pixels: np.ndarray) -> None:
    """Save self-check probes for a bundle: ``pixels`` uint8 ``[N, H, W, 3]`` at the model's size.

    Export writes a handful of real photos (``MAX_BUNDLE_PROBES`` are used), run through
    ``edgeres.preprocess.to_pixels`` exactly as predict feeds them.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"probes must be uint8 [N, H, W, 3]. Received: {pixels.dtype} {list(pixels.shape)}.")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, pixels=pixels)


def load_probes(bundle_dir: str | Path, size: tuple[int, int]) -> np.ndarray | None:
    """A bundle's ``probes.npz`` pixels (at most MAX_BUNDLE_PROBES), or None when it has none.

    Raises ModelError when the file is there but unreadable or made for another input size.
    """
    path = Path(bundle_dir) / PROBES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            pixels = f["pixels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ModelError(f"{path}: unreadable self-check probes ({first_line(e)}). Re-export the bundle.") from e
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (*size, 3):
        raise ModelError(f"{path}: probes are {pixels.dtype} {list(pixels.shape)}, the model takes "
                         f"uint8 [N, {size[0]}, {size[1]}, 3]. Re-export the bundle.")
    return pixels[:MAX_BUNDLE_PROBES]


def synthetic_probes(size: tuple[int, int], n: int = SYNTHETIC_PROBES, seed: int = PROBE_SEED) -> np.ndarray:
    """Seeded smooth colour fields ``[n, H, W, 3]`` uint8: photo-like statistics, no photo needed.

    Smooth rather than uniform noise: noise puts a trained model far outside what it saw, where
    probabilities can sit at one value for every input and hide a wrong accelerator.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        g = (2, 3, 5, 8)[i % 4]  # coarse to finer structure
        grid = rng.uniform(0, 255, (g, g, 3))
        ys, xs = np.linspace(0, g - 1, h), np.linspace(0, g - 1, w)
        rows = np.stack([np.stack([np.interp(xs, np.arange(g), grid[r, :, c]) for c in range(3)], -1)
                         for r in range(g)])  # [g, w, 3]
        img = np.stack([np.stack([np.interp(ys, np.arange(g), rows[:, x, c]) for c in range(3)], -1)
                        for x in range(w)], 1)  # [h, w, 3]
        out[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out
