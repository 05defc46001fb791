"""Who each part is, decided once when the line acquires it: the one place a part's identity comes from.

A PLC announces parts (OPC UA StartSingleJob: one part with its MeasId, PartId, ProductId; StartContinuous: every part
until Stop or Abort, with the job's ids), and the source knows a part id of its own (a replayed file's name, a
camera's chunk value, a line-scan part's index: :attr:`Frame.identity <inspection_core.records.Frame.identity>` as
the source made it). :class:`IdentityBook` joins the two on the acquisition thread, before the part is journaled or
queued (:meth:`IdentityBook.identify`), so the ledger row, ResultReady, MQTT and PostgreSQL all read the same
:class:`~inspection_core.records.PartIdentity` from the row.

The rule, for a part whose frame the source took at ``timestamp_ns`` (the host's monotonic clock):

- a frame taken while a continuous job flowed (between its start and the Stop or Abort that held the source)
  belongs to that job, even when it is acquired after the job ended: a part in flight at Abort keeps its ids;
- otherwise the part answers the oldest single job still waiting for its part (a GAP row too: the part was lost);
- otherwise no job asked for it (a hardware trigger in PLC mode, say, or no PLC at all): the source's ids alone.

The PLC's values win over the source's where it gave one; a PLC's empty PartId leaves the source's.

For example::

    book = IdentityBook()
    book.expect(PartIdentity(part_id="P-1", meas_id="M-1", job_id="run-1"))   # StartSingleJob, before the trigger
    frame = book.identify(frame)         # the acquisition thread: frame.identity.part_id == "P-1"
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import TypeVar

from inspection_core.records import NO_IDENTITY, Frame, FrameGap, NotInspected, PartIdentity

#: continuous jobs remembered for late parts (taken while the job flowed, acquired after it was held)
REMEMBERED_FLOWS = 16

Part = TypeVar("Part", Frame, NotInspected, FrameGap)


@dataclass
class _Flow:
    identity: PartIdentity
    start_ns: int
    stop_ns: int | None = None  # None: still flowing

    def holds(self, timestamp_ns: int) -> bool:
        return self.start_ns <= timestamp_ns and (self.stop_ns is None or timestamp_ns < self.stop_ns)


class IdentityBook:
    """The parts a PLC announced, matched to the parts the line acquires; thread-safe (the OPC UA loop announces,
    the acquisition thread claims)."""

    def __init__(self, clock=time.monotonic_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._singles: collections.deque[PartIdentity] = collections.deque()  # waiting for their part, oldest first
        self._flows: collections.deque[_Flow] = collections.deque(maxlen=REMEMBERED_FLOWS)

    # -- what the PLC announces ----------------------------------------------------------------------------------
    def expect(self, identity: PartIdentity) -> None:
        """A single job whose trigger is about to fire: the next part not taken by a flow is this one."""
        with self._lock:
            self._singles.append(identity)

    def cancel(self, job_id: str) -> None:
        """A single job whose part will not come (its trigger could not be fired, or a Stop gave up on it)."""
        with self._lock:
            self._singles = collections.deque(s for s in self._singles if s.job_id != job_id)

    def start_flow(self, identity: PartIdentity) -> None:
        """A continuous job: every part taken from now until :meth:`hold_flow` gets ``identity``."""
        with self._lock:
            self._hold()
            self._flows.append(_Flow(identity, self._clock()))

    def hold_flow(self) -> PartIdentity | None:
        """The source is held (Stop, Abort, Halt): frames taken from now on no longer belong to the flowing job.
        Returns its identity (None: no job was flowing)."""
        with self._lock:
            return self._hold()

    def _hold(self) -> PartIdentity | None:
        flow = self._flows[-1] if self._flows and self._flows[-1].stop_ns is None else None
        if flow is None:
            return None
        flow.stop_ns = self._clock()
        return flow.identity

    def drop_unfired(self, count: int) -> list[str]:
        """The source dropped ``count`` triggers it had not served yet (Abort): their single jobs, the newest of
        those waiting, get no part. Returns their job ids."""
        with self._lock:
            dropped = [self._singles.pop() for _ in range(min(max(0, count), len(self._singles)))]
        return [s.job_id or "" for s in dropped]

    @property
    def flowing(self) -> PartIdentity | None:
        """The identity of the continuous job flowing now, if any."""
        with self._lock:
            flow = self._flows[-1] if self._flows and self._flows[-1].stop_ns is None else None
            return None if flow is None else flow.identity

    @property
    def waiting(self) -> int:
        """Single jobs whose part has not been acquired yet."""
        with self._lock:
            return len(self._singles)

    # -- what the line acquires ----------------------------------------------------------------------------------
    def claim(self, timestamp_ns: int) -> PartIdentity:
        """The PLC's identity of a part taken at ``timestamp_ns`` (see the module docstring); NO_IDENTITY when no
        job asked for it. Each single job answers one claim."""
        with self._lock:
            for flow in reversed(self._flows):
                if flow.holds(int(timestamp_ns)):
                    return flow.identity
            if self._singles:
                return self._singles.popleft()
        return NO_IDENTITY

    def identify(self, part: Part) -> Part:
        """``part`` (a frame, a part not delivered as a frame, or lost frames) with its identity: the PLC's claimed
        for it, over the source's own. Call once per part, on the acquisition thread."""
        taken = part.start_ns if isinstance(part, FrameGap) else part.timestamp_ns
        plc = self.claim(taken)
        if not plc:
            return part
        return dataclasses.replace(part, identity=plc.over(part.identity))
