"""``--weights auto`` (issue 17): ImageNet weights from Keras's cache or one download, with the
frozen-then-fine-tuned recipe; from scratch with one line saying why when they cannot be had.

This machine cannot download the real file, so the ImageNet branch runs on a file written here
in the layout of Keras's published ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``
(Keras 2's ``.h5`` weights: ``layer_names`` attribute, one group per layer with its
``weight_names``), loaded by Keras's own loader; the download is mocked at ``keras.utils.get_file``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeres.config import TrainConfig

pytestmark = pytest.mark.slow

FNAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
OFFLINE = "URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -2] Name or service not known"


def write_keras_notop_h5(backbone, path: Path) -> None:
    """Keras 2's ``save_weights(*.h5)``, the format of the files Keras downloads (Keras 3's own
    ``save_weights`` only writes ``*.weights.h5``, a different layout)."""
    import h5py

    with h5py.File(path, "w") as f:
        # Keras 2 stored names as fixed-length byte strings (np.asarray of bytes: dtype "S").
        f.attrs["layer_names"] = np.asarray([layer.name.encode() for layer in backbone.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in backbone.layers:
            group = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights  # Keras's legacy order
            names = [f"{layer.name}/{w.name}:0" for w in weights]
            group.attrs["weight_names"] = np.asarray([n.encode() for n in names], dtype="S")
            for name, w in zip(names, weights):
                group.create_dataset(name, data=np.asarray(w.numpy()))


@pytest.fixture(scope="module")
def notop_file(tmp_path_factory) -> Path:
    """A ResNet-50 notop weights file with seeded random values (not those of any model built later)."""
    import keras

    keras.utils.set_random_seed(1234)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("weights") / FNAME
    write_keras_notop_h5(backbone, path)
    return path


def _h5(path: Path, layer: str, weight: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f[layer][f"{layer}/{weight}:0"][()]


@pytest.fixture
def download_calls(tmp_path, monkeypatch) -> list:
    """An empty ``$KERAS_HOME``, and Keras's download failing as it does offline (Keras's own
    message) unless a test mocks it otherwise; the list collects the calls."""
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    calls = []

    def offline(*args, **kwargs):
        calls.append(args[0])
        raise Exception(OFFLINE)

    monkeypatch.setattr(keras.utils, "get_file", offline)
    return calls


@pytest.fixture
def keras_home(download_calls, tmp_path) -> Path:
    return tmp_path / "keras"


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_written_file_has_keras_layout_and_keras_loads_it(notop_file):
    import h5py
    import keras

    with h5py.File(notop_file, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert names[1:3] == ["conv1_pad", "conv1_conv"] and names[-1] == "conv5_block3_out"
        assert [n.decode() for n in f["conv1_bn"].attrs["weight_names"]] == [
            "conv1_bn/gamma:0", "conv1_bn/beta:0", "conv1_bn/moving_mean:0", "conv1_bn/moving_variance:0"]
    # Keras's loader (order-based, what weights="imagenet" runs) takes every value, at another input size.
    loaded = keras.applications.ResNet50(include_top=False, weights=str(notop_file), input_shape=(64, 64, 3))
    convs = [layer for layer in loaded.layers if layer.weights]
    assert len(convs) == 106  # 53 convolutions, 53 batch norms
    for layer in convs:
        for w in layer.trainable_weights + layer.non_trainable_weights:
            np.testing.assert_array_equal(w.numpy(), _h5(notop_file, layer.name, w.name), err_msg=w.path)


def test_auto_resolution_cache_download_offline_and_tiny(notop_file, keras_home, download_calls, monkeypatch):
    import keras

    from edgeres import model as model_lib
    from edgeres.model import Weights, resolve_weights

    # resnet-tiny: no ImageNet weights, so auto is none, without a note and without a download try.
    assert resolve_weights("resnet-tiny", "auto") == Weights("none", None, "")
    assert download_calls == []
    # Nothing cached, offline: none, and a note that says why and what to do.
    started = []
    offline = resolve_weights("resnet50", "auto", on_download=started.append)
    assert download_calls == [FNAME]  # one try
    assert offline.used == "none" and offline.source is None and not offline.pretrained
    assert started == [f"resnet50's ImageNet file is not in the Keras cache ({keras_home / 'models'}); "
                       f"downloading it (94 MB) ... "]
    assert offline.note.startswith("failed, this machine looks offline ([Errno -2] Name or service not known): "
                                   "training from scratch.")
    assert FNAME in offline.note and str(keras_home / "models") in offline.note and "\n" not in offline.note

    # A download whose MD5 is wrong (Keras raises and keeps the file): removed, so it is never "cached".
    def corrupted(fname, origin, cache_dir, cache_subdir, file_hash):
        (Path(cache_dir) / cache_subdir).mkdir(parents=True, exist_ok=True)
        (Path(cache_dir) / cache_subdir / fname).write_bytes(b"half a file")
        raise ValueError("Incomplete or corrupted file detected. The md5 file hash does not match")

    monkeypatch.setattr(keras.utils, "get_file", corrupted)
    bad = resolve_weights("resnet50", "auto")
    assert bad.used == "none" and "Incomplete or corrupted" in bad.note
    assert not (keras_home / "models" / FNAME).exists()

    # The download, mocked at Keras's call: the file Keras would verify and cache, then used as ImageNet.
    def download(fname, origin, cache_dir, cache_subdir, file_hash):
        assert fname == FNAME and origin == model_lib.IMAGENET_URL + FNAME
        assert file_hash == "4d473c1dd8becc155b73f8504c6f6626"  # Keras's MD5 of the real file
        target = Path(cache_dir) / cache_subdir / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(notop_file, target)
        return str(target)

    monkeypatch.setattr(keras.utils, "get_file", download)
    cached = keras_home / "models" / FNAME
    got = resolve_weights("resnet50", "auto", on_download=started.append)
    assert got == Weights("imagenet", str(cached), "done") and cached.is_file() and len(started) == 2

    # Now cached, but not Keras's file (its MD5 differs): used as given, and said so, not called ImageNet.
    monkeypatch.setattr(keras.utils, "get_file", None)  # a second download would be a bug
    odd = resolve_weights("resnet50", "auto", on_download=started.append)
    assert odd.used == str(cached) and odd.source == str(cached) and odd.pretrained
    assert "MD5" in odd.note and len(started) == 2
    # With the MD5 Keras publishes for it, the cached file is ImageNet (no download).
    monkeypatch.setitem(model_lib.IMAGENET_NOTOP, model_lib.Arch.RESNET50, (FNAME, _md5(notop_file)))
    assert resolve_weights("resnet50", "auto") == Weights("imagenet", str(cached), f"ImageNet (Keras cache: {cached})")


def test_auto_offline_trains_from_scratch_after_one_line(small_dataset, keras_home, tmp_path, capsys):
    """resnet50, nothing cached, no network: the scratch recipe (whole network, no fine-tuning)."""
    from edgeres.train import train

    seen = {}
    run = tmp_path / "run"
    config = TrainConfig(data=str(small_dataset), out=str(run), arch="resnet50", image_size=32, batch_size=16,
                         epochs=1, max_per_class=16, seed=0)
    assert config.weights == "auto" and config.freeze_backbone is None and config.fine_tune_epochs is None
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Inspect(seen, run)], verbose=2)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "ImageNet" in ln or "scratch" in ln]
    assert len(lines) == 1 and lines[0].startswith("Weights: resnet50's ImageNet file is not in the Keras cache"), out
    assert "looks offline" in lines[0] and "training from scratch" in lines[0]
    assert seen["config"]["weights_used"] == "none"
    assert seen["config"]["train"]["freeze_backbone"] is False and seen["config"]["train"]["fine_tune_epochs"] == 0
    assert seen["trainable"] is True and seen["frozen"] == {"moving_mean", "moving_variance"}  # all but BN stats
    assert seen["momentum"] == 0.9  # the scratch recipe's BatchNorm (model.build_classifier)


def test_auto_with_cached_imagenet_file_freezes_then_fine_tunes_conv5(
        small_dataset, notop_file, keras_home, tmp_path, monkeypatch, capsys):
    from edgeres import model as model_lib
    from edgeres.model import load_model
    from edgeres.train import train

    cached = keras_home / "models" / FNAME
    cached.parent.mkdir(parents=True)
    shutil.copy(notop_file, cached)
    monkeypatch.setitem(model_lib.IMAGENET_NOTOP, model_lib.Arch.RESNET50, (FNAME, _md5(notop_file)))
    trainable = []
    run = tmp_path / "run"
    config = TrainConfig(data=str(small_dataset), out=str(run), arch="resnet50", image_size=32, batch_size=16,
                         epochs=1, max_per_class=16, seed=0)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C right after the frozen epoch's checkpoint
        train(config, callbacks=[_CountTrainable(trainable, interrupt_after=1)], verbose=2)
    out = capsys.readouterr().out
    assert (f"Weights: ImageNet (Keras cache: {cached}); backbone frozen for 1 epoch, then conv5 fine-tuned "
            f"for 1 epoch at 1/10 the learning rate.") in out.splitlines(), out

    # The resumed run continues the recorded recipe, from its checkpoint: the cache is not needed.
    cached.unlink()
    result = train(TrainConfig(out=str(run), epochs=0), resume=True, callbacks=[_CountTrainable(trainable)],
                   verbose=2)
    assert "Weights:" not in capsys.readouterr().out
    assert result.weights_used == "imagenet" and result.epochs_done == 2
    config = json.loads((run / "config.json").read_text())
    assert config["weights_used"] == "imagenet" and config["train"]["weights"] == "auto"
    assert config["train"]["freeze_backbone"] is True and config["train"]["fine_tune_epochs"] == 1
    # Epoch 1: only the head (logits kernel and bias) learns; epoch 2: also conv5's 10
    # convolutions (kernel, bias), not their batch norms: 2 + 10 * 2 = 22.
    assert trainable == [2, 22]

    final = load_model(run / "last.keras").get_layer("resnet50")
    kernel = lambda name: final.get_layer(name).kernel.numpy()  # noqa: E731
    # The file's values really are the starting point: untouched where frozen, moved where fine-tuned.
    np.testing.assert_array_equal(kernel("conv1_conv"), _h5(notop_file, "conv1_conv", "kernel"))
    np.testing.assert_array_equal(kernel("conv4_block6_3_conv"), _h5(notop_file, "conv4_block6_3_conv", "kernel"))
    np.testing.assert_array_equal(final.get_layer("conv1_bn").moving_mean.numpy(),
                                  _h5(notop_file, "conv1_bn", "moving_mean"))
    moved = np.abs(kernel("conv5_block3_3_conv") - _h5(notop_file, "conv5_block3_3_conv", "kernel")).max()
    assert moved > 1e-6
    # conv5's batch norms stay in inference mode while it is fine-tuned (keras-io's recipe; Keras 3
    # ignores the backbone call's training=False under fit, keras-team/keras#20285): statistics fixed.
    np.testing.assert_array_equal(final.get_layer("conv5_block3_3_bn").moving_variance.numpy(),
                                  _h5(notop_file, "conv5_block3_3_bn", "moving_variance"))


def test_explicit_weights_keep_their_meaning(notop_file, keras_home):
    from edgeres.model import Weights, WeightsError, resolve_weights

    assert resolve_weights("resnet50", "none") == Weights("none", None, "")
    assert resolve_weights("resnet50", notop_file).used == str(notop_file)
    with pytest.raises(WeightsError, match="resnet-tiny has no ImageNet weights"):
        resolve_weights("resnet-tiny", "imagenet")
    assert resolve_weights("resnet50", "imagenet").source == "imagenet"  # Keras fetches (or fails loudly)


class _Inspect:  # a Keras callback without importing Keras at collection time
    def __new__(cls, seen: dict, run: Path):
        import keras

        class Inspect(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                backbone = self.model.get_layer("resnet50")
                seen.update(config=json.loads((run / "config.json").read_text()), trainable=backbone.trainable,
                            frozen={w.name for w in backbone.non_trainable_weights},
                            momentum=backbone.get_layer("conv1_bn").momentum)
                raise KeyboardInterrupt  # stop before any step: what was set up is what is checked

        return Inspect()


class _CountTrainable:
    def __new__(cls, counts: list, interrupt_after: int | None = None):
        import keras

        class CountTrainable(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                counts.append(len(self.model.trainable_weights))

            def on_epoch_end(self, epoch, logs=None):  # runs after edgeres's checkpoint callback
                if interrupt_after == epoch + 1:
                    raise KeyboardInterrupt

        return CountTrainable()
