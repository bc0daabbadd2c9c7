"""The Android example's resize, compiled: ``edgeresPixels`` from
``examples/android/ImageClassifierHelper.kt`` built with ``kotlinc`` against a minimal
``android.graphics.Bitmap`` (``tests/android/Bitmap.kt``) and run on the JVM over real photos.

The photos are decoded by :func:`edgeres.preprocess.decode` and handed over as RGB bytes, so only
the resize is compared: an app's decoder is its own business, the resize is the one it copies.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeres.preprocess import Resize, decode, to_pixels

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "examples" / "android" / "ImageClassifierHelper.kt"
HARNESS = Path(__file__).resolve().parent / "android"
# (height, width) of the model input: the common squares, odd non-square ones, and one taller than
# every photo (enlarging).
OUTPUT_SIZES = [(160, 160), (224, 224), (64, 64), (96, 128), (47, 33), (512, 384)]


def kotlin_function(source: str, name: str) -> str:
    """The text of ``fun name(...) { ... }`` in Kotlin ``source``, found by matching braces."""
    start = re.search(rf"^\s*fun {name}\(", source, re.MULTILINE)
    assert start, f"fun {name} not found in {HELPER}"
    depth, i = 0, source.index("{", start.end())
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[start.start():j + 1]
    raise AssertionError(f"fun {name} in {HELPER} has unbalanced braces")


@pytest.fixture(scope="session")
def edgeres_pixels_jar(tmp_path_factory) -> Path:
    """``edgeresPixels`` compiled once per session (kotlinc 1.3 takes ~30 s to start and compile)."""
    kotlinc = shutil.which("kotlinc")
    if kotlinc is None:
        pytest.skip("kotlinc not found: apt-get install kotlin openjdk-17-jdk-headless (.ci/run does)")
    src = tmp_path_factory.mktemp("kotlin")
    (src / "EdgeresPixels.kt").write_text("import android.graphics.Bitmap\n\n"
                                          + kotlin_function(HELPER.read_text(), "edgeresPixels") + "\n")
    for name in ("Bitmap.kt", "Main.kt"):
        shutil.copy(HARNESS / name, src / name)
    jar = src / "edgeres_pixels.jar"
    proc = subprocess.run([kotlinc, *sorted(str(p) for p in src.glob("*.kt")), "-include-runtime", "-d", str(jar)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and jar.is_file(), f"kotlinc failed:\n{proc.stderr}"
    return jar


def odd_sized_photos(photos_root: Path, n: int) -> list[Path]:
    """The first ``n`` validation photos, one per size, with an odd width or height."""
    from PIL import Image

    chosen, sizes = [], set()
    for path in sorted((photos_root / "validation").glob("*/*.jpg")):
        with Image.open(path) as im:
            size = im.size
        if size not in sizes and (size[0] % 2 or size[1] % 2):
            sizes.add(size)
            chosen.append(path)
            if len(chosen) == n:
                break
    return chosen


def test_kotlin_edgeres_pixels_equals_to_pixels_on_real_photos(edgeres_pixels_jar, photos_root):
    photos = odd_sized_photos(photos_root, 24)
    assert len(photos) == 24
    jobs, request = [], bytearray()
    for i, path in enumerate(photos):
        rgb = np.asarray(decode(path), dtype=np.uint8)
        out_h, out_w = OUTPUT_SIZES[i % len(OUTPUT_SIZES)]
        jobs.append((path, rgb.shape[:2], (out_h, out_w)))
        request += struct.pack(">4i", rgb.shape[1], rgb.shape[0], out_w, out_h) + rgb.tobytes()
    java = shutil.which("java") or "java"
    proc = subprocess.run([java, "-jar", str(edgeres_pixels_jar)], input=bytes(request), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert len(proc.stdout) == sum(h * w * 3 for _, _, (h, w) in jobs)

    offset, upsampled = 0, 0
    for path, (h_in, w_in), (out_h, out_w) in jobs:
        n = out_h * out_w * 3
        kotlin = np.frombuffer(proc.stdout[offset:offset + n], dtype=np.uint8).reshape(out_h, out_w, 3)
        offset += n
        expected = to_pixels(path, (out_h, out_w), Resize.BILINEAR)
        diff = np.abs(kotlin.astype(int) - expected.astype(int))
        assert diff.max() == 0, (f"{path.name} ({w_in}x{h_in} -> {out_w}x{out_h}): {np.count_nonzero(diff)} "
                                 f"values differ, by up to {diff.max()}")
        upsampled += h_in < out_h or w_in < out_w
    # The photos are not all one shape: the resize is checked shrinking and, for some, enlarging.
    assert len({shape for _, shape, _ in jobs}) == len(jobs)
    assert upsampled >= 1
