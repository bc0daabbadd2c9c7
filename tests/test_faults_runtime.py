"""Runtime faults (issues 14 and 16): accelerators checked against the CPU, cut models, bad options.

Each test reproduces one reported failure on real files: the shared tiny bundle, copies of it cut
short, a real external delegate library built here (an honest one and one that computes wrong
answers), LiteRT's CompiledModel on the CPU standing in for a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeres import runtime
from edgeres.runtime import (AcceleratorError, Classifier, CompiledModelBackend, ModelError, check_accelerator,
                             write_probes)

EDGERES = [sys.executable, "-m", "edgeres.cli"]
LIBZ = next((p for p in ("/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1",
                         "/usr/lib/aarch64-linux-gnu/libz.so.1", "/usr/lib/libz.so.1") if Path(p).exists()), None)

# A TFLite external delegate that claims no ops, so the CPU kernels run everything (honest).
# Built with -DDISHONEST it doubles the quantization scale of tensor 0 (the input) in its own
# interpreter before the kernels are prepared: a real delegate that returns wrong answers.
# Only the first fields of TfLiteContext / TfLiteTensor / TfLiteDelegate are used; they have
# not moved since TF 1.x.
DELEGATE_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <stddef.h>
typedef struct { float scale; int32_t zero_point; } QuantParams;
typedef struct { int type; void* data; void* dims; QuantParams params; } TensorHead;
typedef struct { size_t tensors_size; void* get_execution_plan; TensorHead* tensors; } ContextHead;
typedef struct Delegate {
  void* data_;
  int (*Prepare)(void* context, struct Delegate* delegate);
  void* copy_from; void* copy_to; void* free_handle;
  int64_t flags;
  void* opaque_delegate_builder;
} Delegate;
static int prepare(void* context, Delegate* d) {
#ifdef DISHONEST
  ContextHead* c = (ContextHead*)context;
  if (c->tensors_size > 0 && c->tensors[0].params.scale > 0) c->tensors[0].params.scale *= 2.0f;
#endif
  return 0;
}
Delegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n, void (*report)(const char*)) {
  Delegate* d = calloc(1, sizeof(Delegate));
  d->Prepare = prepare;
  return d;
}
void tflite_plugin_destroy_delegate(Delegate* d) { free(d); }
"""


def run_cli(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    out = subprocess.run([*EDGERES, *map(str, args)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    if check_rc is not None:
        assert out.returncode == check_rc, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.fixture(scope="module")
def val_photos(quant_dataset) -> list[Path]:
    return sorted((quant_dataset / "validation").rglob("*.jpg"))[::25]


@pytest.fixture(scope="module")
def delegates(tmp_path_factory) -> dict[str, Path]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the test delegates")
    d = tmp_path_factory.mktemp("delegates")
    (d / "delegate.c").write_text(DELEGATE_C)
    libs = {"honest": d / "libhonest.so", "dishonest": d / "libdishonest.so"}
    for name, lib in libs.items():
        flags = ["-DDISHONEST"] if name == "dishonest" else []
        subprocess.run([cc, "-shared", "-fPIC", "-O1", *flags, "-o", str(lib), str(d / "delegate.c")], check=True)
    return libs


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


class Perturbed:
    """An accelerator that returns the CPU CompiledModel's output shifted by ``steps`` quantization
    steps toward the last class: what a wrong GPU kernel looks like from the outside."""

    def __init__(self, clf: Classifier, steps: int):
        self.inner = CompiledModelBackend(clf.path, "cpu", threads=1, outputs=len(clf.labels),
                                          output_dtype=clf.output_dtype)
        self.name, self.steps = f"fake accelerator (+{steps} steps)", steps

    def run(self, tensor):
        raw = self.inner.run(tensor).astype(np.int32)
        raw[0] -= self.steps
        raw[-1] += self.steps
        return np.clip(raw, 0, 255).astype(np.uint8)


class Raising:
    name = "fake NPU"

    def run(self, tensor):
        raise RuntimeError("NPU lost")


# -- issue 16: the self-check ---------------------------------------------------------------


def test_honest_accelerator_passes_and_is_used(tiny_bundle, val_photos):
    """LiteRT's CompiledModel on the CPU as an 'accelerator': a second real implementation."""
    cpu = Classifier(tiny_bundle, accelerator="cpu")
    honest = CompiledModelBackend(cpu.path, "cpu", threads=1, outputs=2, output_dtype=cpu.output_dtype)
    messages = []
    clf = Classifier(tiny_bundle, backend=honest, log=messages.append)
    assert messages == []
    assert clf.backend == "CPU (LiteRT CompiledModel)" and clf.self_check.passed
    # The bundle carries 6 real photos (export's probes.npz); 4 synthetic probes join them.
    assert clf.self_check.probes == 10 and clf.self_check.probe_source.startswith("6 from probes.npz")
    assert clf.self_check.top1_agreement == 1.0
    assert clf.self_check.max_abs_dp <= 1e-6
    for p in val_photos:
        assert np.array_equal(clf.predict(p).probabilities, cpu.predict(p).probabilities)
    assert clf.describe()["self_check"]["passed"] is True


def test_wrong_accelerator_is_detected_and_falls_back(tiny_bundle, val_photos):
    cpu = Classifier(tiny_bundle, accelerator="cpu")
    messages = []
    clf = Classifier(tiny_bundle, backend=Perturbed(cpu, 40), log=messages.append)  # 40/256 = 0.156
    assert clf.backend.startswith("CPU (XNNPACK") and len(messages) == 1
    assert "fake accelerator (+40 steps) disagrees with the CPU" in messages[0]
    assert "running on CPU (XNNPACK" in messages[0] and "tolerance 0.1" in messages[0]
    check = clf.self_check
    assert not check.passed and check.max_abs_dp == pytest.approx(40 / 256, abs=1e-6)
    assert clf.describe()["self_check"]["max_abs_dp"] == pytest.approx(40 / 256, abs=1e-6)
    assert [clf.predict(p).index for p in val_photos] == [cpu.predict(p).index for p in val_photos]
    with pytest.raises(AcceleratorError, match="disagrees with the CPU.*--strict"):
        Classifier(tiny_bundle, backend=Perturbed(cpu, 40), strict=True)


def test_small_accelerator_differences_pass_within_tolerance(tiny_bundle):
    """An int8 model run in float on an accelerator moves probabilities a little: 3 steps pass."""
    cpu = Classifier(tiny_bundle, accelerator="cpu")
    clf = Classifier(tiny_bundle, backend=Perturbed(cpu, 3), log=lambda m: pytest.fail(m))
    assert clf.self_check.passed and clf.self_check.max_abs_dp == pytest.approx(3 / 256, abs=1e-6)
    assert clf.backend == "fake accelerator (+3 steps)"


def test_accelerator_that_raises_falls_back(tiny_bundle):
    messages = []
    clf = Classifier(tiny_bundle, backend=Raising(), log=messages.append)
    assert clf.backend.startswith("CPU") and "fake NPU failed on a probe input (RuntimeError: NPU lost)" in messages[0]
    with pytest.raises(AcceleratorError, match="NPU lost"):
        Classifier(tiny_bundle, backend=Raising(), strict=True)


def test_real_delegates_honest_passes_dishonest_falls_back(tiny_bundle, delegates, val_photos):
    cpu = Classifier(tiny_bundle, accelerator="cpu")
    honest = Classifier(tiny_bundle, delegate=delegates["honest"], log=lambda m: pytest.fail(m))
    assert honest.backend.startswith("delegate libhonest.so") and honest.self_check.passed
    messages = []
    dishonest = Classifier(tiny_bundle, delegate=delegates["dishonest"], log=messages.append)
    assert dishonest.backend.startswith("CPU (XNNPACK") and len(messages) == 1
    assert "libdishonest.so" in messages[0] and "disagrees with the CPU" in messages[0]
    assert dishonest.self_check.max_abs_dp > 0.1 and not dishonest.self_check.passed
    assert [dishonest.predict(p).label for p in val_photos] == [cpu.predict(p).label for p in val_photos]
    # The CLI: falls back with that one line, or fails with --strict.
    out = run_cli("predict", tiny_bundle, val_photos[0], "--json", "--delegate", delegates["dishonest"])
    assert "disagrees with the CPU" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert cpu.predict(val_photos[0]).label in out.stdout
    strict = run_cli("predict", tiny_bundle, val_photos[0], "--delegate", delegates["dishonest"], "--strict",
                     check_rc=2)
    assert "--strict forbids" in strict.stderr and strict.stdout == ""


def test_bench_and_doctor_report_the_measured_gap(tiny_bundle, delegates):
    out = run_cli("bench", tiny_bundle, "--delegate", delegates["honest"], "--runs", "3", "--json")
    import json

    model = json.loads(out.stdout)["models"][0]
    assert model["backend"].startswith("delegate libhonest.so")
    assert model["self_check"]["passed"] is True and model["self_check"]["max_abs_dp"] <= 1e-6
    table = run_cli("bench", tiny_bundle, "--delegate", delegates["dishonest"], "--runs", "3")
    assert "disagrees with the CPU" in table.stderr
    assert "self-check of delegate libdishonest.so" in table.stdout and "FAILED" in table.stdout
    report = check_accelerator(tiny_bundle, delegate=delegates["dishonest"])
    assert report["accelerated"] is False and report["self_check"]["passed"] is False
    assert report["self_check"]["max_abs_dp"] > 0.1 and len(report["messages"]) == 1
    assert check_accelerator(tiny_bundle, delegate=delegates["honest"])["accelerated"] is True


def test_bundle_probes_are_used_and_checked(bundle_copy, val_photos):
    from edgeres.preprocess import load_pixels

    write_probes(bundle_copy / "probes.npz", np.stack([load_pixels(p, 64) for p in val_photos[:3]]))
    cpu = Classifier(bundle_copy, accelerator="cpu")
    probes, source = cpu.probes()
    assert probes.shape == (3 + 4, 64, 64, 3) and source == "3 from probes.npz + 4 synthetic"
    assert np.array_equal(probes[0], load_pixels(val_photos[0], 64))
    check = cpu.check_against_cpu(Perturbed(cpu, 40))
    assert check.probes == 7 and not check.passed
    write_probes(bundle_copy / "probes.npz", np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ModelError, match=r"probes.npz: probes are uint8 \[2, 32, 32, 3\].*64, 64"):
        Classifier(bundle_copy, backend=Perturbed(cpu, 0))
    with pytest.raises(ValueError, match="uint8"):
        write_probes(bundle_copy / "x.npz", np.zeros((2, 64, 64, 3), np.float32))


def test_synthetic_probes_are_deterministic_and_smooth():
    a, b = runtime.synthetic_probes((48, 40)), runtime.synthetic_probes((48, 40))
    assert a.shape == (4, 48, 40, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert all(len(np.unique(img)) > 20 for img in a)  # not flat
    step = np.abs(np.diff(a.astype(int), axis=1)).mean()
    assert step < 20, "smooth fields, not noise"  # uniform noise steps ~85 on average


class FakeGpu(CompiledModelBackend):
    """LiteRT's CompiledModel on the CPU, standing in for the GPU accelerator (no GPU here)."""

    def __init__(self, path, hardware, **kw):
        super().__init__(path, "cpu", **kw)
        self.name = "GPU (LiteRT CompiledModel)"


def test_bundle_on_gpu_runs_its_float_model_and_says_so_once(tiny_bundle, monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "CompiledModelBackend", FakeGpu)
    messages = []
    clf = Classifier(tiny_bundle, accelerator="gpu", log=messages.append)
    # The shared tiny bundle has int8 + float32; an exported one also has float16, which comes first.
    assert clf.path.name == "model_float32.tflite" and clf.backend == "GPU (LiteRT CompiledModel)"
    assert len(messages) == 1 and "runs the bundle's model_float32.tflite" in messages[0]
    assert clf.self_check.passed and clf.self_check.tolerance == 0.02
    assert runtime.GPU_PREFERENCE[0] == "float16"
    # auto resolving to the GPU does the same; an explicit variant is obeyed.
    monkeypatch.setattr(runtime, "_gpu_visible", lambda: True)
    assert Classifier(tiny_bundle, log=messages.append).path.name == "model_float32.tflite"
    assert Classifier(tiny_bundle, accelerator="gpu", variant="int8", log=messages.append).path.name == "model_int8.tflite"
    # A bare int8 .tflite on the GPU goes through the self-check.
    bare = tmp_path / "model_int8.tflite"
    shutil.copy(tiny_bundle / "model_int8.tflite", bare)
    clf = Classifier(bare, accelerator="gpu", log=messages.append)
    assert clf.path == bare and clf.self_check is not None and clf.self_check.tolerance == 0.1


def test_no_gpu_bundle_falls_back_to_its_int8_model(tiny_bundle):
    messages = []
    clf = Classifier(tiny_bundle, accelerator="gpu", log=messages.append)
    if clf.backend.startswith("GPU"):
        pytest.skip("this machine has a working LiteRT GPU accelerator")
    assert clf.path.name == "model_int8.tflite" and len(messages) == 1 and "running on CPU" in messages[0]


# -- issue 16: no silent repair ---------------------------------------------------------------


def test_softmax_outputs_that_do_not_sum_to_one_are_an_error(tiny_bundle):
    clf = Classifier(tiny_bundle, accelerator="cpu")
    assert clf.output_activation == "softmax"
    ok = clf.dequantize_output(np.array([64, 192], np.uint8))
    assert ok.tolist() == [0.25, 0.75]
    with pytest.raises(ModelError, match=r"model_int8.tflite: the model ends in softmax but .* summing to 1.5"):
        clf.dequantize_output(np.array([192, 192], np.uint8))
    f32 = Classifier(tiny_bundle, variant="float32", accelerator="cpu")
    assert f32.output_activation == "softmax"
    with pytest.raises(ModelError, match="not probabilities"):
        f32.dequantize_output(np.array([2.0, -1.0], np.float32))


def test_logits_model_gets_softmax_and_a_bare_model_says_it_has_no_labels(tmp_path):
    tf = pytest.importorskip("tensorflow")
    inputs = tf.keras.Input((16, 16, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, kernel_initializer="ones")(x))  # logits
    (tmp_path / "logits.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    messages = []
    clf = Classifier(tmp_path / "logits.tflite", accelerator="cpu", log=messages.append)
    assert clf.output_activation == "logits" and clf.describe()["output"]["activation"] == "logits"
    assert clf.labels == ("class_0", "class_1", "class_2")
    assert len(messages) == 1 and "logits.tflite has no labels" in messages[0] and "class_0..class_2" in messages[0]
    probs = clf.predict_pixels(np.full((16, 16, 3), 7, np.uint8)).probabilities
    assert probs.sum() == pytest.approx(1.0, abs=1e-6) and np.allclose(probs, 1 / 3, atol=1e-6)


# -- issue 14, item 3: a cut model -------------------------------------------------------------


@pytest.mark.parametrize("cut", [1024, 4096, 64 * 1024])
def test_truncated_model_is_refused_naming_the_file(tiny_bundle, tmp_path, cut):
    blob = (tiny_bundle / "model_int8.tflite").read_bytes()
    model = tmp_path / f"cut{cut}.tflite"
    model.write_bytes(blob[:-cut])
    with pytest.raises(ModelError, match=rf"cut{cut}.tflite: the file is cut or damaged"):
        Classifier(model)
    out = run_cli("predict", model, tmp_path, check_rc=2)
    assert f"cut{cut}.tflite: the file is cut or damaged" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "class_0" not in out.stdout + out.stderr


def test_cut_bare_model_is_refused(tiny_bundle, tmp_path):
    """Without metadata there is no zip to check: LiteRT's flatbuffer verifier refuses the cut."""
    import io
    import zipfile

    blob = (tiny_bundle / "model_int8.tflite").read_bytes()
    bare = blob[:min(i.header_offset for i in zipfile.ZipFile(io.BytesIO(blob)).infolist())]
    for cut in (64, 4096):
        (tmp_path / "bare.tflite").write_bytes(bare[:-cut])
        with pytest.raises(ModelError, match=r"bare.tflite: (the file is cut or damaged|LiteRT could not load)"):
            Classifier(tmp_path / "bare.tflite")


def test_truncated_model_inside_a_bundle_is_refused(bundle_copy):
    """The bundle's edgeres.json and labels.txt must not paper over a cut model either."""
    model = bundle_copy / "model_int8.tflite"
    model.write_bytes(model.read_bytes()[:-1024])
    with pytest.raises(ModelError, match="model_int8.tflite: the file is cut or damaged"):
        Classifier(bundle_copy)


# -- issue 14, items 9 and 10: options ---------------------------------------------------------


def test_bad_accelerator_threads_runs_are_refused_at_parse_time(tiny_bundle, val_photos):
    for args, words in (
        (("predict", tiny_bundle, val_photos[0], "--accelerator", "banana"), ("--accelerator", "banana")),
        (("predict", tiny_bundle, val_photos[0], "--threads", "-1"), ("--threads",)),
        (("predict", tiny_bundle, val_photos[0], "--threads", "0"), ("--threads",)),
        (("bench", tiny_bundle, "--runs", "0"), ("--runs",)),
        (("bench", tiny_bundle, "--runs", "-5"), ("--runs",)),
        (("bench", tiny_bundle, "--warmup", "-1"), ("--warmup",)),
        (("predict", tiny_bundle, val_photos[0], "--delegate", "/nonexistent.so"), ("--delegate", "does not exist")),
    ):
        out = run_cli(*args, check_rc=2)
        assert all(w in out.stderr for w in words), (args, out.stderr)
        assert "re-export" not in out.stderr.lower(), out.stderr
    assert run_cli("predict", tiny_bundle, val_photos[0], "--accelerator", "CPU", "--json").returncode == 0


def test_library_refuses_bad_values_in_one_line(tiny_bundle):
    from edgeres.bench import bench

    with pytest.raises(ValueError, match=r"accelerator='banana' is not one of: auto, cpu, gpu"):
        Classifier(tiny_bundle, accelerator="banana")
    with pytest.raises(ValueError, match=r"threads=-1: must be a whole number, 1 or more"):
        Classifier(tiny_bundle, threads=-1)
    for runs in (0, -5):
        with pytest.raises(ValueError, match=rf"runs={runs}: must be 1 or more"):
            bench([tiny_bundle], runs=runs)
    with pytest.raises(AcceleratorError, match="both name an accelerator"):
        Classifier(tiny_bundle, accelerator="gpu", delegate="/x.so")


def test_absurd_thread_count_is_capped_and_said(tiny_bundle, val_photos):
    cap = runtime.MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
    out = run_cli("bench", tiny_bundle, "--threads", "100000", "--runs", "3", "--json")
    import json

    assert json.loads(out.stdout)["models"][0]["threads"] == cap
    assert f"threads=100000 is more than 4x this machine's {os.cpu_count()} core(s); using {cap}" in out.stderr
    messages = []
    assert Classifier(tiny_bundle, threads=cap, log=messages.append).threads == cap and messages == []


def test_delegate_that_is_not_a_delegate_is_one_line(tiny_bundle, val_photos, tmp_path):
    """libz (AttributeError before), a missing file (Delegate.__del__ traceback), a garbage .so."""
    garbage = tmp_path / "libgarbage.so"
    garbage.write_bytes(b"\x7fELF garbage")
    cases = {garbage: "not a loadable shared library", Path("/nonexistent.so"): "no such file"}
    if LIBZ:
        cases[Path(LIBZ)] = "not a TFLite external delegate (no tflite_plugin_create_delegate"
    for lib, reason in cases.items():
        messages = []
        clf = Classifier(tiny_bundle, delegate=lib, log=messages.append)
        assert clf.backend.startswith("CPU") and len(messages) == 1 and reason in messages[0], messages
        with pytest.raises(AcceleratorError, match=re.escape(reason)):
            Classifier(tiny_bundle, delegate=lib, strict=True)
    if LIBZ:
        out = run_cli("predict", tiny_bundle, val_photos[0], "--delegate", LIBZ, "--json")
        assert "not a TFLite external delegate" in out.stderr and "Exception ignored" not in out.stderr
        out = run_cli("predict", tiny_bundle, val_photos[0], "--delegate", LIBZ, "--strict", check_rc=2)
        assert len(out.stderr.strip().splitlines()) == 1


def test_failed_bundle_warns_when_its_int8_model_is_used(bundle_copy, val_photos):
    (bundle_copy / "FAILED").write_text("int8 accuracy dropped 3.50 pp (allowed 1.00). See edgeres.json.\n")
    out = run_cli("predict", bundle_copy, val_photos[0], "--json", "--accelerator", "cpu")
    assert out.stdout.count("label") == 1
    assert "is marked FAILED by export (int8 accuracy dropped 3.50 pp (allowed 1.00)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    messages = []
    Classifier(bundle_copy, variant="float32", accelerator="cpu", log=messages.append)
    assert messages == [], "the float32 model is not what failed"
