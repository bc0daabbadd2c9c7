"""What each runtime computes for the int8 model, recorded at export for ``edgeres check``.

The int8 model is verified on this machine's XNNPACK kernels; LiteRT's built-in kernels, ARM64's
XNNPACK and XNNPACK in WebAssembly round differently and give some borderline photos the other
label (``benchmarks/cross_runtime.md``). So the export picks a probe set worth checking (the
bundle's self-check photos plus the validation photos nearest the decision boundary), runs the
int8 model on every runtime this machine has, and writes:

    runtime_probes.bin    the probe pixels, uint8, raw [N, H, W, 3] (a browser fetches it as is)
    edgeres.json          "runtimes": the probes, each runtime's raw uint8 outputs on them, the
                          tolerance, and each pair of runtimes compared (differ, max/mean steps, flips)

A device then runs the probes on its own runtime (``edgeres check``, :mod:`edgeres.check`).
No TensorFlow here.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from edgeres.accelerators import Kernels
from edgeres.check import DEFAULT_TOLERANCE_STEPS, compare_outputs, runtime_name

RUNTIME_PROBES_FILE = "runtime_probes.bin"
RUNTIME_PROBES = 48  # in all: the bundle's self-check photos, then the boundary ones
BOUNDARY_SCAN = 400  # validation photos scanned (evenly spread) for the ones nearest the boundary


def _relative(path: Path, root: Path) -> str:
    """``path`` under the dataset ``root`` (symlinks kept: a dataset of links names its links)."""
    for p, r in ((Path(path).absolute(), Path(root).absolute()), (Path(path).resolve(), Path(root).resolve())):
        if p.is_relative_to(r):
            return p.relative_to(r).as_posix()
    return Path(path).name


def boundary_photos(model: Path, paths: list[Path], n: int, size: int, resize, *, threads: int | None = None,
                    progress: bool = False) -> tuple[list[Path], np.ndarray]:
    """The ``n`` of ``paths`` whose int8 top-1 margin (top score minus the next) is smallest on
    XNNPACK, nearest first, and their pixels."""
    from edgeres.preprocess import ImageError, load_pixels
    from edgeres.runtime import Classifier

    clf = Classifier(model, threads=threads, accelerator="cpu")
    kept, pixels, margins = [], [], []
    iterator = paths
    if progress:
        from edgeres._stderr import track

        iterator = track(paths, description="Finding the boundary photos")
    for p in iterator:
        try:
            px = load_pixels(p, size, resize)
        except ImageError:
            continue
        top = np.sort(clf.predict_pixels(px).probabilities)[::-1]
        kept.append(p)
        pixels.append(px)
        margins.append(float(top[0] - top[1]))
    order = np.argsort(margins, kind="stable")[:n]
    return [kept[i] for i in order], np.stack([pixels[i] for i in order]) if len(order) else np.zeros((0, size, size, 3), np.uint8)


def runtime_outputs(model: Path, probes: np.ndarray, kernels: Kernels | str, *, threads: int | None = None) -> np.ndarray:
    """The model's raw output rows ``[N, classes]`` on ``probes`` with LiteRT's ``kernels``."""
    from edgeres.runtime import Classifier

    clf = Classifier(model, threads=threads, accelerator="cpu", kernels=kernels)
    return np.stack([np.asarray(clf.invoke(clf.quantize_input(p))).reshape(-1) for p in probes])


def record_runtimes(bundle: Path, model_file: str, *, self_check_photos: list[Path], validation: list[Path], root: Path,
                    size: int, resize, limit: int | None = None, threads: int | None = None,
                    progress: bool = False, log=print) -> dict:
    """Write ``bundle/runtime_probes.bin`` and return edgeres.json's ``"runtimes"`` record for
    ``bundle/model_file`` (the int8 model): the bundle's self-check photos (the first
    MAX_BUNDLE_PROBES of ``self_check_photos``, as in probes.npz) plus the validation photos
    nearest the boundary, run on XNNPACK and on LiteRT's built-in kernels."""
    from edgeres.bundle import MAX_BUNDLE_PROBES
    from edgeres.preprocess import load_pixels

    probe_paths = list(self_check_photos)[:MAX_BUNDLE_PROBES]
    model = bundle / model_file
    scan = list(validation)
    scan_limit = min(BOUNDARY_SCAN, limit or BOUNDARY_SCAN)
    scan = scan[:: max(1, len(scan) // scan_limit)][:scan_limit]
    own = np.stack([load_pixels(p, size, resize) for p in probe_paths]) if probe_paths else None
    near, near_pixels = boundary_photos(model, scan, RUNTIME_PROBES - len(probe_paths), size, resize,
                                        threads=threads, progress=progress)
    probes = near_pixels if own is None else np.concatenate([own, near_pixels])
    sources = [_relative(p, root) for p in [*probe_paths, *near]]
    probes.astype(np.uint8).tofile(bundle / RUNTIME_PROBES_FILE)

    outputs = {runtime_name(k): runtime_outputs(model, probes, k, threads=threads) for k in Kernels}
    pairs = [{"a": a, "b": b, **compare_outputs(outputs[a], outputs[b])} for a, b in itertools.combinations(outputs, 2)]
    record = {"model": model_file,
              "probes": {"file": RUNTIME_PROBES_FILE, "n": len(probes), "shape": list(probes.shape),
                         "sources": sources,
                         "chosen": f"{len(probe_paths)} self-check photos + the {len(near)} of {len(scan)} "
                                   f"validation photos with the smallest int8 top-1 margin on XNNPACK"},
              "outputs": {name: out.tolist() for name, out in outputs.items()},
              "tolerance_steps": DEFAULT_TOLERANCE_STEPS,
              "pairs": pairs}
    log("Runtimes: " + summary(record))
    return record


def summary(record: dict | None) -> str:
    """One line: how far the recorded runtimes differ on the probes."""
    if not record:
        return "none recorded"
    n = record["probes"]["n"]
    parts = [f"{p['b']} vs {p['a']}: {p['differ']}/{n} probes differ, max {p['max_steps']} steps, "
             f"{p['flips']} top-1 flip{'s' if p['flips'] != 1 else ''}" for p in record["pairs"]]
    return (f"int8 on {len(record['outputs'])} runtimes ({', '.join(record['outputs'])}), {n} probes: "
            + "; ".join(parts) + f" (device check tolerance {record['tolerance_steps']} steps: edgeres check BUNDLE)")
