"""int8 export: the quantized model is as good as the float one, on real validation photos."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeres import calibrate as calib
from edgeres.data import scan
from edgeres.export import ExportError, QuantizationCheckFailed, export, float_tensors
from edgeres.runtime import Classifier

pytestmark = pytest.mark.slow


def test_int8_matches_float_on_validation_photos(tiny_export):
    v = tiny_export.verification
    assert v["n"] == 200
    # The model learned something, so agreement is not two constant predictors agreeing.
    assert v["float32"]["accuracy"] >= 0.55, v
    assert v["int8"]["accuracy"] >= v["float32"]["accuracy"] - 0.01, v
    assert v["agreement"] >= 0.97, v
    assert v["mean_abs_prob_diff"] < 0.05, v
    assert tiny_export.passed


def test_int8_is_integer_only_with_uint8_io_and_small(tiny_bundle):
    int8 = (tiny_bundle / "model_int8.tflite").read_bytes()
    f32 = (tiny_bundle / "model_float32.tflite").read_bytes()
    assert float_tensors(int8) == []
    assert float_tensors(f32)  # the check does see float tensors when they are there
    assert len(int8) <= 0.3 * len(f32), (len(int8), len(f32))
    clf = Classifier(tiny_bundle / "model_int8.tflite", accelerator="cpu")
    info = clf.describe()
    assert info["input"]["dtype"] == "uint8" and info["output"]["dtype"] == "uint8"
    # Raw pixels in: the input quantization is the identity on bytes.
    assert (info["input"]["scale"], info["input"]["zero_point"]) == (1.0, 0)


def test_float32_tflite_matches_keras(trained_run, tiny_bundle, quant_dataset):
    from edgeres.model import load_model
    from edgeres.preprocess import load_pixels

    model = load_model(trained_run / "model.keras")
    clf = Classifier(tiny_bundle / "model_float32.tflite", accelerator="cpu")
    paths = sorted((quant_dataset / "validation").rglob("*.jpg"))[::25]
    pixels = np.stack([load_pixels(p, 64) for p in paths])
    keras_probs = model.predict(pixels.astype(np.float32), verbose=0)
    lite_probs = np.stack([clf.predict_pixels(px).probabilities for px in pixels])
    np.testing.assert_allclose(lite_probs, keras_probs, atol=1e-4)


def test_bundle_describes_itself(tiny_bundle):
    from edgeres.metadata import read_labels, read_metadata

    meta = json.loads((tiny_bundle / "edgeres.json").read_text())
    assert meta["labels"] == ["cats", "dogs"]
    assert meta["status"] == "passed"
    assert meta["input"]["size"] == [64, 64]
    manifest = calib.load(tiny_bundle / "calibration.txt")
    assert meta["calibration"]["sha256"] == manifest.sha256
    assert meta["calibration"]["per_class"] == {"cats": 32, "dogs": 32}
    assert "tensorflow" in meta["versions"] or "tensorflow-cpu" in meta["versions"]
    assert meta["versions"]["ai-edge-quantizer"]  # what made the int8 model
    for name in ("model_int8.tflite", "model_float32.tflite"):
        assert read_labels(tiny_bundle / name) == ["cats", "dogs"]
        embedded = json.loads(read_metadata(tiny_bundle / name)["extra_json"])
        assert embedded["verification"]["agreement"] == meta["verification"]["agreement"]
    rows = (tiny_bundle / "layer_errors.csv").read_text().splitlines()
    assert rows[0].startswith("layer,op,rmse_over_scale")
    assert any(r.startswith("conv2_block1_1_conv,") for r in rows), "layers are named by their Keras names"
    assert any(r.startswith("conv1_conv,") for r in rows)
    assert not any(r.startswith("resnet-tiny,") for r in rows), "named after the backbone, not the layer"
    assert any(r.startswith("probabilities,SOFTMAX,") for r in rows), "the output is named by its layer, not its tensor"
    assert (tiny_bundle / "layer_errors.png").stat().st_size > 1000
    import csv

    table = list(csv.DictReader((tiny_bundle / "layer_errors.csv").open()))
    clipped = [float(r["clipped_fraction"]) for r in table]
    rounding = [float(r["in_range_rmse_over_scale"]) for r in table]
    assert all(0.0 <= c <= 1.0 for c in clipped)
    assert 0.2 < float(np.median(rounding)) < 0.6, "values inside the range round like a uniform quantizer"


def test_layer_report_names_every_row_by_a_layer_of_the_model(trained_run, tiny_bundle):
    """Each row of layer_errors.csv names a layer a user can find with ``model.get_layer``, the
    softmax included (its tensor is the graph's output, named by the signature, not a layer)."""
    import csv

    import keras

    from edgeres.export.report import _all_layers
    from edgeres.model import load_model

    model = load_model(trained_run / "model.keras")
    layers = {layer.name for layer in _all_layers(model) if not isinstance(layer, keras.Model)}
    table = list(csv.DictReader((tiny_bundle / "layer_errors.csv").open()))
    unnamed = [(r["layer"], r["tensor"]) for r in table if r["layer"] not in layers]
    assert not unnamed, unnamed
    assert [r["layer"] for r in table if r["op"] == "SOFTMAX"] == ["probabilities"]
    assert len({r["layer"] for r in table}) >= 0.9 * len(table), "rows are told apart by their names"


def test_same_seed_same_manifest_and_different_seed_differs(quant_dataset):
    dataset = scan(quant_dataset, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b, c = (calib.draw(dataset, 40, seed=s) for s in (7, 7, 8))
    assert a.text() == b.text()
    assert a.sha256 != c.sha256
    assert a.class_counts() == {"cats": 20, "dogs": 20}


def test_calibration_size_warnings_and_errors(quant_dataset, tmp_path):
    dataset = scan(quant_dataset, progress=False)
    with pytest.warns(UserWarning, match="only 300 readable"):
        calib.draw(dataset, 1000)
    with pytest.raises(calib.CalibrationError, match="at least 1"):
        calib.draw(dataset, 0)
    (tmp_path / "empty.txt").write_text(calib.HEADER + "\n# root: /nowhere\n")
    with pytest.raises(calib.CalibrationError, match="lists no images"):
        calib.load(tmp_path / "empty.txt")


def test_changed_or_missing_calibration_file_is_named(quant_dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(quant_dataset, root, symlinks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = calib.draw(scan(root, progress=False), 10, seed=1).save(tmp_path / "m.txt")
    rel_changed, _ = calib.load(manifest).entries[0]
    rel_missing, _ = calib.load(manifest).entries[-1]
    (root / rel_changed).write_bytes((root / rel_changed).read_bytes() + b"\0")
    (root / rel_missing).unlink()
    with pytest.raises(calib.CalibrationError) as err:
        calib.load(manifest)
    assert rel_changed in str(err.value) and "changed" in str(err.value)
    assert rel_missing in str(err.value) and "missing" in str(err.value)


def test_max_drop_trips_on_a_model_made_to_quantize_badly(trained_run, quant_dataset, tmp_path):
    """One pooled feature made huge (and ignored by the float head) wrecks the int8 activation range."""
    import shutil

    from edgeres.model import backbone_of, load_model

    run = tmp_path / "bad_run"
    shutil.copytree(trained_run, run)
    model = load_model(run / "model.keras")
    bn = backbone_of(model).get_layer("conv5_block1_3_bn")
    beta = bn.beta.numpy()
    beta[0] = 1e4  # channel 0 of the features becomes ~1e4 for every image...
    bn.beta.assign(beta)
    logits = model.get_layer("logits")
    kernel = logits.kernel.numpy()
    kernel[0, :] = 0.0  # ...and the float head ignores it: float predictions are unchanged
    logits.kernel.assign(kernel)
    model.save(run / "model.keras")

    out = tmp_path / "bundle"
    with pytest.raises(QuantizationCheckFailed) as err:
        export(run, out=out, formats=("int8", "float32"), calibration_size=32, max_drop=1.0,
               layer_report=False, log=lambda m: None)
    v = err.value.report.verification
    assert v["accuracy_drop_pp"] > 1.0
    assert "below float32" in str(err.value)
    meta = json.loads((out / "edgeres.json").read_text())
    assert meta["status"] == "failed" and (out / "FAILED").is_file()


def test_existing_bundle_needs_force_and_nothing_half_written(trained_run, tiny_bundle, tmp_path):
    with pytest.raises(FileExistsError, match="--force"):
        export(trained_run, out=tiny_bundle, formats=("float32",), log=lambda m: None)
    before = sorted(p.name for p in tiny_bundle.parent.iterdir())
    with pytest.raises(ExportError):
        export(trained_run, out=tmp_path / "b", formats=("int8", "float32"), calibration_size=8,
               float_layers=("no_such_layer",), layer_report=False, log=lambda m: None)
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    assert sorted(p.name for p in tiny_bundle.parent.iterdir()) == before


def test_float_layers_keep_named_layers_in_float(trained_run, tmp_path):
    report = export(trained_run, out=tmp_path / "mixed", formats=("int8", "float32"), calibration_size=16,
                    float_layers=("conv1_conv",), verify_limit=40, max_drop=100.0, layer_report=False,
                    log=lambda m: None)
    blob = (report.bundle / "model_int8.tflite").read_bytes()
    floats = float_tensors(blob)
    assert floats and any("conv1" in f for f in floats)
    clf = Classifier(report.bundle / "model_int8.tflite", accelerator="cpu")
    assert clf.input_dtype == np.uint8  # the app-facing interface stays raw pixels
    assert report.verification["agreement"] >= 0.9


@pytest.mark.parametrize("arch", ["resnet50", "resnet50v2", "resnet-tiny"])
def test_in_graph_normalization_survives_int8(arch):
    """Regression: an int8 REVERSE_V2 (the BGR flip of ResNet50 v1) came out garbage (error ~114)."""
    import keras
    import tensorflow as tf

    from edgeres.model import PREPROCESSING, Arch, PixelNormalization

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, PixelNormalization(**PREPROCESSING[Arch(arch)])(inputs))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1, 16, 16, 3)).astype(np.float32) for _ in range(16)]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in images)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type, conv.inference_output_type = tf.uint8, tf.int8
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=conv.convert())
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], images[0].astype(np.uint8))
    interp.invoke()
    scale, zero = out["quantization"]
    got = (interp.get_tensor(out["index"]).astype(np.float32) - zero) * scale
    expected = model(images[0]).numpy()
    assert np.abs(got - expected).max() <= scale, "error above one quantization step"


def test_float_first_layer_cannot_silently_change_the_interface(trained_run, tmp_path):
    """TF's quantizer left a float32 input when the first layer stayed float (and said success);
    the LiteRT Quantizer keeps uint8 raw pixels in and scores out, and export checks it."""
    from edgeres.export import _input_quantization, _io_types, float_tensors
    from edgeres.tflite import TensorType

    export(trained_run, out=tmp_path / "b", formats=("int8", "float32"), calibration_size=16,
           float_layers=("normalize",), layer_report=False, client_check=False, log=lambda m: None)
    blob = (tmp_path / "b" / "model_int8.tflite").read_bytes()
    assert _io_types(blob) == (TensorType.UINT8, TensorType.UINT8)
    assert _input_quantization(blob) == (1.0, 0)
    assert any("normalize" in t for t in float_tensors(blob))  # the layer really stayed float


# -- activation ranges --------------------------------------------------------------------


def test_robust_ranges_ignore_rare_outlier_images():
    from edgeres.export import robust_ranges

    rng = np.random.default_rng(0)
    hi = rng.uniform(0.9, 1.1, size=(60, 3)).astype(np.float32)
    lo = -hi
    hi[[7, 41], 0] = 500.0  # two images of sixty light tensor 0 up
    lo[13, 2] = -300.0
    r_lo, r_hi = robust_ranges(lo, hi)
    assert r_hi[0] < 1.2 and r_lo[2] > -1.2  # the outliers do not set the range...
    assert np.all(r_hi > 0.9) and np.all(r_lo < -0.9)  # ...the typical image is covered
    # Under one group's worth of images there is nothing to vote: the plain global min/max.
    few_lo, few_hi = robust_ranges(lo[:8], hi[:8])
    np.testing.assert_array_equal(few_hi, hi[:8].max(0))
    np.testing.assert_array_equal(few_lo, lo[:8].min(0))


def test_measured_ranges_match_keras_on_residual_blocks(trained_run, quant_dataset):
    """TF's calibrator over-states the range of a conv that feeds a residual ADD; edgeres's
    per-image measurement through LiteRT must agree with Keras itself."""
    import re

    import keras

    from edgeres import calibrate as calib
    from edgeres import data as data_lib
    from edgeres.export import HIST_KEYS, Format, _converter, _tensor_names, activation_stats, activation_tensors
    from edgeres.model import backbone_of, load_model
    from edgeres.preprocess import load_pixels

    model = load_model(trained_run / "model.keras")
    cal = calib.draw(data_lib.scan(quant_dataset, progress=False), 24, seed=0)
    skeleton = _converter(model, Format.FLOAT32, None, 64).convert()
    names = _tensor_names(skeleton)
    pixels = [load_pixels(p, 64)[None].astype(np.float32) for p in cal.paths]

    backbone = backbone_of(model)
    checked = 0
    for t in activation_tensors(skeleton):
        match = re.search(r"/(conv\d_block\d_3_bn)(_\d+)?/", names[t].split(";")[0])
        if not match:
            continue
        layer = match.group(1)
        probe = keras.Model(backbone.input, backbone.get_layer(layer).output)
        normalized = model.get_layer("normalize")(np.concatenate(pixels))
        expected = np.asarray(probe(normalized)).reshape(len(pixels), -1)
        stats = activation_stats(skeleton, [t], iter(pixels))
        np.testing.assert_allclose(stats.hi[:, 0], expected.max(1), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(stats.lo[:, 0], expected.min(1), rtol=1e-3, atol=1e-3)
        # The histogram holds every value, on the right side of zero.
        assert abs(stats.histograms[0].sum() - expected.size) <= 0.01 * expected.size
        assert abs(stats.histograms[0][HIST_KEYS // 2:].sum() - np.sum(expected < 0)) <= 0.01 * expected.size
        checked += 1
    assert checked >= 2  # resnet-tiny has residual blocks: their outputs were found and compared


def test_rare_outlier_images_break_minmax_not_the_default(trained_run, quant_dataset, tmp_path):
    """Two odd images among 64 calibration photos (pixel checkerboards) light up a conv1 channel
    that no photo lights and nothing downstream reads. With TF's min/max ranges those two images
    crush every other channel of that tensor; the default (relative MSE: each image's error
    counts against its own signal) and robust ranges ignore them and int8 stays faithful."""
    import hashlib
    import shutil

    import keras
    from PIL import Image

    from edgeres import calibrate as calib
    from edgeres import data as data_lib
    from edgeres.model import backbone_of, load_model
    from edgeres.preprocess import load_pixels

    data = tmp_path / "data"
    shutil.copytree(quant_dataset, data)
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    board = np.concatenate([checker[:, :32], 255 - checker[:, 32:]], axis=1)  # both phases
    odd = []
    for cls in ("cats", "dogs"):
        path = data / "train" / cls / "zz_checkerboard.png"
        Image.fromarray(np.stack([board] * 3, -1)).save(path)
        odd.append((path.relative_to(data).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest()))
    photos = calib.draw(data_lib.scan(data, progress=False), 62, seed=0)
    manifest = calib.CalibrationSet(data, photos.entries + tuple(odd), seed=0, requested=64).save(tmp_path / "cal.txt")

    run = tmp_path / "outlier_run"
    shutil.copytree(trained_run, run)
    model = load_model(run / "model.keras")
    backbone = backbone_of(model)
    conv1, bn = backbone.get_layer("conv1_conv"), backbone.get_layer("conv1_bn")
    kernel = conv1.kernel.numpy()
    kernel[..., 0] = np.where(np.indices((7, 7)).sum(0) % 2, 1.0, -1.0)[..., None] / kernel[..., 0].size
    conv1.kernel.assign(kernel)  # channel 0: a pixel-checkerboard detector
    for consumer in ("conv2_block1_0_conv", "conv2_block1_1_conv"):  # nothing reads channel 0
        k = backbone.get_layer(consumer).kernel
        weights = k.numpy()
        weights[:, :, 0, :] = 0.0
        k.assign(weights)
    probe = keras.Model(backbone.input, conv1.output)

    def peak(paths):
        pixels = np.stack([load_pixels(p, 64) for p in paths]).astype(np.float32)
        return np.asarray(probe(model.get_layer("normalize")(pixels)))[..., 0].reshape(len(paths), -1).max(1)

    natural = peak(photos.paths).max()
    boards = peak([data / rel for rel, _ in odd])
    assert boards.min() > 2 * natural > 0  # the premise: only the odd images light channel 0
    gain = 1e4 / (boards.min() - natural)  # a board peaks at >= 1e4, a photo at <= 0
    for name, value in (("moving_mean", 0.0), ("moving_variance", 1.0 - bn.epsilon), ("gamma", gain),
                        ("beta", -gain * natural)):
        var = getattr(bn, name)
        values = var.numpy()
        values[0] = value
        var.assign(values)
    model.save(run / "model.keras")

    common = dict(formats=("int8", "float32"), data=data, calibration=manifest, max_drop=1.0,
                  layer_report=False, log=lambda m: None)
    with pytest.raises(QuantizationCheckFailed) as err:
        export(run, out=tmp_path / "minmax", ranges="minmax", **common)
    assert err.value.report.verification["agreement"] < 0.9
    assert "--ranges relative-mse" in str(err.value)  # the message names the way out

    report = export(run, out=tmp_path / "default", **common)
    assert report.passed and report.verification["agreement"] >= 0.97
    meta = json.loads((tmp_path / "default" / "edgeres.json").read_text())
    assert meta["calibration"]["ranges"] == "relative-mse"
    assert export(run, out=tmp_path / "robust", ranges="robust", **common).verification["agreement"] >= 0.97


def test_dark_calibration_images_still_give_raw_pixel_input(trained_run, quant_dataset, tmp_path):
    """Apps feed image bytes: the int8 input must stay scale 1, zero point 0 even when no
    calibration image reaches 255 (the range is pinned to 0..255, not measured)."""
    from PIL import Image

    from edgeres import calibrate as calib
    from edgeres import data as data_lib
    from edgeres.export import _input_quantization, convert_int8
    from edgeres.model import load_model

    for cls in ("cats", "dogs"):
        folder = tmp_path / "dark" / cls
        folder.mkdir(parents=True)
        for p in sorted((quant_dataset / "train" / cls).iterdir())[:12]:
            dark = (np.asarray(Image.open(p).convert("RGB"), np.float32) * 0.3).astype(np.uint8)
            Image.fromarray(dark).save(folder / f"{p.stem}.png")
    cal = calib.draw(data_lib.scan(tmp_path / "dark", progress=False), 24, seed=0)
    assert max(int(np.asarray(Image.open(p)).max()) for p in cal.paths) < 100
    model = load_model(trained_run / "model.keras")
    for ranges in ("relative-mse", "mse", "percentile", "robust", "minmax"):
        blob, _ = convert_int8(model, cal, 64, ranges=ranges)
        assert _input_quantization(blob) == (1.0, 0), ranges


# -- range rules: MSE-optimal clipping and percentiles, against brute force ---------------------


def _fake_quant_sse(x: np.ndarray, lo: float, hi: float) -> float:
    """Summed squared error of TFLite's asymmetric 8-bit quantizer with range lo..hi (zero point
    nudged to an integer, so 0 is exact), applied to every value: the independent reference."""
    step = (hi - lo) / 255
    zero = np.round(-lo / step)
    q = np.clip(np.round(x / step) + zero, 0, 255)
    return float(np.sum(((q - zero) * step - x.astype(np.float64)) ** 2))


def _grid_minimum(sse, lo: float, hi: float, points: int = 14) -> float:
    """Where ``sse`` is least: a coarse grid over lo..hi, then a fine one around its best point."""
    coarse = np.linspace(lo, hi, points)
    best = coarse[int(np.argmin([sse(c) for c in coarse]))]
    width = (hi - lo) / (points - 1)
    fine = np.linspace(max(lo, best - width), min(hi, best + width), points)
    return float(fine[int(np.argmin([sse(f) for f in fine]))])


def test_mse_range_is_the_brute_force_minimum_and_beats_minmax():
    """Post-ReLU values (half exact zeros) with two far outliers, 2M values: clipping the outliers
    pays, and the clip point found from the histogram is where exact fake quantization is least."""
    from edgeres.export import mse_range, value_histogram

    rng = np.random.default_rng(0)
    x = np.concatenate([np.maximum(rng.laplace(0, 1, 2_000_000), 0), [40.0, 60.0]]).astype(np.float32)
    lo, hi = mse_range(value_histogram(x), float(x.min()), float(x.max()))
    assert lo == 0.0
    best = _grid_minimum(lambda h: _fake_quant_sse(x, 0.0, h), 5.0, float(x.max()))
    mine, at_best = _fake_quant_sse(x, lo, hi), _fake_quant_sse(x, 0.0, best)
    assert abs(hi - best) <= 0.04 * best, (hi, best)
    assert mine <= 1.01 * at_best, (mine, at_best)
    assert mine < 0.6 * _fake_quant_sse(x, 0.0, float(x.max()))  # min/max: ~2x the error


def test_mse_range_signed_is_a_minimum_along_each_end():
    """Signed values: each end of the found range is where exact fake quantization is least with
    the other end held, and the error is far below min/max's."""
    from edgeres.export import mse_range, value_histogram

    rng = np.random.default_rng(1)
    y = np.concatenate([rng.laplace(0, 1, 1_500_000), [50.0, -35.0]]).astype(np.float32)
    lo, hi = mse_range(value_histogram(y), float(y.min()), float(y.max()))
    best_hi = _grid_minimum(lambda h: _fake_quant_sse(y, lo, h), 3.0, float(y.max()))
    best_lo = -_grid_minimum(lambda m: _fake_quant_sse(y, -m, hi), 3.0, float(-y.min()))
    assert abs(hi - best_hi) <= 0.05 * best_hi and abs(lo - best_lo) <= 0.05 * abs(best_lo), (lo, hi, best_lo, best_hi)
    assert _fake_quant_sse(y, lo, hi) <= 1.01 * min(_fake_quant_sse(y, lo, best_hi), _fake_quant_sse(y, best_lo, hi))
    assert _fake_quant_sse(y, lo, hi) < 0.3 * _fake_quant_sse(y, float(y.min()), float(y.max()))


def test_mse_range_keeps_the_range_when_clipping_costs_more():
    """Many large values: clipping them costs more than resolution gains, so min/max is optimal."""
    from edgeres.export import mse_range, value_histogram

    x = np.random.default_rng(1).uniform(-3, 9, 50000).astype(np.float32)
    lo, hi = mse_range(value_histogram(x), float(x.min()), float(x.max()))
    assert hi >= 0.97 * x.max() and lo <= 0.97 * x.min(), (lo, hi)


def test_value_histogram_counts_and_percentiles():
    from edgeres.export import HIST_KEYS, percentile_range, value_histogram

    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_t(3, 100000), np.zeros(30000)]).astype(np.float32)
    h = value_histogram(x)
    assert h.shape == (HIST_KEYS,) and h.sum() == x.size
    assert h[0] == 30000  # exact zeros have their own bin
    assert h[: HIST_KEYS // 2].sum() == np.sum(x >= 0) and h[HIST_KEYS // 2:].sum() == np.sum(x < 0)
    lo, hi = percentile_range(h, float(x.min()), float(x.max()), percentile=99.9)
    expected_lo, expected_hi = np.percentile(x, [0.1, 99.9])
    # The range ends at a bin edge at or beyond the exact percentile; bins are 1/64 of an octave.
    assert expected_hi <= hi <= expected_hi * (1 + 2 / 64), (hi, expected_hi)
    assert expected_lo * (1 + 2 / 64) <= lo <= expected_lo, (lo, expected_lo)


def test_logits_keep_their_full_observed_range(trained_run, quant_dataset):
    """The tensor that feeds the softmax is never clipped by the clipping rules: its observed
    range and LOGITS_MARGIN of it on each side, for photos beyond the calibration set."""
    from edgeres import calibrate as calib
    from edgeres import data as data_lib
    from edgeres.export import (LOGITS_MARGIN, Format, Ranges, _converter, activation_stats, activation_tensors,
                                choose_ranges, representative_dataset, softmax_inputs)
    from edgeres.model import load_model

    model = load_model(trained_run / "model.keras")
    cal = calib.draw(data_lib.scan(quant_dataset, progress=False), 24, seed=0)
    skeleton = _converter(model, Format.FLOAT32, None, 64).convert()
    tensors = activation_tensors(skeleton)
    logits = softmax_inputs(skeleton, tensors)
    assert len(logits) == 1
    stats = activation_stats(skeleton, tensors, (x[0] for x in representative_dataset(cal, 64)()))
    j = logits[0]
    for rule in (Ranges.RELATIVE_MSE, Ranges.MSE, Ranges.PERCENTILE):
        lo, hi = choose_ranges(rule, stats, output_side=logits)
        a, b = float(stats.lo[:, j].min()), float(stats.hi[:, j].max())
        assert b > a
        assert np.allclose((lo[j], hi[j]), (a - LOGITS_MARGIN * (b - a), b + LOGITS_MARGIN * (b - a))), rule
        rest = np.arange(len(lo)) != j  # the other tensors: never beyond what was observed
        assert np.all(lo[rest] <= stats.lo.min(0)[rest] + 1e-6) or np.all(hi[rest] <= stats.hi.max(0)[rest] + 1e-6)
    # The histogram counts every value of every image (a large tensor through a stride sample).
    for h, n in zip(stats.histograms, _sizes(skeleton, tensors, len(cal.entries))):
        assert abs(int(h.sum()) - n) <= 0.01 * n, (int(h.sum()), n)


def _sizes(model_bytes: bytes, tensors: list[int], images: int) -> list[int]:
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    return [images * int(np.prod(graph.Tensors(t).ShapeAsNumpy())) for t in tensors]


def test_relative_mse_is_the_brute_force_minimum_and_is_not_stretched_by_loud_images():
    """60 images of ordinary post-ReLU activations and 2 whose activations are 30x larger. The
    relative range minimises the sum over images of each image's error over its own signal
    (checked by exact fake quantization, image by image); the pooled MSE range follows the loud
    images' values and ends well above it."""
    from edgeres.export import HIST_SAMPLE, ActivationStats, Ranges, _mean_square, choose_ranges, value_histogram

    rng = np.random.default_rng(3)
    images = [np.maximum(rng.laplace(0, 1, 60000), 0).astype(np.float32) * (30.0 if i in (5, 30) else 1.0)
              for i in range(62)]
    counts = np.zeros((1, value_histogram(images[0]).size), np.int64)
    relative = np.zeros(counts.shape)
    for v in images:
        h = value_histogram(v, HIST_SAMPLE)
        counts[0] += h
        relative[0] += h / _mean_square(v, HIST_SAMPLE)
    stats = ActivationStats(np.array([[v.min()] for v in images]), np.array([[v.max()] for v in images]), counts, relative)
    _, pooled_hi = choose_ranges(Ranges.MSE, stats)
    _, relative_hi = choose_ranges(Ranges.RELATIVE_MSE, stats)

    def relative_error(h):
        return sum(_fake_quant_sse(v, 0.0, h) / float(np.mean(v.astype(np.float64) ** 2)) for v in images)

    best = _grid_minimum(relative_error, 2.0, 0.5 * float(max(v.max() for v in images)))
    assert abs(relative_hi[0] - best) <= 0.06 * best, (relative_hi[0], best)
    assert relative_error(relative_hi[0]) <= 1.01 * relative_error(best)
    assert pooled_hi[0] > 2 * relative_hi[0], (pooled_hi[0], relative_hi[0])
