"""What the commands print where the output is not a terminal (a log file, a pipe, CI): tables
whole, and none of LiteRT's C++ INFO lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

EDGERES = [sys.executable, "-m", "edgeres.cli"]
BOX = "┃│"  # the characters a Rich table row starts and ends with


def run_piped(*args) -> subprocess.CompletedProcess:
    """The command with stdout and stderr going to pipes, as ``edgeres ... > log`` has them, and no
    COLUMNS in the environment (a shell does not export it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = subprocess.run([*EDGERES, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    return out


def table_rows(text: str) -> list[list[str]]:
    """Cells of each header or body row of a Rich table (lines that start with a box edge)."""
    rows = []
    for line in text.splitlines():
        if line[:1] in BOX:
            rows.append([cell.strip() for cell in line.strip()[1:-1].replace("┃", "│").split("│")])
    return rows


def assert_whole(text: str, header: list[str]) -> list[list[str]]:
    """The table in ``text`` has exactly ``header`` on one line, no cell cut or folded onto a
    second line, and every line of its box the same width (no lost right edge)."""
    assert "…" not in text, text
    rows = table_rows(text)
    assert rows and rows[0] == header, (rows[:1], header)
    box = [line for line in text.splitlines() if line[:1] in "┏┡└" + BOX]
    assert len({len(line) for line in box}) == 1, text
    assert all(line[-1] in "┓┩┘" + BOX for line in box), text
    return rows[1:]


def no_litert_logs(stderr: str) -> None:
    leaked = [line for line in stderr.splitlines() if line.startswith("INFO: [") or "DestroyAccelerator" in line]
    assert not leaked, leaked


def test_bench_table_is_whole_in_a_log(tiny_bundle):
    f32, i8 = tiny_bundle / "model_float32.tflite", tiny_bundle / "model_int8.tflite"
    args = ("bench", f32, i8, "--runs", "3", "--warmup", "1", "--threads", "1")
    out = run_piped(*args)
    rows = assert_whole(out.stdout, ["model", "input", "backend", "load ms", "p50 ms", "p90 ms", "p99 ms",
                                     "img/s", "RSS MB", "vs first"])
    measured = json.loads(run_piped(*args, "--json").stdout)["models"]
    assert [row[:3] for row in rows] == [[Path(m["path"]).name, m["input"], m["backend"]] for m in measured]
    assert out.stdout.splitlines()[0] == "batch 1, 1 threads, 3 runs"  # the title on a line of its own
    no_litert_logs(out.stderr)


def test_evaluate_table_is_whole_in_a_log(tiny_bundle, quant_dataset):
    f32, i8 = tiny_bundle / "model_float32.tflite", tiny_bundle / "model_int8.tflite"
    args = ("evaluate", f32, i8, "--data", quant_dataset, "--limit", "20")
    out = run_piped(*args)
    rows = assert_whole(out.stdout, ["model", "n", "accuracy", "95% CI", "cats P/R", "dogs P/R", "ms"])
    measured = json.loads(run_piped(*args, "--json").stdout)["models"]
    assert [row[:3] for row in rows] == [[Path(m["path"]).name, "20", f"{m['accuracy']:.2%}"] for m in measured]
    assert [row[4:6] for row in rows] == [
        [f"{m['per_class'][c]['precision']:.2f}/{m['per_class'][c]['recall']:.2f}" for c in ("cats", "dogs")]
        for m in measured]
    assert out.stdout.splitlines()[0] == f"{quant_dataset} (validation)"


def test_predict_table_keeps_long_paths_and_gpu_leaves_no_litert_lines(tiny_bundle, quant_dataset):
    photos = sorted((quant_dataset / "validation").rglob("*.jpg"))[:3]
    out = run_piped("predict", tiny_bundle, *photos, "--top-k", "2", "--accelerator", "gpu")
    rows = assert_whole(out.stdout, ["image", "label", "score", "top 2", "ms"])
    assert [row[0] for row in rows] == [str(p) for p in photos]
    # With or without a usable GPU here: LiteRT's environment logs its accelerators at length on
    # fd 2 when it starts and ends (the end after Python has finished); none of it is shown.
    no_litert_logs(out.stderr)


def test_compiled_model_at_exit_drops_litert_info_and_keeps_other_lines(tiny_bundle):
    """LiteRT's CompiledModel (the GPU path; here on its CPU accelerator, which every machine has)
    prints DestroyAccelerator lines from a C++ destructor after Python exits: filtered, while
    anything else written to stderr at exit still shows."""
    script = textwrap.dedent(f"""
        import atexit, os
        import numpy as np
        # Registered first, so it runs last, after the filter is in place.
        atexit.register(lambda: os.write(2, b"INFO: [fake.cc:1] dropped\\nWARNING: kept at exit\\n"))
        from edgeres.accelerators import CompiledModelBackend
        backend = CompiledModelBackend({str(tiny_bundle / "model_int8.tflite")!r}, "cpu", threads=1, outputs=2,
                                       output_dtype=np.uint8)
        print(backend.run(np.zeros((1, 64, 64, 3), np.uint8)).tolist())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2
    no_litert_logs(out.stderr)
    assert out.stderr.splitlines() == ["WARNING: kept at exit"]
