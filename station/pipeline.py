"""The running line: three threads joined by bounded queues.

    acquisition thread ──frames queue──▶ inference thread ──results queue──▶ logging thread
      (source.__iter__)   (drop oldest      (Inspector)      (always block:    (RejectLog,
                           or block)            │             no record lost)   counters)
                                                └──▶ ResultFeed (latest result for the panel)

Stopping (Ctrl-C, the window's close, or ``max_frames`` reached) stops the source first, then lets each
queue drain in order, then closes the reject log: nothing already acquired and inspected is lost.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from inspection.feed import ResultFeed
from inspection_core.errors import InspectionCoreError
from inspection_core.records import CameraState, InspectionResult, LineStats, SourceHealth, Verdict
from station.errors import StationError
from station.recipe import QueuePolicy

log = logging.getLogger(__name__)
_END = object()  # end-of-stream marker passed down the queues


class BoundedQueue:
    """A FIFO of at most ``maxsize`` items whose behaviour when full is explicit: ``BLOCK`` makes the producer
    wait (back-pressure); ``DROP_OLDEST`` discards the oldest waiting item and counts it in ``dropped``."""

    def __init__(self, maxsize: int, policy: QueuePolicy) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.policy = QueuePolicy(policy)
        self.dropped = 0
        self._lock = threading.Lock()

    def put(self, item: Any, force: bool = False) -> None:
        """Add ``item``. ``force`` always blocks (used for the end marker, which must never be dropped)."""
        if self.policy is QueuePolicy.BLOCK or force:
            self._queue.put(item)
            return
        with self._lock:
            while True:
                try:
                    self._queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def get(self, timeout: float | None = None) -> Any:
        return self._queue.get(timeout=timeout)

    def qsize(self) -> int:
        return self._queue.qsize()


class _Counters:
    """Counters shared by the threads; one lock, snapshots for readers."""

    def __init__(self, window: int = 256) -> None:
        self.lock = threading.Lock()
        self.inspected = self.passed = self.failed = self.errors = self.logged = self.log_errors = 0
        self.acquired = self.first_frame_ns = self.last_frame_ns = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=window)
        self.done_times: collections.deque[float] = collections.deque(maxlen=window)

    def add(self, result: InspectionResult) -> None:
        with self.lock:
            self.inspected += 1
            if result.verdict is Verdict.PASS:
                self.passed += 1
            else:
                self.failed += 1
            self.latencies.append(result.latency_ms)
            self.done_times.append(time.monotonic())


class Line:
    """Runs a source through an inspector into a reject log on three threads.

    ``max_frames`` stops the line after that many frames were inspected (frames still waiting are discarded
    and counted as dropped). ``on_result`` is called on the logging thread after each record is committed.
    """

    def __init__(self, source, inspector, reject_log=None, feed: ResultFeed | None = None, *,
                 frames_queue: int = 8, frames_policy: QueuePolicy = QueuePolicy.DROP_OLDEST,
                 results_queue: int = 64, max_frames: int | None = None, on_result=None) -> None:
        self.source = source
        self.inspector = inspector
        self.reject_log = reject_log
        self.feed = feed or ResultFeed()
        self.max_frames = max_frames
        self.on_result = on_result
        self.frames = BoundedQueue(frames_queue, frames_policy)
        self.results = BoundedQueue(results_queue, QueuePolicy.BLOCK)
        self.counters = _Counters()
        self.discarded_at_stop = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self.failure: BaseException | None = None

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
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._guard(self._acquire), name="acquisition", daemon=True),
            threading.Thread(target=self._guard(self._infer), name="inference", daemon=True),
            threading.Thread(target=self._guard(self._record), name="logging", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask the line to stop: the source stops, the queues drain, the log closes. Returns at once."""
        if not self._stop.is_set():
            log.info("stopping the line: draining queues")
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

    def run(self) -> LineStats:
        """Start, wait until the source ends or ``max_frames`` is reached, and return the final counters.
        Ctrl-C stops the line cleanly."""
        self.start()
        try:
            while self.running:
                self.join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop()
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
                self.failure = exc
                self.stop()
        return run

    def _acquire(self) -> None:
        # With back-pressure no frame is ever dropped, so ``max_frames`` frames are exactly enough; a dropping
        # queue keeps acquiring until the inference thread has inspected ``max_frames`` and stops the line.
        enough = self.max_frames if self.frames.policy is QueuePolicy.BLOCK else None
        acquired = 0
        try:
            with self.source:
                for frame in self.source:
                    if self._stop.is_set():
                        break
                    self.frames.put(frame)
                    acquired += 1
                    with self.counters.lock:
                        self.counters.acquired = acquired
                        self.counters.first_frame_ns = self.counters.first_frame_ns or frame.timestamp_ns
                        self.counters.last_frame_ns = frame.timestamp_ns
                    if enough is not None and acquired >= enough:
                        break
        finally:
            self.frames.put(_END, force=True)

    def _infer(self) -> None:
        try:
            while True:
                frame = self.frames.get()
                if frame is _END:
                    break
                if self.max_frames is not None and self.counters.inspected >= self.max_frames:
                    self.discarded_at_stop += 1
                    continue
                try:
                    result = self.inspector.inspect(frame)
                except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the line
                    with self.counters.lock:
                        self.counters.errors += 1
                    log.error("frame %s from %s could not be inspected: %s", frame.frame_id, frame.source, exc)
                    continue
                self.counters.add(result)
                self.feed.publish(result)
                self.results.put(result)
                if self.max_frames is not None and self.counters.inspected >= self.max_frames:
                    self.stop()
        finally:
            self.results.put(_END, force=True)

    def _record(self) -> None:
        try:
            while True:
                result = self.results.get()
                if result is _END:
                    break
                try:
                    if self.reject_log is not None:
                        self.reject_log.record(result)
                except Exception as exc:  # noqa: BLE001 - keep draining so inference never blocks forever
                    with self.counters.lock:
                        self.counters.log_errors += 1
                    log.error("frame %s was inspected (%s) but could not be recorded: %s",
                              result.frame.frame_id, result.verdict.value, exc)
                    continue
                with self.counters.lock:
                    self.counters.logged += 1
                if self.on_result is not None:
                    self.on_result(result)
        finally:
            if self.reject_log is not None:
                self.reject_log.close()

    # -- reading -------------------------------------------------------------------------------------------
    def stats(self) -> LineStats:
        c = self.counters
        with c.lock:
            latencies = np.asarray(c.latencies, dtype=np.float64)
            times = list(c.done_times)
            inspected, passed, failed, errors = c.inspected, c.passed, c.failed, c.errors + c.log_errors
            acquired, span_ns = c.acquired, c.last_frame_ns - c.first_frame_ns
        if len(times) >= 2 and times[-1] > times[0]:
            fps = (len(times) - 1) / (times[-1] - times[0])
        else:
            fps = 0.0
        try:
            health = self.source.health()
        except Exception:  # noqa: BLE001 - a source that cannot report is shown as unknown, not fatal
            health = SourceHealth(state=CameraState.LOST, last_error="source health unavailable")
        return LineStats(
            acquired=acquired,
            acquisition_fps=round((acquired - 1) / (span_ns / 1e9), 2) if acquired > 1 and span_ns > 0 else 0.0,
            inspected=inspected, passed=passed, failed=failed, errors=errors,
            dropped=self.frames.dropped + self.discarded_at_stop,
            throughput_fps=round(fps, 2),
            latency_ms_p50=float(np.percentile(latencies, 50)) if latencies.size else 0.0,
            latency_ms_p99=float(np.percentile(latencies, 99)) if latencies.size else 0.0,
            engine_id=self.inspector.engine_id, source=health,
        )
