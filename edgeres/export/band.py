"""The uncertain band: the top score below which an answer is called *uncertain*, measured at export.

float32, float16, int8 on XNNPACK and int8 on LiteRT's built-in kernels never return exactly the
same scores, and no phone's runtime returns exactly ours; but they disagree only where the model
is nearly undecided. The band says where that is, so an app can say "not sure" instead of
printing ``dogs 0.52`` like ``dogs 0.99``. It is recorded in ``edgeres.json`` (``"uncertain"``)
and in every ``.tflite`` as the output's ScoreThresholdingOptions, which MediaPipe's
ImageClassifier honours by default.

The safety rule (:data:`RULE`). Setting the band at the largest top score among the photos where
paths disagreed bases it on the few photos that happened to land nearest the line (9 of 1,000 for
the reference model); on unseen photos such a band missed 2 of 14. Setting it at 0.5 plus the
largest deviation seen anywhere is safe but wide: one photo whose int8 score moved 0.13 at a top
score of 0.65 would flag 12%. The band is set from every photo instead: a path reverses an answer
when the log-ratio of its top two scores moves past zero, and int8 rounding and kernel differences
move that log-ratio by a deviation that is measured on every unsaturated photo (a few hundred
samples, not the dozen that flipped). Pairing every photo's margin with that deviation sample
estimates how many answers at or above a threshold another path could reverse; the band is the
lowest threshold where that is at most 1 in 4,000, a quarter of the 1-in-1,000 goal, counting a deviation
in either direction as a reversal (so the estimate errs high by about two). The band never sits
below the largest disagreement actually seen plus one int8 output step. Measured on photos the
band was not set on: benchmarks/uncertain_band.md.
"""

from __future__ import annotations

import math
import platform
import time
from enum import Enum
from pathlib import Path

import numpy as np

from edgeres.export.convert import ExportError

RULE = ("uncertain when the top score < T, the lowest threshold at which the expected share of answers "
        "at or above it that another path could reverse is <= 1/4000 (a quarter of the 1-in-1000 goal): every "
        "measured photo's logit margin log(top/runner-up) against the deviation of that log-ratio between "
        "paths seen on every unsaturated measured photo (top < 0.9 on every path); never below the largest "
        "disagreement seen plus one int8 output step (1/256)")
STEP = 1 / 256  # one step of an edgeres int8 model's uint8 output (scale 1/256)
# Expected reversible answers above the band, per answer: a quarter of the goal (1 in 1,000), as the
# tail of a few hundred deviations is itself uncertain (bands from two halves of the reference
# model's validation photos differ by 0.02 at 1/2000).
RISK = 1 / 4000
SATURATED = 0.9  # above this top score int8 scores are coarse (k/256) and logits clipped: no deviation sample
# The built-in kernels are many times slower than XNNPACK (0.55 s against 0.03 s a photo for the
# reference model here): they run on the least confident share of the photos only. Scores move most
# near 0.5 and only answers near it can flip, so that is where their deviation is measured.
BUILTIN_SHARE, BUILTIN_MIN = 0.15, 48


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


def measure(scores: dict[str, np.ndarray], *, answer: str | None = None,
            also: np.ndarray | None = None) -> dict:
    """The band from each path's scores ``[n, classes]`` on the same photos (a NaN row: a photo
    that path did not run), by :data:`RULE`. ``answer``: the path whose answers are flagged
    (default: the first int8 path, what ``edgeres predict`` runs). ``also``: more deviations
    (log-ratio, e.g. between runtimes on the bundle's probes) for the sample."""
    names = list(scores)
    answer = answer or next((k for k in names if k.startswith("int8/")), names[0])
    stack = np.stack([np.asarray(scores[k], np.float64) for k in names])  # [paths, n, classes]
    mine = stack[names.index(answer)]
    order = np.argsort(-mine, axis=1)
    rows = np.arange(mine.shape[0])
    first, second = order[:, 0], order[:, 1]
    eps = 1e-6
    # Each path's log-ratio of the answer's top two classes: where a path stands on the line.
    z = np.log(np.clip(stack[:, rows, first], eps, 1)) - np.log(np.clip(stack[:, rows, second], eps, 1))
    deviation = np.nanmax(z, axis=0) - np.nanmin(z, axis=0)  # [n]
    unsaturated = np.nan_to_num(stack, nan=0.0).max(axis=(0, 2)) < SATURATED
    sample = deviation[unsaturated] if unsaturated.sum() >= 20 else deviation
    if also is not None and len(also):
        sample = np.concatenate([sample, np.asarray(also, np.float64)])
    sample = np.sort(sample)
    top, margin = mine[rows, first], z[names.index(answer)]
    reversible = 1 - np.searchsorted(sample, margin, side="right") / len(sample)  # P(deviation > margin)
    seen = describe(scores, None, answer=answer)["max_disagreement_score"]
    floor = max(1 / mine.shape[1], (seen or 0) + STEP)
    candidates = np.round(np.arange(math.ceil(floor * 1000 - 1e-9), 1000) / 1000, 3)  # readable thousandths
    threshold = float(next((t for t in candidates if np.mean((top >= t) * reversible) <= RISK), 0.999))
    return {"threshold": threshold, "source": BandSource.MEASURED.value, "rule": RULE,
            **describe(scores, threshold, answer=answer),
            "deviation_sample": int(len(sample)), "deviation_p99": round(float(np.percentile(sample, 99)), 4),
            "expected_reversible": round(float(np.mean((top >= threshold) * reversible)), 6),
            "photos_per_path": {k: int((~np.isnan(stack[i]).any(axis=1)).sum()) for i, k in enumerate(names)}}


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


def export_band(bundle: Path, files: dict, evaluation, setting: float | str | None, *, threads=None,
                runtimes: dict | None = None, log=print) -> dict:
    """The band of an export: from the verification's scores (``evaluation``: float32, float16,
    int8 on XNNPACK, all through LiteRT) plus the int8 model on the built-in kernels on the least
    confident photos; ``setting`` from :func:`check_setting`. Returns the ``"uncertain"`` record."""
    names = {str(bundle / info["file"]): fmt for fmt, info in files.items()}
    scores = {(path_name("xnnpack") if names[p] == "int8" else names[p]): s
              for p, s in evaluation.probabilities.items() if p in names}
    seconds = None
    if "int8" in files and scores and setting != BandSource.OFF.value:
        log("Uncertain band: the int8 model on LiteRT's built-in kernels too, on the least confident "
            f"{BUILTIN_SHARE:.0%} of the photos (at least {BUILTIN_MIN}) ...")
        t = time.perf_counter()
        scores[path_name("builtin")] = _builtin_scores(bundle / files["int8"]["file"], evaluation, scores, threads)
        seconds = round(time.perf_counter() - t, 2)
    if len(scores) < 2:
        return {"threshold": None, "source": BandSource.OFF.value, "rule": "one path verified: nothing to compare"}
    probes, also = runtime_deviation(runtimes) if runtimes else (None, None)
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
    if record.get("outside") and record["threshold"] is not None:
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


def runtime_deviation(runtimes: dict) -> tuple[dict, np.ndarray]:
    """The per-runtime probe outputs the bundle records (CONTRACT.md ``runtimes``): per unsaturated
    probe, the deviation between runtimes of the log-ratio of its top two classes (a sample for
    :func:`measure`), and a summary."""
    outputs = [np.asarray(v, np.float64) * STEP for v in (runtimes.get("outputs") or {}).values()]
    if len(outputs) < 2:
        return {"runtimes": sorted(runtimes.get("outputs") or {}), "max_deviation": None}, np.zeros(0)
    stack = np.stack(outputs)  # [runtimes, probes, classes]
    order = np.argsort(-stack[0], axis=1)
    rows = np.arange(stack.shape[1])
    z = (np.log(np.clip(stack[:, rows, order[:, 0]], 1e-6, 1))
         - np.log(np.clip(stack[:, rows, order[:, 1]], 1e-6, 1)))
    deviation = (z.max(0) - z.min(0))[stack.max(axis=(0, 2)) < SATURATED]
    return ({"runtimes": sorted(runtimes["outputs"]), "probes": int(stack.shape[1]),
             "max_deviation": round(float(deviation.max()), 4) if len(deviation) else None}, deviation)


def summary_line(record: dict) -> str:
    """One line for the export summary."""
    if record.get("threshold") is None:
        return f"uncertain band: off ({record.get('rule')})"
    how = {BandSource.MEASURED.value: f"measured: expected reversible answers above it "
                                      f"{record.get('expected_reversible', 0) * 1000:.2f} in 1000",
           BandSource.MANUAL.value: f"set by hand; measured would be {record.get('measured_threshold')}"}
    worst = record.get("max_disagreement_score")
    return (f"uncertain below top score {record['threshold']} ({how.get(record.get('source'), record.get('source'))}; "
            f"{record.get('photos')} photos x {len(record.get('paths', []))} paths, {record.get('disagreements')} "
            f"disagreement(s)" + (f", largest top score among them {worst:.3f}" if worst is not None else "")
            + f", {record.get('outside', 0)} outside): flags {record.get('flagged', 0):.1%} of answers")
