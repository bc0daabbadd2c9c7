"""Every command that writes (train --out, calibrate --out, export --out, evaluate --report,
camera --record) against a target it may not take: one line naming it, the right exit code,
and the file that was there byte-identical afterwards. The rule lives in edgeres.outputs."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from edgeres.cli import app
from edgeres.outputs import (CERTIFICATE_MARK, Kind, OutputError, OutputExistsError, check_output, describe,
                             identify, mark_pem, write_pem, written_file)

runner = CliRunner()


def _run(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _error_line(out: str, *names: object) -> str:
    """The one error line of ``out``, which names each of ``names``; no traceback."""
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


def _digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) -> its sha256: to show nothing changed."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    """A training run's own files (a copy: a bug here must not touch the session's run)."""
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    for name in ("model.keras", "config.json", "state.json", "labels.txt"):
        shutil.copy2(trained_run / name, run / name)
    return run


@pytest.fixture()
def locked(monkeypatch):
    """``locked(folder)``: os.access says ``folder`` is not writable (tests run as root, where
    chmod cannot lock a folder; a read-only mount says the same through access(2))."""
    real_access = os.access

    def lock(folder: Path):
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    return lock


@pytest.fixture(scope="module")
def photo_dir(quant_dataset, tmp_path_factory) -> Path:
    """Three photos: a camera source."""
    d = tmp_path_factory.mktemp("frames")
    for p in sorted((quant_dataset / "validation" / "cats").iterdir())[:3]:
        shutil.copy(p, d / p.name)
    return d


# -- calibrate --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, what", [("model.keras", "trained model"), ("config.json", "settings file")])
def test_calibrate_never_replaces_a_runs_files(run_copy, small_dataset, name, what):
    target = run_copy / name
    before = _digest(run_copy)
    for force in ((), ("--force",)):
        code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--out", target, *force)
        line = _error_line(out, target, what, "training run")
        assert code == 2 and "Pass --force" not in line, out
    assert _digest(run_copy) == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")], "a temporary file was left"


def test_calibrate_replaces_its_own_manifest_only_with_force(small_dataset, tmp_path):
    manifest = tmp_path / "calibration" / "c.txt"
    code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--seed", "1", "--out", manifest)
    assert code == 0 and identify(manifest) is Kind.MANIFEST, out
    first = manifest.read_bytes()
    code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--seed", "2", "--out", manifest)
    assert code == 2 and "Pass --force" in _error_line(out, manifest, "calibration manifest")
    assert manifest.read_bytes() == first
    code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--seed", "2", "--out", manifest, "--force")
    assert code == 0 and manifest.read_bytes() != first, out
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["c.txt"]


def test_calibrate_refuses_a_file_it_did_not_write_even_with_force(small_dataset, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("# my notes\n")
    code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--out", notes, "--force")
    line = _error_line(out, notes, "not even with --force")
    assert code == 2 and "Pass --force" not in line
    assert notes.read_text() == "# my notes\n"


def test_calibrate_into_a_read_only_folder_or_below_a_file(small_dataset, tmp_path, locked):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not a folder")
    code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--out", photo / "c.txt")
    assert code == 2 and "is a file" in _error_line(out, photo)
    folder = tmp_path / "ro"
    folder.mkdir()
    locked(folder)
    code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--out", folder / "c.txt")
    assert code == 2 and "not writable" in _error_line(out, folder)
    assert list(folder.iterdir()) == [] and photo.read_bytes() == b"not a folder"


def test_a_disk_error_while_writing_is_one_line_and_keeps_the_old_manifest(small_dataset, tmp_path, monkeypatch):
    import edgeres.outputs as outputs

    manifest = tmp_path / "c.txt"
    assert _run("calibrate", "--data", small_dataset, "--size", "8", "--out", manifest)[0] == 0
    before = manifest.read_bytes()

    def full(tmp, path, *, replace):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(outputs, "publish_file", full)
    code, out = _run("calibrate", "--data", small_dataset, "--size", "8", "--seed", "3", "--out", manifest, "--force")
    assert code == 1 and "free some space" in _error_line(out, manifest, "No space left")
    assert manifest.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


# -- export -----------------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_export_out_that_is_not_a_bundle_gives_no_dead_end_hint(trained_run, run_copy, tmp_path, force):
    a_file = tmp_path / "model.tflite"
    a_file.write_bytes(b"mine")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"jpeg")
    flag = ("--force",) if force else ()
    for target, what in ((a_file, "file edgeres did not write"), (run_copy, "training run"),
                         (folder, "cat.jpg")):
        before = _digest(target)
        code, out = _run("export", trained_run, "--out", target, "--float32", *flag)
        line = _error_line(out, target, what)
        assert code == 2 and "Pass --force" not in line and "Choose another --out" in line, line
        assert _digest(target) == before


def test_export_out_below_a_file_or_in_a_read_only_folder(trained_run, tmp_path, locked):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    code, out = _run("export", trained_run, "--out", a_file / "bundle", "--float32")
    assert code == 2 and "is a file" in _error_line(out, a_file)
    folder = tmp_path / "ro"
    folder.mkdir()
    locked(folder)
    code, out = _run("export", trained_run, "--out", folder / "bundle", "--float32")
    assert code == 2 and "not writable" in _error_line(out, folder)
    assert list(folder.iterdir()) == [] and a_file.read_text() == "mine\n"


def test_export_out_inside_the_data_is_refused(trained_run, small_dataset):
    before = _digest(small_dataset)
    code, out = _run("export", trained_run, "--data", small_dataset, "--out", small_dataset / "train" / "b", "--float32")
    assert code == 2 and "inside --data" in _error_line(out, small_dataset / "train" / "b"), out
    assert _digest(small_dataset) == before and not (small_dataset / "train" / "b").exists()


def test_export_to_an_existing_bundle_says_force(trained_run, tiny_bundle):
    before = _digest(tiny_bundle)
    code, out = _run("export", trained_run, "--out", tiny_bundle, "--float32")
    assert code == 2 and "Pass --force" in _error_line(out, tiny_bundle, "export bundle")
    assert _digest(tiny_bundle) == before


# -- evaluate --report ------------------------------------------------------------------------


def test_evaluate_report_replaces_only_its_own_report_with_force(tiny_bundle, small_dataset, tmp_path):
    report = tmp_path / "report"
    args = ("evaluate", tiny_bundle / "model_int8.tflite", "--data", small_dataset, "--limit", "4", "--report", report)
    code, out = _run(*args)
    assert code == 0 and identify(report) is Kind.REPORT, out
    (report / "report.json").write_text("{}\n")  # so that a replacement shows
    code, out = _run(*args)
    assert code == 2 and "Pass --force" in _error_line(out, report, "evaluation report")
    assert (report / "report.json").read_text() == "{}\n"
    code, out = _run(*args, "--force")
    assert code == 0 and (report / "report.json").read_text() != "{}\n", out
    assert [p.name for p in tmp_path.iterdir()] == ["report"], "a temporary folder was left"


def test_evaluate_report_refuses_other_folders_and_files(tiny_bundle, small_dataset, run_copy, tmp_path, locked):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.json").write_text("{}\n")
    (mine / "thesis.tex").write_text("\\section{}\n")
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    base = ("evaluate", tiny_bundle / "model_int8.tflite", "--data", small_dataset, "--limit", "4", "--force")
    for target, what in ((mine, "thesis.tex"), (run_copy, "training run"), (tiny_bundle, "export bundle"),
                         (a_file, "file edgeres did not write")):
        before = _digest(target)
        code, out = _run(*base, "--report", target)
        line = _error_line(out, target, what)
        assert code == 2 and "not even with --force" in line and "Pass --force" not in line, line
        assert _digest(target) == before
    code, out = _run(*base, "--report", a_file / "r")
    assert code == 2 and "is a file" in _error_line(out, a_file)
    code, out = _run(*base, "--report", small_dataset / "validation" / "r")
    assert code == 2 and "inside --data" in _error_line(out, small_dataset / "validation" / "r")
    assert not (small_dataset / "validation" / "r").exists()
    locked(tmp_path)
    code, out = _run(*base, "--report", tmp_path / "new")
    assert code == 2 and "not writable" in _error_line(out, tmp_path)
    assert not (tmp_path / "new").exists()


# -- camera --record --------------------------------------------------------------------------


def test_camera_record_replaces_only_its_own_recording(tiny_bundle, photo_dir, tmp_path):
    rec = tmp_path / "rec.avi"
    args = ("camera", tiny_bundle, "--source", photo_dir, "--no-display", "--record", rec)
    code, out = _run(*args)
    assert code == 0 and identify(rec) is Kind.RECORDING, out
    capture, frames = cv2.VideoCapture(str(rec)), 0
    while capture.read()[0]:
        frames += 1
    assert frames == 3  # the mark edgeres appends is skipped by readers
    before = _digest(rec)
    code, out = _run(*args)
    assert code == 2 and "Pass --force" in _error_line(out, rec, "recording")
    assert _digest(rec) == before
    code, out = _run(*args, "--force", "--max-frames", "1")
    assert code == 0 and _digest(rec) != before and identify(rec) is Kind.RECORDING, out


def test_camera_record_refuses_a_video_it_did_not_make_and_a_path_below_a_file(tiny_bundle, photo_dir, tmp_path,
                                                                               locked):
    holiday = tmp_path / "holiday.mp4"
    holiday.write_bytes(b"\x00\x00\x00\x18ftypmp42 a user's video")
    base = ("camera", tiny_bundle, "--source", photo_dir, "--no-display", "--force", "--record")
    code, out = _run(*base, holiday)
    line = _error_line(out, holiday, "not even with --force")
    assert code == 2 and "Pass --force" not in line
    assert holiday.read_bytes() == b"\x00\x00\x00\x18ftypmp42 a user's video"
    code, out = _run(*base, holiday / "rec.mp4")
    assert code == 2 and "is a file" in _error_line(out, holiday / "rec.mp4", holiday)
    locked(tmp_path)
    code, out = _run(*base, tmp_path / "new" / "rec.mp4")
    assert code == 2 and "not writable" in _error_line(out, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday.mp4"]


# -- train --out ------------------------------------------------------------------------------


def test_train_out_inside_data_below_a_file_or_read_only(small_dataset, tmp_path, locked):
    before = _digest(small_dataset)
    for out_dir in (small_dataset / "run", small_dataset / "train" / "cats" / "run"):
        code, out = _run("train", "--data", small_dataset, "--out", out_dir, "--arch", "resnet-tiny", "--epochs", "1")
        assert code == 2 and "inside --data" in _error_line(out, out_dir), out
        assert not out_dir.exists()
    assert _digest(small_dataset) == before
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    code, out = _run("train", "--data", small_dataset, "--out", a_file / "run", "--arch", "resnet-tiny")
    assert code == 2 and "is a file" in _error_line(out, a_file)
    code, out = _run("train", "--data", small_dataset, "--out", a_file, "--arch", "resnet-tiny")
    assert code == 2 and "not an edgeres training run" in _error_line(out, a_file) and a_file.read_text() == "x"
    locked(tmp_path)
    code, out = _run("train", "--data", small_dataset, "--out", tmp_path / "run", "--arch", "resnet-tiny")
    assert code == 2 and "not writable" in _error_line(out, tmp_path)
    assert not (tmp_path / "run").exists()


# -- the rule itself ---------------------------------------------------------------------------


def test_identify_knows_each_artifact_and_nothing_else(tiny_bundle, trained_run, tmp_path):
    assert identify(tiny_bundle) is Kind.BUNDLE and identify(trained_run) is Kind.RUN
    assert identify(tiny_bundle / "calibration.txt") is Kind.MANIFEST
    assert identify(trained_run / "model.keras") is None and identify(tiny_bundle / "labels.txt") is None
    pem = write_pem(tmp_path / "cert.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert identify(pem) is Kind.CERTIFICATE and pem.read_text().startswith(CERTIFICATE_MARK)
    key = write_pem(tmp_path / "key.pem", b"-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n", private=True)
    assert key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(OutputExistsError, match="Pass --force"):
        write_pem(key, b"other", private=True)
    assert write_pem(key, b"new", force=True, private=True).read_bytes() == mark_pem(b"new")
    other = tmp_path / "other.pem"
    other.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert identify(other) is None
    with pytest.raises(OutputExistsError, match="not even with --force"):
        check_output(other, Kind.CERTIFICATE, force=True)
    assert check_output(pem, Kind.CERTIFICATE, force=True) == pem
    # A bundle a user added to is no longer (only) ours.
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / "notes.md").write_text("mine")
    assert identify(copy) is None and "notes.md" in describe(copy)
    link = tmp_path / "link"
    link.symlink_to(copy)
    with pytest.raises(OutputExistsError, match="symbolic link"):
        check_output(link, Kind.BUNDLE, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, Kind.REPORT, force=False) == empty
    with pytest.raises(OutputError, match="is a directory"):
        check_output(empty, Kind.MANIFEST, force=True)


def test_a_file_that_appears_while_writing_is_never_clobbered(tmp_path):
    target = tmp_path / "c.txt"
    with pytest.raises(OutputExistsError, match="created by another program"):
        with written_file(target, replace=False) as tmp:
            tmp.write_text("new")
            target.write_text("someone else's")
    assert target.read_text() == "someone else's" and sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_camera_snapshot_dir_that_is_a_file_is_refused_before_the_window_opens(tiny_bundle, photo_dir, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("DISPLAY", ":99")  # checked before any window is opened: no X server needed
    a_file = tmp_path / "shots"
    a_file.write_text("x")
    for target in (a_file, a_file / "more"):
        code, out = _run("camera", tiny_bundle, "--source", photo_dir, "--snapshot-dir", target)
        assert code == 2 and "is a file" in _error_line(out, a_file)
    assert a_file.read_text() == "x"


def test_serve_certificates_follow_the_rule(tmp_path):
    """serve --https writes cert.pem/key.pem through the shared rule: a certificate the user put
    there survives, even with force; edgeres's own are replaced only with force; the key is private."""
    import ssl

    from edgeres.serve import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path / "tls", ["localhost", "127.0.0.1"])
    assert cert.read_text().startswith(CERTIFICATE_MARK)
    assert key.stat().st_mode & 0o077 == 0
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)  # still a valid chain
    before = cert.read_bytes()
    with pytest.raises(OutputExistsError):
        self_signed_certificate(tmp_path / "tls", ["localhost"])
    assert cert.read_bytes() == before
    self_signed_certificate(tmp_path / "tls", ["localhost"], force=True)
    assert cert.read_bytes() != before

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nuser's own\n-----END PRIVATE KEY-----\n")
    digest = _digest(theirs)
    with pytest.raises(OutputError, match="key.pem"):
        self_signed_certificate(theirs, ["localhost"], force=True)
    assert _digest(theirs) == digest
