"""``edgeres doctor``'s device-side checks: LiteRT's CPU and GPU accelerators run a tiny
built-in model (with LiteRT's reason when the GPU is unavailable), OpenCV's video and GUI
backends, and which cameras open (each in its own process, with a timeout, so a stuck driver
cannot hang doctor). OpenCV is imported only inside these functions, never at module import.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# A 1.3 KB float32 model, [1, 8, 8, 3] pixels -> mean -> 3x2 matmul -> softmax, made with
# TensorFlow 2.21's converter: enough to prove an accelerator runs a graph, without a bundle.
PROBE_MODEL = base64.b64decode(
    "HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAHAAAAHQAAACEAQAAlAEAAIgEAAADAAAAAAAAAAIAAAA0AAAA"
    "BAAAANz///8JAAAABAAAABMAAABDT05WRVJTSU9OX01FVEFEQVRBAAgADAAIAAQACAAAAAgAAAAEAAAAEwAAAG1pbl9ydW50"
    "aW1lX3ZlcnNpb24ACgAAAAwBAAAEAQAA7AAAAMQAAACsAAAApAAAAJwAAACUAAAAdAAAAAQAAACO/v//BAAAAGAAAAAQAAAA"
    "AAAAAAgADgAIAAQACAAAABAAAAAkAAAAAAAGAAgABAAGAAAABAAAAAAAAAAMABgAFAAQAAwABAAMAAAAtXshr0Q0RFIDAAAA"
    "AgAAAAQAAAAGAAAAMi4yMS4wAAD6/v//BAAAABAAAAAxLjYuMAAAAAAAAAAAAAAAuPz//7z8///A/P//Iv///wQAAAAIAAAA"
    "AQAAAAIAAAA2////BAAAABgAAAAK1yM8CtejPArXI7wK1yO8AAAAAArXIzxa////BAAAAAgAAAAAAAAAzczMPRD9//8U/f//"
    "DwAAAE1MSVIgQ29udmVydGVkLgABAAAAFAAAAAAADgAYABQAEAAMAAgABAAOAAAAFAAAABwAAADwAAAA9AAAAPgAAAAEAAAA"
    "bWFpbgAAAAADAAAAqAAAAGAAAAAUAAAAAAAOABoAFAAQAAwACwAEAA4AAAAcAAAAAAAACRwAAAAgAAAAAgAAAAAABgAIAAQA"
    "BgAAAAAAgD8BAAAABgAAAAEAAAAFAAAAAAAOABgAFAAQAAwACwAEAA4AAAAUAAAAAAAACBAAAAAUAAAAAQAAAOj9//8BAAAA"
    "BQAAAAMAAAAEAAAAAgAAAAEAAAAAAA4AFAAAABAADAALAAQADgAAABAAAAAAAAAbDAAAABAAAAAo/v//AQAAAAQAAAACAAAA"
    "AAAAAAMAAAABAAAABgAAAAEAAAAAAAAABwAAAJQBAABMAQAAFAEAAMwAAAB8AAAAQAAAAAQAAACe/v//AAAAARAAAAAQAAAA"
    "BwAAABgAAACI/v//CAAAAElkZW50aXR5AAAAAAIAAAABAAAAAgAAANb+//8AAAABEAAAABAAAAAGAAAAGAAAAMD+//8KAAAA"
    "TWF0TXVsO2FkZAAAAgAAAAEAAAACAAAADv///wAAAAEQAAAAEAAAAAUAAAAUAAAA+P7//wQAAABNZWFuAAAAAAIAAAABAAAA"
    "AwAAAAAAFgAcABgAFwAQAAwACAAAAAAAAAAHABYAAAAAAAABFAAAABQAAAAEAAAAAAAAAiQAAABI////FgAAAE1lYW4vcmVk"
    "dWN0aW9uX2luZGljZXMAAAEAAAACAAAAnv///wAAAAEQAAAAEAAAAAMAAAAUAAAAiP///wYAAABNYXRNdWwAAAIAAAACAAAA"
    "AwAAANL///8AAAABEAAAABAAAAACAAAAEAAAALz///8DAAAAYWRkAAEAAAACAAAAAAAWABgAFAAAABAADAAIAAAAAAAAAAcA"
    "FgAAAAAAAAEUAAAAFAAAAAEAAAAUAAAABAAEAAQAAAABAAAAeAAAAAQAAAABAAAACAAAAAgAAAADAAAAAwAAADAAAAAUAAAA"
    "BAAAAOj///8ZAAAAAAAAGfT///8JAAAAAAAACQwADAALAAAAAAAEAAwAAAAoAAAAAAAAKA=="
)


def litert_accelerators() -> dict:
    """Run the probe model on LiteRT's CPU interpreter and try its GPU accelerator."""
    info: dict = {"installed": False, "source": None, "cpu": {"ok": False, "reason": None},
                  "gpu": {"ok": False, "reason": None}}
    try:
        from edgeres.accelerators import litert_interpreter

        Interpreter, _, info["source"] = litert_interpreter()
    except ImportError as e:
        info["cpu"]["reason"] = info["gpu"]["reason"] = str(e)
        return info
    import numpy as np

    info["installed"] = True
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    from edgeres._stderr import captured_stderr

    with captured_stderr():  # LiteRT's INFO lines; the outcome is what is reported
        try:
            interpreter = Interpreter(model_content=PROBE_MODEL, num_threads=1)
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
            interpreter.invoke()
            expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).reshape(-1)
            ok = bool(abs(expected.sum() - 1) < 1e-4)
            info["cpu"] = {"ok": ok, "reason": None if ok else f"probe output sums to {expected.sum():.4f}, not 1"}
        except Exception as e:  # noqa: BLE001
            info["cpu"] = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
            expected = None
    info["gpu"] = _litert_gpu(pixels, expected)
    return info


def _litert_gpu(pixels, expected) -> dict:
    import numpy as np

    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import Options
    except ImportError as e:
        return {"ok": False, "reason": f"needs ai-edge-litert's CompiledModel ({e})"}
    from edgeres._stderr import captured_stderr, drop_litert_info_at_exit
    from edgeres.accelerators import gpu_reason, litert_environment

    drop_litert_info_at_exit()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.tflite"
        path.write_bytes(PROBE_MODEL)
        error = env = model = None
        with captured_stderr() as logs:
            try:
                env = litert_environment()
                kwargs = {"environment": env} if env is not None else {}
                model = CompiledModel.from_file(str(path), options=Options(hardware_accelerators=HardwareAccelerator.GPU),
                                                **kwargs)
                inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
                inputs[0].write(pixels)
                model.run_by_index(0, inputs, outputs)
                got = np.asarray(outputs[0].read(2, np.float32)).reshape(-1)
                fully_accelerated = bool(model.is_fully_accelerated())
                for buffer in (*inputs, *outputs):
                    buffer.destroy()
            except Exception as e:  # noqa: BLE001 -- RuntimeError mostly; any failure means unavailable
                error = e
            # Ended here, inside the capture: its DestroyAccelerator lines would otherwise print at exit.
            env = env or getattr(model, "environment", None)
            for resource in (model, env):
                if resource is not None:
                    resource.close()
    if error is not None:
        return {"ok": False, "reason": gpu_reason(logs.read(), error)}
    if expected is not None and float(np.max(np.abs(got - expected))) > 1e-3:
        return {"ok": False, "reason": f"GPU result differs from CPU by {float(np.max(np.abs(got - expected))):.3g}"}
    return {"ok": True, "reason": None, "fully_accelerated": fully_accelerated}


def opencv_backends() -> dict:
    info: dict = {"installed": False, "version": None, "video_backends": [], "camera_backends": [], "gui": None,
                  "display": None}
    try:
        import cv2
    except ImportError:  # absent, or present but broken (missing libGL, say): the same fix
        return info
    info["installed"] = True
    info["version"] = cv2.__version__
    registry = cv2.videoio_registry
    info["video_backends"] = list(dict.fromkeys(registry.getBackendName(b) for b in registry.getBackends()))
    info["camera_backends"] = list(dict.fromkeys(registry.getBackendName(b) for b in registry.getCameraBackends()))
    build = cv2.getBuildInformation().splitlines()
    gui = next((i for i, ln in enumerate(build) if ln.strip() == "GUI:" or ln.strip().startswith("GUI:")), None)
    if gui is not None:
        head = build[gui].split(":", 1)[1].strip()
        detail = [ln.strip() for ln in build[gui + 1:gui + 6] if ":" in ln and ln.startswith("    ")]
        info["gui"] = head or ", ".join(d.split(":")[0].strip() for d in detail if "YES" in d) or "NONE"
    info["display"] = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or (
        "native" if sys.platform in ("darwin", "win32") else None)
    return info


_CAMERA_PROBE = """
import sys, cv2
cap = cv2.VideoCapture(int(sys.argv[1]))
ok = cap.isOpened()
frame = cap.read()[1] if ok else None
print("OPEN" if ok and frame is not None else "CLOSED", *(frame.shape[1::-1] if frame is not None else ()))
cap.release()
"""


def camera_indices(indices=range(4), timeout: float = 4.0) -> list[dict]:
    """Which camera indices open and give a frame; each in its own process, killed after ``timeout``."""

    def probe(index: int) -> dict:
        row = {"index": index, "opens": False, "size": None, "reason": None}
        if sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
            row["reason"] = f"no /dev/video{index}"
            return row
        try:
            out = subprocess.run([sys.executable, "-c", _CAMERA_PROBE, str(index)], capture_output=True,
                                 text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            row["reason"] = f"no answer within {timeout:g} s"
            return row
        words = (out.stdout.strip().splitlines() or [""])[-1].split()
        row["opens"] = words[:1] == ["OPEN"]
        row["size"] = [int(w) for w in words[1:3]] if row["opens"] else None
        row["reason"] = None if row["opens"] else "does not open or gives no frame"
        return row

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(probe, indices))
