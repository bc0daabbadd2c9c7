"""Embed and read standard TFLite Model Metadata for image classifiers.

Writes the same structure as tflite_support's ``MetadataPopulator`` and
MediaPipe's ``metadata_writers.image_classifier``: a ``ModelMetadata``
flatbuffer (schema ``metadata_schema.fbs``, file identifier ``M001``) stored in
a model buffer referenced by the ``TFLITE_METADATA`` entry of
``Model.metadata``, plus the associated files (``labels.txt``...) appended to
the ``.tflite`` as an uncompressed zip archive.  MediaPipe Tasks
(``ImageClassifier``) and the TFLite Task Library read category names from it.

Only ``flatbuffers`` and the standard library are imported at module level;
``embed_metadata`` additionally imports ``numpy`` and
``ai_edge_litert.schema_py_generated`` (to rewrite the Model flatbuffer) on
first use.  The metadata tables themselves are hand-written below with
``flatbuffers.Builder`` (field slots follow metadata_schema.fbs v1.5.0) so
that neither tflite_support nor mediapipe is needed.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile

import flatbuffers
from flatbuffers import encode, packer
from flatbuffers.number_types import Int8Flags, Uint32Flags, Uint64Flags
from flatbuffers.table import Table

__all__ = [
    "CorruptModelError",
    "EXTRA_JSON_FILE",
    "LABELS_FILE",
    "METADATA_NAME",
    "check_model_bytes",
    "embed_metadata",
    "read_labels",
    "read_metadata",
]

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
EXTRA_JSON_FILE = "edgeres.json"

_TFLITE_ID = b"TFL3"
_METADATA_ID = b"M001"
# Lowest parser version for identifier M001.  Newer parser versions are only
# needed for fields we never write (tokenizers, tensor groups, audio,
# AssociatedFile.version, custom_metadata...), so this is exactly what
# tflite_support's GetMinimumMetadataParserVersion returns for our metadata.
_MIN_PARSER_VERSION = "1.0.0"

# Enum values from metadata_schema.fbs.
_ASSOCIATED_FILE_DESCRIPTIONS = 1
_ASSOCIATED_FILE_TENSOR_AXIS_LABELS = 2
_COLOR_SPACE_RGB = 1
_COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
_CONTENT_FEATURE_PROPERTIES = 1
_CONTENT_IMAGE_PROPERTIES = 2
_PROCESS_UNIT_NORMALIZATION_OPTIONS = 1

# TFLite TensorType values from schema.fbs.
_TFLITE_FLOAT32 = 0
_TFLITE_UINT8 = 3

# Same default tensor names/descriptions as MediaPipe's metadata writers.
_INPUT_NAME = "image"
_INPUT_DESCRIPTION = "Input image to be classified."
_OUTPUT_NAME = "score"
_OUTPUT_DESCRIPTION = "Score of the labels respectively."
_LABELS_DESCRIPTION = "Labels for categories that the model can recognize."
_EXTRA_JSON_DESCRIPTION = "edgeres export information (JSON)."

ModelSource = str | os.PathLike | bytes | bytearray | memoryview


# --------------------------------------------------------------------------
# Writing the ModelMetadata flatbuffer
# --------------------------------------------------------------------------


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


def _table(b: flatbuffers.Builder, num_fields: int, fields) -> int:
    """Writes a table; ``fields`` is a list of ``(slot, kind, value)``.

    kind is ``"off"`` (table/string/vector offset), ``"byte"`` (enum/union
    type) or ``"uint"``.  ``None`` values are omitted, like unset fields.
    """
    b.StartObject(num_fields)
    for slot, kind, value in fields:
        if value is None:
            continue
        if kind == "off":
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "byte":
            b.PrependInt8Slot(slot, value, 0)
        elif kind == "uint":
            b.PrependUint32Slot(slot, value, 0)
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
    return b.EndObject()


def _associated_file(b, name: str, description: str, file_type: int) -> int:
    # AssociatedFile: name, description, type, locale, version
    name_off, desc_off = _string(b, name), _string(b, description)
    return _table(b, 5, [(0, "off", name_off), (1, "off", desc_off), (2, "byte", file_type)])


def _stats(b, min_values, max_values) -> int | None:
    if min_values is None or max_values is None:
        return None
    # Stats: max, min
    max_off, min_off = _float_vector(b, max_values), _float_vector(b, min_values)
    return _table(b, 2, [(0, "off", max_off), (1, "off", min_off)])


def _tensor_metadata(b, *, name, description, content, process_units=None, stats=None,
                     associated_files=None) -> int:
    # TensorMetadata: name, description, dimension_names, content,
    # process_units, stats, associated_files
    name_off, desc_off = _string(b, name), _string(b, description)
    pu_off = _offset_vector(b, process_units) if process_units else None
    af_off = _offset_vector(b, associated_files) if associated_files else None
    return _table(b, 7, [
        (0, "off", name_off),
        (1, "off", desc_off),
        (3, "off", content),
        (4, "off", pu_off),
        (5, "off", stats),
        (6, "off", af_off),
    ])


def _input_stats(tensor_type: int, mean, std):
    # Same min/max values MediaPipe's InputImageTensorMd records.
    if tensor_type == _TFLITE_UINT8:
        return [0.0], [255.0]
    if tensor_type == _TFLITE_FLOAT32:
        return ([(0.0 - m) / s for m, s in zip(mean, std)],
                [(255.0 - m) / s for m, s in zip(mean, std)])
    return None, None


def _output_stats(tensor_type: int):
    if tensor_type == _TFLITE_UINT8:
        return [0.0], [255.0]
    if tensor_type == _TFLITE_FLOAT32:
        return [0.0], [1.0]
    return None, None


def _build_model_metadata(*, name, description, version, author, input_size, mean, std,
                          input_type, output_type, extra_json) -> bytes:
    b = flatbuffers.Builder(1024)

    # Input: ImageProperties(RGB, default_size) + NormalizationOptions.
    image_size = _table(b, 2, [(0, "uint", input_size), (1, "uint", input_size)])
    image_props = _table(b, 2, [(0, "byte", _COLOR_SPACE_RGB), (1, "off", image_size)])
    # Content: content_properties_type, content_properties, range
    in_content = _table(b, 3, [(0, "byte", _CONTENT_IMAGE_PROPERTIES), (1, "off", image_props)])
    mean_off, std_off = _float_vector(b, mean), _float_vector(b, std)
    norm = _table(b, 2, [(0, "off", mean_off), (1, "off", std_off)])
    # ProcessUnit: options_type, options
    norm_unit = _table(b, 2, [(0, "byte", _PROCESS_UNIT_NORMALIZATION_OPTIONS), (1, "off", norm)])
    input_md = _tensor_metadata(
        b, name=_INPUT_NAME, description=_INPUT_DESCRIPTION, content=in_content,
        process_units=[norm_unit], stats=_stats(b, *_input_stats(input_type, mean, std)))

    # Output: FeatureProperties + labels.txt as TENSOR_AXIS_LABELS.
    feature_props = _table(b, 0, [])
    out_content = _table(b, 3, [(0, "byte", _CONTENT_FEATURE_PROPERTIES), (1, "off", feature_props)])
    labels_file = _associated_file(b, LABELS_FILE, _LABELS_DESCRIPTION,
                                   _ASSOCIATED_FILE_TENSOR_AXIS_LABELS)
    output_md = _tensor_metadata(
        b, name=_OUTPUT_NAME, description=_OUTPUT_DESCRIPTION, content=out_content,
        stats=_stats(b, *_output_stats(output_type)), associated_files=[labels_file])

    # SubGraphMetadata: name, description, input_tensor_metadata,
    # output_tensor_metadata, associated_files, ... (10 fields in v1.5.0)
    inputs_off, outputs_off = _offset_vector(b, [input_md]), _offset_vector(b, [output_md])
    subgraph = _table(b, 10, [(2, "off", inputs_off), (3, "off", outputs_off)])

    model_files = None
    if extra_json is not None:
        model_files = _offset_vector(b, [_associated_file(
            b, EXTRA_JSON_FILE, _EXTRA_JSON_DESCRIPTION, _ASSOCIATED_FILE_DESCRIPTIONS)])

    # ModelMetadata: name, description, version, subgraph_metadata, author,
    # license, associated_files, min_parser_version
    fields = [
        (0, "off", _string(b, name)),
        (1, "off", _string(b, description)),
        (2, "off", _string(b, version)),
        (3, "off", _offset_vector(b, [subgraph])),
        (4, "off", _string(b, author)),
        (6, "off", model_files),
        (7, "off", _string(b, _MIN_PARSER_VERSION)),
    ]
    b.Finish(_table(b, 8, fields), file_identifier=_METADATA_ID)
    return bytes(b.Output())


# --------------------------------------------------------------------------
# Rewriting the Model flatbuffer
# --------------------------------------------------------------------------


class _AlignedBuilder(flatbuffers.Builder):
    """Builder that 16-byte aligns byte vectors.

    schema.fbs declares ``Buffer.data`` with ``force_align: 16`` (the TFLite
    converter honours it) but the generated Python ``Pack`` ignores it, so
    re-packing a model would leave weight buffers unaligned.
    """

    def StartVector(self, elemSize, numElems, alignment):
        if elemSize == 1:
            alignment = max(alignment, 16)
        return super().StartVector(elemSize, numElems, alignment)


def _check_tflite(buf: bytes) -> None:
    if len(buf) < 8 or buf[4:8] != _TFLITE_ID:
        raise ValueError("not a TFLite flatbuffer (missing 'TFL3' file identifier)")


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
) -> bytes:
    """Returns a copy of ``model`` with image-classifier metadata embedded.

    ``model`` is a single-input (``[1, H, W, C]`` uint8 or float32 image),
    single-output (``[1, num_classes]`` scores) ``.tflite`` flatbuffer.  Any
    existing ``TFLITE_METADATA`` and associated files are replaced, so
    embedding twice gives the same bytes as embedding once.

    ``mean``/``std`` describe ``(pixel - mean) / std`` applied by the runtime
    before feeding a float32 input (MediaPipe ignores them for uint8 inputs).
    ``extra_json``, if given, is stored as the model-level associated file
    ``edgeres.json``.
    """
    import numpy as np
    from ai_edge_litert import schema_py_generated as tfl

    _validate_args(labels, input_size, mean, std)
    buf = bytes(model)
    _check_tflite(buf)

    m = tfl.ModelT.InitFromPackedBuf(buf, 0)
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

    metadata = _build_model_metadata(
        name=name, description=description, version=version, author=author,
        input_size=input_size, mean=[float(v) for v in mean], std=[float(v) for v in std],
        input_type=in_t.type, output_type=out_t.type, extra_json=extra_json)

    # Same edit as tflite_support's MetadataPopulator: reuse the buffer of an
    # existing TFLITE_METADATA entry, otherwise append a new buffer + entry.
    metadata_buffer = tfl.BufferT()
    metadata_buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    m.buffers = m.buffers or []
    m.metadata = m.metadata or []
    for entry in m.metadata:
        if entry.name in (METADATA_NAME, METADATA_NAME.encode()):
            m.buffers[entry.buffer] = metadata_buffer
            break
    else:
        m.buffers.append(metadata_buffer)
        entry = tfl.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(m.buffers) - 1
        m.metadata.append(entry)

    builder = _AlignedBuilder(len(buf) + len(metadata) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=_TFLITE_ID)

    # Packing drops any zip previously appended to `model`; append a fresh
    # one.  MediaPipe maps associated files straight out of the model buffer,
    # so they must be stored uncompressed (deflated entries fail to load).
    out = io.BytesIO()
    out.write(builder.Output())
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


# --------------------------------------------------------------------------
# Reading (flatbuffers + stdlib only)
# --------------------------------------------------------------------------


def _load(model_path_or_bytes: ModelSource) -> bytes:
    if isinstance(model_path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(model_path_or_bytes)
    with open(model_path_or_bytes, "rb") as f:
        return f.read()


def _root(buf: bytes) -> Table:
    return Table(buf, encode.Get(packer.uoffset, buf, 0))


def _field_offset(t: Table, slot: int) -> int:
    return t.Offset(4 + 2 * slot)


def _get_table(t: Table, slot: int) -> Table | None:
    o = _field_offset(t, slot)
    return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _get_tables(t: Table, slot: int) -> list[Table]:
    o = _field_offset(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _get_string(t: Table, slot: int) -> str | None:
    o = _field_offset(t, slot)
    return t.String(o + t.Pos).decode("utf-8") if o else None


def _get_bytes(t: Table, slot: int) -> bytes | None:
    o = _field_offset(t, slot)
    if not o:
        return None
    start = t.Vector(o)
    return bytes(t.Bytes[start:start + t.VectorLen(o)])


def _get_floats(t: Table, slot: int) -> list[float] | None:
    o = _field_offset(t, slot)
    if not o:
        return None
    return list(struct.unpack_from(f"<{t.VectorLen(o)}f", t.Bytes, t.Vector(o)))


def _get_scalar(t: Table, slot: int, flags, default=0):
    o = _field_offset(t, slot)
    return t.Get(flags, o + t.Pos) if o else default


def _metadata_buffer(buf: bytes) -> bytes | None:
    """Returns the ModelMetadata flatbuffer of a model, or None."""
    _check_tflite(buf)
    model = _root(buf)
    buffers = _get_tables(model, 4)  # Model.buffers
    for entry in _get_tables(model, 6):  # Model.metadata
        if _get_string(entry, 0) != METADATA_NAME:  # Metadata.name
            continue
        index = _get_scalar(entry, 1, Uint32Flags)  # Metadata.buffer
        data = _get_bytes(buffers[index], 0) if index < len(buffers) else None  # Buffer.data
        if not data or data[4:8] != _METADATA_ID:
            raise ValueError("TFLITE_METADATA buffer is missing or is not an M001 ModelMetadata")
        return data
    return None


def _associated_files(buf: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as zf:
            return {name: zf.read(name) for name in zf.namelist()}
    except zipfile.BadZipFile:
        return {}


def _parse_labels(content: bytes) -> list[str]:
    labels = content.decode("utf-8").split("\n")
    if labels and labels[-1] == "":  # trailing newline, as MediaPipe does
        labels.pop()
    return labels


class CorruptModelError(ValueError):
    """A model whose bytes are cut or inconsistent: usually an interrupted copy or download."""


def _metadata_file_names(data: bytes) -> list[str]:
    """Names of every associated file a ModelMetadata flatbuffer refers to (model, subgraph, tensors)."""
    md = _root(data)
    names = [_get_string(f, 0) for f in _get_tables(md, 6)]  # ModelMetadata.associated_files
    for subgraph in _get_tables(md, 3):
        names += [_get_string(f, 0) for f in _get_tables(subgraph, 4)]  # SubGraphMetadata.associated_files
        for tensors in (_get_tables(subgraph, 2), _get_tables(subgraph, 3)):
            for tensor in tensors:
                names += [_get_string(f, 0) for f in _get_tables(tensor, 6)]  # TensorMetadata.associated_files
    return sorted({n for n in names if n})


def check_model_bytes(model_path_or_bytes: ModelSource) -> None:
    """Cheap bounds checks that catch a cut or damaged ``.tflite`` before an interpreter reads it.

    Every weight buffer must lie inside the file, and when the model carries TFLITE_METADATA,
    every associated file it names (``labels.txt``...) must be present and intact (CRC) in the zip
    appended to the model: cutting the last few KB of an exported model removes exactly those.
    Not a full flatbuffer verification: LiteRT's loader verifies the flatbuffer itself, but cannot
    see the zip past its end. Raises :class:`CorruptModelError` naming what is missing.
    """
    buf = _load(model_path_or_bytes)
    _check_tflite(buf)
    size = len(buf)
    try:
        model = _root(buf)
        if model.Pos >= size:
            raise CorruptModelError(f"root table at byte {model.Pos} is past the end")
        for i, buffer in enumerate(_get_tables(model, 4)):  # Model.buffers
            o = _field_offset(buffer, 0)  # Buffer.data
            if o:
                start, n = buffer.Vector(o), buffer.VectorLen(o)
                if start + n > size:
                    raise CorruptModelError(f"weight buffer {i} ends at byte {start + n}, past the end")
            offset = _get_scalar(buffer, 1, Uint64Flags)  # Buffer.offset
            length = _get_scalar(buffer, 2, Uint64Flags)  # Buffer.size
            if offset > 1 and offset + length > size:
                raise CorruptModelError(f"weight buffer {i} ends at byte {offset + length}, past the end")
        metadata = _metadata_buffer(buf)
        names = _metadata_file_names(metadata) if metadata is not None else []
    except CorruptModelError:
        raise
    except (IndexError, struct.error) as e:
        raise CorruptModelError(f"its flatbuffer tables point past byte {size}, the end of the file") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptModelError(f"its flatbuffer is unreadable ({e})") from e
    if not names:
        return
    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as zf:
            present = set(zf.namelist())
            missing = [n for n in names if n not in present]
            for name in names:
                if name in present:
                    zf.read(name)  # checks the CRC: a file cut mid-way fails here
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CorruptModelError(f"its metadata names {', '.join(names)} but the files appended to the "
                                f"model are missing or cut ({e})") from e
    if missing:
        raise CorruptModelError(f"its metadata names {', '.join(missing)} but the model does not carry them")


def read_labels(model_path_or_bytes: ModelSource) -> list[str]:
    """Returns the labels from the model's embedded ``labels.txt``.

    Raises ``ValueError`` if the model has no embedded ``labels.txt``.
    """
    files = _associated_files(_load(model_path_or_bytes))
    if LABELS_FILE not in files:
        raise ValueError(f"model has no embedded {LABELS_FILE}")
    return _parse_labels(files[LABELS_FILE])


def read_metadata(model_path_or_bytes: ModelSource) -> dict | None:
    """Parses the embedded metadata back into a dict; None if there is none.

    Keys: name, description, version, author, min_parser_version,
    input_size, color_space, mean, std, input_tensor, output_tensor,
    labels_file, labels, associated_files, extra_json.
    """
    buf = _load(model_path_or_bytes)
    data = _metadata_buffer(buf)
    if data is None:
        return None
    md = _root(data)
    result = {
        "name": _get_string(md, 0),
        "description": _get_string(md, 1),
        "version": _get_string(md, 2) or "",
        "author": _get_string(md, 4),
        "min_parser_version": _get_string(md, 7),
        "input_size": None,
        "color_space": None,
        "mean": None,
        "std": None,
        "input_tensor": None,
        "output_tensor": None,
        "labels_file": None,
        "labels": None,
        "associated_files": [],
        "extra_json": None,
    }
    subgraphs = _get_tables(md, 3)
    if subgraphs:
        inputs, outputs = _get_tables(subgraphs[0], 2), _get_tables(subgraphs[0], 3)
        if inputs:
            tensor = inputs[0]
            result["input_tensor"] = _get_string(tensor, 0)
            content = _get_table(tensor, 3)
            if content is not None and _get_scalar(content, 0, Int8Flags) == _CONTENT_IMAGE_PROPERTIES:
                props = _get_table(content, 1)
                if props is not None:
                    result["color_space"] = _COLOR_SPACES.get(_get_scalar(props, 0, Int8Flags), "UNKNOWN")
                    size = _get_table(props, 1)
                    if size is not None:
                        result["input_size"] = _get_scalar(size, 0, Uint32Flags)
            for unit in _get_tables(tensor, 4):
                if _get_scalar(unit, 0, Int8Flags) == _PROCESS_UNIT_NORMALIZATION_OPTIONS:
                    options = _get_table(unit, 1)
                    if options is not None:
                        result["mean"], result["std"] = _get_floats(options, 0), _get_floats(options, 1)
                    break
        if outputs:
            tensor = outputs[0]
            result["output_tensor"] = _get_string(tensor, 0)
            for f in _get_tables(tensor, 6):
                if _get_scalar(f, 2, Int8Flags) == _ASSOCIATED_FILE_TENSOR_AXIS_LABELS:
                    result["labels_file"] = _get_string(f, 0)
                    break

    files = _associated_files(buf)
    result["associated_files"] = sorted(files)
    if result["labels_file"] in files:
        result["labels"] = _parse_labels(files[result["labels_file"]])
    if EXTRA_JSON_FILE in files:
        result["extra_json"] = files[EXTRA_JSON_FILE].decode("utf-8")
    return result
