#!/usr/bin/env python3
"""The smallest honest edge app: classify photos with an edgeres ``.tflite``, without edgeres.

    python examples/minimal_app.py [--uncertain-below T] export/cats-dogs/model_int8.tflite photo.jpg [...]

Prints ``path<TAB>label<TAB>score`` per image, the same label and score (to 4 decimals) as
``edgeres predict MODEL IMAGE --json``, and a fourth column ``not sure`` when the top score is
below the model's uncertain band (where the paths export checked may answer differently; as
predict's ``"uncertain": true``). The band comes from the model itself (``uncertain.threshold``
of the edgeres.json embedded in it); ``--uncertain-below T`` overrides it, as an app may. Needs only ``ai-edge-litert`` (or ``tflite_runtime``),
numpy and Pillow: this is all a device has to run. It works on the int8 model (uint8 pixels in,
uint8 scores out) and on the float32 one (float pixels 0..255 in); normalisation is inside the
graph, so an app only resizes (by edgeres's rule, MediaPipe's own: :func:`resize`) and feeds
pixels. Exits 1 if an image could not be read. (A bundle exported from a run trained before
edgeres recorded its resize uses Pillow's antialiased bilinear instead; its edgeres.json says
``"resize": "antialias"``.)
"""

from __future__ import annotations

import json
import os
import sys
import zipfile

import numpy as np
from PIL import Image, ImageOps

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # older devices ship the standalone runtime
    from tflite_runtime.interpreter import Interpreter


def read_labels(model_path: str) -> list[str]:
    """The class names embedded in the model (a zip of associated files appended to the .tflite)."""
    try:
        with zipfile.ZipFile(model_path) as zf:
            return zf.read("labels.txt").decode("utf-8").splitlines()
    except (zipfile.BadZipFile, KeyError):
        sys.exit(f"error: {model_path} has no embedded labels.txt; export it with `edgeres export`.")


def read_band(model_path: str) -> float | None:
    """The model's uncertain band: the top score below which its answer is uncertain (None: none)."""
    try:
        with zipfile.ZipFile(model_path) as zf:
            record = json.loads(zf.read("edgeres.json")).get("uncertain") or {}
    except (zipfile.BadZipFile, KeyError, ValueError):
        return None
    return record.get("threshold")


def load_pixels(path: str, width: int, height: int) -> np.ndarray:
    """RGB uint8 ``[height, width, 3]``, exactly as ``edgeres.preprocess`` makes it."""
    with Image.open(path) as im:
        im.seek(0)  # first frame of an animated GIF
        im.load()
        im = ImageOps.exif_transpose(im).convert("RGB")  # upright as a phone shows it
    return resize(np.asarray(im, dtype=np.uint8), height, width)


def resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """The whole image stretched to the input size (no crop) by edgeres's resize rule, which is
    MediaPipe Tasks' own: output pixel (x, y) samples source position (x * w / width, y * h / height)
    (corners aligned, no half-pixel offset), rounded to 1/32 pixel (halves up); the four neighbours get integer
    weights (32 - fx) * (32 - fy) ... that sum to 1024; the sum is rounded half up; edges repeat."""
    h, w = rgb.shape[:2]

    def axis(n_out: int, n_in: int):
        pos = (64 * np.arange(n_out, dtype=np.int64) * n_in + n_out) // (2 * n_out)  # 32 * x * n_in / n_out, halves up
        i0 = pos >> 5
        return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), (pos & 31).astype(np.int32)

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    wx0, wx1 = (32 - fx)[None, :, None], fx[None, :, None]
    top = rgb[y0[:, None], x0].astype(np.int32) * wx0 + rgb[y0[:, None], x1].astype(np.int32) * wx1
    bottom = rgb[y1[:, None], x0].astype(np.int32) * wx0 + rgb[y1[:, None], x1].astype(np.int32) * wx1
    return ((top * (32 - fy)[:, None, None] + bottom * fy[:, None, None] + 512) >> 10).astype(np.uint8)


def to_input(pixels: np.ndarray, detail: dict) -> np.ndarray:
    """Pixels to the input tensor ``[1, H, W, 3]``, whatever the model's input dtype."""
    x = pixels[None]
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x.astype(np.float32)  # raw 0..255: the model normalises inside its graph
    scale, zero_point = detail["quantization"]
    if scale == 0:  # not quantized
        return x.astype(dtype)
    # edgeres int8 models take uint8 with scale 1, zero point 0, so this is the identity there.
    info = np.iinfo(dtype)
    q = np.round(x.astype(np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def from_output(raw: np.ndarray, detail: dict) -> np.ndarray:
    """The output row as float probabilities (uint8 scores of an int8 model are k/256)."""
    if np.dtype(detail["dtype"]) == np.float32:
        return raw.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (raw.astype(np.float32) - zero_point) * scale


def main(argv: list[str]) -> int:
    band = None
    if argv[:1] == ["--uncertain-below"] and len(argv) > 1:  # an app's own threshold instead of the model's
        band, argv = float(argv[1]), argv[2:]
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    model_path, images = argv[0], argv[1:]
    labels = read_labels(model_path)
    band = band if band is not None else read_band(model_path)
    interpreter = Interpreter(model_path=model_path, num_threads=os.cpu_count() or 1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    height, width = int(inp["shape"][1]), int(inp["shape"][2])

    failed = 0
    for path in images:
        try:
            pixels = load_pixels(path, width, height)
        except OSError as e:  # missing, unreadable or not an image
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        interpreter.set_tensor(inp["index"], to_input(pixels, inp))
        interpreter.invoke()
        probs = from_output(interpreter.get_tensor(out["index"])[0], out)
        best = int(np.argmax(probs))
        # Compared in float32, as MediaPipe compares its ScoreThresholdingOptions.
        unsure = band is not None and np.float32(probs[best]) < np.float32(band)
        print(f"{path}\t{labels[best]}\t{probs[best]:.4f}" + ("\tnot sure" if unsure else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
