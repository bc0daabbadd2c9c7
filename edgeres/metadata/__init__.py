"""Embed and read standard TFLite Model Metadata for image classifiers.

Writes the same structure as tflite_support's ``MetadataPopulator`` and MediaPipe's
``metadata_writers.image_classifier``: a ``ModelMetadata`` flatbuffer (schema
``metadata_schema.fbs``, file identifier ``M001``) stored in a model buffer referenced by the
``TFLITE_METADATA`` entry of ``Model.metadata``, plus the associated files (``labels.txt``...)
appended to the ``.tflite`` as an uncompressed zip archive. MediaPipe Tasks (``ImageClassifier``)
and the TFLite Task Library read category names from it.

    schema.py   the identifiers, enum values and field slots used, named once
    write.py    embed_metadata (rewrites the model through edgeres.tflite: ai-edge-litert)
    read.py     read_metadata, read_labels, check_model_bytes (flatbuffers + stdlib only)

Neither tflite_support nor mediapipe is needed. ``tests/test_metadata.py`` reads what is
written here with bindings ``flatc`` generated from metadata_schema.fbs, and MediaPipe's
ImageClassifier reads the labels back.
"""

from edgeres.metadata.read import CorruptModelError, check_model_bytes, read_labels, read_metadata
from edgeres.metadata.schema import EXTRA_JSON_FILE, LABELS_FILE, METADATA_NAME
from edgeres.metadata.write import embed_metadata

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
