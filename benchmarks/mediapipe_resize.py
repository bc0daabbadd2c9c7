"""MediaPipe Tasks' CPU resize, reproduced bit-exactly in numpy.

MediaPipe's ``ImageClassifier`` (CPU, no region of interest, no rotation) turns an image into the
model's ``[1, H, W, 3]`` input in ``ImageToTensorCalculator`` -> ``ImageToTensorOpenCvConverter``
(``mediapipe/calculators/tensor/image_to_tensor_converter_opencv.cc``)::

    M = cv::getPerspectiveTransform(cv::boxPoints(roi), {(0,H), (0,0), (W,0), (W,H)})
    cv::warpPerspective(src, dst, M, (W, H), INTER_LINEAR, BORDER_REPLICATE)

with the roi the whole image. The OpenCV linked into ``libmediapipe.so`` runs the classic
fixed-point warp (``WarpPerspectiveInvoker`` + ``remap``), which we measured to be bit-exact
(below): for each output pixel ``(x, y)``

    X = cvRound(32 * sx),  sx = x * w / W        Y = cvRound(32 * sy),  sy = y * h / H
    (ix, fx) = (X >> 5, X & 31)                  (iy, fy) = (Y >> 5, Y & 31)
    out = (sum_k p_k * w_k + 2**14) >> 15,   w = 32 * [(32-fx)(32-fy), fx(32-fy), (32-fx)fy, fx*fy]

i.e. corner-aligned bilinear sampling (no half-pixel offset), source positions rounded to 1/32
pixel (round half to even), 15-bit integer weights, round half up, edge pixels replicated, no
antialiasing (a downscale skips most source pixels). ``sx`` is evaluated in double precision
from OpenCV's own inverse matrix, which we rebuild with the same floating-point operations;
that only matters when ``32 * x * w / W`` falls exactly on a half (possible only when W or H is
divisible by 64), where cvRound's tie then goes whichever way OpenCV's rounding errors send it.

Measured identical to MediaPipe 1.2.3 (pip, Python) and @mediapipe/tasks-vision 1.1.0 (wasm, CPU)
on real photos and on tie-prone sizes; see benchmarks/client_pixels.md. Note: ``cv2.warpPerspective``
from the opencv-python 5.x wheels (float32 "warp_kernels", Intel IPP) does *not* reproduce
MediaPipe: up to 4 levels off on ~6% of values.

Run as a script to compare with OpenCV and Pillow on real photos::

    python benchmarks/mediapipe_resize.py /work/shared/data/cats_and_dogs_filtered/validation --size 160
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_INTER_BITS = 5                      # OpenCV INTER_BITS: source positions in 1/32 pixel
_INTER_TAB_SIZE = 1 << _INTER_BITS
_COEF_BITS = 15                      # OpenCV INTER_REMAP_COEF_BITS
_BLOCK_SZ = 32                       # WarpPerspectiveInvoker's tile edge


def _f32(v: float) -> float:
    return float(np.float32(v))


@lru_cache(maxsize=256)
def _inverse_warp_matrix(w: int, h: int, out_w: int, out_h: int) -> tuple[float, ...]:
    """The 3x3 destination->source matrix OpenCV's warpPerspective uses, bit for bit.

    Replays ``cv::boxPoints`` (float), ``cv::getPerspectiveTransform`` (8x8 ``hal::LU64f``,
    partial pivoting) and ``cv::invert(DECOMP_LU)`` (3x3 cofactors) with the same double
    operations, so ties in
    ``cvRound`` break the way MediaPipe's do. Mathematically it is diag(w/W, h/H, 1).
    """
    src = [(0.0, float(h)), (0.0, 0.0), (float(w), 0.0), (float(w), float(h))]  # boxPoints, exact
    dst = [(0.0, float(out_h)), (0.0, 0.0), (float(out_w), 0.0), (float(out_w), float(out_h))]
    a = [[0.0] * 8 for _ in range(8)]
    b = [0.0] * 8
    for i in range(4):
        (sx, sy), (dx, dy) = src[i], dst[i]
        a[i][0] = a[i + 4][3] = sx
        a[i][1] = a[i + 4][4] = sy
        a[i][2] = a[i + 4][5] = 1.0
        a[i][6] = _f32(-_f32(sx * dx))          # Point2f products, stored as double
        a[i][7] = _f32(-_f32(sy * dx))
        a[i + 4][6] = _f32(-_f32(sx * dy))
        a[i + 4][7] = _f32(-_f32(sy * dy))
        b[i], b[i + 4] = dx, dy
    m = 8                                         # hal::LUImpl<double>
    for i in range(m):
        k = i
        for j in range(i + 1, m):
            if abs(a[j][i]) > abs(a[k][i]):
                k = j
        if abs(a[k][i]) < np.finfo(np.float64).eps * 100:
            raise ValueError(f"Degenerate resize: {w}x{h} -> {out_w}x{out_h}.")
        if k != i:
            a[i][i:], a[k][i:] = a[k][i:], a[i][i:]
            b[i], b[k] = b[k], b[i]
        d = -1.0 / a[i][i]
        for j in range(i + 1, m):
            alpha = a[j][i] * d
            for kk in range(i + 1, m):
                a[j][kk] += alpha * a[i][kk]
            b[j] += alpha * b[i]
    for i in range(m - 1, -1, -1):
        s = b[i]
        for kk in range(i + 1, m):
            s -= a[i][kk] * b[kk]
        b[i] = s / a[i][i]   # OpenCV >= 4.x divides here (older releases multiplied by 1/a_ii)
    return _invert3x3([b[0:3], b[3:6], [b[6], b[7], 1.0]])  # forward matrix, source -> destination


def _invert3x3(S: list[list[float]]) -> tuple[float, ...]:
    """cv::invert(DECOMP_LU) of a 3x3 double matrix: cofactors over the determinant."""
    det = (S[0][0] * (S[1][1] * S[2][2] - S[1][2] * S[2][1])
           - S[0][1] * (S[1][0] * S[2][2] - S[1][2] * S[2][0])
           + S[0][2] * (S[1][0] * S[2][1] - S[1][1] * S[2][0]))
    d = 1.0 / det
    return (
        (S[1][1] * S[2][2] - S[1][2] * S[2][1]) * d,
        (S[0][2] * S[2][1] - S[0][1] * S[2][2]) * d,
        (S[0][1] * S[1][2] - S[0][2] * S[1][1]) * d,
        (S[1][2] * S[2][0] - S[1][0] * S[2][2]) * d,
        (S[0][0] * S[2][2] - S[0][2] * S[2][0]) * d,
        (S[0][2] * S[1][0] - S[0][0] * S[1][2]) * d,
        (S[1][0] * S[2][1] - S[1][1] * S[2][0]) * d,
        (S[0][1] * S[2][0] - S[0][0] * S[2][1]) * d,
        (S[0][0] * S[1][1] - S[0][1] * S[1][0]) * d,
    )


@lru_cache(maxsize=64)
def _fixed_point_coords(w: int, h: int, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's X, Y = cvRound(32 * source position) for every output pixel, ``[out_h, out_w]``.

    Same double expressions and the same tiles as ``WarpPerspectiveInvoker`` (the tile's first
    column enters ``X0``), so even exact ties round identically. Cached: read-only arrays.
    """
    M = _inverse_warp_matrix(w, h, out_w, out_h)
    bh0 = min(_BLOCK_SZ // 2, out_h)
    bw0 = min(_BLOCK_SZ * _BLOCK_SZ // bh0, out_w)
    x = np.arange(out_w)
    xb = (x // bw0 * bw0).astype(np.float64)[None, :]       # tile start
    x1 = (x % bw0).astype(np.float64)[None, :]              # offset inside the tile
    y = np.arange(out_h, dtype=np.float64)[:, None]
    X0 = M[0] * xb + M[1] * y + M[2]
    Y0 = M[3] * xb + M[4] * y + M[5]
    W0 = M[6] * xb + M[7] * y + M[8]
    Wd = W0 + M[6] * x1
    zero = Wd == 0
    Wt = _INTER_TAB_SIZE / np.where(zero, 1.0, Wd)
    Wt[zero] = 0.0
    lo, hi = float(np.iinfo(np.int32).min), float(np.iinfo(np.int32).max)
    X = np.rint(np.minimum(np.maximum((X0 + M[0] * x1) * Wt, lo), hi)).astype(np.int64)  # cvRound:
    Y = np.rint(np.minimum(np.maximum((Y0 + M[3] * x1) * Wt, lo), hi)).astype(np.int64)  # half to even
    X.setflags(write=False)
    Y.setflags(write=False)
    return X, Y


def resize_like_mediapipe(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``rgb`` (uint8 ``[h, w, C]``) to ``[height, width, C]`` exactly as MediaPipe Tasks on CPU.

    Corner-aligned bilinear (``sx = x * w / width``) with positions rounded to 1/32 pixel and
    15-bit integer weights, no antialiasing, edges replicated: the pixels ``ImageClassifier``
    feeds the model when it is given the whole image. The input is never modified.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ValueError(f"Expected a uint8 array of shape [h, w, C]. Received: dtype={rgb.dtype}, shape={rgb.shape}.")
    if height < 1 or width < 1:
        raise ValueError(f"Output size must be positive. Received: height={height}, width={width}.")
    h, w = rgb.shape[:2]
    X, Y = _fixed_point_coords(w, h, height, width)
    # Separable unless M[6]/M[7] (~1e-18, OpenCV's rounding) flip a tie in some rows/tiles: ~3% of
    # (w, h, S) with S divisible by 64, never otherwise.
    separable = bool((X == X[:1]).all() and (Y == Y[:, :1]).all())
    if separable:
        X, Y = X[0], Y[:, 0]
    ix, fx = X >> _INTER_BITS, (X & (_INTER_TAB_SIZE - 1)).astype(np.int32)
    iy, fy = Y >> _INTER_BITS, (Y & (_INTER_TAB_SIZE - 1)).astype(np.int32)
    x0, x1 = np.clip(ix, 0, w - 1), np.clip(ix + 1, 0, w - 1)   # BORDER_REPLICATE
    y0, y1 = np.clip(iy, 0, h - 1), np.clip(iy + 1, 0, h - 1)
    if separable:
        rows0, rows1 = np.take(rgb, y0, axis=0), np.take(rgb, y1, axis=0)      # [height, w, C]
        p00, p01 = np.take(rows0, x0, axis=1), np.take(rows0, x1, axis=1)    # [height, width, C]
        p10, p11 = np.take(rows1, x0, axis=1), np.take(rows1, x1, axis=1)
        fx, fy = fx[None, :, None], fy[:, None, None]
    else:
        p00, p01, p10, p11 = rgb[y0, x0], rgb[y0, x1], rgb[y1, x0], rgb[y1, x1]
        fx, fy = fx[..., None], fy[..., None]
    gx, gy = _INTER_TAB_SIZE - fx, _INTER_TAB_SIZE - fy
    # Weights 32*(32-fx)(32-fy), ... sum to 2**15 in OpenCV; here without the factor 32.
    # 255 * 32 * 32 fits easily in int32.
    top = p00.astype(np.int32) * gx + p01.astype(np.int32) * fx
    bottom = p10.astype(np.int32) * gx + p11.astype(np.int32) * fx
    acc = top * gy + bottom * fy
    # acc is in units of 2**-10; OpenCV's integer weights are 32x larger (sum 2**15) and its
    # FixedPtCast rounds with (v + 2**14) >> 15: the same as (acc + 2**9) >> 10.
    return ((acc * (1 << (_COEF_BITS - 2 * _INTER_BITS)) + (1 << (_COEF_BITS - 1))) >> _COEF_BITS).astype(np.uint8)


def _main() -> None:
    import argparse
    import time
    from pathlib import Path

    import cv2
    from PIL import Image

    p = argparse.ArgumentParser(description="Compare resize_like_mediapipe with OpenCV and Pillow.")
    p.add_argument("folder", type=Path)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--limit", type=int, default=0)
    args = p.parse_args()
    files = sorted(f for f in args.folder.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if args.limit:
        files = files[: args.limit]
    S = args.size
    stats: dict[str, list] = {}
    t_np = 0.0
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        h, w = rgb.shape[:2]
        t = time.perf_counter()
        ours = resize_like_mediapipe(rgb, S, S).astype(np.int16)
        t_np += time.perf_counter() - t
        src = cv2.boxPoints(((w / 2, h / 2), (w, h), 0.0)).astype(np.float32)
        dst = np.array([[0, S], [0, 0], [S, 0], [S, S]], np.float32)
        M = cv2.getPerspectiveTransform(src, dst)
        others = {}
        for name, ipp in (("cv2.warpPerspective", False), ("cv2.warpPerspective+IPP", True)):
            cv2.ipp.setUseIPP(ipp)
            others[name] = cv2.warpPerspective(rgb, M, (S, S), flags=cv2.INTER_LINEAR,
                                               borderMode=cv2.BORDER_REPLICATE)
        others["cv2.resize LINEAR"] = cv2.resize(rgb, (S, S), interpolation=cv2.INTER_LINEAR)
        others["cv2.resize AREA"] = cv2.resize(rgb, (S, S), interpolation=cv2.INTER_AREA)
        others["Pillow BILINEAR"] = np.asarray(Image.fromarray(rgb).resize((S, S), Image.Resampling.BILINEAR))
        for k, v in others.items():
            stats.setdefault(k, []).append(np.abs(ours - v.astype(np.int16)))
    print(f"{len(files)} images, {S}x{S}, cv2 {cv2.__version__}; numpy resize {1e3 * t_np / len(files):.2f} ms/image")
    for k, diffs in stats.items():
        d = np.concatenate([x.ravel() for x in diffs])
        exact = sum(int(not x.any()) for x in diffs)
        print(f"  vs {k:24s} max {d.max():3d}  mean {d.mean():.4f}  values off: {100 * (d > 0).mean():7.4f}%  "
              f"images identical: {exact}/{len(diffs)}")


if __name__ == "__main__":
    _main()
