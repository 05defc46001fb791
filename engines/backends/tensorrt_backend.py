"""TensorRT backend (NVIDIA GPUs): build a serialized engine from the ONNX export, then run it on device buffers
owned by torch.

Written against the TensorRT 10 Python API and imported lazily, inside the functions that need it, so that
``import engines`` works everywhere and a machine without TensorRT gets an error that says what it has instead.
Building follows Polygraphy's chain of small steps: parse → configure → profile → build → save::

    info = build_engine("bffn.onnx", "bffn-fp16.engine", input_name="tiles", input_shape=(1, 128, 128),
                        batch=(1, 8, 32), precision="fp16", timing_cache=Path("timing.cache"))
    engine = TensorRTEngine("bffn-fp16.engine", "bffn", sha256, InputSpec(), 128, precision="fp16")
    probabilities = engine.infer(normalize_tiles(tiles, engine.spec))
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from engines.backends.gpu import gpu_info
from engines.errors import BackendUnavailable, EngineError
from inspection_core.engine import Engine

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
TENSORRT_MAJOR = 10  # the API written against; TensorRT 11 removed the FP16/INT8 flags and the INT8 calibrators
OUTPUT_NAME = "probabilities"


# ---------------------------------------------------------------------------------------------------------------
# What this machine has


def available_backends() -> list[str]:
    """The backends that can run on this machine, as ``backend:device`` (``["onnxruntime:cpu", "torch:cpu"]``)."""
    found = []
    try:
        import onnxruntime

        found.append("onnxruntime:cpu")
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            found.append("onnxruntime:cuda")
    except ImportError:
        pass
    try:
        import torch

        found.append("torch:cpu")
        if torch.cuda.is_available():
            found.append("torch:cuda")
    except ImportError:
        pass
    version = tensorrt_version()
    if version is not None and _major(version) == TENSORRT_MAJOR and "torch:cuda" in found:
        found.append("tensorrt:cuda")
    return found


def _use_instead() -> str:
    here = [b for b in available_backends() if not b.startswith("tensorrt")]
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


def _require_cuda(device: str = "cuda:0"):
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


_LOGGER = None


def _logger(trt):
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


def _atomic_write(path: Path, data) -> int:
    """Write ``data`` (bytes or a buffer such as IHostMemory) to ``path`` through a temporary file and a rename,
    so that a reader never sees half a file. Returns the size written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview(data)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(view)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; engines and caches are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return view.nbytes


# ---------------------------------------------------------------------------------------------------------------
# Building: parse → configure → profile → build → save


def _check_build_args(onnx_file: Path, input_shape, batch, precision: str, workspace_mib: int, calibration_batches,
                      calibration_cache: Path | None) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if len(tuple(input_shape)) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive sizes, got {tuple(input_shape)}")
    if len(tuple(batch)) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"batch must be (min, opt, max) with 1 <= min <= opt <= max, got {tuple(batch)}; "
                         "e.g. --batch 1:8:32")
    if workspace_mib < 1:
        raise ValueError(f"workspace_mib must be positive, got {workspace_mib}")
    if not onnx_file.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_file}; export one first with `engines export`")
    has_cache = calibration_cache is not None and calibration_cache.is_file()
    if precision == "int8" and calibration_batches is None and not has_cache:
        raise EngineError("an INT8 engine needs calibration data: pass calibration_batches (float32 normalised "
                          "tiles, a few hundred from real production images; see `calibration`), or a calibration "
                          "cache from an earlier INT8 build; or build fp16, which needs none")


def _parse(trt, builder, onnx_file: Path, logger):
    """Parse the ONNX file into a new network. Returns (network, parser): the parser owns the weights, so it must
    live until the engine is built."""
    network = builder.create_network(0)  # TensorRT 10: every network has an explicit batch dimension
    parser = trt.OnnxParser(network, logger)
    logger.take_errors()
    if parser.parse_from_file(str(onnx_file)):
        return network, parser
    problems = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        node = getattr(error, "node_name", lambda: "")() or f"#{error.node()}"
        operator = getattr(error, "node_operator", lambda: "")()
        where = (f"node {node}" + (f" ({operator})" if operator else "")) if error.node() >= 0 else "graph"
        problems.append(f"{where}: {error.desc()} [{error.code()}]")
    detail = "\n  ".join(problems) or logger.take_errors() or "no detail given"
    raise EngineError(f"TensorRT {trt.__version__}'s ONNX parser rejected {onnx_file}:\n  {detail}\n"
                      "engines.onnx_check.check_onnx() lists unsupported operators on any machine; change the layer "
                      "or the export opset, and export again with `engines export`.")


def _check_input(network, input_name: str, input_shape: tuple[int, ...]) -> None:
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise EngineError(f"the ONNX graph has no input {input_name!r}; its inputs are {sorted(inputs)}")
    shape = inputs[input_name]
    if len(shape) != 4 or any(d not in (-1, want) for d, want in zip(shape[1:], input_shape)):
        raise EngineError(f"input {input_name!r} of the ONNX graph has shape {shape}, not (batch, "
                          f"{', '.join(map(str, input_shape))}); export it again for this tile size")
    if shape[0] != -1:
        raise EngineError(f"input {input_name!r} has a fixed batch of {shape[0]}; export with a dynamic batch "
                          "(`engines export` does) so that one engine serves every batch size of the profile")


def _configure(trt, builder, precision: str, workspace_mib: int):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if precision in ("fp16", "int8"):
        # INT8 engines also allow FP16, so that layers left unquantised do not fall back to FP32.
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    return config


def _add_profile(builder, config, input_name: str, input_shape: tuple[int, ...], batch: tuple[int, int, int]):
    profile = builder.create_optimization_profile()
    low, opt, high = ((n, *input_shape) for n in batch)
    profile.set_shape(input_name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT refused the optimization profile {batch} for {input_name} {input_shape}")
    return profile


def _load_timing_cache(config, path: Path | None) -> bool:
    """Give the builder the timing cache at ``path`` when there is one (else an empty one). Returns whether an
    existing cache was taken; one from another GPU or TensorRT version is set aside with a warning."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if data and (cache is None or not config.set_timing_cache(cache, False)):
        log.warning("timing cache %s was made by another TensorRT version or GPU; starting a new one", path)
        data = b""
        cache = config.create_timing_cache(b"")
    if not data:
        config.set_timing_cache(cache, False)
    return bool(data)


def _calibrator(trt, batches_fn, input_shape: tuple[int, ...], cache_path: Path | None, fallback_batch: int):
    """An entropy calibrator that feeds float32 normalised batches through one torch CUDA buffer."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches_fn()) if batches_fn is not None else iter(())
            self._next = next(self._batches, None)
            self.batch_size = int(self._next.shape[0]) if self._next is not None else fallback_batch
            self._buffer = None  # kept alive between get_batch calls: TensorRT reads it after we return
            self.used = self.skipped = 0
            self.error: Exception | None = None

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names):
            try:  # an exception must not cross into TensorRT: keep it and end calibration
                batch, self._next = self._next, next(self._batches, None)
                while batch is not None and batch.shape[0] != self.batch_size:
                    self.skipped += 1  # calibration runs at one batch size; a short last batch is dropped
                    batch, self._next = self._next, next(self._batches, None)
                if batch is None:
                    return None
                if batch.dtype != np.float32 or tuple(batch.shape[1:]) != tuple(input_shape):
                    raise ValueError(f"calibration batches must be float32 (N, {', '.join(map(str, input_shape))}) "
                                     f"normalised tiles, got {batch.dtype} {tuple(batch.shape)}")
                if self._buffer is None:
                    self._buffer = torch.empty(batch.shape, dtype=torch.float32, device="cuda")
                self._buffer.copy_(torch.from_numpy(np.ascontiguousarray(batch)))
                torch.cuda.synchronize()
                self.used += 1
                return [int(self._buffer.data_ptr())]
            except Exception as exc:
                self.error = exc
                return None

        def read_calibration_cache(self):
            if cache_path is not None and cache_path.is_file():
                log.info("using INT8 calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if cache_path is not None:
                _atomic_write(cache_path, bytes(cache))

    return EntropyCalibrator()


def build_engine(onnx_file: str | Path, engine_file: str | Path, *, input_name: str, input_shape: tuple[int, int, int],
                 batch: tuple[int, int, int], precision: str = "fp16", workspace_mib: int = 1024,
                 timing_cache: Path | None = None,
                 calibration_batches: Callable[[], Iterable[np.ndarray]] | None = None,
                 calibration_cache: Path | None = None) -> dict:
    """Build a TensorRT engine from an ONNX file and save it (atomically) at ``engine_file``.

    ``input_shape`` is one tile ``(C, H, W)``; ``batch`` the optimization profile ``(min, opt, max)``. ``fp16``
    lets TensorRT choose FP16 kernels; ``int8`` calibrates with ``calibration_batches()`` (float32 normalised
    batches, all of one size) or reuses ``calibration_cache``. The timing cache at ``timing_cache`` is read when
    present and written back after the build, which makes later builds on this GPU much faster. Returns what
    was built: TensorRT version, seconds, precision, profile, engine and timing-cache sizes, GPU.
    """
    onnx_file, engine_file = Path(onnx_file), Path(engine_file)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    calibration_cache = Path(calibration_cache) if calibration_cache is not None else None
    input_shape = tuple(int(d) for d in input_shape)
    batch = tuple(int(n) for n in batch)
    _check_build_args(onnx_file, input_shape, batch, precision, workspace_mib, calibration_batches, calibration_cache)
    trt = import_tensorrt()
    _require_cuda()

    started = time.perf_counter()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, onnx_file, logger)
    _check_input(network, input_name, input_shape)
    config = _configure(trt, builder, precision, workspace_mib)
    _add_profile(builder, config, input_name, input_shape, batch)
    cache_loaded = _load_timing_cache(config, timing_cache)
    calibrator = None
    if precision == "int8":
        calibrator = _calibrator(trt, calibration_batches, input_shape, calibration_cache, batch[1])
        calibration_profile = builder.create_optimization_profile()
        shape = (calibrator.batch_size, *input_shape)
        calibration_profile.set_shape(input_name, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)
        config.int8_calibrator = calibrator

    logger.take_errors()
    log.info("building %s engine from %s (profile %s, TensorRT %s)", precision, onnx_file, batch, trt.__version__)
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        raise EngineError(f"INT8 calibration failed: {calibrator.error}") from calibrator.error
    if serialized is None:
        raise EngineError(f"TensorRT could not build {onnx_file} ({precision}, batch {batch}): "
                          f"{logger.take_errors() or 'no detail given'}. A larger --workspace, a smaller maximum "
                          "batch, or fp16 instead of int8 may help.")
    engine_bytes = _atomic_write(engine_file, serialized)
    cache_bytes = None
    if timing_cache is not None:
        cache_bytes = _atomic_write(timing_cache, config.get_timing_cache().serialize())
    del parser  # owned the weights until the build was done
    info = {
        "tensorrt": trt.__version__,
        "onnx_file": str(onnx_file),
        "engine_file": str(engine_file),
        "seconds": round(time.perf_counter() - started, 2),
        "precision": precision,
        "input": {"name": input_name, "shape": list(input_shape)},
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "workspace_mib": int(workspace_mib),
        "engine_bytes": engine_bytes,
        "timing_cache": str(timing_cache) if timing_cache is not None else None,
        "timing_cache_loaded": cache_loaded,
        "timing_cache_bytes": cache_bytes,
        "gpu": gpu_info(),
    }
    if calibrator is not None:
        info["calibration"] = {"batches": calibrator.used, "batch_size": calibrator.batch_size,
                               "skipped": calibrator.skipped,
                               "cache": str(calibration_cache) if calibration_cache is not None else None}
    log.info("built %s (%d bytes) in %.1f s", engine_file, engine_bytes, info["seconds"])
    return info


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
        torch = _require_cuda(device)
        self._torch = torch
        self.device = torch.device(device)
        self.engine_file = Path(engine_file)
        if not self.engine_file.is_file():
            raise FileNotFoundError(f"no TensorRT engine at {self.engine_file}; build one with `engines build`")
        logger = _logger(trt)
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
