"""The one preprocessing path: decode, colour order and resize for every stage.

Training (validation split), calibration, evaluation, ``predict`` and ``camera`` all turn an
image into model input through :func:`to_pixels`, so float and int8 models are compared on
byte-identical inputs and a deployed app can reproduce the input with three Pillow calls:

    Image.open(path) -> ImageOps.exif_transpose -> .convert("RGB") -> .resize((S, S), BILINEAR)

The model input is raw RGB uint8 pixels, ``[S, S, 3]``; normalisation lives inside the graph.
Only numpy and Pillow are imported here: this module ships to devices.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def to_pixels(image: ImageInput, size: int | tuple[int, int]) -> np.ndarray:
    """Return model input for one image: RGB uint8 of shape ``[H, W, 3]``.

    ``image`` is a path, encoded bytes, a PIL image, or an RGB ``uint8`` array ``[h, w, 3]``
    (a camera frame already converted from BGR). The input is never modified.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(
                f"Expected an RGB uint8 array of shape [h, w, 3]. Received: dtype={image.dtype}, shape={image.shape}."
            )
        if image.shape[:2] == (height, width):
            return image.copy()
        image = Image.fromarray(image, mode="RGB")
    elif not isinstance(image, Image.Image):
        image = decode(image)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def load_pixels(path: str | Path, size: int | tuple[int, int]) -> np.ndarray:
    """Decode ``path`` and return its ``[H, W, 3]`` uint8 model input."""
    return to_pixels(decode(path), size)


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
