"""edgeres qat (issue 27): the fake-quantized twin, its int8 export against its own forward pass
on real photos, the export's "qat" record, evaluate on a run directory, and resume after Ctrl-C."""

from __future__ import annotations

import json

import numpy as np
import pytest

QAT_LR = 1e-4  # larger than the default, so a few steps of a tiny model visibly move its weights


@pytest.fixture(scope="module")
def qat_run(trained_run, tmp_path_factory):
    from edgeres.qat import qat

    out = tmp_path_factory.mktemp("qat") / "tiny-qat"
    qat(trained_run, out, epochs=1, learning_rate=QAT_LR, batch_size=16, calibration_size=64, max_per_class=80, verbose=0)
    return out


@pytest.fixture(scope="module")
def qat_export(qat_run, tmp_path_factory):
    from edgeres.export import export

    return export(qat_run, out=tmp_path_factory.mktemp("qat-export") / "tiny-qat", formats=("int8", "float32"),
                  calibration_size=16, max_drop=100.0, verify_limit=120, progress=False, log=lambda m: None)


def _photos(root, n=12):
    return sorted((root / "validation").glob("*/*.jpg"))[:: max(1, 200 // n)][:n]


def test_float_twin_is_the_trained_model_and_fake_quant_moves_it(trained_run, quant_dataset):
    from edgeres.config import run_resize
    from edgeres.model import load_model
    from edgeres.preprocess import load_pixels
    from edgeres.qat import set_initial_ranges
    from edgeres.qat_model import fake_quant, fake_quant_points, qat_classifier

    original = load_model(trained_run / "model.keras")
    resize = run_resize(json.loads((trained_run / "config.json").read_text())["train"])
    x = np.stack([load_pixels(p, 64, resize) for p in _photos(quant_dataset, 16)])
    twin = qat_classifier(original, "resnet-tiny")
    # BatchNorm folded into each conv computes the same function as conv -> BN (float, no rounding).
    with fake_quant(twin, enabled=False):
        np.testing.assert_allclose(twin(x.astype(np.float32)), original(x.astype(np.float32), training=False),
                                   atol=2e-5)
    set_initial_ranges(twin, list(x))
    points = fake_quant_points(twin)
    # input, normalize, conv1, 4 blocks x (shortcut + 3 convs + add), avg pool, logits
    assert len(points) == 3 + 4 * 5 + 2
    assert (float(points[0].range_min.numpy()), float(points[0].range_max.numpy())) == (0.0, 255.0)
    quantized = np.asarray(twin(x.astype(np.float32)))
    diff = np.abs(quantized - np.asarray(original(x.astype(np.float32), training=False))).max(axis=1)
    assert 0 < diff.mean() < 0.05  # rounding is on, and small


def test_resnet50v2_is_refused_with_the_reason():
    from edgeres.model import build_classifier
    from edgeres.qat_model import QATError, qat_classifier

    with pytest.raises(QATError, match="arch=resnet50v2.*pre-activation"):
        qat_classifier(build_classifier("resnet50v2", 2, 32), "resnet50v2")


def test_int8_export_reproduces_the_qat_forward_on_real_photos(qat_run, qat_export, trained_run):
    bundle = qat_export.bundle
    meta = json.loads((bundle / "edgeres.json").read_text())
    record = meta["qat"]
    assert record == qat_export.qat
    assert record["parent"] == str(trained_run.resolve()) and record["target"] == "distill"
    assert record["n"] == meta["verification"]["n"] == 120  # the photos export verifies on
    vs_qat = record["vs_qat_forward"]
    # The int8 model computes the QAT forward pass: only int8 arithmetic and rounding ties differ.
    assert vs_qat["agreement"] >= 0.98, vs_qat
    assert vs_qat["mean_abs_prob_diff"] <= 0.01, vs_qat
    assert vs_qat["p99_abs_prob_diff"] <= 0.05, vs_qat
    assert 0.0 < record["vs_parent_float32"]["mean_abs_prob_diff"] < 0.2
    assert meta["calibration"]["ranges"] == "qat"
    assert meta["verification"]["int8"]["accuracy"] == pytest.approx(record["int8_accuracy"])
    assert "int8 vs the QAT model" in qat_export.summary()
    # uint8 pixels in, raw bytes (scale 1, zero point 0), as every edgeres int8 export.
    from edgeres.export.convert import _input_quantization, float_tensors

    blob = (bundle / "model_int8.tflite").read_bytes()
    assert _input_quantization(blob) == (1.0, 0) and float_tensors(blob) == []


def test_evaluate_takes_the_run_directory(qat_run, qat_export, quant_dataset):
    from typer.testing import CliRunner

    from edgeres.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(qat_run), str(qat_export.bundle / "model_int8.tflite"),
                                      "--data", str(quant_dataset), "--limit", "40", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["models"][0]["backend"] == "keras/tensorflow (fake quant)"
    assert report["models"][0]["n"] == report["models"][1]["n"] == 40
    assert report["agreement"] >= 0.95
    assert report["mean_abs_prob_diff"][str(qat_export.bundle / "model_int8.tflite")] <= 0.01


def test_qat_run_resumes_after_interrupt(trained_run, tmp_path):
    import keras

    from edgeres.model import load_model
    from edgeres.qat import qat

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # what Ctrl-C does, right after the checkpoint was written

    out = tmp_path / "qat"
    kw = dict(epochs=2, learning_rate=QAT_LR, batch_size=16, calibration_size=16, max_per_class=48, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        qat(trained_run, out, callbacks=[StopAfterFirstEpoch()], **kw)
    steps = 2 * 48 // 16
    import edgeres.qat_model  # noqa: F401

    saved = load_model(out / "last.keras")
    assert int(saved.optimizer.iterations.numpy()) == steps
    config = json.loads((out / "config.json").read_text())
    assert config["qat"]["parent"] == str(trained_run.resolve()) and config["parent"] == config["qat"]["parent"]
    assert config["train"]["epochs"] == 2 and config["labels"] == ["cats", "dogs"]
    ranges = {layer.name: float(layer.range_max.numpy()) for layer in saved.layers if hasattr(layer, "range_max")}

    result = qat(trained_run, out, resume=True, verbose=0)
    assert result.epochs_done == 2 and [h["epoch"] for h in result.history] == [1, 2]
    final = load_model(out / "last.keras")
    assert int(final.optimizer.iterations.numpy()) == 2 * steps
    # The ranges went on from where the first epoch left them (tracked, not re-initialised).
    after = {layer.name: float(layer.range_max.numpy()) for layer in final.layers if hasattr(layer, "range_max")}
    assert after.keys() == ranges.keys() and after != ranges
    assert max(abs(after[k] - ranges[k]) / max(abs(ranges[k]), 1e-6) for k in ranges) < 0.5
