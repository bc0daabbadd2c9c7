"""Where a model runs: LiteRT's interpreter (CPU, or with an external delegate), its
``CompiledModel`` on a hardware accelerator, or an application's own :class:`Backend`; and the
record of a backend's self-check against the CPU. Never imports TensorFlow.

:class:`edgeres.runtime.Classifier` picks the backend and runs the self-check; this module only
builds backends and says, in one line, why one cannot be built.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeres._stderr import captured_stderr, drop_litert_info_at_exit

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


class AcceleratorError(RuntimeError):
    """The requested accelerator is unavailable or wrong, and ``strict`` forbids falling back."""


def parse_accelerator(value: Accelerator | str) -> Accelerator:
    try:
        return Accelerator(value)
    except ValueError:
        raise ValueError(f"accelerator={value!r} is not one of: "
                         f"{', '.join(a.value for a in Accelerator)}.") from None


def resolve_threads(threads: int | None, log=None) -> int:
    """``threads`` checked: None means every core; at most MAX_THREADS_PER_CORE x the cores (said once)."""
    cores = os.cpu_count() or 1
    if threads is None:
        return cores
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads={threads!r}: must be a whole number, 1 or more (default: all {cores} cores).")
    cap = MAX_THREADS_PER_CORE * cores
    if threads > cap:
        (log or stderr_log)(f"edgeres: threads={threads} is more than {MAX_THREADS_PER_CORE}x this machine's "
                            f"{cores} core(s); using {cap}.")
        return cap
    return int(threads)


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


class Kernels(str, Enum):
    """Which CPU kernels LiteRT runs an int8 model with. They do not compute identically
    (``benchmarks/cross_runtime.md``): XNNPACK is LiteRT's default on x86 and ARM; ``builtin`` is
    LiteRT's reference-grade built-in kernels (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``),
    what a runtime without XNNPACK computes."""

    XNNPACK = "xnnpack"
    BUILTIN = "builtin"


def op_resolver(kernels: "Kernels | str"):
    """The ``experimental_op_resolver_type`` for ``kernels`` (None: LiteRT's default, XNNPACK)."""
    if Kernels(kernels) is Kernels.XNNPACK:
        return None
    from ai_edge_litert.interpreter import OpResolverType

    return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


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
        self.model, self.inputs, self.outputs, self._env = None, [], [], None
        with captured_stderr() as logs:  # LiteRT logs its plugin search at length; keep it for errors
            try:
                self._env = litert_environment()
                kwargs = {"environment": self._env} if self._env is not None else {}
                self.model = CompiledModel.from_file(str(path), options=options, **kwargs)
                self.inputs, self.outputs = self.model.create_input_buffers(0), self.model.create_output_buffers(0)
                error = None
            except RuntimeError as e:
                error = e
                self._release()  # inside the capture: the environment's goodbye lines are kept off stderr
        drop_litert_info_at_exit()
        if error is not None:
            raise RuntimeError(gpu_reason(logs.read(), error)) from error
        self._n, self._dtype, self._started = int(outputs), np.dtype(output_dtype), False
        where = "" if hardware == "cpu" or self.model.is_fully_accelerated() else ", some ops on CPU"
        self.name = f"{hardware.upper()} (LiteRT CompiledModel{where})"

    def run(self, tensor: np.ndarray) -> np.ndarray:
        if not self._started:  # the first write starts LiteRT's shared environment, at length on fd 2
            with captured_stderr():
                self.inputs[0].write(tensor)
            self._started = True
        else:
            self.inputs[0].write(tensor)
        self.model.run_by_index(0, self.inputs, self.outputs)
        return self.outputs[0].read(self._n, self._dtype).reshape(self._n)

    def close(self) -> None:
        """Release the buffers, the model and its LiteRT environment now. The environment's end
        logs a ``DestroyAccelerator`` INFO line per accelerator on fd 2: captured here (warnings
        and errors still shown), not printed wherever the garbage collector happens to end it."""
        if self.model is None and self._env is None:
            return
        with captured_stderr() as logs:
            self._release()
        echo_litert_logs(logs.read())

    def _release(self) -> None:
        for buffer in (*self.inputs, *self.outputs):
            buffer.destroy()
        self.inputs, self.outputs = [], []
        env = self._env or getattr(self.model, "environment", None)
        if self.model is not None:
            self.model.close()
        if env is not None:
            env.close()
        self.model = self._env = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- a finaliser must not raise; the process is ending anyway
            pass


def litert_environment():
    """A LiteRT ``Environment`` edgeres owns (so it can end it quietly), as ``CompiledModel``
    makes by default; None with an ai-edge-litert too old to take one."""
    try:
        from ai_edge_litert.environment import Environment
    except ImportError:
        return None
    return Environment.create()


def delegate_backend(library: Path, model: bytes, threads: int,
                     load_delegate) -> tuple[InterpreterBackend | None, str | None]:
    """``(backend, None)``: the interpreter with the external delegate ``library`` loaded on
    ``model``; ``(None, reason)`` when it cannot be loaded."""
    reason = check_delegate_library(library)
    if reason is None:
        with captured_stderr() as logs:
            try:
                loaded = load_delegate(str(library))
                Interpreter = litert_interpreter()[0]
                interp = Interpreter(model_content=model, num_threads=threads, experimental_delegates=[loaded])
                interp.allocate_tensors()
            except (OSError, ValueError, RuntimeError, AttributeError) as e:
                reason = first_line(e)
        echo_litert_logs(logs.read())
    if reason is not None:
        return None, reason
    return InterpreterBackend(interp, f"delegate {library.name} (CPU fallback for unsupported ops)"), None


def check_delegate_library(path: Path) -> str | None:
    """Why ``path`` cannot be a TFLite external delegate, or None. Checked before LiteRT's
    ``load_delegate``, whose failures end in AttributeError tracebacks from ``Delegate.__del__``."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return f"not a loadable shared library: {first_line(e)}"
    missing = [s for s in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate") if not hasattr(lib, s)]
    if missing:
        return f"not a TFLite external delegate (no {' / '.join(missing)} symbol)"
    return None


def output_activation(interpreter, output_index: int) -> str:
    """``softmax`` when the graph ends in SOFTMAX (through quantize/reshape ops), ``logits``
    when it ends in anything else, ``unknown`` where this runtime cannot list its ops."""
    try:
        ops = interpreter._get_ops_details()  # noqa: SLF001 -- public in every LiteRT release
    except Exception:  # noqa: BLE001 -- old runtimes without op details
        return "unknown"
    producer = {int(t): op for op in ops if str(op.get("op_name", "")).upper() != "DELEGATE"
                for t in op.get("outputs", [])}  # DELEGATE nodes: XNNPACK's stand-ins for the real ops
    tensor = int(output_index)
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


def gpu_visible() -> bool:
    """Cheap check for a GPU a LiteRT accelerator could use (Linux DRI/NVIDIA nodes, macOS Metal)."""
    if sys.platform == "darwin":
        return True
    return any(Path("/dev/dri").glob("renderD*")) or Path("/dev/nvidia0").exists()


def gpu_reason(logs: str, error: Exception | None) -> str:
    """The line of LiteRT's log that says why its GPU accelerator is unavailable, else the error's."""
    for marker in ("No adapters found", "Failed to initialize", "not supported", "Could not load"):
        for line in logs.splitlines():
            if marker in line:
                return line.split("] ", 1)[-1].strip()
    return first_line(error) if error else "unknown reason"


def echo_litert_logs(text: str) -> None:
    # LiteRT's C++ logs go to fd 2; keep warnings and errors, drop its INFO chatter.
    for line in text.splitlines():
        if line.strip() and not line.startswith("INFO:"):
            print(line, file=sys.stderr)


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
