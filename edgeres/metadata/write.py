"""Embedding image-classifier metadata into a ``.tflite``: the ModelMetadata flatbuffer, the
``TFLITE_METADATA`` buffer of the model, and the associated files appended as a zip."""

from __future__ import annotations

import io
import zipfile

import flatbuffers

from edgeres import tflite
from edgeres.metadata.schema import (COLOR_SPACE_RGB, EXTRA_JSON_FILE, LABELS_FILE, METADATA_ID, METADATA_NAME,
                                     MIN_PARSER_VERSION, AssociatedFile, AssociatedFileType, Content,
                                     ContentProperties, FeatureProperties, ImageProperties, ImageSize, ModelMetadata,
                                     NormalizationOptions, ProcessUnit, ProcessUnitOptions, ScoreThresholdingOptions, Stats,
                                     SubGraphMetadata, TensorMetadata)
from edgeres.tflite import TensorType

# Same default tensor names/descriptions as MediaPipe's metadata writers.
INPUT_NAME, INPUT_DESCRIPTION = "image", "Input image to be classified."
OUTPUT_NAME, OUTPUT_DESCRIPTION = "score", "Score of the labels respectively."
LABELS_DESCRIPTION = "Labels for categories that the model can recognize."
EXTRA_JSON_DESCRIPTION = "edgeres export information (JSON)."


# -- the ModelMetadata flatbuffer ------------------------------------------------------------------


def _string(b: flatbuffers.Builder, value: str | None) -> int | None:
    return b.CreateString(value) if value else None


def _float_vector(b: flatbuffers.Builder, values) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _offset_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _table(b: flatbuffers.Builder, table, fields) -> int:
    """Writes a ``table`` (a class of :mod:`edgeres.metadata.schema`); ``fields`` is a list of
    ``(slot, kind, value)``, kind ``"off"`` (table/string/vector offset), ``"byte"`` (enum or
    union type), ``"uint"`` or ``"float"``. ``None`` values are omitted, like unset fields."""
    b.StartObject(table.FIELDS)
    for slot, kind, value in fields:
        if value is None:
            continue
        if kind == "off":
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "byte":
            b.PrependInt8Slot(slot, value, 0)
        elif kind == "uint":
            b.PrependUint32Slot(slot, value, 0)
        elif kind == "float":
            b.PrependFloat32Slot(slot, value, 0.0)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
    return b.EndObject()


def _associated_file(b, name: str, description: str, file_type: int) -> int:
    name_off, desc_off = _string(b, name), _string(b, description)
    return _table(b, AssociatedFile, [(AssociatedFile.NAME, "off", name_off),
                                      (AssociatedFile.DESCRIPTION, "off", desc_off),
                                      (AssociatedFile.TYPE, "byte", file_type)])


def _stats(b, min_values, max_values) -> int | None:
    if min_values is None or max_values is None:
        return None
    max_off, min_off = _float_vector(b, max_values), _float_vector(b, min_values)
    return _table(b, Stats, [(Stats.MAX, "off", max_off), (Stats.MIN, "off", min_off)])


def _tensor_metadata(b, *, name, description, content, process_units=None, stats=None,
                     associated_files=None) -> int:
    name_off, desc_off = _string(b, name), _string(b, description)
    pu_off = _offset_vector(b, process_units) if process_units else None
    af_off = _offset_vector(b, associated_files) if associated_files else None
    return _table(b, TensorMetadata, [
        (TensorMetadata.NAME, "off", name_off),
        (TensorMetadata.DESCRIPTION, "off", desc_off),
        (TensorMetadata.CONTENT, "off", content),
        (TensorMetadata.PROCESS_UNITS, "off", pu_off),
        (TensorMetadata.STATS, "off", stats),
        (TensorMetadata.ASSOCIATED_FILES, "off", af_off),
    ])


def _input_stats(tensor_type: int, mean, std):
    # Same min/max values MediaPipe's InputImageTensorMd records.
    if tensor_type == TensorType.UINT8:
        return [0.0], [255.0]
    if tensor_type == TensorType.FLOAT32:
        return ([(0.0 - m) / s for m, s in zip(mean, std)],
                [(255.0 - m) / s for m, s in zip(mean, std)])
    return None, None


def _output_stats(tensor_type: int):
    if tensor_type == TensorType.UINT8:
        return [0.0], [255.0]
    if tensor_type == TensorType.FLOAT32:
        return [0.0], [1.0]
    return None, None


def _score_threshold_unit(b, threshold: float | None) -> int | None:
    if threshold is None:
        return None
    options = _table(b, ScoreThresholdingOptions, [(ScoreThresholdingOptions.GLOBAL_SCORE_THRESHOLD, "float",
                                                     float(threshold))])
    return _table(b, ProcessUnit, [(ProcessUnit.OPTIONS_TYPE, "byte", ProcessUnitOptions.SCORE_THRESHOLDING_OPTIONS),
                                   (ProcessUnit.OPTIONS, "off", options)])


def build_model_metadata(*, name, description, version, author, input_size, mean, std,
                         input_type, output_type, extra_json, score_threshold=None) -> bytes:
    """The ModelMetadata flatbuffer (identifier M001) of an image classifier."""
    b = flatbuffers.Builder(1024)

    # Input: ImageProperties(RGB, default_size) + NormalizationOptions.
    image_size = _table(b, ImageSize, [(ImageSize.WIDTH, "uint", input_size), (ImageSize.HEIGHT, "uint", input_size)])
    image_props = _table(b, ImageProperties, [(ImageProperties.COLOR_SPACE, "byte", COLOR_SPACE_RGB),
                                              (ImageProperties.DEFAULT_SIZE, "off", image_size)])
    in_content = _table(b, Content, [(Content.CONTENT_PROPERTIES_TYPE, "byte", ContentProperties.IMAGE_PROPERTIES),
                                     (Content.CONTENT_PROPERTIES, "off", image_props)])
    mean_off, std_off = _float_vector(b, mean), _float_vector(b, std)
    norm = _table(b, NormalizationOptions, [(NormalizationOptions.MEAN, "off", mean_off),
                                            (NormalizationOptions.STD, "off", std_off)])
    norm_unit = _table(b, ProcessUnit, [(ProcessUnit.OPTIONS_TYPE, "byte", ProcessUnitOptions.NORMALIZATION_OPTIONS),
                                        (ProcessUnit.OPTIONS, "off", norm)])
    input_md = _tensor_metadata(
        b, name=INPUT_NAME, description=INPUT_DESCRIPTION, content=in_content,
        process_units=[norm_unit], stats=_stats(b, *_input_stats(input_type, mean, std)))

    # Output: FeatureProperties + labels.txt as TENSOR_AXIS_LABELS.
    feature_props = _table(b, FeatureProperties, [])
    out_content = _table(b, Content, [(Content.CONTENT_PROPERTIES_TYPE, "byte", ContentProperties.FEATURE_PROPERTIES),
                                      (Content.CONTENT_PROPERTIES, "off", feature_props)])
    labels_file = _associated_file(b, LABELS_FILE, LABELS_DESCRIPTION, AssociatedFileType.TENSOR_AXIS_LABELS)
    # The uncertain band: MediaPipe's ImageClassifier returns no category scoring below it by default.
    threshold_unit = _score_threshold_unit(b, score_threshold)
    output_md = _tensor_metadata(
        b, name=OUTPUT_NAME, description=OUTPUT_DESCRIPTION, content=out_content,
        process_units=[threshold_unit] if threshold_unit is not None else None, stats=_stats(b, *_output_stats(output_type)), associated_files=[labels_file])

    inputs_off, outputs_off = _offset_vector(b, [input_md]), _offset_vector(b, [output_md])
    subgraph = _table(b, SubGraphMetadata, [(SubGraphMetadata.INPUT_TENSOR_METADATA, "off", inputs_off),
                                            (SubGraphMetadata.OUTPUT_TENSOR_METADATA, "off", outputs_off)])

    model_files = None
    if extra_json is not None:
        model_files = _offset_vector(b, [_associated_file(
            b, EXTRA_JSON_FILE, EXTRA_JSON_DESCRIPTION, AssociatedFileType.DESCRIPTIONS)])

    fields = [
        (ModelMetadata.NAME, "off", _string(b, name)),
        (ModelMetadata.DESCRIPTION, "off", _string(b, description)),
        (ModelMetadata.VERSION, "off", _string(b, version)),
        (ModelMetadata.SUBGRAPH_METADATA, "off", _offset_vector(b, [subgraph])),
        (ModelMetadata.AUTHOR, "off", _string(b, author)),
        (ModelMetadata.ASSOCIATED_FILES, "off", model_files),
        (ModelMetadata.MIN_PARSER_VERSION, "off", _string(b, MIN_PARSER_VERSION)),
    ]
    b.Finish(_table(b, ModelMetadata, fields), file_identifier=METADATA_ID)
    return bytes(b.Output())


# -- into the model ---------------------------------------------------------------------------------


def _validate_args(labels, input_size, mean, std) -> None:
    if not labels:
        raise ValueError("labels must be a non-empty list")
    for label in labels:
        if not isinstance(label, str) or not label or "\n" in label or "\r" in label:
            raise ValueError(f"invalid label {label!r}: labels must be non-empty single-line strings")
    if not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    # MediaPipe accepts 1 (broadcast) or 3 per-channel values.
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError("mean and std must both have 1 or 3 values")
    if any(float(s) == 0.0 for s in std):
        raise ValueError("std values must be non-zero")


def embed_metadata(
    model: bytes,
    *,
    labels: list[str],
    name: str,
    description: str,
    input_size: int,
    mean: list[float],
    std: list[float],
    version: str = "",
    author: str = "edgeres",
    extra_json: str | None = None,
    score_threshold: float | None = None,
) -> bytes:
    """Returns a copy of ``model`` with image-classifier metadata embedded.

    ``model`` is a single-input (``[1, H, W, C]`` uint8 or float32 image),
    single-output (``[1, num_classes]`` scores) ``.tflite`` flatbuffer.  Any
    existing ``TFLITE_METADATA`` and associated files are replaced, so
    embedding twice gives the same bytes as embedding once.

    ``mean``/``std`` describe ``(pixel - mean) / std`` applied by the runtime
    before feeding a float32 input (MediaPipe ignores them for uint8 inputs).
    ``extra_json``, if given, is stored as the model-level associated file
    ``edgeres.json``. ``score_threshold``, if given, is the output tensor's
    ScoreThresholdingOptions (``global_score_threshold``): the top score below which an answer is
    uncertain; MediaPipe's ImageClassifier then drops such categories unless the app sets its own.
    """
    import numpy as np

    _validate_args(labels, input_size, mean, std)
    if score_threshold is not None and not 0.0 < float(score_threshold) < 1.0:
        raise ValueError(f"score_threshold must lie between 0 and 1, got {score_threshold!r}")
    buf = bytes(model)
    m = tflite.unpack(buf)
    if m.externalBuffers or any(b.offset > 1 for b in (m.buffers or [])):
        raise ValueError("models with buffers stored outside the flatbuffer (>2 GB) are not supported")
    if not m.subgraphs:
        raise ValueError("model has no subgraph")
    sg = m.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise ValueError(f"expected a single-input single-output classifier, got "
                         f"{len(sg.inputs)} inputs and {len(sg.outputs)} outputs")
    in_t, out_t = sg.tensors[sg.inputs[0]], sg.tensors[sg.outputs[0]]
    in_shape, out_shape = [int(d) for d in in_t.shape], [int(d) for d in out_t.shape]
    if len(in_shape) != 4:
        raise ValueError(f"expected a [1, H, W, C] image input, got shape {in_shape}")
    if all(d > 0 for d in in_shape[1:3]) and in_shape[1:3] != [input_size, input_size]:
        raise ValueError(f"input_size={input_size} does not match model input shape {in_shape}")
    if out_shape and out_shape[-1] > 0 and out_shape[-1] != len(labels):
        raise ValueError(f"{len(labels)} labels given but the model outputs {out_shape[-1]} classes")

    metadata = build_model_metadata(
        name=name, description=description, version=version, author=author,
        input_size=input_size, mean=[float(v) for v in mean], std=[float(v) for v in std],
        input_type=in_t.type, output_type=out_t.type, extra_json=extra_json, score_threshold=score_threshold)

    # Same edit as tflite_support's MetadataPopulator: reuse the buffer of an
    # existing TFLITE_METADATA entry, otherwise append a new buffer + entry.
    schema = tflite.schema()
    metadata_buffer = schema.BufferT()
    metadata_buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    m.buffers = m.buffers or []
    m.metadata = m.metadata or []
    for entry in m.metadata:
        if entry.name in (METADATA_NAME, METADATA_NAME.encode()):
            m.buffers[entry.buffer] = metadata_buffer
            break
    else:
        m.buffers.append(metadata_buffer)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(m.buffers) - 1
        m.metadata.append(entry)

    # Packing drops any zip previously appended to `model`; append a fresh
    # one.  MediaPipe maps associated files straight out of the model buffer,
    # so they must be stored uncompressed (deflated entries fail to load).
    out = io.BytesIO()
    out.write(tflite.pack(m, len(buf) + len(metadata) + 4096))
    files = {LABELS_FILE: "\n".join(labels)}
    if extra_json is not None:
        files[EXTRA_JSON_FILE] = extra_json
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for filename, content in files.items():
            # Fixed timestamp keeps the output deterministic.
            info = zipfile.ZipInfo(filename, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, content.encode("utf-8"))
    return out.getvalue()
