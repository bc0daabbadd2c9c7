"""Issue 22: the bundle records what each runtime computes; ``edgeres check`` compares a device with it.

On the shared tiny bundle (trained on real photos, exported here): export's probe choice and
records, the check passing on this machine's two CPU runtimes, and a perturbed or flipping
runtime (a Backend, as in the accelerator self-check tests) caught.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeres.check import CheckError, check, compare_outputs, load_records
from edgeres.export.runtimes import RUNTIME_PROBES, RUNTIME_PROBES_FILE
from edgeres.preprocess import load_pixels
from edgeres.runtime import Classifier, CompiledModelBackend

EDGERES = [sys.executable, "-m", "edgeres.cli"]


def run_cli(*args, check_rc=0):
    out = subprocess.run([*EDGERES, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert out.returncode == check_rc, (out.returncode, out.stdout, out.stderr)
    return out


class Shifted:
    """A runtime whose outputs are the CPU's moved ``steps`` uint8 steps from the first class to
    the last: small enough to pass the accelerator self-check (0.10), too large for this check."""

    def __init__(self, clf: Classifier, steps: int):
        self.inner = CompiledModelBackend(clf.path, "cpu", threads=1, outputs=len(clf.labels),
                                          output_dtype=clf.output_dtype)
        self.name, self.steps = f"shifted runtime (+{steps} steps)", steps

    def run(self, tensor):
        raw = self.inner.run(tensor).astype(np.int32)
        raw[0] -= self.steps
        raw[-1] += self.steps
        return np.clip(raw, 0, 255).astype(np.uint8)


class Flipping:
    """A runtime that swaps the two scores where they are within ``steps`` of each other: the
    label of a borderline photo flips, every difference stays small."""

    def __init__(self, clf: Classifier, steps: int):
        self.inner = CompiledModelBackend(clf.path, "cpu", threads=1, outputs=len(clf.labels),
                                          output_dtype=clf.output_dtype)
        self.name, self.steps = "flipping runtime", steps

    def run(self, tensor):
        raw = np.asarray(self.inner.run(tensor)).copy()
        if abs(int(raw[0]) - int(raw[1])) <= self.steps:
            raw = raw[::-1].copy()
        return raw


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _set_uncertain(bundle, threshold):
    meta = json.loads((bundle / "edgeres.json").read_text())
    meta["uncertain"] = {"threshold": threshold, "source": "manual"}
    (bundle / "edgeres.json").write_text(json.dumps(meta))


def test_export_records_each_runtime_on_the_boundary_photos(tiny_export, quant_dataset):
    bundle = tiny_export.bundle
    rec = json.loads((bundle / "edgeres.json").read_text())["runtimes"]
    n = rec["probes"]["n"]
    assert rec["model"] == "model_int8.tflite" and n == RUNTIME_PROBES and rec["probes"]["shape"] == [n, 64, 64, 3]
    assert (bundle / RUNTIME_PROBES_FILE).stat().st_size == n * 64 * 64 * 3
    assert set(rec["outputs"]) == {"xnnpack/x86_64", "builtin/x86_64"} and rec["tolerance_steps"] == 12
    records = load_records(bundle)
    for name, out in records.outputs.items():
        assert out.shape == (n, 2) and out.dtype == np.uint8
    # The probe bytes are the photos named in "sources", as predict feeds them.
    for i in (0, 6, n - 1):
        assert np.array_equal(records.probes[i], load_pixels(quant_dataset / records.sources[i], 64))
    # The pair numbers are those of the recorded outputs; the summary reports them.
    (pair,) = rec["pairs"]
    assert pair == {"a": "xnnpack/x86_64", "b": "builtin/x86_64",
                    **compare_outputs(records.outputs["xnnpack/x86_64"], records.outputs["builtin/x86_64"])}
    assert f"{pair['differ']}/{n} probes differ, max {pair['max_steps']} steps" in tiny_export.summary()
    # The 42 validation photos are those nearest the boundary: none left out is nearer.
    clf = Classifier(bundle, accelerator="cpu")
    margin = {}
    for p in sorted((quant_dataset / "validation").glob("*/*.jpg")):
        top = np.sort(clf.predict(p).probabilities)[::-1]
        margin[p.relative_to(quant_dataset).as_posix()] = top[0] - top[1]
    chosen = set(records.sources[6:])
    assert len(chosen) == n - 6 and chosen <= set(margin)
    assert max(margin[s] for s in chosen) <= min(m for s, m in margin.items() if s not in chosen)


def test_check_passes_on_this_machine_for_both_kernels(tiny_bundle):
    out = run_cli("check", tiny_bundle)
    assert out.stdout.startswith("check passed: xnnpack/x86_64 on 48 probes, matches recorded xnnpack/x86_64 exactly")
    assert len(out.stdout.strip().splitlines()) == 1
    result = json.loads(run_cli("check", tiny_bundle, "--kernels", "builtin", "--json").stdout)
    assert result["runtime"] == "builtin/x86_64" and result["matches"] == "builtin/x86_64"
    assert result["passed"] is True and result["max_steps"] == 0 and result["flips"] == []
    assert set(result) == {"bundle", "runtime", "backend", "probes", "matches", "differ", "max_steps", "mean_steps",
                           "tolerance_steps", "threshold", "flips", "passed", "against", "notes", "line"}
    recorded = load_records(tiny_bundle).outputs
    assert result["against"]["xnnpack/x86_64"] == compare_outputs(recorded["builtin/x86_64"], recorded["xnnpack/x86_64"])


def test_check_runs_without_tensorflow(tiny_bundle):
    code = ("import sys; from edgeres.check import check; r = check(sys.argv[1]); "
            "assert r.passed; assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_perturbed_runtime_fails_the_check(tiny_bundle, tmp_path):
    cpu = Classifier(tiny_bundle, accelerator="cpu")
    result = check(tiny_bundle, backend=Shifted(cpu, 20))
    # The accelerator self-check lets it through (20/256 < 0.10): only the runtime check sees it.
    assert result.backend == "shifted runtime (+20 steps)" and result.runtime == result.backend
    assert not result.passed and result.max_steps == 20 and result.differ >= 42  # (0, 255) cannot move
    assert result.line().startswith("check FAILED: shifted runtime (+20 steps) on 48 probes")
    assert "max 20 steps > tolerance 12" in result.line()
    wide = check(tiny_bundle, backend=Shifted(cpu, 20), tolerance=20)  # the steps pass; flips above the band still fail
    assert "max 20 steps <= tolerance 20" in wide.line() and wide.passed == (not wide.unexpected_flips)
    assert check(tiny_bundle, backend=Shifted(cpu, 3)).passed


def test_flips_fail_outside_the_uncertain_band_only(bundle_copy):
    cpu = Classifier(bundle_copy, accelerator="cpu")
    recorded = load_records(bundle_copy).outputs["xnnpack/x86_64"].astype(int)
    gap = np.abs(recorded[:, 0] - recorded[:, 1])
    borderline = set(np.flatnonzero((gap <= 6) & (gap > 0)))  # a tie swapped is the same tie
    assert borderline, "the boundary probes should include a photo within 6 steps of 50/50"
    result = check(bundle_copy, backend=Flipping(cpu, 6))
    assert result.matches == "xnnpack/x86_64" and result.max_steps <= 6
    assert {f["probe"] for f in result.flips} == borderline
    assert result.passed == (not result.unexpected_flips)  # the export's own band decides the flips
    _set_uncertain(bundle_copy, None)
    result = check(bundle_copy, backend=Flipping(cpu, 6))
    assert result.passed and "(no uncertain band recorded)" in result.line()  # no band: steps decide
    top = max(f["recorded_score"] for f in result.flips)
    _set_uncertain(bundle_copy, round(top + 0.05, 3))  # every flipped probe inside the band
    inside = check(bundle_copy, backend=Flipping(cpu, 6))
    assert inside.passed and all(f["expected"] for f in inside.flips)
    assert f"{len(inside.flips)} inside the uncertain band, expected; 0 at score >=" in inside.line()
    _set_uncertain(bundle_copy, round(top - 0.002, 4))  # the surest flip is now outside it
    outside = check(bundle_copy, backend=Flipping(cpu, 6))
    assert not outside.passed and len(outside.unexpected_flips) >= 1
    assert outside.line().startswith("check FAILED")


def test_bundle_without_records_gives_one_clear_line(bundle_copy):
    meta = json.loads((bundle_copy / "edgeres.json").read_text())
    (bundle_copy / RUNTIME_PROBES_FILE).write_bytes(b"\0" * 100)
    out = run_cli("check", bundle_copy, check_rc=2)
    assert "runtime_probes.bin: 100 bytes" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    del meta["runtimes"]
    (bundle_copy / "edgeres.json").write_text(json.dumps(meta))
    out = run_cli("check", bundle_copy, check_rc=2)
    assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
    assert "no runtime records" in out.stderr and "edgeres export RUN --int8" in out.stderr
    with pytest.raises(CheckError, match="no runtime records"):
        check(bundle_copy)


def test_doctor_shows_the_runtime_check(tiny_bundle):
    from typer.testing import CliRunner

    from edgeres.cli import app

    args = ["doctor", "--cameras", "0", "--accelerator", "cpu", "--model", str(tiny_bundle)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert report["runtime_check"]["passed"] is True and report["runtime_check"]["matches"] == "xnnpack/x86_64"
    text = CliRunner().invoke(app, args).output
    assert "Runtime     check passed: xnnpack/x86_64 on 48 probes" in text


def test_bench_check_reports_the_runtime_check(tiny_bundle):
    result = json.loads(run_cli("bench", tiny_bundle, "--runs", "2", "--warmup", "0", "--check", "--json").stdout)
    check_ = result["runtime_checks"][str(tiny_bundle)]
    assert check_["passed"] is True and check_["matches"] == "xnnpack/x86_64" and check_["probes"] == 48
    assert "runtime_checks" not in json.loads(run_cli("bench", tiny_bundle, "--runs", "2", "--warmup", "0",
                                                      "--json").stdout)
