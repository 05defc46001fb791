"""The jobs a PLC started (station/opcua/jobs.py): what the state machine waits for, and the row's JobId;
tests/station/test_part_identity.py has the rule that gives each part its job, and tests/station/test_opcua.py drives
both through a real line and client."""
from __future__ import annotations

from inspection_core.records import PartIdentity
from station.opcua.jobs import JobBook
from station.part_identity import IdentityBook


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def test_a_single_job_waits_for_its_row_and_the_row_says_which_job_it_answers():
    parts = IdentityBook(clock=Clock())
    book = JobBook(parts)
    book.start_single(PartIdentity(part_id="P-1", meas_id="M-1", job_id="run-1"))
    book.start_single(PartIdentity(job_id="run-2"))
    assert book.waiting == 2 and book.oldest_waiting == "run-1" and parts.waiting == 2
    assert parts.claim(5_000) == PartIdentity(part_id="P-1", meas_id="M-1", job_id="run-1")  # the part is taken
    assert book.waiting == 2  # ... but SingleExecution lasts until its row comes
    assert book.assign({"id": 1, "job_id": "run-1"}) == "run-1"
    assert book.waiting == 1 and book.oldest_waiting == "run-2"
    assert book.assign({"id": 2, "job_id": None}) == ""  # no job asked for that part (a hardware trigger)
    assert book.waiting == 1  # ... and the waiting job is not taken for it
    assert book.assign({"id": 3, "job_id": "recorded-elsewhere"}) == "recorded-elsewhere"
    assert book.waiting == 1


def test_dropped_triggers_and_a_stop_forget_their_jobs_in_the_line_too():
    parts = IdentityBook(clock=Clock())
    book = JobBook(parts)
    for job in ("a", "b", "c", "d"):
        book.start_single(PartIdentity(job_id=job))
    book.drop_unfired(2)  # Abort: the source had not served the last two triggers
    assert (book.waiting, book.oldest_waiting, parts.waiting) == (2, "a", 2)
    book.cancel_single("b")  # its trigger could not be fired
    assert (book.waiting, parts.waiting) == (1, 1)
    assert book.drop_waiting() == ["a"]
    assert (book.waiting, parts.waiting) == (0, 0)
    assert parts.claim(9_000) == PartIdentity()


def test_a_flow_is_held_with_its_job_id():
    clock = Clock()
    book = JobBook(IdentityBook(clock=clock))
    assert book.hold_flow() is None and book.flow_job is None
    book.start_flow(PartIdentity(product_id="X-7", job_id="run-3"))
    assert book.flow_job == "run-3"
    clock.now = 2_000
    assert book.hold_flow() == "run-3" and book.flow_job is None
