"""The LiteRT runtime and the predict / evaluate / bench commands, on a tiny exported model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeres.runtime import AcceleratorError, Classifier, ModelError

EDGERES = [sys.executable, "-m", "edgeres.cli"]


def run_cli(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    out = subprocess.run([*EDGERES, *map(str, args)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    if check_rc is not None:
        assert out.returncode == check_rc, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return out


@pytest.fixture(scope="module")
def val_photos(quant_dataset) -> list[Path]:
    return sorted((quant_dataset / "validation").rglob("*.jpg"))[::20]


def test_classifier_agrees_with_keras(trained_run, tiny_bundle, val_photos):
    from edgeres.model import load_model
    from edgeres.preprocess import load_pixels

    model = load_model(trained_run / "model.keras")
    pixels = np.stack([load_pixels(p, 64) for p in val_photos]).astype(np.float32)
    keras_top = model.predict(pixels, verbose=0).argmax(1)
    for variant in ("float32", "int8"):
        clf = Classifier(tiny_bundle, variant=variant, accelerator="cpu")
        top = np.array([clf.predict(p).index for p in val_photos])
        assert np.mean(top == keras_top) >= (1.0 if variant == "float32" else 0.9), variant


def test_bundle_loads_int8_and_reads_embedded_labels(tiny_bundle):
    clf = Classifier(tiny_bundle, accelerator="cpu")
    assert clf.path.name == "model_int8.tflite"
    assert clf.labels == ("cats", "dogs") and clf.input_size == (64, 64)
    assert clf.threads == (os.cpu_count() or 1), "default is every core, not LiteRT's 1"


def test_int8_input_and_output_are_handled(trained_run, tiny_bundle, tmp_path, val_photos):
    """A model with int8 (not uint8) I/O -- what other converters produce -- gives the same labels."""
    import tensorflow as tf

    from edgeres import calibrate as calib
    from edgeres.export import representative_dataset
    from edgeres.model import load_model

    root = val_photos[0].parents[2]
    cal = calib.CalibrationSet(root, tuple((p.relative_to(root).as_posix(), "") for p in val_photos), 0,
                               len(val_photos))
    conv = tf.lite.TFLiteConverter.from_keras_model(load_model(trained_run / "model.keras"))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset(cal, 64)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    (tmp_path / "int8_io.tflite").write_bytes(conv.convert())
    int8_io = Classifier(tmp_path / "int8_io.tflite", accelerator="cpu")
    uint8_io = Classifier(tiny_bundle, variant="int8", accelerator="cpu")
    assert int8_io.input_dtype == np.int8 and int8_io.output_dtype == np.int8
    assert uint8_io.input_dtype == np.uint8 and uint8_io.output_dtype == np.uint8
    same = [int8_io.predict(p).index == uint8_io.predict(p).index for p in val_photos]
    assert np.mean(same) >= 0.9
    probs = int8_io.predict(val_photos[0]).probabilities
    assert np.isclose(probs.sum(), 1.0, atol=0.02) and probs.min() >= 0


def test_runtime_never_imports_tensorflow(tiny_bundle, val_photos):
    script = textwrap.dedent(f"""
        import sys
        from edgeres.runtime import Classifier
        from edgeres.evaluate import evaluate
        from edgeres.bench import bench
        clf = Classifier({str(tiny_bundle)!r})
        pred = clf.predict({str(val_photos[0])!r})
        bench([{str(tiny_bundle)!r}], runs=3, warmup=1)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "cv2"))
        print("LABEL", pred.label, "HEAVY", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "LABEL " in out.stdout


def test_gpu_unavailable_falls_back_once_and_strict_fails(tiny_bundle, val_photos):
    messages = []
    clf = Classifier(tiny_bundle, accelerator="gpu", log=messages.append)
    if clf.backend.startswith("GPU"):
        pytest.skip("this machine has a working LiteRT GPU accelerator; the fallback cannot be exercised")
    assert len(messages) == 1
    assert "GPU accelerator unavailable" in messages[0] and "running on CPU" in messages[0]
    assert clf.predict(val_photos[0]).label in ("cats", "dogs")
    with pytest.raises(AcceleratorError, match="--strict"):
        Classifier(tiny_bundle, accelerator="gpu", strict=True, log=messages.append)


def test_bad_delegate_falls_back_or_fails_strict(tiny_bundle, tmp_path):
    fake = tmp_path / "libnot_a_delegate.so"
    fake.write_bytes(b"\x7fELF garbage")
    messages = []
    clf = Classifier(tiny_bundle, delegate=fake, log=messages.append)
    assert clf.backend.startswith("CPU") and "could not be loaded" in messages[0]
    with pytest.raises(AcceleratorError):
        Classifier(tiny_bundle, delegate=fake, strict=True)


def test_bad_models_get_one_clear_message(tiny_bundle, tmp_path):
    cases = {}
    (tmp_path / "notes.txt").write_text("hello")
    cases["notes.txt"] = "not a .tflite model"
    blob = (tiny_bundle / "model_int8.tflite").read_bytes()
    (tmp_path / "truncated.tflite").write_bytes(blob[: len(blob) // 2])
    cases["truncated.tflite"] = "the file is cut or damaged"
    cases["missing.tflite"] = "no such file"
    (tmp_path / "empty_dir").mkdir()
    cases["empty_dir"] = "not an edgeres bundle"
    for name, message in cases.items():
        with pytest.raises(ModelError, match=message):
            Classifier(tmp_path / name)


def test_non_classifier_model_is_rejected(tmp_path):
    import tensorflow as tf

    inputs = tf.keras.Input((8,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4)(inputs))
    (tmp_path / "dense.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(ModelError, match=r"input must be an image \[1, H, W, 3\]"):
        Classifier(tmp_path / "dense.tflite")


# -- CLI -----------------------------------------------------------------------------------


def test_predict_json_and_table(tiny_bundle, val_photos, tmp_path):
    out = run_cli("predict", tiny_bundle, *val_photos[:3], "--json", "--top-k", "2")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in val_photos[:3]]
    clf = Classifier(tiny_bundle, accelerator="cpu")
    for r, p in zip(records, val_photos):
        pred = clf.predict(p)
        assert r["label"] == pred.label and abs(r["score"] - pred.score) < 1e-6
        assert [t["label"] for t in r["top_k"]][0] == r["label"] and len(r["top_k"]) == 2
    table = run_cli("predict", tiny_bundle, val_photos[0].parent)
    assert val_photos[0].name in table.stdout and ("cats" in table.stdout or "dogs" in table.stdout)


def test_predict_reports_and_skips_bad_images(tiny_bundle, val_photos, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = run_cli("predict", tiny_bundle, val_photos[0], tmp_path / "broken.jpg", tmp_path / "nope.jpg",
                  "--json", check_rc=1)
    assert len(out.stdout.splitlines()) == 1
    assert "broken.jpg" in out.stderr and "nope.jpg" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_bad_inputs_have_no_traceback(tiny_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.txt").write_text("x")
    for args, message in (
        (("predict", tmp_path / "model.txt", "x.jpg"), "not a .tflite model"),
        (("predict", tmp_path / "missing.tflite", "x.jpg"), "no such file"),
        (("predict", tiny_bundle, tmp_path / "empty"), "folder has no images"),
        (("evaluate", tiny_bundle, "--data", tmp_path / "empty"), "No images found"),
        (("bench", tmp_path / "model.txt"), "not a .tflite model"),
    ):
        out = run_cli(*args, check_rc=None)
        assert out.returncode != 0
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_evaluate_json_report_and_agreement(tiny_bundle, quant_dataset, tmp_path):
    f32, i8 = tiny_bundle / "model_float32.tflite", tiny_bundle / "model_int8.tflite"
    out = run_cli("evaluate", f32, i8, "--data", quant_dataset, "--json", "--limit", "60",
                  "--report", tmp_path / "report")
    result = json.loads(out.stdout)
    assert [m["path"] for m in result["models"]] == [str(f32), str(i8)]
    for m in result["models"]:
        assert m["n"] == 60 and 0 <= m["accuracy"] <= 1
        lo, hi = m["ci95"]
        assert lo <= m["accuracy"] <= hi and hi - lo < 0.3
        assert sum(map(sum, m["confusion"])) == 60
        assert len(m["misclassified"]) == 60 - round(m["accuracy"] * 60)
    assert 0.9 <= result["agreement"] <= 1.0
    assert len(result["disagreements"][str(i8)]) == round((1 - result["agreement"]) * 60)
    assert (tmp_path / "report" / "report.json").is_file()
    assert len(list((tmp_path / "report").glob("confusion_*.png"))) == 2


def test_bench_json_ratios(tiny_bundle):
    f32, i8 = tiny_bundle / "model_float32.tflite", tiny_bundle / "model_int8.tflite"
    out = run_cli("bench", f32, i8, "--runs", "20", "--threads", "2", "--json")
    result = json.loads(out.stdout)
    assert len(result["models"]) == 2
    for m in result["models"]:
        assert m["threads"] == 2 and m["runs"] == 20
        assert 0 < m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"]
        assert m["peak_rss_mb"] > 10
    assert result["speedup_vs_first"][str(i8)] == pytest.approx(
        result["models"][0]["p50_ms"] / result["models"][1]["p50_ms"], rel=0.01)


def test_help_teaches_every_command():
    for cmd in ("train", "calibrate", "export", "predict", "evaluate", "bench", "camera"):
        out = run_cli(cmd, "--help")
        assert "Example" in out.stdout or "example" in out.stdout, cmd


def test_camera_cli_on_a_folder_matches_predict(tiny_bundle, val_photos, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, p in enumerate(val_photos[:4]):
        (frames / f"{i:03d}.jpg").symlink_to(p)
    out = run_cli("camera", tiny_bundle, "--source", frames, "--no-display", "--json", "--threads", "2")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    clf = Classifier(tiny_bundle, accelerator="cpu")
    assert [r["label"] for r in records] == [clf.predict(p).label for p in val_photos[:4]]
    assert "4 frames" in out.stderr and "Traceback" not in out.stderr
    missing = run_cli("camera", tiny_bundle, "--source", "7", "--no-display", check_rc=2)
    assert "No camera at index 7" in missing.stderr and "--source FILE" in missing.stderr


def test_falls_back_to_tflite_runtime_when_litert_is_missing(tiny_bundle, val_photos):
    """Devices with only the old `tflite_runtime` package still work (simulated: that package
    cannot be installed beside numpy 2, so its module is stood in for by LiteRT's interpreter)."""
    script = textwrap.dedent(f"""
        import sys, types
        import ai_edge_litert.interpreter as real
        fake = types.ModuleType("tflite_runtime.interpreter")
        fake.Interpreter, fake.load_delegate = real.Interpreter, real.load_delegate
        sys.modules["tflite_runtime"] = types.ModuleType("tflite_runtime")
        sys.modules["tflite_runtime.interpreter"] = fake
        sys.modules["ai_edge_litert.interpreter"] = None  # import now fails, as on a device without it
        from edgeres.runtime import Classifier
        clf = Classifier({str(tiny_bundle)!r}, accelerator="cpu")
        print("RUNTIME", clf.runtime, clf.predict({str(val_photos[0])!r}).label)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RUNTIME tflite_runtime " in out.stdout


def test_runtime_only_install_explains_missing_extras(tiny_bundle, val_photos, tmp_path):
    """Where TensorFlow and OpenCV are not installed, predict works and the rest say what to install."""
    blocker = "import sys; sys.modules.update(tensorflow=None, keras=None, cv2=None); from edgeres.cli import app; app()"

    def run(*args):
        return subprocess.run([sys.executable, "-c", blocker, *map(str, args)], capture_output=True, text=True,
                              timeout=120)

    assert run("predict", tiny_bundle, val_photos[0], "--json").returncode == 0
    for args, extra in ((("train", "--out", tmp_path / "r"), "edgeres[train]"),
                        (("camera", tiny_bundle, "--no-display"), "edgeres[camera]")):
        out = run(*args)
        assert out.returncode == 2 and extra in out.stderr and "Traceback" not in out.stderr, out.stderr
