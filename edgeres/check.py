"""``edgeres check``: does this machine compute the bundle's int8 model as the runtimes recorded at
export did? Never imports TensorFlow.

Runtimes do not compute an int8 model identically: LiteRT's XNNPACK kernels on x86-64 and on
ARM64, its built-in kernels, and XNNPACK compiled to WebAssembly round differently, and a
photo near the decision boundary can get the other label (``benchmarks/cross_runtime.md``). So
an export records, for a set of probe photos (``runtime_probes.bin``, the boundary cases), the
raw uint8 outputs of every runtime it ran (``edgeres.json["runtimes"]``). The check runs those
probes here and compares with the nearest record:

    edgeres check export/cats-dogs
    check passed: xnnpack/aarch64 on 48 probes matches recorded xnnpack/x86_64 within 6 steps ...

A "step" is one unit of the uint8 output (1/256 of a probability for edgeres models). The check
fails when the largest difference is beyond the tolerance (the bundle's ``tolerance_steps``, or
``--tolerance``), or when a probe whose recorded top score is at or above the bundle's
*uncertain* threshold changes its top-1 class (a flip inside the uncertain band is expected).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeres.accelerators import Accelerator, Backend, Kernels
from edgeres.bundle import BUNDLE_JSON, ModelError

RUNTIMES_KEY = "runtimes"
# Probes whose outputs may differ by this many uint8 steps from a recorded runtime. Measured on the
# reference model: x86-64 XNNPACK vs its built-in kernels differ by up to 10 steps, vs ARM64
# XNNPACK by up to 6 (benchmarks/cross_runtime.md); a wrong kernel moves outputs by far more.
DEFAULT_TOLERANCE_STEPS = 12


class CheckError(ModelError):
    """A bundle that cannot be checked (no runtime records, a damaged probe file); one line."""


def runtime_name(kernels: Kernels | str = Kernels.XNNPACK, arch: str | None = None) -> str:
    """``"<kernels>/<arch>"``, e.g. ``"xnnpack/x86_64"``: how records name a runtime."""
    return f"{Kernels(kernels).value}/{(arch or platform.machine()).lower()}"


def compare_outputs(a: np.ndarray, b: np.ndarray) -> dict:
    """Two runtimes' uint8 outputs ``[N, classes]`` on the same probes: how many probes differ at
    all, the largest and the mean (over probes) of each probe's largest difference in steps, and
    how many change their top-1 class."""
    a, b = np.asarray(a, np.int32), np.asarray(b, np.int32)
    per_probe = np.abs(a - b).max(axis=1)
    return {"differ": int(np.count_nonzero(per_probe)), "max_steps": int(per_probe.max(initial=0)),
            "mean_steps": round(float(per_probe.mean()) if len(per_probe) else 0.0, 3),
            "flips": int(np.count_nonzero(a.argmax(1) != b.argmax(1)))}


@dataclass(frozen=True)
class Records:
    """What a bundle recorded: the probes and each runtime's outputs on them."""

    bundle: Path
    model: str  # the .tflite the outputs belong to
    probes: np.ndarray  # uint8 [N, H, W, 3]
    sources: list[str]
    outputs: dict[str, np.ndarray]  # runtime name -> uint8 [N, classes]
    tolerance_steps: int
    threshold: float | None  # edgeres.json["uncertain"]["threshold"], None when absent or off


def load_records(bundle: str | Path) -> Records:
    """A bundle's runtime records; CheckError (one line, with the fix) when it has none."""
    bundle = Path(bundle)
    meta_path = bundle / BUNDLE_JSON if bundle.is_dir() else bundle.parent / BUNDLE_JSON
    bundle = meta_path.parent
    if not meta_path.is_file():
        raise CheckError(f"{bundle}: not an export bundle (no {BUNDLE_JSON}); edgeres check needs the bundle "
                         f"directory that `edgeres export RUN --int8` wrote.")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckError(f"{meta_path}: unreadable ({e}). Copy the bundle again or re-export it.") from e
    rec = meta.get(RUNTIMES_KEY)
    if not rec:
        raise CheckError(f"{bundle}: no runtime records to check against ({BUNDLE_JSON} has no "
                         f"\"{RUNTIMES_KEY}\": exported by an older edgeres or without --int8). Re-export it "
                         f"with `edgeres export RUN --int8` to record them.")
    probes_file = bundle / rec["probes"]["file"]
    shape = tuple(rec["probes"]["shape"])
    try:
        raw = np.fromfile(probes_file, np.uint8)
    except OSError as e:
        raise CheckError(f"{probes_file}: cannot read the runtime probes ({e.strerror or e}). "
                         f"Copy the whole bundle directory.") from e
    if raw.size != int(np.prod(shape)):
        raise CheckError(f"{probes_file}: {raw.size} bytes, {BUNDLE_JSON} says {list(shape)} "
                         f"({int(np.prod(shape))} bytes). A cut copy? Copy the bundle again.")
    uncertain = meta.get("uncertain") or {}
    threshold = uncertain.get("threshold") if uncertain.get("source") != "off" else None
    return Records(bundle, rec["model"], raw.reshape(shape), list(rec["probes"].get("sources", [])),
                   {name: np.asarray(v, np.uint8) for name, v in rec["outputs"].items()},
                   int(rec.get("tolerance_steps", DEFAULT_TOLERANCE_STEPS)),
                   float(threshold) if threshold is not None else None)


@dataclass(frozen=True)
class RuntimeCheck:
    """This machine's outputs on a bundle's probes against the recorded runtimes'."""

    bundle: str
    runtime: str  # what ran here: "xnnpack/aarch64", or an accelerator's name
    backend: str  # Classifier.backend
    probes: int
    matches: str  # the nearest recorded runtime
    differ: int  # probes whose outputs differ from it at all
    max_steps: int
    mean_steps: float
    tolerance_steps: int
    threshold: float | None  # the uncertain band's threshold, when the bundle has one
    flips: list[dict]  # top-1 changes against `matches`: probe, source, labels, recorded score, expected
    passed: bool
    against: dict[str, dict] = field(default_factory=dict)  # every recorded runtime: compare_outputs()
    notes: list[str] = field(default_factory=list)  # accelerator fallbacks and the like

    @property
    def unexpected_flips(self) -> list[dict]:
        return [f for f in self.flips if not f["expected"]]

    def line(self) -> str:
        """The verdict in one line."""
        if self.max_steps == 0:
            how = f"matches recorded {self.matches} exactly (0 steps, tolerance {self.tolerance_steps})"
        else:
            how = (f"nearest recorded runtime {self.matches}: {self.differ} differ, max {self.max_steps} steps "
                   f"{'<=' if self.max_steps <= self.tolerance_steps else '>'} tolerance {self.tolerance_steps}, "
                   f"mean {self.mean_steps:.2f}")
        flips = f"{len(self.flips)} top-1 flip{'s' if len(self.flips) != 1 else ''}"
        if self.flips:
            expected = len(self.flips) - len(self.unexpected_flips)
            if self.threshold is None:
                flips += " (no uncertain band recorded)"
            else:
                flips += (f" ({expected} inside the uncertain band, expected; {len(self.unexpected_flips)} "
                          f"at score >= {self.threshold:g})")
        return (f"check {'passed' if self.passed else 'FAILED'}: {self.runtime} on {self.probes} probes, "
                f"{how}, {flips}")

    def to_dict(self) -> dict:
        return {**asdict(self), "line": self.line()}


def check(
    bundle: str | Path,
    *,
    kernels: Kernels | str = Kernels.XNNPACK,
    accelerator: Accelerator | str = Accelerator.CPU,
    delegate: str | Path | None = None,
    backend: Backend | None = None,
    threads: int | None = None,
    tolerance: int | None = None,
) -> RuntimeCheck:
    """Run ``bundle``'s runtime probes on this machine (``kernels`` on the CPU, or the
    accelerator / delegate / backend asked for) and compare with every recorded runtime.

    ``tolerance``: largest allowed difference in uint8 steps (default: the bundle's
    ``tolerance_steps``). Raises CheckError when the bundle recorded nothing."""
    from edgeres.runtime import Classifier

    records = load_records(bundle)
    notes: list[str] = []
    clf = Classifier(records.bundle / records.model, threads=threads, accelerator=accelerator, delegate=delegate,
                     backend=backend, kernels=kernels, log=notes.append)
    if clf.input_size != tuple(records.probes.shape[1:3]):
        raise CheckError(f"{records.bundle}: runtime probes are {list(records.probes.shape[1:3])} px, "
                         f"{records.model} takes {list(clf.input_size)}. Re-export the bundle.")
    here = np.stack([np.asarray(clf.invoke(clf.quantize_input(p))).reshape(-1) for p in records.probes])
    if here.dtype != np.uint8:
        raise CheckError(f"{clf.path}: outputs {here.dtype}, not the int8 model's uint8 that was recorded.")
    against = {name: compare_outputs(here, out) for name, out in records.outputs.items()}
    # Nearest: the smallest largest difference, then the fewest probes that differ.
    matches = min(against, key=lambda n: (against[n]["max_steps"], against[n]["differ"], n))
    recorded = records.outputs[matches]
    tolerance = records.tolerance_steps if tolerance is None else int(tolerance)
    flips = []
    for i in np.flatnonzero(here.argmax(1) != recorded.argmax(1)):
        score = float(clf.dequantize_output(recorded[i]).max())
        flips.append({"probe": int(i), "source": records.sources[i] if i < len(records.sources) else None,
                      "recorded": clf.labels[int(recorded[i].argmax())], "here": clf.labels[int(here[i].argmax())],
                      "recorded_score": round(score, 6),
                      "expected": records.threshold is not None and score < records.threshold})
    c = against[matches]
    accelerated = clf.self_check is not None and clf.self_check.passed
    name = clf.backend if accelerated else runtime_name(clf.kernels)
    passed = c["max_steps"] <= tolerance and (records.threshold is None or all(f["expected"] for f in flips))
    return RuntimeCheck(str(records.bundle), name, clf.backend, len(records.probes), matches, c["differ"],
                        c["max_steps"], c["mean_steps"], tolerance, records.threshold, flips, passed, against, notes)
