"""Client checks: run a model through another client (MediaPipe Tasks) and compare with edgeres.

An app does not run ``edgeres predict``: it hands a photo to MediaPipe's ``ImageClassifier`` (Android,
iOS, web, Python), which decodes and resizes it itself. This module runs that client on the same
files and reports its accuracy and its top-1 agreement with edgeres, so "the app gives the answers
edgeres verified" is measured rather than assumed.

MediaPipe pulls in ``opencv-contrib-python``, which clashes with ``opencv-python``, so it lives in
its own interpreter: ``$EDGERES_MEDIAPIPE_PYTHON``, else a ``.venv-mediapipe`` in the working folder,
else this interpreter when it can import ``mediapipe``. It is driven as a subprocess speaking JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MEDIAPIPE_ENV = "EDGERES_MEDIAPIPE_PYTHON"
MEDIAPIPE_HOWTO = (f"scripts/setup in the edgeres checkout makes .venv-mediapipe; elsewhere: python3 -m venv "
                   f".venv-mediapipe && .venv-mediapipe/bin/pip install mediapipe pillow (its own venv: it pulls "
                   f"in opencv-contrib-python), then set {MEDIAPIPE_ENV}=.venv-mediapipe/bin/python")


class ClientError(RuntimeError):
    """A client that is missing or failed; the message says how to get or fix it."""


# Runs inside the MediaPipe interpreter: reads {"model", "images", "pixels", "default_options", "classes"}
# on stdin, writes one JSON line per image: {"i", "scores"} (scores indexed by class, at least
# "classes" of them; [] when MediaPipe with default options returned no category) or {"i", "error"}.
# Every category needs a threshold above 0: MediaPipe's Python API reads 0 (and below) as unset and
# then applies the model's own ScoreThresholdingOptions (the uncertain band edgeres writes).
_WORKER = r"""
import json, sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision

job = json.loads(sys.stdin.read())
base = BaseOptions(model_asset_path=job["model"])
options = (vision.ImageClassifierOptions(base_options=base) if job.get("default_options") else
           vision.ImageClassifierOptions(base_options=base, max_results=-1, score_threshold=1e-30))
least = 0 if job.get("default_options") else job.get("classes") or 0
pixels = np.load(job["pixels"]) if job.get("pixels") else None
with vision.ImageClassifier.create_from_options(options) as clf:
    for i, path in enumerate(job["images"]):
        try:
            if pixels is not None:
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels[i]))
            else:
                image = mp.Image.create_from_file(path)
            cats = clf.classify(image).classifications[0].categories
            scores = [0.0] * max([c.index + 1 for c in cats] + [least])
            for c in cats:
                scores[c.index] = float(c.score)
            print(json.dumps({"i": i, "scores": scores}), flush=True)
        except Exception as e:  # one bad image must not end the run
            print(json.dumps({"i": i, "error": f"{type(e).__name__}: {e}"}), flush=True)
"""


def find_mediapipe_python() -> str | None:
    """The interpreter that has MediaPipe, or None."""
    named = os.environ.get(MEDIAPIPE_ENV)
    if named:
        return named
    for candidate in (Path.cwd() / ".venv-mediapipe" / "bin" / "python",
                      Path(__file__).resolve().parents[1] / ".venv-mediapipe" / "bin" / "python"):
        if candidate.is_file():
            return str(candidate)
    import importlib.util

    return sys.executable if importlib.util.find_spec("mediapipe") else None


def require_mediapipe_python() -> str:
    """The MediaPipe interpreter (:func:`find_mediapipe_python`), checked before any work: one
    that is missing, cannot be executed, or has no ``mediapipe`` is a ClientError saying so."""
    python = find_mediapipe_python()
    if python is None:
        raise ClientError(f"--client mediapipe: no MediaPipe interpreter found. To install one: {MEDIAPIPE_HOWTO}.")
    named = f"{MEDIAPIPE_ENV}={python}" if os.environ.get(MEDIAPIPE_ENV) == python else python
    path = Path(python)
    if not path.exists():
        raise ClientError(f"{named}: no such file. Point it at a Python that has mediapipe ({MEDIAPIPE_HOWTO}).")
    if path.is_dir() or not os.access(path, os.X_OK):
        raise ClientError(f"{named}: {'a folder' if path.is_dir() else 'not executable'}, not a Python interpreter. "
                          f"Point it at one that has mediapipe, e.g. .venv-mediapipe/bin/python.")
    try:
        proc = subprocess.run([python, "-c", "import mediapipe"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClientError(f"{named}: cannot be run as a Python interpreter ({getattr(e, 'strerror', None) or e}). "
                          f"Point it at one that has mediapipe, e.g. .venv-mediapipe/bin/python.") from None
    if proc.returncode != 0:
        if "No module named 'mediapipe'" in proc.stderr:
            raise ClientError(f"{named} has no mediapipe. {MEDIAPIPE_HOWTO}.")
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}, no output"])[-1]
        raise ClientError(f"{named}: `import mediapipe` failed ({last[:160]}). Point it at a Python that has "
                          f"mediapipe ({MEDIAPIPE_HOWTO}).")
    return python


def mediapipe_scores(model: str | Path, images: list[str | Path], *, pixels: np.ndarray | None = None,
                     python: str | None = None, timeout: float | None = None,
                     default_options: bool = False, classes: int | None = None) -> list[np.ndarray | str]:
    """MediaPipe ImageClassifier's scores for each image (from the file, as an app would), or
    for the given ``pixels`` ``[N, H, W, 3]`` when set; an ``str`` error where an image failed.
    Every class's score, unless ``default_options``: then the options an app gets by default,
    which drop categories below the model's ScoreThresholdingOptions (an empty array: no category).
    ``classes``: pad each array to that many scores (a category scoring exactly 0 is not returned)."""
    import tempfile

    python = python or find_mediapipe_python()
    if python is None:
        raise ClientError(f"MediaPipe is not available. To check the model in MediaPipe: {MEDIAPIPE_HOWTO}.")
    with tempfile.TemporaryDirectory() as tmp:
        job = {"model": str(Path(model).resolve()), "images": [str(Path(p).resolve()) for p in images],
               "default_options": default_options, "classes": classes}
        if pixels is not None:
            job["pixels"] = str(Path(tmp) / "pixels.npy")
            np.save(job["pixels"], pixels)
        try:
            proc = subprocess.run([python, "-c", _WORKER], input=json.dumps(job), capture_output=True, text=True,
                                  timeout=timeout, env={**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"})
        except FileNotFoundError as e:
            raise ClientError(f"{MEDIAPIPE_ENV}={python}: no such interpreter. {MEDIAPIPE_HOWTO}.") from e
        except OSError as e:  # not executable, a folder, not a program
            raise ClientError(f"{python}: cannot be run as a Python interpreter ({e.strerror or e}). "
                              f"{MEDIAPIPE_HOWTO}.") from e
    results: list[np.ndarray | str] = ["no answer"] * len(images)
    for line in proc.stdout.splitlines():
        try:
            rec = json.loads(line) if line.startswith("{") else None
            if rec is not None:
                results[rec["i"]] = rec["error"] if "error" in rec else np.asarray(rec["scores"], dtype=np.float64)
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not the worker's line (something else printing on stdout)
    if proc.returncode != 0 and all(isinstance(r, str) for r in results):
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if "No module named 'mediapipe'" in proc.stderr:
            raise ClientError(f"{python} has no mediapipe. {MEDIAPIPE_HOWTO}.")
        raise ClientError(f"MediaPipe could not run {Path(model).name}: {last}")
    return results


@dataclass(frozen=True)
class ClientCheck:
    """One client against edgeres on the same files."""

    client: str
    model: str
    n: int
    accuracy: float
    edgeres_accuracy: float
    agreement: float
    mean_abs_score_diff: float
    failed: int
    disagreements: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"client": self.client, "model": self.model, "n": self.n, "accuracy": self.accuracy,
                "edgeres_accuracy": self.edgeres_accuracy, "agreement": self.agreement,
                "mean_abs_score_diff": self.mean_abs_score_diff, "failed": self.failed,
                "disagreements": list(self.disagreements[:50])}

    def summary(self) -> str:
        return (f"{self.client} vs edgeres on {self.n} images: agreement {self.agreement:.2%}, accuracy "
                f"{self.accuracy:.2%} (edgeres {self.edgeres_accuracy:.2%}), mean |dscore| "
                f"{self.mean_abs_score_diff:.4f}" + (f", {self.failed} failed in the client" if self.failed else ""))


def check_mediapipe(classifier, items: list[tuple[Path, int]], classes: tuple[str, ...], *,
                    python: str | None = None, progress: bool = False) -> ClientCheck:
    """Run ``classifier``'s model file through MediaPipe ImageClassifier on ``items`` (path, class
    index) and compare with ``classifier`` (edgeres's own pixels and runtime) on the same files."""
    from edgeres.evaluate import _label_map
    from edgeres.preprocess import ImageError

    mapping = _label_map(classifier, classes)
    ours, kept = [], []
    for path, label in items:
        try:
            ours.append(classifier.predict(path).probabilities)
            kept.append((path, label))
        except ImageError:
            continue
    theirs = mediapipe_scores(classifier.path, [p for p, _ in kept], python=python, classes=len(classifier.labels))
    truth, a, b, diffs, disagree, failed = [], [], [], [], [], 0
    for (path, label), p_ours, p_theirs in zip(kept, ours, theirs):
        if isinstance(p_theirs, str):
            failed += 1
            continue
        p_theirs = np.pad(p_theirs, (0, max(0, len(p_ours) - len(p_theirs))))[: len(p_ours)]
        truth.append(label)
        a.append(mapping[int(np.argmax(p_ours))])
        b.append(mapping[int(np.argmax(p_theirs))])
        diffs.append(float(np.mean(np.abs(p_ours - p_theirs))))
        if a[-1] != b[-1]:
            disagree.append(str(path))
    if not truth:
        raise ClientError(f"MediaPipe classified none of the {len(kept)} images (first error: {theirs[0] if theirs else 'none'}).")
    truth, a, b = np.array(truth), np.array(a), np.array(b)
    return ClientCheck("MediaPipe ImageClassifier (from file)", str(classifier.path), len(truth),
                       float(np.mean(b == truth)), float(np.mean(a == truth)), float(np.mean(a == b)),
                       float(np.mean(diffs)), failed, tuple(disagree))
