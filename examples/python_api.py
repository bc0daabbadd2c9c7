#!/usr/bin/env python3
"""Train -> export int8 -> evaluate through the edgeres Python API, in about a minute on a CPU.

    python examples/python_api.py [--data DIR] [--out DIR]

DIR holds ``train/<class>/`` and ``validation/<class>/`` photos (default: ``$EDGERES_DATA``).
The configuration is deliberately tiny (resnet-tiny, 64 px, 40 photos per class, 2 epochs), so
the numbers show the plumbing, not a good model: use ``edgeres train`` with the defaults for that.
The CLI commands are thin wrappers over exactly these calls.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("EDGERES_DATA"),
                        help="dataset folder (default: $EDGERES_DATA)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the run and the bundle go (default: a new temporary folder)")
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("pass --data DIR or set EDGERES_DATA")
    out = args.out or Path(tempfile.mkdtemp(prefix="edgeres-python-api-"))

    # Imported here so that --help answers without loading TensorFlow.
    from edgeres.config import TrainConfig
    from edgeres.evaluate import evaluate
    from edgeres.export import export
    from edgeres.train import train

    result = train(TrainConfig(data=args.data, out=str(out / "run"), arch="resnet-tiny", image_size=64,
                               batch_size=16, epochs=2, max_per_class=40), verbose=0)
    print(f"trained {result.epochs_done} epochs on {result.device}: "
          f"best validation accuracy {result.best_val_accuracy:.3f} ({result.run_dir})")

    # Two epochs leave the model close to chance, where int8 rounding flips near-50/50 photos
    # and the float-vs-int8 accuracy gap is noise. max_drop=100 keeps export from failing the
    # bundle on that noise; a real model keeps the default 1 point.
    report = export(result.run_dir, out=out / "bundle", formats=("int8", "float32"),
                    calibration_size=32, verify_limit=60, max_drop=100.0, layer_report=False,
                    log=lambda message: None)
    print(report.summary())

    # Evaluate on held-out photos, as an app's owner would: float32 first, the reference.
    evaluation = evaluate([report.bundle / "model_float32.tflite", report.bundle / "model_int8.tflite"],
                          args.data, split="validation", limit=60, progress=False)
    for m in evaluation.models:
        print(f"{Path(m.path).name}: accuracy {m.accuracy:.3f} on {m.n} images")
    agreement = next(iter(evaluation.agreement.values()))
    print(f"int8 agrees with float32 on {agreement:.3f} of the images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
