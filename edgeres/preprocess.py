"""The one preprocessing path: decode, colour order and resize for every stage.

Training (validation split), calibration, evaluation, ``predict``, ``camera`` and the browser page
all turn an image into model input through :func:`to_pixels`, so float and int8 models are compared
on byte-identical inputs, and every client that follows the resize rule below feeds the model the
pixels edgeres validated.

**The resize rule** (:attr:`Resize.BILINEAR`, the default; what MediaPipe Tasks' ImageClassifier
does on the CPU, bit for bit): decode to RGB, apply EXIF orientation, then stretch the whole image
to S x S by bilinear interpolation with corner-aligned sampling (output pixel ``x`` reads source
position ``x * w / S``, no half-pixel offset), source positions rounded to 1/32 pixel, integer
weights, edges replicated, no antialiasing. ``benchmarks/client_pixels.md`` has each client's rule
and what it costs to deviate from it.

:attr:`Resize.ANTIALIAS` is Pillow's antialiased bilinear, edgeres 0.1's rule: runs trained
before the rule was recorded use it, so they export and evaluate with the pixels they saw.

The model input is raw RGB uint8 pixels, ``[S, S, 3]``; normalisation lives inside the graph.
Only numpy and Pillow are imported here: this module ships to devices.
"""

from __future__ import annotations

import io
from enum import Enum
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class Resize(str, Enum):
    """How an image becomes S x S. Recorded in a run's config, edgeres.json and the model's metadata."""

    BILINEAR = "bilinear"  # MediaPipe Tasks' CPU resize, reproduced exactly: every client can follow it
    ANTIALIAS = "antialias"  # Pillow's antialiased bilinear (edgeres 0.1; runs that record no resize)


DEFAULT_RESIZE = Resize.BILINEAR
# For runs and bundles written before the resize was recorded.
LEGACY_RESIZE = Resize.ANTIALIAS

RESIZE_SPEC = {
    Resize.BILINEAR: "whole image stretched to the input size (no crop), bilinear with corner-aligned "
                     "sampling (output x reads source x*w/W), source positions rounded to 1/32 pixel, "
                     "edges replicated, no antialiasing: MediaPipe Tasks ImageClassifier's CPU resize",
    Resize.ANTIALIAS: "whole image stretched to the input size (no crop), Pillow's antialiased bilinear "
                      "(Image.resize(..., BILINEAR))",
}

# The whole image is resized to the square input (no crop): it is what MediaPipe's
# ImageClassifier and most app pipelines do with a camera frame, so the model is trained and
# calibrated on the same geometry it will see on the device.
RESAMPLE = Image.Resampling.BILINEAR

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

ImageInput = Union[str, Path, bytes, np.ndarray, Image.Image]


class ImageError(ValueError):
    """An image that cannot be decoded; the message names the file and the reason."""


def decode(source: str | Path | bytes, *, name: str | None = None) -> Image.Image:
    """Decode a file (or its bytes) to an RGB image, whatever its real format.

    The format is sniffed from the content, so a PNG named ``.jpg`` decodes. EXIF
    orientation is applied; grayscale, palette, RGBA, CMYK and 16-bit images become RGB;
    an animated GIF gives its first frame.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as e:
        raise ImageError(f"{label}: cannot read file ({e.strerror or e}).") from e
    if not data:
        raise ImageError(f"{label}: file is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit grayscale: scale to 8 bits instead of clipping to white.
                arr = np.asarray(im, dtype=np.float64)
                arr = 255.0 * arr / max(float(arr.max()), 1.0)
                im = Image.fromarray(arr.astype(np.uint8), mode="L")
            return im.convert("RGB")
    except UnidentifiedImageError as e:
        raise ImageError(f"{label}: not an image Pillow can decode (JPEG, PNG, BMP, GIF, WebP, TIFF).") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{label}: corrupt or truncated image ({e}).") from e


def to_pixels(image: ImageInput, size: int | tuple[int, int], resize: Resize | str = DEFAULT_RESIZE) -> np.ndarray:
    """Return model input for one image: RGB uint8 of shape ``[H, W, 3]``.

    ``image`` is a path, encoded bytes, a PIL image, or an RGB ``uint8`` array ``[h, w, 3]``
    (a camera frame already converted from BGR). ``resize`` is the run's rule (:class:`Resize`).
    The input is never modified.
    """
    height, width = (size, size) if isinstance(size, int) else size
    resize = Resize(resize)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(
                f"Expected an RGB uint8 array of shape [h, w, 3]. Received: dtype={image.dtype}, shape={image.shape}."
            )
        if image.shape[:2] == (height, width):
            return image.copy()
        if resize is Resize.BILINEAR:
            return resize_bilinear(image, height, width)
        image = Image.fromarray(image, mode="RGB")
    elif not isinstance(image, Image.Image):
        image = decode(image)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if image.size == (width, height):
        return np.asarray(image, dtype=np.uint8).copy()
    if resize is Resize.BILINEAR:
        return resize_bilinear(np.asarray(image, dtype=np.uint8), height, width)
    return np.asarray(image.resize((width, height), RESAMPLE), dtype=np.uint8)


def load_pixels(path: str | Path, size: int | tuple[int, int], resize: Resize | str = DEFAULT_RESIZE) -> np.ndarray:
    """Decode ``path`` and return its ``[H, W, 3]`` uint8 model input."""
    return to_pixels(decode(path), size, resize)


def resize_bilinear(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """:attr:`Resize.BILINEAR`: MediaPipe Tasks' CPU resize (OpenCV's fixed-point warp), in numpy.

    Output pixel ``(x, y)`` samples source position ``(x * w / width, y * h / height)``, rounded
    to 1/32 pixel (halves up); the four neighbours are weighted ``32 * (32-fx)(32-fy)`` etc. (sum 2**15) and the
    sum rounded half up; indices past the last row/column repeat it.
    """
    h, w = rgb.shape[:2]
    y0, y1, fy = _sample_axis(height, h)
    x0, x1, fx = _sample_axis(width, w)
    wx0, wx1 = (32 - fx)[None, :, None], fx[None, :, None]
    rows0, rows1 = y0[:, None], y1[:, None]
    # Gather only the four neighbours of each output pixel; 255 * 32 * 32 fits comfortably in int32.
    top = rgb[rows0, x0].astype(np.int32) * wx0 + rgb[rows0, x1].astype(np.int32) * wx1
    bottom = rgb[rows1, x0].astype(np.int32) * wx0 + rgb[rows1, x1].astype(np.int32) * wx1
    acc = top * (32 - fy)[:, None, None] + bottom * fy[:, None, None]
    return ((acc + 512) >> 10).astype(np.uint8)  # == (32 * acc + 2**14) >> 15


def _sample_axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # 32 * x * n_in / n_out rounded half up, in exact integers: X = floor((64 x n_in + n_out) / (2 n_out)).
    # MediaPipe computes the same in doubles; the two can differ only where the position is exactly a
    # half 1/32 step, which needs n_out divisible by 64, and there by one 1/32 step.
    pos = (64 * np.arange(n_out, dtype=np.int64) * n_in + n_out) // (2 * n_out)
    i0, frac = pos >> 5, (pos & 31).astype(np.int32)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), frac


def resize_of(meta: dict | None) -> Resize:
    """The resize recorded in an ``edgeres.json`` (or the copy embedded in a model).

    No record at all (a model from elsewhere): the default rule, which is also what MediaPipe
    clients do. An edgeres 0.1 bundle (a description, not a rule name): Pillow's antialiasing.
    """
    if not meta:
        return DEFAULT_RESIZE
    value = meta.get("input", {}).get("resize") if isinstance(meta.get("input"), dict) else None
    try:
        return Resize(value)
    except (ValueError, TypeError):
        return LEGACY_RESIZE


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
