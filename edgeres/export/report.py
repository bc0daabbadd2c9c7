"""The per-layer int8 error report (TF's QuantizationDebugger), named by Keras layer:
``layer_errors.csv`` and its plot ``layer_errors.png``."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np

from edgeres.export.convert import ExportError, Int8Ranges, _quiet, representative_dataset
from edgeres.export.quantize import debug_model
from edgeres.files import atomic_path


def layer_error_report(model, ranges: Int8Ranges, calibration_set, size: int, out_dir: Path,
                       images: int = 8) -> list[dict]:
    """Per-layer int8 error from TF's QuantizationDebugger, named by Keras layer; CSV + PNG.

    The metric is RMSE / scale: the error in units of one quantization step (0.29 is the
    ideal rounding error of a uniform quantizer), so layers are comparable whatever their range.
    ``clipped_fraction`` is the share of values beyond the range, ``in_range_rmse_over_scale``
    the rounding error of the rest: together they say whether a layer loses to clipping or to
    resolution.
    It uses the exported model's own ranges (``ranges``); errors are averaged over the
    first ``images`` calibration images. A layer whose rare large values are clipped by the
    robust ranges shows a larger error here, by design.
    """
    import tensorflow as tf

    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_direct_compare_metrics={"clipped_fraction": _clipped_fraction,
                                          "in_range_rmse_over_scale": _in_range_rmse_over_scale})
        debug = debug_model(ranges.float_model, ranges.by_name())
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug,
            debug_dataset=representative_dataset(calibration_set, size, images), debug_options=options)
        debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    import keras

    # Layers only: a nested backbone's own name ("resnet50") would otherwise match every tensor.
    layer_names = sorted({layer.name for layer in _all_layers(model) if not isinstance(layer, keras.Model)},
                         key=len, reverse=True)
    outputs = _output_layers(ranges.float_model, model)
    rows = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"]) or 1.0
        rows.append({
            "layer": outputs.get(row["tensor_name"]) or _keras_name(row["tensor_name"], layer_names),
            "op": row["op_name"],
            "rmse_over_scale": float(np.sqrt(float(row["mean_squared_error"])) / scale),
            "clipped_fraction": float(row["clipped_fraction"]),
            "in_range_rmse_over_scale": float(row["in_range_rmse_over_scale"]),
            "max_abs_error": float(row["max_abs_error"]),
            "scale": scale,
            "tensor": row["tensor_name"],
        })
    with atomic_path(out_dir / "layer_errors.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["layer"])
        w.writeheader()
        w.writerows(rows)
    _plot_layer_errors(rows, out_dir / "layer_errors.png")
    return sorted(rows, key=lambda r: -r["rmse_over_scale"])


def logits_clipped(layer_rows: list[dict]) -> float | None:
    """Share of the ``logits`` layer's values beyond its int8 range, from the layer report rows."""
    rows = [r for r in layer_rows if r.get("layer") == "logits" and "clipped_fraction" in r]
    return max(r["clipped_fraction"] for r in rows) if rows else None


def _representable(quantized, scale: float, zero_point: int) -> tuple[float, float]:
    info = np.iinfo(quantized.dtype)
    return (info.min - zero_point) * scale, (info.max - zero_point) * scale


def _clipped_fraction(floats, quantized, scale: float, zero_point: int) -> float:
    """Share of float values outside the int8 range: what the activation range gave up."""
    lo, hi = _representable(quantized, scale, zero_point)
    return float(np.mean((floats < lo - scale / 2) | (floats > hi + scale / 2)))


def _in_range_rmse_over_scale(floats, quantized, scale: float, zero_point: int) -> float:
    """Rounding error alone (values inside the range), in quantization steps; ideal is 0.29."""
    lo, hi = _representable(quantized, scale, zero_point)
    inside = (floats >= lo) & (floats <= hi)
    if not inside.any():
        return 0.0
    error = floats[inside] - (quantized.astype(np.float32)[inside] - zero_point) * scale
    return float(np.sqrt(np.mean(error ** 2)) / scale)


def check_float_layers(model, float_layers, run_dir) -> None:
    """Refuse ``--float-layers`` names that are not layers of ``model`` (before any conversion,
    so a typo is neither converted for minutes nor recorded as kept in float)."""
    import difflib

    names = [layer.name for layer in _all_layers(model) if not hasattr(layer, "layers")]
    unknown = [n for n in float_layers if n not in names]
    if not unknown:
        return
    convs = [n for n in names if n.endswith("_conv") or n == "logits"]
    hints = sorted({m for n in unknown for m in difflib.get_close_matches(n, convs, n=2)}) or convs[:2] + convs[-2:]
    raise ExportError(f"--float-layers: no layer named {', '.join(repr(n) for n in unknown)} in {run_dir}/model.keras. "
                      f"Use Keras layer names, as in a bundle's layer_errors.csv (e.g. {', '.join(hints)}).")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _output_layers(float_model: bytes, model) -> dict[str, str]:
    """The graph's output tensors, named by the signature ("StatefulPartitionedCall_1:0") rather than
    by a layer, mapped to the Keras layers that make them (the softmax: "probabilities")."""
    from edgeres import tflite

    graph = tflite.read_model(float_model).Subgraphs(0)
    names = [graph.Tensors(graph.Outputs(i)).Name().decode() for i in range(graph.OutputsLength())]
    return dict(zip(names, model.output_names)) if len(names) == len(model.output_names) else {}


def _keras_name(tensor_name: str, layer_names: list[str]) -> str:
    # Tensor names look like "edgeres_resnet50_1/resnet50_1/conv2_block1_1_conv_1/convolution";
    # a fused op lists several (conv;bn;relu) separated by ';': name it after its conv/dense layer.
    matches = []
    for part in tensor_name.split(";"):
        for name in layer_names:
            if f"/{name}/" in part or f"/{name}_1/" in part or part.endswith(f"/{name}"):
                matches.append(name)
                break
    for name in matches:
        if name.endswith("_conv") or name == "logits":
            return name
    return matches[0] if matches else tensor_name.split(";")[-1]


def _plot_layer_errors(rows: list[dict], path: Path) -> None:
    from edgeres.plots import figure

    values = [r["rmse_over_scale"] for r in rows]
    clipped = [100 * r.get("clipped_fraction", 0.0) for r in rows]
    try:
        with figure(path, figsize=(max(8, len(rows) * 0.12), 6), nrows=2, sharex=True,
                    gridspec_kw={"height_ratios": [3, 1]}) as (fig, (ax, ax2)):
            ax.bar(range(len(values)), values, color=["tab:red" if v > 0.5 else "tab:blue" for v in values])
            ax.axhline(0.29, color="gray", ls="--", lw=1, label="ideal rounding error (0.29)")
            if max(values, default=0) > 20 * 0.29:
                ax.set_yscale("log")
                ax.set_ylim(bottom=0.05)
            worst = sorted(range(len(values)), key=lambda i: -values[i])[:5]
            for i in worst:
                ax.annotate(rows[i]["layer"], (i, values[i]), rotation=60, fontsize=7, ha="left", va="bottom")
            ax.set_ylabel("RMSE / quantization step")
            ax.set_title("int8 error per layer (this model's ranges)")
            ax.legend()
            ax2.bar(range(len(clipped)), clipped, color="tab:orange")
            ax2.set_ylabel("% clipped")
            ax2.set_xlabel("layer (graph order)")
    except ImportError:  # no matplotlib: the CSV alone
        return
