"""The device side: run an exported classifier through LiteRT. Never imports TensorFlow.

    clf = Classifier("export/cats-dogs")            # a bundle (its int8 model) or a .tflite
    pred = clf.predict("photo.jpg")                 # path, bytes, PIL image or RGB uint8 array
    pred.label, pred.score, pred.latency_ms
    pred.uncertain                                  # top score below the model's band (clf.uncertain_below)

Works where only ``ai-edge-litert`` (or, as a last resort, the old ``tflite_runtime``), numpy
and Pillow are installed. CPU inference goes through XNNPACK with every core; ``gpu`` uses
LiteRT's ``CompiledModel`` GPU accelerator; ``delegate`` loads an external delegate library.

Every path other than the CPU interpreter is checked against it when it loads (the *self-check*):
a few probe inputs run on both, and an accelerator whose probabilities differ by more than
:data:`SELF_CHECK_TOLERANCE` is not used (one line says why; ``strict`` raises instead). LiteRT's
GPU accelerator, for one, returns wrong answers for int8 ResNets (``benchmarks/gpu.md``), so a
bundle on the GPU runs its float16 model.

The backends (interpreter, CompiledModel, delegate) live in :mod:`edgeres.accelerators`; reading
a bundle (which model, labels, probes) in :mod:`edgeres.bundle`. Their names are importable from
here too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeres._stderr import captured_stderr as _captured_stderr
from edgeres.accelerators import (MAX_THREADS_PER_CORE, SELF_CHECK_TOLERANCE, Accelerator, AcceleratorError,
                                  Backend, CompiledModelBackend, InterpreterBackend, Kernels, SelfCheck,
                                  check_delegate_library, delegate_backend, litert_interpreter, op_resolver,
                                  output_activation, parse_accelerator, resolve_threads)
from edgeres.accelerators import echo_litert_logs as _echo_litert_logs
from edgeres.accelerators import first_line as _first_line
from edgeres.accelerators import gpu_visible as _gpu_visible
from edgeres.accelerators import stderr_log as _stderr_log
from edgeres.bundle import (BUNDLE_JSON, BUNDLE_PREFERENCE, GPU_PREFERENCE, MAX_BUNDLE_PROBES, PROBE_SEED,
                            PROBES_FILE, SYNTHETIC_PROBES, ModelError, bundle_info, load_probes, model_labels,
                            resolve_model, synthetic_probes, write_probes)
from edgeres.bundle import gpu_variant as _gpu_variant
from edgeres.bundle import read_model_bytes as _read_model_bytes
from edgeres.preprocess import ImageInput, Resize, resize_of, to_pixels

__all__ = [
    "BUNDLE_JSON", "BUNDLE_PREFERENCE", "GPU_PREFERENCE", "MAX_BUNDLE_PROBES", "MAX_THREADS_PER_CORE", "PROBES_FILE",
    "PROBE_SEED", "SELF_CHECK_TOLERANCE", "SYNTHETIC_PROBES", "Accelerator", "AcceleratorError", "Backend",
    "Classifier", "CompiledModelBackend", "InterpreterBackend", "Kernels", "ModelError", "Prediction", "SelfCheck",
    "bundle_info", "check_accelerator", "check_delegate_library", "litert_interpreter", "load_probes",
    "parse_accelerator", "resolve_model", "resolve_threads", "synthetic_probes", "write_probes",
]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float
    probabilities: np.ndarray = field(repr=False)
    latency_ms: float  # set input + invoke + read output
    uncertain: bool = False  # top score below the model's uncertain band (Classifier.uncertain_below)

    def top_k(self, k: int, labels: tuple[str, ...]) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(labels[i], float(self.probabilities[i])) for i in order]

    def to_dict(self) -> dict:
        return {"label": self.label, "index": self.index, "score": round(self.score, 6),
                "latency_ms": round(self.latency_ms, 3), "uncertain": self.uncertain}


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
        kernels: Kernels | str = Kernels.XNNPACK,
        log=None,
    ):
        """``accelerator``: auto | cpu | gpu. ``delegate``: an external delegate library (.so).
        ``backend``: a ready accelerator backend (see :class:`Backend`). Anything but the CPU
        interpreter is self-checked against it at load; ``strict`` raises AcceleratorError where
        the default falls back to CPU with one line on ``log`` (default: stderr).
        ``variant``: which model of a bundle (int8, float16, float32, dynamic); default int8 on
        CPU, float16 on the GPU. ``kernels``: the CPU kernels, ``xnnpack`` (LiteRT's default) or
        ``builtin`` (LiteRT's built-in kernels, as a runtime without XNNPACK computes)."""
        t0 = time.perf_counter()
        self._log = log or _stderr_log
        self.kernels = Kernels(kernels)
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
                resolver = op_resolver(self.kernels)
                extra = {} if resolver is None else {"experimental_op_resolver_type": resolver}
                self._interpreter = Interpreter(model_content=data, num_threads=self.threads, **extra)
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
        self.output_activation = output_activation(self._interpreter, self._out[0]["index"])
        self.labels = model_labels(path, data, int(self._out[0]["shape"][1]), self._log)
        self.resize, self.uncertain_below = self._read_record(data)
        kernels = "XNNPACK" if self.kernels is Kernels.XNNPACK else "built-in kernels"
        self._cpu = InterpreterBackend(self._interpreter, f"CPU ({kernels}, {self.threads} threads)")
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

    def _read_record(self, data: bytes) -> tuple[Resize, float | None]:
        """The resize the model was validated with: from its embedded edgeres record, else the
        bundle's edgeres.json, else the default rule (what MediaPipe does with a bare model). And
        its uncertain band: the top score below which an answer is uncertain, from the output's
        ScoreThresholdingOptions (as MediaPipe reads it); None: no band. An app may set
        ``uncertain_below`` itself."""
        from edgeres.metadata import read_metadata

        try:
            metadata = read_metadata(data) or {}
            info = json.loads(metadata["extra_json"]) if metadata.get("extra_json") else None
        except (ValueError, TypeError):
            metadata, info = {}, None
        if not isinstance(info, dict):  # a record of another shape is no record
            info = None
        if not isinstance(metadata, dict):
            metadata = {}
        return resize_of(info or bundle_info(self.path) or None), metadata.get("score_threshold")

    def _warn_if_failed_bundle(self) -> None:
        info = bundle_info(self.path)
        int8 = (info.get("models", {}).get("int8") or {}).get("file")
        failed = (self.path.parent / "FAILED")
        if self.path.name != int8 or not (info.get("status") == "failed" or failed.is_file()):
            return
        why = ((failed.read_text(errors="replace").strip().splitlines() or ["int8 check failed"])[0]
               if failed.is_file() else "int8 check failed")
        self._log(f"edgeres: warning: {self.path.parent} is marked FAILED by export ({why}); "
                  f"its int8 answers are less accurate than float32.")

    def _fallback(self, reason: str, strict: bool) -> None:
        if strict:
            raise AcceleratorError(f"{reason}. --strict forbids running on CPU instead.")
        self.accelerator_note = f"edgeres: {reason}; running on CPU (XNNPACK, {self.threads} threads) instead."
        self._log(self.accelerator_note)

    def _delegate_backend(self, delegate: Path, strict: bool):
        backend, reason = delegate_backend(delegate, self._data, self.threads, self._load_delegate)
        if reason is not None:
            self._fallback(f"delegate {delegate} could not be loaded ({reason})", strict)
        return backend

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
        below = self.uncertain_below is not None and float(probs[i]) < self.uncertain_below
        return Prediction(self.labels[i], i, float(probs[i]), probs, latency, below)

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
                "labels": list(self.labels), "uncertain_below": self.uncertain_below,
                "load_ms": round(self.load_ms, 2),
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
