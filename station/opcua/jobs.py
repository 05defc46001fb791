"""Which job each ledger row answers: the one place the JobId of a result comes from.

A PLC starts jobs (StartSingleJob: one part; StartContinuous: every part until Stop or Abort), and each ledger row
answers one of them. :class:`JobBook` decides it once per row, in ledger order (:meth:`JobBook.assign`), and
remembers it by row id; ResultReady, LastResult, LastPart and GetResultById all read it from here, so a result
carries the same JobId wherever a client reads it.

The rule, for a row whose frame the source took at ``timestamp_ns`` (the host's monotonic clock):

- a frame taken while a continuous job flowed (between its start and the Stop or Abort that held the source)
  belongs to that job, even when its row arrives after the job ended: a part in flight at Abort keeps its JobId;
- otherwise the row answers the oldest single job still waiting for its part (a GAP row too: the part was lost);
- otherwise no job asked for it (a hardware trigger in PLC mode, say): JobId is empty.

A ledger whose rows carry a ``job_id`` column wins over the rule (the row is the record of truth).
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Mapping

#: rows whose JobId is remembered for GetResultById (the newest ones; older rows answer an empty JobId)
REMEMBERED_ROWS = 100_000
#: continuous jobs remembered for late rows (parts in flight when the job was held)
REMEMBERED_FLOWS = 16


@dataclass
class _Flow:
    job: str
    start_ns: int
    stop_ns: int | None = None  # None: still flowing

    def holds(self, timestamp_ns: int) -> bool:
        return self.start_ns <= timestamp_ns and (self.stop_ns is None or timestamp_ns < self.stop_ns)


class JobBook:
    """The jobs a PLC started and the JobId of every row published since the server started (not thread-safe:
    used on the OPC UA loop only)."""

    def __init__(self, before: int = 0, clock=time.monotonic_ns) -> None:
        """``before``: the ledger's last row id when the server started (rows up to it belong to earlier runs)."""
        self._clock = clock
        self.before = before
        self._singles: collections.deque[str] = collections.deque()  # waiting for their part, oldest first
        self._flows: collections.deque[_Flow] = collections.deque(maxlen=REMEMBERED_FLOWS)
        self._rows: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.last_row_id = 0

    # -- jobs ----------------------------------------------------------------------------------------------------
    def start_single(self, job: str) -> None:
        """A single job whose trigger is about to fire: the next part not taken by a flow answers it."""
        self._singles.append(job)

    def cancel_single(self, job: str) -> None:
        """A single job whose trigger could not be fired."""
        try:
            self._singles.remove(job)
        except ValueError:
            pass

    def start_flow(self, job: str) -> None:
        """A continuous job: every frame taken from now until :meth:`hold_flow` answers it."""
        self.hold_flow()
        self._flows.append(_Flow(job, self._clock()))

    def hold_flow(self) -> str | None:
        """The source is held (Stop, Abort, Halt): frames taken from now on no longer belong to the flowing job.
        Returns its JobId (None: no job was flowing)."""
        flow = self.flowing
        if flow is None:
            return None
        flow.stop_ns = self._clock()
        return flow.job

    def drop_unfired(self, count: int) -> None:
        """The source dropped ``count`` triggers it had not served yet (Abort): their single jobs, the newest, get
        no part."""
        for _ in range(min(max(0, count), len(self._singles))):
            self._singles.pop()

    def drop_waiting(self) -> list[str]:
        """Forget the single jobs still waiting (their parts will not come); returns them."""
        dropped = list(self._singles)
        self._singles.clear()
        return dropped

    @property
    def flowing(self) -> _Flow | None:
        return self._flows[-1] if self._flows and self._flows[-1].stop_ns is None else None

    @property
    def flow_job(self) -> str | None:
        """The JobId of the continuous job flowing now, if any."""
        flow = self.flowing
        return flow.job if flow is not None else None

    @property
    def waiting(self) -> int:
        """Single jobs still waiting for their part's row."""
        return len(self._singles)

    @property
    def oldest_waiting(self) -> str | None:
        return self._singles[0] if self._singles else None

    # -- rows ----------------------------------------------------------------------------------------------------
    def assign(self, row: Mapping[str, Any]) -> str:
        """The JobId of a committed ledger row (rows in ledger order), remembered for :meth:`of`."""
        job = row.get("job_id")
        if job:
            self.cancel_single(job)  # recorded with the row: that single job has its part
        else:
            job = self._match(row)
        row_id = int(row["id"])
        self.last_row_id = max(self.last_row_id, row_id)
        self._rows[row_id] = job
        while len(self._rows) > REMEMBERED_ROWS:
            self._rows.popitem(last=False)
        return job

    def _match(self, row: Mapping[str, Any]) -> str:
        taken = row.get("timestamp_ns")
        if taken is not None:
            for flow in reversed(self._flows):
                if flow.holds(int(taken)):
                    return flow.job
        if self._singles:
            return self._singles.popleft()
        return ""

    def of(self, row_id: int) -> str | None:
        """The JobId of a row published by this server; None when it has not been published yet. Rows of earlier
        runs answer ``""``: a JobId belongs to the run that started the job."""
        if row_id in self._rows:
            return self._rows[row_id]
        if row_id <= max(self.before, self.last_row_id):
            return ""  # an earlier run's row, or one too old to be remembered
        return None
