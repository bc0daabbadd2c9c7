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
