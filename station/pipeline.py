"""The running line: three threads joined by bounded queues, and a part ledger that accounts for every frame.

    acquisition thread ──frames queue──▶ inference thread ──results queue──▶ logging thread
      (source.__iter__)   (drop oldest      (guards, Inspector)   (always block:    (RejectLog: one row
                           or block)            │                  no entry lost)    per entry, counters)
                                                └──▶ ResultFeed (latest result for the panel)

Every frame the source delivers becomes exactly one ledger entry: an :class:`InspectionResult` (PASS / FAIL) or a
:class:`NotInspected` with its reason: dropped by the drop-oldest queue (made on the acquisition thread the moment
it is dropped), unreadable or lost (reported by the source itself, with :class:`FrameGap` for lost frames), too
small / too large / incomplete / implausible / too slow (the frame guards; an implausible frame is NOT_INSPECTED,
FAIL or only noted as ``[frames] implausible`` says), an inference error, or stopped (still queued, or still being
inspected, when the drain timeout ran out). All entries go down the results queue to the
logging thread, the only writer of the ledger.

Stopping (Ctrl-C, SIGTERM, SIGHUP, the window's close) stops the source first, then inspects what is queued for
at most the drain timeout (the frame being inspected when it runs out is cancelled between two batches), gives
what is left NOT_INSPECTED rows, and closes the ledger. When a row cannot be written (disk full, read-only
file, I/O error, database locked beyond its timeout), nor a FAIL's reject image (its row, committed, says so), nor
the in-flight journal of acquired parts (:mod:`station.journal`), the line stops at once in the ERROR state: the source stops,
nothing more is inspected, and every entry still queued is refused and named in the failure message. Below the
free-space threshold the line stops cleanly (what is queued is still inspected and recorded), also in ERROR.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from inspection.feed import ResultFeed
from inspection_core.errors import InspectionCoreError
from inspection_core.records import (STAGES, CameraState, Frame, FrameGap, InspectionResult, LineState, LineStats,
                                     NotInspected, NotInspectedReason, SourceHealth, Verdict)
from station.errors import EvidenceError, LedgerError, StationError
from station.frameguard import FrameGuard, implausible_failure
from station.judge import ActiveJudge
from station.part_identity import IdentityBook
from station.recipe import ImplausiblePolicy, QueuePolicy
from station.rejectlog import check_free_space

log = logging.getLogger(__name__)
_END = object()  # end-of-stream marker passed down the queues
DISK_CHECK_S = 1.0  # how often the logging thread looks at the free space
DEFAULT_DRAIN_TIMEOUT_S = 10.0
TILE_TIME_WEIGHT = 0.3  # weight of the newest frame in the measured time per tile (an exponential average)


class _NotInspectedNow(Exception):
    """Raised by the inference thread's checkpoint between two batches: the frame's inference stops and it gets
    ``entry``, its NOT_INSPECTED record (``stopped`` at the drain timeout, ``too_slow`` on its first batch)."""

    def __init__(self, entry: NotInspected) -> None:
        super().__init__(entry.detail)
        self.entry = entry


class BoundedQueue:
    """A FIFO of at most ``maxsize`` items whose behaviour when full is explicit: ``BLOCK`` makes the producer
    wait (back-pressure); ``DROP_OLDEST`` discards the oldest waiting item, counts it in ``dropped`` and hands it to
    ``on_drop`` (on the producer's thread), so a dropped frame can still get its row."""

    def __init__(self, maxsize: int, policy: QueuePolicy, on_drop: Callable[[Any], None] | None = None) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.policy = QueuePolicy(policy)
        self.dropped = 0
        self.on_drop = on_drop
        self._lock = threading.Lock()

    def put(self, item: Any, force: bool = False) -> None:
        """Add ``item``. ``force`` always blocks (used for the end marker, which must never be dropped)."""
        if self.policy is QueuePolicy.BLOCK or force:
            self._queue.put(item)
            return
        dropped = []
        with self._lock:
            while True:
                try:
                    self._queue.put_nowait(item)
                    break
                except queue.Full:
                    try:
                        dropped.append(self._queue.get_nowait())
                        self.dropped += 1
                    except queue.Empty:
                        pass
        if self.on_drop is not None:
            for old in dropped:
                self.on_drop(old)

    def get(self, timeout: float | None = None) -> Any:
        return self._queue.get(timeout=timeout)

    def qsize(self) -> int:
        return self._queue.qsize()


def id_ranges(ids: list[int], limit: int = 12) -> str:
    """``[1, 2, 3, 7, 9, 10]`` → ``"1-3, 7, 9-10"`` (at most ``limit`` ranges, then how many more)."""
    ranges: list[list[int]] = []
    for i in sorted(ids):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        elif not ranges or i != ranges[-1][1]:
            ranges.append([i, i])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in ranges[:limit])
    return text + (f" and {len(ranges) - limit} more range(s)" if len(ranges) > limit else "")


class _Counters:
    """Counters shared by the threads; one lock, snapshots for readers."""

    def __init__(self, window: int = 256) -> None:
        self.lock = threading.Lock()
        self.inspected = self.passed = self.failed = self.errors = 0
        self.recorded = self.refused = self.refused_gaps = self.lost = self.gaps = self.warnings = 0
        self.acquired = self.first_frame_ns = self.last_frame_ns = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.refused_ids: list[int] = []
        self.latencies: collections.deque[float] = collections.deque(maxlen=window)
        self.done_times: collections.deque[float] = collections.deque(maxlen=window)
        self.stage_sums: collections.Counter[str] = collections.Counter()  # ms per stage over inspected parts
        self.stage_counts: collections.Counter[str] = collections.Counter()

    def add_stage(self, stage: str, ms: float) -> None:
        """Caller holds the lock."""
        self.stage_sums[stage] += ms
        self.stage_counts[stage] += 1

    def add(self, result: InspectionResult) -> None:
        with self.lock:
            for stage, ms in result.timings.items():
                if stage in STAGES:
                    self.add_stage(stage, ms)
            self.inspected += 1
            if result.verdict is Verdict.PASS:
                self.passed += 1
            else:
                self.failed += 1
            self.latencies.append(result.latency_ms)
            self.done_times.append(time.monotonic())


class Line:
    """Runs a source through an inspector into the part ledger (a :class:`~station.rejectlog.RejectLog`) on three
    threads; see the module docstring for what becomes of every frame.

    ``max_frames`` is N parts: the source stops after delivering that many frames (a dropping queue may still drop
    some of them; each has its row), and the line ends when they are settled. ``guard`` checks frame sizes,
    plausibility and the time a frame's tiles would take before inspection (default: :class:`FrameGuard`'s
    limits). ``drain_timeout_s`` bounds how long :meth:`stop` keeps inspecting queued frames; the frame being
    inspected when it runs out is cancelled between two batches (``stopped``). ``min_free_mb``: the
    line stops cleanly when free space where the ledger lives falls below it (0: never). ``not_inspected_is_reject``
    is how parts not inspected count in the counters (the ledger's rows say it too). ``on_result`` is called on the
    logging thread after each inspected part's row is committed. ``listeners`` (:mod:`station.integrations`) get
    ``on_row(row, entry)`` on the logging thread after every committed ledger row (PASS, FAIL, NOT_INSPECTED, GAP):
    the row as stored (a dict, ``id`` included) and the entry it records; they must hand it off and return at once.
    ``identities`` (:class:`~station.part_identity.IdentityBook`) gives every part its identity as it is acquired:
    the PLC's ids (an OPC UA job) over the source's part id, once, before the part is journaled or queued.

    What judges the parts is the line's :attr:`judge` (:class:`~station.judge.ActiveJudge`: ``inspector`` and the
    ledger label ``recipe`` of the recipe it was built from, or ``judge`` given whole, as :func:`station.app.build_line`
    does with :meth:`~station.judge.ActiveJudge.of`), replaced whole by :meth:`switch`. Each frame is judged
    by the judge active when its inspection starts, and every ledger entry goes to the ledger with the judge it was
    made under: its row's ``recipe``, ``calibration`` and ``engine_id`` come from there.
    """

    def __init__(self, source, inspector, reject_log=None, feed: ResultFeed | None = None, *,
                 frames_queue: int = 8, frames_policy: QueuePolicy = QueuePolicy.DROP_OLDEST,
                 results_queue: int = 64, max_frames: int | None = None, on_result=None,
                 guard: FrameGuard | None = None, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                 min_free_mb: float = 0.0, not_inspected_is_reject: bool = True, listeners=(),
                 recipe: str | None = None, judge: ActiveJudge | None = None) -> None:
        self.source = source
        self._judge = judge or ActiveJudge(inspector, recipe)
        self.reject_log = reject_log
        self.feed = feed or ResultFeed()
        self.max_frames = max_frames
        self.on_result = on_result
        self.listeners = list(listeners)
        self.guard = guard or FrameGuard()
        self.drain_timeout_s = float(drain_timeout_s)
        self.min_free_mb = float(min_free_mb)
        self.not_inspected_is_reject = not_inspected_is_reject
        self.frames = BoundedQueue(frames_queue, frames_policy, on_drop=self._dropped)
        self.results = BoundedQueue(results_queue, QueuePolicy.BLOCK)
        self.counters = _Counters()
        self.identities = IdentityBook()  # who each part is: announced by the PLC, claimed at acquisition
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self._tile_s: float | None = None  # seconds per tile measured on this line (inference thread)
        self._ledger_failed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._state = LineState.STARTING
        self.failure: BaseException | None = None
        self.stop_reason: str | None = None

    # -- what judges --------------------------------------------------------------------------------------
    @property
    def judge(self) -> ActiveJudge:
        """What judges parts now: the inspector and the label of its recipe."""
        return self._judge

    @property
    def inspector(self) -> Any:
        """The active judge's inspector."""
        return self._judge.inspector

    def switch(self, judge: ActiveJudge) -> ActiveJudge:
        """Judge the next frames with ``judge`` (any thread; one assignment, so the threads see the old judge or
        the new one, never a mix). A frame whose inspection has started, and every entry made before, keep the judge
        they were made under. Returns the judge replaced."""
        old, self._judge = self._judge, judge
        if judge.engine_id != old.engine_id:
            self._tile_s = None  # another engine: its time per tile is measured again
        log.info("the line judges with %s (%s) from the next frame; was %s (%s)", judge.recipe or "-",
                 judge.engine_id, old.recipe or "-", old.engine_id)
        return old

    # -- control -------------------------------------------------------------------------------------------
    def start(self) -> "Line":
        """Open the source here, so a missing camera or folder raises at once in the caller, then start the
        three threads."""
        try:
            self.source.open()
        except BaseException:
            if self.reject_log is not None:
                self.reject_log.close()
            raise
        self.source.ledger_sink = self._source_event
        if self._stop.is_set():  # stopped before it started (a signal while the source opened): end at once
            self.source.stop()
        self._started = time.monotonic()
        self._state = LineState.RUNNING
        self._threads = [
            threading.Thread(target=self._guard(self._acquire), name="acquisition", daemon=True),
            threading.Thread(target=self._guard(self._infer), name="inference", daemon=True),
            threading.Thread(target=self._guard(self._record), name="logging", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, reason: str | None = None, error: BaseException | None = None,
             drain_timeout_s: float | None = None) -> None:
        """Ask the line to stop: the source stops, the queued frames are inspected for at most the drain timeout
        (``drain_timeout_s``, default the line's), the log closes. Returns at once; safe to call again (a second
        call can only shorten the drain). ``error``: the line stops on an error (state ERROR, exit status 1)."""
        if error is not None and self.failure is None:
            self.failure = error
        timeout = self.drain_timeout_s if drain_timeout_s is None else float(drain_timeout_s)
        deadline = time.monotonic() + max(0.0, timeout)
        if self._drain_deadline is None or deadline < self._drain_deadline:
            self._drain_deadline = deadline
        if not self._stop.is_set():
            self.stop_reason = reason or (str(error) if error is not None else "stop requested")
            log.info("stopping the line (%s): draining queues for at most %.3g s", self.stop_reason, timeout)
        self._stop.set()
        self.source.stop()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the three threads; True when all ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def state(self) -> LineState:
        if self.failure is not None:
            return LineState.ERROR
        if self._threads and not self.running:
            return LineState.STOPPED
        if self._stop.is_set():
            return LineState.DRAINING
        return self._state

    def run(self) -> LineStats:
        """Start, wait until the source ends or ``max_frames`` is reached, and return the final counters.
        Ctrl-C stops the line cleanly (a drain)."""
        self.start()
        try:
            while self.running:
                self.join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop("interrupted")
            self.join()
        return self.stats()

    # -- threads -------------------------------------------------------------------------------------------
    def _guard(self, body):
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - a dead stage must stop the whole line, loudly
                # Each stage's own ``finally`` passes the end marker on, so the stages after it still drain.
                name = threading.current_thread().name
                # an expected failure (camera missing...): its message suffices
                if isinstance(exc, (StationError, InspectionCoreError)):
                    log.error("%s stopped: %s", name, exc)
                else:
                    log.exception("%s thread failed", name)
                self.stop(error=exc)
        return run

    def _count_acquired(self, timestamp_ns: int) -> None:
        with self.counters.lock:
            self.counters.acquired += 1
            self.counters.first_frame_ns = self.counters.first_frame_ns or timestamp_ns
            self.counters.last_frame_ns = timestamp_ns

    def _journal(self, frame: Frame) -> None:
        """Note an acquired part in the ledger's in-flight journal (:mod:`station.journal`); when that cannot be
        written the line stops as on a row that cannot be (the part then gets a ``stopped`` entry, refused)."""
        note = getattr(self.reject_log, "note_acquired", None)
        if note is None or self._ledger_failed.is_set():
            return
        try:
            note(frame, self._judge)
        except Exception as exc:  # noqa: BLE001 - any failure to write the ledger stops the line
            error = exc if isinstance(exc, LedgerError) else LedgerError(
                f"cannot write to the reject log: {type(exc).__name__}: {exc}")
            self._ledger_failed.set()
            log.error("the line stops: %s", error)
            self.stop("the reject log cannot be written", error=error, drain_timeout_s=0.0)

    def _emit(self, entry: NotInspected | FrameGap, note: str | None = None, judge: ActiveJudge | None = None) -> None:
        """Count an entry that is not an inspection and send it to the ledger, with ``judge`` (default: the active
        one)."""
        with self.counters.lock:
            if isinstance(entry, NotInspected):
                self.counters.reasons[entry.reason.value] += 1
                if entry.reason is NotInspectedReason.INFERENCE_ERROR:
                    self.counters.errors += 1
            else:
                self.counters.gaps += 1
                self.counters.lost += entry.count
        self.results.put((entry, note, judge or self._judge))

    def _source_event(self, entry: NotInspected | FrameGap) -> None:
        """A source's report (acquisition thread): a part it could not deliver as a frame, or lost frames."""
        entry = self.identities.identify(entry)  # a part (or the part lost) a PLC's job may be waiting for
        if isinstance(entry, NotInspected):
            self._count_acquired(entry.timestamp_ns)
        self._emit(entry)

    def _dropped(self, frame: Any) -> None:
        """A frame the drop-oldest queue discarded (acquisition thread)."""
        if isinstance(frame, Frame):
            self._emit(NotInspected.of(frame, NotInspectedReason.DROPPED,
                                       "the frames queue was full: the line inspects slower than the source delivers"))

    def _acquire(self) -> None:
        # ``max_frames`` means N parts: the source stops after delivering N frames, whatever the queue policy, so
        # nothing beyond N is dropped or stopped (a dropping queue may still drop some of the N: they have rows).
        enough = self.max_frames
        queued = 0
        try:
            with self.source:
                for frame in self.source:
                    frame = self.identities.identify(frame)  # who the part is, once, before anything records it
                    self._count_acquired(frame.timestamp_ns)
                    self._journal(frame)  # on record before it is queued: a kill -9 leaves no unmarked hole
                    if self._stop.is_set():  # delivered after the stop: it still gets its row
                        self._emit(NotInspected.of(frame, NotInspectedReason.STOPPED, self._stopped_detail()))
                        break
                    self.frames.put(frame)
                    queued += 1
                    if enough is not None and queued >= enough:
                        break
        finally:
            self.frames.put(_END, force=True)

    def _stopped_detail(self) -> str:
        if self._ledger_failed.is_set():
            return "the ledger failed: the line stopped"
        if self.max_frames is not None and self.counters.inspected >= self.max_frames:
            return f"discarded at --max-frames {self.max_frames}"
        return f"the line stopped ({self.stop_reason or 'stop requested'})"

    def _infer(self) -> None:
        try:
            while True:
                frame = self.frames.get()
                if frame is _END:
                    break
                judge = self._judge  # this frame's, whatever a switch does meanwhile
                inspector, guard = judge.inspector, judge.guard or self.guard
                if self._ledger_failed.is_set() or (self.max_frames is not None
                                                    and self.counters.inspected >= self.max_frames):
                    self._emit(NotInspected.of(frame, NotInspectedReason.STOPPED, self._stopped_detail()))
                    continue
                if self._drain_deadline is not None and time.monotonic() > self._drain_deadline:
                    self._emit(NotInspected.of(frame, NotInspectedReason.STOPPED,
                                               f"still queued when the drain timeout ran out ({self.stop_reason})"))
                    continue
                refused = guard.refuse(frame)
                if refused is not None:
                    self._emit(refused)
                    continue
                warning = guard.implausible(frame)
                if warning:  # a frame the station cannot judge never passes, unless the recipe says "warn"
                    with self.counters.lock:
                        self.counters.warnings += 1
                        first = self.counters.warnings == 1
                    (log.warning if first else log.debug)("frame %s from %s: %s", frame.frame_id, frame.source,
                                                          warning)
                    if guard.on_implausible is ImplausiblePolicy.NOT_INSPECTED:
                        self._emit(NotInspected.of(frame, NotInspectedReason.IMPLAUSIBLE, warning))
                        continue
                    if guard.on_implausible is ImplausiblePolicy.FAIL:
                        self._deliver(implausible_failure(frame, warning, judge.engine_id), warning,
                                      time.monotonic_ns(), judge)
                        continue
                tiles = 0 if "part" in frame.meta else inspector.tile_count(frame.image.shape)
                refused = guard.too_slow(frame, tiles, self._tile_s) if tiles else None
                if refused is not None:  # refused before any inference: the line cannot afford its tiles
                    self._emit(refused, warning)
                    continue
                started_ns = time.monotonic_ns()
                try:
                    result = inspector.inspect(frame, checkpoint=self._checkpoint(frame, guard))
                except _NotInspectedNow as stopped:  # cancelled between two batches
                    log.warning("frame %s from %s not inspected: %s", frame.frame_id, frame.source, stopped)
                    self._emit(stopped.entry, warning, judge)
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the line
                    log.error("frame %s from %s could not be inspected: %s", frame.frame_id, frame.source, exc)
                    self._emit(NotInspected.of(frame, NotInspectedReason.INFERENCE_ERROR,
                                               f"{type(exc).__name__}: {exc}"), warning, judge)
                    continue
                if tiles and "total" in result.timings:  # what a tile costs this line, for the next frames
                    tile_s = result.timings["total"] / 1e3 / tiles
                    self._tile_s = tile_s if self._tile_s is None else (
                        TILE_TIME_WEIGHT * tile_s + (1 - TILE_TIME_WEIGHT) * self._tile_s)
                self._deliver(result, warning, started_ns, judge)
        finally:
            self.results.put(_END, force=True)

    def _deliver(self, result: InspectionResult, note: str | None, started_ns: int, judge: ActiveJudge) -> None:
        """Count a result, show it on the panel and send it to the ledger with the ``judge`` that judged it
        (inference thread). Its timings gain ``acquire`` first: the time from the frame's timestamp to the start of
        its inspection (the wait in the frames queue), which the ledger, the panel and the metrics'
        ``station_stage_seconds{stage="acquire"}`` read."""
        acquire_ms = max(0.0, (started_ns - result.frame.timestamp_ns) / 1e6)
        result = replace(result, timings={"acquire": acquire_ms, **result.timings})
        self.counters.add(result)
        self.feed.publish(result)
        self.results.put((result, note, judge))
        if self.max_frames is not None and self.counters.inspected >= self.max_frames:
            self.stop(f"--max-frames {self.max_frames} reached")

    def _checkpoint(self, frame: Frame, guard: FrameGuard) -> Callable[[int, int], None]:
        """The inspector's checkpoint for ``frame`` (called between batches): it cancels the inference when the
        drain timeout has run out (``stopped``: a stop is bounded whatever the frame) and, while no time per tile
        is known yet, refuses the frame after its first batch when the rest would exceed ``max_inspect_s``
        (``too_slow``)."""
        first_batch: list[float] = []
        judge_speed = guard.max_inspect_s > 0 and guard.tile_ms is None and self._tile_s is None

        def checkpoint(done: int, total: int) -> None:
            now = time.monotonic()
            deadline = self._drain_deadline
            if deadline is not None and now > deadline:
                why = ("the ledger failed" if self._ledger_failed.is_set() else
                       f"the drain timeout ran out ({self.stop_reason or 'stop requested'})")
                raise _NotInspectedNow(NotInspected.of(
                    frame, NotInspectedReason.STOPPED, f"inference cancelled after {done} of {total} tiles: {why}"))
            if judge_speed and done == 0:
                first_batch.append(now)
            elif judge_speed and len(first_batch) == 1:
                first_batch.append(now)  # judged once, on the first batch
                refused = guard.too_slow(frame, total, (now - first_batch[0]) / done, measured=False)
                if refused is not None:
                    raise _NotInspectedNow(refused)
        return checkpoint

    def _record(self) -> None:
        ledger = self.reject_log
        next_disk_check = time.monotonic() + DISK_CHECK_S
        try:
            while True:
                item = self.results.get()
                if item is _END:
                    break
                entry, note, judge = item
                if self._ledger_failed.is_set():
                    self._refuse(entry)
                    continue
                t0 = time.perf_counter()
                try:
                    row = ledger.record_row(entry, note, judge) if ledger is not None else None
                except EvidenceError as exc:  # the row is committed (it says so), its reject images are not
                    row = exc.row
                    self._ledger_failed.set()
                    log.error("the line stops: %s", exc)
                    self.stop("a reject image cannot be written", error=exc, drain_timeout_s=0.0)
                except Exception as exc:  # noqa: BLE001 - any failure to record stops the line
                    error = exc if isinstance(exc, LedgerError) else LedgerError(
                        f"cannot write to the reject log: {type(exc).__name__}: {exc}")
                    self._ledger_failed.set()
                    log.error("the line stops: %s", error)
                    self.stop("the reject log cannot be written", error=error, drain_timeout_s=0.0)
                    self._refuse(entry)
                    continue
                with self.counters.lock:
                    self.counters.recorded += 1
                    if isinstance(entry, InspectionResult) and ledger is not None:
                        self.counters.add_stage("log", (time.perf_counter() - t0) * 1e3)
                if row is not None:
                    self._tell_listeners(row, entry)
                if isinstance(entry, InspectionResult) and self.on_result is not None:
                    try:
                        self.on_result(entry)
                    except Exception:  # noqa: BLE001 - a broken listener must not stop the ledger
                        log.exception("on_result failed for frame %s", entry.frame.frame_id)
                if ledger is not None and self.min_free_mb > 0 and time.monotonic() >= next_disk_check:
                    next_disk_check = time.monotonic() + DISK_CHECK_S
                    self._check_disk(Path(ledger.db_path).parent)
        finally:
            if ledger is not None:
                ledger.close()
            self._report_refused()

    def _tell_listeners(self, row: dict, entry: Any) -> None:
        for listener in self.listeners:
            try:
                listener.on_row(row, entry)
            except Exception:  # noqa: BLE001 - an integration never stops the ledger; the row is on record
                log.exception("%s failed on ledger row %s", type(listener).__name__, row.get("id"))

    def _check_disk(self, folder: Path) -> None:
        if self._stop.is_set():
            return
        try:
            check_free_space(folder, self.min_free_mb)
        except LedgerError as exc:
            log.error("the line stops cleanly: %s", exc)
            self.stop("free space is below [station] min_free_mb", error=exc)

    def _refuse(self, entry: Any) -> None:
        with self.counters.lock:
            self.counters.refused += 1
            if isinstance(entry, FrameGap):
                self.counters.refused_gaps += 1
                self.counters.refused_ids.extend(range(entry.first_id, entry.last_id + 1))
            else:
                self.counters.refused_ids.append(entry.frame.frame_id if isinstance(entry, InspectionResult)
                                                 else entry.frame_id)

    def _report_refused(self) -> None:
        """Name what the failed ledger refused, in the failure itself (the message the operator gets)."""
        with self.counters.lock:
            refused, gaps, ids = self.counters.refused, self.counters.refused_gaps, list(self.counters.refused_ids)
        if not refused or not isinstance(self.failure, LedgerError):
            return
        what = f"{refused - gaps} part(s)" + (f" and {gaps} gap row(s)" if gaps else "")
        text = (f"{self.failure} -- {what} refused, with no row in the ledger (frame ids {id_ranges(ids)}): treat "
                "those parts as rejects and inspect them again")
        log.error("%s", text)
        self.failure = type(self.failure)(text)

    # -- reading -------------------------------------------------------------------------------------------
    def stats(self) -> LineStats:
        c = self.counters
        with c.lock:
            latencies = np.asarray(c.latencies, dtype=np.float64)
            times = list(c.done_times)
            inspected, passed, failed = c.inspected, c.passed, c.failed
            errors = c.errors + c.refused
            acquired, span_ns = c.acquired, c.last_frame_ns - c.first_frame_ns
            reasons = dict(c.reasons)
            lost, gaps, recorded, refused, warnings = c.lost, c.gaps, c.recorded, c.refused, c.warnings
            stage_ms = {s: round(c.stage_sums[s] / c.stage_counts[s], 3) for s in STAGES if c.stage_counts[s]}
        if len(times) >= 2 and times[-1] > times[0]:
            fps = (len(times) - 1) / (times[-1] - times[0])
        else:
            fps = 0.0
        links = {}
        for listener in self.listeners:  # each integration's own figures (lag, connected...), for panel and summary
            if not hasattr(listener, "status"):  # a listener that is no link (the panel's review keys)
                continue
            try:
                links[getattr(listener, "name", type(listener).__name__)] = dict(listener.status())
            except Exception as exc:  # noqa: BLE001 - a status that cannot be read is shown as such
                links[getattr(listener, "name", type(listener).__name__)] = {"error": f"{type(exc).__name__}: {exc}"}
        unclean = getattr(self.reject_log, "unclean_end", None)  # what this start found of earlier runs
        try:
            health = self.source.health()
        except Exception:  # noqa: BLE001 - a source that cannot report is shown as unknown, not fatal
            health = SourceHealth(state=CameraState.LOST, last_error="source health unavailable")
        return LineStats(
            acquired=acquired,
            acquisition_fps=round((acquired - 1) / (span_ns / 1e9), 2) if acquired > 1 and span_ns > 0 else 0.0,
            inspected=inspected, passed=passed, failed=failed, errors=errors,
            dropped=reasons.get(NotInspectedReason.DROPPED.value, 0),
            throughput_fps=round(fps, 2),
            latency_ms_p50=float(np.percentile(latencies, 50)) if latencies.size else 0.0,
            latency_ms_p99=float(np.percentile(latencies, 99)) if latencies.size else 0.0,
            engine_id=self._judge.engine_id, calibration=self._judge.calibration_note[0],
            calibration_warning=self._judge.calibration_note[1], source=health,
            not_inspected=sum(reasons.values()), not_inspected_reasons=reasons, lost=lost, gaps=gaps,
            recorded=recorded, refused=refused, warnings=warnings,
            not_inspected_is_reject=self.not_inspected_is_reject, state=self.state,
            failure=None if self.failure is None else str(self.failure), stage_ms=stage_ms, links=links,
            unclean_end=None if unclean is None else unclean.text(),
            interrupted_parts=0 if unclean is None else unclean.interrupted,
        )
