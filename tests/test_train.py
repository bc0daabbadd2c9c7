"""Model building and training: loss goes down, runs resume, MirroredStrategy, weights errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgeres.config import TrainConfig

pytestmark = pytest.mark.slow


def _config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="resnet-tiny", image_size=32, batch_size=16, epochs=2,
                learning_rate=3e-3, seed=0)
    return TrainConfig(**{**base, **kw})


def test_model_shapes_names_and_input_checks():
    from edgeres.model import build_classifier

    model = build_classifier("resnet-tiny", 3, 64)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 3)
    assert model.get_layer("resnet-tiny").get_layer("conv2_block1_1_conv")  # Keras's naming scheme
    probs = model(np.full((2, 64, 64, 3), 255.0, np.float32)).numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="image_size=100"):
        build_classifier("resnet50", 2, 100)
    with pytest.raises(ValueError, match="num_classes=1"):
        build_classifier("resnet50", 1, 64)


def test_resnet50_v1_and_v2_build_with_their_own_normalization():
    from edgeres.model import build_classifier

    for arch, bgr in (("resnet50", True), ("resnet50v2", False)):
        model = build_classifier(arch, 2, 32)
        norm = model.get_layer("normalize")
        assert norm.bgr is bgr
        assert model.count_params() > 23_000_000


def test_imagenet_weights_offline_message_and_missing_file(tmp_path, monkeypatch):
    from edgeres.model import WeightsError, build_classifier

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights
    with pytest.raises(WeightsError) as err:
        build_classifier("resnet50", 2, 32, weights="imagenet")
    assert "--weights PATH" in str(err.value) and "--weights none" in str(err.value)
    with pytest.raises(WeightsError, match="not found"):
        build_classifier("resnet50", 2, 32, weights=tmp_path / "nope.h5")


def test_few_steps_lower_the_loss(small_dataset, tmp_path):
    from edgeres.train import train

    result = train(_config(small_dataset, tmp_path / "run", epochs=4), verbose=0)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    run = tmp_path / "run"
    for name in ("config.json", "labels.txt", "dataset.json", "history.csv", "history.json", "curves.png",
                 "model.keras", "last.keras", "skipped.txt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == ["cats", "dogs"] and config["train"]["arch"] == "resnet-tiny"
    assert len(config["dataset_sha256"]["train"]) == 64 and config["mixed_precision"] is False
    assert (run / "labels.txt").read_text() == "cats\ndogs\n"
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 4


def test_existing_run_is_not_overwritten(small_dataset, tmp_path):
    from edgeres.train import RunExistsError, train

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="--resume"):
        train(_config(small_dataset, tmp_path / "run"), verbose=0)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_resume_after_interrupt_keeps_optimizer_state(small_dataset, tmp_path):
    import keras

    from edgeres.model import load_model
    from edgeres.train import train

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # what Ctrl-C does, right after the checkpoint was written

    config = _config(small_dataset, tmp_path / "run", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[StopAfterFirstEpoch()], verbose=0)
    steps = 120 // 16
    saved = load_model(tmp_path / "run" / "last.keras")
    assert int(saved.optimizer.iterations.numpy()) == steps
    moments = [v.numpy() for v in saved.optimizer.variables if "momentum" in v.path]
    assert moments and any(np.abs(m).sum() > 0 for m in moments)

    result = train(config, resume=True, verbose=0)
    assert result.epochs_done == 2 and [h["epoch"] for h in result.history] == [1, 2]
    final = load_model(tmp_path / "run" / "last.keras")
    # 2 epochs of steps: the second epoch continued the first's optimizer, not a fresh one.
    assert int(final.optimizer.iterations.numpy()) == 2 * steps


def test_mirrored_strategy_over_two_logical_cpus(small_dataset, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from edgeres.config import TrainConfig, StrategyKind
        from edgeres.train import train
        r = train(TrainConfig(data={str(small_dataset)!r}, out={str(tmp_path / 'run')!r}, arch="resnet-tiny",
                              image_size=32, batch_size=16, epochs=1, strategy=StrategyKind.MIRRORED,
                              max_per_class=32), verbose=0)
        print("REPLICAS", r.device, r.epochs_done, r.history[-1]["loss"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("REPLICAS"))
    assert "2 logical CPU device(s)" in line and np.isfinite(float(line.split()[-1]))
