"""The documented command-line flow, end to end on a tiny model: train, Ctrl-C, resume,
calibrate, export, evaluate — as a user types it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

EDGERES = [sys.executable, "-m", "edgeres.cli"]
ENV = {**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"}


def cli(*args, rc: int | None = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([*EDGERES, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)
    if rc is not None:
        assert out.returncode == rc, (out.returncode, out.stdout[-3000:], out.stderr[-3000:])
    return out


def test_train_ctrl_c_resume_calibrate_export_evaluate(small_dataset, tmp_path):
    run = tmp_path / "runs" / "tiny"
    train_args = ["train", "--data", small_dataset, "--out", run, "--arch", "resnet-tiny", "--image-size", "32",
                  "--batch-size", "16", "--epochs", "3", "--learning-rate", "0.003"]
    proc = subprocess.Popen([*EDGERES, *map(str, train_args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    deadline = time.time() + 300
    while not (run / "state.json").exists():  # the first epoch's checkpoint
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "first epoch took too long"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    state = json.loads((run / "state.json").read_text())
    if proc.returncode == 0:  # the run finished before the signal landed: nothing to resume
        assert state["epoch"] == 3
    else:
        assert proc.returncode == 130, (stdout[-2000:], stderr[-2000:])
        assert "--resume" in stdout + stderr and "Traceback" not in stderr
        assert 1 <= state["epoch"] < 3

    again = cli(*train_args, rc=2)
    assert "already exists" in again.stderr and "--resume" in again.stderr
    done = cli("train", "--out", run, "--resume")  # the run remembers its data and length
    assert "Done: 3 epochs" in done.stdout
    assert json.loads((run / "state.json").read_text())["epoch"] == 3
    assert len(json.loads((run / "history.json").read_text())) == 3

    manifest = tmp_path / "calibration" / "tiny.txt"
    out = cli("calibrate", "--data", small_dataset, "--size", "20", "--seed", "1", "--out", manifest)
    assert "20 images" in out.stdout
    assert "recommended" in out.stderr  # fewer than ~300 images: warned, not refused

    bundle = tmp_path / "export" / "tiny"
    out = cli("export", run, "--int8", "--out", bundle, "--data", small_dataset, "--calibration", manifest,
              "--max-drop", "100", "--no-layer-report")
    assert "PASSED" in out.stdout and "agreement" in out.stdout
    meta = json.loads((bundle / "edgeres.json").read_text())
    assert meta["calibration"]["images"] == 20 and set(meta["models"]) == {"int8", "float32", "float16"}
    assert (bundle / "calibration.txt").read_text() == manifest.read_text()
    again = cli("export", run, "--int8", "--out", bundle, rc=2)
    assert "--force" in again.stderr

    out = cli("evaluate", bundle / "model_float32.tflite", bundle / "model_int8.tflite", "--data", small_dataset)
    assert "agreement" in out.stdout and "95% CI" in out.stdout


def test_train_on_missing_data_is_one_clear_line(tmp_path):
    out = cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "run", rc=2)
    assert "Dataset folder not found" in out.stderr and "Traceback" not in out.stderr
