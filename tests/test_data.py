"""Dataset discovery, decoding of odd files, and the tf.data pipeline, on real photos."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeres import data as data_lib
from edgeres import pipeline
from edgeres.preprocess import ImageError, Resize, decode, load_pixels, to_pixels


def _photo(photos_root: Path, cls: str = "cats", i: int = 0) -> Path:
    return sorted((photos_root / "train" / cls).glob("*.jpg"))[i]


def test_classes_are_sorted_folder_names(small_dataset):
    ds = data_lib.scan(small_dataset, progress=False)
    assert ds.classes == ("cats", "dogs")
    assert len(ds.train.samples) == 120 and len(ds.validation.samples) == 60
    for s in ds.train.samples:
        assert ds.classes[s.label] == s.path.parent.name
    assert len(ds.train.digest) == 64 and ds.train.digest != ds.validation.digest


def test_val_folder_name_variants(small_dataset, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(small_dataset / "train", root / "train", symlinks=True)
    shutil.copytree(small_dataset / "validation", root / "val", symlinks=True)
    assert len(data_lib.scan(root, progress=False).validation.samples) == 60


def test_flat_layout_is_split_stratified_and_seeded(small_dataset, tmp_path):
    root = tmp_path / "flat"
    for cls in ("cats", "dogs"):
        shutil.copytree(small_dataset / "train" / cls, root / cls, symlinks=True)
    a = data_lib.scan(root, val_fraction=0.25, seed=3, progress=False)
    b = data_lib.scan(root, val_fraction=0.25, seed=3, progress=False)
    c = data_lib.scan(root, val_fraction=0.25, seed=4, progress=False)
    assert a.layout == "flat"
    assert a.validation.paths == b.validation.paths != c.validation.paths
    assert np.bincount(a.validation.labels).tolist() == [15, 15]
    assert not set(a.train.paths) & set(a.validation.paths)


def _odd_files(photos_root: Path, folder: Path) -> dict[str, bool]:
    """Write files of every awkward kind; returns name -> whether it should decode."""
    src = Image.open(_photo(photos_root)).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    good = {}
    src.save(folder / "png_named.jpg", format="PNG"); good["png_named.jpg"] = True  # noqa: E702
    src.convert("L").save(folder / "gray.png"); good["gray.png"] = True  # noqa: E702
    rgba = src.convert("RGBA"); rgba.putalpha(128); rgba.save(folder / "rgba.png"); good["rgba.png"] = True  # noqa: E702
    src.convert("CMYK").save(folder / "cmyk.jpg"); good["cmyk.jpg"] = True  # noqa: E702
    src.save(folder / "bitmap.bmp"); good["bitmap.bmp"] = True  # noqa: E702
    frames = [src.convert("P"), src.rotate(90).convert("P")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:]); good["anim.gif"] = True  # noqa: E702
    data = _photo(photos_root).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3]); good["truncated.jpg"] = False  # noqa: E702
    (folder / "empty.jpg").write_bytes(b""); good["empty.jpg"] = False  # noqa: E702
    (folder / "text.jpg").write_text("not an image"); good["text.jpg"] = False  # noqa: E702
    return good


def test_odd_formats_decode_and_bad_files_raise_naming_the_file(photos_root, tmp_path):
    expected = _odd_files(photos_root, tmp_path / "odd")
    for name, ok in expected.items():
        path = tmp_path / "odd" / name
        if ok:
            px = load_pixels(path, 32)
            assert px.shape == (32, 32, 3) and px.dtype == np.uint8, name
        else:
            with pytest.raises(ImageError, match=name):
                decode(path)


def test_gif_gives_first_frame(photos_root, tmp_path):
    _odd_files(photos_root, tmp_path)
    first = np.asarray(Image.open(tmp_path / "anim.gif").convert("RGB"))
    assert np.array_equal(np.asarray(decode(tmp_path / "anim.gif")), first)


def test_bad_files_are_skipped_counted_and_listed(small_dataset, photos_root, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(small_dataset, root, symlinks=True)
    expected = _odd_files(photos_root, root / "train" / "cats")
    ds = data_lib.scan(root, progress=False)
    skipped = {b.path.name for b in ds.skipped}
    assert skipped == {n for n, ok in expected.items() if not ok}
    assert len(ds.train.samples) == 120 + sum(expected.values())
    data_lib.write_skipped(ds, tmp_path / "skipped.txt")
    listed = (tmp_path / "skipped.txt").read_text()
    assert "truncated.jpg" in listed and "empty" in listed


def test_too_few_classes_and_empty_class_are_errors(small_dataset, tmp_path):
    one = tmp_path / "one" / "cats"
    shutil.copytree(small_dataset / "train" / "cats", one, symlinks=True)
    with pytest.raises(data_lib.DataError, match="at least 2"):
        data_lib.scan(tmp_path / "one", progress=False)
    root = tmp_path / "d"
    shutil.copytree(small_dataset, root, symlinks=True)
    for f in (root / "validation" / "dogs").iterdir():
        f.unlink()
    (root / "validation" / "dogs" / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(data_lib.DataError, match=r"Class 'dogs' has no valid image.*validation/dogs"):
        data_lib.scan(root, progress=False)


def _deep(root: Path) -> Path:
    work = root / "w" / "x" / "y"
    work.mkdir(parents=True)
    return work


def test_offline_download_names_data_option(monkeypatch, tmp_path):
    # No shared/data copy above the working folder: the search looks 4 folders up, all inside
    # tmp_path here (tmp_path itself may sit beside a shared/ folder, e.g. /tmp/shared).
    monkeypatch.chdir(_deep(tmp_path))
    monkeypatch.delenv(data_lib.DATA_ENV, raising=False)
    monkeypatch.setattr(data_lib, "CATS_DOGS_URL", "http://127.0.0.1:9/cats_and_dogs_filtered.zip")
    monkeypatch.setenv("KERAS_HOME", "/nonexistent-edgeres-test")  # no cached copy
    with pytest.raises(data_lib.DataError) as err:
        data_lib.resolve_data_dir(None)
    assert "--data" in str(err.value) and data_lib.DATA_ENV in str(err.value)


def test_env_variable_points_at_data(small_dataset, monkeypatch):
    monkeypatch.setenv(data_lib.DATA_ENV, str(small_dataset))
    assert data_lib.resolve_data_dir(None) == small_dataset


def test_to_pixels_is_pure_and_follows_the_resize_rule(photos_root):
    path = _photo(photos_root)
    frame = np.asarray(Image.open(path).convert("RGB"))
    before = frame.copy()
    px = to_pixels(frame, 48)
    assert np.array_equal(frame, before), "input must not be modified"
    assert np.array_equal(load_pixels(path, 48), px)
    assert np.array_equal(to_pixels(path.read_bytes(), 48), px)
    assert np.array_equal(to_pixels(Image.open(path), 48), px)
    # The legacy rule is exactly Pillow's antialiased bilinear.
    expected = np.asarray(Image.open(path).convert("RGB").resize((48, 48), Image.Resampling.BILINEAR))
    assert np.array_equal(to_pixels(frame, 48, Resize.ANTIALIAS), expected)
    assert not np.array_equal(px, expected)
    with pytest.raises(ImageError, match="RGB uint8"):
        to_pixels(frame.astype(np.float32), 48)


@pytest.mark.parametrize("out_h,out_w", [(160, 160), (224, 224), (64, 48), (700, 900)])
def test_bilinear_rule_matches_opencvs_corner_aligned_warp(photos_root, out_h, out_w):
    """An independent reference: OpenCV's warpPerspective with the corners of the image mapped to
    the corners of the output, which is how MediaPipe's CPU converter resizes (MediaPipe itself
    is checked in test_examples). The opencv-python wheel's float32 warp kernel rounds a few
    positions differently from MediaPipe's fixed-point one, so: nearly all within 1, mean difference small."""
    cv2 = pytest.importorskip("cv2")
    from edgeres.preprocess import resize_bilinear

    for path in sorted((photos_root / "validation" / "dogs").glob("*.jpg"))[:3]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        src = np.float32([[0, h], [0, 0], [w, 0], [w, h]])
        dst = np.float32([[0, out_h], [0, 0], [out_w, 0], [out_w, out_h]])
        ref = cv2.warpPerspective(rgb, cv2.getPerspectiveTransform(src, dst), (out_w, out_h),
                                  flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ours = resize_bilinear(rgb, out_h, out_w)
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert np.mean(diff <= 1) > 0.99 and diff.mean() < 0.2, (path.name, np.mean(diff <= 1), diff.mean())
        # and not a half-pixel-centred resize, which is much further away
        centred = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if min(h / out_h, w / out_w) < 1.5:
            continue  # near 1:1 the two conventions almost coincide
        assert np.abs(ours.astype(int) - centred.astype(int)).mean() > 3 * diff.mean()


@pytest.mark.slow
def test_pipeline_shapes_dtypes_range_and_determinism(small_dataset):
    ds = data_lib.scan(small_dataset, progress=False)

    def first_batch(training: bool, seed: int):
        pipe = pipeline.make_dataset(ds.train if training else ds.validation, image_size=32, batch_size=8,
                                     training=training, seed=seed, num_classes=2)
        x, y = next(iter(pipe))
        return x.numpy(), y.numpy()

    x, y = first_batch(True, 0)
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (8, 2) and np.allclose(y.sum(1), 1)
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 100
    assert np.array_equal(x, first_batch(True, 0)[0]), "same seed, same augmented batch"
    assert not np.array_equal(x, first_batch(True, 1)[0])
    # Validation images are exactly the runtime's input.
    xv, _ = first_batch(False, 0)
    assert np.array_equal(xv[0], load_pixels(ds.validation.paths[0], 32).astype(np.float32))


def test_data_resolution_order_and_mocked_download(monkeypatch, tmp_path, small_dataset):
    """--data, $EDGERES_DATA, a local copy (Keras cache, ./data, shared/data above), the download."""
    import keras

    monkeypatch.chdir(_deep(tmp_path))  # the 4 folders searched for shared/data end at tmp_path
    monkeypatch.delenv(data_lib.DATA_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    archive = tmp_path / "download" / "cats_and_dogs_filtered"
    shutil.copytree(small_dataset, archive, symlinks=True)
    calls = []

    def fake_get_file(fname, origin, extract):  # what Keras returns: the extracted folder
        calls.append(origin)
        return str(archive.parent)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    said = []
    assert data_lib.resolve_data_dir(None, log=said.append) == archive and calls == [data_lib.CATS_DOGS_URL]
    assert "downloading" in said[-1]
    shared = tmp_path / "shared" / "data" / "cats_and_dogs_filtered"
    shutil.copytree(small_dataset, shared, symlinks=True)
    assert data_lib.resolve_data_dir(None, log=said.append) == shared and len(calls) == 1
    monkeypatch.setenv(data_lib.DATA_ENV, str(small_dataset))
    assert data_lib.resolve_data_dir(None) == small_dataset
    assert data_lib.resolve_data_dir(shared) == shared


def test_a_moved_run_finds_its_data_and_says_where(tmp_path, small_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(data_lib.DATA_ENV, raising=False)
    run = {"data_root": "/gone/elsewhere/cats", "train": {"data": "photos"}}
    (tmp_path / "photos").symlink_to(small_dataset)
    said = []
    assert data_lib.resolve_run_data(run, tmp_path / "runs" / "x", None, log=said.append) == Path("photos")
    assert "relative path" in said[-1]
    (tmp_path / "photos").unlink()
    monkeypatch.setenv(data_lib.DATA_ENV, str(small_dataset))
    assert data_lib.resolve_run_data(run, tmp_path / "runs" / "x", None, log=said.append) == small_dataset
    assert any("not here" in m for m in said)
