"""How differently runtimes compute one int8 model: x86-64 XNNPACK, LiteRT's built-in kernels,
ARM64 XNNPACK (an arm64 Debian root under qemu-user), on byte-identical pixels.

    python benchmarks/cross_runtime.py run BUNDLE --data D --n 320 --root ROOT   # everything, then the table
    python benchmarks/cross_runtime.py pixels BUNDLE --data D --n 320 --out P.npz
    python benchmarks/cross_runtime.py outputs MODEL P.npz --kernels xnnpack --out O.npz
    python benchmarks/cross_runtime.py table O1.npz O2.npz ...

``pixels`` runs here only (the photos decoded and resized once, so every runtime gets the same
bytes; their sha256 goes with every output file and is checked). ``outputs`` needs only the
edgeres runtime, so it runs inside the arm64 root too (``run`` calls it there through
``benchmarks/arm64/run.sh --exec``, emulating a Cortex-A72 by default; ``--cpus`` for others). One
thread each. A "step" is one unit of the uint8 output (1/256 of a probability).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def pixels(bundle: Path, data: Path, n: int, out: Path) -> None:
    from edgeres.preprocess import load_pixels
    from edgeres.runtime import Classifier

    clf = Classifier(bundle, accelerator="cpu", threads=1)
    photos = sorted((data / "validation").glob("*/*.jpg"))
    photos = photos[:: max(1, len(photos) // n)][:n]
    px = np.stack([load_pixels(p, clf.input_size, clf.resize) for p in photos])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, pixels=px, paths=np.array([p.relative_to(data).as_posix() for p in photos]),
             sha256=hashlib.sha256(px.tobytes()).hexdigest())
    print(f"{len(photos)} photos -> {out} (pixels sha256 {hashlib.sha256(px.tobytes()).hexdigest()[:16]}, "
          f"resize {clf.resize.value})")


def _hwcaps() -> str:
    """AT_HWCAP/AT_HWCAP2 of this process (qemu-user reports the emulated CPU's): which CPU ran."""
    try:
        raw = Path("/proc/self/auxv").read_bytes()
    except OSError:
        return ""
    pairs = dict(struct.iter_unpack("QQ", raw[: len(raw) // 16 * 16]))
    return f"hwcap {pairs.get(16, 0):#x} hwcap2 {pairs.get(26, 0):#x}"


def outputs(model: Path, pixels_file: Path, kernels: str, out: Path, name: str | None) -> None:
    from edgeres.check import runtime_name
    from edgeres.runtime import Classifier

    with np.load(pixels_file) as f:
        px, sha = f["pixels"], str(f["sha256"])
    if hashlib.sha256(px.tobytes()).hexdigest() != sha:
        sys.exit(f"{pixels_file}: pixels do not match their recorded sha256")
    import importlib.metadata as md

    clf = Classifier(model, accelerator="cpu", threads=1, kernels=kernels)
    label = name or runtime_name(kernels)
    t, rows = time.perf_counter(), []
    for i, p in enumerate(px):
        rows.append(np.asarray(clf.invoke(clf.quantize_input(p))).reshape(-1))
        if (i + 1) % 16 == 0 or i + 1 == len(px):  # saved as it goes: emulated runs take long
            np.savez(out, outputs=np.stack(rows), name=label, sha256=sha, machine=platform.machine(),
                     litert=md.version("ai-edge-litert"), hwcaps=_hwcaps(), seconds=time.perf_counter() - t,
                     done=len(rows), total=len(px))
    print(f"{label}: {len(rows)} photos in {time.perf_counter() - t:.0f} s on {platform.machine()} "
          f"({_hwcaps()}) -> {out}")


def table(files: list[Path]) -> str:
    from edgeres.check import compare_outputs

    runs = []
    for f in files:
        with np.load(f) as d:
            runs.append({k: (d[k] if k == "outputs" else str(d[k])) for k in d.files})
    shas = {r["sha256"] for r in runs}
    if len(shas) != 1:
        sys.exit(f"outputs were computed on different pixels ({len(shas)} pixel hashes)")
    n = min(len(r["outputs"]) for r in runs)  # a run still going: its first photos
    for r in runs:
        r.setdefault("done", len(r["outputs"]))
        r.setdefault("total", len(r["outputs"]))
        r["outputs"] = r["outputs"][:n]
    lines = [f"| runtime A vs runtime B | photos whose scores differ | max difference (steps of 1/256) "
             f"| mean (steps, per photo) | top-1 flips |", "| --- | ---: | ---: | ---: | ---: |"]
    for a, b in itertools.combinations(runs, 2):
        c = compare_outputs(a["outputs"], b["outputs"])
        lines.append(f"| {a['name']} vs {b['name']} | {c['differ']} / {n} | {c['max_steps']} | "
                     f"{c['mean_steps']:.2f} | {c['flips']} |")
    lines.append("")
    for r in runs:
        lines.append(f"- {r['name']}: {r['machine']}, ai-edge-litert {r['litert']}, {r['hwcaps'] or 'no auxv'}, "
                     f"{float(r['seconds']):.0f} s for {r['done']} of {r['total']} photos (one thread)")
    lines.append(f"- pixels sha256 {next(iter(shas))}")
    return "\n".join(lines)


def run(bundle: Path, data: Path, n: int, root: Path, out: Path, cpus: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    px = out / "pixels.npz"
    pixels(bundle, data, n, px)
    model = bundle / "model_int8.tflite"
    runs = []
    # The arm64 runs (one per emulated CPU) in the background while this machine runs its own two.
    work = root / "opt" / "edgeres-bench"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pixels.npz").write_bytes(px.read_bytes())
    (work / "model_int8.tflite").write_bytes(model.read_bytes())
    env = {**os.environ, "EDGERES_ARM64_ROOT": str(root)}
    subprocess.run(["bash", str(HERE / "arm64" / "run.sh"), "--prepare"], env=env, check=True)
    arm = []
    for cpu in cpus:
        name = f"xnnpack/aarch64 ({cpu})"
        tag = cpu.replace("-", "_")
        arm.append((subprocess.Popen(
            ["bash", str(HERE / "arm64" / "run.sh"), "--exec", "python", "/opt/edgeres-src/benchmarks/cross_runtime.py",
             "outputs", "/opt/edgeres-bench/model_int8.tflite", "/opt/edgeres-bench/pixels.npz", "--kernels", "xnnpack",
             "--name", name, "--out", f"/opt/edgeres-bench/aarch64_{tag}.npz"], env={**env, "QEMU_CPU": cpu}), work / f"aarch64_{tag}.npz"))
    for kernels in ("xnnpack", "builtin"):
        outputs(model, px, kernels, out / f"x86_64_{kernels}.npz", None)
        runs.append(out / f"x86_64_{kernels}.npz")
    for proc, f in arm:
        if proc.wait() != 0:
            sys.exit(f"the arm64 run for {f.name} failed (rc {proc.returncode})")
        (out / f.name).write_bytes(f.read_bytes())
        runs.append(out / f.name)
    print(table(runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pixels")
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--n", type=int, default=320)
    p.add_argument("--out", type=Path, required=True)
    o = sub.add_parser("outputs")
    o.add_argument("model", type=Path)
    o.add_argument("pixels", type=Path)
    o.add_argument("--kernels", default="xnnpack")
    o.add_argument("--name")
    o.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("files", type=Path, nargs="+")
    r = sub.add_parser("run")
    r.add_argument("bundle", type=Path)
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--n", type=int, default=320)
    r.add_argument("--root", type=Path, default=Path(os.environ.get("EDGERES_ARM64_ROOT",
                                                                    Path.home() / ".cache/edgeres/arm64-root")))
    r.add_argument("--out", type=Path, default=HERE / "out" / "cross_runtime")
    # Not qemu 7.2's `max`: XNNPACK computes garbage there (benchmarks/cross_runtime.md).
    r.add_argument("--cpus", nargs="+", default=["cortex-a72"], help="qemu CPU models for the arm64 runs")
    args = ap.parse_args()
    if args.cmd == "pixels":
        pixels(args.bundle, args.data, args.n, args.out)
    elif args.cmd == "outputs":
        outputs(args.model, args.pixels, args.kernels, args.out, args.name)
    elif args.cmd == "table":
        print(table(args.files))
    else:
        run(args.bundle, args.data, args.n, args.root, args.out, args.cpus)


if __name__ == "__main__":
    main()
