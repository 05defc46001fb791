"""Assemble a line from a recipe and run it, with the panel or headless with a live progress line."""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from engines.backends.base import load_engine
from engines.backends.registry import resolve_backend
from engines.errors import EnginesError
from inspection.feed import ResultFeed
from inspection.inspector import Inspector
from inspection_core.records import LineStats
from station.classify import PatchClassifier
from station.errors import RecipeError
from station.line_calibration import check_source, judging_for
from station import integrations as integrations_
from station.judge import ActiveJudge
from station.panel_reviews import LineReviews
from station.pipeline import DEFAULT_DRAIN_TIMEOUT_S, Line
from station.promotion import record_restart
from station.recipe import NotInspectedPolicy, QueuePolicy, Recipe, SourceKind
from station.ledgerlock import LedgerLock, check_db_path
from station.rejectlog import RejectLog, check_free_space, new_run_id, probe_writable, recover_interrupted
from station.review import default_reviewer
from station.shadow import Candidate, ShadowWorker, candidate_recipe
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
        return ReplaySource(s.path, loop=s.loop, fps=s.fps or None, pattern=s.pattern,
                            bit_depth=recipe.frames.bit_depth, triggered=s.triggered)
    return GenICamSource(cti=s.cti, device=s.device, pixel_format=s.pixel_format, frame_rate=s.frame_rate,
                         exposure_us=s.exposure_us, num_buffers=s.buffers, trigger=s.trigger, nodes=s.nodes,
                         part_id=s.part_id)


def line_scan(recipe: Recipe) -> bool:
    """True when the recipe's source delivers line-scan parts (inspected while they arrive)."""
    return recipe.source.kind is SourceKind.LINESCAN_REPLAY or recipe.source.line_scan


def build_inspector(recipe: Recipe, streaming: bool = False) -> Inspector:
    """Load the recipe's engine and wrap it with its tiling and decision rules (and its classifier stage and
    calibration profile, if any); ``streaming``: the streaming form, for line-scan parts."""
    engine = None
    if recipe.engine is not None:
        backend, device = resolve_backend(recipe.engine.backend.value)  # "torch-cuda": torch on the GPU
        engine = load_engine(recipe.engine.weights, backend=backend, threads=recipe.engine.threads, device=device,
                             precision=recipe.engine.precision)
        if engine.tile != recipe.tiling.tile:
            raise RecipeError(f"{recipe.path}: [tiling] tile = {recipe.tiling.tile}, but the weights "
                              f"{recipe.engine.weights!r} were trained on {engine.tile} px tiles; set tile = "
                              f"{engine.tile}")
    classifier = None
    c = recipe.classifier
    if c is not None:
        backend, device = resolve_backend(c.backend.value)
        try:
            classifier = PatchClassifier(c.weights, patch=c.patch, overlap=c.overlap, threshold=c.threshold,
                                         mode=c.mode.value, threads=c.threads, backend=backend, device=device,
                                         precision=c.precision)
        except RecipeError as exc:
            raise RecipeError(f"{recipe.path}: {exc}") from None
    # [calibration]: the camera's profile (flat-field before tiling; ROI, scale, thresholds in the rules)
    judging = judging_for(recipe, engine, classifier)
    log.info("judging: %s [%s]", judging.describe(), judging.fingerprint())
    return judging.inspector(engine, streaming=streaming)


def build_shadow(recipe: Recipe, run_id: str | None = None) -> ShadowWorker | None:
    """The recipe's ``[shadow]`` (:mod:`station.shadow`), its candidate engine loaded, not started (the
    caller starts it with the line and closes it after); None without ``[shadow]``. Raises
    :class:`~station.errors.RecipeError` naming ``[shadow]`` when the candidate cannot judge this line."""
    config = recipe.shadow
    if config is None:
        return None
    if line_scan(recipe):
        raise RecipeError(f"{recipe.path}: [shadow]: line-scan parts are streamed while they arrive; a shadow runs on "
                          "area-camera and replay lines in this version: remove [shadow]")
    judged = candidate_recipe(recipe)
    try:
        inspector = build_inspector(judged)
    except (RecipeError, EnginesError) as exc:
        raise RecipeError(f"{recipe.path}: [shadow] weights = {config.weights!r}: {exc}") from None
    origin = "rule from its config.json" if judged.rule_from.startswith("the weights'") else f"rule from {judged.rule_from}"
    candidate = Candidate.of(config.weights, inspector, origin)
    return ShadowWorker(inspector, candidate, recipe.log.db, share=config.share, queue_size=config.queue,
                        nice=config.nice, station_id=recipe.station.id, run_id=run_id)


def build_line(recipe: Recipe, max_frames: int | None = None, feed: ResultFeed | None = None, on_result=None, *,
               run_id: str | None = None, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> Line:
    """The line a recipe describes. The ledger is checked first, so a station that could not record anything refuses
    to start before loading any model: a folder given as the log (:class:`~station.errors.RejectLogError`, bad
    input), free space, another station writing the same log (its lock, :mod:`station.ledgerlock`:
    :class:`~station.errors.LedgerInUseError`, bad input), an existing log that cannot be written
    (:class:`~station.errors.LedgerError`); nothing but the lock file beside the log is created when the station
    refuses to start. The lock is held until the log closes. Then the parts an earlier run left without a verdict (a
    kill -9, a crash) get their NOT_INSPECTED ``interrupted`` rows (:mod:`station.journal`, ``unclean_end`` of the
    stats), and the line journals every part it acquires."""
    db = Path(recipe.log.db)
    check_db_path(db)
    check_free_space(db.parent, recipe.station.min_free_mb)
    run_id = run_id or new_run_id()
    lock = LedgerLock(db).acquire(run_id, recipe.station.id)
    line = None
    try:
        probe_writable(db)
        unclean = recover_interrupted(db, run_id)  # the parts a killed run left without a verdict
        line = _assemble_line(recipe, db, max_frames, feed, on_result, run_id, drain_timeout_s)
        line.reject_log.lock = lock  # released when the log closes
        line.reject_log.unclean_end = unclean
        line.reject_log.start_run()
    except BaseException:
        if line is not None:
            line.reject_log.close()
        lock.release()
        raise
    return line


def _assemble_line(recipe: Recipe, db: Path, max_frames: int | None, feed: ResultFeed | None, on_result,
                   run_id: str, drain_timeout_s: float) -> Line:
    """:func:`build_line` once the ledger is checked and locked: the source, the inspector, the log and the line."""
    source = build_source(recipe)
    # line-scan parts: tile rows are inspected while the part arrives (the inspector listens to the source)
    inspector = build_inspector(recipe, streaming=line_scan(recipe))
    if inspector.calibration is not None:  # the camera must fit the profile: refused before the line starts
        check_source(recipe, source, inspector.calibration)
    if line_scan(recipe):
        source.listener = inspector
    counts_as_reject = recipe.station.not_inspected is NotInspectedPolicy.REJECT
    reject_log = RejectLog(db, save_images=recipe.log.save_reject_images, station_id=recipe.station.id,
                           run_id=run_id or new_run_id(), not_inspected_is_reject=counts_as_reject,
                           save_pass_share=recipe.log.save_pass_share, images_max_mb=recipe.log.images_max_mb)
    judge = ActiveJudge.of(recipe, inspector)  # what judges, with the recipe's [frames] guards; rows record its label
    log.info("reject log %s: station %s, run %s; rows record recipe %r and calibration %s", db,
             reject_log.station_id, reject_log.run_id, judge.recipe, judge.calibration_note[0])
    policy = recipe.queues.frames_policy
    if (recipe.source.kind is SourceKind.REPLAY and not recipe.source.fps) or \
            (recipe.source.kind is SourceKind.LINESCAN_REPLAY and not recipe.source.line_rate_hz):
        # A replay at full speed has no real-time clock to keep: back-pressure instead of dropping files.
        policy = QueuePolicy.BLOCK
    return Line(source, inspector, reject_log, feed, frames_queue=recipe.queues.frames, frames_policy=policy,
                results_queue=recipe.queues.results, max_frames=max_frames, on_result=on_result,
                drain_timeout_s=drain_timeout_s, min_free_mb=recipe.station.min_free_mb,
                not_inspected_is_reject=counts_as_reject, judge=judge)


def format_progress(stats: LineStats) -> str:
    h = stats.source
    return (f"inspected {stats.inspected}  pass {stats.passed}  fail {stats.failed}  "
            f"not inspected {stats.not_inspected}  yield {stats.yield_pct:.1f}%  lost {stats.lost}  "
            f"{stats.throughput_fps:.1f} fps  latency p50 {stats.latency_ms_p50:.0f} ms  camera {h.state.value}  "
            f"line {stats.state.value}")


#: Exit status of ``station run`` after a stop by each signal: the shell's 128 + signal number.
SIGNAL_NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


@dataclass
class RunSummary:
    stats: LineStats
    seconds: float
    db: str
    engine_id: str
    source: str
    failure: str | None = None
    calibration: str = ""  # the profile version that judged the run, or why there was none
    station_id: str = ""
    run_id: str = ""
    signal: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM, SIGHUP), if any
    stop_reason: str | None = None
    extra: dict = field(default_factory=dict)
    #: earlier runs on this log that ended without closing it, and the parts recorded ``interrupted`` at this start
    #: (:meth:`station.journal.UncleanEnd.to_dict`); None when the previous run ended cleanly
    unclean_end: dict | None = None

    def to_dict(self) -> dict:
        s, h = self.stats, self.stats.source
        return {
            "station_id": self.station_id, "run_id": self.run_id,
            "acquired": s.acquired, "acquisition_fps": s.acquisition_fps,
            "inspected": s.inspected, "passed": s.passed, "failed": s.failed,
            "not_inspected": s.not_inspected, "not_inspected_reasons": dict(sorted(s.not_inspected_reasons.items())),
            "not_inspected_counts_as": "reject" if s.not_inspected_is_reject else "excluded",
            "rejects": s.rejects, "yield_pct": round(s.yield_pct, 2),
            "dropped": s.dropped, "errors": s.errors, "warnings": s.warnings,
            "gap_rows": s.gaps, "gap_frames": s.lost, "lost_frames": h.lost_frames,
            "incomplete_frames": h.incomplete_frames, "reconnects": h.reconnects, "skipped_files": h.skipped_files,
            "recorded": s.recorded, "refused": s.refused,
            "throughput_fps": s.throughput_fps, "latency_ms_p50": round(s.latency_ms_p50, 2),
            "latency_ms_p99": round(s.latency_ms_p99, 2), "seconds": round(self.seconds, 2),
            "camera_state": h.state.value, "line_state": s.state.value, "engine_id": self.engine_id,
            "source": self.source, "db": self.db, "failure": self.failure, "calibration": self.calibration,
            "signal": None if self.signal is None else signal.Signals(self.signal).name,
            "stop_reason": self.stop_reason, "stage_ms": dict(s.stage_ms), "unclean_end": self.unclean_end,
            **self.extra,
        }

    def text(self) -> str:
        d = self.to_dict()
        reasons = ", ".join(f"{k} {v}" for k, v in d["not_inspected_reasons"].items())
        lines = [
            f"inspected {d['inspected']} frames in {d['seconds']:.1f} s from {d['source']} with {d['engine_id']}",
            f"  station {d['station_id'] or '-'}  run {d['run_id'] or '-'}",
            f"  source delivered {d['acquired']} parts at {d['acquisition_fps']:.1f} frames/s: pass {d['passed']}  "
            f"fail {d['failed']}  not inspected {d['not_inspected']}" + (f" ({reasons})" if reasons else ""),
            f"  rejects {d['rejects']} (parts not inspected {'count as rejects' if d['not_inspected_counts_as'] == 'reject' else 'are left out'})"
            f"  yield {d['yield_pct']:.1f} %",
            f"  lost {d['gap_frames']} frame(s) in {d['gap_rows']} gap row(s)  incomplete {d['incomplete_frames']}  "
            f"reconnects {d['reconnects']}  unreadable files {d['skipped_files']}  errors {d['errors']}  "
            f"implausible frames {d['warnings']}",
            f"  throughput {d['throughput_fps']:.1f} frames/s  latency p50 {d['latency_ms_p50']:.0f} ms  "
            f"p99 {d['latency_ms_p99']:.0f} ms",
            "  stage times (mean ms per part): " + ("  ".join(f"{k} {v:.1f}" for k, v in d["stage_ms"].items())
                                                     or "-"),
            f"  calibration: {d['calibration'] or '-'}",
            f"  reject log: {d['db']}: {d['recorded']} row(s) recorded" + (f", {d['refused']} REFUSED" if d["refused"]
                                                                           else ""),
        ]
        if d.get("max_frames"):
            lines.insert(3, max_frames_note(d))
        if "int8_guard_rescored" in d:
            lines.append(f"  int8 guard: {100 * d['int8_guard_rescored']:.1f} % of tiles came near the threshold and "
                         "were scored again in fp32")
        if d.get("shadow"):
            sh = d["shadow"]
            lines.append(f"  shadow {sh['candidate']}: judged {sh['shadowed']} of {sh['chosen']} chosen part(s) "
                         f"(share {sh['share']:g}), {sh['disagreements']} disagreement(s); {sh['skipped']} skipped "
                         f"(its queue was full), {sh['unfinished']} unfinished at the stop: station shadow report "
                         f"--db {d['db']}")
        for name, status in d.get("integrations", {}).items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in status.items() if v is not None))
        if self.signal is not None:
            lines.append(f"  stopped by {SIGNAL_NAMES.get(self.signal, signal.Signals(self.signal).name)}: queues "
                         "drained")
        if self.failure:
            lines.append(f"  the line stopped on an error: {self.failure}")
        if self.unclean_end:
            lines.append(f"  UNCLEAN END before this run: {self.unclean_end['message']}")
        return "\n".join(lines)


def max_frames_note(d: dict) -> str:
    """The summary's line on ``--max-frames N`` (``d``: :meth:`RunSummary.to_dict`): the source delivers N parts,
    and what became of those that were not inspected is said plainly."""
    n, acquired, inspected = d["max_frames"], d["acquired"], d["inspected"]
    if d["signal"] or d["failure"]:
        delivered = f"the run was stopped after {acquired} of {n} part(s)"
    elif acquired < n:
        delivered = f"the source ended after {acquired} of {n} part(s)"
    else:
        delivered = f"the source stopped after delivering {n} part(s)"
    not_inspected = acquired - inspected
    if not not_inspected:
        return f"  --max-frames {n}: {delivered}; all inspected"
    reasons = ", ".join(f"{k} {v}" for k, v in d["not_inspected_reasons"].items())
    counted = ("count as rejects, so the yield is over all of them" if d["not_inspected_counts_as"] == "reject"
               else "are left out of the yield")
    return (f"  --max-frames {n}: {delivered}; {inspected} inspected, {not_inspected} not inspected ({reasons}): "
            f"they {counted}")


class StopSignals:
    """While active (``with``), SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the line as a drain; the first signal is
    kept in ``received``; a second one cuts the drain short (queued frames get NOT_INSPECTED rows at once).
    Only the main thread can take signals; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, stop: Callable[..., None]) -> None:
        self._stop = stop
        self.received: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def handle(self, signum: int, _frame: object = None) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
            self._stop(f"{signal.Signals(signum).name} received")
        else:
            self._stop(f"{signal.Signals(signum).name} received again", drain_timeout_s=0.0)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def run_headless(line: Line, out: TextIO | None = None, interval_s: float | None = None,
                 signals: StopSignals | None = None) -> LineStats:
    """Run the line to its end (or a stop signal: SIGINT, SIGTERM, SIGHUP drain it), printing a live progress line:
    rewritten in place on a terminal, one line every few seconds otherwise. ``out`` defaults to the standard error
    stream at call time."""
    out = out if out is not None else sys.stderr
    tty = out.isatty()
    interval = interval_s if interval_s is not None else (0.25 if tty else 5.0)
    signals = signals or StopSignals(line.stop)
    told = 0
    last = 0.0
    with signals:  # before the start: a signal at any moment from here on drains the line
        line.start()
        try:
            while line.running:
                line.join(timeout=0.05)
                if signals.count > told:
                    told = signals.count
                    name = signal.Signals(signals.received).name
                    out.write(f"\n{name}: stopping; draining queues (at most {line.drain_timeout_s:g} s) and "
                              "closing the reject log; signal again to stop draining...\n" if told == 1 else
                              "\nstopping now: queued frames get NOT_INSPECTED rows\n")
                    out.flush()
                now = time.monotonic()
                if now - last >= interval:
                    last = now
                    text = format_progress(line.stats())
                    out.write(f"\r{text}\x1b[K" if tty else text + "\n")
                    out.flush()
        except KeyboardInterrupt:  # outside the main thread's handler (signals not installed)
            out.write("\nstopping: draining queues and closing the reject log...\n")
            line.stop("interrupted")
            line.join()
    if tty:
        out.write("\n")
    return line.stats()


def run_with_panel(line: Line, title: str, calibration: tuple[str, bool] = ("", False),
                   signals: StopSignals | None = None, operator: str | None = None) -> LineStats:
    """Run the line behind the operator panel until the window closes (or a stop signal closes it). The panel's
    review keys record the operator's marks on the line's ledger (:class:`~station.panel_reviews.LineReviews`), as
    ``operator`` (default: the OS user)."""
    signals = signals or StopSignals(line.stop)
    reviews = None
    if line.reject_log is not None:
        reviews = LineReviews(line.reject_log, operator or default_reviewer())
        line.listeners.append(reviews)  # before the start: it learns every part's row
    with signals:  # until the panel takes the signals over
        line.start()
    try:
        run_panel(line.feed, line.stats, line.stop, title=title, calibration=calibration,
                  on_signal=lambda signum: signals.handle(signum), reviews=reviews)
    finally:
        line.stop("the panel was closed")
        line.join()
        if reviews is not None:
            reviews.close()  # the marks still being recorded
    return line.stats()


def run_station(recipe: Recipe, headless: bool, max_frames: int | None, as_json: bool = False,
                on_result=None, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                operator: str | None = None) -> RunSummary:
    run_id = new_run_id()
    # integrations are checked before anything loads; started once the line exists (docs/INTEGRATION.md)
    wanted = integrations_.configure(recipe, integrations_.Context(recipe, Path(recipe.log.db), recipe.station.id,
                                                                   run_id))
    line = build_line(recipe, max_frames=max_frames, on_result=on_result, run_id=run_id,
                      drain_timeout_s=drain_timeout_s)
    record_restart(recipe.log.db, recipe, line.inspector.engine_id, operator or default_reviewer(),
                   station_id=recipe.station.id)
    try:
        shadow = build_shadow(recipe, run_id)  # the candidate beside the engine ([shadow]), loaded now
        if shadow is not None:
            shadow.start(line)
            line.listeners.append(shadow)
    except BaseException:
        line.reject_log.close()
        raise
    active = integrations_.start_all(wanted, line)
    calibration = line.judge.calibration_note
    started = time.monotonic()
    signals = StopSignals(line.stop)
    if not headless and display_available():
        stats = run_with_panel(line, title=f"Inspection station - {recipe.product.name}", calibration=calibration,
                               signals=signals, operator=operator)
    else:
        if not headless:
            log.info("no display here: running headless (pass --headless to say so)")
        stats = run_headless(line, signals=signals)
    extra = {"integrations": integrations_.close_all(active)} if wanted else {}
    if shadow is not None:  # what it has queued is judged within the drain time, unless a signal stopped the run
        shadow.close(0.0 if signals.received else drain_timeout_s)
        extra["shadow"] = shadow.status()
    if max_frames is not None:  # the summary says what became of the N parts (max_frames_note)
        extra["max_frames"] = max_frames
    engine = line.inspector.engine  # None: the classifier alone judges
    share = engine.guard_share() if engine is not None else None
    if share is not None:  # an int8 engine with its guard: how much of the work went to the fp32 graph
        extra["int8_guard_rescored"] = round(share, 4)
    summary = RunSummary(stats, time.monotonic() - started, str(Path(recipe.log.db)), line.inspector.engine_id,
                         line.source.name, None if line.failure is None else str(line.failure),
                         line.judge.calibration_note[0],
                         station_id=recipe.station.id, run_id=run_id, signal=signals.received,
                         stop_reason=line.stop_reason, extra=extra,
                         unclean_end=None if line.reject_log.unclean_end is None else
                         line.reject_log.unclean_end.to_dict())
    print(json.dumps(summary.to_dict(), indent=2) if as_json else summary.text(), flush=True)
    return summary
