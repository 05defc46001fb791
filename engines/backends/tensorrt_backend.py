"""TensorRT backend (NVIDIA GPUs): build a serialized engine from the ONNX export, then run it on device buffers
owned by torch.

Written against the TensorRT 10 Python API and imported lazily, inside the functions that need it, so that
``import engines`` works everywhere and a machine without TensorRT gets an error that says what it has instead.
This module holds what TensorRT needs here (:func:`import_tensorrt`, :func:`check_available`) and the runner;
building, Polygraphy's chain of small steps (parse → configure → profile → build → save), is
:mod:`engines.backends.tensorrt_build`::

    info = build_engine("bffn.onnx", "bffn-fp16.engine", input_name="tiles", input_shape=(1, 128, 128),
                        batch=(1, 8, 32), precision="fp16", timing_cache=Path("timing.cache"))
    engine = TensorRTEngine("bffn-fp16.engine", "bffn", sha256, InputSpec(), 128, precision="fp16")
    probabilities = engine.infer(normalize_tiles(tiles, engine.spec))
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.backends.gpu import gpu_info
from engines.backends.registry import available_backends  # re-exported: what this machine runs
from engines.errors import BackendUnavailable, EngineError, MissingFile
from inspection_core.engine import Engine

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
TENSORRT_MAJOR = 10  # the API written against; TensorRT 11 removed the FP16/INT8 flags and the INT8 calibrators
OUTPUT_NAME = "probabilities"


# ---------------------------------------------------------------------------------------------------------------
# What this machine has


def _use_instead() -> str:
    here = available_backends(skip=("tensorrt",))
    if not here:
        return "no other backend is installed either: pip install onnxruntime"
    advice = "use --backend onnxruntime" if "onnxruntime:cpu" in here else f"use --backend {here[0].split(':')[0]}"
    if "torch:cuda" in here:
        advice += " (or --backend torch --device cuda)"
    return f"backends available on this machine: {', '.join(here)}; {advice}"


def _install_hint() -> str:
    try:
        import torch

        cuda = torch.version.cuda
    except ImportError:
        cuda = None
    wheel = f"tensorrt-cu{cuda.split('.')[0]}" if cuda else "tensorrt-cu12"
    built_for = f"the CUDA {cuda} that torch here is built for" if cuda else "your CUDA version (cu12 or cu13)"
    return (f'on a machine with an NVIDIA GPU and its driver, pip install "{wheel}>=10,<11" (a TensorRT 10 wheel '
            f"matching {built_for})")


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return -1


def tensorrt_version() -> str | None:
    """The installed TensorRT version (``"10.13.3.9"``), or None where it cannot be imported. Never raises."""
    try:
        import tensorrt
    except Exception:  # ImportError, or OSError/RuntimeError from a wheel whose libraries do not load
        return None
    return str(getattr(tensorrt, "__version__", "unknown"))


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`BackendUnavailable` saying how to install it and what to use here."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when libnvinfer is missing or does not match the driver
        raise BackendUnavailable(
            f"TensorRT is not installed here ({type(exc).__name__}: {exc}). To build and run TensorRT engines, "
            f"{_install_hint()}. Meanwhile, {_use_instead()}.") from exc
    version = str(getattr(trt, "__version__", "unknown"))
    if _major(version) != TENSORRT_MAJOR:
        raise BackendUnavailable(
            f"TensorRT {version} is installed, but this backend is written for the TensorRT {TENSORRT_MAJOR} API "
            f"(TensorRT 11 removed the FP16/INT8 builder flags and INT8 calibrators it uses): {_install_hint()}. "
            f"Meanwhile, {_use_instead()}.")
    return trt


def require_cuda(device: str = "cuda:0"):
    """torch, checked to see the CUDA device: TensorRT runs on NVIDIA GPUs and torch owns our device buffers."""
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(f"the TensorRT backend needs torch for its device buffers: pip install torch. "
                                 f"Meanwhile, {_use_instead()}.") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU, and torch sees no CUDA device here; {_use_instead()}.")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise BackendUnavailable(f"no CUDA device {device}: torch sees {torch.cuda.device_count()}; use cuda:0")
    return torch


def check_available(device: str = "cuda:0") -> None:
    """The registry's availability check (:mod:`engines.backends.registry`): TensorRT 10 and a CUDA device that
    torch sees, or :class:`BackendUnavailable` saying how to install it and what to use here."""
    import_tensorrt()
    require_cuda(device)


_LOGGER = None


def tensorrt_logger(trt):
    """One TensorRT logger for the process (TensorRT keeps the first one it is given), forwarding to ``logging``
    and keeping the latest errors so that exceptions can quote them."""
    global _LOGGER
    if _LOGGER is None:
        severity = trt.ILogger.Severity

        class RecordingLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, level, msg) -> None:
                if level in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors.append(str(msg))
                    del self.errors[:-20]
                    log.error("TensorRT: %s", msg)
                elif level == severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                elif level == severity.INFO:
                    log.debug("TensorRT: %s", msg)

            def take_errors(self) -> str:
                text = "; ".join(self.errors)
                self.errors.clear()
                return text

        _LOGGER = RecordingLogger()
    return _LOGGER


# ---------------------------------------------------------------------------------------------------------------
# Running


def _torch_dtype(trt, torch, dtype):
    pairs = (("FLOAT", "float32"), ("HALF", "float16"), ("BF16", "bfloat16"), ("INT8", "int8"), ("INT32", "int32"),
             ("INT64", "int64"), ("BOOL", "bool"), ("UINT8", "uint8"))
    for trt_name, torch_name in pairs:
        if hasattr(trt.DataType, trt_name) and dtype == getattr(trt.DataType, trt_name):
            return getattr(torch, torch_name)
    raise EngineError(f"the engine has a tensor of type {dtype}, which torch cannot hold; rebuild it from the "
                      "float32 ONNX export with `engines build`")


class TensorRTEngine(Engine):
    """A serialized TensorRT engine loaded on one GPU. Not thread-safe: one execution context, used by one thread.

    ``infer`` takes and returns numpy like every backend; ``infer_device`` keeps tensors on the GPU."""

    backend = "tensorrt"

    def __init__(self, engine_file: str | Path, model: str, weights_sha256: str, spec, tile: int,
                 precision: str = "fp16", device: str = "cuda:0") -> None:
        super().__init__(model, weights_sha256, spec, tile, precision)
        trt = import_tensorrt()
        torch = require_cuda(device)
        self._torch = torch
        self.device = torch.device(device)
        self.engine_file = Path(engine_file)
        if not self.engine_file.is_file():
            raise MissingFile(f"no TensorRT engine at {self.engine_file}; build one with `engines build`")
        logger = tensorrt_logger(trt)
        logger.take_errors()
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(logger)
            try:
                engine = self._runtime.deserialize_cuda_engine(self.engine_file.read_bytes())
            except Exception as exc:  # some releases raise instead of returning None
                logger.errors.append(str(exc))
                engine = None
            if engine is None:
                gpu = (gpu_info(self.device.index or 0) or {}).get("name", "this GPU")
                raise EngineError(
                    f"TensorRT {trt.__version__} on {gpu} cannot load {self.engine_file}: "
                    f"{logger.take_errors() or 'no detail given'}. An engine only runs with the TensorRT version "
                    "and the GPU model it was built with (or the file is damaged): rebuild it here with "
                    "`engines build`.")
            self._engine = engine
            self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.engine_file} "
                              f"({logger.take_errors() or 'out of GPU memory?'}); free GPU memory or use a smaller "
                              "maximum batch (`engines build --batch`)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not self.output_names:
            raise EngineError(f"{self.engine_file} has inputs {inputs} and outputs {self.output_names}; the station "
                              "runs networks with one input; rebuild from an `engines export` ONNX file")
        self.input_name = inputs[0]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in self.output_names else self.output_names[0]
        self.input_dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(self.input_name))
        self.output_dtypes = {n: _torch_dtype(trt, torch, engine.get_tensor_dtype(n)) for n in self.output_names}
        shape = tuple(engine.get_tensor_shape(self.input_name))
        expected = (spec.channels, tile, tile)
        if len(shape) != 4 or shape[1:] != expected:
            raise EngineError(f"{self.engine_file} takes input {shape}, not (N, {expected[0]}, {tile}, {tile}); "
                              f"rebuild it for tiles of {tile} px with `engines build`")
        low, opt, high = (tuple(s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
        self.batch_profile = (int(low[0]), int(opt[0]), int(high[0]))
        self._input_shape: tuple[int, ...] | None = None

    def _check_profile(self, n: int) -> None:
        low, opt, high = self.batch_profile
        if not low <= n <= high:
            raise EngineError(
                f"{self.engine_id} was built for batches of {low} to {high} tiles (profile {low}:{opt}:{high}), "
                f"got {n}; send batches of at most {high} tiles, or rebuild with "
                f"`engines build --batch {min(low, n)}:{opt}:{max(high, n)}`")

    def infer_device(self, x):
        """Run a CUDA batch ``(N, C, t, t)`` on torch's current stream; returns the output as a torch CUDA tensor
        (enqueued, not awaited: reading it from the host, e.g. ``.cpu()``, waits for the stream)."""
        torch = self._torch
        if self._context is None:
            raise EngineError(f"{self.engine_id} is closed; load the engine again")
        if not isinstance(x, torch.Tensor) or not x.is_cuda:
            raise ValueError(f"infer_device takes a torch CUDA tensor, got {type(x).__name__}; use infer() for numpy")
        expected = (self.spec.channels, self.tile, self.tile)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{self.engine_id} takes batches (N, {', '.join(map(str, expected))}), got "
                             f"{tuple(x.shape)}; cut tiles of {self.tile} px")
        self._check_profile(int(x.shape[0]))
        # Tensors are allocated and used on torch's current stream: its caching allocator will not hand their memory
        # to anyone else before the work queued here is done, even if the Python objects go away sooner.
        x = x.to(device=self.device, dtype=self.input_dtype).contiguous()
        with torch.cuda.device(self.device):
            shape = tuple(x.shape)
            if shape != self._input_shape:
                if not self._context.set_input_shape(self.input_name, shape):
                    raise EngineError(f"TensorRT refused input shape {shape} for {self.engine_id} "
                                      f"(profile {self.batch_profile})")
                self._input_shape = shape
            outputs = {}
            for name in self.output_names:
                out_shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in out_shape):
                    raise EngineError(f"TensorRT cannot tell the shape of output {name} for input {shape}")
                outputs[name] = torch.empty(out_shape, dtype=self.output_dtypes[name], device=self.device)
                self._context.set_tensor_address(name, outputs[name].data_ptr())
            self._context.set_tensor_address(self.input_name, x.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self._context.execute_async_v3(stream.cuda_stream):
                errors = _LOGGER.take_errors() if _LOGGER is not None else ""
                raise EngineError(f"TensorRT failed to run {self.engine_id}: {errors or 'no detail given'}")
        return outputs[self.output_name]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        self._check_profile(int(batch.shape[0]))
        x = self._torch.from_numpy(batch).to(self.device)
        return self.infer_device(x).float().cpu().numpy()

    def close(self) -> None:
        """Release the execution context, the engine and the runtime, in that order."""
        self._context = None
        self._engine = None
        self._runtime = None
