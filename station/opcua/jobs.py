"""The jobs a PLC started, as the state machine needs them; which job a result answers is the ledger row's.

A PLC starts jobs (StartSingleJob: one part; StartContinuous: every part until Stop or Abort) with the part's ids
(MeasId, PartId, ProductId). :class:`JobBook` hands each job's :class:`~inspection_core.records.PartIdentity` (its
JobId included) to the line's :class:`~station.part_identity.IdentityBook`, which gives it to the part acquired for
it (the rule: :mod:`station.part_identity`), so the part's ledger row records its ``job_id``, ``meas_id``,
``part_id`` and ``product_id``. ResultReady, LastResult, LastPart and GetResultById all read them from the row:
a result carries the same JobId wherever a client reads it, in this run or later.

What stays here is what the state machine waits for: the single jobs whose row has not come yet
(SingleExecution until then) and the continuous job flowing now.
"""
from __future__ import annotations

import collections
from typing import Any, Mapping

from inspection_core.records import PartIdentity
from station.part_identity import IdentityBook


class JobBook:
    """The jobs a PLC started and those still waiting for their row (not thread-safe: used on the OPC UA loop only;
    the :class:`IdentityBook` it feeds is the line's, and is)."""

    def __init__(self, parts: IdentityBook | None = None) -> None:
        self.parts = parts if parts is not None else IdentityBook()
        self._singles: collections.deque[str] = collections.deque()  # waiting for their row, oldest first

    # -- jobs ----------------------------------------------------------------------------------------------------
    def start_single(self, identity: PartIdentity) -> None:
        """A single job whose trigger is about to fire (``identity.job_id`` its JobId): the next part the line
        acquires that no flow takes is its part."""
        self.parts.expect(identity)
        self._singles.append(identity.job_id or "")

    def cancel_single(self, job: str) -> None:
        """A single job whose trigger could not be fired."""
        self.parts.cancel(job)
        self._forget(job)

    def start_flow(self, identity: PartIdentity) -> None:
        """A continuous job: every frame taken from now until :meth:`hold_flow` is its part."""
        self.parts.start_flow(identity)

    def hold_flow(self) -> str | None:
        """The source is held (Stop, Abort, Halt): frames taken from now on no longer belong to the flowing job.
        Returns its JobId (None: no job was flowing)."""
        identity = self.parts.hold_flow()
        return None if identity is None else identity.job_id or ""

    def drop_unfired(self, count: int) -> None:
        """The source dropped ``count`` triggers it had not served yet (Abort): their single jobs get no part."""
        for job in self.parts.drop_unfired(count):
            self._forget(job)

    def drop_waiting(self) -> list[str]:
        """Forget the single jobs still waiting (their rows will not come); returns them."""
        dropped = list(self._singles)
        self._singles.clear()
        for job in dropped:
            self.parts.cancel(job)
        return dropped

    @property
    def flow_job(self) -> str | None:
        """The JobId of the continuous job flowing now, if any."""
        identity = self.parts.flowing
        return None if identity is None else identity.job_id or ""

    @property
    def waiting(self) -> int:
        """Single jobs still waiting for their part's row."""
        return len(self._singles)

    @property
    def oldest_waiting(self) -> str | None:
        return self._singles[0] if self._singles else None

    # -- rows ----------------------------------------------------------------------------------------------------
    def assign(self, row: Mapping[str, Any]) -> str:
        """The JobId of a committed ledger row (its ``job_id``; ``""``: no job asked for the part); a single job
        whose row it is stops waiting."""
        job = str(row.get("job_id") or "")
        if job:
            self._forget(job)
        return job

    def _forget(self, job: str) -> None:
        try:
            self._singles.remove(job)
        except ValueError:
            pass
