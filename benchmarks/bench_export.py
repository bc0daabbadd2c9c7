"""Export time for ResNet-50 (int8 with N calibration images + float32), and what it produced.

    python benchmarks/bench_export.py --data ../shared/data/cats_and_dogs_filtered \
        [--run RUN_DIR] [--image-size 224] [--calibration-size 300] [--ranges relative-mse|mse|percentile|robust|minmax]
        [--out benchmarks/out/resnet50-224]

Without --run, a random-weight ResNet-50 run directory is made (conversion time does not depend
on the weights' values). Prints one JSON object with the stage timings and the bundle numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path


def make_random_run(run_dir: Path, data: Path, image_size: int) -> Path:
    from edgeres.config import TrainConfig, versions, write_json_atomic
    from edgeres.model import build_classifier

    run_dir.mkdir(parents=True, exist_ok=True)
    build_classifier("resnet50", 2, image_size).save(run_dir / "model.keras")
    config = TrainConfig(data=str(data), out=str(run_dir), arch="resnet50", image_size=image_size)
    write_json_atomic(run_dir / "config.json", {"train": config, "labels": ["cats", "dogs"],
                                                "data_root": str(data), "versions": versions()})
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=os.environ.get("EDGERES_DATA"))
    ap.add_argument("--run", type=Path)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--calibration-size", type=int, default=300)
    ap.add_argument("--ranges", choices=["relative-mse", "mse", "percentile", "robust", "minmax"], default="relative-mse")
    ap.add_argument("--verify-limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/resnet50-export"))
    ap.add_argument("--no-layer-report", action="store_true")
    args = ap.parse_args()

    from edgeres.export import QuantizationCheckFailed, export

    run = args.run or make_random_run(Path("benchmarks/out/random-resnet50-run"), args.data, args.image_size)
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        report = export(run, out=args.out, formats=("int8", "float32"), data=args.data,
                        calibration_size=args.calibration_size, verify_limit=args.verify_limit,
                        layer_report=not args.no_layer_report, max_drop=1.0, ranges=args.ranges)
        passed = True
    except QuantizationCheckFailed as e:  # a random-weight model may fail; timing is what we want
        report, passed = e.report, False
    total = time.perf_counter() - t0
    v = report.verification
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}",
        "run": str(run), "image_size": args.image_size, "calibration_images": args.calibration_size,
        "ranges": args.ranges,
        "seconds": report.seconds, "total_seconds": round(total, 1),
        "conversion_seconds_int8": report.seconds.get("convert_int8"),
        "bytes": {k: f["bytes"] for k, f in report.files.items()},
        "float32_accuracy": v.get("float32", {}).get("accuracy"), "int8_accuracy": v.get("int8", {}).get("accuracy"),
        "agreement": v.get("agreement"), "accuracy_drop_pp": v.get("accuracy_drop_pp"),
        "mean_abs_prob_diff": v.get("mean_abs_prob_diff"), "size_ratio": v.get("size_ratio"),
        "n": v.get("n"), "passed": passed,
        "worst_layers": [(r["layer"], round(r["rmse_over_scale"], 3)) for r in report.worst_layers[:5]],
    }, indent=2))


if __name__ == "__main__":
    main()
