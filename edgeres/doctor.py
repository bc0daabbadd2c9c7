"""``edgeres doctor``: what this machine can do, and what to fix before the next command.

    report = diagnose(need={"train"})     # a JSON-able dict; report["ok"] is False on a problem
    print(format_report(report))

Checks Python and package versions; the devices TensorFlow sees (GPU names, compute
capability, memory) and whether training would use mixed precision and XLA; LiteRT's CPU and
GPU accelerators on a tiny built-in model (with LiteRT's reason when the GPU is unavailable);
OpenCV's video and GUI backends; which cameras 0..3 open (each in its own process, with a
timeout); a MediaPipe interpreter; free disk space. TensorFlow and OpenCV are imported only
when installed, and only here, never at module import. The LiteRT, OpenCV and camera checks
live in :mod:`edgeres.doctor_device`.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from edgeres.doctor_device import PROBE_MODEL, camera_indices, litert_accelerators, opencv_backends  # noqa: F401

# What each extra brings, for "needs X: pip install ..." lines.
EXTRAS = {
    "train": "pip install 'edgeres[train]' (CPU) or 'edgeres[gpu]' (NVIDIA GPU)",
    "gpu": "pip install 'edgeres[gpu]'",
    "camera": "pip install 'edgeres[camera]'",
}
NEEDS = ("train", "gpu", "camera", "mediapipe")
PACKAGES = ("edgeres", "numpy", "pillow", "ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu",
            "ai-edge-quantizer", "keras", "opencv-python", "opencv-python-headless", "opencv-contrib-python", "matplotlib", "mediapipe")
MEDIAPIPE_ENV = "EDGERES_MEDIAPIPE_PYTHON"
MEDIAPIPE_FIX = (f"python3 -m venv .venv-mediapipe && .venv-mediapipe/bin/pip install mediapipe pillow, then "
                 f"export {MEDIAPIPE_ENV}=$PWD/.venv-mediapipe/bin/python (its own venv: MediaPipe's "
                 f"opencv-contrib-python clashes with opencv-python)")
LOW_DISK_GIB, NO_DISK_GIB = 2.0, 0.5  # a ResNet-50 run writes ~0.4 GB of checkpoints


def diagnose(*, need=(), cameras=range(4), camera_timeout: float = 4.0, folder: str | Path = ".") -> dict:
    """Everything ``edgeres doctor`` reports, as a JSON-able dict.

    ``need``: what the next command requires (``train``, ``gpu``, ``camera``, ``mediapipe``);
    a missing one is a problem (``ok`` False), otherwise only a note.
    """
    unknown = set(need) - set(NEEDS)
    if unknown:
        raise ValueError(f"Unknown need {sorted(unknown)}; choose from {', '.join(NEEDS)}.")
    report: dict = {
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": f"{platform.system()} {platform.machine()}"},
        "packages": _package_versions(),
        "nvidia": nvidia_driver(),
    }
    report["tensorflow"] = tensorflow_devices(report["nvidia"])
    report["litert"] = litert_accelerators()
    report["opencv"] = opencv_backends()
    report["cameras"] = camera_indices(cameras, camera_timeout) if report["opencv"]["installed"] else []
    report["mediapipe"] = mediapipe_interpreter()
    report["disk"] = disk_space(folder)
    problems, notes = _findings(report, set(need))
    report.update(need=sorted(need), problems=problems, notes=notes, ok=not problems)
    return report


# -- sections ------------------------------------------------------------------------------


def _package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def nvidia_driver() -> dict:
    """The NVIDIA driver's view, independent of TensorFlow: /proc/driver/nvidia, then nvidia-smi."""
    info: dict = {"present": False, "driver_version": None, "gpus": []}
    proc = Path("/proc/driver/nvidia")
    if (proc / "version").is_file():
        info["present"] = True
        first = (proc / "version").read_text(errors="replace").splitlines()[:1]
        info["driver_version"] = next((w for w in (first[0].split() if first else []) if w[:1].isdigit() and "." in w), None)
        for gpu in sorted((proc / "gpus").glob("*/information")):
            model = next((ln.split(":", 1)[1].strip() for ln in gpu.read_text(errors="replace").splitlines()
                          if ln.startswith("Model:")), "NVIDIA GPU")
            info["gpus"].append({"name": model, "memory_mib": None, "compute_capability": None})
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap,driver_version",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            out = None
        rows = [[c.strip() for c in ln.split(",")] for ln in (out.stdout.splitlines() if out and out.returncode == 0 else [])]
        if rows:
            info["present"] = True
            info["gpus"] = [{"name": r[0], "memory_mib": _int(r[1]), "compute_capability": r[2] if len(r) > 2 else None}
                            for r in rows]
            info["driver_version"] = rows[0][3] if len(rows[0]) > 3 else info["driver_version"]
    return info


def tensorflow_devices(nvidia: dict | None = None) -> dict:
    """TensorFlow's build and devices, and what ``edgeres train`` would switch on with them."""
    dists = [d for d in ("tensorflow", "tensorflow-cpu") if _version(d)]
    info: dict = {"installed": importlib.util.find_spec("tensorflow") is not None, "distributions": dists,
                  "version": None, "built_with_cuda": None, "gpus": [], "mixed_precision": False, "xla": False,
                  "error": None}
    if not info["installed"]:
        return info
    try:
        from edgeres._stderr import import_tensorflow_quietly

        import_tensorflow_quietly()
        import tensorflow as tf

        info["version"] = tf.__version__
        info["built_with_cuda"] = bool(tf.test.is_built_with_cuda())
        smi = (nvidia or {}).get("gpus", [])
        for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
            details = tf.config.experimental.get_device_details(gpu)
            cc = details.get("compute_capability")
            info["gpus"].append({
                "device": gpu.name, "name": details.get("device_name", "GPU"),
                "compute_capability": ".".join(map(str, cc)) if cc else None,
                "memory_mib": smi[i]["memory_mib"] if i < len(smi) else None,
            })
    except Exception as e:  # noqa: BLE001 -- a broken install is what doctor is for
        info["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return info
    # The rules of edgeres.train: --precision auto and --xla default follow "is there a GPU".
    info["mixed_precision"] = info["xla"] = bool(info["gpus"])
    return info



def mediapipe_interpreter() -> dict:
    """A Python that can ``import mediapipe``, found as ``evaluate --client mediapipe`` finds it:
    ``$EDGERES_MEDIAPIPE_PYTHON``, else a ``.venv-mediapipe`` here or beside the package, else this one."""
    from edgeres.clients import find_mediapipe_python

    env = os.environ.get(MEDIAPIPE_ENV)
    found = find_mediapipe_python()
    source = MEDIAPIPE_ENV if env else ".venv-mediapipe"
    if not env and found and found != sys.executable:
        env = found
    if env:
        try:
            out = subprocess.run([env, "-c", "import importlib.metadata as m; print(m.version('mediapipe'))"],
                                 capture_output=True, text=True, timeout=60)
            version = out.stdout.strip() if out.returncode == 0 else None
            reason = None if version else (out.stderr.strip().splitlines() or ["no mediapipe"])[-1]
        except (OSError, subprocess.TimeoutExpired) as e:
            version, reason = None, f"{env}: {e}"
        return {"available": bool(version), "python": env, "source": source, "version": version,
                "reason": reason}
    version = _version("mediapipe")
    return {"available": bool(version), "python": sys.executable if version else None,
            "source": "this Python" if version else None, "version": version,
            "reason": None if version else f"{MEDIAPIPE_ENV} is not set and mediapipe is not installed here"}


def disk_space(folder: str | Path = ".") -> dict:
    usage = shutil.disk_usage(folder)
    return {"folder": str(Path(folder).resolve()), "free_gib": round(usage.free / 2**30, 1),
            "total_gib": round(usage.total / 2**30, 1)}


# -- verdict -------------------------------------------------------------------------------


def gpu_unused_by_tensorflow(nvidia: dict | None = None, tf_info: dict | None = None) -> str | None:
    """A one-line warning with the fix when the driver shows an NVIDIA GPU but TensorFlow sees none."""
    nvidia = nvidia if nvidia is not None else nvidia_driver()
    if not nvidia["present"]:
        return None
    tf_info = tf_info if tf_info is not None else tensorflow_devices(nvidia)
    if not tf_info["installed"] or tf_info["gpus"] or tf_info["error"]:
        return None
    names = ", ".join(g["name"] for g in nvidia["gpus"]) or "an NVIDIA GPU"
    if "tensorflow-cpu" in tf_info["distributions"]:
        fix = "the CPU-only tensorflow-cpu is installed: pip uninstall -y tensorflow-cpu tensorflow && pip install 'edgeres[gpu]'"
    elif tf_info["built_with_cuda"] is False:
        fix = "this TensorFlow build has no CUDA support (NVIDIA GPUs need Linux x86-64): train there, or on CPU here"
    else:
        fix = "TensorFlow finds no CUDA libraries: pip install 'edgeres[gpu]' (NVIDIA's CUDA 12 / cuDNN 9 wheels)"
    return f"the driver shows {names} but TensorFlow sees no GPU, so training runs on the CPU; {fix}. Check with: edgeres doctor"


def _findings(report: dict, need: set[str]) -> tuple[list[dict], list[dict]]:
    problems, notes = [], []

    def add(needed: bool, what: str, fix: str) -> None:
        (problems if needed else notes).append({"what": what, "fix": fix})

    tf_info, lit, cv, mp, disk = (report[k] for k in ("tensorflow", "litert", "opencv", "mediapipe", "disk"))
    if len(tf_info["distributions"]) > 1:
        add(True, "tensorflow and tensorflow-cpu are both installed (they overwrite each other's files)",
            "pip uninstall -y tensorflow tensorflow-cpu && pip install 'edgeres[train]' (or 'edgeres[gpu]')")
    if tf_info["error"]:
        add(True, f"TensorFlow is installed but does not import ({tf_info['error']})",
            "reinstall it: pip install --force-reinstall 'edgeres[train]' (or 'edgeres[gpu]')")
    elif not tf_info["installed"]:
        add("train" in need or "gpu" in need, "TensorFlow is not installed: train and export need it",
            EXTRAS["train"])
    if tf_info["installed"] and not report.get("packages", {}).get("ai-edge-quantizer"):
        add("train" in need or "gpu" in need, "ai-edge-quantizer (the LiteRT Quantizer) is not installed: "
            "export --int8 needs it", EXTRAS["train"])
    unused = gpu_unused_by_tensorflow(report["nvidia"], tf_info)
    if unused:
        add("gpu" in need, unused.split("; ")[0], unused.split("; ", 1)[1])
    elif "gpu" in need and not tf_info["gpus"]:
        add(True, "TensorFlow sees no GPU and the NVIDIA driver shows none", "train on a machine with an NVIDIA GPU and driver, "
            "with pip install 'edgeres[gpu]'; or drop --need gpu to train on the CPU")
    for g in tf_info["gpus"]:
        cc = g["compute_capability"]
        if cc and tuple(map(int, cc.split("."))) < (7, 0):
            notes.append({"what": f"{g['name']} (compute capability {cc}) gains little from mixed precision",
                          "fix": "train with --precision float32 if mixed_float16 is slower"})
    if not lit["installed"] or not lit["cpu"]["ok"]:
        add(True, f"LiteRT cannot run a model on the CPU ({lit['cpu']['reason']})",
            "pip install --force-reinstall ai-edge-litert (predict, evaluate, bench and camera need it)")
    if not cv["installed"]:
        add("camera" in need, "OpenCV is not installed: edgeres camera needs it", EXTRAS["camera"])
    elif "camera" in need and not any(c["opens"] for c in report["cameras"]) :
        tried = [c["index"] for c in report["cameras"]]
        add(True, f"no camera opens (tried {', '.join(map(str, tried)) or 'none'})", "plug a camera in, or give edgeres camera --source a video file, "
            "stream URL or folder")
    if not mp["available"]:
        add("mediapipe" in need, f"no MediaPipe interpreter ({mp['reason']})", MEDIAPIPE_FIX)
    if disk["free_gib"] < LOW_DISK_GIB:
        add(disk["free_gib"] < NO_DISK_GIB, f"only {disk['free_gib']} GiB free in {disk['folder']}",
            "free some space: a ResNet-50 run writes ~0.4 GB of checkpoints, an export ~0.2 GB")
    return problems, notes


# -- text ----------------------------------------------------------------------------------


def format_report(r: dict) -> str:
    py, tfi, nv, lit, cv, mp, disk = (r[k] for k in ("python", "tensorflow", "nvidia", "litert", "opencv",
                                                       "mediapipe", "disk"))
    pk = r["packages"]
    lines = [f"Python      {py['version']} ({py['executable']}), {py['platform']}",
             "Packages    " + ", ".join(f"{k} {v}" for k, v in pk.items() if v)]
    if nv["present"]:
        lines.append(f"NVIDIA      driver {nv['driver_version'] or '?'}: " + ", ".join(
            g["name"] + (f" {g['memory_mib']} MiB" if g["memory_mib"] else "") for g in nv["gpus"]))
    else:
        lines.append("NVIDIA      no driver (no /proc/driver/nvidia, no nvidia-smi)")
    if not tfi["installed"]:
        lines.append("TensorFlow  not installed (train, export need it)")
    elif tfi["error"]:
        lines.append(f"TensorFlow  broken: {tfi['error']}")
    else:
        where = ("; ".join(f"{g['name']} (compute {g['compute_capability']}"
                           + (f", {g['memory_mib']} MiB)" if g["memory_mib"] else ")") for g in tfi["gpus"])
                 or f"no GPU: trains on the CPU ({os.cpu_count()} cores)")
        lines.append(f"TensorFlow  {tfi['version']} ({' + '.join(tfi['distributions'])}"
                     f"{', CUDA build' if tfi['built_with_cuda'] else ''}): {where}; "
                     f"mixed precision {'on' if tfi['mixed_precision'] else 'off'}, XLA {'on' if tfi['xla'] else 'off'}")

    def accel(a: dict) -> str:
        return "ok" if a["ok"] else f"unavailable ({a['reason']})"

    lines.append(f"LiteRT      {lit['source'] or 'not installed'}: CPU {accel(lit['cpu'])}; GPU {accel(lit['gpu'])}"
                 if lit["installed"] else f"LiteRT      not installed ({lit['cpu']['reason']})")
    if r.get("model_check"):
        m = r["model_check"]
        gap = m.get("self_check") or {}
        lines.append(f"Model       {m['model']} asked {m['requested']}: runs on {m['backend']}"
                     + (f"; self-check vs CPU on {gap['probes']} probes ({gap['probe_source']}): max |dp| "
                        f"{gap['max_abs_dp']:.4f} (tolerance {gap['tolerance']}), top-1 {gap['top1_agreement']:.0%}, "
                        f"{'passed' if gap['passed'] else 'FAILED'}" if gap else "") + "".join(f"\n            {msg}" for msg in m["messages"]))
    if r.get("runtime_check"):
        lines.append(f"Runtime     {r['runtime_check']['line']} (edgeres check)")
    if cv["installed"]:
        lines.append(f"OpenCV      {cv['version']}: video {', '.join(cv['video_backends']) or 'none'}; "
                     f"GUI {cv['gui'] or '?'}; display {cv['display'] or 'none (windows cannot open; use --no-display)'}")
        opened = [f"{c['index']} ({c['size'][0]}x{c['size'][1]})" for c in r["cameras"] if c["opens"]]
        lines.append("Cameras     " + (", ".join(opened) + " open" if opened else
                                       "none of " + ", ".join(str(c["index"]) for c in r["cameras"]) + " opens"
                                       + (f" ({r['cameras'][0]['reason']}, ...)" if r["cameras"] else "")))
    else:
        lines.append(f"OpenCV      not installed (edgeres camera needs it: {EXTRAS['camera']})")
    lines.append(f"MediaPipe   {mp['version']} via {mp['source']} ({mp['python']})" if mp["available"]
                 else f"MediaPipe   none ({mp['reason']})")
    lines.append(f"Disk        {disk['free_gib']} GiB free of {disk['total_gib']} GiB in {disk['folder']}")
    for p in r["problems"]:
        lines.append(f"problem: {p['what']}. Fix: {p['fix']}")
    for n in r["notes"]:
        lines.append(f"note: {n['what']}. {n['fix']}")
    lines.append("All that was asked for works." if r["ok"] else f"{len(r['problems'])} problem(s) to fix first.")
    return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None
