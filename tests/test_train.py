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
    # --weights auto (the default) on resnet-tiny, which has no ImageNet weights: from scratch, recorded.
    assert config["train"]["weights"] == "auto" and config["weights_used"] == "none" and result.weights_used == "none"
    assert config["train"]["freeze_backbone"] is False and config["train"]["fine_tune_epochs"] == 0
    assert len(config["dataset_sha256"]["train"]) == 64 and config["mixed_precision"] is False
    assert (run / "labels.txt").read_text() == "cats\ndogs\n"
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 4


def test_existing_run_is_not_overwritten(small_dataset, tmp_path):
    from edgeres.train import RunExistsError, train

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    # Not a run: --resume could not continue it, so the message does not offer it.
    with pytest.raises(RunExistsError, match=r"other things \(keep.txt\), not an edgeres training run") as e:
        train(_config(small_dataset, tmp_path / "run"), verbose=0)
    assert "--resume" not in str(e.value)
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


# -- a failed start leaves nothing in the way (issues 12 and 14) ---------------------------------


def test_weights_file_that_would_not_be_used_is_an_error(small_dataset, tmp_path):
    from edgeres.model import WeightsError, build_classifier
    from edgeres.train import train

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not weights")
    with pytest.raises(WeightsError, match="garbage.h5.*resnet-tiny.*would not be used"):
        build_classifier("resnet-tiny", 2, 32, weights=garbage)
    with pytest.raises(WeightsError, match="garbage.h5"):
        train(_config(small_dataset, tmp_path / "run", weights=str(garbage)), verbose=0)
    assert not (tmp_path / "run").exists()


def test_failed_start_leaves_out_as_found_and_the_retry_just_works(small_dataset, tmp_path):
    import keras

    from edgeres.model import WeightsError
    from edgeres.train import train

    class FailInFirstEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("simulated crash during epoch 1")

    run = tmp_path / "run"
    config = _config(small_dataset, run, epochs=1, max_per_class=16)
    # A weights file that does not load (resnet50: Keras reads it and fails): nothing written.
    garbage = tmp_path / "resnet50_notop.h5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(WeightsError, match="resnet50_notop.h5"):
        train(config.replace(arch="resnet50", weights=str(garbage)), verbose=0)
    assert not run.exists()
    # A crash inside epoch 1, after the run files were written: they are removed again.
    with pytest.raises(RuntimeError, match="simulated"):
        train(config, callbacks=[FailInFirstEpoch()], verbose=0)
    assert not run.exists()
    # Ctrl-C in epoch 1, into an empty folder the user made: the folder stays, empty.
    run.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt()], verbose=0)
    assert run.is_dir() and list(run.iterdir()) == []
    # The leftovers of a start killed with -9 before its first epoch (no state.json) are started over.
    for name, text in (("config.json", "{}"), ("labels.txt", "a\nb\n"), ("dataset.json", "{}"), ("skipped.txt", "")):
        (run / name).write_text(text)
    result = train(config, verbose=0)
    assert result.epochs_done == 1 and (run / "model.keras").is_file()
    assert json.loads((run / "config.json").read_text())["labels"] == ["cats", "dogs"]


class _Interrupt:  # a Keras callback without importing Keras at collection time
    def __new__(cls):
        import keras

        class Interrupt(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                raise KeyboardInterrupt

        return Interrupt()


def test_cli_failed_start_then_same_command_and_one_line_per_epoch(small_dataset, tmp_path, monkeypatch):
    """As a user types it: a missing ImageNet download fails in one line and leaves no run; the
    retry with the same --out trains; piped stdout gets one line per epoch, no progress bar."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(tmp_path / "keras")}  # no cached weights
    run = tmp_path / "runs" / "x"
    base = [sys.executable, "-m", "edgeres.cli", "train", "--data", str(small_dataset), "--out", str(run),
            "--image-size", "32", "--batch-size", "16", "--max-per-class", "16"]
    failed = subprocess.run([*base, "--arch", "resnet50", "--weights", "imagenet", "--epochs", "1"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "ImageNet weights" in failed.stderr and "Traceback" not in failed.stderr
    assert not run.exists()
    ok = subprocess.run([*base, "--arch", "resnet-tiny", "--epochs", "2"],  # --weights auto: none, silently
                        capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "Weights" not in ok.stdout and json.loads((run / "config.json").read_text())["weights_used"] == "none"
    assert "\r" not in ok.stdout and "━" not in ok.stdout
    epochs = [ln for ln in ok.stdout.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in epochs] == ["epoch 1/2", "epoch 2/2"], ok.stdout
    assert "val_accuracy" in epochs[0] and len(ok.stdout.splitlines()) < 15
