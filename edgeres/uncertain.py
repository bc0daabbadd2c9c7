"""What a model's uncertain band does on a labelled folder (``edgeres evaluate``): the share of
answers it flags, accuracy and agreement on the confident ones, and the risk-coverage curve.

The band itself is measured at export (:mod:`edgeres.export.band`) and carried in each model's
metadata; :class:`edgeres.runtime.Classifier` reads it as ``uncertain_below``. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def summarize(ev) -> dict[str, dict]:
    """Per model of an :class:`edgeres.evaluate.Evaluation`: its band, the share flagged, accuracy
    on all and on confident answers, and agreement with the first model on its confident answers."""
    truth = np.asarray(ev.truth)
    names = list(ev.probabilities)
    if not names or not len(truth):
        return {}
    ref = ev.probabilities[names[0]].argmax(axis=1)
    out = {}
    for name in names:
        scores = ev.probabilities[name]
        pred, top = scores.argmax(axis=1), scores.max(axis=1)
        threshold = ev.uncertain_below.get(name)
        confident = top >= threshold if threshold is not None else np.ones(len(top), bool)
        row = {"threshold": None if threshold is None else round(float(threshold), 6),
               "flagged": float(np.mean(~confident)), "confident": int(confident.sum()),
               "accuracy": float(np.mean(pred == truth)),
               "accuracy_confident": float(np.mean(pred[confident] == truth[confident])) if confident.any() else None}
        if name != names[0]:
            differ = pred != ref
            row.update(agreement=float(np.mean(~differ)),
                       agreement_confident=float(np.mean(~differ[confident])) if confident.any() else None,
                       disagreements_outside=int((differ & confident).sum()))
        out[name] = row
    return out


def risk_coverage(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(threshold, coverage, risk)``: answering only the photos whose top score is at least each
    threshold covers that share of them with that error rate (best answers first)."""
    top, pred = scores.max(axis=1), scores.argmax(axis=1)
    order = np.argsort(-top, kind="stable")
    wrong = np.cumsum(pred[order] != np.asarray(truth)[order])
    kept = np.arange(1, len(top) + 1)
    return top[order], kept / len(top), wrong / kept


def plot_risk_coverage(ev, path: Path) -> None:
    """Error rate against the share answered, for each model, with its band marked."""
    from edgeres.plots import figure

    with figure(path, figsize=(6.4, 4.2)) as (fig, ax):
        for name, scores in ev.probabilities.items():
            _, coverage, risk = risk_coverage(scores, np.asarray(ev.truth))
            line, = ax.plot(coverage, risk, label=Path(name).name)
            threshold = ev.uncertain_below.get(name)
            if threshold is not None:
                share = float(np.mean(scores.max(axis=1) >= threshold))
                at = max(0, int(round(share * len(coverage))) - 1)
                ax.plot([coverage[at]], [risk[at]], "o", color=line.get_color())
                ax.annotate(f"band {threshold:.3g}: answers {share:.0%}", (coverage[at], risk[at]),
                            textcoords="offset points", xytext=(-10, 8), ha="right", fontsize=8)
        ax.set_xlabel("coverage (share of photos answered, most confident first)")
        ax.set_ylabel("risk (error rate of the answered)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("risk-coverage: what flagging low top scores buys")
