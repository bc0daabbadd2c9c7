"""edgeres: a folder of labelled photos -> ResNet-50 -> a faithful int8 .tflite on LiteRT.

Stages, one module each: data, model, train, calibrate, export (TensorFlow side);
preprocess, metadata, runtime, evaluate, bench, camera (device side, no TensorFlow).
"""

import os as _os

# TensorFlow's C++ INFO chatter (oneDNN notices, absl preamble) is noise for CLI users.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
