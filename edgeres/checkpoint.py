"""What a run saves after every epoch: the models (last and best), its state, the history as
JSON and CSV, and the curves plot."""

from __future__ import annotations

import time
from pathlib import Path

import keras

from edgeres.config import write_bytes_atomic, write_json_atomic
from edgeres.files import atomic_path
from edgeres.plots import figure


class Checkpoint(keras.callbacks.Callback):
    """Saves last.keras + state.json every epoch (atomically), model.keras when validation improves."""

    def __init__(self, run_dir: Path, state: dict, verbose: int):
        super().__init__()
        self.run_dir, self.state, self.verbose = run_dir, state, verbose
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        row = {"epoch": epoch + 1, **logs, "seconds": round(time.time() - self._t0, 2)}
        history = [h for h in self.state["history"] if h["epoch"] <= epoch] + [row]
        val_acc = logs.get("val_accuracy", -1.0)
        improved = val_acc > self.state["best_val_accuracy"]
        if improved:
            save_model(self.model, self.run_dir / "model.keras")
        save_model(self.model, self.run_dir / "last.keras")
        self.state.update(epoch=epoch + 1, history=history,
                          best_val_accuracy=max(val_acc, self.state["best_val_accuracy"]))
        write_json_atomic(self.run_dir / "state.json", self.state)
        write_json_atomic(self.run_dir / "history.json", history)
        write_history_csv(self.run_dir / "history.csv", history)
        plot_history(history, self.run_dir / "curves.png")
        if self.verbose >= 2:
            total = self.params.get("epochs", epoch + 1) if self.params else epoch + 1
            print(epoch_line(row, total) + (" (best so far, saved)" if improved else ""), flush=True)


def epoch_line(row: dict, total: int) -> str:
    """``epoch 2/10: loss 0.6512, accuracy 61.3%, val_loss 0.6234, val_accuracy 64.0% (41.2 s)``"""
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in row:
            parts.append(f"{key} {100 * row[key]:.1f}%" if key.endswith("accuracy") else f"{key} {row[key]:.4f}")
    return f"epoch {row['epoch']}/{total}: {', '.join(parts)} ({row['seconds']:.1f} s)"


def save_model(model, path: Path) -> None:
    with atomic_path(path) as tmp:  # keeps the .keras suffix, which Keras requires
        model.save(tmp)


def write_history_csv(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join(f"{row.get(k, '')}" for k in keys) for row in history]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation, as a PNG."""
    epochs = [h["epoch"] for h in history]
    with figure(path, figsize=(10, 4), ncols=2) as (_, axes):
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for prefix, style in (("", "-o"), ("val_", "-s")):
                values = [h.get(prefix + metric) for h in history]
                if any(v is not None for v in values):
                    ax.plot(epochs, values, style, label=(prefix or "train_") + metric)
            ax.set_xlabel("epoch")
            ax.set_title(metric)
            ax.grid(alpha=0.3)
            ax.legend()
