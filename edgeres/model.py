"""ResNet classifiers that take raw RGB pixels and carry their own normalisation.

``build_classifier -> backbone (keras.applications ResNet50 / ResNet50V2, or the small
resnet-tiny for tests) -> pooled features -> dropout -> softmax``. Layer names follow Keras's
``conv2_block1_1_conv`` scheme, so a quantization report can point at a layer a human can find.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

from edgeres._stderr import import_tensorflow_quietly

# Keras on TensorFlow (edgeres's engine) imports it anyway; its start-up notices are dropped
# first. The builder itself is backend-neutral (keras.ops only): benchmarks/gpu_check.py runs it
# on Keras's JAX backend where a machine has no TensorFlow.
if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    import_tensorflow_quietly()

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402


from edgeres.config import Arch  # noqa: E402 -- defined with the other config enums (the CLI types options with it)


# Each backbone's own preprocessing, expressed on 0..255 RGB input (timm-style config that
# travels with the model): v1 is Caffe-style (BGR, mean subtraction), v2 maps to [-1, 1].
PREPROCESSING = {
    Arch.RESNET50: dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), bgr=True),
    Arch.RESNET50V2: dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), bgr=False),
    Arch.RESNET_TINY: dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), bgr=False),
}


class WeightsError(ValueError):
    """ImageNet weights that cannot be had; the message says what to do instead."""


# Keras's published ImageNet backbones without their top, and their MD5s
# (keras/src/applications/resnet.py): what ``weights="imagenet"`` fetches into Keras's cache.
IMAGENET_NOTOP = {
    Arch.RESNET50: ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
    Arch.RESNET50V2: ("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "fac2f116257151a9d068a22e544a4917"),
}
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
# Per socket operation, not for the whole 94 MB: an offline machine fails at once (no DNS), a
# firewall that drops packets costs this long, a slow but live link still finishes.
DOWNLOAD_TIMEOUT_S = 15


@dataclass(frozen=True)
class Weights:
    """What a backbone starts from, decided once per run (``resolve_weights``)."""

    used: str  # recorded with the run: "imagenet" | "none" | the PATH of a notop file
    source: str | None  # what the builder loads: None, "imagenet" (Keras fetches it) or a file
    note: str = ""  # for the log: where the weights came from ("" for none asked for)

    @property
    def pretrained(self) -> bool:
        return self.used != "none"


def keras_cache_dir() -> Path:
    """Keras's download cache as it stands now: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = Path.home()
        home = (base if os.access(base, os.W_OK) else Path("/tmp")) / ".keras"  # Keras's own fallback
    return Path(home).expanduser() / "models"


def resolve_weights(arch: Arch | str, weights: str | Path | None,
                    *, on_download: Callable[[str], None] | None = None) -> Weights:
    """Decide what ``weights`` means for ``arch``; ``"auto"`` is ImageNet when it can be had.

    ``auto``: Keras's cached notop file (``keras_cache_dir()``), else one download attempt
    (``on_download`` is called with a line fragment first; the returned ``note`` completes it),
    else none. resnet-tiny has no ImageNet weights: auto is none there, without a note.
    ``imagenet``, ``none`` and a PATH mean just that; bad ones raise :class:`WeightsError`.
    """
    arch = Arch(arch)
    if str(weights).lower() != "auto":
        source = _resolve_weights(arch, weights)
        used = "none" if source is None else source
        return Weights(used, source, {"none": "", "imagenet": "ImageNet (Keras's download cache)"}.get(used, used))
    if arch not in IMAGENET_NOTOP:
        return Weights("none", None)
    fname, md5 = IMAGENET_NOTOP[arch]
    cache = keras_cache_dir()
    cached = cache / fname
    if cached.is_file():
        if _md5(cached) == md5:
            return Weights("imagenet", str(cached), f"ImageNet (Keras cache: {cached})")
        return Weights(str(cached), str(cached),
                       f"{cached} (in the Keras cache, but not Keras's published ImageNet file: its MD5 "
                       f"differs; used as given)")
    if on_download:
        on_download(f"{arch.value}'s ImageNet file is not in the Keras cache ({cache}); downloading it (94 MB) ... ")
    try:
        path = _download(fname, md5, cache)
    except Exception as e:  # offline, DNS, timeout, HTTP error, bad hash: all mean "not now"
        cached.unlink(missing_ok=True)  # Keras keeps a download whose MD5 is wrong; it was not there before
        # Keras's message: "URL fetch failure on URL: code -- reason"; the reason is what matters.
        reason = str(e).split(" -- ")[-1] or type(e).__name__
        why = f"this machine looks offline ({reason})" if str(e).startswith("URL fetch failure") else reason
        return Weights("none", None,
                       f"failed, {why}: training from scratch. To use ImageNet weights offline, copy {fname} "
                       f"into {cache} (or pass --weights none to skip the attempt).")
    return Weights("imagenet", str(path), "done")


def _download(fname: str, md5: str, cache: Path) -> str:
    """One try of Keras's own download (its cache, its MD5 check), its progress bar muted."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return keras.utils.get_file(fname, IMAGENET_URL + fname, cache_dir=str(cache.parent),
                                        cache_subdir=cache.name, file_hash=md5)
    finally:
        socket.setdefaulttimeout(previous)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@keras.saving.register_keras_serializable(package="edgeres")
class PixelNormalization(layers.Layer):
    """``(x[..., ::-1] if bgr else x) - mean) / std`` on 0..255 RGB pixels, always in float32.

    Computed as one fixed 1x1 convolution (a permutation matrix scaled by 1/std, bias -mean/std)
    rather than a channel flip and a subtraction: the TFLite converter gives an int8 REVERSE_V2
    output quantization parameters different from its input's, and the kernel copies bytes
    without rescaling them, so a flipped int8 image is garbage (max error ~114 pixel levels,
    measured with TF 2.21). A CONV_2D quantizes exactly like every other layer.
    """

    def __init__(self, mean, std, bgr=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean, self.std, self.bgr = tuple(mean), tuple(std), bool(bgr)

    def call(self, x):
        x = ops.cast(x, "float32")
        order = [2, 1, 0] if self.bgr else [0, 1, 2]
        kernel = [[0.0] * 3 for _ in range(3)]  # kernel[in][out]
        for out_channel, in_channel in enumerate(order):
            kernel[in_channel][out_channel] = 1.0 / self.std[out_channel]
        kernel = ops.reshape(ops.convert_to_tensor(kernel, "float32"), (1, 1, 3, 3))
        bias = ops.convert_to_tensor([-m / s for m, s in zip(self.mean, self.std)], "float32")
        return ops.conv(x, kernel, strides=1, padding="valid") + bias

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr}


def build_classifier(
    arch: Arch | str,
    num_classes: int,
    image_size: int = 224,
    *,
    weights: str | Path | None = None,
    dropout: float = 0.2,
    freeze_backbone: bool = False,
) -> keras.Model:
    """A classifier on ``[B, S, S, 3]`` RGB pixel values in 0..255 (float32 or uint8).

    ``weights``: ``"imagenet"`` (Keras's download cache), a local Keras weights file for the
    backbone without its top (``*_notop.h5``), ``None``/``"none"`` for random init, or
    ``"auto"`` (see :func:`resolve_weights`; ``edgeres.train`` resolves it once and says how).
    """
    arch = Arch(arch)
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, at least 32. Received: image_size={image_size}")
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes. Received: num_classes={num_classes}")
    weights = resolve_weights(arch, weights).source

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = PixelNormalization(**PREPROCESSING[arch], name="normalize")(inputs)
    backbone = _backbone(arch, image_size, weights)
    if weights is None:
        # From scratch on a few thousand photos there are only ~60 steps an epoch: with Keras's
        # BatchNorm momentum of 0.99 the moving statistics are still mostly their init after
        # 3 epochs and validation sits at chance. 0.9 tracks the batch statistics within an epoch.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9
    # A frozen backbone (trainable=False) runs its BatchNorm in inference mode. Keras 3's fit
    # overrides the training=False below (keras-team/keras#20285), so unfreeze_top keeps BN frozen.
    backbone.trainable = not freeze_backbone
    x = backbone(x, training=False if freeze_backbone else None)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"edgeres_{arch.value.replace('-', '_')}")


def compile_for_training(model: keras.Model, *, learning_rate: float, decay_steps: int, weight_decay: float,
                         label_smoothing: float, jit_compile: bool) -> None:
    """edgeres's recipe: AdamW on a cosine decay to 1% of ``learning_rate``, label smoothing."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, decay_steps), alpha=0.01)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def unfreeze_top(model: keras.Model, stages: int = 1) -> None:
    """Make the last ``stages`` ResNet stages (conv5, then conv4, ...) trainable for fine-tuning.

    Their BatchNorm layers stay frozen, so in inference mode: updating ImageNet statistics from a
    few small batches wrecks the features being fine-tuned (keras-io's transfer-learning guide).
    Keras 3 ignores a ``training=False`` on the nested backbone call once ``fit`` passes
    ``training=True`` (measured: conv5 moving variances moved 2% in two steps), so
    ``trainable=False`` is what keeps them in inference mode.
    """
    backbone = backbone_of(model)
    names = [f"conv{5 - i}_" for i in range(stages)] + ["post_"]
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = (layer.name.startswith(tuple(names))
                           and not isinstance(layer, layers.BatchNormalization))


def backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def _resolve_weights(arch: Arch, weights) -> str | None:
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights).lower() == "imagenet":
        if arch is Arch.RESNET_TINY:
            raise WeightsError("resnet-tiny has no ImageNet weights. Use --weights none.")
        return "imagenet"
    path = Path(weights).expanduser()
    if arch is Arch.RESNET_TINY:  # a file that would never be read must not pass as used
        raise WeightsError(
            f"--weights {path}: resnet-tiny has no pretrained weights, so this file would not be used. "
            f"Use --weights none with resnet-tiny, or --arch resnet50/resnet50v2 with a matching notop file."
        )
    if not path.is_file():
        raise WeightsError(
            f"Weights file not found: {path}. Pass --weights imagenet, --weights none, "
            f"or the path of a Keras {arch.value} 'notop' weights file (.h5)."
        )
    return str(path)


def _backbone(arch: Arch, image_size: int, weights: str | None) -> keras.Model:
    shape = (image_size, image_size, 3)
    if arch is Arch.RESNET_TINY:
        return resnet_tiny(shape)
    app = keras.applications.ResNet50 if arch is Arch.RESNET50 else keras.applications.ResNet50V2
    try:
        return app(include_top=False, weights=weights, input_shape=shape, pooling="avg", name=arch.value)
    except Exception as e:
        if weights != "imagenet":
            raise WeightsError(f"Could not load weights from {weights} into {arch.value}: {e}") from e
        raise WeightsError(
            f"Could not fetch ImageNet weights for {arch.value} ({type(e).__name__}: {e}). "
            f"This machine may be offline. Download "
            f"{'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5' if arch is Arch.RESNET50 else 'resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5'} "
            f"elsewhere and pass --weights PATH (or copy it to ~/.keras/models/), or train from scratch with --weights none."
        ) from e


# resnet-tiny: the same bottleneck block and naming as Keras's ResNet50 (v1), at 1/4 width
# and one block per stage. Small enough to train and quantize in seconds on a CPU.


def resnet_tiny(input_shape) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 7, strides=2, padding="same", use_bias=False, name="conv1_conv")(inputs)
    x = layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    for stage, filters in enumerate((16, 32, 64, 128), start=2):
        x = residual_block_v1(x, filters, stride=1 if stage == 2 else 2, name=f"conv{stage}_block1")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name="resnet-tiny")


def residual_block_v1(x, filters: int, stride: int, name: str):
    """Keras's ResNet v1 bottleneck block (1x1 -> 3x3 -> 1x1, projection shortcut)."""
    shortcut = layers.Conv2D(4 * filters, 1, strides=stride, use_bias=False, name=name + "_0_conv")(x)
    shortcut = layers.BatchNormalization(epsilon=1.001e-5, name=name + "_0_bn")(shortcut)
    x = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=name + "_1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=name + "_1_bn")(x)
    x = layers.Activation("relu", name=name + "_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name + "_2_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=name + "_2_bn")(x)
    x = layers.Activation("relu", name=name + "_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, use_bias=False, name=name + "_3_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=name + "_3_bn")(x)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def load_model(path: str | Path) -> keras.Model:
    """Load a saved edgeres classifier (this module registers its custom layer); a file Keras
    cannot read is a ModelError naming it."""
    from edgeres.bundle import ModelError

    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 -- Keras raises ValueError, OSError, zipfile errors alike
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"{path}: cannot be loaded as a Keras model ({type(e).__name__}: {reason}). "
                         f"It may be cut or corrupt: train the run again, or restore the file.") from e
