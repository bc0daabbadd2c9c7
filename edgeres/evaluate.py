"""``edgeres evaluate``: accuracy of one or more ``.tflite`` models on a labelled folder, and
how far they agree. Every model sees byte-identical input pixels. No TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeres import uncertain
from edgeres.data import DataError, check_data_dir, split_images
from edgeres.preprocess import ImageError, decode, to_pixels
from edgeres.outputs import Kind, check_output, clean_stale_partials, written_dir
from edgeres.runtime import Classifier


@dataclass(frozen=True)
class ModelEvaluation:
    path: str
    backend: str
    n: int
    correct: int
    ci95: tuple[float, float]
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    misclassified: list[dict] = field(repr=False)
    mean_latency_ms: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass(frozen=True)
class Evaluation:
    classes: tuple[str, ...]
    models: tuple[ModelEvaluation, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    # Between the first model and each other one (the reference is usually the float model).
    agreement: dict[str, float] = field(default_factory=dict)
    mean_abs_prob_diff: dict[str, float] = field(default_factory=dict)
    disagreements: dict[str, list[dict]] = field(default_factory=dict, repr=False)
    # 99th percentile over images of the largest |score difference| of an image: the tail an app shows.
    p99_abs_prob_diff: dict[str, float] = field(default_factory=dict)
    # Each model's scores [n, classes] in the dataset's class order, and the n image paths: what the
    # uncertain band (edgeres.export.band) is measured on.
    probabilities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    paths: tuple[str, ...] = field(default=(), repr=False)
    truth: tuple[int, ...] = field(default=(), repr=False)
    uncertain_below: dict[str, float | None] = field(default_factory=dict)  # each model's band (metadata)
    split: str = ""  # the split folder read ("test" when ROOT holds only test/; "all": a flat layout)

    def to_dict(self) -> dict:
        models = [{"path": m.path, "backend": m.backend, "n": m.n, "accuracy": m.accuracy,
                   "ci95": list(m.ci95), "per_class": m.per_class, "confusion": m.confusion,
                   "mean_latency_ms": m.mean_latency_ms, "misclassified": m.misclassified}
                  for m in self.models]
        # `agreement` is a number when two models were compared (the common case), else a map.
        agreement = next(iter(self.agreement.values())) if len(self.agreement) == 1 else (self.agreement or None)
        return {"classes": list(self.classes), "split": self.split, "models": models, "agreement": agreement,
                "agreement_by_model": self.agreement, "mean_abs_prob_diff": self.mean_abs_prob_diff,
                "p99_abs_prob_diff": self.p99_abs_prob_diff,
                "disagreements": self.disagreements, "uncertain": uncertain.summarize(self),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}

    def save_report(self, out_dir: str | Path) -> Path:
        """report.json, misclassified.csv, disagreements.csv, a confusion-matrix PNG per model and
        risk_coverage.png (error rate against the share answered, each model's band marked)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        with open(out / "misclassified.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "path", "true", "predicted", "score"])
            for m in self.models:
                for row in m.misclassified:
                    w.writerow([m.path, row["path"], row["true"], row["predicted"], row["score"]])
        with open(out / "disagreements.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "path", "reference_label", "model_label"])
            for name, rows in self.disagreements.items():
                for row in rows:
                    w.writerow([name, row["path"], row["reference"], row["other"]])
        try:
            for i, m in enumerate(self.models):
                plot_confusion(m, self.classes, out / f"confusion_{i}_{Path(m.path).stem}.png")
            uncertain.plot_risk_coverage(self, out / "risk_coverage.png")
        except ImportError:
            (out / "README.txt").write_text("Install matplotlib for confusion-matrix PNGs.\n")
        return out

    def write_report(self, out_dir: str | Path, *, force: bool = False, extra: dict | None = None) -> Path:
        """:meth:`save_report` plus ``extra`` (file name -> JSON-able) as ``evaluate --report``
        writes it: into a new folder, built beside it and renamed when whole. An existing folder
        is replaced only with ``force`` and only when it is itself a report
        (:func:`edgeres.outputs.check_output`)."""
        out = check_output(out_dir, Kind.REPORT, force=force, option="--report")
        clean_stale_partials(out)
        with written_dir(out, replace=force, writer="evaluate --report") as tmp:
            self.save_report(tmp)
            for name, value in (extra or {}).items():
                (tmp / name).write_text(json.dumps(value, indent=2) + "\n")
        return out


def labelled_images(root: str | Path, split: str = "validation") -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """``(classes, [(path, label)])`` of a split layout's ``split``, or of every image of a flat one."""
    classes, items, _ = labelled_split(root, split)
    return classes, items


def labelled_split(root: str | Path, split: str = "validation") -> tuple[tuple[str, ...], list[tuple[Path, int]], str]:
    """As :func:`labelled_images`, with the split actually read (``test`` when ROOT holds only
    ``test/``; ``all`` for a flat layout), for titles and reports."""
    root = Path(root)
    check_data_dir(root)
    used, classes, per_class = split_images(root, split)
    items = [(p, i) for i, c in enumerate(classes) for p in per_class.get(c, [])]
    if not items:
        where = f"{root}/<class>/*.jpg" if used == "all" else f"{root}/{used}/<class>/*.jpg"
        raise DataError(f"No images found under {root} (looked for {where}).")
    return classes, items, used


def evaluate(
    models: list[str | Path | Classifier],
    data: str | Path,
    *,
    split: str = "validation",
    threads: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    accelerator: str = "cpu",
) -> Evaluation:
    """Evaluate ``models`` on the ``split`` of the dataset at ``data`` (on the CPU unless told)."""
    classes, items, used = labelled_split(data, split)
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    # A Classifier, or anything that answers like one (edgeres.keras_classifier: a run's Keras model).
    classifiers = [m if hasattr(m, "predict_pixels") else Classifier(m, threads=threads, accelerator=accelerator)
                   for m in models]
    return dataclasses.replace(compare(classifiers, items, classes, progress=progress), split=used)


def compare(
    classifiers: list[Classifier],
    items: list[tuple[Path, int]],
    classes: tuple[str, ...],
    *,
    progress: bool = False,
) -> Evaluation:
    """Run every classifier on every image (decoded once), and compare them."""
    mapping = [_label_map(c, classes) for c in classifiers]
    preds = [[] for _ in classifiers]
    probs = [[] for _ in classifiers]
    lat = [[] for _ in classifiers]
    kept, skipped = [], []
    iterator = items
    if progress:
        from edgeres._stderr import track

        iterator = track(items, description=f"Evaluating {len(classifiers)} model(s)")
    for path, label in iterator:
        try:
            image = decode(path)
        except ImageError as e:
            skipped.append((str(path), str(e).split(": ", 1)[-1]))
            continue
        kept.append((path, label))
        pixels = {}
        for k, clf in enumerate(classifiers):
            key = (clf.input_size, clf.resize)  # models that share a size and resize share the bytes
            if key not in pixels:
                pixels[key] = to_pixels(image, clf.input_size, clf.resize)
            p = clf.predict_pixels(pixels[key])
            preds[k].append(mapping[k][p.index])
            probs[k].append(p.probabilities)
            lat[k].append(p.latency_ms)
    if not kept:
        raise DataError("None of the images could be decoded; nothing to evaluate.")
    truth = np.array([label for _, label in kept])
    paths = [str(p) for p, _ in kept]
    results, agreement, diff, p99, disagreements, scores = [], {}, {}, {}, {}, {}
    for k, clf in enumerate(classifiers):
        pred = np.array(preds[k])
        scores[str(clf.path)] = np.zeros((len(kept), len(classes)), np.float32)
        scores[str(clf.path)][:, mapping[k]] = np.array(probs[k])  # names were matched one to one
        results.append(_score(str(clf.path), clf.backend, truth, pred, probs[k], paths, classes, lat[k]))
        if k > 0:
            key = str(clf.path)
            ref = np.array(preds[0])
            agreement[key] = float(np.mean(ref == pred))
            if len(probs[0][0]) == len(probs[k][0]):
                abs_diff = np.abs(np.array(probs[0]) - np.array(probs[k]))
                diff[key] = float(np.mean(abs_diff))
                p99[key] = float(np.percentile(abs_diff.max(axis=1), 99))
            disagreements[key] = [{"path": paths[i], "reference": classes[ref[i]], "other": classes[pred[i]]}
                                  for i in np.flatnonzero(ref != pred)]
    return Evaluation(tuple(classes), tuple(results), tuple(skipped), agreement, diff, disagreements, p99,
                      scores, tuple(paths), tuple(int(t) for t in truth),
                      {str(c.path): c.uncertain_below for c in classifiers})


def _label_map(clf: Classifier, classes: tuple[str, ...]) -> list[int]:
    """Model output index -> dataset class index, matched by name, never by position.

    Names match when equal after ``casefold()`` and stripping spaces (``Dogs`` is ``dogs``), as
    long as that leaves no two names equal; anything else is refused, naming both sets.
    """
    def key(name: str) -> str:
        return name.strip().casefold()

    model_keys = [key(label) for label in clf.labels]
    data_keys = {key(c): i for i, c in enumerate(classes)}
    if len(set(model_keys)) != len(model_keys) or len(data_keys) != len(classes):
        raise DataError(f"Class names differ only in case, so they cannot be matched: model {clf.path.name} has "
                        f"{', '.join(clf.labels)}; the dataset has {', '.join(classes)}. Rename the folders.")
    missing = [c for c in classes if key(c) not in model_keys]
    missing += [label for label in clf.labels if key(label) not in data_keys]
    if missing:
        raise DataError(f"The dataset's class folders ({', '.join(classes)}) do not match the labels of "
                        f"{clf.path.name} ({', '.join(clf.labels)}): unmatched: {', '.join(missing)}. "
                        f"Name each class folder after a model label (case does not matter).")
    return [data_keys[k] for k in model_keys]


def _score(path, backend, truth, pred, probs, paths, classes, latencies) -> ModelEvaluation:
    n, correct = len(truth), int(np.sum(truth == pred))
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (truth, pred), 1)
    per_class = {}
    for i, c in enumerate(classes):
        tp = confusion[i, i]
        per_class[c] = {"precision": float(tp / max(1, confusion[:, i].sum())),
                        "recall": float(tp / max(1, confusion[i].sum())),
                        "support": int(confusion[i].sum())}
    wrong = [{"path": paths[i], "true": classes[truth[i]], "predicted": classes[pred[i]],
              "score": round(float(np.max(probs[i])), 4)} for i in np.flatnonzero(truth != pred)]
    return ModelEvaluation(path, backend, n, correct, wilson_interval(correct, n), per_class,
                           confusion.tolist(), wrong, float(np.mean(latencies)))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sane at 0% and 100%, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def plot_confusion(m: ModelEvaluation, classes, path: Path) -> None:
    from edgeres.plots import figure

    cm = np.array(m.confusion)
    with figure(path, figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2)) as (fig, ax):
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_title(f"{Path(m.path).name}: {m.accuracy:.1%} of {m.n}")
