"""How the int8 activation-range rule changes int8 faithfulness, on trained runs.

    python benchmarks/ranges_study.py RUN [RUN ...] --data ../shared/data/cats_and_dogs_filtered \
        [--calibration-size 300] [--seed 0] [--limit N] [--rules mse,robust,...] [--write]
    python benchmarks/ranges_study.py --table-only --write     # rebuild the table from saved results

For each run, every tensor's per-image min/max and value histogram over the calibration images
are measured once (float model through LiteRT, every tensor kept, as `edgeres export` does);
then each rule's ranges are quantized (same graph, same weights, only the ranges differ) and
compared with float32 on the validation split, byte-identical pixels. The float model's logits
on those photos give the held-out share of logit values beyond each rule's logits range.

Results are saved per run under benchmarks/out/ranges_study/ and, with --write, the table of
all saved runs replaces the marked section of benchmarks/reference.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAVED = HERE / "out" / "ranges_study"
REFERENCE = HERE / "reference.md"
START, END = "<!-- ranges-table:start -->", "<!-- ranges-table:end -->"

# Rows of the study: name -> (rule, keep the logits' full range?, extra arguments).
# The rules edgeres offers (`--ranges`) and variants that isolate one choice.
RULES = {
    "relative-mse": ("relative", True, {}),
    "mse": ("mse", True, {}),
    "percentile": ("percentile", True, {}),
    "robust": ("robust", False, {}),
    "robust + full-range logits": ("robust", True, {}),
    "robust groups of 20 + full-range logits": ("robust", True, {"group": 20}),
    "minmax": ("minmax", False, {}),
    "measured global min/max": ("measured", False, {}),
    "percentile 99.999": ("percentile", True, {"percentile": 99.999}),
    "mse + logits by the rule": ("mse", False, {}),
}
DEFAULT_STUDY = "relative-mse,mse,percentile,robust,robust + full-range logits"


def study(run: Path, data: Path, calibration_size: int, seed: int, limit: int | None, rules: list[str]) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from edgeres import calibrate as calib
    from edgeres import data as data_lib
    from edgeres import export as ex
    from edgeres.model import load_model
    from edgeres.preprocess import load_pixels

    config = json.loads((run / "config.json").read_text())
    size = config["train"]["image_size"]
    try:
        from edgeres.config import run_resize

        resize = run_resize(config["train"])
    except ImportError:  # before edgeres recorded the resize
        resize = None
    model = load_model(run / "model.keras")
    dataset = data_lib.scan(data, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = calib.draw(dataset, calibration_size, seed=seed)
    if resize is not None and "resize" in {f.name for f in dataclasses.fields(cal)}:
        cal = dataclasses.replace(cal, resize=resize.value)
    pixels = (lambda p: load_pixels(p, size, resize)) if resize is not None else (lambda p: load_pixels(p, size))
    images = [x[0] for x in ex.representative_dataset(cal, size)()]
    samples = dataset.validation.samples
    if limit:
        samples = samples[:: max(1, len(samples) // limit)][:limit]
    val = [pixels(s.path) for s in samples]
    labels = np.array([s.label for s in samples])

    with ex._quiet():
        skeleton = ex._converter(model, ex.Format.FLOAT32, None, size).convert()  # the float32 model
    tensors = ex.activation_tensors(skeleton)
    names = ex._tensor_names(skeleton)
    logits = ex.softmax_inputs(skeleton, tensors)
    cache = SAVED / f"{run.name}-f32stats-{len(images)}-{seed}.npz"
    t = time.perf_counter()
    if cache.is_file():
        saved = np.load(cache)
        stats = ex.ActivationStats(saved["lo"], saved["hi"], saved["histograms"], saved.get("relative"))
        stats_s = float(saved["seconds"]) if "seconds" in saved else float("nan")
    else:
        stats = ex.activation_stats(skeleton, tensors, iter(images))
        stats_s = time.perf_counter() - t
        np.savez(cache, lo=stats.lo, hi=stats.hi, histograms=stats.histograms, relative=stats.relative, seconds=stats_s)
    print(f"{run.name}: stats of {len(tensors)} tensors over {len(images)} images: {stats_s:.1f} s", flush=True)

    # Float reference on the validation photos, with the logits kept (held-out clipping share).
    ref_cache = SAVED / f"{run.name}-float-{len(samples)}.npz"
    if ref_cache.is_file():
        saved = np.load(ref_cache)
        ref, ref_logits = saved["probs"], saved["logits"]
    else:
        interp = Interpreter(model_content=skeleton, num_threads=os.cpu_count(), experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        ref, ref_logits = [], []
        for x in val:
            interp.set_tensor(inp["index"], x[None].astype(np.float32))
            interp.invoke()
            ref.append(interp.get_tensor(out["index"])[0])
            ref_logits.append(np.concatenate([interp.get_tensor(tensors[j]).ravel() for j in logits]))
        ref, ref_logits = np.array(ref), np.array(ref_logits)
        np.savez(ref_cache, probs=ref, logits=ref_logits)
    f_acc = float((ref.argmax(1) == labels).mean())

    def run_int8(blob):
        interp = Interpreter(model_content=blob, num_threads=os.cpu_count())
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        scale, zero = out["quantization"]
        probs = []
        for x in val:
            interp.set_tensor(inp["index"], x[None])
            interp.invoke()
            probs.append((interp.get_tensor(out["index"])[0].astype(np.float32) - zero) * scale)
        return np.array(probs)

    rows = []
    for name in rules:
        rule, keep_logits, kwargs = RULES[name]
        t = time.perf_counter()
        if rule == "minmax":
            lo, hi = ex.choose_ranges("minmax", stats)
        elif rule == "measured":
            lo, hi = stats.lo.min(0).astype(np.float64), stats.hi.max(0).astype(np.float64)
        elif rule == "robust":
            lo, hi = ex.robust_ranges(stats.lo, stats.hi, **kwargs)
        elif rule == "relative" or kwargs:
            pick = ex.percentile_range if rule == "percentile" else ex.mse_range
            hist = stats.relative if rule == "relative" else stats.histograms
            lo, hi = map(np.array, zip(*(pick(hist[j], float(stats.lo[:, j].min()),
                                               float(stats.hi[:, j].max()), **kwargs) for j in range(len(tensors)))))
        else:
            lo, hi = ex.choose_ranges(rule, stats)
        lo, hi = np.array(lo, np.float64), np.array(hi, np.float64)
        if keep_logits:  # as edgeres does: the observed range and LOGITS_MARGIN of it each side
            for j in logits:
                a, b = stats.lo[:, j].min(), stats.hi[:, j].max()
                lo[j], hi[j] = a - ex.LOGITS_MARGIN * (b - a), b + ex.LOGITS_MARGIN * (b - a)
        pixels_at = tensors.index(ex._input_tensor(skeleton))
        lo[pixels_at], hi[pixels_at] = 0.0, 255.0
        ranges_s = time.perf_counter() - t
        with ex._quiet():
            blob = ex.quantize(skeleton, {names[t]: (lo[j], hi[j]) for j, t in enumerate(tensors)})
        assert not ex.float_tensors(blob)
        p = run_int8(blob)
        # Beyond half a step past either end, a logit value is clipped (as _clipped_fraction counts).
        per = ref_logits.shape[1] // max(1, len(logits))
        lo_b = np.repeat([lo[j] - (hi[j] - lo[j]) / 510 for j in logits], per)
        hi_b = np.repeat([hi[j] + (hi[j] - lo[j]) / 510 for j in logits], per)
        dp = np.abs(p - ref)
        row = {
            "rule": name, "int8_accuracy": float((p.argmax(1) == labels).mean()),
            "agreement": float((p.argmax(1) == ref.argmax(1)).mean()),
            "mean_abs_prob_diff": float(dp.mean()), "p99_abs_prob_diff": float(np.percentile(dp.max(1), 99)),
            "logits_clipped": float(((ref_logits < lo_b) | (ref_logits > hi_b)).mean()),
            "logits_range": [[float(lo[j]), float(hi[j])] for j in logits],
            "logits_observed_on_validation": [float(ref_logits.min()), float(ref_logits.max())],
            "ranges_seconds": round(ranges_s, 2),
        }
        rows.append(row)
        print(f"  {name:<34} int8 {100 * row['int8_accuracy']:.1f}%  agreement {100 * row['agreement']:.1f}%  "
              f"|dp| mean {row['mean_abs_prob_diff']:.4f} p99 {row['p99_abs_prob_diff']:.4f}  "
              f"logits clipped {100 * row['logits_clipped']:.2f}%  (ranges {ranges_s:.1f} s)", flush=True)
    return {"run": str(run), "name": run.name, "arch": config["train"]["arch"], "image_size": size,
            "epochs": config["train"].get("epochs"), "resize": None if resize is None else resize.value,
            "calibration_size": len(images), "seed": seed, "validation": len(samples), "float32_accuracy": f_acc,
            "stats_seconds": round(stats_s, 1), "tensors": len(tensors), "rows": rows, "revision": _revision(),
            "measured": time.strftime("%Y-%m-%d %H:%M")}


def _revision() -> str:
    try:
        return subprocess.run(["git", "log", "-1", "--format=%h"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def table(results: list[dict]) -> str:
    lines = ["| model | rule | float32 acc | int8 acc | drop (pp) | agreement | mean \\|dp\\| | p99 \\|dp\\| | logits clipped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        model = f"{r['name']} ({r['arch']}, {r['image_size']} px, {r['validation']} photos, rev {r['revision']})"
        for row in r["rows"]:
            bold = "**" if row["rule"] == "relative-mse" else ""
            lines.append(
                f"| {model} | {bold}{row['rule']}{bold} | {100 * r['float32_accuracy']:.1f}% | "
                f"{100 * row['int8_accuracy']:.1f}% | {100 * (r['float32_accuracy'] - row['int8_accuracy']):+.1f} | "
                f"{bold}{100 * row['agreement']:.1f}%{bold} | {row['mean_abs_prob_diff']:.4f} | "
                f"{row['p99_abs_prob_diff']:.3f} | {100 * row['logits_clipped']:.1f}% |")
            model = ""
    return "\n".join(lines)


def write_table(text: str, path: Path = REFERENCE) -> None:
    doc = path.read_text() if path.is_file() else ""
    if START not in doc:
        raise SystemExit(f"{path} has no {START} ... {END} section to replace.")
    head, rest = doc.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="*")
    ap.add_argument("--data", type=Path, default=os.environ.get("EDGERES_DATA"))
    ap.add_argument("--calibration-size", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="validation photos (default: all)")
    ap.add_argument("--rules", default=DEFAULT_STUDY, help=f"comma-separated, of: {', '.join(RULES)}")
    ap.add_argument("--write", action="store_true", help="replace the table in benchmarks/reference.md")
    ap.add_argument("--table-only", action="store_true", help="no runs: rebuild the table from saved results")
    ap.add_argument("--sizes", default=None,
                    help="calibration-size study instead: comma-separated sizes (e.g. 32,100,300,1000) under "
                         "the first of --rules; table into benchmarks/calibration_size.md with --write")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise SystemExit(f"--rules: unknown {unknown}; choose from {list(RULES)}")
    SAVED.mkdir(parents=True, exist_ok=True)
    if args.sizes:
        sizes = [int(n) for n in args.sizes.split(",")]
        for run in args.runs:
            for n in sizes:
                result = study(run, args.data, n, args.seed, args.limit, rules[:1])
                (SAVED / "sizes").mkdir(exist_ok=True)
                (SAVED / "sizes" / f"{run.name}-{rules[0]}-{n}.json").write_text(json.dumps(result, indent=1) + "\n")
        results = [json.loads(p.read_text()) for p in sorted((SAVED / "sizes").glob("*.json"))]
        results.sort(key=lambda r: (r["name"], r["rows"][0]["rule"], r["calibration_size"]))
        text = size_table(results)
        print(text)
        if args.write:
            write_table(text, HERE / "calibration_size.md")
        return
    if not args.table_only:
        for run in args.runs:
            result = study(run, args.data, args.calibration_size, args.seed, args.limit, rules)
            (SAVED / f"{run.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    results = [json.loads(p.read_text()) for p in sorted(SAVED.glob("*.json"))]
    results = [r for r in results if r.get("validation", 0) >= 200]  # not quick smoke runs
    order = {"resnet50-160-scratch": 0, "main-job": 1, "resnet50v2": 2}
    results.sort(key=lambda r: (order.get(r["name"], 9), r["name"]))
    text = table(results)
    print(text)
    if args.write:
        write_table(text)


def size_table(results: list[dict]) -> str:
    lines = ["| model | rule | calibration images | stats time (s) | int8 acc | drop (pp) | agreement | mean \\|dp\\| "
             "| p99 \\|dp\\| | logits clipped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        row = r["rows"][0]
        lines.append(f"| {r['name']} ({r['validation']} photos, rev {r['revision']}) | {row['rule']} | "
                     f"{r['calibration_size']} | {r['stats_seconds']} | {100 * row['int8_accuracy']:.1f}% | "
                     f"{100 * (r['float32_accuracy'] - row['int8_accuracy']):+.1f} | {100 * row['agreement']:.1f}% | "
                     f"{row['mean_abs_prob_diff']:.4f} | {row['p99_abs_prob_diff']:.3f} | "
                     f"{100 * row['logits_clipped']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
