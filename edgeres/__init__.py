"""edgeres: a folder of labelled photos -> ResNet-50 -> a faithful int8 .tflite on LiteRT.

Stages, one module (or package) each: pipeline (tf.data), model, train, qat (quantization-aware
fine-tuning, ``edgeres.qat.qat``), export (TensorFlow side); data, calibrate, runtime, evaluate,
bench, camera, serve (device side, no TensorFlow), over what they share: preprocess, files,
outputs, tflite, metadata, plots, config.
``tests/test_structure.py`` holds the layers and checks that no import runs back up.
"""

import os as _os

# TensorFlow's C++ INFO chatter (oneDNN notices, absl preamble) is noise for CLI users.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
