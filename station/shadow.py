"""The shadow: a candidate engine judging a share of the line's parts beside the production engine (issue 29).

A recipe's ``[shadow]`` table (:class:`station.recipe.ShadowConfig`) names a candidate weights folder. The station
runs it on a low-priority worker that never delays a part and never changes a verdict::

    logging thread ──on_row (after the row's commit)──▶ work queue (bounded; full: skip) ──▶ shadow worker
                                                                                       (niced, 1 engine thread)
                                                                                              │ verdict
                                     ledger table ``shadow`` ◀── shadow recorder ◀────────────┘
                                     (own connection, the ledger's write gate)

- **Which parts**: an inspected part (PASS or FAIL judged by the engine) is chosen when its identity's hash falls
  in the share (:func:`station.rejectlog.pass_sampled` of :func:`station.rejectlog.sample_key`, as ``[log]
  save_pass_share`` chooses the passes whose images are kept): a replay or a restart chooses the same parts, and
  with ``share`` at least ``save_pass_share`` every pass kept for review is also shadowed.
- **Never in the line's way**: the worker hears of a part only once its ledger row is committed (it is a listener of
  the line, like the integrations, :mod:`station.integrations`), and takes it only when its queue has room: a chosen
  part that finds it full is *skipped* and counted (``shadow_skipped``, never waited for). It reads the part's frame,
  which nothing changes, and writes only its own table. The worker thread runs at a lower priority (``[shadow]
  nice``, added to its niceness, Linux) and its engine on ``[shadow] threads`` (1 by default: the engine computes on
  the worker itself, at its priority). Its rows are written by a second thread at the line's priority, holding the
  ledger's write gate (:attr:`station.rejectlog.RejectLog.write_gate`), so a low-priority thread never holds what the
  line's logging thread waits for.
- **How the candidate judges**: as a line running it would (:func:`candidate_recipe`): the recipe's tiling and
  calibration, the candidate's own rule (config.json ``judging``) where it carries one.
- **Stopping**: :meth:`ShadowWorker.close` finishes what is queued for at most its drain time, then cancels the part
  being judged between two batches; parts left are counted ``unfinished``.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from engines.weights import resolve_weights
from inspection.judging import Judging
from inspection_core.records import InspectionResult, Verdict
from station.recipe import Recipe
from station.rejectlog import format_utc, pass_sampled, sample_key
from station.shadow_tables import SHADOW_COLUMNS, create_tables

log = logging.getLogger(__name__)
_END = object()
JOIN_TIMEOUT_S = 30.0


class _Cancelled(Exception):
    """Raised by the worker's checkpoint between two batches once the shadow is closed."""


def candidate_recipe(recipe: Recipe) -> Recipe:
    """The recipe the candidate of ``recipe``'s ``[shadow]`` judges with: the line's recipe with ``[engine]``
    weights, model, backend and threads from ``[shadow]`` (fp32), and without ``[rules] score_threshold`` and
    ``min_area_px`` when the candidate's weights carry a learned rule, so that its own rule applies (a recipe
    key wins over the weights' rule). Its tiling and calibration are the recipe's. A recipe made this way and
    promoted judges as the shadow judged (``station promote`` checks it)."""
    shadow = recipe.shadow
    if shadow is None or recipe.engine is None:
        raise ValueError("candidate_recipe needs a recipe with [engine] and [shadow]")
    bundle = resolve_weights(shadow.weights)
    overrides: dict[str, Any] = {"engine.weights": shadow.weights, "engine.model": bundle.model,
                                 "engine.backend": (shadow.backend or recipe.engine.backend).value,
                                 "engine.threads": shadow.threads, "engine.precision": "fp32"}
    rule = bundle.judging_rule() or {}
    if "threshold" in rule:
        overrides["rules.score_threshold"] = None
    if "min_area_px" in rule and recipe.rules.min_area_mm2 is None:
        overrides["rules.min_area_px"] = None
    return recipe.with_overrides(overrides)


def judging_of(inspector: Any) -> Judging:
    """The :class:`Judging` an inspector judges with (its fingerprint is that of the judging it was built from)."""
    return Judging(rules=inspector.rules, overlap=inspector.overlap, batch=inspector.batch,
                   classifier=inspector.classifier, fail_on_labels=inspector.fail_on_labels,
                   calibration=inspector.calibration)


@dataclass(frozen=True)
class Candidate:
    """Who the candidate is: ``id`` (``<engine id>#<judging fingerprint>``), the weights as the recipe names them,
    their SHA-256, the judging's fingerprint and its description."""

    id: str
    weights: str
    sha256: str
    judging: str
    rule: str

    @classmethod
    def of(cls, weights: str, inspector: Any, source: str = "") -> Candidate:
        """The candidate ``inspector`` judges as, for ``weights``; ``source``: where its rule came from."""
        judging = judging_of(inspector)
        fingerprint = judging.fingerprint()
        rule = judging.describe().rsplit(" (from ", 1)[0] + (f" ({source})" if source else "")
        return cls(f"{inspector.engine_id}#{fingerprint}", str(weights), inspector.engine.weights_sha256, fingerprint,
                   rule)


def mask_summary(result: InspectionResult) -> dict[str, Any]:
    """What a verdict's mask says, in a few numbers: defects kept, their total area (px), their classes (and the
    classifier's labels), and the score map's peak."""
    mask = result.mask
    peak = float(mask.max()) if mask is not None and getattr(mask, "size", 0) else 0.0
    return {"defects": len(result.defects), "area_px": int(sum(d.area_px for d in result.defects)),
            "classes": sorted({d.label for d in result.defects} | set(result.labels)), "max_score": round(peak, 4)}


def lower_thread_priority(nice: int) -> int | None:
    """Add ``nice`` to the calling thread's niceness (Linux: a thread is its own scheduling entity); returns the
    niceness it now has, or None where threads cannot be reniced one by one (elsewhere it would renice the
    process)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + nice))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as exc:  # a sandbox without setpriority: the worker still runs, at the line's priority
        log.warning("shadow: its worker's priority could not be lowered (%s); it runs at the line's", exc)
        return None


@dataclass(frozen=True)
class _Part:
    row_id: int
    engine_id: str
    result: InspectionResult
    committed_ns: int


class ShadowWorker:
    """The ``[shadow]`` of a running line (see the module docstring). A listener of the line's ledger rows
    (:meth:`on_row`, as an integration), with :meth:`start`, :meth:`status` and :meth:`close`.

    ``inspector``: the candidate's, built from :func:`candidate_recipe`; ``share``, ``queue`` and ``nice`` as in
    :class:`station.recipe.ShadowConfig`; ``db_path``: the ledger whose ``shadow`` table gets the rows."""

    name = "shadow"

    def __init__(self, inspector: Any, candidate: Candidate, db_path: str | Path, *, share: float, queue_size: int = 2,
                 nice: int = 19, station_id: str | None = None, run_id: str | None = None,
                 busy_timeout_s: float = 10.0) -> None:
        self.inspector = inspector
        self.candidate = candidate
        self.db_path = Path(db_path)
        self.share = float(share)
        self.nice = int(nice)
        self.station_id, self.run_id = station_id, run_id
        self.busy_timeout_s = busy_timeout_s
        self._work: queue.Queue[Any] = queue.Queue(maxsize=int(queue_size))
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.chosen = self.shadowed = self.agreed = self.disagreed = self.skipped = 0
        self.errors = self.unfinished = 0
        self.candidate_ms: collections.deque[float] = collections.deque(maxlen=256)  # the latest parts'
        self.niceness: int | None = None  # the worker thread's niceness once lowered (None: not lowered)
        self._closing = threading.Event()
        self._cancel = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conn: sqlite3.Connection | None = None
        self._gate: Any = None
        self._warned: set[str] = set()

    # -- the line's side ------------------------------------------------------------------------------------
    def start(self, line: Any = None) -> None:
        """Open the ledger's ``shadow`` table on a connection of its own and start the two threads (``line``: the
        line whose rows it hears; its ledger's write gate is taken around each write)."""
        self._gate = getattr(getattr(line, "reject_log", None), "write_gate", None)
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_s)
            conn.execute("PRAGMA synchronous=NORMAL")  # a shadow row is evidence for a decision, not a part's record
            conn.execute("BEGIN IMMEDIATE")
            create_tables(conn)  # in a ledger at schema 7 they are there already
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            from station.errors import LedgerError

            raise LedgerError(f"cannot open the shadow table in {self.db_path}: {exc}; the file and its folder must be "
                              "writable") from None
        self._conn = conn
        self._threads = [threading.Thread(target=self._judge, name="shadow", daemon=True),
                         threading.Thread(target=self._record, name="shadow-recorder", daemon=True)]
        for thread in self._threads:
            thread.start()
        log.info("shadow: %s judges %g of the inspected parts beside the line (%s)", self.candidate.id, self.share,
                 self.candidate.rule)

    def chooses(self, entry: Any) -> bool:
        """Whether ``entry`` (a ledger entry) is one of the parts the shadow judges: an inspected part the engine
        judged, whose :func:`~station.rejectlog.sample_key` falls in the share."""
        return (isinstance(entry, InspectionResult) and entry.verdict in (Verdict.PASS, Verdict.FAIL)
                and "infer" in entry.timings  # not a FAIL made without the engine (an implausible frame)
                and pass_sampled(sample_key(entry), self.share))

    def on_row(self, row: Mapping[str, Any], entry: Any) -> None:
        """A committed ledger row (the line's logging thread): a chosen part is queued for the candidate, or skipped
        when the queue is full; this never waits."""
        if self._closing.is_set() or not self.chooses(entry):
            return
        with self._lock:
            self.chosen += 1
        try:
            self._work.put_nowait(_Part(int(row["id"]), str(row.get("engine_id") or entry.engine_id), entry,
                                        time.monotonic_ns()))
        except queue.Full:
            with self._lock:
                self.skipped += 1

    def status(self) -> dict[str, Any]:
        """The shadow's figures (the run's summary, the panel, ``/metrics``)."""
        with self._lock:
            done = self.shadowed
            times = sorted(self.candidate_ms)
            return {"candidate": self.candidate.id, "share": self.share, "chosen": self.chosen, "shadowed": done,
                    "agree": self.agreed, "disagreements": self.disagreed, "skipped": self.skipped,
                    "unfinished": self.unfinished, "errors": self.errors, "queued": self._work.qsize(),
                    "disagreement_rate": round(self.disagreed / done, 4) if done else 0.0,
                    "candidate_ms_p50": round(times[len(times) // 2], 1) if times else None,
                    "niceness": self.niceness}

    def close(self, drain_s: float = 0.0) -> None:
        """Stop: take no more parts, let the worker finish what is queued for at most ``drain_s`` seconds, then
        cancel the part being judged (between two batches) and count what is left ``unfinished``; the rows judged
        are recorded, the connection closed. Safe to call twice."""
        self._closing.set()
        if not self._threads:
            return
        deadline = time.monotonic() + max(0.0, drain_s)
        while self._work.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        self._cancel.set()
        judge, recorder = self._threads
        self._work.put(_END)  # the worker empties the queue at once now: each part left is only counted
        judge.join(JOIN_TIMEOUT_S)
        self._done.put(_END)
        recorder.join(JOIN_TIMEOUT_S)
        if judge.is_alive() or recorder.is_alive():
            log.error("shadow: its threads did not end within %g s", JOIN_TIMEOUT_S)
        self._threads = []
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        s = self.status()
        log.info("shadow: %s judged %d of %d chosen parts (%d disagreement(s)); %d skipped (queue full), %d unfinished "
                 "at the stop", self.candidate.id, s["shadowed"], s["chosen"], s["disagreements"], s["skipped"],
                 s["unfinished"])

    # -- the worker and the recorder ------------------------------------------------------------------------
    def _checkpoint(self, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled

    def _judge(self) -> None:
        self.niceness = lower_thread_priority(self.nice)
        while True:
            part = self._work.get()
            try:
                if part is _END:
                    break
                if self._cancel.is_set():
                    with self._lock:
                        self.unfinished += 1
                    continue
                started = time.monotonic_ns()
                try:
                    result = self.inspector.inspect(part.result.frame, checkpoint=self._checkpoint)
                except _Cancelled:
                    with self._lock:
                        self.unfinished += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - the candidate failing never touches the line
                    self._failed("judge", f"the candidate could not judge row {part.row_id}: "
                                          f"{type(exc).__name__}: {exc}")
                    continue
                self._done.put(self._row(part, result, started, time.monotonic_ns()))
            finally:
                self._work.task_done()

    def _row(self, part: _Part, result: InspectionResult, started_ns: int, done_ns: int) -> dict[str, Any]:
        production, candidate = mask_summary(part.result), mask_summary(result)
        c = self.candidate
        row = {"inspection_id": part.row_id, "time_utc": format_utc(datetime.now(timezone.utc)),
               "station_id": self.station_id, "run_id": self.run_id, "candidate": c.id,
               "candidate_weights": c.weights, "candidate_sha256": c.sha256, "candidate_judging": c.judging,
               "candidate_rule": c.rule, "production_engine": part.engine_id,
               "production_verdict": part.result.verdict.value, "candidate_verdict": result.verdict.value,
               "agree": int(part.result.verdict is result.verdict),
               "candidate_ms": round((done_ns - started_ns) / 1e6, 3),
               "waited_ms": round(max(0, started_ns - part.committed_ns) / 1e6, 3)}
        for side, summary in (("production", production), ("candidate", candidate)):
            row.update({f"{side}_defects": summary["defects"], f"{side}_area_px": summary["area_px"],
                        f"{side}_classes": json.dumps(summary["classes"]), f"{side}_max_score": summary["max_score"]})
        return row

    def _record(self) -> None:
        columns = [c for c in SHADOW_COLUMNS if c != "id"]
        sql = f"INSERT INTO shadow ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        while True:
            row = self._done.get()
            if row is _END:
                break
            try:
                if self._gate is not None:
                    with self._gate:
                        self._conn.execute(sql, [row[c] for c in columns])
                else:
                    self._conn.execute(sql, [row[c] for c in columns])
            except sqlite3.Error as exc:  # a shadow row lost never stops the line
                self._failed("record", f"a shadow row (ledger row {row['inspection_id']}) could not be written to "
                                       f"{self.db_path}: {exc}")
                continue
            with self._lock:
                self.shadowed += 1
                self.agreed += row["agree"]
                self.disagreed += 1 - row["agree"]
                self.candidate_ms.append(row["candidate_ms"])

    def _failed(self, kind: str, text: str) -> None:
        with self._lock:
            self.errors += 1
            first = kind not in self._warned
            self._warned.add(kind)
        (log.error if first else log.debug)("shadow: %s (the line is not affected)", text)
