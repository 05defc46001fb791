"""Building engine folders and opening them by their manifest: the chain behind ``engines build`` and behind every
engine the station, ``engines eval`` and ``engines compare`` load.

Building is a chain of small steps, each one checked:

1. resolve the weights and copy them into ``DIR/weights`` (the torch reference travels with the engine);
2. export ONNX (onnxruntime, tensorrt), checked against ``onnx.checker``, shape inference and TensorRT's operator
   list; quantise it (onnxruntime int8, static, calibrated on real images) or convert it (onnxruntime fp16, CUDA);
3. build the TensorRT plan (tensorrt: FP16/INT8 flags, optimization profile, timing cache kept in ``DIR``);
4. open what was built and measure its parity with the torch fp32 reference on real tiles (``--data``) or, when no
   data is given, on a seeded random batch;
5. write ``manifest.json`` and move the folder into place (a failed build never leaves a half-written folder).

>>> manifest = build(BuildSettings(weights="bffn-magnetic-tile", backend="onnxruntime", out="engines-built/bffn"))
>>> engine = open_engine("engines-built/bffn")                      # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engines.backends.common import BACKENDS, cache_dir, default_threads
from engines.backends.onnxruntime_backend import OnnxRuntimeEngine
from engines.backends.tensorrt_backend import TensorRTEngine, build_engine
from engines.backends.torch_backend import TorchEngine
from engines.data.multilabel import load_multilabel
from engines.data.segmentation import DatasetError, load_dataset
from engines.errors import BackendUnavailable, EngineError
from engines.export import INPUT_NAME, OPSET, export_onnx, model_kind
from engines.manifest import (
    FORMAT,
    check,
    is_engine_dir,
    library_versions,
    machine,
    now_iso,
    problems,
    read_manifest,
    write_manifest,
)
from engines.onnx_check import unsupported_tensorrt_ops
from engines.weights import CONFIG_FILE, WEIGHTS_FILE, resolve_weights
from inspection_core import imageio
from inspection_core.engine import Engine
from inspection_core.errors import ImageReadError
from inspection_core.hashing import file_sha256
from inspection_core.preprocess import InputSpec, defect_scores, normalize_tiles, prepare_image, resize_to_input
from inspection_core.tiling import plan_tiles, tile_image

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
WEIGHTS_DIR = "weights"
ONNX_FILE, PLAN_FILE, TIMING_CACHE = "model.onnx", "model.plan", "timing.cache"
CALIBRATION_CACHE = "int8-calibration.cache"
DEFAULT_BATCH = (1, 32, 64)


@dataclass(frozen=True)
class BuildSettings:
    """What ``engines build`` was asked for. ``batch`` is the (min, opt, max) profile: TensorRT builds for it,
    torch on CUDA captures a CUDA graph for ``opt``. ``data`` (images for the parity check) and ``calibration``
    (a calibration profile or image folder for int8) are optional."""

    weights: str
    backend: str = "onnxruntime"
    out: str = ""
    precision: str = "fp32"
    batch: tuple[int, int, int] = DEFAULT_BATCH
    tile: int = 0
    device: str = ""
    mode: str = "batch"
    model: str = ""
    workspace_mib: int = 2048
    calibration: str = ""
    calibration_images: int = 64
    data: str = ""
    parity_images: int = 8
    threads: int = 0

    def resolved_device(self) -> str:
        return self.device or ("cuda" if self.backend == "tensorrt" else "cpu")


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1:32:64"`` → (1, 32, 64); ``"32"`` → (32, 32, 32)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise ValueError(f"--batch {text!r}: use MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:32:64")
    return parts[0], parts[1], parts[2]


def _check_settings(s: BuildSettings, bundle) -> None:
    if s.backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {s.backend!r}; choose one of {', '.join(BACKENDS)}")
    if s.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {s.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if s.model and s.model != bundle.model:
        raise ValueError(f"--model {s.model} does not match the weights {bundle.path}, which hold a {bundle.model}")
    device = s.resolved_device()
    if s.backend == "tensorrt" and not device.startswith("cuda"):
        raise ValueError("TensorRT engines run on an NVIDIA GPU: use --device cuda (the default for tensorrt)")
    if s.backend == "torch" and s.precision == "int8":
        raise ValueError("the torch backend has no int8 path; build int8 with --backend onnxruntime or tensorrt")
    if s.backend == "onnxruntime" and s.precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("onnxruntime fp16 needs the CUDA provider (--device cuda): on the CPU ONNX Runtime casts "
                         "fp16 graphs back to fp32 node by node, so nothing would be gained or measured; use fp32 "
                         "or int8 on the CPU")
    if s.precision == "int8" and not s.calibration:
        raise ValueError("int8 needs calibration images: --calibration PROFILE_OR_DIR (a calibration profile's "
                         "int8 set, `calibration int8 add`, or a folder of real images)")


def _copy_weights(bundle, folder: Path) -> Path:
    target = folder / WEIGHTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(bundle.path / name, target / name)
    return target


def _entry(folder: Path, name: str) -> dict[str, str]:
    return {"file": name, "sha256": file_sha256(folder / name)}


# ------------------------------------------------------------------------------------------------ inputs

def read_images(paths) -> list[np.ndarray]:
    """uint8 grey or RGB images from files (alpha dropped), read by the station's one reader
    (:func:`inspection_core.imageio.read_image`, safe for non-ASCII paths); unreadable files are named in the error."""
    import cv2

    images = []
    for path in paths:
        try:
            image = imageio.read_image(path, imageio.ImageMode.UNCHANGED)
        except ImageReadError:
            raise EngineError(f"cannot read image {path}: missing or corrupt; remove it from the set") from None
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
        if image.dtype != np.uint8:
            raise EngineError(f"{path} is {image.dtype}, not 8-bit; convert it to 8 bits")
        images.append(image)
    return images


def named_images(data: str | Path, limit: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 image) pairs of a data folder in any layout ``engines eval`` reads, or a folder of plain
    images; ``limit`` picks that many spread evenly over the folder (0 = all)."""
    data = Path(data)
    try:
        pairs = [(s.name, s.image) for s in load_dataset(data)]
    except DatasetError:
        try:
            pairs = [(s.name, np.asarray(s.image)) for s in load_multilabel(data).samples]
        except DatasetError:
            files = imageio.image_files(data) if data.is_dir() else [data] if data.is_file() else []
            if not files:
                raise EngineError(f"no images in {data}; pass a data folder (--data)") from None
            files = [files[i] for i in _spread(len(files), limit)]
            return list(zip((f.name for f in files), read_images(files)))
    return [pairs[i] for i in _spread(len(pairs), limit)]


def _spread(n: int, limit: int) -> list[int]:
    """``limit`` indices spread evenly over ``range(n)`` (all of them when ``limit`` is 0 or at least ``n``)."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def data_images(data: str | Path, count: int) -> list[np.ndarray]:
    """``count`` images spread evenly over a data folder (see :func:`named_images`)."""
    return [image for _, image in named_images(data, count)]


#: Where ``--calibration NAME`` finds INT8 image sets besides plain image folders: functions that take the name and
#: return the set's image files and the calibration cache kept with it (``None`` when the set has none), raising
#: :class:`EngineError` when the name is not a set they can read. The calibration package registers its profiles'
#: sets (``calibration int8 add``) when :mod:`calibration.int8` is imported, as the ``engines`` command does: the
#: engines package itself does not depend on calibration.
INT8_SETS: list[Callable[[str], tuple[list[Path], Path | None]]] = []


def register_int8_sets(finder: Callable[[str], tuple[list[Path], Path | None]]) -> None:
    """Let ``--calibration`` name INT8 sets that ``finder`` reads (see :data:`INT8_SETS`)."""
    if finder not in INT8_SETS:
        INT8_SETS.append(finder)


def int8_set(calibration: str) -> tuple[list[Path], Path | None]:
    """The image files and kept calibration cache of the INT8 set ``calibration`` names (see :data:`INT8_SETS`)."""
    if not INT8_SETS:
        raise EngineError(f"--calibration {calibration}: not a folder of images, and no INT8 sets of calibration "
                          "profiles are known here (import calibration.int8, as the `engines` command does)")
    return INT8_SETS[-1](calibration)


def calibration_images(calibration: str, count: int) -> list[np.ndarray]:
    """The int8 calibration images: a calibration profile's managed int8 set (``calibration int8``) or a folder."""
    path = Path(calibration)
    if path.is_dir() and not (path / "profile.json").exists() and not (path / "int8").exists():
        return data_images(path, count)
    files, _ = int8_set(calibration)
    if not files:
        raise EngineError(f"calibration {calibration} holds no int8 images; add real images with "
                          "`calibration int8 add`")
    return read_images([files[i] for i in _spread(len(files), count)])


def network_inputs(images: list[np.ndarray], kind: str, tile: int, spec, limit: int = 0) -> np.ndarray:
    """Normalised float32 network inputs from images, prepared exactly as the station prepares them: tiles cut
    by the station's tiler (segmentation) or whole images resized to the input side (classification)."""
    if kind == "classification":
        batch = normalize_tiles(resize_to_input(images, tile, spec), spec)
    else:
        parts = []
        for image in images:
            prepared = prepare_image(image, spec)
            parts.append(tile_image(prepared, plan_tiles(prepared.shape[:2], tile, 0)))
        batch = normalize_tiles(np.concatenate(parts), spec)
    return batch[:limit] if limit else batch


def random_inputs(count: int, spec, tile: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (count, tile, tile) if spec.channels == 1 else (count, tile, tile, spec.channels)
    return normalize_tiles(rng.integers(0, 256, shape, dtype=np.uint8), spec)


def batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield np.ascontiguousarray(x[start:start + size])


# ------------------------------------------------------------------------------------------------ building

def _export(bundle, settings: BuildSettings, folder: Path, tile: int) -> dict[str, Any]:
    export_onnx(bundle, folder / ONNX_FILE, tile=tile, mode=settings.mode)
    return {"opset": OPSET, "tensorrt_unsupported_ops": unsupported_tensorrt_ops(folder / ONNX_FILE)}


def _quantize_onnxruntime(folder: Path, inputs: np.ndarray, batch: int) -> str:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on ``inputs``; returns the file name."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches(inputs, batch))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT_NAME: x}

    prepared = folder / "model.prep.onnx"
    quant_pre_process(str(folder / ONNX_FILE), str(prepared), skip_symbolic_shape=True)
    name = "model.int8.onnx"
    quantize_static(str(prepared), str(folder / name), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    return name


def _fp16_onnx(folder: Path) -> str:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    name = "model.fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(folder / ONNX_FILE)), keep_io_types=True), str(folder / name))
    return name


def build(settings: BuildSettings) -> dict[str, Any]:
    """Build an engine folder at ``settings.out``; return its manifest. An existing folder is replaced only once
    the new one is complete (its TensorRT timing cache is reused)."""
    started = time.perf_counter()
    bundle = resolve_weights(settings.weights)
    _check_settings(settings, bundle)
    kind = model_kind(bundle.model)
    tile = settings.tile or bundle.tile
    device = settings.resolved_device()
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        weights_dir = _copy_weights(bundle, work)
        spec = bundle.input_spec()
        manifest: dict[str, Any] = {
            "format": FORMAT, "model": bundle.model, "kind": kind, "model_config": bundle.model_config,
            "mode": settings.mode if bundle.model == "gr" else None, "classes": bundle.info.get("classes"),
            "input": spec.to_dict(), "tile": tile, "backend": settings.backend, "device": device,
            "precision": settings.precision,
            "batch": dict(zip(("min", "opt", "max"), settings.batch)),
            "weights": {**_entry(work, f"{WEIGHTS_DIR}/model.safetensors"), "source": str(settings.weights)},
            "onnx": None, "engine": None,
        }
        calib = None
        if settings.precision == "int8":
            calib = network_inputs(calibration_images(settings.calibration, settings.calibration_images), kind,
                                   tile, spec, limit=max(settings.batch[1] * 8, 64))
            manifest["int8_calibration"] = {"source": settings.calibration, "inputs": int(len(calib))}
        if settings.backend in ("onnxruntime", "tensorrt"):
            report = _export(bundle, settings, work, tile)
            manifest["onnx"] = {**_entry(work, ONNX_FILE), **report}
            if settings.backend == "onnxruntime" and settings.precision != "fp32":
                name = (_quantize_onnxruntime(work, calib, settings.batch[1]) if settings.precision == "int8"
                        else _fp16_onnx(work))
                manifest["engine"] = _entry(work, name)
        if settings.backend == "tensorrt":
            if out.joinpath(TIMING_CACHE).exists():
                shutil.copy2(out / TIMING_CACHE, work / TIMING_CACHE)
            if calib is not None:
                _seed_calibration_cache(settings.calibration, out, work / CALIBRATION_CACHE)
            info = build_engine(
                work / ONNX_FILE, work / PLAN_FILE, input_name=INPUT_NAME, input_shape=(spec.channels, tile, tile),
                batch=settings.batch, precision=settings.precision, workspace_mib=settings.workspace_mib,
                timing_cache=work / TIMING_CACHE,
                calibration_batches=(lambda: batches(calib, settings.batch[1])) if calib is not None else None,
                calibration_cache=work / CALIBRATION_CACHE if calib is not None else None)
            manifest["engine"] = _entry(work, PLAN_FILE)
            manifest["tensorrt_build"] = info
        manifest["versions"] = library_versions()
        manifest["machine"] = machine(device)
        manifest["built_at"] = now_iso()
        manifest["build_command"] = build_command(settings)
        manifest["settings"] = asdict(settings)
        write_manifest(work, manifest)  # provisional, so the folder opens for the parity check
        engine = _open(work, manifest, threads=settings.threads, device=device)
        try:
            manifest["parity"] = measure_parity(engine, weights_dir, settings, kind, tile, spec)
        finally:
            engine.close()
        manifest["build_seconds"] = round(time.perf_counter() - started, 1)
        write_manifest(work, manifest)
        _swap_into_place(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("built %s in %.1f s", out, manifest["build_seconds"])
    return manifest


def _seed_calibration_cache(calibration: str, out: Path, target: Path) -> None:
    """Start from an INT8 calibration cache made before for the same images: the one in the engine folder being
    rebuilt, else the one kept with the calibration profile's int8 set (read, never written: profile versions
    are immutable). TensorRT then skips the calibration pass."""
    candidates = [out / CALIBRATION_CACHE]
    try:
        _, kept = int8_set(calibration)
        if kept is not None:
            candidates.append(kept)
    except Exception:  # noqa: BLE001 - a plain image folder has no profile, hence no kept cache
        pass
    for path in candidates:
        if path.is_file():
            shutil.copy2(path, target)
            log.info("INT8 calibration cache from %s", path)
            return


def _swap_into_place(work: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.replace(old)
    work.replace(out)
    shutil.rmtree(old, ignore_errors=True)


def build_command(settings: BuildSettings) -> str:
    parts = ["engines", "build", "--weights", str(settings.weights), "--backend", settings.backend,
             "--precision", settings.precision, "--batch", ":".join(map(str, settings.batch)), "--out",
             str(settings.out)]
    for flag, value, default in (("--tile", settings.tile, 0), ("--device", settings.device, ""),
                                 ("--mode", settings.mode, "batch"), ("--calibration", settings.calibration, ""),
                                 ("--data", settings.data, ""), ("--workspace", settings.workspace_mib, 2048)):
        if value != default:
            parts += [flag, str(value)]
    return shlex.join(parts)


# ------------------------------------------------------------------------------------------------ parity

def reference_engine(folder_or_weights: str | Path, threads: int = 0, device: str = "cpu") -> Engine:
    """The torch fp32 reference for an engine folder (from the weights it carries) or a weights folder."""
    manifest = read_manifest(folder_or_weights) if is_engine_dir(folder_or_weights) else {}
    return TorchEngine.from_bundle(resolve_weights(folder_or_weights), threads=threads or default_threads(),
                                   device=device, mode=manifest.get("mode") or "batch")


def compare_outputs(got: np.ndarray, want: np.ndarray, kind: str, threshold: float = 0.5) -> dict[str, float]:
    """How far two engines' probabilities are apart, in the user's terms: the share of decisions (pixels or
    labels, defect score at ``threshold``) on which they agree, and the max / mean absolute score difference."""
    if got.shape != want.shape:
        raise EngineError(f"outputs differ in shape: {got.shape} against {want.shape}")
    if kind == "segmentation":
        a, b = defect_scores(got), defect_scores(want)
    else:
        a, b = got, want
    diff = np.abs(a.astype(np.float64) - b)
    return {"decision_agreement": round(float(((a >= threshold) == (b >= threshold)).mean()), 6),
            "max_abs": significant(diff.max()), "mean_abs": significant(diff.mean())}


def significant(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits (score differences span 1e-9 to 1: fixed decimals would hide the
    small ones as 0)."""
    return float(f"{float(x):.{digits}g}")


def measure_parity(engine: Engine, weights_dir: Path, settings: BuildSettings, kind: str, tile: int, spec) -> dict:
    """Parity of a freshly built engine with the torch fp32 CPU reference on the same inputs."""
    if settings.data:
        x = network_inputs(data_images(settings.data, settings.parity_images), kind, tile, spec, limit=64)
        source = f"{settings.data} ({settings.parity_images} images)"
    else:
        x = random_inputs(8, spec, tile)
        source = "seeded random tiles (no --data given)"
    reference = reference_engine(weights_dir, threads=settings.threads)
    step = min(settings.batch[2], max(settings.batch[1], 1))
    got = np.concatenate([engine.infer(b) for b in batches(x, step)])
    want = np.concatenate([reference.infer(b) for b in batches(x, step)])
    reference.close()
    return {"against": "torch fp32 cpu", "inputs": int(len(x)), "source": source,
            **compare_outputs(got, want, kind)}


# ------------------------------------------------------------------------------------------------ opening

def _open(folder: Path, manifest: dict, threads: int = 0, device: str | None = None) -> Engine:
    threads = threads or default_threads()
    device = device or manifest.get("device", "cpu")
    spec = InputSpec(**manifest["input"])
    sha, model, tile, precision, kind = (manifest["weights"]["sha256"], manifest["model"], manifest["tile"],
                                         manifest["precision"], manifest["kind"])
    backend = manifest["backend"]
    if backend == "onnxruntime":
        name = (manifest.get("engine") or manifest["onnx"])["file"]
        engine: Engine = OnnxRuntimeEngine(folder / name, model, sha, spec, tile, threads, precision, device, kind)
    elif backend == "torch":
        engine = TorchEngine.from_bundle(resolve_weights(folder / WEIGHTS_DIR), threads=threads, device=device,
                                         precision=precision, graph_batch=manifest["batch"]["opt"],
                                         mode=manifest.get("mode") or "batch")
    elif backend == "tensorrt":
        engine = TensorRTEngine(folder / PLAN_FILE, model, sha, spec, tile, precision, device=device)
        engine.kind = kind
    else:
        raise EngineError(f"{folder}: unknown backend {backend!r} in its manifest; rebuild it with `engines build`")
    engine.manifest, engine.folder = manifest, Path(folder)
    return engine


def open_engine(folder: str | Path, threads: int = 0, device: str | None = None) -> Engine:
    """Open a built engine folder after checking its manifest against its files, the libraries and the GPU here
    (:class:`engines.manifest.ManifestError` names each difference and the command that rebuilds it)."""
    folder = Path(folder)
    manifest = check(folder)
    return _open(folder, manifest, threads=threads, device=device)


def cache_folder(bundle, backend: str, device: str, precision: str, tile: int, mode: str) -> Path:
    name = f"{bundle.model}-{bundle.sha256()[:16]}-{backend}-{device.replace(':', '')}-{precision}-t{tile}"
    if bundle.model == "gr":
        name += f"-{mode}"
    return cache_dir() / "engines" / name


def engine_for_weights(weights: str | Path, backend: str = "onnxruntime", threads: int = 0, device: str = "cpu",
                       precision: str = "fp32", mode: str = "batch", tile: int = 0) -> Engine:
    """What :func:`engines.backends.base.load_engine` does: open an engine folder, or build the weights into a
    cached engine folder once (rebuilt when its manifest no longer matches this machine) and open it."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if is_engine_dir(weights):
        manifest = read_manifest(weights)
        for key, wanted in (("backend", backend), ("precision", precision)):
            if manifest.get(key) != wanted:
                raise EngineError(f"engine folder {weights} was built for {key} {manifest.get(key)}, not {wanted}; "
                                  f"set {key} = \"{manifest.get(key)}\" or build one: engines build --weights "
                                  f"{weights}/weights --{key} {wanted} --out DIR")
        return open_engine(weights, threads=threads, device=device if device != "cpu" else None)
    bundle = resolve_weights(weights)
    if model_kind(bundle.model) == "classification" and bundle.model != "gr":
        mode = "batch"
    tile = tile or bundle.tile
    folder = cache_folder(bundle, backend, device, precision, tile, mode)
    if is_engine_dir(folder):
        found = problems(folder)
        if not found:
            return _open(folder, read_manifest(folder), threads=threads, device=device)
        log.warning("rebuilding cached engine %s: %s", folder, "; ".join(found))
    settings = BuildSettings(weights=str(bundle.path), backend=backend, out=str(folder), precision=precision,
                             tile=tile, device=device, mode=mode, threads=threads or default_threads())
    log.info("building %s for %s (first use of these weights on this backend)", folder.name, bundle.path)
    build(settings)
    return _open(folder, read_manifest(folder), threads=threads, device=device)


def engine_folders(roots) -> list[Path]:
    """Engine folders directly in, or one level below, each root (the cache's ``engines/`` is always searched)."""
    found: list[Path] = []
    for root in [*map(Path, roots), cache_dir() / "engines"]:
        if is_engine_dir(root):
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p for p in root.iterdir() if p.is_dir() and is_engine_dir(p)))
    seen, unique = set(), []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique
