"""Top-1 agreement and accuracy of one model fed by different clients' pixels.

Every client classifies the same labelled photos with the same ``.tflite``; only the pixels
differ (decoder and resize). Clients:

    edgeres predict      Classifier.predict(path): the bundle's own recorded resize
    Pillow antialias     edgeres decode + Image.resize(BILINEAR) (antialiased; edgeres 0.1)
    numpy MediaPipe rule edgeres decode + benchmarks/mediapipe_resize.resize_like_mediapipe
    cv2 LINEAR           edgeres decode + cv2.resize(INTER_LINEAR) (half-pixel centres, no antialias)
    cv2 AREA             edgeres decode + cv2.resize(INTER_AREA)
    MediaPipe file       ImageClassifier.classify(mp.Image.create_from_file(path))  (stb_image decode)
    MediaPipe decoded    ImageClassifier.classify(mp.Image(SRGB, Pillow decode + EXIF transpose))

MediaPipe runs in a subprocess in the interpreter named by ``$EDGERES_MEDIAPIPE_PYTHON`` (it
needs ``mediapipe`` and ``pillow``; MediaPipe pins its own OpenCV, so keep it in its own venv).

    EDGERES_MEDIAPIPE_PYTHON=.venv-mediapipe/bin/python \\
        .venv/bin/python benchmarks/client_pixels.py benchmarks/out/ref \\
        --data /work/shared/data/cats_and_dogs_filtered

Top-1 is the first maximum of the score vector (index order) for every client, so uint8 score
ties break the same way everywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mediapipe_resize import resize_like_mediapipe  # noqa: E402

# Runs in the MediaPipe interpreter. Decodes with Pillow exactly as edgeres.preprocess.decode does
# for ordinary RGB photos (the hash lets the parent check that the pixels are identical).
_WORKER = r"""
import hashlib, json, sys
import numpy as np
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision
from PIL import Image, ImageOps

model, listing, out = sys.argv[1:4]
files = json.load(open(listing))
# Every category: a threshold above 0 overrides the model's uncertain band (MediaPipe reads 0 as unset).
opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=-1,
                                     score_threshold=1e-30)

def scores(clf, image):
    cats = clf.classify(image).classifications[0].categories
    v = np.full(max(c.index for c in cats) + 1, np.nan)
    for c in cats:
        v[c.index] = c.score
    return v

file_s, dec_s, sha, same_decode = [], [], [], []
with vision.ImageClassifier.create_from_options(opts) as clf:
    for f in files:
        mp_image = mp.Image.create_from_file(f)
        file_s.append(scores(clf, mp_image))
        with Image.open(f) as im:
            im.seek(0)
            rgb = np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
        sha.append(hashlib.sha1(rgb.tobytes()).hexdigest())
        stb = mp_image.numpy_view()
        same_decode.append(bool(stb.shape == rgb.shape and np.array_equal(stb, rgb)))
        dec_s.append(scores(clf, mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)))
np.savez(out, from_file=np.array(file_s), decoded=np.array(dec_s), sha=np.array(sha), same_decode=np.array(same_decode),
         version=mp.__version__ if hasattr(mp, "__version__") else "?")
"""


def _model_path(model: Path) -> Path:
    if model.is_dir():
        path = model / "model_int8.tflite"
        if not path.is_file():
            sys.exit(f"error: {model} has no model_int8.tflite; pass the .tflite to compare.")
        return path
    return model


def _mediapipe_python() -> str:
    from edgeres.clients import find_mediapipe_python  # $EDGERES_MEDIAPIPE_PYTHON, else .venv-mediapipe

    py = find_mediapipe_python()
    if not py or not Path(py).is_file():
        sys.exit("error: set EDGERES_MEDIAPIPE_PYTHON to a Python with mediapipe and pillow installed "
                 "(python -m venv .venv-mediapipe && .venv-mediapipe/bin/pip install mediapipe pillow).")
    return py


def run_mediapipe(python: str, model: Path, files: list[Path]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        listing, out = Path(tmp, "files.json"), Path(tmp, "out.npz")
        listing.write_text(json.dumps([str(f) for f in files]))
        proc = subprocess.run([python, "-c", _WORKER, str(model), str(listing), str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            sys.exit(f"error: MediaPipe worker failed ({python}):\n{tail}")
        with np.load(out) as z:
            return {k: z[k] for k in z.files}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="an edgeres bundle (uses model_int8.tflite) or a .tflite")
    p.add_argument("--data", type=Path, required=True, help="dataset root (its validation/<class>/ photos)")
    p.add_argument("--limit", type=int, default=0, help="at most N photos, spread over the classes (0: all)")
    p.add_argument("--no-mediapipe", action="store_true", help="skip the MediaPipe clients")
    args = p.parse_args()

    import cv2
    from PIL import Image

    from edgeres.evaluate import labelled_images
    from edgeres.preprocess import decode, to_pixels

    # The example app's own functions (run_path does not run its main()).
    minimal_app = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "minimal_app.py"))
    from edgeres.runtime import Classifier

    model = _model_path(args.model)
    clf = Classifier(model, accelerator="cpu", threads=1)
    height, width = clf.input_size
    classes, items = labelled_images(args.data)
    if args.limit:
        step = max(1, len(items) // args.limit)
        items = items[::step][: args.limit]
    key = {c.strip().casefold(): i for i, c in enumerate(classes)}
    try:
        to_class = np.array([key[label.strip().casefold()] for label in clf.labels])
    except KeyError as e:
        sys.exit(f"error: model label {e} is not a class folder of {args.data} ({', '.join(classes)}).")
    files = [f for f, _ in items]
    truth = np.array([t for _, t in items])

    clients = {
        "edgeres predict": lambda f, rgb: None,
        "Pillow antialias": lambda f, rgb: np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)),
        "numpy MediaPipe rule": lambda f, rgb: resize_like_mediapipe(rgb, height, width),
        "edgeres rule (Resize.BILINEAR)": lambda f, rgb: to_pixels(rgb, (height, width), "bilinear"),
        "minimal_app.py (its own decode + resize)": lambda f, rgb: minimal_app["load_pixels"](str(f), width, height),
        "cv2 LINEAR": lambda f, rgb: cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR),
        "cv2 AREA": lambda f, rgb: cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA),
    }
    scores: dict[str, list[np.ndarray]] = {k: [] for k in clients}
    shas = []
    t0 = time.time()
    for f in files:
        rgb = np.asarray(decode(f))
        shas.append(hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest())
        for name, make in clients.items():
            pred = clf.predict(f) if name == "edgeres predict" else clf.predict_pixels(make(f, rgb))
            scores[name].append(pred.probabilities)
    print(f"{model} ({height}x{width}, labels {', '.join(clf.labels)}), {len(files)} photos of {args.data}; "
          f"local clients {time.time() - t0:.0f} s", file=sys.stderr)

    notes = []
    if not args.no_mediapipe:
        t0 = time.time()
        mp_out = run_mediapipe(_mediapipe_python(), model, files)
        scores["MediaPipe file"] = list(mp_out["from_file"])
        scores["MediaPipe decoded"] = list(mp_out["decoded"])
        same_sha = int(np.sum(mp_out["sha"] == np.array(shas)))
        notes.append(f"MediaPipe {mp_out['version']} ({time.time() - t0:.0f} s): its Pillow decode equals edgeres's on "
                     f"{same_sha}/{len(files)} photos; stb_image (create_from_file) equals Pillow on "
                     f"{int(mp_out['same_decode'].sum())}/{len(files)}.")

    top1 = {k: to_class[np.argmax(np.stack(v), axis=1)] for k, v in scores.items()}
    mats = {k: np.stack(v) for k, v in scores.items()}
    refs = ["edgeres predict"] + (["MediaPipe file"] if "MediaPipe file" in top1 else [])
    same_ref = "MediaPipe decoded" if "MediaPipe decoded" in mats else "numpy MediaPipe rule"
    head = f"| client | accuracy | {' | '.join('agree vs ' + r for r in refs)} | identical scores vs {same_ref} |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for k in top1:
        agree = " | ".join(f"{100 * np.mean(top1[k] == top1[r]):.1f}%" for r in refs)
        same = int(np.sum(np.all(np.abs(mats[k] - mats[same_ref]) < 1e-6, axis=1)))
        print(f"| {k} | {100 * np.mean(top1[k] == truth):.1f}% | {agree} | {same}/{len(files)} |")
    for n in notes:
        print(n)
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
