"""The tf.data pipeline: a checked :class:`edgeres.data.Split` as batches for Keras.

Validation batches are exactly the runtime input (:func:`edgeres.preprocess.load_pixels` with the
run's resize); training batches vary the resize and crop the way real clients differ. TensorFlow
is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import numpy as np

from edgeres.data import Split
from edgeres.preprocess import DEFAULT_RESIZE, Resize, decode, load_pixels, to_pixels


def make_dataset(
    split: Split,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int,
    num_classes: int,
    resize: Resize | str = DEFAULT_RESIZE,
):
    """A batched ``tf.data.Dataset`` of ``(uint8 pixels as float32 [B,S,S,3], one-hot labels)``.

    Validation images are exactly the runtime input: :func:`edgeres.preprocess.load_pixels` with
    the run's ``resize``, the function predict, calibration and every client reproduce.

    Training images vary the resize the way real clients differ, so a model tolerates an app that
    resizes a little differently: each image is decoded (and cached) a little larger both with the
    run's rule and with Pillow's antialiasing, each step picks one of the two at random, then a
    random resized crop is brought to S x S by bilinear, antialiased bilinear or area resampling,
    again at random, and flipped.
    """
    import tensorflow as tf

    resize = Resize(resize)
    paths = [str(p) for p in split.paths]
    if not training:
        def load(path):
            return load_pixels(path.decode(), image_size, resize)

        def decode_fn(path, label):
            pixels = tf.numpy_function(load, [path], tf.uint8, stateful=False)
            pixels.set_shape([image_size, image_size, 3])
            return pixels, label

        ds = tf.data.Dataset.from_tensor_slices((paths, split.labels))
        ds = ds.map(decode_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    else:
        decode_size = int(round(image_size * 1.15))
        other = Resize.ANTIALIAS if resize is not Resize.ANTIALIAS else Resize.BILINEAR

        def load_both(path):
            image = decode(path.decode())
            return np.stack([to_pixels(image, decode_size, resize), to_pixels(image, decode_size, other)])

        def decode_fn(path, label):
            pixels = tf.numpy_function(load_both, [path], tf.uint8, stateful=False)
            pixels.set_shape([2, decode_size, decode_size, 3])
            return pixels, label

        ds = tf.data.Dataset.from_tensor_slices((paths, split.labels))
        ds = ds.map(decode_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        # Stateless ops fed by a seeded stream: the same --seed gives the same augmentations.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(8)
        ds = tf.data.Dataset.zip(ds, seeds)
        ds = ds.map(_augmenter(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def finish(pixels, label):
        return tf.cast(pixels, tf.float32), tf.one_hot(label, num_classes)

    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def _augmenter(image_size: int):
    import tensorflow as tf

    def resample(crop, choice):
        size = (image_size, image_size)
        return tf.switch_case(choice, [
            lambda: tf.image.resize(crop, size, method="bilinear", antialias=False),
            lambda: tf.image.resize(crop, size, method="bilinear", antialias=True),
            lambda: tf.image.resize(crop, size, method="area"),
        ])

    def augment(sample, seeds):
        both, label = sample
        seeds = tf.reshape(tf.cast(seeds % (2**31), tf.int32), (4, 2))
        # Which decode (the run's resize, or Pillow's antialiased one), and which crop resampling.
        which = tf.random.stateless_uniform([], seeds[2], maxval=2, dtype=tf.int32)
        method = tf.random.stateless_uniform([], seeds[3], maxval=3, dtype=tf.int32)
        pixels = tf.gather(both, which)
        box_begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(pixels),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.35, 1.0),
            use_image_if_no_bounding_boxes=True,
        )
        crop = tf.cast(tf.slice(pixels, box_begin, box_size), tf.float32)
        crop = resample(crop, method)
        crop = tf.image.stateless_random_flip_left_right(crop, seed=seeds[1])
        return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8), label

    return augment
