"""The one matplotlib set-up: files only (the Agg backend, no window, no display needed), one
look, written whole.

    with figure(path, figsize=(10, 4), ncols=2) as (fig, axes):
        axes[0].plot(...)

matplotlib is imported on first use, so a device without it still runs everything else;
callers that treat plots as optional catch ImportError.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from edgeres.files import atomic_path

DPI = 100
STYLE = {"axes.grid": False, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (set before pyplot is first imported)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure(path: str | Path, *, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1,
           **subplots) -> Iterator[tuple[object, object]]:
    """A new figure and its axes; on leaving the block it is laid out, saved to ``path`` (PNG,
    atomically) and closed, also when the block raises (then nothing is written)."""
    plt = pyplot()
    with plt.rc_context(STYLE):  # edgeres's look, without changing the caller's matplotlib defaults
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **subplots)
        try:
            yield fig, axes
            fig.tight_layout()
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=DPI)
        finally:
            plt.close(fig)
