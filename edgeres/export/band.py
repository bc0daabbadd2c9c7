"""The uncertain band: the top score below which an answer is called *uncertain*, measured at export.

float32, float16, int8 on XNNPACK and int8 on LiteRT's built-in kernels never return exactly the
same scores, and no phone's runtime returns exactly ours; but they disagree only where the model
is nearly undecided. The band says where that is, so an app can say "not sure" instead of
printing ``dogs 0.52`` like ``dogs 0.99``. It is recorded in ``edgeres.json`` (``"uncertain"``)
and in every ``.tflite`` as the output's ScoreThresholdingOptions, which MediaPipe's
ImageClassifier honours by default.

The safety rule (:data:`RULE`). Setting the band at the largest top score among the photos where
paths disagreed bases it on the few photos that happened to land nearest 0.5 (14 of 1,000 for the
reference model); on unseen photos that band missed 2 of 14. The band is set instead from the
largest *deviation* between any two paths on any measured photo (every photo is a sample of it,
not only the dozen that flipped): another path can reverse an answer only if the top score minus
the runner-up is less than twice its deviation, and top minus runner-up is at least
``2 * top - 1``, so no answer with top score ``>= 0.5 + deviation`` can be reversed, for any
number of classes. One output step of the int8 model (1/256) is added for the rounding of a score
that lands on the line. Measured on photos the band was not set on: benchmarks/uncertain_band.md.
"""

from __future__ import annotations

import math
import platform
import time
from enum import Enum
from pathlib import Path

import numpy as np

from edgeres.export.convert import ExportError

RULE = ("uncertain when the top score < 0.5 + D + one int8 output step (1/256), D being the largest "
        "score difference between any two paths on any measured photo: a deviation up to D cannot "
        "reverse an answer whose top score is at least 0.5 + D")
STEP = 1 / 256  # one step of an edgeres int8 model's uint8 output (scale 1/256)
# The built-in kernels are several times slower than XNNPACK: they run on the least confident share
# of the photos only. Scores move most near 0.5 (softmax's slope p(1 - p) peaks there) and only
# answers near it can flip, so that is where their deviation is measured.
BUILTIN_SHARE, BUILTIN_MIN = 0.25, 48


class BandSource(str, Enum):
    MEASURED = "measured"
    MANUAL = "manual"
    OFF = "off"


def check_setting(value: float | str | None, classes: int) -> float | str | None:
    """``--uncertain-below``: None (measure it), ``"off"``, or a top-score threshold, which must lie
    above ``1 / classes`` (every answer's top score is at least that) and below 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == BandSource.OFF.value):
        return None if value is None else BandSource.OFF.value
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not (1.0 / classes < threshold < 1.0):  # NaN fails every comparison
        raise ExportError(f"--uncertain-below {value}: a top-score threshold must lie above 1/{classes} = "
                          f"{1 / classes:.3f} (every top score is at least that) and below 1; or pass "
                          f"'off' to switch the band off.")
    return threshold


def path_name(kernels: str, machine: str | None = None) -> str:
    """``int8/<kernels>/<arch>``: the runtime names of CONTRACT.md under the int8 model."""
    return f"int8/{kernels}/{(machine or platform.machine()).lower()}"


def measure(scores: dict[str, np.ndarray], *, answer: str | None = None, also: float | None = None) -> dict:
    """The band from each path's scores ``[n, classes]`` on the same photos (a NaN row: a photo
    that path did not run). ``answer``: the path whose answers ``flagged`` counts (default: the
    first int8 path, what ``edgeres predict`` runs). ``also``: a deviation measured elsewhere (the
    runtimes' probe outputs) that the band must cover too."""
    names = list(scores)
    stack = np.stack([np.asarray(scores[k], np.float64) for k in names])  # [paths, n, classes]
    ran = ~np.isnan(stack).any(axis=2)
    deviation = np.nanmax(stack, axis=0) - np.nanmin(stack, axis=0)  # [n, classes]
    per_photo = deviation.max(axis=1)
    D = max(float(per_photo.max()), also or 0.0)
    threshold = _round_up(0.5 + D + STEP)
    return {"threshold": threshold, "source": BandSource.MEASURED.value, "rule": RULE,
            **describe(scores, threshold, answer=answer), "max_deviation": round(D, 6),
            "photos_per_path": {k: int(ran[i].sum()) for i, k in enumerate(names)}}


def describe(scores: dict[str, np.ndarray], threshold: float | None, *, answer: str | None = None) -> dict:
    """What a band does on these photos: disagreements (photos where two paths give different top
    labels), the largest top score among them, how many lie outside the band, the share flagged."""
    names = list(scores)
    stack = np.stack([np.asarray(scores[k], np.float64) for k in names])
    ran = ~np.isnan(stack).any(axis=2)
    top = np.where(ran, np.nan_to_num(stack, nan=-1).max(axis=2), np.nan)  # [paths, n]
    label = np.where(ran, np.nan_to_num(stack, nan=-1).argmax(axis=2), -1)
    disagree = np.array([len(set(label[ran[:, i], i])) > 1 for i in range(stack.shape[1])])
    worst = float(np.nanmax(top[:, disagree])) if disagree.any() else None
    answer = answer or next((k for k in names if k.startswith("int8/")), names[0])
    mine = top[names.index(answer)]
    flagged = mine < threshold if threshold is not None else np.zeros_like(mine, bool)
    # A disagreement is outside the band when any path answers it with a top score at or above it.
    outside = disagree & (np.nanmax(top, axis=0) >= threshold) if threshold is not None else disagree
    return {"photos": int(stack.shape[1]), "paths": names, "answer_path": answer,
            "disagreements": int(disagree.sum()), "outside": int(outside.sum()),
            "flagged": round(float(np.mean(flagged[~np.isnan(mine)])), 6),
            "max_disagreement_score": None if worst is None else round(worst, 6),
            "margin": None if worst is None or threshold is None else round(threshold - worst, 6)}


def _round_up(x: float) -> float:
    """Up to the next thousandth (a threshold people can read; never below the rule)."""
    return min(math.ceil(x * 1000 - 1e-9) / 1000, 0.999)


def export_band(bundle: Path, files: dict, evaluation, setting: float | str | None, *, threads=None,
                runtimes: dict | None = None, log=print) -> dict:
    """The band of an export: from the verification's scores (``evaluation``: float32, float16,
    int8 on XNNPACK, all through LiteRT) plus the int8 model on the built-in kernels on the least
    confident photos; ``setting`` from :func:`check_setting`. Returns the ``"uncertain"`` record."""
    names = {str(bundle / info["file"]): fmt for fmt, info in files.items()}
    scores = {(path_name("xnnpack") if names[p] == "int8" else names[p]): s
              for p, s in evaluation.probabilities.items() if p in names}
    seconds = None
    if "int8" in files and scores:
        log("Uncertain band: the int8 model on LiteRT's built-in kernels too, on the least confident "
            f"{BUILTIN_SHARE:.0%} of the photos (at least {BUILTIN_MIN}) ...")
        t = time.perf_counter()
        scores[path_name("builtin")] = _builtin_scores(bundle / files["int8"]["file"], evaluation, scores, threads)
        seconds = round(time.perf_counter() - t, 2)
    if not scores:
        return {"threshold": None, "source": BandSource.OFF.value, "rule": "nothing was verified"}
    probes = runtime_deviation(runtimes) if runtimes else None
    also = probes and probes["max_deviation"]
    if setting == BandSource.OFF.value:
        record = {"threshold": None, "source": BandSource.OFF.value, "rule": "switched off (--uncertain-below off)",
                  **describe(scores, None)}
    elif setting is not None:
        record = {"threshold": float(setting), "source": BandSource.MANUAL.value,
                  "rule": "set by hand (--uncertain-below)", **describe(scores, float(setting))}
        record["measured_threshold"] = measure(scores, also=also)["threshold"]
    else:
        record = measure(scores, also=also)
    if probes:
        record["runtime_probes"] = probes
    record["builtin_seconds"] = seconds
    if record.get("outside"):
        log(f"Uncertain band: {record['outside']} of {record['disagreements']} disagreement(s) between paths "
            f"lie outside it (top score >= {record['threshold']}).")
    return record


def _builtin_scores(model: Path, evaluation, scores: dict, threads) -> np.ndarray:
    """The int8 model on LiteRT's built-in kernels, on the least confident photos (the rest NaN)."""
    from edgeres.evaluate import _label_map
    from edgeres.preprocess import load_pixels
    from edgeres.runtime import Classifier

    clf = Classifier(model, threads=threads, accelerator="cpu", kernels="builtin")
    ref = scores[path_name("xnnpack")]
    n = len(ref)
    chosen = np.argsort(ref.max(axis=1), kind="stable")[:min(n, max(BUILTIN_MIN, math.ceil(BUILTIN_SHARE * n)))]
    out = np.full_like(ref, np.nan, dtype=np.float32)
    mapping = _label_map(clf, evaluation.classes)
    for i in chosen:
        out[i, mapping] = clf.predict_pixels(load_pixels(evaluation.paths[i], clf.input_size[0], clf.resize)).probabilities
    return out


def runtime_deviation(runtimes: dict) -> dict:
    """The per-runtime probe outputs the bundle records (CONTRACT.md ``runtimes``): the largest
    score difference between two runtimes on a probe, in scores (steps of 1/256)."""
    outputs = {k: np.asarray(v, np.float64) * STEP for k, v in (runtimes.get("outputs") or {}).items()}
    if len(outputs) < 2:
        return {"runtimes": sorted(outputs), "max_deviation": None}
    stack = np.stack(list(outputs.values()))
    return {"runtimes": sorted(outputs), "max_deviation": round(float((stack.max(0) - stack.min(0)).max()), 6)}


def summary_line(record: dict) -> str:
    """One line for the export summary."""
    if record.get("threshold") is None:
        return f"uncertain band: off ({record.get('rule')})"
    how = {BandSource.MEASURED.value: f"measured: 0.5 + largest deviation between paths {record.get('max_deviation')} "
                                      "+ 1/256",
           BandSource.MANUAL.value: f"set by hand; measured would be {record.get('measured_threshold')}"}
    worst = record.get("max_disagreement_score")
    return (f"uncertain below top score {record['threshold']} ({how.get(record.get('source'), record.get('source'))}; "
            f"{record.get('photos')} photos x {len(record.get('paths', []))} paths, {record.get('disagreements')} "
            f"disagreement(s)" + (f", largest top score among them {worst:.3f}" if worst is not None else "")
            + f", {record.get('outside', 0)} outside): flags {record.get('flagged', 0):.1%} of answers")
