"""The pixels an app feeds are the pixels edgeres validated: MediaPipe Tasks' ImageClassifier, the
client most apps use, against edgeres on the same files (MediaPipe lives in its own venv)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeres.clients import MEDIAPIPE_ENV, ClientError, check_mediapipe, find_mediapipe_python, mediapipe_scores
from edgeres.evaluate import labelled_images
from edgeres.preprocess import decode
from edgeres.runtime import Classifier

# Found as edgeres finds it: $EDGERES_MEDIAPIPE_PYTHON, else the .venv-mediapipe scripts/setup makes.
needs_mediapipe = pytest.mark.skipif(
    find_mediapipe_python() is None,
    reason=f"no MediaPipe interpreter: scripts/setup makes .venv-mediapipe (or set {MEDIAPIPE_ENV})")


def _spread(items, n):
    return items[:: max(1, len(items) // n)][:n]


@needs_mediapipe
@pytest.mark.slow
def test_mediapipe_given_the_decoded_image_gives_edgeres_scores_exactly(tiny_bundle, photos_root):
    """Same decoded image in, same resize inside: MediaPipe's int8 scores are edgeres's, bit for bit.

    The rule rounds sample positions to 1/32 pixel, halves up; MediaPipe decides exact halves by its
    floating-point matrix. At this model's 64 px a half arises only from an odd source side, so photos
    with even sides must match exactly and the others within a 1/32-pixel nudge of a few samples."""
    clf = Classifier(tiny_bundle / "model_int8.tflite", accelerator="cpu")
    assert clf.resize.value == "bilinear" and clf.input_size == (64, 64)
    classes, items = labelled_images(photos_root)
    paths = [p for p, _ in _spread(items, 60)]
    exact, nudged = [], []
    for path in paths:
        img = np.asarray(decode(path))
        ours = clf.predict(img).probabilities
        [theirs] = mediapipe_scores(clf.path, [path], pixels=img[None], classes=2)  # sizes differ: one call each
        even = img.shape[0] % 2 == 0 and img.shape[1] % 2 == 0
        (exact if even else nudged).append(float(np.abs(ours - theirs).max()))
    assert len(exact) >= 10, len(exact)  # 15 of these 60 photos have even sides
    assert max(exact) < 1e-6, exact
    assert max(nudged, default=0) <= 0.02, nudged


@needs_mediapipe
@pytest.mark.slow
def test_mediapipe_from_file_agrees_with_edgeres_on_the_reference_model(reference_bundle, photos_root):
    """The done-line of the client-pixels issue, on a confident model and real photos."""
    clf = Classifier(reference_bundle / "model_int8.tflite", accelerator="cpu")
    classes, items = labelled_images(photos_root)
    check = check_mediapipe(clf, _spread(items, 240), classes)
    assert check.n == 240 and check.failed == 0
    assert check.agreement >= 0.99, check.summary()
    assert abs(check.accuracy - check.edgeres_accuracy) <= 0.01, check.summary()


def test_missing_mediapipe_is_one_line_saying_how_to_get_it(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'mediapipe'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ClientError, match="pip install mediapipe"):
        mediapipe_scores(tmp_path / "model_int8.tflite", ["x.jpg"], python=str(fake))
