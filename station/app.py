"""Assemble a line from a recipe and run it, with the panel or headless with a live progress line."""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from engines.backends.base import load_engine
from inspection.feed import ResultFeed
from inspection.inspector import Inspector
from inspection_core.records import LineStats
from station.classify import PatchClassifier
from station.errors import RecipeError
from station.line_calibration import check_source, for_recipe
from station.pipeline import Line
from station.recipe import QueuePolicy, Recipe, SourceKind
from station.rejectlog import RejectLog
from station.sources import GenICamSource, ReplaySource
from station.sources.linescan import build_linescan_source
from ui.app import display_available, run_panel

log = logging.getLogger(__name__)


def build_source(recipe: Recipe):
    """The frame source a recipe describes (unopened)."""
    s = recipe.source
    if line_scan(recipe):  # line blocks assembled into parts (docs/LINESCAN.md)
        return build_linescan_source(s)
    if s.kind is SourceKind.REPLAY:
        return ReplaySource(s.path, loop=s.loop, fps=s.fps or None, pattern=s.pattern)
    return GenICamSource(cti=s.cti, device=s.device, pixel_format=s.pixel_format, frame_rate=s.frame_rate,
                         exposure_us=s.exposure_us, num_buffers=s.buffers)


def _backend_device(backend: str) -> tuple[str, str]:
    """The recipe's backend name → the engines' (backend, device): "torch-cuda" is torch on the GPU, TensorRT
    always runs on the GPU."""
    if backend == "torch-cuda":
        return "torch", "cuda"
    return backend, "cuda" if backend == "tensorrt" else "cpu"


def line_scan(recipe: Recipe) -> bool:
    """True when the recipe's source delivers line-scan parts (inspected while they arrive)."""
    return recipe.source.kind is SourceKind.LINESCAN_REPLAY or recipe.source.line_scan


def build_inspector(recipe: Recipe, streaming: bool = False) -> Inspector:
    """Load the recipe's engine and wrap it with its tiling and decision rules (and its classifier stage and
    calibration profile, if any); ``streaming``: the streaming form, for line-scan parts."""
    engine = None
    if recipe.engine is not None:
        backend, device = _backend_device(recipe.engine.backend.value)
        engine = load_engine(recipe.engine.weights, backend=backend, threads=recipe.engine.threads, device=device,
                             precision=recipe.engine.precision)
        if engine.tile != recipe.tiling.tile:
            raise RecipeError(f"{recipe.path}: [tiling] tile = {recipe.tiling.tile}, but the weights "
                              f"{recipe.engine.weights!r} were trained on {engine.tile} px tiles; set tile = "
                              f"{engine.tile}")
    classifier = None
    c = recipe.classifier
    if c is not None:
        backend, device = _backend_device(c.backend.value)
        try:
            classifier = PatchClassifier(c.weights, patch=c.patch, overlap=c.overlap, threshold=c.threshold,
                                         mode=c.mode.value, threads=c.threads, backend=backend, device=device,
                                         precision=c.precision)
        except RecipeError as exc:
            raise RecipeError(f"{recipe.path}: {exc}") from None
    # [calibration]: the camera's profile (flat-field before tiling; ROI, scale, thresholds in the rules)
    calibration, rules = for_recipe(recipe, engine, classifier)
    return Inspector(engine, overlap=recipe.tiling.overlap, batch=recipe.tiling.batch, rules=rules,
                     classifier=classifier, fail_on_labels=c.fail_on_labels if c is not None else True,
                     calibration=calibration, streaming=streaming)


def calibration_status(recipe: Recipe, inspector) -> tuple[str, bool]:
    """What the operator and the summary are told about calibration: ``(text, warning)``. ``warning`` is True
    when the recipe names a profile but the line runs without it (``required = false`` and the profile missing)."""
    loaded = getattr(inspector, "calibration", None)
    if loaded is not None:
        return loaded.name, False
    if recipe.calibration is None:
        return "none (the recipe has no [calibration])", False
    return f"UNCALIBRATED (profile {recipe.calibration.profile!r} not found)", True


def build_line(recipe: Recipe, max_frames: int | None = None, feed: ResultFeed | None = None, on_result=None) -> Line:
    source = build_source(recipe)
    # line-scan parts: tile rows are inspected while the part arrives (the inspector listens to the source)
    inspector = build_inspector(recipe, streaming=line_scan(recipe))
    if inspector.calibration is not None:  # the camera must fit the profile: refused before the line starts
        check_source(recipe, source, inspector.calibration)
    if line_scan(recipe):
        source.listener = inspector
    calibrated = inspector.calibration.name if inspector.calibration is not None else None
    reject_log = RejectLog(recipe.log.db, save_images=recipe.log.save_reject_images,
                           recipe=f"{recipe.product.name} {recipe.fingerprint()}", calibration=calibrated)
    log.info("reject log %s: rows record recipe %r and calibration %s", recipe.log.db, reject_log.recipe,
             calibration_status(recipe, inspector)[0])
    policy = recipe.queues.frames_policy
    if (recipe.source.kind is SourceKind.REPLAY and not recipe.source.fps) or \
            (recipe.source.kind is SourceKind.LINESCAN_REPLAY and not recipe.source.line_rate_hz):
        # A replay at full speed has no real-time clock to keep: back-pressure instead of dropping files.
        policy = QueuePolicy.BLOCK
    return Line(source, inspector, reject_log, feed, frames_queue=recipe.queues.frames, frames_policy=policy,
                results_queue=recipe.queues.results, max_frames=max_frames, on_result=on_result)


def format_progress(stats: LineStats) -> str:
    h = stats.source
    return (f"inspected {stats.inspected}  pass {stats.passed}  fail {stats.failed}  yield {stats.yield_pct:.1f}%  "
            f"dropped {stats.dropped}  lost {h.lost_frames}  {stats.throughput_fps:.1f} fps  "
            f"latency p50 {stats.latency_ms_p50:.0f} ms  camera {h.state.value}")


@dataclass
class RunSummary:
    stats: LineStats
    seconds: float
    db: str
    engine_id: str
    source: str
    failure: str | None = None
    calibration: str = ""  # the profile version that judged the run, or why there was none

    def to_dict(self) -> dict:
        s, h = self.stats, self.stats.source
        return {
            "acquired": s.acquired, "acquisition_fps": s.acquisition_fps,
            "inspected": s.inspected, "passed": s.passed, "failed": s.failed, "yield_pct": round(s.yield_pct, 2),
            "dropped": s.dropped, "errors": s.errors, "lost_frames": h.lost_frames,
            "incomplete_frames": h.incomplete_frames, "reconnects": h.reconnects, "skipped_files": h.skipped_files,
            "throughput_fps": s.throughput_fps, "latency_ms_p50": round(s.latency_ms_p50, 2),
            "latency_ms_p99": round(s.latency_ms_p99, 2), "seconds": round(self.seconds, 2),
            "camera_state": h.state.value, "engine_id": self.engine_id, "source": self.source, "db": self.db,
            "failure": self.failure, "calibration": self.calibration,
        }

    def text(self) -> str:
        d = self.to_dict()
        lines = [
            f"inspected {d['inspected']} frames in {d['seconds']:.1f} s from {d['source']} with {d['engine_id']}",
            f"  pass {d['passed']}  fail {d['failed']}  yield {d['yield_pct']:.1f} %",
            f"  source delivered {d['acquired']} frames at {d['acquisition_fps']:.1f} frames/s",
            f"  dropped {d['dropped']}  lost {d['lost_frames']}  incomplete {d['incomplete_frames']}  "
            f"reconnects {d['reconnects']}  unreadable files {d['skipped_files']}  errors {d['errors']}",
            f"  throughput {d['throughput_fps']:.1f} frames/s  latency p50 {d['latency_ms_p50']:.0f} ms  "
            f"p99 {d['latency_ms_p99']:.0f} ms",
            f"  calibration: {d['calibration'] or '-'}",
            f"  reject log: {d['db']}",
        ]
        if self.failure:
            lines.append(f"  the line stopped on an error: {self.failure}")
        return "\n".join(lines)


def run_headless(line: Line, out: TextIO | None = None, interval_s: float | None = None) -> LineStats:
    """Run the line to its end (or Ctrl-C), printing a live progress line: rewritten in place on a terminal,
    one line every few seconds otherwise. ``out`` defaults to the standard error stream at call time."""
    out = out if out is not None else sys.stderr
    tty = out.isatty()
    interval = interval_s if interval_s is not None else (0.25 if tty else 5.0)
    line.start()
    last = 0.0
    try:
        while line.running:
            line.join(timeout=0.05)
            now = time.monotonic()
            if now - last >= interval:
                last = now
                text = format_progress(line.stats())
                out.write(f"\r{text}\x1b[K" if tty else text + "\n")
                out.flush()
    except KeyboardInterrupt:
        out.write("\nstopping: draining queues and closing the reject log...\n")
        line.stop()
        line.join()
    if tty:
        out.write("\n")
    return line.stats()


def run_with_panel(line: Line, title: str, calibration: tuple[str, bool] = ("", False)) -> LineStats:
    line.start()
    run_panel(line.feed, line.stats, line.stop, title=title, mask_threshold=line.inspector.rules.score_threshold,
              calibration=calibration)
    line.stop()
    line.join()
    return line.stats()


def run_station(recipe: Recipe, headless: bool, max_frames: int | None, as_json: bool = False,
                on_result=None) -> RunSummary:
    line = build_line(recipe, max_frames=max_frames, on_result=on_result)
    calibration = calibration_status(recipe, line.inspector)
    started = time.monotonic()
    if not headless and display_available():
        stats = run_with_panel(line, title=f"Inspection station - {recipe.product.name}", calibration=calibration)
    else:
        if not headless:
            log.info("no display here: running headless (pass --headless to say so)")
        stats = run_headless(line)
    summary = RunSummary(stats, time.monotonic() - started, str(Path(recipe.log.db)), line.inspector.engine_id,
                         line.source.name, None if line.failure is None else str(line.failure), calibration[0])
    print(json.dumps(summary.to_dict(), indent=2) if as_json else summary.text())
    return summary
