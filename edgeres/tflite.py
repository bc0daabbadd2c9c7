"""Reading and rewriting ``.tflite`` files: the one place edgeres touches TFLite's flatbuffer.

Two halves, for two kinds of machine:

* **Reading on a device** (:func:`model_table`, :func:`buffer_overrun`, :func:`metadata_buffer`)
  needs only ``flatbuffers``: a device may run the old ``tflite_runtime``, which ships no schema.
  The few fields it reads are named once below, with their slot in ``schema.fbs``; the tests
  read the same models with LiteRT's generated reader and compare.
* **Rewriting and inspecting** (:func:`read_model`, :func:`unpack`, :func:`pack`,
  :func:`io_tensors`, :func:`tensor_names`) goes through the bindings LiteRT generates from
  ``schema.fbs`` (``ai_edge_litert.schema_py_generated``), imported on first use.

The small table helpers (:func:`field`, :func:`tables`, :func:`string`...) also read the
TFLite Model Metadata flatbuffer (``edgeres.metadata``). No TensorFlow here.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import flatbuffers
from flatbuffers import encode, packer
from flatbuffers.number_types import Uint32Flags, Uint64Flags
from flatbuffers.table import Table

TFLITE_ID = b"TFL3"


class TensorType(IntEnum):
    """``TensorType`` of schema.fbs (those edgeres meets); tests compare them with LiteRT's enum."""

    FLOAT32 = 0
    FLOAT16 = 1
    INT32 = 2
    UINT8 = 3
    INT64 = 4
    INT16 = 7
    INT8 = 9


# Field slots (declaration order in schema.fbs) of what a device reads:
#   table Model { version; operator_codes; subgraphs; description; buffers; metadata_buffer; metadata; ... }
#   table Buffer { data; offset; size }        table Metadata { name; buffer }
MODEL_BUFFERS, MODEL_METADATA = 4, 6
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2
METADATA_NAME, METADATA_BUFFER = 0, 1


def is_tflite(data: bytes) -> bool:
    """Has the TFLite flatbuffer file identifier (``TFL3`` at bytes 4..8)."""
    return len(data) >= 8 and bytes(data[4:8]) == TFLITE_ID


def check_tflite(data: bytes) -> None:
    if not is_tflite(data):
        raise ValueError("not a TFLite flatbuffer (missing 'TFL3' file identifier)")


# -- flatbuffer tables by field slot (flatbuffers only) ----------------------------------------


def root(data: bytes) -> Table:
    """The root table of a flatbuffer (its offset is the first 4 bytes)."""
    return Table(data, encode.Get(packer.uoffset, data, 0))


def _offset(t: Table, slot: int) -> int:
    return t.Offset(4 + 2 * slot)  # the vtable: 2 sizes, then one uint16 per field


def field(t: Table, slot: int) -> Table | None:
    """A sub-table (or union value) field; None when unset."""
    o = _offset(t, slot)
    return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def tables(t: Table, slot: int) -> list[Table]:
    """A vector-of-tables field; empty when unset."""
    o = _offset(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def string(t: Table, slot: int) -> str | None:
    o = _offset(t, slot)
    return t.String(o + t.Pos).decode("utf-8") if o else None


def byte_span(t: Table, slot: int) -> tuple[int, int] | None:
    """``(start, length)`` of a ubyte-vector field in the buffer; None when unset."""
    o = _offset(t, slot)
    return (t.Vector(o), t.VectorLen(o)) if o else None


def floats(t: Table, slot: int) -> list[float] | None:
    o = _offset(t, slot)
    if not o:
        return None
    return list(struct.unpack_from(f"<{t.VectorLen(o)}f", t.Bytes, t.Vector(o)))


def scalar(t: Table, slot: int, flags, default=0):
    o = _offset(t, slot)
    return t.Get(flags, o + t.Pos) if o else default


# -- reading a model on a device -----------------------------------------------------------------


def model_table(data: bytes) -> Table:
    """The ``Model`` root table of a ``.tflite`` (raises ValueError unless it is one)."""
    check_tflite(data)
    return root(data)


def buffer_overrun(data: bytes) -> str | None:
    """Which weight buffer lies (partly) past the end of ``data``; None when all are inside.

    Raises IndexError or struct.error when the tables themselves point outside.
    """
    model, size = model_table(data), len(data)
    if model.Pos >= size:
        return f"root table at byte {model.Pos} is past the end"
    for i, buffer in enumerate(tables(model, MODEL_BUFFERS)):
        span = byte_span(buffer, BUFFER_DATA)
        if span and sum(span) > size:
            return f"weight buffer {i} ends at byte {sum(span)}, past the end"
        offset = scalar(buffer, BUFFER_OFFSET, Uint64Flags)  # weights stored after the flatbuffer
        end = offset + scalar(buffer, BUFFER_SIZE, Uint64Flags)
        if offset > 1 and end > size:
            return f"weight buffer {i} ends at byte {end}, past the end"
    return None


def metadata_buffer(data: bytes, name: str) -> bytes | None:
    """The bytes of the buffer that the ``Model.metadata`` entry ``name`` points at; None when
    the model has no such entry, ``b""`` when the entry points at no (or an empty) buffer."""
    model = model_table(data)
    for entry in tables(model, MODEL_METADATA):
        if string(entry, METADATA_NAME) != name:
            continue
        buffers = tables(model, MODEL_BUFFERS)
        index = scalar(entry, METADATA_BUFFER, Uint32Flags)
        span = byte_span(buffers[index], BUFFER_DATA) if index < len(buffers) else None
        return bytes(data[span[0]:sum(span)]) if span else b""
    return None


# -- the generated schema (ai-edge-litert) ---------------------------------------------------------


def schema():
    """LiteRT's generated schema module (imported on first use)."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(data: bytes):
    """The ``Model`` of ``data`` through the generated reader (lazy, copies nothing)."""
    check_tflite(data)
    return schema().Model.GetRootAs(data, 0)


def unpack(data: bytes):
    """``ModelT``: the whole model as Python objects, to edit and then :func:`pack`."""
    check_tflite(data)
    return schema().ModelT.InitFromPackedBuf(data, 0)


class _AlignedBuilder(flatbuffers.Builder):
    """schema.fbs declares ``Buffer.data`` with ``force_align: 16`` (the converter honours it)
    but the generated ``Pack`` does not, so a re-packed model would have unaligned weights."""

    def StartVector(self, elemSize, numElems, alignment):
        if elemSize == 1:
            alignment = max(alignment, 16)
        return super().StartVector(elemSize, numElems, alignment)


def pack(model, size_hint: int = 1024) -> bytes:
    """The ``.tflite`` bytes of a ``ModelT`` (see :func:`unpack`), weights 16-byte aligned."""
    builder = _AlignedBuilder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_ID)
    return bytes(builder.Output())


def inline_buffers(data: bytes) -> bytes:
    """``data`` with every buffer stored inside the flatbuffer. Some writers (the LiteRT
    Quantizer) append weights after the flatbuffer and point at them by offset; the metadata
    writer and older runtimes expect them inline."""
    import numpy as np

    model = unpack(data)
    if not any(b.offset > 1 for b in (model.buffers or [])):
        return bytes(data)
    for b in model.buffers:
        if b.offset > 1:
            b.data = np.frombuffer(data, np.uint8, count=b.size, offset=b.offset)
            b.offset = b.size = 0
    return pack(model, size_hint=len(data) + (1 << 20))


def io_tensors(data: bytes):
    """``(input, output)``: the generated ``Tensor`` readers of subgraph 0's first input and output."""
    graph = read_model(data).Subgraphs(0)
    return graph.Tensors(graph.Inputs(0)), graph.Tensors(graph.Outputs(0))


def tensor_names(data: bytes) -> list[str]:
    """Subgraph 0's tensor names, by tensor index."""
    graph = read_model(data).Subgraphs(0)
    return [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]
