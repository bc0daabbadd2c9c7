"""The device side: run an exported classifier through LiteRT. Never imports TensorFlow.

    clf = Classifier("export/cats-dogs")            # a bundle (its int8 model) or a .tflite
    pred = clf.predict("photo.jpg")                 # path, bytes, PIL image or RGB uint8 array
    pred.label, pred.score, pred.latency_ms

Works where only ``ai-edge-litert`` (or, as a last resort, the old ``tflite_runtime``), numpy
and Pillow are installed. CPU inference goes through XNNPACK with every core; ``gpu`` uses
LiteRT's ``CompiledModel`` GPU accelerator; ``delegate`` loads an external delegate library.

Every path other than the CPU interpreter is checked against it when it loads (the *self-check*):
a few probe inputs run on both, and an accelerator whose probabilities differ by more than
:data:`SELF_CHECK_TOLERANCE` is not used (one line says why; ``strict`` raises instead). LiteRT's
GPU accelerator, for one, returns wrong answers for int8 ResNets (``benchmarks/gpu.md``), so a
bundle on the GPU runs its float16 model.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeres._stderr import captured_stderr as _captured_stderr
from edgeres.files import atomic_path
from edgeres.preprocess import ImageInput, Resize, resize_of, to_pixels
from edgeres.tflite import is_tflite

BUNDLE_JSON = "edgeres.json"
# A bundle's models, best first for a device: what Classifier(bundle) loads when not told.
BUNDLE_PREFERENCE = ("int8", "float16", "dynamic", "float32")
# What a bundle runs on the GPU: LiteRT's GPU accelerator computes int8 ResNets wrongly (58.7% vs
# 80.0% top-1 on the reference model, benchmarks/gpu.md) and float16 exactly (100% agreement).
GPU_PREFERENCE = ("float16", "float32")

# Probe pixels a bundle may carry for the self-check: ``pixels`` uint8 [N, H, W, 3] (real photos
# through edgeres.preprocess.to_pixels at the model's size). See write_probes().
PROBES_FILE = "probes.npz"
MAX_BUNDLE_PROBES = 6
SYNTHETIC_PROBES = 4  # seeded smooth images, always added (8 when the bundle carries none)
PROBE_SEED = 16

# Largest |p_accelerator - p_cpu| over probes and classes that still passes the self-check.
# float: float16/float32 models on a correct GPU differ by ~0.0004 (mean) from XNNPACK.
# quantized: an accelerator may run an int8 graph in float (dequantized), legitimately moving
# probabilities by about the int8-vs-float gap (mean |dp| 0.013 on the reference model); the broken
# int8-on-GPU path measured mean |dp| 0.35, top-1 agreement 55%.
SELF_CHECK_TOLERANCE = {"float": 0.02, "quantized": 0.10}

# More threads than this many per core only add contention; 100000 made XNNPACK crash.
MAX_THREADS_PER_CORE = 4


class Accelerator(str, Enum):
    AUTO = "auto"  # GPU when the machine shows one, else CPU
    CPU = "cpu"
    GPU = "gpu"


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file and the reason."""


class AcceleratorError(RuntimeError):
    """The requested accelerator is unavailable or wrong, and ``strict`` forbids falling back."""


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float
    probabilities: np.ndarray = field(repr=False)
    latency_ms: float  # set input + invoke + read output

    def top_k(self, k: int, labels: tuple[str, ...]) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(labels[i], float(self.probabilities[i])) for i in order]

    def to_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(self.score, 6),
                "latency_ms": round(self.latency_ms, 3)}


@dataclass(frozen=True)
class SelfCheck:
    """An accelerator's outputs against the CPU interpreter's on the same probe inputs."""

    backend: str  # the accelerator checked
    probes: int
    probe_source: str
    top1_agreement: float  # share of probes with the same top-1 class
    max_abs_dp: float  # largest |p_accelerator - p_cpu| over probes and classes
    mean_abs_dp: float
    tolerance: float  # on max_abs_dp
    passed: bool
    ms: float  # time the check took

    def measured(self) -> str:
        """The numbers, without the verdict: ``on 8 probes (...): top-1 8/8, max |dp| ...``."""
        agree = round(self.top1_agreement * self.probes)
        return (f"on {self.probes} probes ({self.probe_source}): top-1 {agree}/{self.probes}, "
                f"max |dp| {self.max_abs_dp:.4f} {'<=' if self.passed else '>'} tolerance {self.tolerance}, "
                f"mean |dp| {self.mean_abs_dp:.4f}")

    def summary(self) -> str:
        return f"self-check of {self.backend} against CPU {self.measured()}: {'passed' if self.passed else 'FAILED'}"

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class Backend(Protocol):
    """What runs the model: a prepared input tensor in, the raw output row out.

    The interpreter (CPU), LiteRT's CompiledModel (GPU) and external delegates are backends; an
    application can pass its own (a vendor NPU SDK, say) as ``Classifier(..., backend=...)``,
    and it goes through the same self-check.
    """

    name: str

    def run(self, tensor: np.ndarray) -> np.ndarray: ...


def litert_interpreter():
    """``(Interpreter, load_delegate, source)`` from ai-edge-litert, else tflite_runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "ai-edge-litert"
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter, load_delegate
        except ImportError:
            raise ImportError(
                "No LiteRT runtime found. Install it with: pip install ai-edge-litert"
            ) from None
        return Interpreter, load_delegate, "tflite_runtime"


def resolve_model(path: str | Path, variant: str | None = None) -> Path:
    """A ``.tflite`` path, or the chosen (default: int8) model file of a bundle directory."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file or directory. Pass a .tflite file or an export bundle directory.")
    if path.is_file():
        return path
    meta = path / BUNDLE_JSON
    if not meta.is_file():
        found = sorted(path.glob("*.tflite"))
        if len(found) == 1:
            return found[0]
        raise ModelError(f"{path}: not an edgeres bundle (no {BUNDLE_JSON}) and holds {len(found)} .tflite files; name one.")
    models = _bundle_models(path)
    for name in ((variant,) if variant else BUNDLE_PREFERENCE):
        if name in models and (path / models[name]["file"]).is_file():
            return path / models[name]["file"]
    raise ModelError(f"{path}: bundle has no {variant or 'model'} .tflite (has: {', '.join(models) or 'none'}).")


def bundle_info(model_path: Path) -> dict:
    """The ``edgeres.json`` beside a model, or ``{}``."""
    meta = Path(model_path).parent / BUNDLE_JSON
    try:
        return json.loads(meta.read_text()) if meta.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _bundle_models(bundle: Path) -> dict:
    try:
        return json.loads((bundle / BUNDLE_JSON).read_text()).get("models", {}) or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def resolve_threads(threads: int | None, log=None) -> int:
    """``threads`` checked: None means every core; at most MAX_THREADS_PER_CORE x the cores (said once)."""
    cores = os.cpu_count() or 1
    if threads is None:
        return cores
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads={threads!r}: must be a whole number, 1 or more (default: all {cores} cores).")
    cap = MAX_THREADS_PER_CORE * cores
    if threads > cap:
        (log or _stderr_log)(f"edgeres: threads={threads} is more than {MAX_THREADS_PER_CORE}x this machine's "
                             f"{cores} core(s); using {cap}.")
        return cap
    return int(threads)


def parse_accelerator(value: Accelerator | str) -> Accelerator:
    try:
        return Accelerator(value)
    except ValueError:
        raise ValueError(f"accelerator={value!r} is not one of: "
                         f"{', '.join(a.value for a in Accelerator)}.") from None


# -- probes ----------------------------------------------------------------------------------


def write_probes(path: str | Path, pixels: np.ndarray) -> None:
    """Save self-check probes for a bundle: ``pixels`` uint8 ``[N, H, W, 3]`` at the model's size.

    Export writes a handful of real photos (``MAX_BUNDLE_PROBES`` are used), run through
    ``edgeres.preprocess.to_pixels`` exactly as predict feeds them.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"probes must be uint8 [N, H, W, 3]. Received: {pixels.dtype} {list(pixels.shape)}.")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, pixels=pixels)


def load_probes(bundle_dir: str | Path, size: tuple[int, int]) -> np.ndarray | None:
    """A bundle's ``probes.npz`` pixels (at most MAX_BUNDLE_PROBES), or None when it has none.

    Raises ModelError when the file is there but unreadable or made for another input size.
    """
    path = Path(bundle_dir) / PROBES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            pixels = f["pixels"]
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise ModelError(f"{path}: unreadable self-check probes ({_first_line(e)}). Re-export the bundle.") from e
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (*size, 3):
        raise ModelError(f"{path}: probes are {pixels.dtype} {list(pixels.shape)}, the model takes "
                         f"uint8 [N, {size[0]}, {size[1]}, 3]. Re-export the bundle.")
    return pixels[:MAX_BUNDLE_PROBES]


def synthetic_probes(size: tuple[int, int], n: int = SYNTHETIC_PROBES, seed: int = PROBE_SEED) -> np.ndarray:
    """Seeded smooth colour fields ``[n, H, W, 3]`` uint8: photo-like statistics, no photo needed.

    Smooth rather than uniform noise: noise puts a trained model far outside what it saw, where
    probabilities can sit at one value for every input and hide a wrong accelerator.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        g = (2, 3, 5, 8)[i % 4]  # coarse to finer structure
        grid = rng.uniform(0, 255, (g, g, 3))
        ys, xs = np.linspace(0, g - 1, h), np.linspace(0, g - 1, w)
        rows = np.stack([np.stack([np.interp(xs, np.arange(g), grid[r, :, c]) for c in range(3)], -1)
                         for r in range(g)])  # [g, w, 3]
        img = np.stack([np.stack([np.interp(ys, np.arange(g), rows[:, x, c]) for c in range(3)], -1)
                        for x in range(w)], 1)  # [h, w, 3]
        out[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


# -- backends --------------------------------------------------------------------------------


class InterpreterBackend:
    """The LiteRT Interpreter: CPU (XNNPACK), or with an external delegate."""

    def __init__(self, interpreter, name: str):
        self.interpreter, self.name = interpreter, name
        self._in = interpreter.get_input_details()[0]["index"]
        self._out = interpreter.get_output_details()[0]["index"]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in, tensor)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)[0]


class CompiledModelBackend:
    """LiteRT's ``CompiledModel`` on a hardware accelerator (``"gpu"``, or ``"cpu"`` for a check).

    Raises RuntimeError, with the reason LiteRT logged, when the accelerator is unavailable.
    """

    def __init__(self, path: str | Path, hardware: str, *, threads: int, outputs: int, output_dtype):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        accel = {"gpu": HardwareAccelerator.GPU, "cpu": HardwareAccelerator.CPU}[hardware]
        options = Options(hardware_accelerators=accel, cpu_options=CpuOptions(num_threads=threads))
        with _captured_stderr() as logs:  # LiteRT logs its plugin search at length; keep it for errors
            try:
                self.model = CompiledModel.from_file(str(path), options=options)
                self.inputs, self.outputs = self.model.create_input_buffers(0), self.model.create_output_buffers(0)
                error = None
            except RuntimeError as e:
                error = e
        if error is not None:
            raise RuntimeError(_gpu_reason(logs.read(), error)) from error
        self._n, self._dtype = int(outputs), np.dtype(output_dtype)
        where = "" if hardware == "cpu" or self.model.is_fully_accelerated() else ", some ops on CPU"
        self.name = f"{hardware.upper()} (LiteRT CompiledModel{where})"

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.inputs[0].write(tensor)
        self.model.run_by_index(0, self.inputs, self.outputs)
        return self.outputs[0].read(self._n, self._dtype).reshape(self._n)


def _check_delegate_library(path: Path) -> str | None:
    """Why ``path`` cannot be a TFLite external delegate, or None. Checked before LiteRT's
    ``load_delegate``, whose failures end in AttributeError tracebacks from ``Delegate.__del__``."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return f"not a loadable shared library: {_first_line(e)}"
    missing = [s for s in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate") if not hasattr(lib, s)]
    if missing:
        return f"not a TFLite external delegate (no {' / '.join(missing)} symbol)"
    return None


# -- the classifier --------------------------------------------------------------------------


class Classifier:
    """An image classifier over LiteRT: raw RGB pixels in, probabilities out."""

    def __init__(
        self,
        model: str | Path,
        *,
        threads: int | None = None,
        accelerator: Accelerator | str = Accelerator.AUTO,
        delegate: str | Path | None = None,
        strict: bool = False,
        variant: str | None = None,
        backend: Backend | None = None,
        log=None,
    ):
        """``accelerator``: auto | cpu | gpu. ``delegate``: an external delegate library (.so).
        ``backend``: a ready accelerator backend (see :class:`Backend`). Anything but the CPU
        interpreter is self-checked against it at load; ``strict`` raises AcceleratorError where
        the default falls back to CPU with one line on ``log`` (default: stderr).
        ``variant``: which model of a bundle (int8, float16, float32, dynamic); default int8 on
        CPU, float16 on the GPU."""
        t0 = time.perf_counter()
        self._log = log or _stderr_log
        accelerator = parse_accelerator(accelerator)
        self.threads = resolve_threads(threads, self._log)
        named = [x for x, on in (("--accelerator gpu", accelerator is Accelerator.GPU),
                                 (f"--delegate {delegate}", delegate is not None),
                                 ("a backend", backend is not None)) if on]
        if len(named) > 1:
            raise AcceleratorError(f"{' and '.join(named)} both name an accelerator; pass one.")
        want_gpu = backend is None and delegate is None and (
            accelerator is Accelerator.GPU or (accelerator is Accelerator.AUTO and _gpu_visible()))
        strict = strict and (accelerator is not Accelerator.AUTO or delegate is not None or backend is not None)

        self._request = (model, variant)
        gpu_variant = _gpu_variant(model) if want_gpu and variant is None else None
        self._load(resolve_model(model, gpu_variant or variant))
        self.accelerator_note: str | None = None  # the one line that says where the model runs, if not CPU
        self.self_check: SelfCheck | None = None
        accelerated = None
        if backend is not None:
            accelerated = backend
        elif delegate is not None:
            accelerated = self._delegate_backend(Path(delegate), strict)
        elif want_gpu:
            accelerated = self._gpu_backend(strict)
        if accelerated is not None:
            accelerated = self._self_check(accelerated, strict)
        if accelerated is None and gpu_variant:  # no GPU after all: the CPU runs the bundle's default
            self._load(resolve_model(model, variant))
        elif accelerated is not None:
            self._backend, self.backend = accelerated, accelerated.name
            if gpu_variant:
                self.accelerator_note = (f"edgeres: {self.backend} runs the bundle's {self.path.name} "
                                         f"(int8 models compute wrongly on LiteRT's GPU path; the int8 model "
                                         f"stays for CPU).")
                self._log(self.accelerator_note)
        self._warn_if_failed_bundle()
        self.load_ms = (time.perf_counter() - t0) * 1e3

    # -- loading ---------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        """Read, check and load ``path`` on the CPU interpreter (also the self-check reference)."""
        from edgeres.metadata import CorruptModelError, check_model_bytes

        self.path = path
        data = _read_model_bytes(path)
        try:
            check_model_bytes(data)
        except CorruptModelError as e:
            raise ModelError(f"{path}: the file is cut or damaged ({e}; {len(data)} bytes). "
                             f"An interrupted copy? Copy it again or re-export it.") from e
        Interpreter, self._load_delegate, self.runtime = litert_interpreter()
        with _captured_stderr() as logs:
            try:
                self._interpreter = Interpreter(model_content=data, num_threads=self.threads)
                self._interpreter.allocate_tensors()
                error = None
            except (ValueError, RuntimeError) as e:
                error = e
        _echo_litert_logs(logs.read())
        if error is not None:
            raise ModelError(f"{path}: LiteRT could not load the model ({_first_line(error)}). "
                             f"Is the file complete? Re-export it.") from error
        self._data = data
        self._inp = self._interpreter.get_input_details()
        self._out = self._interpreter.get_output_details()
        self._check_signature()
        self.input_size = (int(self._inp[0]["shape"][1]), int(self._inp[0]["shape"][2]))
        self.input_dtype = np.dtype(self._inp[0]["dtype"])
        self.output_dtype = np.dtype(self._out[0]["dtype"])
        self.output_activation = self._output_activation()
        self.labels = self._labels(data)
        self.resize = self._resize(data)
        self._cpu = InterpreterBackend(self._interpreter, f"CPU (XNNPACK, {self.threads} threads)")
        self._backend, self.backend = self._cpu, self._cpu.name

    def _check_signature(self) -> None:
        if len(self._inp) != 1 or len(self._out) != 1:
            raise ModelError(f"{self.path}: an image classifier has 1 input and 1 output; this model has "
                             f"{len(self._inp)} input(s) and {len(self._out)} output(s).")
        shape, out_shape = list(self._inp[0]["shape"]), list(self._out[0]["shape"])
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{self.path}: input must be an image [1, H, W, 3]. Received: input shape={shape}.")
        if len(out_shape) != 2 or out_shape[1] < 2:
            raise ModelError(f"{self.path}: output must be class scores [1, N>=2]. Received: output shape={out_shape}.")
        if np.dtype(self._inp[0]["dtype"]) not in (np.uint8, np.int8, np.float32):
            raise ModelError(f"{self.path}: unsupported input dtype {self._inp[0]['dtype']}.")

    def _output_activation(self) -> str:
        """``softmax`` when the graph ends in SOFTMAX (through quantize/reshape ops), ``logits``
        when it ends in anything else, ``unknown`` where this runtime cannot list its ops."""
        try:
            ops = self._interpreter._get_ops_details()  # noqa: SLF001 -- public in every LiteRT release
        except Exception:  # noqa: BLE001 -- old runtimes without op details
            return "unknown"
        producer = {int(t): op for op in ops if str(op.get("op_name", "")).upper() != "DELEGATE"
                    for t in op.get("outputs", [])}  # DELEGATE nodes: XNNPACK's stand-ins for the real ops
        tensor = int(self._out[0]["index"])
        for _ in range(8):
            op = producer.get(tensor)
            if op is None:
                return "unknown"
            name = str(op.get("op_name", "")).upper()
            if name == "SOFTMAX":
                return "softmax"
            if name not in ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE") or not len(op.get("inputs", [])):
                return "logits"
            tensor = int(op["inputs"][0])
        return "unknown"

    def _labels(self, data: bytes) -> tuple[str, ...]:
        from edgeres.metadata import read_labels

        n = int(self._out[0]["shape"][1])
        try:
            embedded = read_labels(data)
        except ValueError:  # no metadata: a bare .tflite from elsewhere
            embedded = None
        if embedded is not None:
            if len(embedded) != n:
                raise ModelError(f"{self.path}: its embedded labels.txt has {len(embedded)} labels, the model "
                                 f"outputs {n} classes. Re-export it.")
            return tuple(embedded)
        found = []
        labels = bundle_info(self.path).get("labels")
        if labels:
            found.append((f"{BUNDLE_JSON} ({len(labels)} labels)", labels))
        labels_txt = self.path.parent / "labels.txt"
        if labels_txt.is_file():
            labels = labels_txt.read_text().split()
            found.append((f"labels.txt ({len(labels)} labels)", labels))
        for _, labels in found:
            if len(labels) == n:
                return tuple(labels)
        beside = f"; beside it: {', '.join(w for w, _ in found)}, not {n}" if found else ""
        self._log(f"edgeres: warning: {self.path} has no labels (no TFLite metadata{beside}); "
                  f"classes are named class_0..class_{n - 1}.")
        return tuple(f"class_{i}" for i in range(n))

    def _resize(self, data: bytes) -> Resize:
        """The resize the model was validated with: from its embedded edgeres record, else the
        bundle's edgeres.json, else the default rule (what MediaPipe does with a bare model)."""
        from edgeres.metadata import read_metadata

        try:
            extra = (read_metadata(data) or {}).get("extra_json")
            info = json.loads(extra) if extra else None
        except (ValueError, TypeError):
            info = None
        return resize_of(info or bundle_info(self.path) or None)

    def _warn_if_failed_bundle(self) -> None:
        info = bundle_info(self.path)
        int8 = (info.get("models", {}).get("int8") or {}).get("file")
        failed = (self.path.parent / "FAILED")
        if self.path.name != int8 or not (info.get("status") == "failed" or failed.is_file()):
            return
        why = failed.read_text().strip().splitlines()[0] if failed.is_file() else "int8 check failed"
        self._log(f"edgeres: warning: {self.path.parent} is marked FAILED by export ({why}); "
                  f"its int8 answers are less accurate than float32.")

    def _fallback(self, reason: str, strict: bool) -> None:
        if strict:
            raise AcceleratorError(f"{reason}. --strict forbids running on CPU instead.")
        self.accelerator_note = f"edgeres: {reason}; running on CPU (XNNPACK, {self.threads} threads) instead."
        self._log(self.accelerator_note)

    def _delegate_backend(self, delegate: Path, strict: bool):
        reason = _check_delegate_library(delegate)
        if reason is None:
            with _captured_stderr() as logs:
                try:
                    loaded = self._load_delegate(str(delegate))
                    Interpreter = litert_interpreter()[0]
                    interp = Interpreter(model_content=self._data, num_threads=self.threads,
                                         experimental_delegates=[loaded])
                    interp.allocate_tensors()
                except (OSError, ValueError, RuntimeError, AttributeError) as e:
                    reason = _first_line(e)
            _echo_litert_logs(logs.read())
        if reason is not None:
            self._fallback(f"delegate {delegate} could not be loaded ({reason})", strict)
            return None
        return InterpreterBackend(interp, f"delegate {delegate.name} (CPU fallback for unsupported ops)")

    def _gpu_backend(self, strict: bool):
        try:
            import ai_edge_litert.compiled_model  # noqa: F401
        except ImportError as e:
            self._fallback(f"GPU accelerator needs ai-edge-litert's CompiledModel ({e})", strict)
            return None
        try:
            gpu = CompiledModelBackend(self.path, "gpu", threads=self.threads, outputs=len(self.labels),
                                       output_dtype=self.output_dtype)
        except RuntimeError as e:
            self._fallback(f"GPU accelerator unavailable ({_first_line(e)})", strict)
            return None
        return gpu

    def _self_check(self, accelerated: Backend, strict: bool):
        """``accelerated`` if it agrees with the CPU on the probes, else None (or AcceleratorError)."""
        probes = self.probes()  # a broken probes.npz is the bundle's fault: ModelError, not a fallback
        try:
            check = self.check_against_cpu(accelerated, probes)
        except Exception as e:  # noqa: BLE001 -- any failure of a foreign backend means: do not use it
            self._fallback(f"{getattr(accelerated, 'name', 'accelerator')} failed on a probe input "
                           f"({type(e).__name__}: {_first_line(e)})", strict)
            return None
        self.self_check = check
        if not check.passed:
            self._fallback(f"{check.backend} disagrees with the CPU {check.measured()}", strict)
            return None
        return accelerated

    def check_against_cpu(self, accelerated: Backend, probes: tuple[np.ndarray, str] | None = None) -> SelfCheck:
        """Run the probe inputs (default: :meth:`probes`) on ``accelerated`` and on the CPU
        interpreter; compare probabilities."""
        t0 = time.perf_counter()
        probes, source = probes if probes is not None else self.probes()
        cpu = np.stack([self._probabilities(self._cpu.run(self.quantize_input(p))) for p in probes])
        acc = np.stack([self._probabilities(np.asarray(accelerated.run(self.quantize_input(p))))
                        for p in probes])
        dp = np.abs(acc - cpu)
        dp = np.where(np.isfinite(dp), dp, 1.0)  # NaN from an accelerator is a full miss
        tolerance = SELF_CHECK_TOLERANCE["float" if self.output_dtype == np.float32 else "quantized"]
        max_dp = float(dp.max())
        return SelfCheck(backend=accelerated.name, probes=len(probes), probe_source=source,
                         top1_agreement=float(np.mean(acc.argmax(1) == cpu.argmax(1))),
                         max_abs_dp=max_dp, mean_abs_dp=float(dp.mean()), tolerance=tolerance,
                         passed=max_dp <= tolerance, ms=(time.perf_counter() - t0) * 1e3)

    def probes(self) -> tuple[np.ndarray, str]:
        """The self-check inputs: the bundle's probes.npz photos (if any) plus seeded smooth images."""
        bundled = load_probes(self.path.parent, self.input_size) if (self.path.parent / BUNDLE_JSON).is_file() else None
        if bundled is None or not len(bundled):
            return synthetic_probes(self.input_size, 2 * SYNTHETIC_PROBES), f"{2 * SYNTHETIC_PROBES} synthetic"
        return (np.concatenate([bundled, synthetic_probes(self.input_size)]),
                f"{len(bundled)} from {PROBES_FILE} + {SYNTHETIC_PROBES} synthetic")

    # -- inference -------------------------------------------------------------------

    def predict(self, image: ImageInput) -> Prediction:
        """Classify one image: a path, encoded bytes, a PIL image or an RGB uint8 array."""
        return self.predict_pixels(to_pixels(image, self.input_size, self.resize))

    def predict_pixels(self, pixels: np.ndarray) -> Prediction:
        """Classify model-sized RGB uint8 pixels ``[H, W, 3]`` (already through ``to_pixels``)."""
        t0 = time.perf_counter()
        raw = self.invoke(self.quantize_input(pixels))
        probs = self.dequantize_output(raw)
        latency = (time.perf_counter() - t0) * 1e3
        i = int(np.argmax(probs))
        return Prediction(self.labels[i], i, float(probs[i]), probs, latency)

    def quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        """Map uint8 pixels to the model's input tensor ``[1, H, W, 3]`` (exact for edgeres int8)."""
        x = np.asarray(pixels)[None]
        if self.input_dtype == np.float32:
            return x.astype(np.float32)
        scale, zero = self._inp[0]["quantization"]
        if scale == 1.0 and zero == 0 and self.input_dtype == np.uint8:
            return x.astype(np.uint8, copy=False)
        info = np.iinfo(self.input_dtype)
        q = np.round(x.astype(np.float32) / (scale or 1.0)) + zero
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on a prepared input tensor; returns the raw output row."""
        return self._backend.run(tensor)

    def _probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Dequantized output; softmax applied only to a model that ends in logits."""
        if self.output_dtype != np.float32:
            scale, zero = self._out[0]["quantization"]
            raw = (raw.astype(np.float32) - zero) * scale
        probs = np.asarray(raw, np.float32)
        if self.output_activation == "logits":
            e = np.exp(probs - probs.max())
            probs = e / e.sum()
        return probs

    def _sum_tolerance(self) -> float:
        if self.output_dtype == np.float32:
            return 0.01
        scale = self._out[0]["quantization"][0] or 0.0
        return 0.01 + len(self.labels) * scale  # each class rounds by up to one step

    def dequantize_output(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities from a raw output row.

        A model that ends in softmax must give probabilities: outputs that do not sum to one (or
        are negative) mean the runtime computed something wrong, so they raise ModelError instead
        of being re-normalised into plausible-looking scores. A model that ends in logits gets
        its softmax here (``describe()`` says so).
        """
        probs = self._probabilities(raw)
        if self.output_activation == "logits":
            return probs
        total = float(probs.sum())
        bad = not np.all(np.isfinite(probs)) or probs.min() < -1e-6 or abs(total - 1.0) > self._sum_tolerance()
        if bad and self.output_activation == "softmax":
            raise ModelError(f"{self.path}: the model ends in softmax but {self.backend} returned scores "
                             f"summing to {total:.4g} (min {float(probs.min()):.4g}), not probabilities. "
                             f"Run it with --accelerator cpu, or re-export it.")
        if bad:  # cannot see the last op: say once, then treat as logits
            self._log(f"edgeres: warning: {self.path} outputs are not probabilities (sum {total:.4g}) and "
                      f"its last op cannot be read; applying softmax.")
            self.output_activation = "logits"
            return self._probabilities(raw)
        return probs

    def describe(self) -> dict:
        scale, zero = self._inp[0]["quantization"]
        oscale, ozero = self._out[0]["quantization"]
        return {"path": str(self.path), "runtime": self.runtime, "backend": self.backend,
                "threads": self.threads,
                "input": {"size": list(self.input_size), "dtype": self.input_dtype.name,
                          "scale": scale, "zero_point": zero},
                "output": {"classes": len(self.labels), "dtype": self.output_dtype.name,
                           "scale": oscale, "zero_point": ozero, "activation": self.output_activation},
                "labels": list(self.labels), "load_ms": round(self.load_ms, 2),
                "self_check": self.self_check.to_dict() if self.self_check else None,
                "accelerator_note": self.accelerator_note}


def check_accelerator(model: str | Path, *, accelerator: Accelerator | str | None = None,
                      delegate: str | Path | None = None, threads: int | None = None) -> dict:
    """What ``model`` gets on this machine's accelerator (for ``edgeres doctor``): the backend
    used, the self-check numbers, and the fallback line if any. Never raises for an
    unavailable or disagreeing accelerator; a broken model still raises ModelError."""
    messages: list[str] = []
    accelerator = accelerator or (Accelerator.AUTO if delegate else Accelerator.GPU)
    clf = Classifier(model, accelerator=accelerator, delegate=delegate, threads=threads, log=messages.append)
    return {"model": str(clf.path), "requested": f"delegate {delegate}" if delegate else parse_accelerator(accelerator).value,
            "backend": clf.backend, "accelerated": clf._backend is not clf._cpu,  # noqa: SLF001
            "self_check": clf.self_check.to_dict() if clf.self_check else None,
            "messages": messages}


def _gpu_variant(model: str | Path) -> str | None:
    """The bundle model the GPU should run (float16), when ``model`` is a bundle that has one."""
    path = Path(model)
    if not path.is_dir() or not (path / BUNDLE_JSON).is_file():
        return None
    models = _bundle_models(path)
    for name in GPU_PREFERENCE:
        if name in models and (path / models[name]["file"]).is_file():
            return name
    return None


def _read_model_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e}).") from e
    if not is_tflite(data):
        raise ModelError(f"{path}: not a .tflite model (no TFL3 flatbuffer header). "
                         f"Export one with: edgeres export RUN_DIR --int8")
    return data


def _echo_litert_logs(text: str) -> None:
    # LiteRT's C++ logs go to fd 2; keep warnings and errors, drop its INFO chatter.
    for line in text.splitlines():
        if line.strip() and not line.startswith("INFO:"):
            print(line, file=sys.stderr)


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _gpu_visible() -> bool:
    """Cheap check for a GPU a LiteRT accelerator could use (Linux DRI/NVIDIA nodes, macOS Metal)."""
    if sys.platform == "darwin":
        return True
    return any(Path("/dev/dri").glob("renderD*")) or Path("/dev/nvidia0").exists()


def _gpu_reason(logs: str, error: Exception | None) -> str:
    for marker in ("No adapters found", "Failed to initialize", "not supported", "Could not load"):
        for line in logs.splitlines():
            if marker in line:
                return line.split("] ", 1)[-1].strip()
    return _first_line(error) if error else "unknown reason"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
