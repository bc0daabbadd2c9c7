"""``edgeres doctor`` on this machine (JSON keys, types and the values that must hold here), a
missing extra named, the GPU-unused warning; and the install rule behind it: no set of extras
ever installs both ``tensorflow`` and ``tensorflow-cpu``."""

from __future__ import annotations

import copy
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EDGERES = [sys.executable, "-m", "edgeres.cli"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "200"}
NO_NVIDIA = not Path("/proc/driver/nvidia").exists() and shutil.which("nvidia-smi") is None


@pytest.fixture(scope="module")
def report() -> dict:
    out = subprocess.run([*EDGERES, "doctor", "--json", "--cameras", "2"], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    return json.loads(out.stdout)


def test_doctor_json_keys_types_and_this_machine(report):
    assert set(report) >= {"python", "packages", "nvidia", "tensorflow", "litert", "opencv", "cameras",
                           "mediapipe", "disk", "problems", "notes", "ok", "need"}
    assert report["ok"] is True and report["problems"] == []
    assert report["python"]["version"] == platform.python_version()
    assert report["packages"]["ai-edge-litert"] and report["packages"]["edgeres"]

    tf = report["tensorflow"]
    assert tf["installed"] is True and tf["error"] is None and tf["version"].startswith("2.")
    assert len(tf["distributions"]) == 1  # never tensorflow and tensorflow-cpu together
    assert isinstance(tf["gpus"], list) and isinstance(tf["built_with_cuda"], bool)
    # edgeres.train's rule: mixed precision and XLA exactly when TensorFlow sees a GPU.
    assert tf["mixed_precision"] is tf["xla"] is bool(tf["gpus"])
    if NO_NVIDIA:  # this development machine: no driver, so no GPU anywhere
        assert report["nvidia"] == {"present": False, "driver_version": None, "gpus": []}
        assert tf["gpus"] == [] and tf["mixed_precision"] is False

    lit = report["litert"]
    assert lit["installed"] is True and lit["cpu"] == {"ok": True, "reason": None}
    assert isinstance(lit["gpu"]["ok"], bool)
    if not lit["gpu"]["ok"]:
        assert isinstance(lit["gpu"]["reason"], str) and lit["gpu"]["reason"]  # says why
    if NO_NVIDIA and not any(Path("/dev/dri").glob("renderD*")):
        assert lit["gpu"]["ok"] is False

    cv = report["opencv"]
    assert cv["installed"] is True and cv["version"] and "FFMPEG" in cv["video_backends"]
    assert isinstance(cv["gui"], str)
    assert [c["index"] for c in report["cameras"]] == [0, 1]
    for cam in report["cameras"]:
        assert isinstance(cam["opens"], bool) and (cam["opens"] or cam["reason"])
        if not Path(f"/dev/video{cam['index']}").exists():
            assert cam["opens"] is False

    mp = report["mediapipe"]
    assert isinstance(mp["available"], bool)
    if os.environ.get("EDGERES_MEDIAPIPE_PYTHON"):
        assert mp["available"] is True and mp["source"] == "EDGERES_MEDIAPIPE_PYTHON" and mp["version"]
    else:
        assert mp["available"] or "EDGERES_MEDIAPIPE_PYTHON" in mp["reason"]

    disk = report["disk"]
    usage = shutil.disk_usage(REPO)
    assert 0 < disk["free_gib"] <= disk["total_gib"] and abs(disk["free_gib"] - usage.free / 2**30) < 1.0


def test_text_report_and_need_gpu_fails_here_with_the_fix():
    out = subprocess.run([*EDGERES, "doctor", "--cameras", "0", "--need", "train"], capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    for heading in ("Python", "TensorFlow", "LiteRT", "OpenCV", "MediaPipe", "Disk"):
        assert any(line.startswith(heading) for line in out.stdout.splitlines()), heading
    if NO_NVIDIA:
        gpu = subprocess.run([*EDGERES, "doctor", "--cameras", "0", "--need", "gpu"], capture_output=True,
                             text=True, timeout=300, env=ENV)
        assert gpu.returncode == 1
        assert "problem: TensorFlow sees no GPU" in gpu.stdout and "edgeres[gpu]" in gpu.stdout
    bad = subprocess.run([*EDGERES, "doctor", "--need", "gpus"], capture_output=True, text=True, timeout=120, env=ENV)
    assert bad.returncode == 2 and "gpus" in bad.stderr


def test_missing_camera_extra_is_named(monkeypatch):
    from typer.testing import CliRunner

    from edgeres.cli import app

    monkeypatch.setitem(sys.modules, "cv2", None)  # what an install without the camera extra has
    runner = CliRunner()
    note = runner.invoke(app, ["doctor", "--cameras", "0"])
    assert note.exit_code == 0, note.output
    assert "OpenCV      not installed" in note.output and "pip install 'edgeres[camera]'" in note.output
    needed = runner.invoke(app, ["doctor", "--cameras", "0", "--need", "camera", "--json"])
    assert needed.exit_code == 1
    report = json.loads(needed.output)
    assert report["opencv"]["installed"] is False and report["cameras"] == [] and report["ok"] is False
    assert [p["fix"] for p in report["problems"]] == ["pip install 'edgeres[camera]'"]


def test_missing_quantizer_is_named_for_train(monkeypatch):
    """Without ai-edge-quantizer, --need train fails naming it and the extra that brings it, and
    an int8 export says the same in one line instead of an ImportError."""
    from edgeres import doctor
    from edgeres.export.quantize import QuantizeError, quantize

    real = doctor._package_versions
    monkeypatch.setattr(doctor, "_package_versions", lambda: {**real(), "ai-edge-quantizer": None})
    report = doctor.diagnose(need=("train",), cameras=[])
    assert report["ok"] is False
    assert any("ai-edge-quantizer" in p["what"] and "edgeres[train]" in p["fix"] for p in report["problems"])
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    with pytest.raises(QuantizeError, match=r"edgeres\[train\]"):
        quantize(b"", {})


def test_gpu_unused_message_and_findings(report):
    from edgeres.doctor import _findings, gpu_unused_by_tensorflow

    driver = {"present": True, "driver_version": "580.1", "gpus": [{"name": "NVIDIA H100", "memory_mib": 81559,
                                                                      "compute_capability": "9.0"}]}
    tf_cpu = {"installed": True, "distributions": ["tensorflow-cpu"], "gpus": [], "error": None,
              "built_with_cuda": False}
    msg = gpu_unused_by_tensorflow(driver, tf_cpu)
    assert "NVIDIA H100" in msg and "pip uninstall -y tensorflow-cpu tensorflow && pip install 'edgeres[gpu]'" in msg
    no_cuda_libs = {**tf_cpu, "distributions": ["tensorflow"], "built_with_cuda": True}
    assert "pip install 'edgeres[gpu]'" in gpu_unused_by_tensorflow(driver, no_cuda_libs)
    assert gpu_unused_by_tensorflow(driver, {**no_cuda_libs, "gpus": [{"name": "H100"}]}) is None
    assert gpu_unused_by_tensorflow({"present": False, "driver_version": None, "gpus": []}, tf_cpu) is None

    both = copy.deepcopy(report)
    both["tensorflow"]["distributions"] = ["tensorflow", "tensorflow-cpu"]
    problems, _ = _findings(both, set())
    assert any("both installed" in p["what"] and "pip uninstall -y tensorflow tensorflow-cpu" in p["fix"]
               for p in problems)
    unused = copy.deepcopy(report)
    unused["nvidia"], unused["tensorflow"] = driver, {**report["tensorflow"], **no_cuda_libs}
    problems, notes = _findings(unused, set())
    assert not problems and any("sees no GPU" in n["what"] for n in notes)  # a note, unless --need gpu
    problems, _ = _findings(unused, {"gpu"})
    assert any("sees no GPU" in p["what"] for p in problems)


@pytest.mark.slow
def test_train_warns_once_when_the_gpu_is_unused(monkeypatch, capsys):
    import edgeres.doctor
    from edgeres import train

    monkeypatch.setattr(edgeres.doctor, "gpu_unused_by_tensorflow", lambda: "the driver shows X but TensorFlow sees no GPU")
    monkeypatch.setattr(train, "_warned_gpu_unused", False)
    train._warn_if_gpu_unused(1)
    train._warn_if_gpu_unused(1)
    assert capsys.readouterr().err.count("warning: the driver shows X") == 1


# -- install: never tensorflow and tensorflow-cpu together ----------------------------------------

TF_DISTS = {"tensorflow", "tensorflow-cpu"}
PLATFORMS = [  # marker environments a user may install on
    {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"},
    {"platform_system": "Linux", "platform_machine": "aarch64", "sys_platform": "linux"},
    {"platform_system": "Darwin", "platform_machine": "arm64", "sys_platform": "darwin"},
    {"platform_system": "Windows", "platform_machine": "AMD64", "sys_platform": "win32"},
]


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _requirements(extras: set[str], env: dict) -> list:
    """What pip would install for ``edgeres[extras]`` on ``env``, self-references expanded."""
    from packaging.requirements import Requirement

    table, seen, out, todo = _extras(), set(), [], list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in table[extra]:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({**env, "extra": extra}):
                continue
            if req.name == "edgeres":
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


def test_no_extras_combination_names_both_tensorflows():
    names = sorted(_extras())
    assert {"train", "gpu", "camera", "dev"} <= set(names)
    for env in PLATFORMS:
        for k in range(1, len(names) + 1):
            for combo in itertools.combinations(names, k):
                tf = {r.name for r in _requirements(set(combo), env)} & TF_DISTS
                assert len(tf) <= 1, (combo, env, tf)
    linux = PLATFORMS[0]
    gpu = [r for r in _requirements({"gpu"}, linux) if r.name == "tensorflow"]
    assert len(gpu) == 1 and gpu[0].extras == {"and-cuda"} and str(gpu[0].specifier) == "==2.21.0"
    train = [r for r in _requirements({"dev"}, linux) if r.name in TF_DISTS]
    assert [(r.name, str(r.specifier)) for r in train] == [("tensorflow", "==2.21.0")]


def _dry_run(spec: str, tmp_path: Path) -> dict[str, str]:
    report = tmp_path / f"{abs(hash(spec))}.json"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--report", str(report), spec], capture_output=True, text=True, timeout=900)
    if out.returncode != 0 and ("Could not fetch" in out.stderr or "NewConnectionError" in out.stderr):
        pytest.skip(f"package index unreachable: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(os.environ.get("EDGERES_NETWORK_TESTS") != "1",
                    reason="needs the package index and ~15 minutes: set EDGERES_NETWORK_TESTS=1 to run it")
@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64",
                    reason="the CUDA wheels of tensorflow[and-cuda] exist for Linux x86-64 only")
def test_pip_resolves_one_tensorflow_for_cpu_gpu_and_both(tmp_path):
    """pip's own resolver (needs the package index; ~5 minutes per resolution on a busy 2-core
    machine): [dev] is the CPU set-up; [dev,gpu] (every extra at once, so [gpu] with the rest)
    brings NVIDIA's CUDA wheels and still has one TensorFlow."""
    resolved = {extras: _dry_run(f"{REPO}[{extras}]", tmp_path) for extras in ("dev", "dev,gpu")}
    for extras, packages in resolved.items():
        assert packages.get("tensorflow") == "2.21.0" and "tensorflow-cpu" not in packages, extras
    cuda = {n for n in resolved["dev,gpu"] if n.startswith("nvidia-")}
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"} <= cuda
    assert not any(n.startswith("nvidia-") for n in resolved["dev"])


@pytest.mark.slow
def test_doctor_model_reports_where_it_runs_and_the_fallback(tiny_bundle):
    """--model: the accelerator's self-check (or why it is not used) for a real bundle."""
    from typer.testing import CliRunner

    from edgeres.cli import app

    result = CliRunner().invoke(app, ["doctor", "--json", "--cameras", "0", "--model", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    check = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])["model_check"]
    assert check["requested"] == "gpu" and check["backend"].startswith("CPU")
    # No GPU here: not used, and said why; on a GPU machine the self-check numbers appear instead.
    assert check["accelerated"] is False and any("GPU" in m for m in check["messages"])
