"""Inputs, options and exit codes (issue 21): every bad file or option a command reads gives an
exit code that tells the truth and one line naming the file or option and the fix; never a
traceback. The fuzz table at the end runs many such cases through the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeres.cli import app
from edgeres.data import DataError

runner = CliRunner()


def _run(*args, env: dict | None = None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.output


def _one_line_error(code: int, out: str, *names: str, rc: int = 2) -> None:
    """rc, no traceback, and an error line that names each of ``names``."""
    assert code == rc, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for name in names:
        assert str(name) in errors[0], (name, out)


def _link_photos(photos_root: Path, dst: Path, split: str, names: dict[str, str], n: int) -> None:
    for src_name, dst_name in names.items():
        folder = dst / dst_name
        folder.mkdir(parents=True)
        for src in sorted((photos_root / split / src_name).glob("*.jpg"))[:n]:
            (folder / src.name).symlink_to(src)


# -- 1. --split reaches the split named; the title names the split read ---------------------------


@pytest.mark.slow
def test_evaluate_split_test_reads_test(tiny_bundle, photos_root, tmp_path):
    from edgeres.evaluate import evaluate

    root = tmp_path / "three"
    _link_photos(photos_root, root / "train", "train", {"cats": "cats", "dogs": "dogs"}, 3)
    _link_photos(photos_root, root / "validation", "validation", {"cats": "cats", "dogs": "dogs"}, 4)
    # test/: other photos, and another count, so reading validation/ instead cannot pass.
    test_dir = root / "test"
    for cls in ("cats", "dogs"):
        (test_dir / cls).mkdir(parents=True)
        for src in sorted((photos_root / "validation" / cls).glob("*.jpg"))[10:13]:
            (test_dir / cls / src.name).symlink_to(src)
    ev = evaluate([tiny_bundle], root, split="test", progress=False)
    assert ev.split == "test" and ev.models[0].n == 6
    code, out = _run("evaluate", tiny_bundle, "--data", root, "--split", "test", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["split"] == "test" and report["models"][0]["n"] == 6
    paths = {Path(w["path"]).parent.parent.name for w in report["models"][0]["misclassified"]}
    assert paths <= {"test"}
    # A split that is not there: one line listing those that are.
    code, out = _run("evaluate", tiny_bundle, "--data", root, "--split", "holdout")
    _one_line_error(code, out, "holdout", "train/, validation/, test/")


@pytest.mark.slow
def test_root_holding_only_test_is_titled_test(tiny_bundle, photos_root, tmp_path):
    root = tmp_path / "only"
    _link_photos(photos_root, root / "test", "validation", {"cats": "cats", "dogs": "dogs"}, 3)
    code, out = _run("evaluate", tiny_bundle, "--data", root)
    assert code == 0, out
    assert f"{root} (test)" in out and "(validation)" not in out, out


def test_flat_layout_is_evaluated_whole(photos_root, tmp_path):
    from edgeres.evaluate import labelled_split

    root = tmp_path / "flat"
    _link_photos(photos_root, root, "validation", {"cats": "cats", "dogs": "dogs"}, 2)
    classes, items, used = labelled_split(root, "validation")
    assert classes == ("cats", "dogs") and len(items) == 4 and used == "all"


# -- 2. class folders that differ only in case: refused before training --------------------------


def test_train_refuses_classes_differing_in_case(photos_root, tmp_path):
    root = tmp_path / "d"
    _link_photos(photos_root, root, "train", {"cats": "Cats", "dogs": "cats"}, 3)
    out_dir = tmp_path / "run"
    code, out = _run("train", "--data", root, "--out", out_dir, "--arch", "resnet-tiny", "--weights", "none",
                     "--image-size", "64", "--epochs", "1")
    _one_line_error(code, out, "'Cats'", "'cats'", "Rename")
    assert not out_dir.exists()
    code, out = _run("calibrate", "--data", root, "--size", "2", "--out", tmp_path / "c.txt")
    _one_line_error(code, out, "differ only in case")
    assert not (tmp_path / "c.txt").exists()


# -- 4/6. --resume: contradictions refused; corrupt run files named ---------------------------------


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the trained run (the session's run is shared: never touched)."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("args, said", [
    (["--arch", "resnet50"], "--arch resnet50 (the run: resnet-tiny)"),
    (["--image-size", "128"], "--image-size 128 (the run: 64)"),
    (["--batch-size", "8", "--seed", "3"], "--batch-size 8 (the run: 16); --seed 3 (the run: 0)"),
    (["--epochs", "2"], "--epochs 2 (the run has 8"),
    (["--no-xla"], None),  # the run was made with XLA off (CPU): not a contradiction
    (["--weights", "none"], None),  # what --weights auto chose for resnet-tiny: the same weights
    (["--weights", "imagenet"], "--weights imagenet (the run: auto)"),
])
def test_resume_refuses_options_that_contradict_the_run(run_copy, args, said):
    state = (run_copy / "state.json").read_text()
    code, out = _run("train", "--out", run_copy, "--resume", *args)
    if said is None:
        assert code == 0 and "Traceback" not in out, out
        return
    _one_line_error(code, out, said, "config.json", "another --out")
    assert (run_copy / "state.json").read_text() == state


@pytest.mark.slow
def test_resume_refuses_other_data_and_accepts_the_same_folder(run_copy, quant_dataset, small_dataset):
    code, out = _run("train", "--out", run_copy, "--resume", "--data", small_dataset)
    _one_line_error(code, out, f"--data {small_dataset}", str(quant_dataset.resolve()))
    # The same folder, named another way: the run goes on (nothing left to train: 8 of 8 done).
    code, out = _run("train", "--out", run_copy, "--resume", "--data", quant_dataset / ".." / quant_dataset.name)
    assert code == 0 and "Done: 8 epochs" in out, out


@pytest.mark.slow
@pytest.mark.parametrize("name, content, said", [
    ("state.json", "{\"epoch\": 3, \"best_v", "not valid JSON"),
    ("state.json", "", "is empty"),
    ("state.json", "[1, 2]", "holds a JSON array, not object"),
    ("state.json", "{\"epoch\": \"three\", \"best_val_accuracy\": 0.5, \"history\": []}", "\"epoch\""),
    ("state.json", "{\"epoch\": 2, \"best_val_accuracy\": 0.5, \"history\": {}}", "\"history\""),
    ("config.json", "{\"train\": ", "not valid JSON"),
    ("config.json", "{\"labels\": [\"cats\", \"dogs\"]}", "no \"train\" object"),
    ("config.json", "{\"train\": {\"arch\": \"resnet-tiny\"}, \"labels\": \"cats\"}", "\"labels\""),
    ("config.json", "{\"train\": {\"arch\": \"resnet-tiny\", \"image_size\": \"64\"}, \"labels\": [\"cats\", \"dogs\"]}",
     "image_size"),
    # export reads only what it needs: a setting it does not read (precision) is judged on --resume only.
    ("config.json", "{\"train\": {\"precision\": \"fp8\"}, \"labels\": [\"cats\", \"dogs\"]}", "fp8|no arch or image_size"),
    ("config.json", "{\"train\": {\"arch\": \"resnet9000\", \"image_size\": 64}, \"labels\": [\"cats\", \"dogs\"]}",
     "resnet9000"),
])
def test_corrupt_run_files_are_one_line_on_resume_and_export(run_copy, tmp_path, name, content, said):
    (run_copy / name).write_text(content)
    on_resume, on_export = (said.split("|") * 2)[:2]
    code, out = _run("train", "--out", run_copy, "--resume")
    _one_line_error(code, out, run_copy / name, on_resume)
    if name == "config.json":
        code, out = _run("export", run_copy, "--out", tmp_path / "bundle", "--float32")
        _one_line_error(code, out, run_copy / name, on_export)
        assert not (tmp_path / "bundle").exists()


def test_export_reads_a_run_made_by_another_version():
    """The reference run records precision mixed_bfloat16, which this edgeres does not know:
    export does not read it, so it must not refuse the run; --resume does, and says so."""
    from edgeres.files import BadFileError
    from edgeres.run_files import EXPORT_FIELDS, read_run_config

    run = Path(__file__).resolve().parents[2] / "shared" / "models" / "resnet50-160-scratch"
    if not (run / "config.json").is_file():
        pytest.skip(f"reference model not found at {run}")
    assert read_run_config(run, fields=EXPORT_FIELDS)["train"]["image_size"] == 160
    with pytest.raises(BadFileError, match="mixed_bfloat16"):
        read_run_config(run)


@pytest.mark.slow
def test_state_without_last_model_and_a_cut_model_are_named(run_copy, tmp_path):
    (run_copy / "last.keras").unlink()
    code, out = _run("train", "--out", run_copy, "--resume")
    _one_line_error(code, out, "last.keras", "missing")
    data = (run_copy / "model.keras").read_bytes()
    (run_copy / "model.keras").write_bytes(data[: len(data) // 2])
    code, out = _run("export", run_copy, "--out", tmp_path / "b", "--float32")
    _one_line_error(code, out, run_copy / "model.keras", "cut or corrupt")


# -- 5. TF_CONFIG ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tf_config, said", [
    ("{cluster: worker}", "not valid JSON"),
    ("[1, 2]", "no usable \"cluster\""),
    ('{"cluster": {"worker": ["localhost:1"]}}', "no \"task\""),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": "worker"}', "no \"task\""),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 5}}',
     "task index 5"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": "0"}}', "task index '0'"),
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}', "no usable \"cluster\""),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}', "\"chief\" is not in"),
])
def test_malformed_tf_config_is_one_line(tf_config, said, small_dataset, tmp_path):
    code, out = _run("train", "--data", small_dataset, "--out", tmp_path / "run", "--arch", "resnet-tiny",
                     "--weights", "none", "--image-size", "64", env={"TF_CONFIG": tf_config})
    _one_line_error(code, out, "TF_CONFIG", said, "unset it")
    assert not (tmp_path / "run").exists()


# -- 7/8. the MediaPipe interpreter: checked before any work; missing is an error -------------------


def _interpreters(tmp_path: Path) -> dict[str, Path]:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program\n")
    no_shebang = tmp_path / "no_shebang"
    no_shebang.write_bytes(b"\x7fELF\x00garbage")
    no_shebang.chmod(0o755)
    no_mp = tmp_path / "python-without-mediapipe"
    no_mp.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'mediapipe'\" >&2\nexit 1\n")
    no_mp.chmod(0o755)
    return {"not executable": plain, "cannot be run": no_shebang, "a folder": tmp_path,
            "has no mediapipe": no_mp, "no such file": tmp_path / "missing" / "python"}


@pytest.mark.slow
def test_broken_mediapipe_interpreter_is_one_line(tiny_bundle, trained_run, quant_dataset, tmp_path):
    for said, python in _interpreters(tmp_path).items():
        env = {"EDGERES_MEDIAPIPE_PYTHON": str(python)}
        code, out = _run("evaluate", tiny_bundle, "--data", quant_dataset, "--client", "mediapipe", env=env)
        _one_line_error(code, out, said, python)
        # export: refused before converting (no bundle, no partial folder).
        code, out = _run("export", trained_run, "--out", tmp_path / "b", "--float32", env=env)
        _one_line_error(code, out, said, "EDGERES_MEDIAPIPE_PYTHON" if said != "has no mediapipe" else python,
                        "--no-client-check")
        assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))


def test_evaluate_client_without_mediapipe_fails_saying_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("mediapipe") is not None:
        pytest.skip("mediapipe is importable here: it cannot be missing")
    monkeypatch.chdir(tmp_path)  # no .venv-mediapipe here
    monkeypatch.delenv("EDGERES_MEDIAPIPE_PYTHON", raising=False)
    import edgeres.clients as clients

    # The checkout may hold a .venv-mediapipe beside the package: look only in the working folder.
    monkeypatch.setattr(clients, "__file__", str(tmp_path / "edgeres" / "clients.py"))
    code, out = _run("evaluate", tmp_path / "m.tflite", "--data", tmp_path, "--client", "mediapipe")
    _one_line_error(code, out, "no MediaPipe interpreter", "pip install mediapipe")


# -- 8. camera: the exit code says whether frames were classified -----------------------------------


@pytest.mark.slow
def test_camera_on_a_video_with_no_frames_fails(tiny_bundle, tmp_path):
    import cv2

    video = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()
    assert cv2.VideoCapture(str(video)).isOpened()  # opens; holds no frame
    code, out = _run("camera", tiny_bundle, "--source", video, "--no-display")
    _one_line_error(code, out, video, "no frame", rc=1)


@pytest.mark.slow
def test_camera_whose_stream_is_lost_for_good_fails(tiny_bundle, photos_root, monkeypatch):
    import numpy as np

    import edgeres.camera as camera
    import edgeres.camera.sources as sources
    from edgeres.preprocess import decode

    frame = np.ascontiguousarray(np.asarray(decode(next((photos_root / "validation" / "cats").glob("*.jpg"))))[:, :, ::-1])

    class LostStream(sources.Source):
        kind, live, fps = sources.SourceKind.STREAM, True, 30.0

        def __init__(self):
            super().__init__("rtsp://cam.local/live")
            self.opens, self.left = 0, 3

        def open(self):
            self.opens += 1
            if self.opens > 1:
                raise sources.CameraError("connection refused")

        def read(self):
            if self.left == 0:
                return False, None
            self.left -= 1
            return True, frame.copy()

    monkeypatch.setattr(camera, "RECONNECT_BACKOFF_S", (0.01, 0.01))
    monkeypatch.setattr(sources, "parse_source", lambda spec: LostStream())
    code, out = _run("camera", tiny_bundle, "--source", "rtsp://cam.local/live", "--no-display", "--every-frame")
    _one_line_error(code, out, "rtsp://cam.local/live", "lost", "3 frame(s)", rc=1)


# -- 3. --float-layers: unknown names refused before converting, never recorded --------------------


@pytest.mark.slow
def test_unknown_float_layers_are_refused_before_converting(trained_run, tmp_path):
    out = tmp_path / "b"
    code, text = _run("export", trained_run, "--out", out, "--float-layers", "no_such_layer,conv1_conv",
                      "--no-client-check")
    _one_line_error(code, text, "'no_such_layer'", "layer_errors.csv", "conv")
    assert "'conv1_conv'" not in text  # it exists
    assert "Converted" not in text and not out.exists()
    code, text = _run("export", trained_run, "--out", out, "--float32", "--float-layers", "conv1_conv")
    _one_line_error(code, text, "--float-layers", "--int8")
    assert not out.exists()


# -- 9/10. fuzz: bad files and options through every reading command --------------------------------
#
# Each case: a file of a bundle (or a run, or a manifest) made bad one way, or an option given a bad
# value, run through the CLI: a non-zero exit, no traceback, one error line naming the bad thing.
# No training or converting happens inside the loop: every case fails before that work starts.

_VALID = object()  # the bundle's own edgeres.json, changed by a function
_BUNDLE_FILES = [
    ("edgeres.json", b"", "is empty"),
    ("edgeres.json", b'{"models": {"int8": {"fi', "not valid JSON"),
    ("edgeres.json", b"[]", "JSON array"),
    ("edgeres.json", b"\xff\xfe\x00\x01", "not text"),
    ("edgeres.json", lambda m: {**m, "models": ["int8"]}, '"models"'),
    ("edgeres.json", lambda m: {**m, "models": {"int8": "model_int8.tflite"}}, '"models"'),
    ("edgeres.json", lambda m: {**m, "models": {"int8": {"file": 7}}}, '"models"'),
    ("edgeres.json", lambda m: {**m, "models": {"int8": {"file": "../elsewhere/model.tflite"}}}, '"models"'),
    ("edgeres.json", lambda m: {**m, "labels": "cats dogs"}, '"labels"'),
    ("edgeres.json", lambda m: {**m, "input": [64, 64]}, '"input"'),
    ("edgeres.json", lambda m: {**m, "status": ["failed"]}, '"status"'),
    ("model_int8.tflite", b"", "not a .tflite model"),
    ("model_int8.tflite", b"\x00" * 64, "not a .tflite model"),
    ("model_int8.tflite", "half", ""),  # cut: named with the reason LiteRT gives
    ("model_int8.tflite", "gone", "missing"),  # listed in edgeres.json: never a silent switch to float32
    ("model_int8.tflite", "folder", "not a file"),
]
_COMMANDS = {
    "predict": lambda b, photo, data: ["predict", b, photo],
    "evaluate": lambda b, photo, data: ["evaluate", b, "--data", data, "--limit", "4"],
    "bench": lambda b, photo, data: ["bench", b, "--runs", "2", "--warmup", "0"],
    "camera": lambda b, photo, data: ["camera", b, "--source", photo, "--no-display"],
}


def _cases():
    commands = list(_COMMANDS)
    for i, (name, content, said) in enumerate(_BUNDLE_FILES):
        command = commands[i % len(commands)]  # every command sees several kinds of bad file
        kind = content if isinstance(content, str) else "fn" if callable(content) else repr(content[:12])
        yield pytest.param(command, name, content, said, id=f"{command}-{name}-{i}-{kind}")


@pytest.mark.slow
@pytest.mark.parametrize("command, name, content, said", list(_cases()))
def test_fuzz_bad_bundle_files(tiny_bundle, quant_dataset, tmp_path, command, name, content, said):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    target = bundle / name
    if callable(content):
        target.write_text(json.dumps(content(json.loads(target.read_text()))))
    elif content == "half":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif content in ("gone", "folder"):
        target.unlink()
        if content == "folder":
            target.mkdir()
    else:
        target.write_bytes(content)
    photo = next((quant_dataset / "validation" / "cats").glob("*.jpg"))
    code, out = _run(*_COMMANDS[command](bundle, photo, quant_dataset))
    _one_line_error(code, out, target, said)


_MANIFEST_HEAD = "# edgeres calibration manifest v1\n# root: {root}\n# seed: 0\n"


@pytest.mark.slow
@pytest.mark.parametrize("body, said", [
    ("not a manifest line\n", "line 4"),
    ("0123abcd  train/cats/x.jpg\n", "line 4"),  # a hash cut short
    ("{h}  /etc/passwd\n", "line 4"),
    ("{h}  ../outside.jpg\n", "line 4"),
    ("{h}  train/cats/cat.1.jpg\naaaaaaaa", "line 5"),  # cut mid-line
    ("# seed: many\n{h}  train/cats/cat.1.jpg\n", "seed"),
])
def test_fuzz_bad_calibration_manifests(trained_run, quant_dataset, tmp_path, body, said):
    manifest = tmp_path / "calibration.txt"
    manifest.write_text(_MANIFEST_HEAD.format(root=quant_dataset) + body.format(h="a" * 64))
    code, out = _run("export", trained_run, "--out", tmp_path / "b", "--calibration", manifest,
                     "--no-client-check", "--no-layer-report")
    _one_line_error(code, out, manifest, said)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, said", [
    (["evaluate", "{bundle}", "--data", "{data}", "--split", "holdout"], "--split"),
    (["evaluate", "{bundle}", "--data", "{photo}"], "is a file, not a folder"),
    (["evaluate", "{bundle}", "--data", "{missing}"], "not found"),
    (["evaluate", "{photo}", "--data", "{data}"], "not a .tflite model"),
    (["predict", "{missing}", "{photo}"], "no such file"),
    (["bench", "{data}"], "not an edgeres bundle"),
    (["camera", "{bundle}", "--source", "{missing}", "--no-display"], "no such file"),
    (["camera", "{bundle}", "--source", "{photo}", "--no-display", "--compare", "{photo}"], "not a .tflite model"),
    (["doctor", "--model", "{photo}", "--cameras", "0"], "not a .tflite model"),
    (["calibrate", "--data", "{photo}", "--out", "{missing}"], "is a file, not a folder"),
    (["export", "{data}"], "not a finished edgeres run"),
    (["evaluate", "{bundle}", "--data", "{data}", "--split", "../validation"], "--split"),
    (["evaluate", "{bundle}", "--data", " "], "--data is empty"),
    (["predict", "{bundle}", "{long}"], "File name too long"),
    (["evaluate", "{bundle}", "--data", "{long}"], "File name too long"),
    (["camera", "{bundle}", "--source", "{long}", "--no-display"], "File name too long"),
])
def test_fuzz_bad_paths_given_as_options(args, said, tiny_bundle, quant_dataset, tmp_path):
    photo = next((quant_dataset / "validation" / "cats").glob("*.jpg"))
    values = {"bundle": tiny_bundle, "data": quant_dataset, "photo": photo, "missing": tmp_path / "nope",
              "long": tmp_path / ("x" * 300)}
    code, out = _run(*[a.format(**values) for a in args])
    _one_line_error(code, out, said)


def test_data_env_that_is_wrong_is_named(tmp_path, monkeypatch):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"x")
    code, out = _run("calibrate", "--out", tmp_path / "c.txt", env={"EDGERES_DATA": str(photo)})
    _one_line_error(code, out, "$EDGERES_DATA", photo)
    code, out = _run("calibrate", "--out", tmp_path / "c.txt", env={"EDGERES_DATA": str(tmp_path / "gone")})
    _one_line_error(code, out, "$EDGERES_DATA", "unset")


def test_cut_probes_are_named(tiny_bundle, tmp_path):
    from edgeres.bundle import ModelError, load_probes

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    data = (bundle / "probes.npz").read_bytes()
    (bundle / "probes.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="probes.npz"):
        load_probes(bundle, (64, 64))


def test_train_that_would_train_nothing_is_refused(small_dataset, tmp_path):
    code, out = _run("train", "--data", small_dataset, "--out", tmp_path / "run", "--arch", "resnet-tiny",
                     "--weights", "none", "--image-size", "64", "--epochs", "0")
    _one_line_error(code, out, "--epochs 0", "--epochs 1")
    assert not (tmp_path / "run").exists()
