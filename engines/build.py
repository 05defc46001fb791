"""Building engine folders and opening them by their manifest: the chain behind ``engines build`` and behind every
engine the station, ``engines eval`` and ``engines compare`` load.

Building is a chain of small steps, each one checked:

1. resolve the weights and copy them into ``DIR/weights`` (the torch reference travels with the engine);
2. export ONNX (onnxruntime, tensorrt), checked against ``onnx.checker``, shape inference and TensorRT's operator
   list; quantise it (onnxruntime int8, static, calibrated on real images) or convert it (onnxruntime fp16, CUDA);
   an onnxruntime int8 segmentation engine gets its guard (the fp32 graph scores again the tiles whose int8 scores
   come near the recipe's threshold; :class:`engines.backends.onnxruntime_backend.Int8Guard`);
3. build the TensorRT plan (tensorrt: FP16/INT8 flags, optimization profile, timing cache kept in ``DIR``);
4. open what was built and measure its parity with the torch fp32 reference on real tiles (``--data``) or, when no
   data is given, on a seeded random batch; an int8 engine is instead judged on real images (a segmentation engine
   through the station's inspector: verdicts, mask IoU; a classifier on its labels; :mod:`engines.verify`) and
   refused, naming the layers that drifted most, when it misses the int8 tolerances (the recipe of calibration
   tiles, float exclusions and the guard: :mod:`engines.quantize`);
5. write ``manifest.json`` and move the folder into place (a failed build never leaves a half-written folder).

For example (an ONNX export and a parity check: seconds to minutes)::

    manifest = build(BuildSettings(weights="bffn-magnetic-tile", backend="onnxruntime", out="engines-built/bffn"))
    engine = open_engine("engines-built/bffn")

The steps' other pieces have their own modules: the images fed to engines (:mod:`engines.inputs`), INT8 sets
(:mod:`engines.int8_sets`), parity (:mod:`engines.parity`), opening and finding folders (:mod:`engines.folders`,
where :func:`open_engine` lives) and the cache of engines built from plain weights (:mod:`engines.cache`).
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.registry import backend_spec, default_device
from engines.backends.tensorrt_build import build_engine
from engines.data.segmentation import spread
from engines.export import INPUT_NAME, OPSET, export_onnx
from engines.folders import CALIBRATION_CACHE, ONNX_FILE, PLAN_FILE, TIMING_CACHE, WEIGHTS_DIR, open_folder
from engines.errors import EngineError, InputError
from engines.inputs import batches, named_images, network_inputs
from engines.int8_sets import calibration_images, int8_set
from engines.manifest import FORMAT, library_versions, machine, now_iso, write_manifest
from engines.models import model_spec
from engines.onnx_check import unsupported_tensorrt_ops
from engines.parity import measure_parity, reference_engine
from engines.quantize import (DEFAULT_EXCLUDE, calibration_tiles, group_nodes, guard_for, layer_sensitivity, peak_drift,
                              quantize, top_layers)
from engines.verify import TOLERANCES, judge, verify_classifier, verify_segmentation
from engines.weights import CONFIG_FILE, WEIGHTS_FILE, resolve_weights
from inspection.judging import Judging
from inspection_core.hashing import file_sha256

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
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
    int8_exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    int8_guard: bool = True

    def resolved_device(self) -> str:
        return self.device or default_device(self.backend)


def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1:32:64"`` → (1, 32, 64); ``"32"`` → (32, 32, 32)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise InputError(f"--batch {text!r}: use MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:32:64")
    return parts[0], parts[1], parts[2]


def _check_settings(s: BuildSettings, bundle) -> None:
    backend = backend_spec(s.backend)  # BackendUnavailable naming the declared backends
    if s.precision not in PRECISIONS:
        raise InputError(f"unknown precision {s.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if s.model and s.model != bundle.model:
        raise InputError(f"--model {s.model} does not match the weights {bundle.path}, which hold a {bundle.model}")
    model_spec(bundle.model).check_side(s.tile or bundle.tile)  # the sides that would work, before any work
    device = s.resolved_device()
    refused = backend.refusal(s.precision, device)  # the devices and precisions its declaration names
    if refused:
        raise InputError(refused)
    if s.precision == "int8" and not s.calibration:
        raise InputError("int8 needs calibration images: --calibration PROFILE_OR_DIR (a calibration profile's "
                         "int8 set, `calibration int8 add`, or a folder of real images)")
    backend.require(device)  # BackendUnavailable (what to install, what to use here) before any export


def _copy_weights(bundle, folder: Path) -> Path:
    target = folder / WEIGHTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(bundle.path / name, target / name)
    return target


def _entry(folder: Path, name: str) -> dict[str, str]:
    return {"file": name, "sha256": file_sha256(folder / name)}


# ------------------------------------------------------------------------------------------------ building

def _export(bundle, settings: BuildSettings, folder: Path, tile: int) -> dict[str, Any]:
    export_onnx(bundle, folder / ONNX_FILE, tile=tile, mode=settings.mode)
    return {"opset": OPSET, "tensorrt_unsupported_ops": unsupported_tensorrt_ops(folder / ONNX_FILE)}


INT8_FILE = "model.int8.onnx"


def _quantize_onnxruntime(folder: Path, inputs: np.ndarray, batch: int, groups) -> tuple[str, dict[str, Any]]:
    """Static int8 quantisation (:func:`engines.quantize.quantize`) with ``groups`` kept in floating point;
    returns the file name and the exclusions made."""
    excluded = group_nodes(folder / ONNX_FILE, groups)
    quantize(folder / ONNX_FILE, folder / INT8_FILE, inputs, batch, [n for names in excluded.values() for n in names])
    return INT8_FILE, {"groups": list(groups), "nodes": excluded}


def _int8_parity(engine, weights_dir: Path, settings: BuildSettings, kind: str, tile: int, spec, folder: Path,
                 judging: Judging | None, tolerances: dict[str, float] | None) -> dict[str, Any]:
    """Judge a freshly built int8 engine against torch fp32 on real images (``--data``, else the calibration
    images): a segmentation engine through the station's inspector (verdicts, masks), a classifier on its labels
    (:mod:`engines.verify`); raise :class:`EngineError`, naming the layers that drifted most, when it misses
    ``tolerances`` (default: :data:`engines.verify.TOLERANCES` ``["int8"]``)."""
    judging = judging or Judging(batch=settings.batch[1])
    count = max(settings.parity_images, 1)
    if settings.data:
        images, source = named_images(settings.data, count), settings.data
    else:
        chosen = calibration_images(settings.calibration, settings.calibration_images)
        chosen = [chosen[i] for i in spread(len(chosen), count)]
        images, source = [(f"calibration-{i}", im) for i, im in enumerate(chosen)], settings.calibration
    reference = reference_engine(weights_dir, threads=settings.threads)
    try:
        if kind == "segmentation":
            report, judged_by = verify_segmentation(engine, reference, images, judging), "the station's inspector"
        else:
            report, judged_by = verify_classifier(engine, reference, images, batch=settings.batch[1]), "its labels"
    finally:
        reference.close()
    tol = {**TOLERANCES["int8"], **(tolerances or {})}
    failed = judge(report, "int8", tol)
    layers: list[dict[str, Any]] = []
    if (folder / INT8_FILE).exists():
        x = network_inputs([im for _, im in images], kind, tile, spec, limit=32)
        layers = layer_sensitivity(folder / ONNX_FILE, folder / INT8_FILE, x, threads=settings.threads or 1)
    parity = {"against": "torch fp32 cpu", "source": f"{source} ({len(images)} images, judged by {judged_by})",
              **{k: v[:20] if isinstance(v, list) else v for k, v in report.items()},
              "tolerances": tol, "layers": layers[:10]}
    if kind == "segmentation":
        parity["rules"] = f"{judging.describe()} [{judging.fingerprint()}]"
    if failed:
        where = f" The layers that diverged most: {top_layers(layers)}." if layers else ""
        with_masks = ", a data folder with masks gives a mix of defect and defect-free tiles" if kind == \
            "segmentation" else ""
        raise EngineError(
            f"int8 engine not written: against torch fp32 on {len(images)} images of {source}, judged by "
            f"{judged_by}, it misses the int8 tolerances: {'; '.join(failed)}.{where} What to do: calibrate on more "
            f"or other images that include defects (--calibration DIR{with_masks}), keep those layers in floating "
            "point (--int8-float GROUPS, groups in engines.quantize.GROUPS), or build fp32 (--precision fp32)")
    return parity


_WORK_FOLDER = re.compile(r"\..+\.building-(\d+)")


def remove_stale_builds(folder: str | Path) -> list[Path]:
    """Remove the work folders (``.NAME.building-PID``) that builds killed before they finished left in ``folder``,
    and return them: those whose process is gone, or whose PID now belongs to a process started after the folder was
    last written (a PID used again: a container restarted, a machine rebooted). A live build's folder is left alone.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())  # e.g. cache_dir() / "engines"
    >>> (folder / ".bffn-onnxruntime-cpu-fp32-t128.building-999999999").mkdir()  # no process has that PID
    >>> [path.name for path in remove_stale_builds(folder)], list(folder.iterdir())
    (['.bffn-onnxruntime-cpu-fp32-t128.building-999999999'], [])
    >>> folder.rmdir()
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        found = _WORK_FOLDER.fullmatch(path.name)
        if found is None or not path.is_dir() or path.is_symlink() or _builder_alive(int(found.group(1)), path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            log.info("removed %s, left by a build that was killed before it finished", path)
            removed.append(path)
    return removed


def _builder_alive(pid: int, work: Path) -> bool:
    """True when process ``pid`` runs and may own ``work`` (it started before the folder was last written)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return False
    started = _process_start(pid)
    if started is None:  # no /proc: trust the PID
        return True
    try:
        written = work.stat().st_mtime
    except OSError:
        return False
    return started <= written + 1.0  # 1 s of slack for clock ticks and file system time stamps


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc`` (Linux); None where unknown. A zombie
    (ended, not yet reaped) counts as started now: it owns nothing any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state is field 3, starttime field 22
        if fields[0] == "Z":
            return float("inf")
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _fp16_onnx(folder: Path) -> str:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    name = "model.fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(folder / ONNX_FILE)), keep_io_types=True), str(folder / name))
    return name


@dataclass
class EngineBuild:
    """What a backend's builder (:attr:`engines.backends.registry.BackendSpec.builder`) gets: the settings, the
    folder being built (``work``, holding the ONNX export when the backend exports one) and the folder it replaces
    (``out``), the network's kind, tile and input, the INT8 calibration tiles (or None), the line's judging (int8
    guard), and the manifest, whose ``engine`` entry (and any record of its own) the builder fills in."""

    settings: BuildSettings
    work: Path
    out: Path
    kind: str
    tile: int
    spec: Any
    calib: Any
    judging: Judging | None
    manifest: dict[str, Any]


def build_onnxruntime_engine(job: EngineBuild) -> None:
    """ONNX Runtime: fp32 runs the export itself; int8 is the statically quantised export (with the int8 guard for
    segmentation), fp16 its float16 conversion."""
    settings, work, manifest = job.settings, job.work, job.manifest
    if settings.precision == "fp32":
        return
    if settings.precision == "int8":
        name, manifest["int8_excluded"] = _quantize_onnxruntime(work, job.calib, settings.batch[1],
                                                                settings.int8_exclude)
        if settings.int8_guard and job.kind == "segmentation":
            threshold = (job.judging or Judging()).rules.score_threshold
            drift = peak_drift(work / ONNX_FILE, work / name, job.calib, threads=settings.threads or 1)
            manifest["int8_guard"] = {"fallback": ONNX_FILE, **guard_for(threshold, drift),
                                      "drift_tiles": int(len(job.calib))}
    else:
        name = _fp16_onnx(work)
    manifest["engine"] = _entry(work, name)


def build_tensorrt_engine(job: EngineBuild) -> None:
    """TensorRT: a plan for this GPU and TensorRT version, from the export (timing and INT8 calibration caches
    reused from the folder it replaces)."""
    settings, work, out = job.settings, job.work, job.out
    if out.joinpath(TIMING_CACHE).exists():
        shutil.copy2(out / TIMING_CACHE, work / TIMING_CACHE)
    calib = job.calib
    if calib is not None:
        _seed_calibration_cache(settings.calibration, out, work / CALIBRATION_CACHE)
    info = build_engine(
        work / ONNX_FILE, work / PLAN_FILE, input_name=INPUT_NAME, input_shape=(job.spec.channels, job.tile, job.tile),
        batch=settings.batch, precision=settings.precision, workspace_mib=settings.workspace_mib,
        timing_cache=work / TIMING_CACHE,
        calibration_batches=(lambda: batches(calib, settings.batch[1])) if calib is not None else None,
        calibration_cache=work / CALIBRATION_CACHE if calib is not None else None)
    job.manifest["engine"] = _entry(work, PLAN_FILE)
    job.manifest["tensorrt_build"] = info


def build(settings: BuildSettings, judging: Judging | None = None,
          tolerances: dict[str, float] | None = None) -> dict[str, Any]:
    """Build an engine folder at ``settings.out``; return its manifest. An existing folder is replaced only once
    the new one is complete (its TensorRT timing cache is reused). An int8 segmentation engine is judged with
    ``judging`` (a recipe's line: :func:`station.line_calibration.judging_for`; default the judging defaults) against
    ``tolerances`` (default: the int8 ones of
    :data:`engines.verify.TOLERANCES`), and not written when it misses them."""
    started = time.perf_counter()
    bundle = resolve_weights(settings.weights)
    _check_settings(settings, bundle)
    spec_of_model = model_spec(bundle.model)
    kind = spec_of_model.task.value
    tile = settings.tile or bundle.tile
    device = settings.resolved_device()
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(out.parent)  # what builds killed before they finished left here (kill -9, power cut)
    work = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        weights_dir = _copy_weights(bundle, work)
        spec = bundle.input_spec()
        manifest: dict[str, Any] = {
            "format": FORMAT, "model": bundle.model, "kind": kind, "model_config": bundle.model_config,
            "mode": settings.mode if spec_of_model.has_modes else None, "classes": bundle.info.get("classes"),
            "input": spec.to_dict(), "tile": tile, "backend": settings.backend, "device": device,
            "precision": settings.precision,
            "batch": dict(zip(("min", "opt", "max"), settings.batch)),
            "weights": {**_entry(work, f"{WEIGHTS_DIR}/model.safetensors"), "source": str(settings.weights)},
            "onnx": None, "engine": None,
        }
        calib = None
        if settings.precision == "int8":
            calib, manifest["int8_calibration"] = calibration_tiles(
                settings.calibration, settings.calibration_images, kind, tile, spec,
                limit=max(settings.batch[1] * 8, 64))
        backend = backend_spec(settings.backend)
        if backend.exports_onnx:
            report = _export(bundle, settings, work, tile)
            manifest["onnx"] = {**_entry(work, ONNX_FILE), **report}
        if backend.builder is not None:  # the backend's own engine file, from the export
            backend.build_engine(EngineBuild(settings, work, out, kind, tile, spec, calib, judging, manifest))
        manifest["versions"] = library_versions()
        manifest["machine"] = machine(device)
        manifest["built_at"] = now_iso()
        manifest["build_command"] = build_command(settings)
        manifest["settings"] = asdict(settings)
        write_manifest(work, manifest)  # provisional, so the folder opens for the parity check
        engine = open_folder(work, manifest, threads=settings.threads, device=device)
        try:
            if settings.precision == "int8":
                manifest["parity"] = _int8_parity(engine, weights_dir, settings, kind, tile, spec, work, judging,
                                                  tolerances)
            else:
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
    if settings.precision == "int8" and tuple(settings.int8_exclude) != DEFAULT_EXCLUDE:
        parts += ["--int8-float", ",".join(settings.int8_exclude) or "none"]
    if settings.precision == "int8" and not settings.int8_guard:
        parts.append("--no-int8-guard")
    return shlex.join(parts)


