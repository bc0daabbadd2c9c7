"""The fake-quantized twin of an edgeres classifier: the int8 model edgeres exports, in Keras.

``qat_classifier(model)`` rebuilds a trained ResNet v1 classifier (``resnet50`` or
``resnet-tiny``) layer by layer, the way TFLite's int8 model computes it:

- every convolution with its BatchNorm folded in (frozen statistics; the *unfolded* kernel stays
  the trained variable: folded kernels are tiny at this model's pixel scale and Adam's steps
  rewrote them, issue 27), weights fake-quantized per output channel, symmetric int8;
- the Dense head, weights fake-quantized per tensor (per-channel does not convert:
  "mismatched quantized axes");
- one per-tensor activation fake quant at each tensor the int8 model stores: the pixels
  (0..255, scale 1), the normalisation, every conv output (after its ReLU where one follows;
  the shortcut and the last conv of a block before the add), every residual add after its ReLU,
  the average pool and the logits.

The fake quants are ``keras.quantizers.fake_quant_with_min_max_vars``, which on TensorFlow is
``tf.quantization.fake_quant_*``: TFLite's converter reads their ranges as the int8 scales.
Activation ranges start from edgeres's calibration rule (``edgeres.qat``) and follow an
exponential moving average of each training batch's min/max (TF-MOT's rule).
"""

from __future__ import annotations

import contextlib
import re

import keras
from keras import layers, ops
from keras.quantizers import fake_quant_with_min_max_vars

from edgeres.config import Arch
from edgeres.model import PixelNormalization, backbone_of

RANGE_DECAY = 0.999  # TF-MOT's MovingAverageQuantizer default
QAT_ARCHS = (Arch.RESNET50, Arch.RESNET_TINY)


class QATError(ValueError):
    """A model edgeres cannot fake-quantize; the message says why and what to use."""


def _weight_quant(kernel, per_channel: bool):
    """Symmetric int8 (-127..127, zero point 0) fake quant of a kernel, per last axis or per tensor."""
    axes = tuple(range(len(kernel.shape) - 1)) if per_channel else None
    bound = ops.maximum(ops.stop_gradient(ops.max(ops.abs(kernel), axis=axes)), 1e-8)
    return fake_quant_with_min_max_vars(kernel, -bound, bound, num_bits=8, narrow_range=True,
                                        axis=-1 if per_channel else None)


@keras.saving.register_keras_serializable(package="edgeres")
class FakeQuant(layers.Layer):
    """Per-tensor int8 fake quantization with a tracked range (``fixed``: a range that never moves)."""

    def __init__(self, fixed=None, decay: float = RANGE_DECAY, **kwargs):
        super().__init__(**kwargs)
        self.fixed = tuple(fixed) if fixed is not None else None
        self.decay = float(decay)
        self.enabled = True  # off: the float model (calibration, float32 export)

    def build(self, input_shape):
        lo, hi = self.fixed or (-6.0, 6.0)
        self.range_min = self.add_weight(name="range_min", shape=(), initializer=keras.initializers.Constant(lo),
                                         trainable=False)
        self.range_max = self.add_weight(name="range_max", shape=(), initializer=keras.initializers.Constant(hi),
                                         trainable=False)

    def call(self, x, training=None):
        if not self.enabled:
            return x
        if training and self.fixed is None:
            d = self.decay
            self.range_min.assign(d * self.range_min + (1 - d) * ops.minimum(ops.stop_gradient(ops.min(x)), 0.0))
            self.range_max.assign(d * self.range_max + (1 - d) * ops.maximum(ops.stop_gradient(ops.max(x)), 0.0))
        return fake_quant_with_min_max_vars(x, self.range_min, self.range_max, num_bits=8)

    def get_config(self):
        return {**super().get_config(), "fixed": self.fixed, "decay": self.decay}


@keras.saving.register_keras_serializable(package="edgeres")
class FoldedConv2D(layers.Layer):
    """Conv2D + frozen BatchNorm (+ ReLU) as the int8 model computes it: one convolution with the
    folded kernel, fake-quantized per output channel, and the folded bias."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", use_bias=True, relu=False,
                 epsilon=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = int(filters), tuple(kernel_size)
        self.strides, self.padding = tuple(strides), padding
        self.use_bias, self.relu, self.epsilon = bool(use_bias), bool(relu), float(epsilon)
        self.enabled = True

    def build(self, input_shape):
        shape = (*self.kernel_size, input_shape[-1], self.filters)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        self.gamma = self.add_weight(name="gamma", shape=(self.filters,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(self.filters,), initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=(self.filters,), initializer="zeros",
                                           trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(self.filters,), initializer="ones",
                                               trainable=False)

    def folded(self):
        scale = self.gamma * ops.rsqrt(self.moving_variance + self.epsilon)
        kernel = self.kernel * scale
        bias = self.beta + ((self.bias if self.bias is not None else 0.0) - self.moving_mean) * scale
        return kernel, bias

    def call(self, x):
        kernel, bias = self.folded()
        if self.enabled:
            kernel = _weight_quant(kernel, per_channel=True)
        y = ops.conv(x, kernel, strides=self.strides, padding=self.padding) + bias
        return ops.relu(y) if self.relu else y

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "use_bias": self.use_bias,
                "relu": self.relu, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="edgeres")
class QuantDense(layers.Dense):
    """Dense with its kernel fake-quantized per tensor, symmetric int8."""

    enabled = True

    def call(self, x, training=None):
        kernel = _weight_quant(self.kernel, per_channel=False) if self.enabled else self.kernel
        return ops.matmul(x, kernel) + self.bias


@keras.saving.register_keras_serializable(package="edgeres")
class QuantPixelNormalization(PixelNormalization):
    """The pixel normalisation's fixed 1x1 convolution, its kernel quantized as TFLite will."""

    enabled = True

    def call(self, x):
        x = ops.cast(x, "float32")
        kernel, bias = self.kernel_and_bias()
        if self.enabled:
            kernel = _weight_quant(kernel, per_channel=True)
        return ops.conv(x, kernel, strides=1, padding="valid") + bias

    def kernel_and_bias(self):
        order = [2, 1, 0] if self.bgr else [0, 1, 2]
        kernel = [[0.0] * 3 for _ in range(3)]
        for out_channel, in_channel in enumerate(order):
            kernel[in_channel][out_channel] = 1.0 / self.std[out_channel]
        kernel = ops.reshape(ops.convert_to_tensor(kernel, "float32"), (1, 1, 3, 3))
        return kernel, ops.convert_to_tensor([-m / s for m, s in zip(self.mean, self.std)], "float32")


QUANT_LAYERS = (FakeQuant, FoldedConv2D, QuantDense, QuantPixelNormalization)


def is_qat_model(model: keras.Model) -> bool:
    return any(isinstance(layer, FakeQuant) for layer in model.layers)


def fake_quant_points(model: keras.Model) -> list[FakeQuant]:
    """The activation fake quants of a QAT model, in graph order."""
    return [layer for layer in model.layers if isinstance(layer, FakeQuant)]


@contextlib.contextmanager
def fake_quant(model: keras.Model, enabled: bool):
    """Switch every fake quantization of ``model`` on or off for code traced inside (the float
    model is the same weights without rounding). Traced functions cached earlier keep their state."""
    quant = [layer for layer in model.layers if isinstance(layer, QUANT_LAYERS)]
    before = [layer.enabled for layer in quant]
    for layer in quant:
        layer.enabled = enabled
    try:
        yield model
    finally:
        for layer, state in zip(quant, before):
            layer.enabled = state


def qat_classifier(model: keras.Model, arch: Arch | str) -> keras.Model:
    """The fake-quantized twin of the edgeres classifier ``model`` (its weights copied), ranges
    at placeholders until :func:`edgeres.qat.set_initial_ranges` sets them."""
    arch = Arch(arch)
    if arch not in QAT_ARCHS:
        raise QATError(f"edgeres qat supports {', '.join(a.value for a in QAT_ARCHS)}. Received: arch={arch.value} "
                       f"(its pre-activation BatchNorm follows an add, so it cannot be folded into a convolution).")
    backbone = backbone_of(model)
    source = {layer.name: layer for layer in backbone.layers}
    size = model.input_shape[1]
    normalize = model.get_layer("normalize")

    def conv(x, prefix: str, relu: bool):
        c, bn = source[prefix + "_conv"], source[prefix + "_bn"]
        folded = FoldedConv2D(c.filters, c.kernel_size, c.strides, c.padding, c.use_bias, relu, bn.epsilon,
                              name=prefix + "_conv")
        x = folded(x)
        folded.set_weights([*c.get_weights(), bn.gamma.numpy(), bn.beta.numpy(),
                            bn.moving_mean.numpy(), bn.moving_variance.numpy()])
        return FakeQuant(name=prefix + ("_relu" if relu else "_bn") + "_fq")(x)

    def copy(name, x):
        layer = source[name]
        return layer.__class__.from_config(layer.get_config())(x)

    inputs = keras.Input((size, size, 3), name="pixels")
    x = FakeQuant(fixed=(0.0, 255.0), name="pixels_fq")(inputs)
    x = QuantPixelNormalization(normalize.mean, normalize.std, normalize.bgr, name="normalize")(x)
    x = FakeQuant(name="normalize_fq")(x)
    if "conv1_pad" in source:
        x = copy("conv1_pad", x)
    x = conv(x, "conv1", relu=True)
    if "pool1_pad" in source:
        x = copy("pool1_pad", x)
    x = copy("pool1_pool", x)
    blocks = [m.group(1) for m in (re.fullmatch(r"(conv\d+_block\d+)_1_conv", n) for n in source) if m]
    expected = {"conv1_conv", "conv1_bn", "conv1_relu", "conv1_pad", "pool1_pad", "pool1_pool", "avg_pool",
                *(f"{b}_{i}_{k}" for b in blocks for i in range(4) for k in ("conv", "bn")),
                *(f"{b}_{i}_relu" for b in blocks for i in (1, 2)), *(f"{b}_{k}" for b in blocks for k in ("add", "out"))}
    unknown = [n for n, layer in source.items() if n not in expected and not isinstance(layer, layers.InputLayer)]
    if not blocks or unknown:
        raise QATError(f"{backbone.name} is not the ResNet v1 edgeres builds (unexpected layers: {unknown[:5]}); "
                       f"edgeres qat supports {', '.join(a.value for a in QAT_ARCHS)}.")
    for block in blocks:
        shortcut = conv(x, block + "_0", relu=False) if block + "_0_conv" in source else x
        y = conv(x, block + "_1", relu=True)
        y = conv(y, block + "_2", relu=True)
        y = conv(y, block + "_3", relu=False)
        x = layers.Add(name=block + "_add")([shortcut, y])
        x = layers.Activation("relu", name=block + "_out")(x)
        x = FakeQuant(name=block + "_out_fq")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = FakeQuant(name="avg_pool_fq")(x)
    x = layers.Dropout(model.get_layer("dropout").rate, name="dropout")(x)
    head = model.get_layer("logits")
    dense = QuantDense(head.units, name="logits")
    x = dense(x)
    dense.set_weights(head.get_weights())
    x = FakeQuant(name="logits_fq")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=model.name + "_qat")
