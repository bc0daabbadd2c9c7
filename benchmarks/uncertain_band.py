"""Issue 26: does the uncertain band hold on photos it was not measured on?

    # the reference bundle (a few minutes; its models are all this script needs)
    edgeres export ../shared/models/resnet50-160-scratch --int8 --resize bilinear --out /tmp/band-ref \
        --data ../shared/data/cats_and_dogs_filtered
    python benchmarks/uncertain_band.py scores --bundle /tmp/band-ref     # slow: every photo, every path
    python benchmarks/uncertain_band.py report --bundle /tmp/band-ref     # the tables of uncertain_band.md
    python benchmarks/uncertain_band.py mediapipe --bundle /tmp/band-ref  # MediaPipe, default options

``scores`` runs float32, float16 and int8 (XNNPACK) through LiteRT on every validation and train
photo, with edgeres's own pixels, and int8 on LiteRT's built-in kernels on every photo whose top
score is below BUILTIN_BELOW on some path (the built-in kernels take ~0.5 s a photo here; a photo
all paths answer above it would need a score to move by more than 0.25 to flip). It caches
them in OUT/scores.npz. ``report`` measures the band with edgeres.export.band on one half of the
validation photos and tests it on the other half and on the train photos (seen in training,
never by the export), and the other way round.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgeres.evaluate import labelled_images
from edgeres.export.band import BUILTIN_MIN, BUILTIN_SHARE, describe, measure, path_name
from edgeres.preprocess import decode, to_pixels
from edgeres.runtime import Classifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cats_and_dogs_filtered"
OUT = Path("/tmp/uncertain_band")
BUILTIN_BELOW = 0.75
SEED = 0


def collect(bundle: Path, data: Path, out: Path) -> None:
    models = {"float32": "model_float32.tflite", "float16": "model_float16.tflite",
              path_name("xnnpack"): "model_int8.tflite"}
    clfs = {k: Classifier(bundle / f, accelerator="cpu") for k, f in models.items()}
    builtin = Classifier(bundle / "model_int8.tflite", accelerator="cpu", kernels="builtin")
    saved = {}
    for split in ("validation", "train"):
        classes, items = labelled_images(data, split)
        t = time.perf_counter()
        scores = {k: np.zeros((len(items), len(classes)), np.float32) for k in (*clfs, path_name("builtin"))}
        scores[path_name("builtin")][:] = np.nan
        for i, (path, _) in enumerate(items):
            pixels = to_pixels(decode(path), clfs["float32"].input_size, clfs["float32"].resize)
            for k, clf in clfs.items():
                scores[k][i] = clf.predict_pixels(pixels).probabilities
            if min(float(scores[k][i].max()) for k in clfs) < BUILTIN_BELOW:
                scores[path_name("builtin")][i] = builtin.predict_pixels(pixels).probabilities
        print(f"{split}: {len(items)} photos in {time.perf_counter() - t:.0f} s, built-in kernels on "
              f"{int((~np.isnan(scores[path_name('builtin')][:, 0])).sum())}")
        saved.update({f"{split}/{k}": v for k, v in scores.items()})
        saved[f"{split}/paths"] = np.array([str(p) for p, _ in items])
        saved[f"{split}/truth"] = np.array([label for _, label in items])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "scores.npz", **saved)


def load(out: Path) -> dict:
    raw = np.load(out / "scores.npz")
    sets = {}
    for key in raw.files:
        split, name = key.split("/", 1)
        sets.setdefault(split, {})[name] = raw[key]
    return sets


def subset(split: dict, idx) -> tuple[dict, np.ndarray]:
    paths = [k for k in split if k not in ("paths", "truth")]
    return {k: split[k][idx] for k in paths}, split["truth"][idx]


def as_export(scores: dict) -> dict:
    """The scores an export measures on: the built-in kernels on its least confident share only."""
    ref = scores[path_name("xnnpack")]
    keep = np.argsort(ref.max(axis=1), kind="stable")[:max(BUILTIN_MIN, int(np.ceil(BUILTIN_SHARE * len(ref))))]
    builtin = np.full_like(ref, np.nan)
    builtin[keep] = scores[path_name("builtin")][keep]
    assert not np.isnan(builtin[keep]).any(), "run `scores` with a higher BUILTIN_BELOW"
    return {**scores, path_name("builtin"): builtin}


def test(scores: dict, truth: np.ndarray, threshold: float) -> dict:
    """What the band does on these photos, per path against float32."""
    int8 = path_name("xnnpack")
    top = {k: v.max(axis=1) for k, v in scores.items()}
    label = {k: v.argmax(axis=1) for k, v in scores.items()}
    ran = {k: ~np.isnan(v[:, 0]) for k, v in scores.items()}
    per_path = {}
    for k in scores:
        if k == "float32":
            continue
        differ = ran[k] & (label[k] != label["float32"])
        per_path[k] = {"photos": int(ran[k].sum()), "differ": int(differ.sum()),
                       "outside": int((differ & ((top[k] >= threshold) | (top["float32"] >= threshold))).sum())}
    confident = top[int8] >= threshold
    return {"n": len(truth), "threshold": threshold, "flagged": float(np.mean(~confident)),
            **{f"any_pair_{k}": v for k, v in describe(scores, threshold).items()
               if k in ("disagreements", "outside")},
            "per_path": per_path,
            "accuracy_int8_all": float(np.mean(label[int8] == truth)),
            "accuracy_int8_confident": float(np.mean(label[int8][confident] == truth[confident])),
            "accuracy_float32_all": float(np.mean(label["float32"] == truth)),
            "accuracy_float32_confident": float(np.mean(label["float32"][confident] == truth[confident]))}


def report(bundle: Path, out: Path) -> None:
    sets = load(out)
    val, train = sets["validation"], sets["train"]
    n = len(val["truth"])
    order = np.random.default_rng(SEED).permutation(n)
    halves = {"A": np.sort(order[: n // 2]), "B": np.sort(order[n // 2:])}
    rows = []
    for measured_on, tested_on in (("A", "B"), ("B", "A")):
        scores, _ = subset(val, halves[measured_on])
        band = measure(as_export(scores))
        naive = band["max_disagreement_score"]
        for name, (s, t) in {f"validation {tested_on}": subset(val, halves[tested_on]),
                             "train": subset(train, slice(None))}.items():
            rows.append({"band from": f"validation {measured_on}", "tested on": name, "band": band,
                         "result": test(s, t, band["threshold"]),
                         "naive": test(s, t, naive + 1e-9) if naive is not None else None})
    record = json.loads((bundle / "edgeres.json").read_text()).get("uncertain") or {}
    if record.get("threshold"):
        s, t = subset(train, slice(None))
        rows.append({"band from": "the export (all validation)", "tested on": "train", "band": record,
                     "result": test(s, t, record["threshold"]), "naive": None})
    (out / "report.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    for r in rows:
        b, res = r["band"], r["result"]
        print(f"band from {r['band from']} (threshold {b['threshold']}, expected reversible above it "
              f"{b.get('expected_reversible')}, flags {b.get('flagged', 0):.1%} there, "
              f"{b.get('disagreements')} disagreements, max disagreement score {b.get('max_disagreement_score')}) "
              f"tested on {r['tested on']} (n={res['n']}): flagged {res['flagged']:.1%}, "
              f"any-pair disagreements {res['any_pair_disagreements']} of which outside {res['any_pair_outside']}; "
              + "; ".join(f"{k}: {v['differ']} differ from float32 on {v['photos']}, {v['outside']} outside"
                          for k, v in res["per_path"].items())
              + f"; int8 accuracy all {res['accuracy_int8_all']:.2%} confident {res['accuracy_int8_confident']:.2%}"
              f"; float32 all {res['accuracy_float32_all']:.2%} confident {res['accuracy_float32_confident']:.2%}")
        if r["naive"]:
            nv = r["naive"]
            print(f"    naive band (largest disagreement top score {b['max_disagreement_score']}): flagged "
                  f"{nv['flagged']:.1%}, outside {nv['any_pair_outside']} of {nv['any_pair_disagreements']}")


def mediapipe(bundle: Path, out: Path, split: str) -> None:
    from edgeres.clients import mediapipe_scores

    model = bundle / "model_int8.tflite"
    clf = Classifier(model, accelerator="cpu")
    sets = load(out)[split]
    paths, ours = sets["paths"], sets[path_name("xnnpack")]
    t = time.perf_counter()
    theirs = mediapipe_scores(model, list(paths), default_options=True)
    flagged = ours.max(axis=1) < clf.uncertain_below
    none = np.array([isinstance(r, np.ndarray) and r.size == 0 for r in theirs])
    failed = sum(isinstance(r, str) for r in theirs)
    answered = [i for i in np.flatnonzero(~flagged) if isinstance(theirs[i], np.ndarray) and theirs[i].size]
    agree = np.mean([int(np.argmax(theirs[i])) == int(np.argmax(ours[i])) for i in answered])
    result = {"split": split, "n": len(paths), "threshold": clf.uncertain_below, "flagged": int(flagged.sum()),
              "flagged_no_category": float(np.mean(none[flagged])), "confident": int((~flagged).sum()),
              "confident_no_category": int(none[~flagged].sum()), "agreement_on_confident": float(agree),
              "failed": failed, "seconds": round(time.perf_counter() - t),
              # edgeres's top score where the two part: a flagged photo MediaPipe answers, or the reverse
              "misses": sorted(round(float(ours[i].max()), 4) for i in range(len(paths))
                               if bool(flagged[i]) != bool(none[i]))}
    (out / f"mediapipe_{split}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("scores", "report", "mediapipe"))
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/band-ref"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--split", default="train", help="mediapipe: which photos")
    a = ap.parse_args()
    {"scores": lambda: collect(a.bundle, a.data, a.out), "report": lambda: report(a.bundle, a.out),
     "mediapipe": lambda: mediapipe(a.bundle, a.out, a.split)}[a.step]()
