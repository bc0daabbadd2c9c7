"""Issue 26: the uncertain band, measured at export on real photos, carried in every .tflite's
metadata, honoured by MediaPipe's ImageClassifier and shown by predict, evaluate and the examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeres.clients import find_mediapipe_python
from edgeres.evaluate import labelled_images
from edgeres.export import ExportError
from edgeres.export.band import BUILTIN_MIN, RISK, STEP, check_setting, describe, measure, path_name
from edgeres.metadata import read_metadata
from edgeres.runtime import Classifier

pytestmark = pytest.mark.slow

EDGERES = [sys.executable, "-m", "edgeres.cli"]
ENV = {**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"}


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGERES, *map(str, args)], capture_output=True, text=True, timeout=600, env=ENV)


def _scores(model, items, kernels="xnnpack") -> np.ndarray:
    clf = Classifier(model, accelerator="cpu", kernels=kernels)
    return np.stack([clf.predict(p).probabilities for p, _ in items])  # labels: cats, dogs = dataset order


@pytest.fixture(scope="module")
def verified(tiny_export, quant_dataset):
    """Every path's scores on the photos the tiny export verified on, recomputed here, the built-in
    kernels on *all* of them (the export runs them on the least confident quarter only)."""
    _, items = labelled_images(quant_dataset)
    bundle = tiny_export.bundle
    return {"float32": _scores(bundle / "model_float32.tflite", items),
            path_name("xnnpack"): _scores(bundle / "model_int8.tflite", items),
            path_name("builtin"): _scores(bundle / "model_int8.tflite", items, "builtin")}


# -- how the band is measured ---------------------------------------------------------------------


def test_export_measures_the_band_by_its_rule(tiny_export, verified):
    record = json.loads((tiny_export.bundle / "edgeres.json").read_text())["uncertain"]
    assert record["source"] == "measured" and record["photos"] == tiny_export.verification["n"] == 200
    assert record["paths"] == ["float32", path_name("xnnpack"), path_name("builtin")]
    assert record["photos_per_path"][path_name("builtin")] == BUILTIN_MIN  # the least confident 15%, at least 48
    # The same band from the scores recomputed here, the built-in kernels on the same photos.
    scores = dict(verified)
    chosen = np.argsort(scores[path_name("xnnpack")].max(axis=1), kind="stable")[:BUILTIN_MIN]
    scores[path_name("builtin")] = np.full_like(scores["float32"], np.nan)
    scores[path_name("builtin")][chosen] = verified[path_name("builtin")][chosen]
    again = measure(scores)
    assert again["threshold"] == record["threshold"] and again["disagreements"] == record["disagreements"]
    assert 0.5 < record["threshold"] < 0.8, record  # a band, not everything
    assert record["expected_reversible"] <= RISK
    assert record["threshold"] >= record["max_disagreement_score"] + STEP - 1e-9
    top = verified[path_name("xnnpack")].max(axis=1)
    assert record["flagged"] == pytest.approx(np.mean(top < record["threshold"]), abs=1e-6)
    # The promise, with the built-in kernels now on every photo: no two paths give different
    # answers where any of them answers at or above the band.
    got = describe(verified, record["threshold"])
    assert got["outside"] == 0 and got["disagreements"] >= 1, got
    assert f"uncertain below top score {record['threshold']}" in tiny_export.summary()


def test_a_lower_risk_means_a_wider_band(verified, monkeypatch):
    """The risk target is what sets the band: asking for fewer reversible answers widens it."""
    import edgeres.export.band as band

    base = measure(verified)
    monkeypatch.setattr(band, "RISK", RISK / 20)
    stricter = measure(verified)
    assert stricter["threshold"] > base["threshold"] and stricter["flagged"] > base["flagged"]
    assert stricter["expected_reversible"] <= RISK / 20


def test_a_band_below_the_rule_leaves_disagreements_outside(verified):
    """describe() can fail: at the largest disagreement's own top score it counts that photo out."""
    got = describe(verified, 0.5 + STEP)
    worst = got["max_disagreement_score"]
    assert got["disagreements"] >= 1 and worst is not None
    assert describe(verified, worst)["outside"] >= 1
    assert describe(verified, worst + 1e-6)["outside"] == 0


def test_every_model_carries_the_band(tiny_bundle):
    threshold = json.loads((tiny_bundle / "edgeres.json").read_text())["uncertain"]["threshold"]
    for name in ("model_int8.tflite", "model_float32.tflite"):
        assert read_metadata(tiny_bundle / name)["score_threshold"] == np.float32(threshold)
        assert Classifier(tiny_bundle / name, accelerator="cpu").uncertain_below == np.float32(threshold)


# -- --uncertain-below ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.5, "0.5", 0.2, 1, "1.0", "nan", "inf", "-0.3", "sure"])
def test_bad_thresholds_are_refused(value):
    with pytest.raises(ExportError, match="must lie above 1/2 = 0.500 .* and below 1; or pass 'off'"):
        check_setting(value, 2)


def test_good_settings():
    assert check_setting(None, 2) is None and check_setting("OFF", 2) == "off"
    assert check_setting("0.7", 2) == 0.7 and check_setting(0.34, 3) == 0.34


@pytest.mark.parametrize("value", ["0.5", "nan", "1"])
def test_cli_refuses_a_bad_threshold_in_one_line(trained_run, tmp_path, value):
    out = tmp_path / "bundle"
    proc = cli("export", trained_run, "--int8", "--out", out, "--uncertain-below", value)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"--uncertain-below {value}" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_cli_sets_the_band_by_hand(trained_run, tmp_path):
    out = tmp_path / "manual"
    proc = cli("export", trained_run, "--int8", "--out", out, "--uncertain-below", "0.7", "--calibration-size",
               "32", "--verify-limit", "40", "--no-layer-report", "--no-client-check")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "edgeres.json").read_text())["uncertain"]
    assert record["source"] == "manual" and record["threshold"] == 0.7 and 0.5 < record["measured_threshold"] < 1
    assert "uncertain below top score 0.7 (set by hand" in proc.stdout
    assert Classifier(out / "model_int8.tflite", accelerator="cpu").uncertain_below == np.float32(0.7)


def test_band_off(trained_run, tmp_path, quant_dataset):
    from edgeres.export import export

    report = export(trained_run, out=tmp_path / "off", formats=("int8", "float32"), calibration_size=32,
                    verify_limit=40, layer_report=False, uncertain_below="off", log=lambda m: None)
    assert report.uncertain["source"] == "off" and report.uncertain["threshold"] is None
    assert report.uncertain["disagreements"] >= 0 and report.uncertain["flagged"] == 0
    assert "uncertain band: off" in report.summary()
    clf = Classifier(report.bundle / "model_int8.tflite", accelerator="cpu")
    assert read_metadata(clf.path)["score_threshold"] is None and clf.uncertain_below is None
    _, items = labelled_images(quant_dataset)
    assert not any(clf.predict(p).uncertain for p, _ in items[::10])


# -- surfaces -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_photos(tiny_bundle, small_dataset):
    """Validation photos, some under the tiny model's band and some above it."""
    clf = Classifier(tiny_bundle / "model_int8.tflite", accelerator="cpu")
    _, items = labelled_images(small_dataset)
    preds = [(p, clf.predict(p)) for p, _ in items]
    unsure = [p for p, pred in preds if pred.uncertain][:3]
    sure = [p for p, pred in preds if not pred.uncertain][:3]
    assert len(unsure) == len(sure) == 3, [round(pred.score, 3) for _, pred in preds]
    return unsure + sure


def test_predict_marks_uncertain_answers(tiny_bundle, mixed_photos):
    threshold = np.float32(json.loads((tiny_bundle / "edgeres.json").read_text())["uncertain"]["threshold"])
    proc = cli("predict", tiny_bundle, *mixed_photos, "--json", "--accelerator", "cpu")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["uncertain"] for r in records] == [True] * 3 + [False] * 3
    for r in records:
        assert {"label", "index", "score"} <= set(r) and r["uncertain"] is bool(r["score"] < threshold)
    table = cli("predict", tiny_bundle, *mixed_photos, "--accelerator", "cpu")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if ".jpg" in line]
    assert [("(not sure)" in row) for row in rows] == [True] * 3 + [False] * 3, table.stdout
    assert f"not sure: top score below {float(threshold):.3g}" in table.stdout


def test_evaluate_reports_confident_answers(tiny_bundle, small_dataset, tmp_path):
    f32, i8 = tiny_bundle / "model_float32.tflite", tiny_bundle / "model_int8.tflite"
    proc = cli("evaluate", f32, i8, "--data", small_dataset, "--json", "--report", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["uncertain"][str(i8)]
    _, items = labelled_images(small_dataset)
    truth = np.array([label for _, label in items])
    ours, ref = _scores(i8, items), _scores(f32, items)
    confident = ours.max(axis=1) >= np.float32(got["threshold"])
    assert 0 < got["confident"] == confident.sum() < len(items)
    assert got["flagged"] == pytest.approx(1 - confident.mean())
    assert got["accuracy_confident"] == pytest.approx(np.mean(ours.argmax(1)[confident] == truth[confident]))
    agree = ours.argmax(1) == ref.argmax(1)
    assert got["agreement_confident"] == pytest.approx(agree[confident].mean())
    assert got["disagreements_outside"] == int((~agree & confident).sum())
    assert (tmp_path / "report" / "risk_coverage.png").stat().st_size > 10_000
    text = cli("evaluate", f32, i8, "--data", small_dataset)
    assert f"not sure below top score {got['threshold']:.3g}: flags {got['flagged']:.1%}" in text.stdout


# -- MediaPipe, default options ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def banded(tiny_bundle, small_dataset, tmp_path_factory):
    """The tiny bundle's models with a band at the middle of its int8 scores on these photos, so
    about half are flagged (the tiny model's own band flags a few), written by embed_metadata as
    export writes it."""
    from edgeres.metadata import embed_metadata

    _, items = labelled_images(small_dataset)
    scores = sorted({float(s) for s in _scores(tiny_bundle / "model_int8.tflite", items).max(axis=1)})
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    out = tmp_path_factory.mktemp("banded")
    for variant in ("int8", "float32"):
        blob = (tiny_bundle / f"model_{variant}.tflite").read_bytes()
        md = read_metadata(blob)
        (out / f"model_{variant}.tflite").write_bytes(embed_metadata(
            blob, labels=md["labels"], name=md["name"], description=md["description"],
            input_size=md["input_size"], mean=md["mean"], std=md["std"], version=md["version"],
            extra_json=md["extra_json"], score_threshold=threshold))
    return out


@pytest.mark.skipif(find_mediapipe_python() is None,
                    reason="no MediaPipe interpreter: scripts/setup makes .venv-mediapipe (or set EDGERES_MEDIAPIPE_PYTHON)")
@pytest.mark.parametrize("variant", ["int8", "float32"])
def test_mediapipe_default_options_drop_uncertain_answers(banded, small_dataset, variant):
    """The band in the metadata, read by MediaPipe itself: with default options it returns no
    category for a photo predict flags, and predict's label for the others. (MediaPipe decodes the
    JPEG itself, so a score within 0.02 of the line may land on either side.)"""
    from edgeres.clients import mediapipe_scores

    clf = Classifier(banded / f"model_{variant}.tflite", accelerator="cpu")
    _, items = labelled_images(small_dataset)
    paths = [p for p, _ in items]
    ours = [clf.predict(p) for p in paths]
    theirs = mediapipe_scores(clf.path, paths, default_options=True)
    clear = [i for i, pred in enumerate(ours) if abs(pred.score - clf.uncertain_below) > 0.02]
    flagged = [i for i in clear if ours[i].uncertain]
    answered = [i for i in clear if not ours[i].uncertain]
    assert len(flagged) >= 10 and len(answered) >= 10, [p.score for p in ours]
    assert all(theirs[i].size == 0 for i in flagged), [theirs[i] for i in flagged]
    for i in answered:
        assert np.count_nonzero(theirs[i]) == 1 and int(np.argmax(theirs[i])) == ours[i].index, (paths[i], theirs[i])
    # An app's own threshold above 0 overrides the band: every photo answered, both scores.
    every = mediapipe_scores(clf.path, paths[:6], classes=2)
    assert all(len(s) == 2 and abs(s.sum() - 1) < 0.02 for s in every), every
