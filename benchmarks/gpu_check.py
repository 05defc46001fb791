"""The one check to run when a machine with an NVIDIA GPU is briefly at hand (issue 17): every figure as JSON in
one folder, in under 8 minutes, with no network, from the source tree, with only torch, torchvision, onnxruntime,
numpy and opencv installed.

    python benchmarks/gpu_check.py --out DIR            # or: bash benchmarks/gpu_check.sh --out DIR
    python benchmarks/gpu_check.py --out DIR --dry-run  # the same on the CPU, tiny settings (make test runs it)

Steps, each with its own time budget inside the total (``--budget``; a step that no longer fits is skipped, with
the reason; a hard watchdog writes ``summary.json`` and exits when the total is spent):

* ``bffn``: the shipped BFFN (``engines/weights/bffn-magnetic-tile``) built by :func:`engines.build.build` as each
  candidate engine (torch CUDA fp32 and fp16 with a CUDA graph, ONNX Runtime's CUDA provider fp32 and fp16,
  TensorRT fp16 and int8), each verified against the torch fp32 CPU reference: the build's parity on real tiles
  (the bundled frames cut by the station's tiler) and :func:`engines.verify.verify_segmentation` on the bundled
  frames with the shipped ``magnetic_tile`` recipe (verdict agreement, mask IoU, score differences, judged by
  :func:`engines.verify.judge`); then tiles/s and latency at batches 1, 32 and 256 at 128 px, the engines taking
  turns (:func:`engines.benchmark.bench_engines`);
* ``gr``: the shipped GR (``engines/weights/gr-neu-seg``) built and verified the same way at its 128 px
  (:func:`engines.verify.verify_classifier`; ``--gr-data`` for NEU-Seg, else the bundled frames);
* ``train``: a short mixed-precision BFFN training (:func:`engines.train.training_step` on batches of
  :class:`engines.data.segmentation.TileSampler`) on the bundled frames, whose masks are the torch fp32
  reference's (the frames come without masks);
* ``gr_bench``: GR's tiles/s and latency at 256 and 1024 px, batches 1, 32 and 256.

TensorRT candidates run when ``tensorrt`` imports; otherwise they are recorded as skipped with the reason, as is
every candidate whose device, provider or package is missing (``onnx`` for the ONNX export). Without the
``safetensors`` package the weights are read by a small reader here (the format is an 8-byte length, a JSON
header and raw tensors). ``--without PKG,...`` hides installed packages, to show the check runs without them.

``--dry-run`` replaces the CUDA engines by CPU stand-ins (ONNX Runtime fp32 for BFFN, torch fp32 for GR) with
batches 1 and 2, the frames' 224 px centres, one BFFN frame and four GR images, two training steps at 64 px and
0.2 s benchmarks (about 40 CPU seconds), so the script cannot rot (tests/engines/test_gpu_check.py).
docs/GPU_CHECK.md says how to read the output.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SAMPLES = REPO / "station" / "samples" / "magnetic-tile"
BFFN, GR = "bffn-magnetic-tile", "gr-neu-seg"
RECIPE = "magnetic_tile"
#: Packages the engines use somewhere that the GPU machine may lack; their presence is recorded in the summary.
OPTIONAL = ("safetensors", "onnx", "onnxscript", "tensorrt", "segmentation_models_pytorch", "matplotlib", "tqdm",
            "harvesters", "PyQt6")
NO_CUDA = "no CUDA device"
EXIT_OK, EXIT_FAILED, EXIT_TIME = 0, 1, 3


# ------------------------------------------------------------------------------------------ what runs, how long

@dataclass(frozen=True)
class Plan:
    """The sizes of one run: the full GPU check, or the tiny CPU dry run (:data:`DRY`)."""

    batches: tuple[int, ...] = (1, 32, 256)
    opt_batch: int = 32  # the build profile's opt batch: TensorRT tunes for it, torch captures its CUDA graph
    bench_seconds: float = 2.0  # per batch size, all engines taking turns
    bffn_images: int = 16  # bundled frames verified (all 16)
    gr_images: int = 16
    parity_images: int = 16  # frames whose tiles the build's parity check runs (up to 64 tiles)
    gr_bench_tiles: tuple[int, ...] = (256, 1024)
    train_steps: int = 40
    train_batch: int = 32
    train_tile: int = 128
    train_images: int = 16
    frame_side: int = 0  # > 0: frames cropped to at most this side (the dry run's few tiles per frame)
    total_s: float = 450.0
    budgets: dict = field(default_factory=lambda: {"bffn": 120.0, "gr": 60.0, "train": 45.0, "gr_bench": 180.0})
    tensorrt_extra_s: dict = field(default_factory=lambda: {"bffn": 240.0, "gr": 120.0, "gr_bench": 240.0})
    standins: dict = field(default_factory=dict)  # step -> CPU candidates run in place of the CUDA ones (dry run)


FULL = Plan()
DRY = Plan(batches=(1, 2), opt_batch=2, bench_seconds=0.2, bffn_images=1, gr_images=4, parity_images=1,
           gr_bench_tiles=(128,), train_steps=2, train_batch=2, train_tile=64, train_images=1, frame_side=224,
           total_s=300.0,
           budgets={"bffn": 90.0, "gr": 90.0, "train": 60.0, "gr_bench": 60.0},
           standins={"bffn": ("onnxruntime-cpu-fp32",), "gr": ("torch-cpu-fp32",), "gr_bench": ("torch-cpu-fp32",)})


@dataclass(frozen=True)
class Candidate:
    """One engine to build, verify and time: a backend, a device and a precision."""

    label: str
    backend: str
    device: str
    precision: str
    models: tuple[str, ...] = (BFFN, GR)


CANDIDATES = (
    Candidate("torch-cuda-fp32-graph", "torch", "cuda", "fp32"),
    Candidate("torch-cuda-fp16-graph", "torch", "cuda", "fp16"),
    Candidate("onnxruntime-cuda-fp32", "onnxruntime", "cuda", "fp32"),
    Candidate("onnxruntime-cuda-fp16", "onnxruntime", "cuda", "fp16"),
    Candidate("tensorrt-fp16", "tensorrt", "cuda", "fp16"),
    Candidate("tensorrt-int8", "tensorrt", "cuda", "int8", models=(BFFN,)),  # calibrated on the bundled frames
)
STANDINS = (Candidate("torch-cpu-fp32", "torch", "cpu", "fp32"),
            Candidate("onnxruntime-cpu-fp32", "onnxruntime", "cpu", "fp32"))


class Skip(Exception):
    """A step or candidate that cannot run here; the message says why."""


# ------------------------------------------------------------------------------------ packages that may be missing

def has(package: str) -> bool:
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def load_safetensors(path) -> dict:
    """A ``.safetensors`` file as a dict of CPU torch tensors, without the ``safetensors`` package: 8 bytes of
    little-endian header length, the JSON header (name -> dtype, shape, byte offsets), then the raw tensors."""
    import torch

    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which this reader does not know; "
                             "pip install safetensors")
        dtype = getattr(torch, SAFETENSORS_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        flat = (torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if end > begin
                else torch.empty(0, dtype=dtype))
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def install_safetensors_reader() -> None:
    """Let :func:`engines.weights.load_model` (``from safetensors.torch import load_file``) read weights through
    :func:`load_safetensors` where the package is missing. Saving is not offered: this check never saves."""
    package, module = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
    module.load_file = lambda filename, device="cpu": {k: v.to(device) for k, v in load_safetensors(filename).items()}
    package.torch = module
    package.__gpu_check_reader__ = True
    sys.modules["safetensors"], sys.modules["safetensors.torch"] = package, module


# ------------------------------------------------------------------------------------------------- the run itself

class Run:
    """The state of one run: settings, output folder, the engines built so far, and the time left."""

    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args, self.plan = args, plan
        self.out = Path(args.out)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.started = time.monotonic()
        self.total_s = args.budget or plan.total_s
        self.scale = self.total_s / plan.total_s  # --budget stretches (or shrinks) every step's budget alike
        self.step_deadline = math.inf
        self.threads = args.threads
        self.built: dict[tuple, tuple[Path, dict, float]] = {}
        self.lock = threading.Lock()
        self.summary: dict[str, Any] = {}
        self._recipe = None
        self._frames: Path | None = None

    # time
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def total_left(self) -> float:
        return self.total_s - self.elapsed()

    def left(self) -> float:
        """Seconds left to the current step (its budget, or what is left of the total when that is less)."""
        return min(self.step_deadline - time.monotonic(), self.total_left())

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", file=sys.stderr, flush=True)

    # outputs
    def write(self, name: str, body: dict) -> Path:
        path = self.out / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, default=_jsonable) + "\n")
        tmp.replace(path)
        return path

    def write_summary(self) -> None:
        with self.lock:
            self.summary["wall_s"] = round(self.elapsed(), 1)
            self.summary["cpu_s"] = round(_cpu_seconds(), 1)
            self.write("summary", self.summary)

    # what the steps share
    def judging(self):
        """How a line running the shipped recipe judges (:func:`station.line_calibration.recipe_judging`)."""
        if self._recipe is None:
            from station.line_calibration import recipe_judging

            self._recipe = recipe_judging(RECIPE)
        return self._recipe

    def frames(self) -> Path:
        """The bundled frames, or (``plan.frame_side``) their centres cropped into the work folder."""
        if not self.plan.frame_side:
            return SAMPLES
        if self._frames is None:
            import cv2

            from inspection_core import imageio

            side, folder = self.plan.frame_side, self.work / "frames"
            folder.mkdir(parents=True, exist_ok=True)
            for path in imageio.image_files(SAMPLES):
                image = imageio.read_image(path, imageio.ImageMode.UNCHANGED)
                y, x = max(0, (image.shape[0] - side) // 2), max(0, (image.shape[1] - side) // 2)
                cv2.imwrite(str(folder / f"{path.stem}.png"), image[y:y + side, x:x + side])
            self._frames = folder
        return self._frames

    def candidates(self, step: str, weights: str) -> list[Candidate]:
        standins = set(self.plan.standins.get(step, ()))
        return [c for c in (*CANDIDATES, *STANDINS) if weights in c.models and (c in CANDIDATES or c.label in standins)]


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover - numpy is required
        pass
    return str(value)


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (set beside wall time, it shows how busy the machine was)."""
    times = os.times()
    return times.user + times.system


def why_not(c: Candidate) -> str | None:
    """Why ``c`` cannot run on this machine, or None when it can."""
    import torch

    from engines.backends.onnxruntime_backend import providers_for
    from engines.backends.tensorrt_backend import import_tensorrt
    from engines.errors import BackendUnavailable

    if c.device == "cuda" and not torch.cuda.is_available():
        return f"{NO_CUDA}: torch {torch.__version__} sees none"
    if c.backend in ("onnxruntime", "tensorrt") and not has("onnx"):
        return "the onnx package is not installed: the ONNX export (torch.onnx.export) needs it; pip install onnx"
    try:
        if c.backend == "onnxruntime":
            providers_for(c.device)
        if c.backend == "tensorrt":
            import_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    return None


def build_candidate(run: Run, weights: str, c: Candidate, tile: int, data: Path) -> tuple[Path, dict, float]:
    """Build ``weights`` as ``c`` at ``tile`` with :func:`engines.build.build` (once per run), its parity with the
    torch fp32 CPU reference measured on the tiles of ``data``'s images; returns (folder, manifest, seconds)."""
    from engines.build import BuildSettings, build

    key = (weights, c.label, tile)
    if key not in run.built:
        plan = run.plan
        settings = BuildSettings(
            weights=weights, backend=c.backend, out=str(run.work / f"{weights}-{c.label}-t{tile}"),
            precision=c.precision, batch=(1, plan.opt_batch, max(plan.batches)), tile=tile, device=c.device,
            data=str(data), parity_images=plan.parity_images, threads=run.threads,
            calibration=str(run.frames()) if c.precision == "int8" else "", calibration_images=plan.bffn_images)
        t0 = time.perf_counter()
        manifest = build(settings)
        seconds = round(time.perf_counter() - t0, 2)
        if c.backend == "onnxruntime" and c.device == "cuda":
            _check_cuda_provider(run, Path(settings.out))
        run.built[key] = (Path(settings.out), manifest, seconds)
    return run.built[key]


def _check_cuda_provider(run: Run, folder: Path) -> None:
    """ONNX Runtime falls back to the CPU, with a logged error only, when its CUDA provider cannot load its
    libraries: such an engine is no CUDA engine, and its figures would mislead."""
    engine = open_built(run, folder)
    try:
        used = engine.session.get_providers()
    finally:
        engine.close()
    if "CUDAExecutionProvider" not in used:
        raise Skip(f"ONNX Runtime fell back to {', '.join(used)}: its CUDA provider did not load (the CUDA and cuDNN "
                   "libraries onnxruntime-gpu was built for are missing or do not match)")


def _skip_reason(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"a package it needs is missing: {exc}"
    return str(exc)


def open_built(run: Run, folder: Path, graph_batch: int = 0):
    """Open a built folder after checking its manifest (:func:`engines.manifest.check`); a torch CUDA engine with
    its CUDA graph captured for ``graph_batch`` (default: the build profile's opt batch)."""
    from engines.folders import open_folder
    from engines.manifest import check

    manifest = check(folder)
    if graph_batch and manifest["backend"] == "torch":
        manifest = {**manifest, "batch": {**manifest["batch"], "opt": graph_batch,
                                          "max": max(graph_batch, manifest["batch"]["max"])}}
    return open_folder(folder, manifest, threads=run.threads)


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-4).splitlines()[-12:]}


def _free_cuda() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ------------------------------------------------------------------------------------------------------ the steps

def verify_candidates(run: Run, step: str, weights: str, data: Path, images: int, verify_one) -> list[dict]:
    """Build each candidate of ``step`` at the weights' own tile and verify it with ``verify_one(engine,
    reference, named images)``; one record per candidate, ran, skipped (with the reason) or failed."""
    from engines.inputs import named_images
    from engines.parity import reference_engine
    from engines.verify import TOLERANCES, judge
    from engines.weights import resolve_weights

    tile = resolve_weights(weights).tile
    named = named_images(data, images)
    reference = None
    records = []
    try:
        for c in run.candidates(step, weights):
            record: dict[str, Any] = {"label": c.label, "backend": c.backend, "device": c.device,
                                      "precision": c.precision, "tile": tile}
            records.append(record)
            reason = why_not(c)
            if reason is None and run.left() < 5:
                reason = f"the {step} step's time budget is spent"
            if reason is not None:
                record.update(status="skipped", reason=reason)
                run.log(f"{step}: {c.label} skipped: {reason}")
                continue
            try:
                run.log(f"{step}: building {c.label} at {tile} px")
                folder, manifest, seconds = build_candidate(run, weights, c, tile, data)
                record.update(build_seconds=seconds, build_parity=manifest.get("parity"),
                              tensorrt_build=manifest.get("tensorrt_build"))
                if reference is None:
                    reference = reference_engine(weights, threads=run.threads)
                run.log(f"{step}: verifying {c.label} against torch fp32 cpu on {len(named)} images")
                engine = open_built(run, folder)
                try:
                    t0 = time.perf_counter()
                    report = verify_one(engine, reference, named)
                    report["seconds"] = round(time.perf_counter() - t0, 2)
                finally:
                    engine.close()
                failed = judge(report, c.precision)
                record.update(status="ran", verify=report, tolerances=TOLERANCES[c.precision],
                              passed=not failed, failed=failed)
            except (Skip, ImportError) as exc:
                record.update(status="skipped", reason=_skip_reason(exc))
                run.log(f"{step}: {c.label} skipped: {record['reason']}")
            except Exception as exc:  # one candidate's failure is a finding; the others still run
                record.update(status="failed", **_error(exc))
                run.log(f"{step}: {c.label} FAILED: {record['error']}")
            finally:
                _free_cuda()
    finally:
        if reference is not None:
            reference.close()
    return records


def bench_points(run: Run, step: str, weights: str, tile: int, folders: dict[str, Path]) -> dict:
    """Tiles/s and latency of the engines in ``folders`` (label -> built folder) at each batch size, taking turns
    (:func:`engines.benchmark.bench_engines`); torch CUDA engines with a CUDA graph captured for that batch."""
    from engines.benchmark import bench_engines

    points: dict[str, Any] = {}
    for batch in run.plan.batches:
        key = f"batch_{batch}"
        if not folders:
            points[key] = {"status": "skipped", "reason": "no engine was built for this tile"}
            continue
        if run.left() < 3 * len(folders):
            points[key] = {"status": "skipped", "reason": f"the {step} step's time budget is spent"}
            continue
        openers = {label: (lambda f=folder, b=batch: open_built(run, f, graph_batch=b))
                   for label, folder in folders.items()}
        run.log(f"{step}: timing {', '.join(folders)} at {tile} px, batch {batch}")
        try:
            points[key] = {"status": "ran", "in_turns": True,
                           "engines": bench_engines(openers, batch=batch, seconds=run.plan.bench_seconds)}
        except Exception as exc:  # out of memory with every engine open at once, say: then one engine at a time
            first = _error(exc)
            _free_cuda()
            run.log(f"{step}: batch {batch} in turns failed ({first['error']}); timing one engine at a time")
            points[key] = {"in_turns": False, "in_turns_error": first["error"], **_one_at_a_time(run, openers, batch)}
        finally:
            _free_cuda()
    return {"model": weights, "tile": tile, "seconds_per_point": run.plan.bench_seconds,
            "note": "tiles/s from random normalised batches, host to host (numpy in, numpy out); ratio_to_first "
                    "compares with the first engine listed", "points": points}


def _shown(frames: Path, plan: Plan) -> str:
    where = str(SAMPLES.relative_to(REPO))
    return f"{where}, centres cropped to {plan.frame_side} px" if frames != SAMPLES else where


def _one_at_a_time(run: Run, openers: dict, batch: int) -> dict:
    """Each engine timed alone (when they do not fit in memory together); ``ratio_to_first`` as bench_engines."""
    from engines.benchmark import bench_engines

    engines: dict[str, Any] = {}
    for label, opener in openers.items():
        try:
            engines[label] = bench_engines({label: opener}, batch=batch, seconds=run.plan.bench_seconds)[label]
        except Exception as exc:
            engines[label] = {"status": "failed", **_error(exc)}
        finally:
            _free_cuda()
    timed = [e for e in engines.values() if "tiles_per_s" in e]
    first = next(iter(engines.values())).get("tiles_per_s")
    for figures in timed:
        figures["ratio_to_first"] = round(figures["tiles_per_s"] / first, 3) if first else None
    return {"status": "ran" if timed else "failed", "engines": engines}


def _ran(records: list[dict]) -> list[str]:
    return [r["label"] for r in records if r.get("status") == "ran"]


def step_bffn(run: Run) -> dict:
    from engines.verify import verify_segmentation

    judging = run.judging()
    frames = run.frames()
    records = verify_candidates(run, "bffn", BFFN, frames, run.plan.bffn_images,
                                lambda engine, reference, named: verify_segmentation(engine, reference, named, judging))
    tile = records[0]["tile"] if records else 128
    folders = {label: run.built[(BFFN, label, tile)][0] for label in _ran(records)}
    return {"weights": BFFN, "data": _shown(frames, run.plan), "recipe": RECIPE, "reference": "torch fp32 cpu",
            "candidates": records, "bench": bench_points(run, "bffn", BFFN, tile, folders)}


def gr_data(run: Run) -> tuple[Path, str]:
    if run.args.gr_data:
        return Path(run.args.gr_data), "given with --gr-data"
    return run.frames(), ("the bundled magnetic-tile frames, not GR's domain (NEU-Seg): label agreement here measures "
                     "how far the arithmetic drifts, not accuracy; pass --gr-data ../shared/data/neu-seg for "
                     "in-domain images")


def step_gr(run: Run) -> dict:
    from engines.verify import verify_classifier

    data, note = gr_data(run)
    batch = run.plan.opt_batch
    records = verify_candidates(run, "gr", GR, data, run.plan.gr_images,
                                lambda engine, reference, named: verify_classifier(engine, reference, named, batch))
    return {"weights": GR, "data": str(data), "data_note": note, "mode": "batch", "verify_batch": batch,
            "reference": "torch fp32 cpu", "candidates": records}


def step_gr_bench(run: Run) -> dict:
    data, _ = gr_data(run)
    tiles: dict[str, Any] = {}
    for tile in run.plan.gr_bench_tiles:
        built: dict[str, Path] = {}
        skipped: dict[str, str] = {}
        for c in run.candidates("gr_bench", GR):
            if c.precision == "int8":
                continue
            reason = why_not(c)
            if reason is None and run.left() < 10:
                reason = "the gr_bench step's time budget is spent"
            if reason is not None:
                skipped[c.label] = reason
                continue
            try:
                run.log(f"gr_bench: building {c.label} at {tile} px")
                built[c.label] = build_candidate(run, GR, c, tile, data)[0]
            except (Skip, ImportError) as exc:
                skipped[c.label] = _skip_reason(exc)
            except Exception as exc:
                skipped[c.label] = f"build failed: {type(exc).__name__}: {exc}"
                run.log(f"gr_bench: {c.label} at {tile} px FAILED: {exc}")
            finally:
                _free_cuda()
        tiles[f"tile_{tile}"] = {"skipped": skipped, **bench_points(run, "gr_bench", GR, tile, built)}
    return {"weights": GR, "mode": "batch", "tiles": tiles}


def step_train(run: Run) -> dict:
    """A short mixed-precision BFFN training from random initialisation on the bundled frames, masks from the
    torch fp32 reference: the step that ``engines train`` runs, timed."""
    import numpy as np
    import torch

    from engines.data.segmentation import SegSample, TileSampler
    from engines.errors import check_loss
    from engines.inputs import named_images
    from engines.models import build_model
    from engines.parity import reference_engine
    from engines.train import StepParts, TrainSettings, make_optimizer, segmentation_loss, training_step
    from engines.training import mixed_precision, pick_device
    from engines.weights import resolve_weights
    from inspection_core.preprocess import prepare_image
    from inspection_core.records import Frame

    plan = run.plan
    device = pick_device("auto")
    bundle = resolve_weights(BFFN)
    spec = bundle.input_spec()
    judging = run.judging()
    t0 = time.perf_counter()
    reference = reference_engine(BFFN, threads=run.threads, device=str(device))
    inspector = judging.inspector(reference)
    samples = []
    for i, (name, image) in enumerate(named_images(run.frames(), plan.train_images)):
        grey = prepare_image(image, spec)
        grey = grey[..., 0] if grey.ndim == 3 else grey
        scores = inspector.inspect(Frame(grey, i + 1, time.monotonic_ns(), "gpu-check", {"file": name})).mask
        category = None if name.startswith("free_") else name.split("_", 1)[0]
        samples.append(SegSample(name, grey, scores >= judging.rules.score_threshold, category))
    reference.close()
    label_seconds = time.perf_counter() - t0

    settings = TrainSettings(model="bffn", amp=True, batch=plan.train_batch, tile=plan.train_tile, device=str(device))
    torch.manual_seed(settings.seed)
    model = build_model("bffn", bundle.model_config).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.lr)
    amp_dtype, scaler = mixed_precision(device, settings.amp)
    parts = StepParts(spec, device, segmentation_loss(settings.loss), settings.aux_weight, optimizer, scaler,
                      amp_dtype, settings.channels_last)
    sampler = TileSampler(samples, settings.tile, settings.defect_fraction, seed=settings.seed,
                          overlap=settings.overlap)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, seconds, stopped = [], [], None
    for k, (tiles, masks) in enumerate(sampler.batches(settings.batch, plan.train_steps, settings.prefetch), 1):
        if run.left() < 2:
            stopped = f"the train step's time budget was spent after {k - 1} steps"
            break
        s0 = time.perf_counter()
        losses.append(training_step(model, tiles, masks, parts,
                                    check=lambda v, k=k: check_loss(v, f"step {k}", settings.lr)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - s0)
    timed = seconds[2:] if len(seconds) > 4 else seconds  # the first steps pick kernels and warm the allocator
    window = max(1, min(5, len(losses) // 2))
    pixels = np.concatenate([s.mask.ravel() for s in samples])
    return {
        "model": "bffn", "config": bundle.model_config, "init": "random (seed 0)", "device": str(device),
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else None,
        "grad_scaler": scaler.is_enabled(), "final_loss_scale": float(scaler.get_scale()) if scaler.is_enabled()
        else None, "optimizer": settings.optimizer, "lr": settings.lr, "loss": settings.loss,
        "batch": settings.batch, "tile": settings.tile, "steps": len(losses), "steps_asked": plan.train_steps,
        "stopped": stopped, "images": len(samples),
        "labels": {"source": "torch fp32 reference masks of the bundled frames (they ship without masks), "
                             f"score >= {judging.rules.score_threshold}",
                   "defect_pixel_fraction": round(float(pixels.mean()), 6), "seconds": round(label_seconds, 2)},
        "losses": [round(v, 5) for v in losses], "all_finite": all(math.isfinite(v) for v in losses),
        "loss_first": round(float(np.mean(losses[:window])), 5) if losses else None,
        "loss_last": round(float(np.mean(losses[-window:])), 5) if losses else None,
        "timed_steps": len(timed),
        "tiles_per_s": round(settings.batch * len(timed) / sum(timed), 1) if timed else None,
        "step_ms_p50": round(float(np.percentile(timed, 50)) * 1e3, 1) if timed else None,
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
    }


STEPS: dict[str, Callable[[Run], dict]] = {"bffn": step_bffn, "gr": step_gr, "train": step_train,
                                           "gr_bench": step_gr_bench}
MIN_S = {"bffn": 20.0, "gr": 15.0, "train": 10.0, "gr_bench": 20.0}  # a step starts only with this much time left


# -------------------------------------------------------------------------------------------- environment, summary

def _version(package: str) -> str | None:
    if not has(package) or getattr(sys.modules.get(package), "__gpu_check_reader__", False):
        return None
    try:
        module = importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001 - a wheel whose libraries do not load is "absent" with its reason
        return f"unusable ({type(exc).__name__}: {exc})"
    return str(getattr(module, "__version__", "installed"))


def environment(run: Run) -> dict:
    import cv2
    import numpy as np
    import onnxruntime
    import torch
    import torchvision

    from engines.backends.gpu import gpu_info
    from engines.backends.tensorrt_backend import available_backends, import_tensorrt
    from engines.errors import BackendUnavailable

    try:
        import_tensorrt()
        tensorrt = {"importable": True, "reason": None}
    except BackendUnavailable as exc:
        tensorrt = {"importable": False, "reason": str(exc)}
    tensorrt["version"] = _version("tensorrt")
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(), "platform": platform.platform(), "host": platform.node(),
        "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(), "threads": run.threads or "all usable cores", "commit": commit,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(), "numpy": np.__version__,
        "opencv": cv2.__version__, "optional": {name: _version(name) for name in OPTIONAL},
        "hidden_with_without": sorted(run.args.without), "safetensors_reader": (
            "built-in (benchmarks/gpu_check.py: load_safetensors)" if getattr(sys.modules.get("safetensors"),
                                                                              "__gpu_check_reader__", False)
            else "safetensors package"),
        "cuda_available": torch.cuda.is_available(), "cuda_torch_built_with": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32": {"conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "gpu": gpu_info(), "backends_available": available_backends(), "tensorrt": tensorrt,
    }


def headline(run: Run, results: dict[str, dict]) -> dict:
    """The few figures to read first, gathered from the step files."""
    out: dict[str, Any] = {}
    for step in ("bffn", "gr"):
        for r in results.get(step, {}).get("candidates", []):
            v = r.get("verify") or {}
            out.setdefault(f"{step}_verify", {})[r["label"]] = (
                {"passed": r.get("passed"), **{k: v.get(k) for k in ("verdict_agreement", "min_mask_iou",
                                                                      "mean_mask_iou", "label_agreement",
                                                                      "label_set_agreement", "max_abs", "mean_abs")
                                               if k in v}} if r["status"] == "ran"
                else f"{r['status']}: {r.get('reason') or r.get('error')}")
    benches = [("bffn", results.get("bffn", {}).get("bench"))]
    benches += [(f"gr_{key}", body) for key, body in results.get("gr_bench", {}).get("tiles", {}).items()]
    for name, bench in benches:
        for point, body in ((bench or {}).get("points") or {}).items():
            if body.get("status") == "ran":
                out.setdefault(f"{name}_tiles_per_s", {})[point] = {
                    label: ({"tiles_per_s": e["tiles_per_s"], "p50_ms": e["p50_ms"]} if "tiles_per_s" in e
                            else e.get("error")) for label, e in body["engines"].items()}
    train = results.get("train")
    if train:
        out["train"] = {k: train.get(k) for k in ("device", "amp_dtype", "steps", "tiles_per_s", "loss_first",
                                                   "loss_last", "all_finite")}
    return out


# ---------------------------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the JSON files (created; files in it replaced)")
    parser.add_argument("--dry-run", action="store_true", help="CPU stand-ins and tiny settings (seconds, not minutes)")
    parser.add_argument("--budget", type=float, default=0.0,
                        help="total seconds (default 450, dry run 300); every step's budget is scaled alike; steps "
                             "that no longer fit are skipped")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"steps to run, in order (default {','.join(STEPS)})")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for the torch reference and ONNX Runtime "
                                                               "(default: every usable core)")
    parser.add_argument("--gr-data", default="", help="images for GR's verification (default: the bundled frames)")
    parser.add_argument("--without", default="", help="comma-separated installed packages to hide, e.g. "
                                                      "safetensors,tqdm (shows the check runs without them)")
    parser.add_argument("--work", default="", help="folder for the built engines (default: a temporary folder, "
                                                   "removed at the end)")
    args = parser.parse_args(argv)
    args.without = [p.strip() for p in args.without.split(",") if p.strip()]
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for name in args.without:  # hidden the standard way: ``import`` fails and find_spec says absent
        if name in sys.modules and sys.modules[name] is not None:
            raise SystemExit(f"--without {name}: it is imported already; hide it before anything imports it")
        sys.modules[name] = None
    if not has("safetensors"):
        install_safetensors_reader()
    plan = DRY if args.dry_run else FULL
    run = Run(args, plan)
    run.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("STATION_CACHE", str(run.work / "cache"))
    steps: dict[str, dict] = {name: {"status": "pending"} for name in STEPS}
    run.summary = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": sys.argv,
                   "dry_run": args.dry_run, "budget_s": run.total_s, "plan": asdict(plan), "environment": None,
                   "steps": steps}
    for name in STEPS:
        if name not in args.steps:
            steps[name] = {"status": "skipped", "reason": "not asked for (--steps)"}
    current: dict[str, Any] = {"step": None}

    def out_of_time() -> None:  # the hard limit: whatever runs now is cut, the summary is written, the process ends
        with run.lock:
            if current["step"]:
                steps[current["step"]].update(status="timed_out", seconds=round(run.elapsed(), 1),
                                              reason=f"the total budget of {run.total_s:.0f} s ran out in this step")
            for body in steps.values():
                if body["status"] == "pending":
                    body.update(status="skipped", reason=f"the total budget of {run.total_s:.0f} s ran out")
        run.write_summary()
        run.log("total budget spent: summary written, exiting")
        if not args.work:
            shutil.rmtree(run.work, ignore_errors=True)
        os._exit(EXIT_TIME)

    watchdog = threading.Timer(run.total_s + 15, out_of_time)
    watchdog.daemon = True
    watchdog.start()
    try:
        t0 = time.perf_counter()
        run.summary["environment"] = environment(run)
        run.summary["environment_seconds"] = round(time.perf_counter() - t0, 2)
        env = run.summary["environment"]
        run.log(f"torch {env['torch']}, onnxruntime {env['onnxruntime']} {env['onnxruntime_providers']}, "
                f"gpu {(env['gpu'] or {}).get('name')}, tensorrt {env['tensorrt']['version']}")
        run.write_summary()
        results: dict[str, dict] = {}
        trt = env["tensorrt"]["importable"]
        for name in args.steps:
            budget = round(run.scale * (plan.budgets[name] + (plan.tensorrt_extra_s.get(name, 0.0) if trt else 0.0)),
                           1)
            left = run.total_left()
            if left < MIN_S[name]:
                steps[name] = {"status": "skipped", "budget_s": budget,
                               "reason": f"time ran out: {max(left, 0):.0f} s of the {run.total_s:.0f} s budget "
                                         f"left, this step needs at least {MIN_S[name]:.0f} s"}
                run.log(f"{name}: skipped: {steps[name]['reason']}")
                run.write_summary()
                continue
            run.step_deadline = time.monotonic() + budget
            current["step"] = name
            steps[name] = {"status": "running", "budget_s": budget}
            run.log(f"{name}: start (budget {budget:.0f} s, {left:.0f} s of the total left)")
            t0, c0 = time.perf_counter(), _cpu_seconds()
            try:
                body = STEPS[name](run)
                status = {"status": "ran"}
            except Skip as exc:
                body, status = {"reason": str(exc)}, {"status": "skipped", "reason": str(exc)}
            except Exception as exc:
                body = _error(exc)
                status = {"status": "failed", "reason": body["error"]}
                run.log(f"{name}: FAILED: {body['error']}")
            finally:
                _free_cuda()
            seconds, cpu_s = round(time.perf_counter() - t0, 1), round(_cpu_seconds() - c0, 1)
            body = {"step": name, "seconds": seconds, "cpu_s": cpu_s, "budget_s": budget, **body}
            results[name] = body
            failed = [r["label"] for r in body.get("candidates", []) if r.get("status") == "failed"]
            with run.lock:
                current["step"] = None
                steps[name] = {**status, "seconds": seconds, "cpu_s": cpu_s, "budget_s": budget,
                               "over_budget": seconds > budget,
                               "file": run.write(name, body).name,
                               **({"candidates_failed": failed} if failed else {})}
            run.log(f"{name}: {steps[name]['status']} in {seconds:.1f} s")
            run.write_summary()
        run.summary["headline"] = headline(run, results)
    finally:
        watchdog.cancel()
        if not args.work:
            shutil.rmtree(run.work, ignore_errors=True)
    run.summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run.write_summary()
    print(json.dumps({"out": str(run.out), "wall_s": run.summary["wall_s"], "steps": steps,
                      "headline": run.summary["headline"]}, indent=1, default=_jsonable))
    bad = [n for n, s in steps.items() if s["status"] == "failed" or s.get("candidates_failed")]
    return EXIT_FAILED if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
