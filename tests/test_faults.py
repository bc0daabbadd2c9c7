"""Bad inputs and faults a hostile-but-realistic user found: each one line, the right exit code,
nothing deleted or overwritten that the user did not name. Add new cases here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeres.cli import app
from edgeres.data import DataError, scan

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


# -- 1. export --force deletes only a bundle ------------------------------------------------


@pytest.mark.slow
def test_force_never_deletes_the_run_or_a_folder_of_other_things(trained_run, tiny_bundle, tmp_path):
    from edgeres.export import export

    run_before = _tree(trained_run)
    with pytest.raises(FileExistsError, match="training run"):
        export(trained_run, out=trained_run, force=True, formats=("float32",), log=lambda m: None)
    with pytest.raises(FileExistsError, match="training run"):
        export(trained_run, out=trained_run.parent, force=True, formats=("float32",), log=lambda m: None)
    assert _tree(trained_run) == run_before

    # A parent folder of bundles with a notes file: not a bundle, refused.
    parent = tmp_path / "exports"
    shutil.copytree(tiny_bundle, parent / "a")
    (parent / "notes.txt").write_text("mine\n")
    before = _tree(parent)
    code, out = _run("export", trained_run, "--out", parent, "--force", "--float32")
    assert code == 2 and "not an edgeres export bundle" in out and "Traceback" not in out, out
    assert _tree(parent) == before

    # A bundle the user added a file to: refused, naming the file.
    (parent / "a" / "my_notes.md").write_text("keep me\n")
    with pytest.raises(FileExistsError, match="my_notes.md"):
        export(trained_run, out=parent / "a", force=True, formats=("float32",), log=lambda m: None)
    assert (parent / "a" / "my_notes.md").read_text() == "keep me\n"


@pytest.mark.slow
def test_force_replaces_a_bundle_with_its_evaluation_report(trained_run, tiny_bundle, quant_dataset, tmp_path):
    from edgeres.export import export

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    code, out = _run("evaluate", bundle, "--data", quant_dataset, "--limit", "10", "--report", bundle / "evaluation")
    assert code == 0, out
    report = export(trained_run, out=bundle, force=True, formats=("float32",), verify_limit=10, log=lambda m: None)
    assert sorted(p.name for p in report.bundle.iterdir()) == ["edgeres.json", "labels.txt", "model_float32.tflite"]
    # The sizes edgeres.json records are those of the files on disk.
    meta = json.loads((bundle / "edgeres.json").read_text())
    assert meta["models"]["float32"]["bytes"] == (bundle / "model_float32.tflite").stat().st_size


def test_recorded_sizes_match_the_files(tiny_bundle):
    meta = json.loads((tiny_bundle / "edgeres.json").read_text())
    for fmt, info in meta["models"].items():
        size = (tiny_bundle / info["file"]).stat().st_size
        assert info["bytes"] == size, fmt
        assert meta["verification"][fmt]["bytes"] == size, fmt
    assert meta["verification"]["size_ratio"] == pytest.approx(
        meta["models"]["int8"]["bytes"] / meta["models"]["float32"]["bytes"])


# -- 8. two exports to one --out: exactly one wins --------------------------------------------


def test_second_export_to_the_same_out_fails_instead_of_replacing(tmp_path):
    from edgeres.export import _replace_dir

    out = tmp_path / "bundle"
    first, second = tmp_path / ".bundle.partial-1", tmp_path / ".bundle.partial-2"
    for d, tag in ((first, "first"), (second, "second")):
        d.mkdir()
        (d / "edgeres.json").write_text(tag)
    _replace_dir(first, out, force=False)
    with pytest.raises(FileExistsError, match="another export"):
        _replace_dir(second, out, force=False)
    assert (out / "edgeres.json").read_text() == "first"


def test_stale_partial_folders_of_dead_exports_are_cleaned(tmp_path):
    from edgeres.export import clean_stale_partials

    dead = tmp_path / ".b.partial-999999999"
    alive = tmp_path / f".b.partial-{os.getpid()}"
    other = tmp_path / ".c.partial-999999999"
    for d in (dead, alive, other):
        d.mkdir()
    removed = clean_stale_partials(tmp_path / "b")
    assert removed == [dead] and not dead.exists() and alive.exists() and other.exists()


# -- 2. evaluate matches class folders by name --------------------------------------------------


def _relabelled(photos_root: Path, dst: Path, names: dict[str, str], n: int = 15) -> Path:
    for src_name, dst_name in names.items():
        folder = dst / "validation" / dst_name
        folder.mkdir(parents=True)
        for src in sorted((photos_root / "validation" / src_name).glob("*.jpg"))[:n]:
            (folder / src.name).symlink_to(src)
    return dst


@pytest.mark.slow
def test_evaluate_matches_folders_by_name_case_insensitively(tiny_bundle, photos_root, tmp_path):
    from edgeres.evaluate import evaluate

    plain = evaluate([tiny_bundle], _relabelled(photos_root, tmp_path / "a", {"cats": "cats", "dogs": "dogs"}),
                     progress=False)
    # "Dogs" sorts before "cats": by position the labels would swap and accuracy would flip.
    cased = evaluate([tiny_bundle], _relabelled(photos_root, tmp_path / "b", {"cats": "cats", "dogs": "Dogs"}),
                     progress=False)
    assert cased.classes == ("Dogs", "cats")
    # The same photos are wrong under both names; swapped labels would make the others wrong.
    wrong = lambda ev: {Path(w["path"]).name for w in ev.models[0].misclassified}  # noqa: E731
    assert wrong(cased) == wrong(plain)
    assert 0 < len(wrong(plain)) < plain.models[0].n  # so a swap would change the set


@pytest.mark.slow
def test_evaluate_refuses_folders_that_are_not_the_models_labels(tiny_bundle, photos_root, tmp_path):
    root = _relabelled(photos_root, tmp_path / "c", {"cats": "birds", "dogs": "fish"}, n=3)
    code, out = _run("evaluate", tiny_bundle, "--data", root)
    assert code == 2 and "birds" in out and "cats" in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1, out


def test_evaluate_root_holding_only_validation(tmp_path, photos_root):
    from edgeres.evaluate import labelled_images

    root = _relabelled(photos_root, tmp_path / "v", {"cats": "cats", "dogs": "dogs"}, n=2)
    classes, items = labelled_images(root)
    assert classes == ("cats", "dogs") and len(items) == 4
    with pytest.raises(DataError, match="only a validation split"):
        scan(root, progress=False)


# -- 4/9. numeric and enum options are validated at parse time ------------------------------


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "101"])
def test_max_drop_must_be_a_sane_number(value, tmp_path):
    (tmp_path / "model.keras").write_text("x")
    code, out = _run("export", tmp_path, "--max-drop", value)
    assert code == 2 and "--max-drop" in out, out


@pytest.mark.parametrize("args", [
    ["calibrate", "--out", "c.txt", "--size", "0"],
    ["export", ".", "--calibration-size", "0"],
    ["export", ".", "--verify-limit", "-3"],
    ["evaluate", "m.tflite", "--data", ".", "--limit", "0"],
    ["predict", "m.tflite", "x.jpg", "--top-k", "0"],
    ["camera", "m.tflite", "--smoothing", "nan"],
    ["camera", "m.tflite", "--smoothing", "1.5"],
    ["camera", "m.tflite", "--max-frames", "0"],
])
def test_out_of_range_options_are_refused_at_parse_time(args):
    code, out = _run(*args)
    assert code == 2 and "Invalid value" in out, out


def test_calibration_that_is_a_photo_is_one_line(tmp_path, photos_root):
    from edgeres.calibrate import CalibrationError, load

    photo = next((photos_root / "train" / "cats").glob("*.jpg"))
    with pytest.raises(CalibrationError, match="not an edgeres calibration manifest"):
        load(photo)


def test_calibrate_out_an_existing_directory(small_dataset, tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    code, out = _run("calibrate", "--data", small_dataset, "--size", "4", "--out", target)
    assert code == 2 and "is a directory" in out and "Traceback" not in out, out
    assert list(tmp_path.rglob("*.tmp*")) == [] and list(target.iterdir()) == []


# -- 7/10. datasets: symlinks, folders, files -------------------------------------------------


def test_broken_symlinks_are_listed_not_dropped(photos_root, tmp_path):
    root = tmp_path / "d"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for src in sorted((photos_root / "train" / cls).glob("*.jpg"))[:6]:
            (root / cls / src.name).symlink_to(src)
    (root / "cats" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "dogs" / "loop1.jpg").symlink_to(root / "dogs" / "loop2.jpg")
    (root / "dogs" / "loop2.jpg").symlink_to(root / "dogs" / "loop1.jpg")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    ds = scan(root, progress=False)
    reasons = {b.path.name: b.reason for b in ds.skipped}
    assert "dangling symlink" in reasons["gone.jpg"]
    assert reasons["loop1.jpg"] == reasons["loop2.jpg"] == "symlink loop"
    assert reasons["empty.jpg"] == "file is empty (0 bytes)"
    assert len(ds.train.samples) + len(ds.validation.samples) == 12


def test_unreadable_class_folder_says_permission_denied(photos_root, tmp_path, monkeypatch):
    import edgeres.data as data

    root = _relabelled(photos_root, tmp_path / "p", {"cats": "cats", "dogs": "dogs"}, n=2)
    locked = root / "validation" / "dogs"
    real_access = os.access
    # Tests run as root, where chmod cannot lock a folder: simulate what a normal user sees.
    monkeypatch.setattr(data.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    with pytest.raises(DataError, match="permission denied"):
        data.find_layout(root)


def test_data_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "photo.jpg"
    f.write_bytes(b"x")
    code, out = _run("calibrate", "--data", f, "--out", tmp_path / "c.txt")
    assert code == 2 and "is a file, not a folder" in out, out


@pytest.mark.parametrize("args", [
    ["--image-size", "100"], ["--image-size", "0"], ["--batch-size", "0"], ["--arch", "banana"],
    ["--learning-rate", "nan"], ["--learning-rate", "0"], ["--learning-rate", "-1"], ["--precision", "x"],
    ["--strategy", "y"], ["--epochs", "-1"], ["--seed", "-2"], ["--max-per-class", "0"],
    ["--fine-tune-epochs", "-1"],
])
def test_train_options_are_checked_at_parse_time(args, tmp_path):
    code, out = _run("train", "--out", tmp_path / "run", *args)
    assert code == 2 and "Invalid value" in out, out
    assert not (tmp_path / "run").exists()
