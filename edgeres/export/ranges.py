"""Activation ranges for int8: what the calibration images did to each tensor, and the rules
(:class:`Ranges`) that turn it into one ``(lo, hi)`` per tensor. numpy and LiteRT only.

TensorFlow's calibrator keeps one global min/max per tensor over all calibration images.
On from-scratch ResNet-50 runs here that cost up to 11 pp of int8 accuracy, for two reasons
(benchmarks/reference.md):
  * per-image maxima are heavy-tailed: in conv5_block3_3_bn the median image peaks at 0.2 and
    the worst of 300 at 127, so a global range leaves the typical image a few int8 steps;
  * the calibrator over-states the range of a conv that feeds a residual ADD (449.6 logged
    where Keras and LiteRT both give 127.1 on the same 300 images).
So edgeres runs the float model through LiteRT with every tensor kept, and records per tensor
each image's exact min/max and a histogram of all its values. The rules (Ranges) turn those
into one range per tensor. The median-of-groups rule (robust) fixed the weak runs but clipped
12% of a confident model's logits; the MSE rule chooses, per tensor, the clip range that
costs the least int8 error on the values actually seen, and the logits are never clipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Ranges(str, Enum):
    """How int8 activation ranges are taken from the calibration images."""

    RELATIVE_MSE = "relative-mse"  # per tensor, the clip range with the least int8 error relative to each image's signal
    MSE = "mse"  # per tensor, the clip range with the least int8 error on its calibration values
    PERCENTILE = "percentile"  # the 0.01th and 99.99th percentiles of each tensor's calibration values
    ROBUST = "robust"  # each image's exact min/max, median over groups of images
    MINMAX = "minmax"  # global min/max over every image, as TensorFlow's calibrator keeps


DEFAULT_RANGES = Ranges.RELATIVE_MSE  # benchmarks/reference.md, "Activation range rules"
GROUP_SIZE = 10  # images per group for Ranges.ROBUST
PERCENTILE = 99.99  # for Ranges.PERCENTILE
# The logits' range for the histogram rules: the observed calibration range widened by this share
# of its span on each side. 300 calibration images do not see every photo's extreme logits (the
# reference model's validation logits reach -5.85 against -3.37 seen in calibration: 0.9% of
# them fell outside); a quarter each side leaves 0.1% outside, and the logits' resolution costs
# no score fidelity (the head kept float changes mean |dp| by 2%: benchmarks/dp_sources.md).
LOGITS_MARGIN = 0.25
RANGES = {
    Ranges.RELATIVE_MSE: "per tensor, the clip range that minimises the int8 error (clipping + rounding) of its "
                         "values relative to each calibration image's own signal, summed over images (from "
                         "histograms), so a few images with huge activations do not set the range; the logits "
                         "keep their full observed range and a quarter more each side",
    Ranges.MSE: "per tensor, the clip range that minimises the int8 error (clipping + rounding) of its "
                "values over all calibration images (from a histogram); the logits keep their full observed "
                "range and a quarter more each side",
    Ranges.PERCENTILE: f"per tensor, the {100 - PERCENTILE:g}th and {PERCENTILE:g}th percentiles of its values over "
                       "all calibration images; the logits keep their full observed range and a quarter more "
                       "each side",
    Ranges.ROBUST: "each image's exact min/max per tensor, then the median over groups of "
                   f"{GROUP_SIZE} images: a rare outlier image cannot stretch a range",
    Ranges.MINMAX: "global min/max over every calibration image (what TensorFlow's calibrator keeps), so one "
                   "outlier image widens a range for all",
}

@dataclass(frozen=True)
class ActivationStats:
    """What the calibration images did to each ranged tensor."""

    lo: np.ndarray  # [images, tensors]: each image's exact minimum
    hi: np.ndarray  # [images, tensors]: each image's exact maximum
    histograms: np.ndarray | None = None  # [tensors, HIST_KEYS] value counts over all images (see value_histogram)
    # The same, each image's counts divided by that image's mean square of the tensor: an error
    # summed over this is each image's noise-to-signal ratio, summed over images.
    relative: np.ndarray | None = None


def activation_stats(model_bytes: bytes, tensors: list[int], images, *, advance=None,
                     threads: int | None = None, histograms: bool = True) -> ActivationStats:
    """Per-image min and max of each tensor in ``tensors`` (and a histogram of all its values),
    from the float model run by LiteRT with every intermediate tensor kept."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes, num_threads=threads or os.cpu_count() or 1,
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    collector = StatsCollector(len(tensors), histograms=histograms)
    for x in images:
        interp.set_tensor(index, x)
        interp.invoke()
        collector.add([interp.get_tensor(t) for t in tensors])
        if advance:
            advance()
    return collector.stats()


class StatsCollector:
    """:class:`ActivationStats` gathered one image at a time: ``add`` the values of each tensor
    for an image (from LiteRT at export, from Keras for ``edgeres qat``'s initial ranges)."""

    def __init__(self, tensors: int, *, histograms: bool = True):
        self.lo: list[list[float]] = []
        self.hi: list[list[float]] = []
        self.counts = np.zeros((tensors, HIST_KEYS), np.int64) if histograms else None
        self.relative = np.zeros((tensors, HIST_KEYS), np.float64) if histograms else None

    def add(self, values: list[np.ndarray]) -> None:
        self.lo.append([v.min() for v in values])
        self.hi.append([v.max() for v in values])
        if self.counts is None:
            return
        for j, v in enumerate(values):
            h = value_histogram(v, HIST_SAMPLE, extremes=(self.lo[-1][j], self.hi[-1][j]))
            self.counts[j] += h
            power = _mean_square(v, HIST_SAMPLE)
            if power > 0:
                self.relative[j] += h / power

    def stats(self) -> ActivationStats:
        return ActivationStats(np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32),
                               self.counts, self.relative)


def _mean_square(values: np.ndarray, sample: int) -> float:
    """Mean of the squared values, over the same sample :func:`value_histogram` bins."""
    flat = values.reshape(-1)
    if flat.size > sample:
        stride = -(-flat.size // sample) | 1
        flat = flat[stride // 2::stride]
    return float(np.dot(flat, flat)) / max(1, flat.size)


def choose_ranges(rule: Ranges | str, stats: ActivationStats, *, output_side=()) -> tuple[np.ndarray, np.ndarray]:
    """One ``(lo, hi)`` per tensor by ``rule``. ``output_side``: positions (in ``stats``) of the
    tensors that feed the softmax; the histogram rules give them their full observed range,
    widened by :data:`LOGITS_MARGIN` of its span on each side for photos beyond the calibration set,
    since a clipped logit makes every confident photo show the same score."""
    rule = Ranges(rule)
    if rule is Ranges.ROBUST:
        return robust_ranges(stats.lo, stats.hi)
    observed_lo, observed_hi = stats.lo.min(0).astype(np.float64), stats.hi.max(0).astype(np.float64)
    if rule is Ranges.MINMAX:
        return observed_lo, observed_hi
    if stats.histograms is None:
        raise ValueError(f"--ranges {rule.value} needs value histograms (activation_stats(histograms=True)).")
    pick = percentile_range if rule is Ranges.PERCENTILE else mse_range
    histograms = stats.relative if rule is Ranges.RELATIVE_MSE else stats.histograms
    lo, hi = np.empty_like(observed_lo), np.empty_like(observed_hi)
    for j in range(len(lo)):
        lo[j], hi[j] = pick(histograms[j], observed_lo[j], observed_hi[j])
    for j in output_side:
        span = observed_hi[j] - observed_lo[j]
        lo[j], hi[j] = observed_lo[j] - LOGITS_MARGIN * span, observed_hi[j] + LOGITS_MARGIN * span
    return lo, hi


def robust_ranges(lo: np.ndarray, hi: np.ndarray, group: int = GROUP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Per tensor: split the images into groups of about ``group`` (interleaved), take each
    group's min and max, and return the median over groups. Fewer than ``2 * group`` images
    degrade gracefully to fewer groups; under ``group`` images it is the plain global min/max."""
    n = len(lo)
    k = max(1, n // group)
    members = [np.arange(g, n, k) for g in range(k)]
    return (np.median([lo[m].min(0) for m in members], axis=0),
            np.median([hi[m].max(0) for m in members], axis=0))


# A value histogram bins float32 values by their top bits: sign, exponent and HIST_BITS bits of
# mantissa, so every bin is 1/64 of an octave wide (1.6%) from 1e-38 to 3e38. No range has to
# be known in advance or grown, the same bins serve every tensor, and binning is one shift and
# one bincount. Memory: HIST_KEYS counts a tensor, whatever the number of images. A large
# tensor contributes a fixed-stride sample of HIST_SAMPLE of its values an image, counted
# stride times, plus its exact min and max: binning every value of ResNet-50 at 224 px
# (17.6M values an image) cost 60 ms an image, 18 s for 300 images; ~10M samples a tensor
# over 300 images estimate its error just as well.
HIST_BITS = 6
HIST_KEYS = 1 << (9 + HIST_BITS)  # sign + 8 exponent bits + mantissa bits
HIST_SAMPLE = 1 << 15
_SIDE_KEYS = HIST_KEYS // 2
CANDIDATE_OCTAVES = 24  # the MSE search looks for a clip point down to 2^-24 of the observed extreme


def value_histogram(values: np.ndarray, sample: int | None = None, extremes=None) -> np.ndarray:
    """Counts of ``values`` (float32) per bin: keys ``[0, HIST_KEYS/2)`` hold positive values,
    the rest negative ones, each by magnitude; bin edges come from :func:`_bin_edges`.
    With ``sample``, a tensor of more values contributes every stride-th value (an odd stride,
    so every channel of an NHWC tensor is visited), counted stride times, and its min and max
    (``extremes``, when the caller has them)."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    if not sample or flat.size <= sample:
        return np.bincount(flat.view(np.uint32) >> (23 - HIST_BITS), minlength=HIST_KEYS)
    stride = -(-flat.size // sample) | 1
    counts = np.bincount(flat[stride // 2::stride].view(np.uint32) >> (23 - HIST_BITS), minlength=HIST_KEYS)
    counts *= stride
    extremes = extremes if extremes is not None else (flat.min(), flat.max())
    np.add.at(counts, np.array(extremes, np.float32).view(np.uint32) >> (23 - HIST_BITS), 1)
    return counts


def _bin_edges() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper magnitude of each bin of one sign. Exponent 0 (zero and denormals) has
    edges 0..0: those values are treated as exact zeros; exponent 255 (inf, nan) is dropped."""
    key = np.arange(_SIDE_KEYS)
    exponent, mantissa = key >> HIST_BITS, key & ((1 << HIST_BITS) - 1)
    base = np.ldexp(1.0, exponent - 127)
    lower = base * (1 + mantissa / (1 << HIST_BITS))
    upper = base * (1 + (mantissa + 1) / (1 << HIST_BITS))
    lower[exponent == 0] = upper[exponent == 0] = 0.0
    return lower, upper


_EDGES = _bin_edges()


class _Side:
    """One sign of a histogram (magnitudes), as prefix sums, so that the error of clipping at
    any bin edge, with any step, costs O(log bins). Values are taken uniform within a bin."""

    def __init__(self, counts: np.ndarray):
        keep = np.flatnonzero(counts[: _SIDE_KEYS - (1 << HIST_BITS)])  # no inf / nan
        keep = keep[keep >= (1 << HIST_BITS)]  # zeros and denormals: exact zeros, no error
        a, b, c = _EDGES[0][keep], _EDGES[1][keep], counts[keep].astype(np.float64)
        self.lower, self.upper = a, b
        self.c0 = np.concatenate([[0.0], np.cumsum(c)])
        self.c1 = np.concatenate([[0.0], np.cumsum(c * (a + b) / 2)])
        self.c2 = np.concatenate([[0.0], np.cumsum(c * (a * a + a * b + b * b) / 3)])

    def __len__(self) -> int:
        return len(self.upper)

    def error(self, below: np.ndarray, clip: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Summed squared int8 error of this side's values when the range ends at ``clip``
        (``below``: how many bins lie under it) and one quantization step is ``step``.
        Beyond the clip: (x - clip)^2. Inside: x^2 for values under half a step (they round to
        zero, which int8 represents exactly), step^2 / 12 for the others (uniform rounding)."""
        n = len(self.upper)
        beyond = ((self.c2[n] - self.c2[below]) - 2 * clip * (self.c1[n] - self.c1[below])
                  + clip * clip * (self.c0[n] - self.c0[below]))
        to_zero = np.minimum(np.searchsorted(self.upper, step / 2, side="right"), below)
        return beyond + self.c2[to_zero] + (self.c0[below] - self.c0[to_zero]) * step * step / 12


def mse_range(histogram: np.ndarray, lo: float, hi: float, *, levels: int = 256,
              max_rounds: int = 8) -> tuple[float, float]:
    """The ``(lo, hi)`` with the least summed squared int8 error over the histogram's values,
    clip points searched over the bin edges (1.6% apart) within the observed ``lo..hi``.

    The two ends share one step, ``(hi - lo) / (levels - 1)``, so they are searched in turns
    (each end over all its candidates with the other fixed) until neither moves."""
    pos, neg = _Side(histogram[:_SIDE_KEYS]), _Side(histogram[_SIDE_KEYS:])
    if not len(pos) and not len(neg):
        return lo, hi

    def candidates(side: _Side, observed: float) -> tuple[np.ndarray, np.ndarray]:
        # Clip at 0 (everything of this sign clipped) or at any bin edge up to the observed
        # extreme, over the top CANDIDATE_OCTAVES octaves below it.
        observed = max(observed, 0.0)
        edges = _EDGES[1][(_EDGES[1] > observed * 2.0 ** -CANDIDATE_OCTAVES) & (_EDGES[1] < observed)]
        clip = np.concatenate([[0.0], edges, [observed]]) if len(side) else np.zeros(1)
        return np.searchsorted(side.upper, clip, side="right"), clip

    pos_below, pos_clip = candidates(pos, hi)
    neg_below, neg_clip = candidates(neg, -lo)
    if len(pos):
        pos_below, pos_clip = pos_below[1:], pos_clip[1:]  # a range must reach above zero when values do
    i, k = len(pos_clip) - 1, len(neg_clip) - 1  # start from min/max
    for _ in range(max_rounds):
        step = (pos_clip + neg_clip[k]) / (levels - 1)
        i_new = int(np.argmin(pos.error(pos_below, pos_clip, step) + neg.error(neg_below[k], neg_clip[k], step)))
        step = (pos_clip[i_new] + neg_clip) / (levels - 1)
        k_new = int(np.argmin(pos.error(pos_below[i_new], pos_clip[i_new], step) + neg.error(neg_below, neg_clip, step)))
        if (i_new, k_new) == (i, k):
            break
        i, k = i_new, k_new
    return 0.0 - float(neg_clip[k]), float(pos_clip[i])


def percentile_range(histogram: np.ndarray, lo: float, hi: float, *,
                     percentile: float = PERCENTILE) -> tuple[float, float]:
    """The ``(100 - percentile)``th and ``percentile``th percentiles of the histogram's values
    (zeros included), to the bin edge above, within the observed ``lo..hi``."""
    pos, neg = _Side(histogram[:_SIDE_KEYS]), _Side(histogram[_SIDE_KEYS:])
    total = histogram[: _SIDE_KEYS - (1 << HIST_BITS)].sum() + histogram[_SIDE_KEYS:-(1 << HIST_BITS)].sum()
    allowed = total * (100.0 - percentile) / 100.0  # values each tail may clip

    def edge(side: _Side, observed: float) -> float:
        if not len(side):
            return max(observed, 0.0)
        # The first bin edge with at most `allowed` values beyond it.
        below = np.searchsorted(side.c0, side.c0[-1] - allowed, side="left")
        return min(float(side.upper[max(below - 1, 0)]) if below > 0 else 0.0, max(observed, 0.0))

    return 0.0 - edge(neg, -lo), edge(pos, hi)
