"""Reproduce the int8-on-GPU failure (issue 16): LiteRT's GPU accelerator against the CPU.

Two steps, because the GPU machine has no TensorFlow:

    # 1. here (TensorFlow): export the reference model with today's defaults and decode N
    #    validation photos into edgeres's own pixels (byte-identical to what predict feeds)
    python benchmarks/gpu_int8_repro.py prepare --run ../shared/models/resnet50-160-scratch \\
        --data ../shared/data/cats_and_dogs_filtered --n 300 --out /tmp/gpu-repro

    # 2. on the GPU machine (ai-edge-litert + numpy only)
    python benchmarks/gpu_int8_repro.py run /tmp/gpu-repro [--json]

``run`` measures, for each model of the bundle, on the same pixels:
  * ``raw``: LiteRT's CompiledModel on the GPU accelerator, NO self-check (what LiteRT itself
    returns: the upstream bug report) against the CPU interpreter (XNNPACK);
  * ``edgeres``: ``Classifier(model, accelerator="gpu")``, i.e. what a user gets (the self-check
    and, for a bundle, its float16 model), against the CPU.
Columns: top-1 accuracy, top-1 agreement with the CPU, mean |dp| (mean over photos and classes of
|p_gpu - p_cpu|), and the backend edgeres reported. Without a usable GPU it says "GPU unavailable"
with LiteRT's reason, prints the CPU numbers, and exits 0. Exit 3 when the edgeres path agrees
with the CPU on fewer than 99.5% of the photos (the issue's "done when").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PIXELS = "pixels.npz"
AGREEMENT_TARGET = 0.995


def prepare(run: Path, data: Path, n: int, out: Path, calibration_size: int, verify_limit: int | None) -> None:
    from edgeres.data import scan
    from edgeres.export import export
    from edgeres.preprocess import load_pixels

    bundle = out / "bundle"
    if not (bundle / "edgeres.json").is_file():
        t = time.perf_counter()
        export(run, out=bundle, formats=("int8", "float32", "float16"), data=data, calibration_size=calibration_size,
               max_drop=100.0, verify_limit=verify_limit, layer_report=False, log=lambda m: print(m, file=sys.stderr))
        print(f"exported {bundle} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    meta = json.loads((bundle / "edgeres.json").read_text())
    size, labels = meta["input"]["size"][0], meta["labels"]
    dataset = scan(data, progress=False)
    val = [(s.path, s.label) for s in dataset.validation.samples]
    # Evenly spread over the (class-sorted) split, so every class is in.
    pick = [val[i] for i in np.linspace(0, len(val) - 1, min(n, len(val))).round().astype(int)]
    pixels = np.stack([load_pixels(p, size) for p, _ in pick])
    np.savez_compressed(out / PIXELS, pixels=pixels, labels=np.array([y for _, y in pick]),
                        classes=np.array(labels), paths=np.array([str(p) for p, _ in pick]))
    print(f"wrote {out / PIXELS}: {len(pick)} photos at {size}x{size}", file=sys.stderr)


def _probs(clf, rows) -> np.ndarray:
    return np.stack([clf._probabilities(r) for r in rows])  # noqa: SLF001 -- dequantize, no sum check


def _stats(probs: np.ndarray, cpu: np.ndarray, labels: np.ndarray) -> dict:
    return {"top1_accuracy": round(float(np.mean(probs.argmax(1) == labels)), 4),
            "agreement_with_cpu": round(float(np.mean(probs.argmax(1) == cpu.argmax(1))), 4),
            "mean_abs_dp": round(float(np.mean(np.abs(probs - cpu))), 5)}


def run(folder: Path) -> dict:
    from edgeres.runtime import Classifier, CompiledModelBackend, resolve_model

    import ai_edge_litert

    data = np.load(folder / PIXELS)
    pixels, labels = data["pixels"], data["labels"]
    bundle = folder / "bundle"
    result = {"photos": len(pixels), "litert": getattr(ai_edge_litert, "__version__", "?"), "models": []}
    gpu_reason = None
    for variant in ("int8", "float16"):
        try:
            path = resolve_model(bundle, variant)
        except Exception as e:  # noqa: BLE001 -- a bundle carried without this model
            print(f"{variant}: {e}", file=sys.stderr)
            continue
        cpu = Classifier(path, accelerator="cpu")
        tensors = [cpu.quantize_input(p) for p in pixels]
        cpu_p = _probs(cpu, [cpu.invoke(t) for t in tensors])
        row = {"model": path.name, "cpu": _stats(cpu_p, cpu_p, labels)}
        try:  # what LiteRT returns: no self-check
            gpu = CompiledModelBackend(path, "gpu", threads=cpu.threads, outputs=len(cpu.labels),
                                       output_dtype=cpu.output_dtype)
            raw = _probs(cpu, [gpu.run(t) for t in tensors])
            row["raw_gpu"] = {"backend": gpu.name, **_stats(raw, cpu_p, labels)}
        except RuntimeError as e:
            gpu_reason = str(e)
            row["raw_gpu"] = {"unavailable": gpu_reason}
        messages: list[str] = []
        user = Classifier(path, accelerator="gpu", log=messages.append)  # what a user gets
        user_p = np.stack([user.predict_pixels(p).probabilities for p in pixels])
        row["edgeres_gpu"] = {"backend": user.backend, "model": user.path.name, "messages": messages,
                              "self_check": user.self_check.to_dict() if user.self_check else None,
                              **_stats(user_p, cpu_p, labels)}
        result["models"].append(row)
    if bundle.is_dir():  # the bundle itself, as `edgeres evaluate BUNDLE --accelerator gpu` loads it
        messages = []
        user = Classifier(bundle, accelerator="gpu", log=messages.append)
        cpu = Classifier(bundle, accelerator="cpu")
        cpu_p = np.stack([cpu.predict_pixels(p).probabilities for p in pixels])
        user_p = np.stack([user.predict_pixels(p).probabilities for p in pixels])
        result["bundle_gpu"] = {"backend": user.backend, "model": user.path.name, "messages": messages,
                                "cpu_model": cpu.path.name, **_stats(user_p, cpu_p, labels)}
    result["gpu"] = "unavailable" if gpu_reason else "available"
    if gpu_reason:
        result["gpu_reason"] = gpu_reason
    return result


def print_table(r: dict) -> None:
    if r["gpu"] == "unavailable":
        print(f"GPU unavailable: {r['gpu_reason']}. CPU numbers only; run this on a GPU machine.")
    print(f"{r['photos']} photos, ai-edge-litert {r['litert']}")
    print(f"{'model':<24} {'path':<12} {'backend':<36} {'top-1':>7} {'agree':>7} {'mean|dp|':>9}")
    for m in r["models"]:
        for key in ("cpu", "raw_gpu", "edgeres_gpu"):
            s = m[key]
            if "unavailable" in s:
                continue
            backend = s.get("backend", "CPU (XNNPACK)")
            print(f"{m['model']:<24} {key:<12} {backend[:36]:<36} {s['top1_accuracy']:>7.1%} "
                  f"{s['agreement_with_cpu']:>7.1%} {s['mean_abs_dp']:>9.4f}")
    if "bundle_gpu" in r:
        b = r["bundle_gpu"]
        print(f"bundle --accelerator gpu: {b['model']} on {b['backend']}: agreement with the CPU's "
              f"{b['cpu_model']} {b['agreement_with_cpu']:.1%}, top-1 {b['top1_accuracy']:.1%}, mean |dp| {b['mean_abs_dp']:.4f}")
        for line in b["messages"]:
            print(f"  {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="export the bundle and decode the photos (needs TensorFlow)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calibration-size", type=int, default=300)
    p.add_argument("--verify-limit", type=int, default=None)
    r = sub.add_parser("run", help="measure GPU vs CPU (ai-edge-litert + numpy)")
    r.add_argument("folder", type=Path)
    r.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.cmd == "prepare":
        args.out.mkdir(parents=True, exist_ok=True)
        prepare(args.run, args.data, args.n, args.out, args.calibration_size, args.verify_limit)
        return 0
    result = run(args.folder)
    print(json.dumps(result)) if args.json else print_table(result)
    if result["gpu"] == "available" and result.get("bundle_gpu", {}).get("agreement_with_cpu", 1.0) < AGREEMENT_TARGET:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
