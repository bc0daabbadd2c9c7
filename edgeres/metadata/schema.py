"""What edgeres writes and reads of ``metadata_schema.fbs`` (v1.5.0): identifiers, enum values,
and each table's field slots, named once for the writer and the reader.

A field's slot is its position in the table's declaration; a union field takes two slots, its
``_type`` byte and then its value. ``tests/test_metadata.py`` reads what edgeres writes with
bindings ``flatc`` generated from the schema itself, so a wrong number here fails it.
"""

from __future__ import annotations

METADATA_NAME = "TFLITE_METADATA"  # the Model.metadata entry that holds the ModelMetadata buffer
METADATA_ID = b"M001"  # file identifier of a ModelMetadata flatbuffer
# Lowest parser version for identifier M001. Newer parser versions are only needed for fields we
# never write (tokenizers, tensor groups, audio, AssociatedFile.version, custom_metadata...), so
# this is exactly what tflite_support's GetMinimumMetadataParserVersion returns for our metadata.
MIN_PARSER_VERSION = "1.0.0"

LABELS_FILE = "labels.txt"
EXTRA_JSON_FILE = "edgeres.json"


# -- enums and unions ---------------------------------------------------------------------------

class AssociatedFileType:
    DESCRIPTIONS = 1
    TENSOR_AXIS_LABELS = 2


COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}  # ColorSpaceType
COLOR_SPACE_RGB = 1


class ContentProperties:  # union: NONE, FeatureProperties, ImageProperties, ...
    FEATURE_PROPERTIES = 1
    IMAGE_PROPERTIES = 2


class ProcessUnitOptions:  # union: NONE, NormalizationOptions, ScoreCalibrationOptions, ScoreThresholdingOptions, ...
    NORMALIZATION_OPTIONS = 1
    SCORE_THRESHOLDING_OPTIONS = 3


# -- tables: field slots, and how many fields each has --------------------------------------------

class ModelMetadata:
    NAME, DESCRIPTION, VERSION, SUBGRAPH_METADATA, AUTHOR, LICENSE, ASSOCIATED_FILES, MIN_PARSER_VERSION = range(8)
    FIELDS = 8


class SubGraphMetadata:
    NAME, DESCRIPTION, INPUT_TENSOR_METADATA, OUTPUT_TENSOR_METADATA, ASSOCIATED_FILES = range(5)
    FIELDS = 10  # then input/output_process_units, input/output_tensor_groups, custom_metadata


class TensorMetadata:
    NAME, DESCRIPTION, DIMENSION_NAMES, CONTENT, PROCESS_UNITS, STATS, ASSOCIATED_FILES = range(7)
    FIELDS = 7


class Content:
    CONTENT_PROPERTIES_TYPE, CONTENT_PROPERTIES, RANGE = range(3)
    FIELDS = 3


class FeatureProperties:
    FIELDS = 0


class ImageProperties:
    COLOR_SPACE, DEFAULT_SIZE = range(2)
    FIELDS = 2


class ImageSize:
    WIDTH, HEIGHT = range(2)
    FIELDS = 2


class ProcessUnit:
    OPTIONS_TYPE, OPTIONS = range(2)
    FIELDS = 2


class NormalizationOptions:
    MEAN, STD = range(2)
    FIELDS = 2


class ScoreThresholdingOptions:  # MediaPipe drops categories scoring below it unless the app sets its own
    GLOBAL_SCORE_THRESHOLD = 0
    FIELDS = 1


class Stats:
    MAX, MIN = range(2)
    FIELDS = 2


class AssociatedFile:
    NAME, DESCRIPTION, TYPE, LOCALE, VERSION = range(5)
    FIELDS = 5
