"""A QAT run (``edgeres qat``) to int8, and what its export reports.

The converter takes the fake-quant ranges as they are: every activation range and weight scale
of the int8 model is the QAT model's own, so no representative dataset is given (issue 27's
probe: all 73 ranges of the reference model reappear as the int8 scales). Setting
``supported_ops=[TFLITE_BUILTINS_INT8]`` would make it demand one, so it is left unset; the
result is checked to be all-integer like any int8 export. uint8 input and output as always.

The float formats of a QAT run are its weights without fake quantization. Its verified
reference is the QAT model's own forward pass (fake quantization on): :func:`qat_verification`
runs it in TensorFlow beside the int8 model and the parent run's float32 model, on the same
validation pixels.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from edgeres.export.convert import ExportError, _io_types, _quiet
from edgeres.tflite import TensorType


def is_qat_run(run: dict) -> bool:
    return bool(run.get("qat"))


def convert_qat_int8(model, *, float_layers=()) -> bytes:
    """The fully-integer int8 ``.tflite`` (uint8 in and out) of a fake-quantized Keras model."""
    import tensorflow as tf

    if float_layers:
        raise ExportError("--float-layers does not apply to a QAT run: every layer was trained with int8 fake "
                          "quantization. Export its parent run with --float-layers instead.")
    from edgeres.qat_model import fake_quant

    with warnings.catch_warnings(), _quiet(), fake_quant(model, enabled=True):
        warnings.simplefilter("ignore")
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        blob = converter.convert()
    if _io_types(blob) != (TensorType.UINT8, TensorType.UINT8):
        raise ExportError("The QAT model converted without uint8 input/output; its fake quantization does not "
                          "cover the whole graph (re-run edgeres qat with this edgeres version).")
    return blob


@contextlib.contextmanager
def float_forward(model):
    """Inside: ``model`` traces as its float weights, fake quantization off (float formats)."""
    from edgeres.qat_model import fake_quant

    with fake_quant(model, enabled=False):
        yield model


def qat_verification(run_dir: Path, run: dict, bundle: Path, int8_file: str, dataset, *, limit=None,
                     threads=None, progress=False, log=print, batch: int = 16) -> dict:
    """int8 (LiteRT) against the QAT model's forward (TensorFlow, fake quantization on) and against
    the parent run's float32 model, on the validation photos export verifies on, fed the same pixels."""
    import numpy as np

    from edgeres.keras_classifier import KerasClassifier
    from edgeres.preprocess import load_pixels
    from edgeres.runtime import Classifier

    items = [(s.path, s.label) for s in dataset.validation.samples]
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    int8 = Classifier(bundle / int8_file, threads=threads, accelerator="cpu")
    references = {"vs_qat_forward": KerasClassifier(run_dir)}
    parent = Path(run["qat"]["parent"])
    if (parent / "model.keras").is_file():
        references["vs_parent_float32"] = KerasClassifier(parent)
    else:
        log(f"QAT: the parent run {parent} is not here; int8 is compared with the QAT model only.")
    log(f"QAT: int8 against the QAT model's forward pass{' and the parent float32 model' if len(references) > 1 else ''} "
        f"(TensorFlow) on {len(items)} validation images ...")
    size, resize = int8.input_size[0], int8.resize
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    if progress:
        from edgeres._stderr import track

        chunks = track(chunks, description="QAT record")
    scores = {"int8": [], **{k: [] for k in references}}
    for chunk in chunks:
        pixels = np.stack([load_pixels(path, size, resize) for path, _ in chunk])
        scores["int8"] += [int8.predict_pixels(p).probabilities for p in pixels]
        for key, model in references.items():
            scores[key].append(model.predict_batch(pixels))
    labels = np.array([label for _, label in items])
    ours = np.asarray(scores["int8"], np.float32)
    record = {"parent": str(parent), "n": len(items), "int8_accuracy": float(np.mean(ours.argmax(1) == labels)),
              "target": run["qat"].get("target")}
    for key in references:
        theirs = np.concatenate(scores[key])
        diff = np.abs(ours - theirs)
        record[key] = {"agreement": float(np.mean(ours.argmax(1) == theirs.argmax(1))),
                       "mean_abs_prob_diff": float(diff.mean()),
                       "p99_abs_prob_diff": float(np.percentile(diff.max(axis=1), 99)),
                       "accuracy": float(np.mean(theirs.argmax(1) == labels))}
    return record


def qat_summary(record: dict) -> list[str]:
    """Lines for the export summary."""
    lines = []
    for key, what in (("vs_qat_forward", "the QAT model (fake quant, TensorFlow)"),
                      ("vs_parent_float32", "the parent float32 model (TensorFlow)")):
        if key in record:
            r = record[key]
            lines.append(f"  int8 vs {what}: agreement {r['agreement']:.2%}, score |dp| mean "
                         f"{r['mean_abs_prob_diff']:.4f} p99 {r['p99_abs_prob_diff']:.4f}; its accuracy "
                         f"{r['accuracy']:.2%}  (n={record['n']})")
    return lines
