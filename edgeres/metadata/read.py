"""Reading a model's metadata and checking that its bytes are whole: ``flatbuffers`` and the
standard library only (a device may have no TFLite schema bindings at all)."""

from __future__ import annotations

import io
import os
import struct
import zipfile

from flatbuffers.number_types import Float32Flags, Int8Flags, Uint32Flags

from edgeres import tflite
from edgeres.metadata.schema import (COLOR_SPACES, EXTRA_JSON_FILE, LABELS_FILE, METADATA_ID, METADATA_NAME,
                                     AssociatedFile, AssociatedFileType, Content, ContentProperties,
                                     ImageProperties, ImageSize, ModelMetadata, NormalizationOptions, ProcessUnit,
                                     ProcessUnitOptions, ScoreThresholdingOptions, SubGraphMetadata, TensorMetadata)
from edgeres.tflite import field, floats, root, scalar, string, tables

ModelSource = str | os.PathLike | bytes | bytearray | memoryview


class CorruptModelError(ValueError):
    """A model whose bytes are cut or inconsistent: usually an interrupted copy or download."""


def _load(model_path_or_bytes: ModelSource) -> bytes:
    if isinstance(model_path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(model_path_or_bytes)
    with open(model_path_or_bytes, "rb") as f:
        return f.read()


def _metadata_buffer(buf: bytes) -> bytes | None:
    """The ModelMetadata flatbuffer of a model, or None."""
    data = tflite.metadata_buffer(buf, METADATA_NAME)
    if data is not None and data[4:8] != METADATA_ID:
        raise ValueError("TFLITE_METADATA buffer is missing or is not an M001 ModelMetadata")
    return data


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


def _file_names(files) -> list[str]:
    return [string(f, AssociatedFile.NAME) for f in files]


def _metadata_file_names(data: bytes) -> list[str]:
    """Names of every associated file a ModelMetadata flatbuffer refers to (model, subgraph, tensors)."""
    md = root(data)
    names = _file_names(tables(md, ModelMetadata.ASSOCIATED_FILES))
    for subgraph in tables(md, ModelMetadata.SUBGRAPH_METADATA):
        names += _file_names(tables(subgraph, SubGraphMetadata.ASSOCIATED_FILES))
        for slot in (SubGraphMetadata.INPUT_TENSOR_METADATA, SubGraphMetadata.OUTPUT_TENSOR_METADATA):
            for tensor in tables(subgraph, slot):
                names += _file_names(tables(tensor, TensorMetadata.ASSOCIATED_FILES))
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
    tflite.check_tflite(buf)
    size = len(buf)
    try:
        overrun = tflite.buffer_overrun(buf)
        if overrun:
            raise CorruptModelError(overrun)
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


def _read_input(tensor, result: dict) -> None:
    result["input_tensor"] = string(tensor, TensorMetadata.NAME)
    content = field(tensor, TensorMetadata.CONTENT)
    kind = scalar(content, Content.CONTENT_PROPERTIES_TYPE, Int8Flags) if content is not None else None
    props = field(content, Content.CONTENT_PROPERTIES) if kind == ContentProperties.IMAGE_PROPERTIES else None
    if props is not None:
        result["color_space"] = COLOR_SPACES.get(scalar(props, ImageProperties.COLOR_SPACE, Int8Flags), "UNKNOWN")
        size = field(props, ImageProperties.DEFAULT_SIZE)
        if size is not None:
            result["input_size"] = scalar(size, ImageSize.WIDTH, Uint32Flags)
    for unit in tables(tensor, TensorMetadata.PROCESS_UNITS):
        if scalar(unit, ProcessUnit.OPTIONS_TYPE, Int8Flags) == ProcessUnitOptions.NORMALIZATION_OPTIONS:
            options = field(unit, ProcessUnit.OPTIONS)
            if options is not None:
                result["mean"] = floats(options, NormalizationOptions.MEAN)
                result["std"] = floats(options, NormalizationOptions.STD)
            break


def _read_output(tensor, result: dict) -> None:
    result["output_tensor"] = string(tensor, TensorMetadata.NAME)
    for f in tables(tensor, TensorMetadata.ASSOCIATED_FILES):
        if scalar(f, AssociatedFile.TYPE, Int8Flags) == AssociatedFileType.TENSOR_AXIS_LABELS:
            result["labels_file"] = string(f, AssociatedFile.NAME)
            break
    for unit in tables(tensor, TensorMetadata.PROCESS_UNITS):
        if scalar(unit, ProcessUnit.OPTIONS_TYPE, Int8Flags) == ProcessUnitOptions.SCORE_THRESHOLDING_OPTIONS:
            options = field(unit, ProcessUnit.OPTIONS)
            if options is not None:
                result["score_threshold"] = scalar(options, ScoreThresholdingOptions.GLOBAL_SCORE_THRESHOLD,
                                                   Float32Flags, 0.0)
            break


def read_metadata(model_path_or_bytes: ModelSource) -> dict | None:
    """Parses the embedded metadata back into a dict; None if there is none.

    Keys: name, description, version, author, min_parser_version,
    input_size, color_space, mean, std, input_tensor, output_tensor,
    labels_file, labels, associated_files, extra_json, score_threshold (the output's
    ScoreThresholdingOptions: the top score below which an answer is uncertain; None if unset).
    """
    buf = _load(model_path_or_bytes)
    data = _metadata_buffer(buf)
    if data is None:
        return None
    md = root(data)
    result = {
        "name": string(md, ModelMetadata.NAME),
        "description": string(md, ModelMetadata.DESCRIPTION),
        "version": string(md, ModelMetadata.VERSION) or "",
        "author": string(md, ModelMetadata.AUTHOR),
        "min_parser_version": string(md, ModelMetadata.MIN_PARSER_VERSION),
        **dict.fromkeys(("input_size", "color_space", "mean", "std", "input_tensor", "output_tensor",
                         "labels_file", "labels", "extra_json", "score_threshold")),
        "associated_files": [],
    }
    subgraphs = tables(md, ModelMetadata.SUBGRAPH_METADATA)
    if subgraphs:
        inputs = tables(subgraphs[0], SubGraphMetadata.INPUT_TENSOR_METADATA)
        outputs = tables(subgraphs[0], SubGraphMetadata.OUTPUT_TENSOR_METADATA)
        if inputs:
            _read_input(inputs[0], result)
        if outputs:
            _read_output(outputs[0], result)

    files = _associated_files(buf)
    result["associated_files"] = sorted(files)
    if result["labels_file"] in files:
        result["labels"] = _parse_labels(files[result["labels_file"]])
    if EXTRA_JSON_FILE in files:
        result["extra_json"] = files[EXTRA_JSON_FILE].decode("utf-8")
    return result
