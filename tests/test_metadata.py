"""Tests for edgeres.metadata: embedding TFLite Model Metadata (labels etc.)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.interpreter import Interpreter

import edgeres.metadata as md
from edgeres.clients import find_mediapipe_python
from edgeres.metadata import embed_metadata, read_labels, read_metadata

pytestmark = pytest.mark.slow

LABELS = ["cats", "dogs"]
SIZE = 32


def _embed(model: bytes, **overrides) -> bytes:
    kwargs = {"labels": LABELS, "name": "tiny", "description": "tiny cats vs dogs", "input_size": SIZE,
              "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "version": "1.2.3"}
    kwargs.update(overrides)
    return embed_metadata(model, **kwargs)


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """A tiny float32 classifier and its full-integer (uint8 I/O) version."""
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()

    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    int8_model = conv.convert()
    return {"float32": float_model, "int8": int8_model}


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interp.invoke()
    return interp.get_tensor(out["index"]).copy()


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_embedded_model_runs_identically(models, kind):
    plain = models[kind]
    embedded = _embed(plain)
    assert len(embedded) > len(plain)
    x = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3))
    expected, got = _run(plain, x), _run(embedded, x)
    assert got.dtype == (np.uint8 if kind == "int8" else np.float32)
    assert got.shape == (1, len(LABELS))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_round_trip(models, kind, tmp_path):
    extra = json.dumps({"arch": "tiny", "kind": kind})
    path = tmp_path / "model.tflite"
    path.write_bytes(_embed(models[kind], extra_json=extra))

    assert read_labels(path) == LABELS
    assert read_labels(str(path)) == LABELS
    meta = read_metadata(path)
    assert meta is not None
    assert meta["name"] == "tiny"
    assert meta["description"] == "tiny cats vs dogs"
    assert meta["version"] == "1.2.3"
    assert meta["author"] == "edgeres"
    assert meta["min_parser_version"] == "1.0.0"
    assert meta["labels"] == LABELS
    assert meta["labels_file"] == "labels.txt"
    assert meta["mean"] == [0.0, 0.0, 0.0]
    assert meta["std"] == [1.0, 1.0, 1.0]
    assert meta["input_size"] == SIZE
    assert meta["color_space"] == "RGB"
    assert meta["input_tensor"] == "image" and meta["output_tensor"] == "score"
    assert json.loads(meta["extra_json"]) == {"arch": "tiny", "kind": kind}
    assert meta["associated_files"] == ["edgeres.json", "labels.txt"]


def test_file_layout_matches_tflite_support(models):
    """Flatbuffer first, TFLITE_METADATA entry -> M001 buffer, stored zip last."""
    embedded = _embed(models["int8"], mean=[127.5], std=[127.5])
    assert embedded[4:8] == b"TFL3"

    model = tfl.Model.GetRootAs(embedded, 0)
    entries = [model.Metadata(i) for i in range(model.MetadataLength())]
    ours = [e for e in entries if e.Name() == b"TFLITE_METADATA"]
    assert len(ours) == 1
    metadata = model.Buffers(ours[0].Buffer()).DataAsNumpy().tobytes()
    assert metadata[4:8] == b"M001"

    with zipfile.ZipFile(io.BytesIO(embedded)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["labels.txt"]
        # MediaPipe refuses compressed associated files.
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert zf.read("labels.txt") == b"cats\ndogs"
        # The zip starts right after the flatbuffer.
        assert embedded[infos[0].header_offset:infos[0].header_offset + 4] == b"PK\x03\x04"

    meta = read_metadata(embedded)
    assert meta["mean"] == [127.5] and meta["std"] == [127.5]
    assert meta["extra_json"] is None


def test_weight_buffers_stay_16_byte_aligned(models):
    embedded = _embed(models["float32"])
    model = tfl.Model.GetRootAs(embedded, 0)
    checked = 0
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            start = buf._tab.Vector(buf._tab.Offset(4))
            assert start % 16 == 0, f"buffer {i} data at offset {start}"
            checked += 1
    assert checked >= 3  # conv kernel, bias, dense kernel... and the metadata


def test_reembedding_replaces_metadata(models):
    once = _embed(models["int8"], extra_json="{}")
    assert _embed(once, extra_json="{}") == once  # deterministic and idempotent

    relabelled = _embed(once, labels=["cat", "dog"])
    assert read_labels(relabelled) == ["cat", "dog"]
    assert read_metadata(relabelled)["associated_files"] == ["labels.txt"]
    model = tfl.Model.GetRootAs(relabelled, 0)
    names = [model.Metadata(i).Name() for i in range(model.MetadataLength())]
    assert names.count(b"TFLITE_METADATA") == 1
    assert model.BuffersLength() == tfl.Model.GetRootAs(once, 0).BuffersLength()


def test_model_without_metadata(models):
    assert read_metadata(models["float32"]) is None
    with pytest.raises(ValueError, match="labels.txt"):
        read_labels(models["float32"])
    with pytest.raises(ValueError, match="TFLite"):
        read_metadata(b"not a model at all")


@pytest.mark.parametrize("overrides, message", [
    ({"labels": ["cats", "dogs", "birds"]}, "3 labels"),
    ({"labels": ["cats", "do\ngs"]}, "invalid label"),
    ({"labels": []}, "non-empty"),
    ({"input_size": 64}, "input_size"),
    ({"mean": [0.0, 0.0], "std": [1.0, 1.0]}, "1 or 3"),
    ({"mean": [0.0], "std": [1.0, 1.0, 1.0]}, "1 or 3"),
    ({"std": [1.0, 0.0, 1.0]}, "non-zero"),
    ({"score_threshold": 1.0}, "score_threshold"),
    ({"score_threshold": float("nan")}, "score_threshold"),
])
def test_invalid_arguments(models, overrides, message):
    with pytest.raises(ValueError, match=message):
        _embed(models["float32"], **overrides)


def test_reading_needs_only_flatbuffers_and_stdlib(models, tmp_path):
    """read_* must work with only numpy + flatbuffers + stdlib installed."""
    model_path = tmp_path / "m.tflite"
    model_path.write_bytes(_embed(models["int8"]))
    script = textwrap.dedent(f"""
        import importlib.util, sys
        BLOCKED = ("tensorflow", "ai_edge_litert", "mediapipe", "tflite_support", "keras")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        spec = importlib.util.spec_from_file_location("metadata", {str(Path(md.__file__))!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.read_labels({str(model_path)!r}) == ["cats", "dogs"]
        assert mod.read_metadata({str(model_path)!r})["name"] == "tiny"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.skipif(find_mediapipe_python() is None,
                    reason="no MediaPipe interpreter: run scripts/setup (or set EDGERES_MEDIAPIPE_PYTHON)")
def test_mediapipe_image_classifier_reads_labels(models, tmp_path):
    """MediaPipe Tasks ImageClassifier returns our category names (separate venv)."""
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(image)
    script = Path(__file__).resolve().parents[1] / "examples" / "mediapipe_classifier.py"

    def classify(model: bytes) -> subprocess.CompletedProcess:
        path = tmp_path / "m.tflite"
        path.write_bytes(model)
        return subprocess.run([find_mediapipe_python(), str(script), str(path), str(image)],
                              check=False, capture_output=True, text=True, timeout=120)

    for kind in ("int8", "float32"):
        proc = classify(_embed(models[kind]))
        assert proc.returncode == 0, proc.stderr
        rows = [line.split("\t") for line in proc.stdout.splitlines()]
        assert sorted(name for _, name, _ in rows) == LABELS
        assert abs(sum(float(score) for *_, score in rows) - 1.0) < 0.02

    assert classify(models["int8"]).returncode == 1  # runs, but categories have no names
    assert classify(models["float32"]).returncode == 2  # float input needs NormalizationOptions


# -- cut models (issue 14, item 3) ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_check_model_bytes_accepts_whole_models(models, kind):
    md.check_model_bytes(models[kind])  # bare: no metadata, buffers only
    md.check_model_bytes(_embed(models[kind], extra_json=json.dumps({"x": "y" * 3000})))


def test_check_model_bytes_finds_every_cut(models):
    """Any cut of an embedded model is caught: in the appended zip by the metadata's file list
    and CRCs, in the flatbuffer by the weight-buffer bounds."""
    blob = _embed(models["int8"], extra_json=json.dumps({"x": "y" * 3000}))
    zip_start = min(i.header_offset for i in zipfile.ZipFile(io.BytesIO(blob)).infolist())
    for cut in (1, 22, 100, 1024, 3000, len(blob) - zip_start, len(blob) - zip_start + 16, len(blob) // 2):
        with pytest.raises(md.CorruptModelError) as e:
            md.check_model_bytes(blob[:-cut])
        if cut <= len(blob) - zip_start:
            assert "its metadata names edgeres.json, labels.txt" in str(e.value), cut
    for cut in (16, 256, zip_start // 2):  # into the flatbuffer: the zip is gone and, deeper, the weights
        with pytest.raises(md.CorruptModelError):
            md.check_model_bytes(blob[:zip_start - cut])


def test_check_model_bytes_finds_a_damaged_associated_file(models):
    blob = bytearray(_embed(models["int8"]))
    i = blob.rindex(b"cats\ndogs")
    blob[i] = ord("b")  # same length, wrong CRC
    with pytest.raises(md.CorruptModelError, match="missing or cut"):
        md.check_model_bytes(bytes(blob))



# -- an independent reader: bindings flatc generated from metadata_schema.fbs (issue 15) ---------


def _generated_schema():
    """tests/metadata_schema/metadata_schema_generated.py (see the README there)."""
    import importlib.util

    path = Path(__file__).with_name("metadata_schema") / "metadata_schema_generated.py"
    spec = importlib.util.spec_from_file_location("metadata_schema_generated", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _union(table, value):
    """A union member read as ``table`` (the generated reader hands out bare tables)."""
    obj = table()
    obj.Init(value.Bytes, value.Pos)
    return obj


def _independent_read(blob: bytes) -> dict:
    """Everything edgeres writes, read with LiteRT's generated Model reader and flatc's generated
    ModelMetadata reader: no slot number from edgeres involved."""
    fb = _generated_schema()
    model = tfl.Model.GetRootAs(blob, 0)
    entry = next(model.Metadata(i) for i in range(model.MetadataLength())
                 if model.Metadata(i).Name() == b"TFLITE_METADATA")
    data = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert fb.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)
    md = fb.ModelMetadata.GetRootAs(data, 0)

    def files(table):
        return [(f.Name().decode(), f.Type()) for f in (table.AssociatedFiles(i) for i in range(table.AssociatedFilesLength()))]

    def stats(tensor):
        s = tensor.Stats()
        return None if s is None else (s.MinAsNumpy().tolist(), s.MaxAsNumpy().tolist())

    assert md.SubgraphMetadataLength() == 1
    sg = md.SubgraphMetadata(0)
    assert sg.InputTensorMetadataLength() == sg.OutputTensorMetadataLength() == 1
    inp, out = sg.InputTensorMetadata(0), sg.OutputTensorMetadata(0)
    image = _union(fb.ImageProperties, inp.Content().ContentProperties())
    assert inp.ProcessUnitsLength() == 1
    unit = inp.ProcessUnits(0)
    norm = _union(fb.NormalizationOptions, unit.Options())
    return {
        "name": md.Name(), "description": md.Description(), "version": md.Version(), "author": md.Author(),
        "license": md.License(), "min_parser_version": md.MinParserVersion(), "model_files": files(md),
        "subgraph": (sg.Name(), sg.Description(), files(sg)),
        "input": (inp.Name(), inp.Description(), inp.DimensionNamesLength()),
        "input_content": (inp.Content().ContentPropertiesType(), image.ColorSpace(),
                          image.DefaultSize().Width(), image.DefaultSize().Height()),
        "normalization": (unit.OptionsType(), norm.MeanAsNumpy().tolist(), norm.StdAsNumpy().tolist()),
        "input_stats": stats(inp), "input_files": files(inp),
        "output": (out.Name(), out.Description(), out.ProcessUnitsLength()),
        "output_content": out.Content().ContentPropertiesType(),
        "output_stats": stats(out), "output_files": files(out),
    }


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_independent_reader_sees_every_field(models, kind):
    """What edgeres writes, as the schema's own generated reader sees it (a slot number wrong in
    edgeres/metadata/schema.py fails here, though edgeres would read its own mistake back)."""
    fb = _generated_schema()
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    got = _independent_read(_embed(models[kind], mean=mean, std=std, extra_json="{}"))
    f32 = lambda values: np.float32(values).tolist()  # noqa: E731 -- stored as float32
    if kind == "int8":
        input_stats, output_stats = ([0.0], [255.0]), ([0.0], [255.0])
    else:
        input_stats = (f32([-m / s for m, s in zip(mean, std)]), f32([(255 - m) / s for m, s in zip(mean, std)]))
        output_stats = ([0.0], [1.0])
    assert got == {
        "name": b"tiny", "description": b"tiny cats vs dogs", "version": b"1.2.3", "author": b"edgeres",
        "license": None, "min_parser_version": b"1.0.0",
        "model_files": [("edgeres.json", fb.AssociatedFileType.DESCRIPTIONS)],
        "subgraph": (None, None, []),
        "input": (b"image", b"Input image to be classified.", 0),
        "input_content": (fb.ContentProperties.ImageProperties, fb.ColorSpaceType.RGB, SIZE, SIZE),
        "normalization": (fb.ProcessUnitOptions.NormalizationOptions, f32(mean), f32(std)),
        "input_stats": input_stats, "input_files": [],
        "output": (b"score", b"Score of the labels respectively.", 0),
        "output_content": fb.ContentProperties.FeatureProperties,
        "output_stats": output_stats,
        "output_files": [("labels.txt", fb.AssociatedFileType.TENSOR_AXIS_LABELS)],
    }


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_score_threshold_is_the_outputs_score_thresholding_options(models, kind):
    """The uncertain band (issue 26) as the schema's generated reader sees it: one process unit
    on the output tensor, ScoreThresholdingOptions, global_score_threshold as float32; the model's
    computation is unchanged; edgeres reads the same value back, and None when there is none."""
    fb = _generated_schema()
    blob = _embed(models[kind], score_threshold=0.58)
    model = tfl.Model.GetRootAs(blob, 0)
    entry = next(model.Metadata(i) for i in range(model.MetadataLength())
                 if model.Metadata(i).Name() == b"TFLITE_METADATA")
    md_ = fb.ModelMetadata.GetRootAs(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes(), 0)
    out = md_.SubgraphMetadata(0).OutputTensorMetadata(0)
    assert out.ProcessUnitsLength() == 1
    unit = out.ProcessUnits(0)
    assert unit.OptionsType() == fb.ProcessUnitOptions.ScoreThresholdingOptions
    assert _union(fb.ScoreThresholdingOptions, unit.Options()).GlobalScoreThreshold() == np.float32(0.58)
    assert read_metadata(blob)["score_threshold"] == np.float32(0.58)
    assert read_metadata(_embed(models[kind]))["score_threshold"] is None
    assert _independent_read(blob)["normalization"] == _independent_read(_embed(models[kind]))["normalization"]
    x = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3))
    np.testing.assert_array_equal(_run(blob, x), _run(models[kind], x))


def test_independent_reader_catches_a_wrong_slot(models, monkeypatch):
    """The check above can fail: swap two slots in edgeres's schema and edgeres still reads its
    own metadata back unchanged, while the generated reader sees the fields crossed."""
    from edgeres.metadata import schema

    monkeypatch.setattr(schema.Stats, "MAX", 1)
    monkeypatch.setattr(schema.Stats, "MIN", 0)
    monkeypatch.setattr(schema.ImageSize, "WIDTH", 1)
    monkeypatch.setattr(schema.ImageSize, "HEIGHT", 0)
    monkeypatch.setattr(schema.TensorMetadata, "NAME", 1)
    monkeypatch.setattr(schema.TensorMetadata, "DESCRIPTION", 0)
    blob = _embed(models["int8"], input_size=SIZE)
    assert read_metadata(blob)["input_tensor"] == "image"  # the round trip cannot tell
    got = _independent_read(blob)
    assert got["input"][0] == b"Input image to be classified."
    assert got["output_stats"] == ([255.0], [0.0])


def test_tflite_reader_agrees_with_litert_generated_reader(models):
    """edgeres.tflite reads a model's buffers and metadata entries with field slots it names
    itself (it must work without LiteRT's bindings); LiteRT's generated reader must agree."""
    from edgeres import tflite
    from flatbuffers.number_types import Uint64Flags

    assert {t.name: t.value for t in tflite.TensorType} == {t.name: getattr(tfl.TensorType, t.name) for t in tflite.TensorType}
    blob = _embed(models["int8"], extra_json="{}")
    model, raw = tfl.Model.GetRootAs(blob, 0), tflite.model_table(blob)
    buffers = tflite.tables(raw, tflite.MODEL_BUFFERS)
    assert len(buffers) == model.BuffersLength() >= 4
    for i, buffer in enumerate(buffers):
        span = tflite.byte_span(buffer, tflite.BUFFER_DATA)
        expected = model.Buffers(i).DataAsNumpy()
        assert (blob[span[0]:sum(span)] if span else b"") == (expected.tobytes() if model.Buffers(i).DataLength() else b"")
        assert tflite.scalar(buffer, tflite.BUFFER_OFFSET, Uint64Flags) == model.Buffers(i).Offset()
        assert tflite.scalar(buffer, tflite.BUFFER_SIZE, Uint64Flags) == model.Buffers(i).Size()
    entries = tflite.tables(raw, tflite.MODEL_METADATA)
    assert [tflite.string(e, tflite.METADATA_NAME) for e in entries] == \
        [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert tflite.metadata_buffer(blob, "TFLITE_METADATA")[4:8] == b"M001"
    assert tflite.buffer_overrun(blob) is None and tflite.tensor_names(blob)
