"""``edgeres bench``: latency percentiles, throughput, load time and memory of ``.tflite`` models.

Inputs are fixed random pixels, so a number measures the model and runtime, not a decoder.
Several models in one run get ratios against the first (int8 vs float32 is the headline).
On an accelerator or delegate, each result carries the load-time self-check against the CPU
(probe inputs, top-1 agreement, max |dp|), so a fast number cannot hide wrong answers.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeres.runtime import Accelerator, Classifier


@dataclass(frozen=True)
class BenchResult:
    path: str
    backend: str
    threads: int
    input: str
    runs: int
    load_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float  # images per second, one at a time (batch 1)
    rss_mb: float  # resident memory after loading and running this model
    peak_rss_mb: float  # process high-water mark so far
    self_check: dict | None = None  # SelfCheck.to_dict() when an accelerator was checked against the CPU
    self_check_summary: str | None = None
    note: str | None = None  # where the model ran, when not where asked (fallback) or another variant

    def to_dict(self) -> dict:
        return asdict(self)


def bench(
    models: list[str | Path],
    *,
    threads: int | None = None,
    runs: int = 100,
    warmup: int = 10,
    accelerator: Accelerator | str = Accelerator.CPU,
    delegate: str | Path | None = None,
    strict: bool = False,
    seed: int = 0,
) -> list[BenchResult]:
    """Benchmark each model (batch 1) after ``warmup`` untimed runs."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs={runs!r}: must be 1 or more.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup={warmup!r}: must be 0 or more.")
    if not models:
        raise ValueError("bench needs at least one model.")
    results = []
    for model in models:
        clf = Classifier(model, threads=threads, accelerator=accelerator, delegate=delegate, strict=strict)
        pixels = np.random.default_rng(seed).integers(0, 256, (*clf.input_size, 3), dtype=np.uint8)
        tensor = clf.quantize_input(pixels)
        for _ in range(warmup):
            clf.invoke(tensor)
        times = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter()
            clf.invoke(tensor)
            times[i] = time.perf_counter() - t0
        ms = times * 1e3
        results.append(BenchResult(
            path=str(clf.path), backend=clf.backend, threads=clf.threads,
            input=f"{clf.input_size[0]}x{clf.input_size[1]} {clf.input_dtype.name}", runs=runs,
            load_ms=round(clf.load_ms, 2), p50_ms=_r(np.percentile(ms, 50)), p90_ms=_r(np.percentile(ms, 90)),
            p99_ms=_r(np.percentile(ms, 99)), mean_ms=_r(ms.mean()), throughput_ips=_r(1e3 / ms.mean()),
            rss_mb=_r(current_rss_mb()), peak_rss_mb=_r(peak_rss_mb()),
            self_check=clf.self_check.to_dict() if clf.self_check else None,
            self_check_summary=clf.self_check.summary() if clf.self_check else None,
            note=clf.accelerator_note,
        ))
        del clf
    return results


def ratios(results: list[BenchResult]) -> dict[str, float]:
    """Median-latency speed-up of every model against the first (``>1``: faster than the first)."""
    base = results[0].p50_ms
    return {r.path: round(base / r.p50_ms, 3) for r in results[1:]}


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _r(x: float) -> float:
    return round(float(x), 3)
