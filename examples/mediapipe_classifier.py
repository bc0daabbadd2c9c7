#!/usr/bin/env python3
"""Classify images with MediaPipe Tasks' ImageClassifier using an edgeres .tflite.

Checks that the model's embedded TFLite Model Metadata is understood by
MediaPipe: every returned category must carry a name (from labels.txt).

    python examples/mediapipe_classifier.py MODEL.tflite IMAGE [IMAGE...] [--top-k K]
                                            [--score-threshold T]

Prints ``path<TAB>category_name<TAB>score`` for the top-K categories of each
image, or ``path<TAB>not sure<TAB>-`` when MediaPipe returns none: an edgeres
model carries its uncertain band (the top score below which the paths it was
verified on may disagree) as ScoreThresholdingOptions in its metadata, and
MediaPipe drops every category below it unless the app sets ``score_threshold``
itself (``--score-threshold 1e-9``: every category, as before the band; MediaPipe's
Python API reads 0 as unset and applies the model's band).
Exits 1 if any category comes back without a name, 2 on errors.

Needs ``pip install mediapipe`` (which pulls in opencv-contrib-python, so keep
it in its own virtualenv); it deliberately does not import edgeres.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=".tflite model with embedded metadata")
    parser.add_argument("images", nargs="+", help="image files (jpg/png)")
    parser.add_argument("--top-k", type=int, default=2, help="categories to print per image (default 2)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="drop categories below T > 0 (default: the model's own band, from its metadata)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")

    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    # score_threshold left unset: MediaPipe uses the model's ScoreThresholdingOptions, so an
    # uncertain answer comes back with no category. An app that wants every answer sets it.
    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=args.model),
        max_results=args.top_k,
        score_threshold=args.score_threshold,
    )
    unnamed = 0
    # MediaPipe maps C++ status codes to exception types: e.g. missing
    # NormalizationOptions (kNotFound) surfaces as FileNotFoundError.
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: MediaPipe could not load {args.model}: {exc}", file=sys.stderr)
        return 2
    with classifier:
        for path in args.images:
            try:
                result = classifier.classify(mp.Image.create_from_file(path))
            except (RuntimeError, ValueError, OSError) as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                return 2
            categories = result.classifications[0].categories if result.classifications else []
            if not categories:  # every score below the model's band: say so, do not guess
                print(f"{path}\tnot sure\t-")
                continue
            for cat in categories:
                if not cat.category_name:
                    unnamed += 1
                print(f"{path}\t{cat.category_name or f'<index {cat.index}>'}\t{cat.score:.4f}")

    if unnamed:
        print(f"error: {unnamed} categories have no name: the model lacks label metadata "
              "(TENSOR_AXIS_LABELS associated file)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
