"""Building a TensorRT engine from the ONNX export, as Polygraphy does it: a chain of small steps, each checked
(parse → configure → profile → build → save), with the FP16/INT8 flags, one optimization profile, a timing cache
kept beside the engine and, for INT8, a calibrator fed with real images. TensorRT 10 Python API, imported lazily::

    info = build_engine("bffn.onnx", "bffn-fp16.engine", input_name="tiles", input_shape=(1, 128, 128),
                        batch=(1, 8, 32), precision="fp16", timing_cache=Path("timing.cache"))
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
from engines.backends.tensorrt_backend import PRECISIONS, import_tensorrt, require_cuda, tensorrt_logger
from engines.errors import EngineError, InputError, MissingFile

log = logging.getLogger(__name__)


def atomic_write(path: Path, data) -> int:
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
        raise InputError(f"workspace_mib must be positive, got {workspace_mib}")
    if not onnx_file.is_file():
        raise MissingFile(f"no ONNX file at {onnx_file}; export one first with `engines export`")
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
                atomic_write(cache_path, bytes(cache))

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
    require_cuda()

    started = time.perf_counter()
    logger = tensorrt_logger(trt)
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
    engine_bytes = atomic_write(engine_file, serialized)
    cache_bytes = None
    if timing_cache is not None:
        cache_bytes = atomic_write(timing_cache, config.get_timing_cache().serialize())
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
